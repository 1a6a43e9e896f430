"""A device that answers queries but drops every command: `barrier_no_ack` holds until an
ack, not until the device is merely heard from, so the drivers behind the one it failed are
not charged and refunded one by one; a test close at the empty lane, probed every `probe_s`,
clears it once the device acks again. `barrier_refused` keeps its own clearing rules."""

from __future__ import annotations

from core_kit import LaneDriver, of_type, one, rules
from test_stuck_closed import answer, refunded

from lane.core import events as ev
from lane.core.actions import Action, Authorise, ClearAlarm, CloseBarrier, RaiseAlarm
from lane.core.display import LANE_CLOSED
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
