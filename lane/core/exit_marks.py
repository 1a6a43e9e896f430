"""Whether a refunded exit gives back the mark of the pass it used (pure; docs/tokens.md).

A pass (a road pass, a metro tap-in) exits once: its exit marks it used in the replay store
(lane.auth.replay), and a refund of that exit (`paid_not_passed`: nobody left) gives the mark
back, so the pass prices as a trip again. The mark names the exit that made it last (its
record id): a pass used again after the refunded exit (an exit heard from another gate of a
metro line, whose clock may be up to the skew behind the first gate's) is marked by that later
exit, and the refund of the first one must not give it back. Times alone cannot tell: two
gates' clocks differ by up to the skew, and a refund may name an exit stamped anywhere within
it. So a mark goes only when the refund names the exit that made it (the lower bound: no
earlier exit's refund) and that exit was seen no later than the refund's bound (the upper
bound, `made_by`: no later use of it, heard out of order). A mark stored before exits were
named (`exit_id` None: a release before this one, or a use of another kind) is judged by the
time alone, as before.

Which exit is the later one is told by the order the uses come in, not by their times, unless
the times tell it beyond doubt: an exit stamped earlier than the mark by more than the skew is
an earlier one heard late (its gate's messages held up), and names nothing (`names_mark`), so
the refund of the later exit, which named the mark, still gives it back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExitMark:
    """A stored mark of a pass: when its latest use was seen (`seen_at`, the clock of the lane
    that made it) and the record id of the exit that made it last (None: not known)."""

    seen_at: float | None
    exit_id: str | None


def gives_back(mark: ExitMark, exit_id: str | None, made_by: float | None) -> bool:
    """Does a release naming the refunded exit `exit_id`, bounded by `made_by` (the latest time
    a mark of that exit can have), give `mark` back? Either left None bounds nothing."""
    if made_by is not None and mark.seen_at is not None and mark.seen_at > made_by:
        return False  # a later use
    return exit_id is None or mark.exit_id is None or mark.exit_id == exit_id


def names_mark(mark: ExitMark, seen_at: float | None, skew_s: float) -> bool:
    """Does another use of a marked pass by an exit seen at `seen_at` (its gate's clock) name
    the mark from now on? A later exit does, even one its gate stamped up to `skew_s` before
    the mark (that clock behind); one stamped earlier by more is an earlier exit heard late."""
    return mark.seen_at is None or seen_at is None or seen_at >= mark.seen_at - skew_s
