"""The doubling wait between retries after failures in a row: a broker link's reconnect, a
refused publish, the uplink forwarder's failed round and a batch's resend, the ingest's store
connect and busy retries, an acquirer's payment queries, a camera's reopen, the core's
self-tests of a stuck boom (it keeps their count in lane state), the simulator's restarts of a
child process.

Pure: the caller counts its failures, draws the jitter and sleeps. It lives in the core, which
imports nothing outside itself, so that the self-tests wait as every other retry does; the
shell's retry loops import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

# 2.0 ** 1024 is no float: past this many doublings any positive `first_s` has passed its cap.
_MAX_DOUBLINGS = 1000


@dataclass(frozen=True)
class Backoff:
    """After `failures` failures in a row (1, 2, ...): `first_s`, twice as long with each
    further failure, never more than `max_s` (`math.inf`: no cap, for retries that stop at a
    count of their own)."""

    first_s: float
    max_s: float

    def delay(self, failures: int) -> float:
        return float(min(self.max_s, self._doubled(failures)))

    def jittered(self, failures: int, draw: float) -> float:
        """`delay(failures)` spread from half to one and a half times itself by `draw` in
        [0, 1) (the caller's `random.random()`), so the clients a broker lost together do not
        all come back in the same instant."""
        return self.delay(failures) * (0.5 + draw)

    def jittered_within(self, failures: int, draw: float) -> float:
        """The doubled wait spread as `jittered` spreads it, then held from `first_s` (the
        first wins over a lower cap) to `max_s`: for a wait that may come neither before the
        first (a batch resent before its ack could have come) nor after the cap."""
        spread = self._doubled(failures) * (0.5 + draw)
        return float(max(self.first_s, min(self.max_s, spread)))

    def _doubled(self, failures: int) -> float:
        return self.first_s * 2.0 ** min(max(0, failures - 1), _MAX_DOUBLINGS)
