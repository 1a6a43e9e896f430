"""A device that answers queries but drops every command: `barrier_no_ack` holds until an
ack, not until the device is merely heard from, so the drivers behind the one it failed are
not charged and refunded one by one; a test close at the empty lane, probed every `probe_s`,
clears it once the device acks again. `barrier_refused` keeps its own clearing rules.

The fault outlives a restart: kept on disk as it is raised, dropped as an ack clears it, and a
lane restarted with it kept starts with it raised, refuses payment and sends a test close of
its own. Ends with the hypothesis properties: no charge while it lasts (whether the lane's
own or carried over a restart), and once the device acks again the next vehicle passes."""

from __future__ import annotations

import pytest
from core_kit import CARRIED_TEXT, KEPT_DETAILS, SINCE, LaneDriver, of_type, one, rules
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_recovery import world_answers
from test_stuck_closed import answer, next_self_test, refunded

from lane.core import events as ev
from lane.core.actions import (
    Action,
    Authorise,
    ClearAlarm,
    CloseBarrier,
    DropLatch,
    KeepLatch,
    QueryDevice,
    RaiseAlarm,
)
from lane.core.display import LANE_CLOSED
from lane.core.machine import next_deadline
from lane.core.names import Alarm
from lane.core.notes import ScanRefused
from lane.core.state import Phase

TEST_CLOSE = "v1/noack_test/close"


def given_up(lane: LaneDriver) -> list[Action]:
    """v1 paid; its open is never acked (barrier_no_ack) and it is refunded; returns the
    refund step's actions."""
    lane.pay("v1")
    while Alarm.BARRIER_NO_ACK not in lane.state.faults:
        lane.tick_at_deadline()
    return refunded(lane)


def test_once_the_open_is_given_up_a_test_close_waits_in_its_place() -> None:
    lane = LaneDriver(rules(pass_dwell_s=30.0))
    given_up(lane)
    assert lane.state.command is not None and lane.state.command.cmd_id == TEST_CLOSE
    assert lane.phase() is Phase.FAULT


def test_an_answer_or_a_report_at_the_empty_lane_does_not_clear_it() -> None:
    lane = LaneDriver(rules(pass_dwell_s=30.0))
    given_up(lane)
    for actions in (answer(lane), lane.report("closed"), answer(lane)):
        assert ClearAlarm(Alarm.BARRIER_NO_ACK) not in actions
    assert Alarm.BARRIER_NO_ACK in lane.state.faults
    assert lane.phase() is Phase.FAULT


def test_the_next_vehicles_are_not_charged_while_it_lasts() -> None:
    lane = LaneDriver(rules(pass_dwell_s=30.0))
    given_up(lane)
    for vehicle in ("v2", "v3"):
        lane.arrive(vehicle)
        answer(lane, entry_loop=True)  # the device answers the lane's queries meanwhile
        actions = lane.scan("282222222222222222")
        assert of_type(actions, Authorise) == []
        assert LANE_CLOSED in actions
        assert "barrier_no_ack" in one(actions, ScanRefused).reason
        lane.leave_pay_point()
        answer(lane)
    assert [a.vehicle_id for a in of_type(lane.actions, Authorise)] == ["v1"]


def test_the_test_close_is_probed_and_its_ack_clears_the_alarm() -> None:
    lane = LaneDriver(rules(pass_dwell_s=30.0, probe_s=5.0))
    given_up(lane)
    probes: list[CloseBarrier] = []
    for _ in range(3):  # the device still drops it: probed again and again
        actions = lane.tick_at_deadline()
        probes += [c for c in of_type(actions, CloseBarrier) if c.cmd_id == TEST_CLOSE]
        assert ClearAlarm(Alarm.BARRIER_NO_ACK) not in actions
    assert len(probes) >= 2
    while lane.state.command is None or lane.state.command.ack_deadline is None:
        lane.tick_at_deadline()
    actions = lane.feed(ev.BarrierAcked(TEST_CLOSE, True, "closed"), 0.05)
    assert ClearAlarm(Alarm.BARRIER_NO_ACK) in actions
    assert lane.state.command is None and lane.state.faults == frozenset()
    assert lane.phase() is Phase.IDLE
    lane.through("v2")  # the next vehicle is charged and let through
    assert [a.vehicle_id for a in of_type(lane.actions, Authorise)] == ["v1", "v2"]


def test_a_refusal_still_clears_when_the_device_reports_working() -> None:
    lane = LaneDriver(rules(max_cmd_attempts=3))
    lane.pay("v1")
    actions = lane.feed(ev.BarrierAcked("v1/open", False, "closed", "fault"))
    assert one(actions, RaiseAlarm).code == Alarm.BARRIER_REFUSED
    actions = lane.report("closed")
    assert ClearAlarm(Alarm.BARRIER_REFUSED) in actions


# --- kept over a restart ------------------------------------------------------------------------


