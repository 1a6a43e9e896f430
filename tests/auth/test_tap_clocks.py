"""A metro gate names the line's gates whose taps are stamped ahead of its clock
(lane.tap_clocks): the rule as a table, then through the real tap desk and stores, its alarm
raised, updated and cleared by the taps themselves (docs/closed-road.md, "Metro")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alarm_kit import Alarms
from polling import eventually
from test_metro_pricing import NOW, RULES, desk, refund_of, signed, tap_in

from lane.tap_clocks import CLOCK_ALARM, GateClocks
from lane.tap_desk import TapDesk
from lane.transport.mqtt import Incoming
from lane.wire import topics

SKEW = RULES.skew_s
QUIET = 28_800  # the tap-ins' retention


@pytest.mark.parametrize(
    ("heard", "ahead"),
    [
        ([("A", SKEW + 1)], {"A": SKEW + 1}),
        ([("A", SKEW)], {}),  # at the skew: a clock a little off, taken
        # The first lead is kept (the alarm's text does not change with every tap).
        ([("A", 3600), ("A", 7200)], {"A": 3600}),
        ([("A", 3600), ("B", 60)], {"A": 3600, "B": 60}),
        # Within the skew either side: that gate's clock is right again.
        ([("A", 3600), ("A", 0)], {}),
        ([("A", 3600), ("A", -SKEW)], {}),
        # Stamped long ago (queued while the broker was away): says nothing of the clock now.
        ([("A", 3600), ("A", -SKEW - 1)], {"A": 3600}),
        # Another gate's sane tap clears only that gate.
        ([("A", 3600), ("B", 3600), ("B", 1)], {"A": 3600}),
    ],
)
def test_a_gate_is_ahead_from_its_first_tap_beyond_the_skew_until_a_tap_within_it(
    heard: list[tuple[str, float]], ahead: dict[str, float]
) -> None:
    clocks = GateClocks(SKEW, QUIET)
    for gate, lead in heard:
        assert clocks.heard(gate, NOW + lead, NOW) == (lead > SKEW)
    assert clocks.ahead == ahead
    assert (clocks.text() is None) == (not ahead)


def test_a_gate_is_forgotten_once_no_tap_of_it_came_stamped_ahead_for_the_retention() -> None:
    clocks = GateClocks(SKEW, QUIET)
    clocks.heard("A", NOW + 3600, NOW)
    clocks.heard("A", NOW + 100 + 3600, NOW + 100)  # ahead again: the quiet starts anew
    clocks.heard("A", NOW - 3600, NOW + 200)  # stamped long ago: not a tap ahead
    clocks.forget_quiet(NOW + 100 + QUIET - 1)
    assert clocks.ahead == {"A": 3600}
    clocks.forget_quiet(NOW + 100 + QUIET)
    assert clocks.ahead == {} and clocks.text() is None


def alarmed_desk(tmp_path: Path, clock: list[float]) -> tuple[TapDesk, dict[str, str]]:
    """A gate on `clock` and the alarms it holds raised (code: text)."""
    alarms = Alarms()
    return desk(tmp_path, clock, alarms), alarms


async def test_a_tap_in_from_the_future_names_its_gate_until_that_gate_is_sane_again(
    tmp_path: Path,
) -> None:
    """A tap-in stamped ahead of the gate's clock was refused with a log line only: its
    passenger paid the maximum fare at the exit, and nobody was told that a gate's clock (or
    something claiming to be that gate) was ahead."""
    clock = [float(NOW)]
    gate, alarms = alarmed_desk(tmp_path, clock)
    topic = topics.line_taps("L1")
    try:
        await gate.handle(Incoming(topic, signed(tap_in("S01", NOW + 3600))))
        await gate.handle(Incoming(topic, signed(tap_in("S02", NOW + 86_400, "rider-2"))))
        # Safe: both refused. Seen: the alarm names each gate and how far ahead it was.
        assert gate.store.count() == 0
        text = alarms[CLOCK_ALARM]
        assert text.startswith("tap-ins refused (their exits here pay the maximum fare):")
        assert "from S01/g1 (3600 s), S02/g1 (86400 s):" in text
        # A tap stamped long ago (queued while the broker was away) clears nothing.
        await gate.handle(Incoming(topic, signed(tap_in("S01", NOW - 3600, "rider-3"))))
        assert "S01/g1 (3600 s)" in alarms[CLOCK_ALARM]
        # Clears by itself: each gate once its taps are stamped within the skew again.
        sane = tap_in("S01", NOW - 5, "rider-4")
        await gate.handle(Incoming(topic, signed(sane)))
        assert "S01/g1" not in alarms[CLOCK_ALARM] and "S02/g1 (86400 s)" in alarms[CLOCK_ALARM]
        other = tap_in("S02", NOW - 600, "rider-2")
        await gate.handle(Incoming(topic, signed(refund_of(other, NOW + 1))))
        assert CLOCK_ALARM not in alarms
        assert gate.store.count() == 2  # the tap-ins stamped within the retention, taken
    finally:
        gate.store.close()
        gate.replay.close()


async def test_a_gate_named_ahead_that_is_never_heard_again_is_forgotten_after_the_retention(
    tmp_path: Path,
) -> None:
    """A gate was named until one of its taps came stamped right: a message naming a gate that
    never taps again (forged, or a gate taken out of the line) kept `tap_clock_ahead` raised
    for ever. Once no tap of it has come stamped ahead for the tap-ins' retention, every tap-in
    it had refused is past it: its name goes, with no traffic at all."""
    clock = [float(NOW)]
    gate, alarms = alarmed_desk(tmp_path, clock)
    topic = topics.line_taps("L1")
    upkeep: asyncio.Task[None] | None = None
    try:
        await gate.handle(Incoming(topic, signed(tap_in("S02", NOW + 3600))))
        await gate.handle(Incoming(topic, signed(tap_in("S01", NOW + 600, "rider-2"))))
        clock[0] += gate.retention_s - 60
        # S01 still taps ahead: named on; S02, quiet since, too until the retention is over.
        await gate.handle(Incoming(topic, signed(tap_in("S01", clock[0] + 600, "rider-3"))))
        assert "S01/g1 (600 s), S02/g1 (3600 s)" in alarms[CLOCK_ALARM]
        clock[0] += 60
        upkeep = asyncio.create_task(gate.upkeep(asyncio.sleep))
        await eventually(lambda: "S02/g1" not in alarms[CLOCK_ALARM], within=10)
        assert "S01/g1 (600 s)" in alarms[CLOCK_ALARM]
        clock[0] += gate.retention_s - 60
        await eventually(lambda: CLOCK_ALARM not in alarms, within=10)
    finally:
        if upkeep is not None:
            upkeep.cancel()
        gate.store.close()
        gate.replay.close()
