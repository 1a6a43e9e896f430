"""The declared transition table matches the machine, and renders to Mermaid.

Every LaneDriver step (all unit tests, all hypothesis runs) already asserts that the transition
it took is in the table. Here: the other direction (every row is taken by something), labels
cover every event type, and the rendering.
"""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from core_kit import CARRIED_TEXT, Chooser, EventSource, LaneDriver, heal, random_walk, rules
from test_machine_road import ENTRY, entry_failed_at_a_closed_lane
from test_paid_carried import gate_held_open
from test_recovery import world_answers
from test_stuck_closed import carried_over, next_self_test, refunded, stuck_closed

from lane.core import diagram
from lane.core import events as ev
from lane.core.machine import IllegalTransitionError, step
from lane.core.names import Alarm, DeviceWords
from lane.core.state import LaneMode, Phase, phase

WALKS_PER_MODE = 80


def scripted_rare_rows() -> LaneDriver:
    """Rows the random walks seldom take, taken on purpose."""
    lane = LaneDriver(rules(LaneMode.TRANSIT_ENTRY, passback_window_s=600.0))
    lane.feed(ev.AttendantCloseLane("x"))
    lane.feed(ev.AttendantOpen("att-1", "help", "op"))  # closed -> persisting
    lane.persisted("att-1")
    lane.ack()
    lane.cross()
    lane.ack("att-1/close", ok=False, error="jammed")  # closing -> fault
    lane.report("closed")
    lane.ack("att-1/close")
    lane.feed(ev.AttendantReopenLane("x"))
    lane.scan("HC1:a", "token")
    lane.decide(method="token", account_ref="acct-1")
    lane.persisted()
    lane.ack()
    lane.tick_at_deadline()
    lane.ack()
    lane.scan("HC1:b", "token")
    lane.decide(method="token", account_ref="acct-1")  # authorising -> idle: passback
    lane.arrive("p3")
    lane.scan("HC1:c", "token")
    lane.decide(method="token", account_ref="acct-1")  # authorising -> denied: passback
    return lane


def scripted_heal_rows() -> LaneDriver:
    """Rows of healing (lane.core.recovery) and others the random walks seldom take."""
    lane = LaneDriver(rules())
    lane.arrive("v1")
    lane.feed(ev.AttendantOpen("att-1", "help", "op"))  # vehicle_present -> persisting
    lane.persisted("att-1")
    lane.feed(ev.BarrierAcked("v1/open", True, "closed"))  # acked, never moves
    lane.cross()
    for _ in range(3):
        lane.tick_at_deadline()  # the close is not acked: fault
    lane.ack("v1/close", ok=False, error="safety_loop_occupied")  # fault -> closing
    lane.ack("v1/close")
    lane.pay("v2")
    lane.feed(ev.BarrierAcked("v2/open", True, "closed"))  # acked, never moves: stuck
    lane.tick_at_deadline()
    lane.sensor("entry_loop", True, dt=1.0)
    lane.feed(ev.AttendantOpen("att-2", "help", "op"))  # the next one, let through by hand
    lane.persisted("att-2")
    while lane.state.passage is not None and lane.state.passage.vehicle_id == "v2":
        lane.tick_at_deadline()  # v2 not let through: open -> opening (att-2's open)
    return lane


def scripted_late_ack_rows() -> LaneDriver:
    """A late open ack while closing, with the next vehicle paid: handed over."""
    lane = LaneDriver(rules())
    lane.pay("v1")
    lane.cross()  # through before the open ack: opening -> closing
    lane.pay("v2")
    assert lane.phase() is Phase.CLOSING
    lane.ack("v1/open")  # closing -> open: v2's passage
    assert lane.phase() is Phase.OPEN
    return lane


