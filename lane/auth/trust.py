"""Which key set or deny list a lane may adopt: the bounds on trust updates (issue #11 item 6).

A key set or deny list replaces the one a lane holds only when it is newer, and "newer" is a
number the sender chooses (`issued_at`, `generation`). Unbounded, one absurd number (2^62, a
time in milliseconds where seconds belong) is adopted and then outranks every later, sane
update for ever: a removed key keeps verifying, a denied account keeps passing. So an update is
judged before it is compared:

- a key set with no keys is refused (it would silently remove every key);
- an update dated more than the allowed skew ahead of the lane's clock is refused *for now*: it
  becomes acceptable once its time has come (a lane that booted with its clock behind takes it
  after NTP has set the clock; 2^62 never comes);
- a deny list whose generation jumps more than `max_step` past the one held is refused; a lane
  that holds no list yet takes the first one up to `MAX_GENERATION` (2^40: counters and Unix
  seconds fit, milliseconds and 2^62 do not).

A refused update is never held as the current one, so it cannot block a later sane one.
Pure: the caller passes the clock reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lane.auth.deny import DenyList
from lane.auth.keys import KeySet
from lane.wire.utc import utc_text

MAX_GENERATION = 1 << 40
# One list a minute for about two years: a lane away that long should be set up again anyway.
DEFAULT_MAX_STEP = 1_000_000
# Beyond this a time is not a date anyone means; shown as a plain number.
_PRINTABLE_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z


class UpdateKind(StrEnum):
    KEYSET = "keyset"
    DENY = "deny"


class Verdict(StrEnum):
    ADOPT = "adopt"
    NOT_NEWER = "not_newer"  # a re-delivered or older copy: ignored, nothing wrong
    EMPTY = "empty"
    FUTURE_DATED = "future_dated"
    GENERATION_JUMP = "generation_jump"
    INVALID = "invalid"  # the file or payload could not be read at all (set by the shell)


REFUSALS = frozenset(
    {Verdict.EMPTY, Verdict.FUTURE_DATED, Verdict.GENERATION_JUMP, Verdict.INVALID}
)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    detail: str = ""

    @property
    def refused(self) -> bool:
        return self.verdict in REFUSALS

    @property
    def retry_later(self) -> bool:
        """Only a future date can become acceptable without the update changing."""
        return self.verdict is Verdict.FUTURE_DATED


ADOPT = Judgement(Verdict.ADOPT)


def judge_keyset(current: KeySet, incoming: KeySet, now: float, skew_s: float) -> Judgement:
    if not incoming.keys:
        return Judgement(Verdict.EMPTY, "has no keys: adopting it would remove every key")
    future = _future(incoming.issued_at, now, skew_s)
    if future is not None:
        return future
    if not incoming.supersedes(current):
        return Judgement(Verdict.NOT_NEWER, f"issued_at {incoming.issued_at} is not newer")
    return ADOPT


def judge_deny(
    current: DenyList, incoming: DenyList, now: float, skew_s: float, max_step: int
) -> Judgement:
    if incoming.issued_at is not None:
        future = _future(incoming.issued_at, now, skew_s)
        if future is not None:
            return future
    if not incoming.supersedes(current):
        return Judgement(Verdict.NOT_NEWER, f"generation {incoming.generation} is not newer")
    if current.generation == 0:
        if incoming.generation > MAX_GENERATION:
            return Judgement(
                Verdict.GENERATION_JUMP,
                f"generation {incoming.generation} is beyond {MAX_GENERATION} (2^40)",
            )
    elif incoming.generation - current.generation > max_step:
        return Judgement(
            Verdict.GENERATION_JUMP,
            f"generation {incoming.generation} jumps {incoming.generation - current.generation}"
            f" past the held {current.generation} (at most {max_step}: auth.max_generation_step)",
        )
    return ADOPT


def _future(issued_at: int, now: float, skew_s: float) -> Judgement | None:
    ahead = issued_at - now
    if ahead <= skew_s:
        return None
    when = utc_text(issued_at) if issued_at <= _PRINTABLE_TIME else "no real date"
    return Judgement(
        Verdict.FUTURE_DATED,
        f"issued_at {issued_at} ({when}) is {ahead:.0f} s ahead of this lane's clock"
        f" (at most {skew_s:g} s: auth.skew_s)",
    )