def test_the_fault_is_kept_on_disk_as_it_is_raised_and_dropped_as_an_ack_clears_it() -> None:
    lane = LaneDriver(rules(pass_dwell_s=30.0))
    lane.pay("v1")
    while Alarm.BARRIER_NO_ACK not in lane.state.faults:
        actions = lane.tick_at_deadline()
    assert one(actions, KeepLatch) == KeepLatch(Alarm.BARRIER_NO_ACK, "open v1/open")
    refunded(lane)
    answer(lane)
    lane.report("closed")  # heard from, not acked: nothing more to keep or drop
    assert len(of_type(lane.actions, KeepLatch)) == 1 and of_type(lane.actions, DropLatch) == []
    while lane.state.command is None or lane.state.command.ack_deadline is None:
        lane.tick_at_deadline()
    actions = lane.feed(ev.BarrierAcked(TEST_CLOSE, True, "closed"), 0.05)
    assert one(actions, DropLatch) == DropLatch(Alarm.BARRIER_NO_ACK)


def test_a_late_ack_drops_the_kept_fault_and_the_next_unanswered_command_keeps_it_again() -> None:
    """A slow device: each late ack clears the fault, the next command raises it again; the
    file follows each change in order."""
    lane = LaneDriver(rules(max_cmd_attempts=1))
    lane.pay("v1")
    lane.tick_at_deadline()  # the open's only attempt lapses
    actions = lane.ack("v1/open")
    assert DropLatch(Alarm.BARRIER_NO_ACK) in actions
    lane.leave_pay_point()
    lane.cross()
    lane.tick_at_deadline()  # the close's only attempt lapses
    kept = [a.detail for a in of_type(lane.actions, KeepLatch)]
    assert kept == ["open v1/open", "close v1/close"]


DETAIL = KEPT_DETAILS[Alarm.BARRIER_NO_ACK]
CARRIED_TEST = "start1/noack_test/close"  # named after the LatchCarried's event_id


def restarted(lane: LaneDriver, paid: bool = False) -> list[Action]:
    """The lane starts with barrier_no_ack kept from before (and a paid vehicle owed its
    passage); the device reports closed."""
    actions = lane.carried(Alarm.BARRIER_NO_ACK, DETAIL)
    if paid:
        actions += lane.paid_carried()
    return actions + lane.report("closed")


def test_a_lane_restarted_with_it_raises_the_alarm_saying_so_and_refuses_payment() -> None:
    lane = LaneDriver(rules(probe_s=5.0))
    actions = restarted(lane)
    alarm = one(actions, RaiseAlarm)
    assert alarm.code == Alarm.BARRIER_NO_ACK
    assert f"latched since {SINCE} (carried over a restart): {DETAIL}" in alarm.message
    assert "until the barrier acks a command, a test close sent every 5 s" in alarm.message
    assert of_type(actions, KeepLatch) == []  # on disk already
    assert lane.phase() is Phase.FAULT and LANE_CLOSED in actions
    assert lane.state.command is not None and lane.state.command.cmd_id == CARRIED_TEST
    lane.arrive("v2")
    answer(lane, entry_loop=True)  # the device is there: it answers
    actions = lane.scan("282222222222222222")
    assert of_type(actions, Authorise) == [] and LANE_CLOSED in actions
    assert "barrier_no_ack" in one(actions, ScanRefused).reason
    assert Alarm.BARRIER_NO_ACK in lane.state.faults


def test_a_lane_restarted_with_it_probes_its_test_close_every_probe_s_until_acked() -> None:
    lane = LaneDriver(rules(probe_s=5.0, ack_timeout_s=0.6))
    restarted(lane)
    started = lane.now
    sent: list[float] = []
    while len(sent) < 3:  # the device still drops it: sent again at every probe
        actions = lane.tick_at_deadline()
        sent += [lane.now - started for c in of_type(actions, CloseBarrier)]
        assert all(c.cmd_id == CARRIED_TEST for c in of_type(actions, CloseBarrier))
        assert ClearAlarm(Alarm.BARRIER_NO_ACK) not in actions
    assert sent == pytest.approx([5.0, 10.0, 15.0])
    actions = lane.feed(ev.BarrierAcked(CARRIED_TEST, True, "closed"), 0.05)
    assert ClearAlarm(Alarm.BARRIER_NO_ACK) in actions
    assert DropLatch(Alarm.BARRIER_NO_ACK) in actions
    assert lane.state.faults == frozenset() and lane.phase() is Phase.IDLE
    lane.through("v2")
    assert [a.vehicle_id for a in of_type(lane.actions, Authorise)] == ["v2"]


