"""Whether a refunded exit gives back a pass's mark (lane.core.exit_marks): a table."""

from __future__ import annotations

import pytest

from lane.core.exit_marks import ExitMark, gives_back

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
