"""A boom stuck closed (commanded open, never seen open): `barrier_stuck` latches, nobody else
is charged while it lasts, and the lane's own self-tests clear it once the boom works again.
(A boom stuck open: tests/core/test_stuck_open.py.) Ends with the hypothesis properties:
safety while latched and liveness once the device works again."""

from __future__ import annotations

import itertools

import pytest
from core_kit import KEPT_DETAILS, SINCE, LaneDriver, of_type, one, rules
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_recovery import world_answers

from lane.core import events as ev
from lane.core.actions import (
    Action,
    Authorise,
    ClearAlarm,
    CloseBarrier,
    DropLatch,
    KeepLatch,
    OpenBarrier,
    Persist,
    QueryDevice,
    RaiseAlarm,
)
from lane.core.display import LANE_CLOSED
from lane.core.machine import next_deadline
from lane.core.names import Alarm
from lane.core.notes import BarrierSelfTest, NoteBase, ScanRefused, SelfTestStep
from lane.core.state import Phase

CLEAR = (("entry_loop", False), ("exit_loop", False), ("safety_loop", False))
SELF_TEST = "self-test of a boom that did not open"


def stuck_closed(lane: LaneDriver, vehicle_id: str = "v1") -> list[Action]:
    """A paid vehicle's open is acked and the boom never rises; returns the overdue tick's
    actions (barrier_stuck raised)."""
    lane.pay(vehicle_id)
    lane.feed(ev.BarrierAcked(f"{vehicle_id}/open", True, "closed"), 0.05)
    return lane.tick_at_deadline()


def refunded(lane: LaneDriver) -> list[Action]:
    """Time passes until the paid, stuck vehicle is given up on (paid_not_passed); returns
    that step's actions."""
    actions: list[Action] = []
    while "paid_not_passed" not in {a.name for a in of_type(lane.actions, NoteBase)}:
        actions = lane.tick_at_deadline()
    return actions


def self_test_queries(actions: list[Action]) -> list[QueryDevice]:
    return [a for a in of_type(actions, QueryDevice) if a.reason == SELF_TEST]


def answer(lane: LaneDriver, barrier: str = "closed", **sensors: bool) -> list[Action]:
    truth = dict(CLEAR) | sensors
    return lane.feed(ev.DeviceSnapshotted(barrier, tuple(sorted(truth.items())), lane.fresh("d")))


def next_self_test(lane: LaneDriver, actions: list[Action] | None = None) -> OpenBarrier:
    """Tick until the lane asks for a self-test (in `actions` already, or later), answer all
    clear: the test's open."""
    for _ in range(40):
        if self_test_queries(actions or []):
            return one(answer(lane), OpenBarrier)
        actions = lane.tick_at_deadline()
    raise AssertionError("no self-test")


def steps(lane: LaneDriver) -> list[SelfTestStep]:
    return [a.step for a in of_type(lane.actions, BarrierSelfTest)]


def test_a_boom_that_did_not_open_latches_barrier_stuck_with_its_cure_in_the_text() -> None:
    lane = LaneDriver(rules(move_s=4.0, selftest_s=5.0, selftest_max_s=60.0))
    actions = stuck_closed(lane)
    alarm = one(actions, RaiseAlarm)
    assert alarm.code == Alarm.BARRIER_STUCK
    assert "commanded open, device reports closed after 4 s" in alarm.message
    assert "lane closed to payments" in alarm.message
    assert "self-test every 5 s doubling to 60 s" in alarm.message
    assert lane.state.latch is not None


def test_after_the_refund_the_alarm_holds_and_the_next_vehicle_is_not_charged() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    stuck_closed(lane)
    refunded(lane)
    refunds = [p for p in of_type(lane.actions, Persist) if "paid_not_passed" in p.draft.flags]
    assert len(refunds) == 1 and refunds[0].draft.amount_minor == 0
    # The lane no longer wants the boom up, and it is down: the alarm holds all the same.
    assert ClearAlarm(Alarm.BARRIER_STUCK) not in lane.actions
    assert "barrier_stuck" in lane.state.faults
    for vehicle in ("v2", "v3"):
        lane.arrive(vehicle)
        actions = lane.scan("282222222222222222")
        assert of_type(actions, Authorise) == []
        assert LANE_CLOSED in actions
        assert "barrier_stuck" in one(actions, ScanRefused).reason
        lane.leave_pay_point()
    assert [a.vehicle_id for a in of_type(lane.actions, Authorise)] == ["v1"]


