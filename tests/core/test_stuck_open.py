"""A boom stuck open (commanded closed, never seen closed): `barrier_stuck_open`, a notice that
lasts until the device reports the boom closed, whatever the lane commands meanwhile; the lane
goes on taking payments (a vehicle that does not pay is an unpaid passage, as under any boom
up for nobody), and commands the close again at an empty lane on a doubling backoff until a
boom that moves comes down. Ends with the hypothesis property: anything happens under a boom
stuck up (the SafetyMonitor checks the alarm on every step), then it works again and heals."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, of_type, one, rules
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_recovery import world_answers
from test_stuck_closed import CLEAR, stuck_world

from barrier.messages import MAX_TEXT
from lane.core import events as ev
from lane.core.actions import (
    Action,
    Authorise,
    ClearAlarm,
    CloseBarrier,
    OpenBarrier,
    Persist,
    QueryDevice,
    RaiseAlarm,
)
from lane.core.names import Alarm
from lane.core.state import Phase

CLOSE_AGAIN = "close again: boom stuck open"
STUCK = Alarm.BARRIER_STUCK_OPEN


def stuck_open(lane: LaneDriver, vehicle_id: str = "v1") -> list[Action]:
    """A paid vehicle passes and the boom does not come down after it: its close is acked and
    the device still says open. Returns the overdue tick's actions (the alarm raised)."""
    lane.through("v0")
    lane.pay(vehicle_id)
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.feed(ev.BarrierAcked(f"{vehicle_id}/close", True, "open"), 0.05)  # acked, stays up
    return lane.tick_at_deadline()


def answer(lane: LaneDriver, barrier: str = "open", **sensors: bool) -> list[Action]:
    truth = dict(CLEAR) | sensors
    return lane.feed(ev.DeviceSnapshotted(barrier, tuple(sorted(truth.items())), lane.fresh("d")))


def asked_again(actions: list[Action]) -> list[QueryDevice]:
    return [a for a in of_type(actions, QueryDevice) if a.reason == CLOSE_AGAIN]


def raised(actions: list[Action], code: str) -> list[RaiseAlarm]:
    return [a for a in of_type(actions, RaiseAlarm) if a.code == code]


def test_a_close_not_reached_raises_barrier_stuck_open_a_notice_with_its_cure_in_the_text() -> None:
    lane = LaneDriver(rules(move_s=4.0, selftest_s=5.0, selftest_max_s=60.0))
    actions = stuck_open(lane)
    (alarm,) = raised(actions, STUCK)
    text = alarm.message
    assert "commanded closed, device reports open after 4 s, since that close" in text
    assert "payments go on, unpaid passages recorded" in text
    assert "clears when the device reports closed" in text
    assert "close sent again every 5 s doubling to 60 s while nobody is there" in text
    assert len(text) <= MAX_TEXT  # whole in the health message
    assert raised(actions, Alarm.BARRIER_STUCK) == [] and lane.state.latch is None
    assert STUCK in lane.state.notices and lane.state.faults == frozenset()
    assert lane.state.accepting_payments
    assert of_type(actions, QueryDevice)  # a lost report of closed, or a boom to close again


def test_dense_traffic_the_next_paid_vehicles_open_is_reached_and_the_alarm_holds() -> None:
    """The next vehicle pays and passes under the boom stuck up; its open is "reached" at once,
    which must not clear the alarm, nor may its close, missed again, raise it a second time."""
    lane = LaneDriver()
    stuck_open(lane)
    for n, vehicle in enumerate(("v2", "v3"), start=1):
        lane.arrive(vehicle)
        assert of_type(lane.scan(f"28{n}".ljust(18, "0")), Authorise)  # payment accepted
        lane.decide()
        assert one(lane.persisted(), OpenBarrier).cmd_id == f"{vehicle}/open"
        lane.ack()  # acked open, reported open: reached
        lane.leave_pay_point()
        lane.cross()
        lane.feed(ev.BarrierAcked(f"{vehicle}/close", True, "open"), 0.05)
        lane.tick_at_deadline()  # the close missed again
        assert STUCK in lane.state.notices, lane.state
    assert len(raised(lane.actions, STUCK)) == 1
    assert ClearAlarm(STUCK) not in lane.actions
    charged = [p.draft.amount_minor for p in of_type(lane.actions, Persist)]
    assert charged == [250, 250, 250, 250]  # v0, v1, and the two that paid under it


