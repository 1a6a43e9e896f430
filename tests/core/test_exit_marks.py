"""Whether a refunded exit gives back a pass's mark, and whether an exit names it
(lane.core.exit_marks): tables."""

from __future__ import annotations

import pytest

from lane.core.exit_marks import ExitMark, gives_back, names_mark

AT = 1_800_000_000.0


@pytest.mark.parametrize(
    ("mark", "exit_id", "made_by", "given_back"),
    [
        # The exit that made the mark last, refunded: given back.
        (ExitMark(AT, "exit-a"), "exit-a", AT + 0.001, True),
        # An earlier exit's refund, whatever its time: a later exit's mark stays (that gate's
        # clock behind, or a refund naming an exit stamped after the later one).
        (ExitMark(AT, "exit-b"), "exit-a", AT + 0.001, False),
        (ExitMark(AT, "exit-b"), "exit-a", AT + 29, False),
        # The named exit, but a use seen after the refund's bound: a later use stays.
        (ExitMark(AT + 5, "exit-a"), "exit-a", AT + 1, False),
        # A mark of before schema 5 names no exit: by time alone, as that release did.
        (ExitMark(AT, None), "exit-a", AT + 0.001, True),
        (ExitMark(AT, None), "exit-a", AT - 1, False),
        # A release naming no exit (a plaza's used-token release): by time alone.
        (ExitMark(AT, "exit-a"), None, AT, True),
        (ExitMark(AT, "exit-a"), None, AT - 1, False),
        # Nothing bounds it: a use without a time, a release without one.
        (ExitMark(None, "exit-a"), "exit-a", AT, True),
        (ExitMark(AT, None), None, None, True),
    ],
)
def test_a_refund_gives_back_only_the_mark_its_exit_made_last(
    mark: ExitMark, exit_id: str | None, made_by: float | None, given_back: bool
) -> None:
    assert gives_back(mark, exit_id, made_by) is given_back


@pytest.mark.parametrize(
    ("mark", "seen_at", "named"),
    [
        # A later exit, stamped after the mark or before it by no more than the skew (its
        # gate's clock behind): it names the mark.
        (ExitMark(AT, "exit-a"), AT + 60, True),
        (ExitMark(AT, "exit-a"), AT - 30, True),
        # Stamped earlier by more: an earlier exit heard late names nothing.
        (ExitMark(AT, "exit-a"), AT - 30.001, False),
        (ExitMark(AT, "exit-a"), AT - 120, False),
        # Nothing to tell them apart by: the use heard last names it.
        (ExitMark(None, "exit-a"), AT - 120, True),
        (ExitMark(AT, None), None, True),
    ],
)
def test_an_exit_names_a_mark_unless_stamped_before_it_by_more_than_the_skew(
    mark: ExitMark, seen_at: float | None, named: bool
) -> None:
    assert names_mark(mark, seen_at, 30) is named
