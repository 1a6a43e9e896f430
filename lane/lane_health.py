"""The console-facing judgements of a lane, pure (no I/O, no clock: times are parameters).

- `AlarmBook`: every alarm occurrence with since when, cleared when and who acknowledged it.
- `acquirer_sample` / `acquirer_health` / `acquirer_alarm`: the acquirer as a status
  (availability, error rate, latency) judged from the lane's own records of online payments;
  `acquirer_declines`: it answers, but declines an unusual share of them.
- `uplink_stalled`: the back office has not taken a record for too long.
- `uplink_down`: the lane's uplink connection to its broker (its road to the back office) is
  down, queued records or none.
- `token_sample` / `clock_suspect`: offline tokens refused for their time, payer after payer,
  say the lane's clock is wrong.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from barrier.health_message import MAX_ALARMS, AcquirerHealth, AlarmEntry
from barrier.messages import MAX_TEXT
from lane.alarm_severity import severity_of
from lane.auth.tokens import Reason
from lane.core.reread import ALREADY_USED
from lane.window import percentiles
from lane.wire.utc import since_utc

CLEARED_KEPT = 16
# An alarm raised again this soon after it cleared is the same occurrence coming back (a
# barrier that ignores each vehicle's command, a flapping link): it keeps its start and its
# acknowledgement, so the operator's list shows one problem, not a new one every few seconds.
REOPEN_WITHIN_US = 30_000_000
ACQUIRER_METHODS = frozenset({"payment_code", "emv"})
# Reasons that mean the acquirer did not answer properly; a decline is an answer.
ACQUIRER_ERRORS = frozenset({"timeout", "acquirer_error", "acquirer_unavailable"})
MIN_SAMPLES = 3  # fewer online payments in the window say nothing about the acquirer
DOWN_ERROR_RATE = 0.5
DEGRADED_ERROR_RATE = 0.2
# Everyday declines are a few percent (insufficient funds, a closed card); a fifth of the
# online payments declined means drivers are being turned away for a reason to look into.
DECLINING_RATE = 0.2
# A genuine token refused for its time says the lane's clock and its issuer's disagree. Issued
# ahead of the lane's clock (the clock behind): one payer's phone may be off, not 3 payers' in a
# row. Expired (the clock ahead): an old screenshot gives that too, so it takes a longer run.
CLOCK_RUNS = {"not_yet_valid": ("behind", 3), "expired": ("ahead", 6)}
# Refused before its time is looked at (lane.auth.tokens checks it after these): such a token
# says nothing of the lane's clock, neither way, and anyone may show a forged one.
REFUSED_UNTIMED = frozenset(
    {
        Reason.MALFORMED,
        Reason.UNKNOWN_KEY,
        Reason.BAD_SIGNATURE,
        Reason.WRONG_ALGORITHM,
        Reason.LIFETIME_TOO_LONG,
        Reason.KEY_NOT_VALID_AT_IAT,
    }
)
# The wall clock moves against the monotonic one by less than this unless someone set it (NTP
# slews at most 0.5 ms a second): the least move that says so when auth.skew_s is smaller.
CLOCK_SET_S = 1.0


class AlarmBook:
    """Active alarms and the last cleared ones, in the order an operator reads them."""

    def __init__(self, *, entry_lane: bool = False) -> None:
        """`entry_lane`: a closed road's entry lane's book (`severity_of`)."""
        self._entry_lane = entry_lane
        self._active: dict[str, AlarmEntry] = {}
        self._cleared: deque[AlarmEntry] = deque(maxlen=CLEARED_KEPT)

    def raised(self, code: str, message: str, now_us: int) -> None:
        entry = self._active.get(code)
        text = message[:MAX_TEXT]
        if entry is None:
            back = self._recently_cleared(code, now_us)
            if back is not None:
                self._cleared.remove(back)
                self._active[code] = replace(back, message=text, cleared_us=None)
            else:
                self._active[code] = AlarmEntry(
                    code, text, severity_of(code, entry_lane=self._entry_lane), now_us
                )
        elif entry.message != text:
            self._active[code] = replace(entry, message=text)  # same occurrence, new detail

    def _recently_cleared(self, code: str, now_us: int) -> AlarmEntry | None:
        for entry in self._cleared:  # newest first
            if entry.code == code:
                ended = entry.cleared_us
                return entry if ended is not None and now_us - ended <= REOPEN_WITHIN_US else None
        return None

    def cleared(self, code: str, now_us: int) -> None:
        entry = self._active.pop(code, None)
        if entry is not None:
            self._cleared.appendleft(replace(entry, cleared_us=now_us))

    def sync(self, alarms: Mapping[str, str], now_us: int) -> None:
        """Match the lane's own alarm table (the source of truth) after any missed note."""
        for code in set(self._active) - set(alarms):
            self.cleared(code, now_us)
        for code, message in alarms.items():
            self.raised(code, message, now_us)

    def acknowledge(self, code: str, who: str, now_us: int) -> AlarmEntry | None:
        """Mark the active occurrence of `code` acknowledged; None when it is not active.
        A second acknowledgement keeps the first one's name and time."""
        entry = self._active.get(code)
        if entry is None:
            return None
        if entry.acked_by is None:
            entry = replace(entry, acked_by=who, acked_us=now_us)
            self._active[code] = entry
        return entry

    def entries(self) -> list[AlarmEntry]:
        active = sorted(self._active.values(), key=lambda a: a.since_us)
        return [*active[:MAX_ALARMS], *self._cleared]