def test_a_pass_dwell_shorter_than_a_move_latches_too() -> None:
    lane = LaneDriver(rules(pass_dwell_s=2.0, move_s=4.0))
    lane.pay("v1")
    lane.feed(ev.BarrierAcked("v1/open", True, "closed"), 0.05)
    refunded(lane)  # before the move's time was up
    assert lane.state.latch is not None and "barrier_stuck" in lane.state.faults
    assert "after 2 s" in one(of_type(lane.actions, RaiseAlarm)[-1:], RaiseAlarm).message


def test_self_tests_run_at_an_empty_lane_on_a_doubling_backoff() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0, selftest_s=5.0, selftest_max_s=60.0))
    stuck_closed(lane)
    latched_at = lane.now
    actions = refunded(lane)
    # While the paid vehicle waited, no test: its passage held the lane. Then at once.
    assert len(self_test_queries(lane.actions)) == len(self_test_queries(actions)) == 1
    assert lane.now - latched_at > 5.0
    times = []
    for _ in range(6):
        test = next_self_test(lane, actions)
        actions = []
        times.append(lane.now)
        assert test.cmd_id.endswith("/selftest/open")
        lane.feed(ev.BarrierAcked(test.cmd_id, True, "closed"), 0.05)  # still stuck
        actions = lane.tick_at_deadline()  # not open within move_s: failed, closed again
        assert one(actions, CloseBarrier).cmd_id == test.cmd_id.replace("/open", "/close")
        lane.ack()
        assert lane.phase() is Phase.FAULT
    # The first test is due at once (the lane just became empty), then 10, 20, 40, 60, 60.
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [
        10.0, 20.0, 40.0, 60.0, 60.0,
    ]  # fmt: skip
    assert steps(lane) == [SelfTestStep.STARTED, SelfTestStep.FAILED] * 6
    assert "barrier_stuck" in lane.state.faults and ClearAlarm(Alarm.BARRIER_STUCK) not in (
        lane.actions
    )
    # No record of any kind from the tests: only the paid one and its refund.
    assert [p.persist_id for p in of_type(lane.actions, Persist)] == ["v1/a1", "v1/not_passed"]


def test_the_first_self_test_comes_selftest_s_after_the_latch_at_an_empty_lane() -> None:
    lane = LaneDriver(rules(pass_dwell_s=2.0, move_s=4.0, selftest_s=5.0))
    lane.pay("v1")
    lane.feed(ev.BarrierAcked("v1/open", True, "closed"), 0.05)
    refunded(lane)
    latched_at = lane.now
    next_self_test(lane)
    assert lane.now == pytest.approx(latched_at + 5.0)


def test_a_self_test_that_sees_the_boom_open_clears_the_alarm_closes_and_takes_payments() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    stuck_closed(lane)
    test = next_self_test(lane, refunded(lane))
    lane.feed(ev.BarrierAcked(test.cmd_id, True, "opening"), 0.05)
    assert "barrier_stuck" in lane.state.faults  # opening is not open
    actions = lane.report("open", dt=0.8)
    assert ClearAlarm(Alarm.BARRIER_STUCK) in actions
    close = one(actions, CloseBarrier)
    assert close.cmd_id == test.cmd_id.replace("/open", "/close")
    assert lane.state.latch is None and lane.state.accepting_payments
    lane.ack()
    assert lane.phase() is Phase.IDLE
    lane.through("v2", "282222222222222222")  # pays and passes
    assert steps(lane) == [SelfTestStep.STARTED, SelfTestStep.PASSED]
    amounts = [p.draft.amount_minor for p in of_type(lane.actions, Persist)]
    assert amounts == [250, 0, 250]  # v1 charged and refunded, v2 charged; no test record


def test_a_late_open_of_the_paid_vehicle_clears_the_latch_and_serves_it() -> None:
    lane = LaneDriver()
    stuck_closed(lane)
    actions = lane.report("open")
    assert ClearAlarm(Alarm.BARRIER_STUCK) in actions and lane.state.latch is None
    assert lane.phase() is Phase.OPEN
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    assert lane.phase() is Phase.IDLE and lane.state.accepting_payments