def scripted_snapshot_rows() -> LaneDriver:
    lane = LaneDriver(rules())
    lane.feed(ev.AttendantCloseLane("x"))
    lane.arrive("v1")
    lane.feed(ev.DeviceSnapshotted("closed", (("entry_loop", False),), "d1"))  # paying -> closed
    lane.feed(ev.AttendantReopenLane("x"))
    lane.arrive("v2")
    lane.feed(ev.DeviceSnapshotted("closed", (("entry_loop", False),), "d2"))  # paying -> idle
    lane.pay("v3")
    lane.ack()
    lane.sensor("safety_loop", True)
    lane.sensor("safety_loop", False)
    lane.feed(ev.DeviceSnapshotted("open", (), "d3"))  # exit edge lost: open -> closing
    lane.ack()
    lane.feed(
        ev.DeviceUnreadable("lane/p/l/barrier/state", "garbled", DeviceWords.REPORTS)
    )  # idle -> fault
    lane.feed(ev.DeviceSnapshotted("closed", (), "d4"))  # read again: fault -> idle
    return lane


def scripted_handover_rows() -> set[tuple[Phase, str, Phase]]:
    """A passenger paid while the gate waits to close behind the one before (someone still in
    the curtain): the open gate is theirs. Then the device's acks garbled, read again by a
    stale refusal."""
    lane = LaneDriver(rules(LaneMode.TRANSIT_ENTRY))
    lane.scan("HC1:a", "token")
    lane.decide(method="token", account_ref="acct-1")
    lane.persisted()
    lane.ack()
    lane.sensor("light_curtain", True)
    lane.sensor("exit_loop", False)  # open -> closing, the curtain still occupied
    lane.scan("HC1:b", "token")
    lane.decide(method="token", account_ref="acct-2")
    lane.persisted()  # closing -> open: handed over
    taken = lane.monitor.transitions
    lane = LaneDriver(rules())
    lane.feed(ev.DeviceUnreadable("lane/p/l/barrier/ack", "garbled", DeviceWords.ACKS))
    lane.feed(ev.BarrierAcked("v0/close", False, "closed", "jammed"))  # fault -> idle
    return taken | lane.monitor.transitions


def scripted_reopen_rows() -> LaneDriver:
    """An entry whose record failed at a closed lane: written when the lane reopens."""
    lane = LaneDriver(ENTRY)
    entry_failed_at_a_closed_lane(lane)
    lane.feed(ev.AttendantReopenLane("done"))  # vehicle_present -> persisting
    return lane


def scripted_self_test_rows() -> set[tuple[Phase, str, Phase]]:
    """A latched boom's self-tests: failed, and ended by each thing that may end one."""
    taken: set[tuple[Phase, str, Phase]] = set()
    ends: list[ev.Event] = [
        ev.Tick(),  # not open in time: failed
        ev.SensorChanged("entry_loop", True, "v9"),
        ev.SensorChanged("safety_loop", True, "e9"),
        ev.AttendantOpen("att-9", "help", "op"),
        ev.AttendantCloseLane("repair"),
    ]
    for end in ends:
        lane = LaneDriver(rules())
        stuck_closed(lane)
        test = next_self_test(lane, refunded(lane))
        lane.feed(ev.BarrierAcked(test.cmd_id, True, "opening"))
        if isinstance(end, ev.Tick):
            lane.tick_at_deadline()
        else:
            lane.feed(end)
        assert lane.phase() is Phase.CLOSING, end
        taken |= lane.monitor.transitions
    lane = LaneDriver(rules())
    carried_over(lane)  # a latch kept over a restart
    return taken | lane.monitor.transitions


def scripted_carried_rows() -> set[tuple[Phase, str, Phase]]:
    """A payment carried over a restart: its code again, the boom found up for it."""
    taken: set[tuple[Phase, str, Phase]] = set()
    up: list[ev.Event] = [
        ev.Scanned(CARRIED_TEXT, "token", None, 999.0, "s9"),
        ev.BarrierReported("open"),
        ev.DeviceSnapshotted("open", (("entry_loop", True),), "d9"),
    ]
    for event in up:
        lane = LaneDriver(rules())
        lane.paid_carried()
        lane.feed(event)
        taken |= lane.monitor.transitions
    lane = LaneDriver(rules(LaneMode.TRANSIT_ENTRY))
    gate_held_open(lane)
    lane.scan(CARRIED_TEXT, "token")  # closing -> open: handed over
    return taken | lane.monitor.transitions