def test_a_lane_restarted_with_both_faults_clears_no_ack_by_an_ack_then_stuck_by_a_test() -> None:
    lane = LaneDriver(rules(probe_s=5.0, selftest_s=5.0))
    lane.carried(Alarm.BARRIER_STUCK, KEPT_DETAILS[Alarm.BARRIER_STUCK])
    restarted(lane)
    assert lane.state.faults == {Alarm.BARRIER_STUCK, Alarm.BARRIER_NO_ACK}
    test_close = lane.state.command
    assert test_close is not None and test_close.cmd_id.endswith("/noack_test/close")
    while lane.state.command is None or lane.state.command.ack_deadline is None:
        lane.tick_at_deadline()
    actions = lane.feed(ev.BarrierAcked(test_close.cmd_id, True, "closed"), 0.05)
    assert DropLatch(Alarm.BARRIER_NO_ACK) in actions
    assert lane.state.faults == {Alarm.BARRIER_STUCK}  # acks do not show the boom rises
    test = next_self_test(lane)
    lane.feed(ev.BarrierAcked(test.cmd_id, True, "opening"), 0.05)
    assert DropLatch(Alarm.BARRIER_STUCK) in lane.report("open", dt=0.8)
    lane.ack()
    lane.through("v2")
    assert [a.vehicle_id for a in of_type(lane.actions, Authorise)] == ["v2"]


# --- properties ---------------------------------------------------------------------------------

DEAF_WORLD = ("arrive", "leave", "scan", "tick", "tick", "wait", "answer", "report")
# With a payment carried over the restart: the boom found up (the open before the crash),
# the payer's code again, a vehicle under the boom.
PAYER_WORLD = (*DEAF_WORLD, "boom_up", "carried_code", "cross")


def deaf_world(lane: LaneDriver, data: st.DataObject, n: int, world: tuple[str, ...]) -> None:
    """Anything happens at a lane whose device drops every command: vehicles come and go and
    show codes; the device answers queries with the truth and reports its state; time passes."""
    for _ in range(n):
        what = data.draw(st.sampled_from(world))
        note(what)
        at_point = lane.state.vehicle is not None
        if what == "arrive" and not at_point:
            lane.arrive(lane.fresh("v"), dt=1.0)
        elif what == "leave" and at_point:
            lane.leave_pay_point()
        elif what == "scan":
            lane.scan(f"28{lane.fresh('')}".ljust(18, "0"))
        elif what == "tick":
            due = next_deadline(lane.state) is not None
            lane.tick_at_deadline() if due else lane.tick(1.0)
        elif what == "wait":
            lane.tick(data.draw(st.sampled_from((0.5, 5.0, 30.0, 120.0))))
        elif what == "answer":
            answer(lane, entry_loop=at_point)
        elif what == "boom_up":
            lane.report("open")
        elif what == "carried_code":
            lane.scan(CARRIED_TEXT, "token")
        elif what == "cross":
            lane.cross()
        else:
            lane.report("closed")


def nobody_comes(lane: LaneDriver) -> None:
    """Everyone leaves and time passes at the still deaf lane; the device answers queries."""
    for sensor in ("entry_loop", "safety_loop", "light_curtain"):
        lane.sensor(sensor, False)
    start = lane.now
    while lane.now < start + 2 * lane.state.rules.pass_dwell_s:
        if of_type(lane.tick_at_deadline(), QueryDevice):
            answer(lane, barrier=lane.state.barrier if lane.state.barrier == "open" else "closed")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_while_commands_are_dropped_nobody_is_charged_and_once_acked_the_lane_serves(
    data: st.DataObject,
) -> None:
    """Safety (the SafetyMonitor of core_kit, on every step): while barrier_no_ack holds no
    Authorise, no charged record after a restart, and only an ack clears it. Liveness: once the
    device acks again the lane is idle with no fault and the next vehicle pays and passes. The
    fault is the lane's own (its paid vehicle refunded, a test close in its place), or kept
    over a restart."""
    lane = LaneDriver(rules(pass_dwell_s=30.0))
    paid = False
    if data.draw(st.booleans(), label="carried over a restart"):
        paid = data.draw(st.booleans(), label="with a paid vehicle owed its passage")
        restarted(lane, paid)
    else:
        given_up(lane)
    authorised = len(of_type(lane.actions, Authorise))
    deaf_world(lane, data, data.draw(st.integers(0, 80)), PAYER_WORLD if paid else DEAF_WORLD)
    assert Alarm.BARRIER_NO_ACK in lane.state.faults
    assert len(of_type(lane.actions, Authorise)) == authorised
    if paid:
        # Through under the boom found up for it, or refunded: never owed for ever at a lane
        # that cannot open for it.
        nobody_comes(lane)
        assert Alarm.BARRIER_NO_ACK in lane.state.faults
        passage = lane.state.passage  # through, the boom held up until the device acks
        assert not lane.state.carried and (passage is None or passage.left), lane.state
        assert not lane.monitor.owed, lane.monitor.owed
    world_answers(lane, budget=80)
    assert lane.state.faults == frozenset()
    lane.through(lane.fresh("v"), "289999999999999999")