@dataclass(frozen=True)
class AcquirerSample:
    error: bool
    declined: bool
    latency_ms: float


def acquirer_sample(record: Mapping[str, Any]) -> AcquirerSample | None:
    """What one record (as the runner's `record` note carries it) says about the acquirer."""
    if record.get("method") not in ACQUIRER_METHODS:
        return None
    auth = record.get("auth") or {}
    result = auth.get("result")
    flags = [str(f) for f in record.get("flags") or ()]
    reason = flags[-1] if flags else ""
    if reason == ALREADY_USED:
        return None  # a copy a fare gate refused itself (lane.core.reread): never sent
    latency = auth.get("latency_ms")
    latency_ms = float(latency) if isinstance(latency, int | float) else 0.0
    error = result == "deferred" or "deferred" in flags or reason in ACQUIRER_ERRORS
    declined = result == "declined" and not error
    return AcquirerSample(error, declined, latency_ms)


def acquirer_health(samples: Iterable[AcquirerSample], slow_ms: float) -> AcquirerHealth:
    """`slow_ms`: a p95 latency from here on is `degraded` (the lane's budget is at stake)."""
    taken = list(samples)
    n = len(taken)
    if n < MIN_SAMPLES:
        return AcquirerHealth("idle", n)
    errors = sum(s.error for s in taken)
    error_rate = errors / n
    answered = [s.latency_ms for s in taken if not s.error]
    figures = percentiles(answered)
    p95 = figures["p95"]
    if error_rate >= DOWN_ERROR_RATE:
        state = "down"
    elif error_rate >= DEGRADED_ERROR_RATE or (p95 is not None and p95 >= slow_ms):
        state = "degraded"
    else:
        state = "ok"
    return AcquirerHealth(
        state=state,
        samples=n,
        availability=round(1 - error_rate, 3),
        error_rate=round(error_rate, 3),
        decline_rate=round(sum(s.declined for s in taken) / n, 3),
        p50_ms=figures["p50"],
        p95_ms=p95,
    )


def acquirer_alarm(health: AcquirerHealth) -> str | None:
    """The `acquirer_unhealthy` alarm text, or None when the acquirer is fine (or unknown).
    The text names the state only: the figures change with every payment and live in the
    health message; an alarm whose text changed would be raised (and logged) again."""
    if health.state == "down":
        return "acquirer down: most online payments fail"
    if health.state == "degraded":
        return "acquirer degraded: online payments fail or are slow"
    return None