def test_every_row_of_the_table_is_taken() -> None:
    taken = set(scripted_rare_rows().monitor.transitions)
    taken |= scripted_carried_rows()
    taken |= scripted_self_test_rows()
    taken |= scripted_heal_rows().monitor.transitions
    taken |= scripted_late_ack_rows().monitor.transitions
    taken |= scripted_snapshot_rows().monitor.transitions
    taken |= scripted_reopen_rows().monitor.transitions
    taken |= scripted_handover_rows()
    # Every mode, and a metro exit gate priced by tap-in (lane.core.metro).
    every = [rules(mode) for mode in LaneMode] + [rules(LaneMode.TRANSIT_EXIT, metro_pricing=True)]
    for lane_rules in every:
        for seed in range(WALKS_PER_MODE):
            lane = LaneDriver(lane_rules)
            random_walk(lane, EventSource(Chooser.seeded(seed)), 80)
            heal(lane)
            taken |= lane.monitor.transitions
            lane = LaneDriver(lane_rules)
            random_walk(lane, EventSource(Chooser.seeded(seed + 1000)), 60)
            world_answers(lane, 60)  # healing by itself, not by being answered
            taken |= lane.monitor.transitions
    missing = [t for t in diagram.TRANSITIONS if t not in diagram.rows_taken(taken)]
    assert missing == [], "rows no run takes: remove them, or find the missing test"


def test_every_event_type_has_labels_and_every_label_an_event_type() -> None:
    event_types = set(typing.get_args(ev.Event))
    assert set(diagram.LABELS.values()) == event_types
    samples: list[ev.Event] = [
        ev.SensorChanged("entry_loop", True, "e"),
        ev.SensorChanged("entry_loop", False, "e"),
        ev.SensorChanged("exit_loop", True, "e"),
        ev.SensorChanged("exit_loop", False, "e"),
        ev.SensorChanged("safety_loop", True, "e"),
        ev.SensorChanged("light_curtain", False, "e"),
        ev.SensorChanged("door", True, "e"),
        ev.VehicleClassified(1),
        ev.Scanned("t", "token", None, 0.0, "s"),
        ev.Decided("a", True, "ok", "token"),
        ev.Decided("a", False, "no", "token"),
        ev.Persisted("p", "r", 1),
        ev.PersistFailed("p", "queue_full"),
        ev.BarrierAcked("c", True, "open"),
        ev.BarrierAcked("c", False, "closed", "jammed"),
        ev.CommandNotSent("c", "broker connection lost"),
        ev.BarrierReported("offline"),
        ev.BarrierReported("closed"),
        ev.DeviceSnapshotted("open", (("safety_loop", False),), "d"),
        ev.DeviceUnreadable("lane/p/l/barrier/state", "not msgpack", DeviceWords.REPORTS),
        ev.AttendantOpen("c", "r", "a"),
        ev.AttendantCloseLane("r"),
        ev.AttendantReopenLane("r"),
        ev.QueueChanged(True, False),
        ev.QueueChanged(False, False),
        ev.DiskAnswering(False, "/var/lib/lane"),
        ev.DiskAnswering(True),
        ev.DiskAnswersAgain("/var/lib/lane: the lane reopens at 10:58:50 UTC"),
        ev.CameraSees(False, "camera lost: stream ended"),
        ev.CameraSees(True),
        ev.LinkChanged(False),
        ev.LinkChanged(True),
        ev.PlateRead("ZJA123"),
        ev.TicketIssued("v/pass", "0a0b0c0d0e0f1011", True),
        ev.TripPriced("v/trip1", False),
        ev.AttendantNoPass("c", "a"),
        ev.AttendantConfirmFare("c", "a"),
        ev.LatchCarried(Alarm.BARRIER_STUCK, "2026-12-01T10:00:00Z", "commanded open", "s1"),
        ev.PaidCarried("rec-1", "v0", 1, "c0ffee", 3.0, "s2"),
        ev.Tick(),
    ]
    labels = {diagram.event_label(event) for event in samples}
    assert labels == set(diagram.LABELS)
    for event in samples:
        assert isinstance(event, diagram.LABELS[diagram.event_label(event)])
    assert {t.label for t in diagram.TRANSITIONS} <= set(diagram.LABELS)