def test_the_next_vehicle_paying_before_move_s_does_not_hide_the_missed_close() -> None:
    """Denser still: the next vehicle's open is acked before the close's `move_s` is over. The
    boom never left `open` (a drive that moves acks a close `closing`), so the open is reached
    at once and the close is still judged at its own time."""
    lane = LaneDriver(rules(move_s=4.0))
    lane.through("v0")
    lane.pay("v1")
    lane.ack()
    lane.arrive("v2")  # the next one is at the pay point already
    lane.cross()
    lane.feed(ev.BarrierAcked("v1/close", True, "open"), 0.05)  # acked, it stays up
    missed_at = lane.now + 4.0
    lane.scan("282222222222222222")
    lane.decide(dt=0.3)
    assert one(lane.persisted(), OpenBarrier).cmd_id == "v2/open"
    lane.ack()  # acked open and reported open: reached, under the boom that never moved
    assert STUCK not in lane.state.notices
    actions = lane.tick_at_deadline()
    assert lane.now == pytest.approx(missed_at)
    (alarm,) = raised(actions, STUCK)
    assert "commanded closed, device reports open" in alarm.message
    assert lane.phase() is Phase.OPEN  # v2 goes on through


def test_a_boom_that_starts_down_and_is_reopened_for_the_next_vehicle_is_not_stuck() -> None:
    """A working drive acks the close `closing`: the next vehicle's open turns it round
    before it gets down, and nothing was missed."""
    lane = LaneDriver(rules(move_s=4.0))
    lane.pay("v1")
    lane.ack()
    lane.arrive("v2")
    lane.cross()
    lane.feed(ev.BarrierAcked("v1/close", True, "closing"), 0.05)
    lane.scan("282222222222222222")
    lane.decide(dt=0.3)
    lane.persisted()
    lane.feed(ev.BarrierAcked("v2/open", True, "opening"), 0.05)
    lane.report("open", dt=0.5)
    lane.tick(10.0)
    assert STUCK not in lane.state.notices and raised(lane.actions, STUCK) == []


def test_a_vehicle_that_does_not_pay_and_passes_is_an_unpaid_passage() -> None:
    lane = LaneDriver()
    stuck_open(lane)
    actions = lane.sensor("safety_loop", True)
    violation = one(actions, Persist)
    assert violation.draft.kind == "violation" and "unpaid_passage" in violation.draft.flags
    assert raised(actions, Alarm.UNPAID_PASSAGE) and STUCK in lane.state.notices


@pytest.mark.parametrize("how", ["report", "snapshot", "ack"])
def test_the_device_saying_closed_clears_it_whatever_the_lane_is_doing(how: str) -> None:
    lane = LaneDriver()
    stuck_open(lane)
    lane.arrive("v2")  # someone at the pay point: no close of the lane's own is due
    if how == "report":
        actions = lane.report("closed")
    elif how == "snapshot":
        actions = answer(lane, "closed", entry_loop=True)
    else:  # the close commanded after the first query is acked as done
        close = one(answer(lane, "open"), CloseBarrier)
        actions = lane.feed(ev.BarrierAcked(close.cmd_id, True, "closed"), 0.05)
    assert ClearAlarm(STUCK) in actions
    assert lane.state.stuck_open is None and STUCK not in lane.state.notices