def test_no_self_test_while_a_vehicle_is_at_the_pay_point() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    stuck_closed(lane)
    assert self_test_queries(refunded(lane))  # asked as the lane became empty ...
    lane.arrive("v2")
    actions = answer(lane, entry_loop=True)  # ... and the answer comes after an arrival
    assert of_type(actions, OpenBarrier) == [] and steps(lane) == [SelfTestStep.SKIPPED]
    while lane.now < 1000.0 + 600.0:  # ten minutes of deadlines: probes only
        actions = lane.tick_at_deadline()
        assert self_test_queries(actions) == [] and of_type(actions, OpenBarrier) == []
        if of_type(actions, QueryDevice):
            assert of_type(answer(lane, entry_loop=True), OpenBarrier) == []
    actions = lane.leave_pay_point()  # gone: the overdue test is asked for at once
    assert self_test_queries(actions)
    assert one(answer(lane), OpenBarrier).cmd_id.endswith("/selftest/open")


def test_a_device_that_sees_someone_on_a_loop_skips_the_test() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    stuck_closed(lane)
    assert self_test_queries(refunded(lane))
    actions = answer(lane, exit_loop=True)
    assert of_type(actions, OpenBarrier) == [] and lane.state.command is None
    assert steps(lane) == [SelfTestStep.SKIPPED]


@pytest.mark.parametrize("who", ["arrives", "under"])
def test_someone_coming_during_a_test_closes_the_boom_and_passing_is_unpaid(who: str) -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    stuck_closed(lane)
    test = next_self_test(lane, refunded(lane))
    lane.feed(ev.BarrierAcked(test.cmd_id, True, "opening"), 0.05)
    if who == "arrives":
        actions = lane.arrive("v2")
        assert one(actions, CloseBarrier).cmd_id == test.cmd_id.replace("/open", "/close")
        actions = lane.scan("282222222222222222")
        assert of_type(actions, Authorise) == []  # still latched: the boom was not seen open
    else:
        actions = lane.sensor("safety_loop", True)  # under the rising boom
        assert [a.code for a in of_type(actions, RaiseAlarm)] == [Alarm.UNPAID_PASSAGE]
        assert one(actions, Persist).draft.kind == "violation"
        assert of_type(actions, CloseBarrier) == []  # never over the vehicle
        actions = lane.sensor("safety_loop", False)
        assert one(actions, CloseBarrier).cmd_id == test.cmd_id.replace("/open", "/close")
    assert lane.state.latch is None or lane.state.latch.test_id is None


def test_an_attendant_closure_stops_the_self_tests() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    stuck_closed(lane)
    test = next_self_test(lane, refunded(lane))
    actions = lane.feed(ev.AttendantCloseLane("boom repair"))
    assert one(actions, CloseBarrier).cmd_id == test.cmd_id.replace("/open", "/close")
    lane.ack()
    for _ in range(20):
        assert self_test_queries(lane.tick_at_deadline()) == []
    assert self_test_queries(lane.feed(ev.AttendantReopenLane("repaired")))


def test_the_latch_is_kept_on_disk_as_it_latches_and_dropped_as_it_clears() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0, move_s=4.0))
    actions = stuck_closed(lane)
    assert one(actions, KeepLatch).detail == "commanded open, device reports closed after 4 s"
    test = next_self_test(lane, refunded(lane))
    lane.feed(ev.BarrierAcked(test.cmd_id, True, "closed"), 0.05)
    lane.tick_at_deadline()  # a failed test: still latched, nothing more to keep
    assert of_type(lane.actions, KeepLatch)[0].fault == Alarm.BARRIER_STUCK
    assert len(of_type(lane.actions, KeepLatch)) == 1
    assert of_type(lane.actions, DropLatch) == []
    lane.ack()
    test = next_self_test(lane)
    lane.feed(ev.BarrierAcked(test.cmd_id, True, "opening"), 0.05)
    assert one(lane.report("open", dt=0.8), DropLatch) == DropLatch(Alarm.BARRIER_STUCK)


def carried_over(lane: LaneDriver) -> list[Action]:
    """The lane starts with a latch kept from before its restart; the device says closed."""
    actions = lane.carried(Alarm.BARRIER_STUCK, KEPT_DETAILS[Alarm.BARRIER_STUCK])
    return actions + lane.report("closed")


def test_a_lane_restarted_latched_raises_the_alarm_saying_so_and_refuses_payment() -> None:
    lane = LaneDriver(rules(selftest_s=5.0, selftest_max_s=60.0))
    actions = carried_over(lane)
    alarm = one(actions, RaiseAlarm)
    assert alarm.code == Alarm.BARRIER_STUCK
    assert f"latched since {SINCE} (carried over a restart)" in alarm.message
    assert "commanded open, device reports closed after 4 s" in alarm.message
    assert "self-test every 5 s doubling to 60 s" in alarm.message
    assert of_type(actions, KeepLatch) == []  # on disk already
    assert lane.state.latch is not None and lane.phase() is Phase.FAULT
    lane.arrive("v2")
    actions = lane.scan("282222222222222222")
    assert of_type(actions, Authorise) == [] and LANE_CLOSED in actions
    assert "barrier_stuck" in one(actions, ScanRefused).reason


