"""Whether a pass's exit mark stands, given the exits that used it and the refunds heard
(lane.core.exit_marks): tables, and properties over any order the line's messages come in."""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lane.core.exit_marks import (
    ExitMark,
    Exits,
    exits_of,
    gives_back,
    mark_of,
    names_mark,
    refunded_by,
    standing,
    used_by,
)

AT = 1_800_000_000.0
SKEW_S = 30.0

# What a gate hears of a tap-in: an exit (its record id, stamped at its gate's clock) or the
# refund of one (the exit's record id).
Heard = tuple[str, str, float | None]


def hear(exits: Exits, heard: Heard) -> Exits:
    what, exit_id, at = heard
    return used_by(exits, ExitMark(at, exit_id)) if what == "exit" else refunded_by(exits, exit_id)


def heard_in(order: list[Heard]) -> Exits:
    return reduce(hear, order, Exits())


FIRST = ("exit", "exit-a", AT)  # let out at S02, then refunded (never let through)
LATER = ("exit", "exit-b", AT - SKEW_S + 1)  # let out at S01 later, its clock behind
FIRST_REFUNDED = ("refund", "exit-a", None)
LATER_REFUNDED = ("refund", "exit-b", None)


@pytest.mark.parametrize(
    "order",
    [
        [FIRST, FIRST_REFUNDED, LATER],
        [FIRST, LATER, FIRST_REFUNDED],
        # The line's messages crossed: the later exit heard first, the earlier one within the
        # skew of it after; the refund before or after the exit it names.
        [LATER, FIRST, FIRST_REFUNDED],
        [LATER, FIRST_REFUNDED, FIRST],
        [FIRST_REFUNDED, LATER, FIRST],
    ],
)
def test_the_mark_is_the_later_exits_whatever_order_the_line_is_heard_in(
    order: list[Heard],
) -> None:
    assert mark_of(heard_in(order)) == ExitMark(LATER[2], "exit-b")
    assert mark_of(heard_in([*order, LATER_REFUNDED])) is None


@pytest.mark.parametrize(
    ("order", "mark"),
    [
        # One exit, refunded: given back, whichever gate let it out or refunded it.
        ([FIRST, FIRST_REFUNDED], None),
        # Its refund heard first: the exit heard after it marks nothing.
        ([FIRST_REFUNDED, FIRST], None),
        # The later exit's refund alone: the first exit, never refunded, keeps the mark.
        ([FIRST, LATER, LATER_REFUNDED], ExitMark(AT, "exit-a")),
        # Two exits standing: named by the later stamped.
        ([LATER, FIRST], ExitMark(AT, "exit-a")),
        # One exit heard twice (its gate's mark, a copy heard): its later time, either order.
        ([FIRST, ("exit", "exit-a", AT + 2)], ExitMark(AT + 2, "exit-a")),
        ([("exit", "exit-a", AT + 2), FIRST], ExitMark(AT + 2, "exit-a")),
        ([("exit", "exit-a", None), FIRST], ExitMark(AT, "exit-a")),
        # A refund naming an exit never heard gives back nothing.
        ([FIRST, ("refund", "exit-z", None)], ExitMark(AT, "exit-a")),
    ],
)
def test_a_refund_gives_back_its_own_exits_mark_and_no_other(
    order: list[Heard], mark: ExitMark | None
) -> None:
    assert mark_of(heard_in(order)) == mark


@pytest.mark.parametrize(
    ("mark", "exit_id", "made_by", "given_back"),
    [
        # The exit the mark kept, refunded: given back.
        (ExitMark(AT, "exit-a"), "exit-a", AT + 0.001, True),
        # Another exit's refund, whatever its time: the mark stays.
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
def test_a_mark_kept_as_one_is_given_back_by_its_exit_and_time(
    mark: ExitMark, exit_id: str | None, made_by: float | None, given_back: bool
) -> None:
    assert gives_back(mark, exit_id, made_by) is given_back


EXIT_IDS = [f"exit-{n}" for n in range(4)]
# Exits of one tap-in, stamped within a few skews of one another (ties too), or not at all.
times = st.one_of(st.none(), st.integers(-3, 3).map(lambda n: AT + n * SKEW_S / 2))
heard_one = st.one_of(
    st.tuples(st.just("exit"), st.sampled_from(EXIT_IDS), times),
    st.tuples(st.just("refund"), st.sampled_from(EXIT_IDS), st.none()),
)


@settings(max_examples=300)
@given(data=st.data(), order=st.lists(heard_one, max_size=8))
def test_any_order_of_the_same_exits_and_refunds_gives_the_same_mark(
    data: st.DataObject, order: list[Heard]
) -> None:
    other = data.draw(st.permutations(order))
    assert heard_in(other) == heard_in(order)
    mark = mark_of(heard_in(order))
    refunded = {exit_id for what, exit_id, _ in order if what == "refund"}
    left = [exit_id for what, exit_id, _ in order if what == "exit" and exit_id not in refunded]
    # It stands while an exit is not refunded, named by the latest stamped of those.
    assert (mark is None) == (not left)
    if mark is not None:
        assert mark.exit_id in left
        assert all(m.seen_at is None or (mark.seen_at or AT - 9e9) >= m.seen_at
                   for m in standing(heard_in(order)))  # fmt: skip


@settings(max_examples=300)
@given(order=st.lists(heard_one, max_size=8), refund=st.sampled_from(EXIT_IDS))
def test_a_refund_never_gives_back_another_exits_mark(order: list[Heard], refund: str) -> None:
    before = heard_in(order)
    after = refunded_by(before, refund)
    assert standing(after) == [m for m in standing(before) if m.exit_id != refund]
    assert (mark_of(after) is None) == all(m.exit_id == refund for m in standing(before))


def test_the_exits_kept_are_one_per_exit_id() -> None:
    kept = exits_of([ExitMark(AT, "exit-a"), ExitMark(AT + 1, "exit-a")], ["exit-b"])
    assert kept == Exits(frozenset({ExitMark(AT + 1, "exit-a")}), frozenset({"exit-b"}))


@pytest.mark.parametrize(
    ("mark", "seen_at", "named"),
    [
        # The exit heard last, stamped after the mark or before it by no more than the skew
        # (its gate's clock behind): it names a held mark.
        (ExitMark(AT, "exit-a"), AT + 60, True),
        (ExitMark(AT, "exit-a"), AT - SKEW_S, True),
        # Stamped earlier by more: an earlier exit heard late names nothing.
        (ExitMark(AT, "exit-a"), AT - SKEW_S - 0.001, False),
        # Nothing to tell them apart by: the exit heard last names it.
        (ExitMark(None, "exit-a"), AT - 120, True),
        (ExitMark(AT, None), None, True),
    ],
)
def test_an_exit_heard_last_names_a_held_mark_unless_stamped_before_it_beyond_the_skew(
    mark: ExitMark, seen_at: float | None, named: bool
) -> None:
    assert names_mark(mark, seen_at, SKEW_S) is named
