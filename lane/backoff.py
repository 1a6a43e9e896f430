"""The doubling wait between retries after failures in a row: a broker link's reconnect, a
refused publish, the uplink forwarder's failed round, the ingest's store connect, an
acquirer's payment queries, a camera's reopen. (Not a batch's resend in the forwarder, jittered
before its cap, nor the ingest's bounded busy retries, nor the core's self-tests, whose wait is
lane state.)

Pure: the caller counts its failures, draws the jitter and sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

# 2.0 ** 1024 is no float: past this many doublings any positive `first_s` has passed its cap.
_MAX_DOUBLINGS = 1000


@dataclass(frozen=True)
class Backoff:
    """After `failures` failures in a row (1, 2, ...): `first_s`, twice as long with each
    further failure, never more than `max_s`."""

    first_s: float
    max_s: float

    def delay(self, failures: int) -> float:
        doublings = min(max(0, failures - 1), _MAX_DOUBLINGS)
        return float(min(self.max_s, self.first_s * 2.0**doublings))

    def jittered(self, failures: int, draw: float) -> float:
        """`delay(failures)` spread from half to one and a half times itself by `draw` in
        [0, 1) (the caller's `random.random()`), so the clients a broker lost together do not
        all come back in the same instant."""
        return self.delay(failures) * (0.5 + draw)
