"""Whether a pass's exit mark stands, given the exits that used it and the refunds heard
(pure; docs/tokens.md).

A pass (a road pass, a metro tap-in) exits once: its exit marks it used in the replay store
(lane.auth.replay), and a refund of that exit (`paid_not_passed`: nobody left) gives the mark
back, so the pass prices as a trip again. A metro tap-in may be let out by more than one exit
(the first refunded, the passenger let out at another gate), each heard at each gate of the
line in any order, its gate's clock up to the skew off, and each refund may be heard before or
after the other exits, or before its own. Neither the order the messages come in nor the
times the gates stamped can tell which exit is the later one, so a pass keeps every exit that
used it (`Exits`, by record id) and every exit whose refund was heard: the mark stands while
an exit of it is not refunded (`mark_of`), named by the latest stamped of those. A refund
gives back its own exit's mark, whichever gate made the mark and whichever gate refunds it,
and never another exit's: the same exits and refunds give the same mark in any order.

A mark stored before exits were named (`exit_id` None: a release before this one, or a use of
another kind) and a release naming no exit are judged by time alone, as before (`gives_back`).
So is an exit held while the replay store fails (lane.tap_held): one exit is held per pass,
named by the exit heard last unless that one was stamped earlier by more than the skew, an
earlier exit beyond doubt (`names_mark`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitMark:
    """A stored mark of a pass: when its latest use was seen (`seen_at`, the clock of the lane
    that made it) and the record id of the exit that made it (None: not known)."""

    seen_at: float | None
    exit_id: str | None


@dataclass(frozen=True)
class Exits:
    """What a lane heard of a pass's exits: each exit that used it, with its time (`made`, one
    per exit id), and the ids of the exits refunded (kept even before their exit is heard)."""

    made: frozenset[ExitMark] = frozenset()
    refunded: frozenset[str] = frozenset()


def exits_of(made: Iterable[ExitMark], refunded: Iterable[str]) -> Exits:
    """The exits heard, each id once (`used_by` of each in turn), and the refunds heard."""
    exits = Exits(refunded=frozenset(refunded))
    for mark in made:
        exits = used_by(exits, mark)
    return exits


def used_by(exits: Exits, mark: ExitMark) -> Exits:
    """The pass used by the exit `mark` (its `exit_id` set). Heard twice (its own gate's mark
    and a copy heard, a held one written), it keeps the later of its times, whichever comes
    first."""
    same = [kept for kept in exits.made if kept.exit_id == mark.exit_id]
    seen = [at for at in (mark.seen_at, *(kept.seen_at for kept in same)) if at is not None]
    merged = ExitMark(max(seen) if seen else None, mark.exit_id)
    return Exits(exits.made.difference(same) | {merged}, exits.refunded)


def refunded_by(exits: Exits, exit_id: str) -> Exits:
    """The exit `exit_id` refunded: its mark goes, now or when it is heard, and no other's."""
    return Exits(exits.made, exits.refunded | {exit_id})


def standing(exits: Exits) -> list[ExitMark]:
    """The exits not refunded, the latest stamped last (a time not known is the earliest)."""
    return sorted((m for m in exits.made if m.exit_id not in exits.refunded), key=_order)


def mark_of(exits: Exits) -> ExitMark | None:
    """The mark the pass carries: its latest stamped exit not refunded, or None (reopened)."""
    left = standing(exits)
    return left[-1] if left else None


def gives_back(mark: ExitMark, exit_id: str | None, made_by: float | None) -> bool:
    """Does a release naming the refunded exit `exit_id`, bounded by `made_by` (the latest time
    a mark of that exit can have), give back `mark`, a mark kept as one (stored before exits
    were named, or held while the replay store failed)? Either left None bounds nothing."""
    if made_by is not None and mark.seen_at is not None and mark.seen_at > made_by:
        return False  # a later use
    return exit_id is None or mark.exit_id is None or mark.exit_id == exit_id


def names_mark(mark: ExitMark, seen_at: float | None, skew_s: float) -> bool:
    """Does another use of a mark kept as one, by an exit seen at `seen_at` (its gate's clock),
    name it from now on? The exit heard last does, even one its gate stamped up to `skew_s`
    before the mark (that clock behind); one stamped earlier by more is an earlier exit heard
    late."""
    return mark.seen_at is None or seen_at is None or seen_at >= mark.seen_at - skew_s


def _order(mark: ExitMark) -> tuple[float, str]:
    return (float("-inf") if mark.seen_at is None else mark.seen_at, mark.exit_id or "")