def test_a_lane_restarted_latched_self_tests_on_its_schedule_and_clears_on_open() -> None:
    lane = LaneDriver(rules(selftest_s=5.0, selftest_max_s=60.0))
    carried_over(lane)
    started = lane.now
    test = next_self_test(lane)
    assert lane.now == pytest.approx(started + 5.0)  # the schedule from its start
    lane.feed(ev.BarrierAcked(test.cmd_id, True, "opening"), 0.05)
    actions = lane.report("open", dt=0.8)
    assert ClearAlarm(Alarm.BARRIER_STUCK) in actions and DropLatch(Alarm.BARRIER_STUCK) in actions
    assert lane.state.latch is None and lane.state.accepting_payments
    lane.ack()
    assert lane.phase() is Phase.IDLE
    lane.through("v2", "282222222222222222")
    assert [p.draft.amount_minor for p in of_type(lane.actions, Persist)] == [250]


# --- properties ---------------------------------------------------------------------------------

ANSWERED = (OpenBarrier, CloseBarrier, QueryDevice, Persist)
WORLD = (
    "arrive", "leave", "scan", "under", "out", "tick", "tick", "wait", "answer", "answer", "answer",
    "attendant",
)  # fmt: skip


def stuck_world(lane: LaneDriver, data: st.DataObject, n: int, boom: str = "closed") -> None:
    """Anything happens at a lane whose boom is stuck (`boom`: down, or up): vehicles come and
    go, show codes, drive under it; the device acks every command and moves nothing, answers
    queries with the truth; records are written; attendants open."""
    sensors = dict(CLEAR)
    pending: list[Action] = []
    for _ in range(n):
        what = data.draw(st.sampled_from(WORLD))
        note(what)
        actions: list[Action] = []
        if what == "arrive" and not sensors["entry_loop"]:
            sensors["entry_loop"] = True
            actions = lane.arrive(lane.fresh("v"), dt=1.0)
        elif what == "leave" and sensors["entry_loop"]:
            sensors["entry_loop"] = False
            actions = lane.leave_pay_point()
        elif what == "scan":
            actions = lane.scan(f"28{lane.fresh('')}".ljust(18, "0"))
        elif what in ("under", "out"):
            sensors["safety_loop"] = what == "under"
            actions = lane.sensor("safety_loop", what == "under")
        elif what == "tick":
            due = next_deadline(lane.state) is not None
            actions = lane.tick_at_deadline() if due else lane.tick(1.0)
        elif what == "wait":
            actions = lane.tick(data.draw(st.sampled_from((0.5, 5.0, 30.0, 120.0))))
        elif what == "attendant":
            actions = lane.feed(ev.AttendantOpen(lane.fresh("att"), "help", "op1"))
        elif pending:
            action = pending.pop(0)
            if isinstance(action, OpenBarrier | CloseBarrier):
                actions = lane.feed(ev.BarrierAcked(action.cmd_id, True, boom), 0.05)
            elif isinstance(action, QueryDevice):
                truth = tuple(sorted(sensors.items()))
                actions = lane.feed(ev.DeviceSnapshotted(boom, truth, lane.fresh("d")))
            elif isinstance(action, Persist):
                actions = lane.feed(ev.Persisted(action.persist_id, lane.fresh("rec-"), 1))
        pending += [a for a in actions if isinstance(a, ANSWERED)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_latched_no_charge_and_once_the_device_works_the_lane_takes_payments(
    data: st.DataObject,
) -> None:
    """Safety (checked on every step by the SafetyMonitor of core_kit): while latched no
    Authorise and no charged record, the alarm is up, and a self-test's open is only ever sent
    at an empty lane, never with a paid passage. Liveness: once the device works, the lane is
    idle with no fault in a bounded number of steps, and the next vehicle pays and passes.
    The latch is the lane's own, or one kept over a restart."""
    lane = LaneDriver()
    if data.draw(st.booleans(), label="carried over a restart"):
        carried_over(lane)
    else:
        stuck_closed(lane)
    assert lane.state.latch is not None
    stuck_world(lane, data, data.draw(st.integers(0, 120)))
    note(f"after the stuck world: {lane.phase()} {lane.state}")
    world_answers(lane, budget=80)
    assert lane.state.latch is None and lane.state.accepting_payments
    lane.through(lane.fresh("v"), "289999999999999999")
