"""The device rules in barrier.gate, stepped by hand: no broker, no clock."""

from __future__ import annotations

from barrier import gate as g
from barrier.messages import BarrierCommand

LANE = "p07/l03"
NOW = 1_700_000_000_000_000


def cmd(op: str = "open", deadline: int = NOW + 2_000_000, lane: str = LANE) -> BarrierCommand:
    return BarrierCommand(op, "c1", deadline, lane)


def test_admit_accepts_a_timely_command() -> None:
    assert g.admit(cmd(), LANE, NOW, NOW + 3_000_000) is None


def test_admit_drops_late_commands_silently() -> None:
    assert g.admit(cmd(deadline=NOW - 1), LANE, NOW, NOW + 3_000_000) == g.Verdict(g.LATE, True)
    assert g.admit(cmd(), LANE, NOW, NOW - 1) == g.Verdict(g.LATE, True)


def test_admit_refuses_protocol_errors() -> None:
    assert g.admit(cmd(lane="p07/l04"), LANE, NOW, NOW + 1) == g.Verdict(g.WRONG_LANE)
    assert g.admit(cmd(), LANE, NOW, None) == g.Verdict(g.NO_EXPIRY)
    far = cmd(deadline=NOW + g.MAX_HORIZON_US + 1)
    assert g.admit(far, LANE, NOW, NOW + 1_000_000) == g.Verdict(g.DEADLINE_TOO_FAR)


def test_executed_commands_are_bounded_and_keep_the_newest() -> None:
    memory = g.ExecutedCommands(capacity=2)
    memory.remember("a", True, None)
    memory.remember("b", True, None)
    memory.remember("c", False, "x")
    assert "a" not in memory
    assert memory.outcome("c") == (False, "x")
    assert len(memory) == 2


def test_open_then_arrive() -> None:
    gate, ok, error, move = g.command(g.Gate(), "open")
    assert (gate.state, ok, error) == ("opening", True, None)
    assert move is not None and move.target == "open"
    gate, nxt = g.arrived(gate, move)
    assert gate.state == "open" and nxt is None


def test_repeated_open_is_a_no_op() -> None:
    gate = g.Gate(state="open")
    assert g.command(gate, "open") == (gate, True, None, None)


def test_close_refused_while_safety_loop_occupied() -> None:
    gate = g.Gate(state="open", safety_occupied=True)
    new, ok, error, move = g.command(gate, "close")
    assert (new, ok, error, move) == (gate, False, g.SAFETY_LOOP_OCCUPIED, None)


def test_closing_reverses_when_loop_occupied_and_finishes_once_clear() -> None:
    gate, _, _, move = g.command(g.Gate(state="open"), "close")
    assert gate.state == "closing" and move is not None
    gate, reverse = g.safety(gate, True)
    assert gate.state == "opening" and gate.note == g.SAFETY_REVERSAL and reverse is not None
    # The original close's timer fires late: superseded, nothing happens.
    assert g.arrived(gate, move) == (gate, None)
    gate, nxt = g.arrived(gate, reverse)
    assert gate.state == "open" and nxt is None  # still occupied: stays open
    gate, close_again = g.safety(gate, False)
    assert gate.state == "closing" and close_again is not None
    gate, _ = g.arrived(gate, close_again)
    assert gate.state == "closed" and gate.note is None


def test_loop_clear_before_reversal_completes_closes_on_arrival() -> None:
    gate, _, _, _ = g.command(g.Gate(state="open"), "close")
    gate, reverse = g.safety(gate, True)
    gate, _ = g.safety(gate, False)
    assert reverse is not None and gate.state == "opening"
    gate, close_again = g.arrived(gate, reverse)
    assert gate.state == "closing" and close_again is not None


def test_open_cancels_a_pending_close() -> None:
    gate, _, _, _ = g.command(g.Gate(state="open"), "close")
    gate, _ = g.safety(gate, True)
    gate, ok, _, _ = g.command(gate, "open")
    assert ok and not gate.pending_close
    gate, move = g.safety(gate, False)
    assert move is None


def test_fault_refuses_and_recovers_closed() -> None:
    gate, _, _, move = g.command(g.Gate(), "open")
    gate = g.fail(gate, "motor")
    assert move is not None and g.arrived(gate, move) == (gate, None)
    assert g.command(gate, "open")[1:3] == (False, g.FAULT)
    assert g.recover(gate).state == "closed"
    assert g.recover(g.fail(g.Gate(safety_occupied=True), "x")).state == "open"