def test_allows_self_loops_and_table_rows_only() -> None:
    assert diagram.allows(Phase.IDLE, "tick", Phase.IDLE)
    assert diagram.allows(Phase.IDLE, "entry_loop on", Phase.VEHICLE_PRESENT)
    assert diagram.allows(Phase.OPEN, "link down", Phase.FAULT)  # via the in-service group
    assert not diagram.allows(Phase.IDLE, "tick", Phase.OPEN)
    assert not diagram.allows(Phase.AUTHORISING, "persisted", Phase.OPENING)
    assert not diagram.allows(Phase.OPEN, "queue full", Phase.FAULT)  # a passage goes on


def test_mermaid_has_every_row_as_an_edge() -> None:
    text = diagram.mermaid()
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    edges: dict[tuple[str, str], set[str]] = {}
    for line in lines[1:]:
        match = re.fullmatch(r"    (\[\*\]|\w+) --> (\w+)(?: : (.+))?", line)
        if match is None:
            assert re.fullmatch(r'    state "[^"]+" as \w+', line), line
            continue
        source, target, labels = match.groups()
        assert (source, target) not in edges, f"edge drawn twice: {line}"
        edges[(source, target)] = set((labels or "").split(" / "))
    assert edges.pop(("[*]", "idle")) == {""}
    for t in diagram.TRANSITIONS:
        source = t.source.name if isinstance(t.source, diagram.Group) else t.source.value
        target = t.target.name if isinstance(t.target, diagram.Group) else t.target.value
        assert t.label in edges[(source, target)]
    drawn = {label for labels in edges.values() for label in labels}
    assert drawn == {t.label for t in diagram.TRANSITIONS}
    assert {p.value for p in Phase} <= {end for pair in edges for end in pair}  # all phases


def test_module_prints_the_mermaid_text() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lane.core.diagram"], capture_output=True, text=True, check=True
    )
    assert out.stdout == diagram.mermaid()


@pytest.mark.parametrize("doc", ["README.md", "docs/core.md"])
def test_the_docs_show_the_current_diagram(doc: str) -> None:
    text = (Path(__file__).resolve().parents[2] / doc).read_text(encoding="utf-8")
    assert "```mermaid\n" + diagram.mermaid() + "```" in text


def test_step_refuses_a_transition_the_table_does_not_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lane = LaneDriver()
    before = lane.state
    arrival = ev.SensorChanged("entry_loop", True, "v1")
    # Without its row, idle -> vehicle_present is illegal: step raises, the caller's state
    # stands (and with the row, the same step is taken).
    rows = diagram.expanded() - {(Phase.IDLE, "entry_loop on", Phase.VEHICLE_PRESENT)}
    monkeypatch.setattr(diagram, "_ALLOWED", rows)
    with pytest.raises(IllegalTransitionError) as raised:
        step(before, arrival, lane.now)
    assert (raised.value.before, raised.value.label, raised.value.after) == (
        Phase.IDLE,
        "entry_loop on",
        Phase.VEHICLE_PRESENT,
    )
    assert "idle --entry_loop on--> vehicle_present" in str(raised.value)
    monkeypatch.undo()
    state, _ = step(before, arrival, lane.now)
    assert phase(state) is Phase.VEHICLE_PRESENT