def acquirer_declines(health: AcquirerHealth) -> str | None:
    """The `acquirer_declines` alarm text, or None while declines are at their everyday level
    (or too few payments to say). A decline is an answer: the acquirer is not unhealthy."""
    if health.decline_rate is None or health.decline_rate < DECLINING_RATE:
        return None
    return f"acquirer declines {DECLINING_RATE:.0%} or more of the online payments"


def uplink_stalled(oldest_unsent_s: float | None, backlog: int, limit_s: float) -> str | None:
    """The `uplink_stalled` alarm text, or None while the back office keeps up."""
    if oldest_unsent_s is None or backlog == 0 or oldest_unsent_s < limit_s:
        return None
    return f"back office has taken no record for over {limit_s:g} s"


UPLINK_DOWN = "uplink_down"


def uplink_down(
    down_since: float | None, now: float, wall: float, grace_s: float, where: str
) -> str | None:
    """The `uplink_down` alarm text once the uplink connection (to `where`) has been down
    since monotonic `down_since` for `grace_s`, or None (`now` monotonic, `wall` the wall
    time at `now`). A lane with nothing queued says so too: `uplink_stalled` needs a record."""
    if down_since is None or now - down_since < grace_s:
        return None
    return (
        f"back-office link down: no uplink connection to the broker {where}"
        f" since {since_utc(down_since, now, wall)}; records stay queued on disk"
        " and go once it is back"
    )


@dataclass(frozen=True)
class TokenSample:
    vehicle_id: str
    refused: str | None  # a refusal for the token's time (CLOCK_RUNS), else None: the time agreed
    clock_s: float  # the lane's wall clock less its monotonic one then: moves when it is set


def token_sample(record: Mapping[str, Any], clock_s: float) -> TokenSample | None:
    """What one record (as the runner's `record` note carries it) says about the lane's clock;
    `clock_s`: its wall clock less its monotonic clock as the token was judged."""
    if record.get("method") != "token":
        return None
    auth = record.get("auth") or {}
    flags = [str(f) for f in record.get("flags") or ()]
    reason = flags[-1] if auth.get("result") == "declined" and flags else ""
    if reason in REFUSED_UNTIMED:
        return None
    refused = reason if reason in CLOCK_RUNS else None
    return TokenSample(str(record.get("vehicle_id") or ""), refused, clock_s)


def clock_suspect(samples: Iterable[TokenSample], clock_s: float, skew_s: float) -> str | None:
    """The `clock_suspect` alarm text, or None: the last token payers (each judged by its last
    token: a driver's retries are one payer) were refused for their token's time, all for the
    same reason, as many in a row as CLOCK_RUNS asks. A token accepted ends the run; so does
    setting the clock (`clock_s`, the wall clock less the monotonic one now, moved by more than
    the skew tokens are allowed since they were judged): those refusals say nothing of the
    clock the lane has now. However long ago: a clock is not set right by waiting."""
    moved_s = max(skew_s, CLOCK_SET_S)
    last: dict[str, str | None] = {}
    for sample in samples:
        if abs(sample.clock_s - clock_s) > moved_s:
            continue
        last.pop(sample.vehicle_id, None)  # moved to the end: payers in the order they last paid
        last[sample.vehicle_id] = sample.refused
    run, reason = 0, None
    for refused in reversed(list(last.values())):
        if refused is None or (reason is not None and refused != reason):
            break
        run, reason = run + 1, refused
    if reason is None or run < CLOCK_RUNS[reason][1]:
        return None
    way, needed = CLOCK_RUNS[reason]
    said = reason.replace("_", " ")
    return (
        f"offline tokens refused as {said} for {needed} token payers in a row: this lane's"
        f" clock may be {way}; check its time sync (lane doctor)"
    )