def test_the_empty_lane_commands_the_close_again_on_a_doubling_backoff_until_it_moves() -> None:
    lane = LaneDriver(rules(move_s=4.0, selftest_s=5.0, selftest_max_s=40.0))
    actions = stuck_open(lane)
    raised_at = lane.now
    asked: list[float] = []
    for _ in range(6):
        # The device's answer: the boom is up for nobody, so the lane closes it; acked, it
        # stays up. Then the lane waits for the next try, raising nothing more.
        close = one(answer(lane, "open"), CloseBarrier)
        lane.feed(ev.BarrierAcked(close.cmd_id, True, "open"), 0.05)
        actions = []
        while not asked_again(actions):
            actions = lane.tick_at_deadline()
            assert of_type(actions, RaiseAlarm) == [], actions  # nor lane_stuck
        asked.append(lane.now - raised_at)
    waits = [round(b - a, 3) for a, b in zip([0.0, *asked], asked, strict=False)]
    assert waits == [5.0, 10.0, 20.0, 40.0, 40.0, 40.0]
    # Repaired: the next close comes down, and the alarm clears without an operator.
    close = one(answer(lane, "open"), CloseBarrier)
    lane.feed(ev.BarrierAcked(close.cmd_id, True, "closing"), 0.05)
    actions = lane.report("closed", dt=1.0)
    assert ClearAlarm(STUCK) in actions
    assert lane.phase() is Phase.IDLE and lane.state.notices == frozenset()
    assert next_close_query(lane) is None


def next_close_query(lane: LaneDriver) -> QueryDevice | None:
    """The next query of a close again within ten minutes, if any."""
    start = lane.now
    while lane.now - start < 600.0:
        actions = lane.tick(30.0)
        found = asked_again(actions)
        if found:
            return found[0]
    return None


def test_no_close_again_while_someone_is_at_the_lane_or_it_is_closed_by_an_attendant() -> None:
    lane = LaneDriver(rules(selftest_s=5.0))
    stuck_open(lane)
    lane.arrive("v2")  # waits at the pay point past the first try's time
    assert asked_again(lane.tick(10.0)) == []
    assert asked_again(lane.leave_pay_point()), "asked as soon as the lane is empty"
    lane.feed(ev.AttendantCloseLane("boom repair"))
    assert next_close_query(lane) is None  # someone may be working on the boom
    assert asked_again(lane.feed(ev.AttendantReopenLane("done")))


def test_a_restarted_lane_finds_the_boom_up_closes_it_and_raises_the_alarm_again() -> None:
    """Nothing is kept over a restart: the lane asks the device at its start, closes a boom
    up for nobody, and a boom that still does not come down raises the alarm again."""
    lane = LaneDriver()
    assert of_type(lane.feed(ev.LinkChanged(up=True)), QueryDevice)
    close = one(answer(lane, "open"), CloseBarrier)
    lane.feed(ev.BarrierAcked(close.cmd_id, True, "open"), 0.05)
    (alarm,) = raised(lane.tick_at_deadline(), STUCK)
    assert "commanded closed, device reports open" in alarm.message
    assert lane.state.accepting_payments


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_stuck_open_the_alarm_holds_until_closed_and_once_the_boom_works_the_lane_heals(
    data: st.DataObject,
) -> None:
    """Safety (the SafetyMonitor of core_kit, every step): the alarm is up iff a close was
    missed and the boom not seen closed since, and never refuses a payment. Liveness: once
    the device works, the lane is idle with no alarm, and the next vehicle pays and passes."""
    lane = LaneDriver()
    stuck_open(lane)
    stuck_world(lane, data, data.draw(st.integers(0, 120)), boom="open")
    note(f"after the stuck world: {lane.phase()} {lane.state}")
    assert STUCK in lane.state.notices  # the device never said closed
    world_answers(lane, budget=80)
    assert lane.state.stuck_open is None and STUCK not in lane.state.notices
    lane.through(lane.fresh("v"), "289999999999999999")
