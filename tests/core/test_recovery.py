"""The lane heals itself (issue #11 items 2-5, core side): bounded dwell in every phase, the
device's whole truth adopted, barrier_stuck, paid-not-passed, passages the lane did not open for.
Ends with the liveness property: from any reachable state, once the world is well and tells the
truth, the lane is idle within a bounded number of steps, with no alarm of its own left."""

from __future__ import annotations

from dataclasses import replace

import pytest
from core_kit import (
    LASTING_FAULTS,
    Chooser,
    EventSource,
    LaneDriver,
    fault_lasts,
    metro_answer,
    of_type,
    one,
    random_walk,
    recording,
    rules,
)
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_invariants import hypothesis_chooser, lane_rules
from test_machine_barrier import opened

from lane.core import events as ev
from lane.core.actions import (
    Action,
    ClearAlarm,
    CloseBarrier,
    OpenBarrier,
    Persist,
    PriceTrip,
    QueryDevice,
    RaiseAlarm,
)
from lane.core.alarms import Alarm
from lane.core.machine import next_deadline
from lane.core.names import TripSource
from lane.core.notes import NoteBase, VehicleLeft
from lane.core.state import LaneMode, LaneRules, Phase
from lane.core.trip import TapOut
from uplink.records import AuthInfo, RecordDraft

RECORD = RecordDraft("toll", "v", 1, 250, "EUR", "token", None, AuthInfo("approved"))
ALL_CLEAR = (("entry_loop", False), ("exit_loop", False), ("safety_loop", False))


def snapshot(lane: LaneDriver, barrier: str, **sensors: bool) -> list[Action]:
    truth = dict(ALL_CLEAR) | sensors
    return lane.feed(ev.DeviceSnapshotted(barrier, tuple(sorted(truth.items())), lane.fresh("d")))


def raised(actions: list[Action], code: str) -> RaiseAlarm:
    found = [a for a in of_type(actions, RaiseAlarm) if a.code == code]
    assert found, f"no {code} alarm in {actions}"
    return found[0]


# --- item 3: no phase waits for ever -------------------------------------------------------


def test_open_too_long_raises_lane_stuck_asks_the_device_and_a_lost_exit_edge_closes() -> None:
    lane = LaneDriver()
    opened(lane)
    lane.sensor("safety_loop", True)
    lane.sensor("safety_loop", False)  # under the boom ... and the exit loop edge is lost
    actions = lane.tick_at_deadline()
    alarm = raised(actions, Alarm.LANE_STUCK)
    assert "open" in alarm.message and "exit loop" in alarm.message
    assert one(actions, QueryDevice).reason.startswith("open")
    actions = snapshot(lane, "open")
    assert one(actions, CloseBarrier).cmd_id == "v1/close"
    assert ClearAlarm(Alarm.LANE_STUCK) in actions  # closing now: the wait is over
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_a_boom_that_came_down_by_itself_after_opening_ends_the_passage_at_the_dwell() -> None:
    """Found by the liveness property: the device reported open, then closed on its own (a
    reset after a fault); nobody is under it or at the pay point. Before, the lane waited in
    `open` for ever, asking the device every pass_dwell_s."""
    lane = LaneDriver()
    opened(lane)
    lane.report("open")
    lane.report("closed")
    actions = lane.tick_at_deadline()
    raised(actions, Alarm.LANE_STUCK)
    actions = snapshot(lane, "closed")
    assert ClearAlarm(Alarm.LANE_STUCK) in actions
    assert of_type(actions, Persist) == []  # let through: never a refund
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_a_vehicle_through_unheard_while_the_next_one_pays_ends_its_passage() -> None:
    """Seen in the console's fault walk: the barrier went offline while open for v1, v1 drove
    through unheard, and v2 arrived and paid. The snapshot's occupied entry loop is v2's (the
    lane saw it arrive after v1 left the pay point): v1's passage ends and v2 is let through.
    Before, the lane waited in `open` for v1's exit edge for ever."""
    lane = LaneDriver()
    opened(lane)
    lane.report("open")
    lane.report("offline")
    lane.report("open")
    lane.leave_pay_point()  # v1, learnt late; its crossing was lost
    lane.arrive("v2")
    lane.scan()
    lane.decide()
    lane.persisted()
    raised(lane.tick_at_deadline(), Alarm.LANE_STUCK)
    actions = snapshot(lane, "open", entry_loop=True)
    assert [(n.vehicle_id, n.seen) for n in of_type(actions, VehicleLeft)] == [("v1", "snapshot")]
    assert one(actions, CloseBarrier).cmd_id == "v1/close"  # behind v1, as after any passage
    lane.ack()
    assert lane.last_command() == OpenBarrier("v2/open", lane.last(OpenBarrier).deadline, 1)
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_a_boom_down_with_the_paid_vehicle_still_at_the_pay_point_keeps_waiting() -> None:
    lane = LaneDriver()
    opened(lane)
    lane.report("open")
    lane.report("closed")
    lane.tick_at_deadline()
    snapshot(lane, "closed", entry_loop=True)
    assert lane.phase() is Phase.OPEN and Alarm.LANE_STUCK in lane.state.notices


def test_every_phase_with_a_wait_has_a_bounded_dwell() -> None:
    lane = LaneDriver(rules(pay_dwell_s=30.0))
    lane.arrive("v1")
    actions = lane.tick_at_deadline()
    assert lane.now == pytest.approx(1030.0)
    assert "vehicle_present" in raised(actions, Alarm.LANE_STUCK).message
    assert of_type(actions, QueryDevice)
    # The device says nobody is on the entry loop: the vehicle left unheard.
    actions = snapshot(lane, "closed")
    assert lane.phase() is Phase.IDLE
    assert ClearAlarm(Alarm.LANE_STUCK) in actions
    assert next_deadline(lane.state) is None  # idle with the barrier closed may last for ever


def test_a_vehicle_still_at_the_pay_point_keeps_the_lane_stuck_alarm_and_is_served() -> None:
    lane = LaneDriver(rules(pay_dwell_s=30.0))
    lane.arrive("v1")
    raised(lane.tick_at_deadline(), Alarm.LANE_STUCK)
    actions = snapshot(lane, "closed", entry_loop=True)
    assert lane.phase() is Phase.VEHICLE_PRESENT and not of_type(actions, ClearAlarm)
    actions = lane.tick_at_deadline()  # asked again one dwell later, not raised twice
    assert of_type(actions, QueryDevice) and not of_type(actions, RaiseAlarm)
    lane.scan()
    assert ClearAlarm(Alarm.LANE_STUCK) in lane.actions


# --- item 2: the device's whole truth ---------------------------------------------------------


def test_after_a_restart_an_open_barrier_nobody_paid_for_closes_once_the_area_is_clear() -> None:
    lane = LaneDriver()
    actions = lane.feed(ev.LinkChanged(up=True))
    assert one(actions, QueryDevice).reason == "connected"
    lane.report("open")  # the retained state of the device
    actions = snapshot(lane, "open", safety_loop=True)
    assert of_type(actions, CloseBarrier) == []  # rule 3: never over an occupied loop
    assert lane.phase() is Phase.CLOSING
    actions = lane.sensor("safety_loop", False)
    close = one(actions, CloseBarrier)
    lane.ack(close.cmd_id)
    assert lane.phase() is Phase.IDLE


def test_a_vehicle_under_a_boom_the_lane_did_not_open_is_a_violation_and_an_alarm() -> None:
    lane = LaneDriver()
    lane.report("open")
    actions = lane.sensor("safety_loop", True)
    record = one(actions, Persist)
    assert record.draft.kind == "violation"
    assert "unpaid_passage" in record.draft.flags
    assert "not open for it" in raised(actions, Alarm.UNPAID_PASSAGE).message
    assert one(actions, NoteBase).name == "tailgating"
    lane.sensor("safety_loop", False)
    actions = lane.report("closed")
    assert ClearAlarm(Alarm.UNPAID_PASSAGE) in actions


def test_after_a_restart_a_vehicle_seen_under_the_boom_before_its_state_is_a_violation() -> None:
    lane = LaneDriver()
    lane.sensor("safety_loop", True)  # queued for the lane's session while it was down
    assert of_type(lane.actions, Persist) == []  # the barrier's state is not known yet
    actions = lane.report("open")
    assert "unpaid_passage" in one(actions, Persist).draft.flags
    raised(actions, Alarm.UNPAID_PASSAGE)


def test_after_a_restart_a_vehicle_gone_before_the_barrier_state_is_a_violation() -> None:
    lane = LaneDriver()
    lane.sensor("safety_loop", True)  # both edges queued for the lane's session while it was
    lane.sensor("safety_loop", False)  # down: the vehicle went under and away
    assert of_type(lane.actions, Persist) == []
    actions = lane.report("open")
    assert "unpaid_passage" in one(actions, Persist).draft.flags
    raised(actions, Alarm.UNPAID_PASSAGE)
    assert of_type(lane.report("closed"), Persist) == []  # once: the position is known now


def test_a_vehicle_seen_before_a_closed_barrier_state_is_no_violation() -> None:
    lane = LaneDriver()
    lane.sensor("safety_loop", True)
    lane.sensor("safety_loop", False)
    assert of_type(lane.report("closed"), Persist) == []
    assert of_type(lane.report("open"), Persist) == []  # the earlier reading is not reused


def test_a_snapshot_from_a_working_device_clears_a_refusal_with_nothing_pending() -> None:
    lane = LaneDriver()
    lane.report("closed")
    lane.state = replace(lane.state, faults=frozenset({"barrier_refused"}))
    actions = snapshot(lane, "closed")
    assert ClearAlarm(Alarm.BARRIER_REFUSED) in actions
    assert lane.phase() is Phase.IDLE


# --- item 1 core side: a held command is probed, so no_ack clears --------------------------------


def test_no_ack_then_acking_again_the_lane_probes_and_clears_by_itself() -> None:
    lane = LaneDriver(rules(max_cmd_attempts=2, probe_s=5.0))
    lane.pay("v1")
    lane.tick_at_deadline()
    actions = lane.tick_at_deadline()
    raised(actions, "barrier_no_ack")
    assert lane.phase() is Phase.FAULT
    actions = lane.tick_at_deadline()  # the probe
    assert lane.now == pytest.approx(lane.log[-2][0] + 5.0)
    assert of_type(actions, QueryDevice)
    assert one(actions, OpenBarrier).cmd_id == "v1/open"  # the SAME command, at most once
    actions = lane.ack()
    assert ClearAlarm(Alarm.BARRIER_NO_ACK) in actions
    assert lane.phase() is Phase.OPEN


# --- item 4: barrier_stuck --------------------------------------------------------------------


def test_an_open_not_reached_in_the_movement_time_is_barrier_stuck() -> None:
    """(A close not reached is `barrier_stuck_open`: tests/core/test_stuck_open.py.)"""
    lane = LaneDriver(rules(move_s=4.0))
    lane.pay("v1")
    # Acked with the position it is stuck in (the ack's position is a report of its own).
    lane.feed(ev.BarrierAcked(lane.last_command().cmd_id, True, "closed"))
    actions = lane.tick_at_deadline()
    alarm = raised(actions, Alarm.BARRIER_STUCK)
    assert "commanded open" in alarm.message
    assert of_type(actions, QueryDevice)
    assert "barrier_stuck" in lane.state.faults
    assert not lane.state.accepting_payments  # new payments are refused while it lasts
    actions = lane.report("open")
    assert ClearAlarm(Alarm.BARRIER_STUCK) in actions


# --- item 5: paid but not passed ----------------------------------------------------------------


def test_paid_and_not_let_through_is_a_record_an_alarm_and_the_lane_moves_on() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    lane.pay("v1")
    lane.report("offline")  # the barrier leaves before it opened
    assert lane.phase() is Phase.FAULT
    while "paid_not_passed" not in {a.name for a in of_type(lane.actions, NoteBase)}:
        lane.tick_at_deadline()
    assert lane.now == pytest.approx(lane.state.rules.pass_dwell_s + 1000.0, abs=1.0)
    actions = lane.log[-1][2]
    record = one(actions, Persist)
    assert record.persist_id == "v1/not_passed"
    assert record.draft.vehicle_id == "v1" and "paid_not_passed" in record.draft.flags
    assert any(f.startswith("record:") for f in record.draft.flags)
    assert "attendant" in raised(actions, Alarm.PAID_NOT_PASSED).message
    assert lane.state.passage is None and lane.state.command is None
    lane.report("closed")
    assert lane.phase() is Phase.IDLE
    lane.through("v2", "282222222222222222")  # the next vehicle is served ...
    assert ClearAlarm(Alarm.PAID_NOT_PASSED) in lane.actions  # ... and the alarm is over


def test_a_barrier_the_device_closed_by_itself_does_not_hold_the_passage_open() -> None:
    lane = LaneDriver()
    opened(lane)
    lane.report("open")  # the device said open: the vehicle was let through ...
    lane.report("closed")  # ... and the device closed by itself, nothing crossed that we heard
    actions = lane.tick_at_deadline()
    raised(actions, Alarm.LANE_STUCK)
    # Nobody at the pay point, nothing under the boom: the vehicle is gone, the passage ends.
    actions = snapshot(lane, "closed")
    assert one(actions, CloseBarrier).cmd_id == "v1/close"
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_a_vehicle_let_through_is_never_a_refund_however_long_the_barrier_is_away() -> None:
    lane = LaneDriver(rules(pass_dwell_s=60.0))
    opened(lane)  # the device said open
    lane.report("offline")  # ... and left; the vehicle drives through unheard
    while lane.now < 1000.0 + 600.0:
        lane.tick_at_deadline()  # probes every probe_s, ten minutes of them
    assert "paid_not_passed" not in {a.name for a in of_type(lane.actions, NoteBase)}
    lane.report("open")
    snapshot(lane, "open")
    lane.ack()
    assert lane.phase() is Phase.IDLE


# --- liveness ---------------------------------------------------------------------------------


def world_answers(lane: LaneDriver, budget: int) -> int:
    """The world is well and tells the truth: every loop is clear, the device executes and
    reports every command and answers every query; records are written. Returns the steps taken
    until the lane is idle with no alarm of its own."""
    position = "closed"
    for event in (
        ev.LinkChanged(up=True),
        ev.QueueChanged(full=False, high_water=False),
        ev.DiskAnswering(answering=True),
        ev.CameraSees(seeing=True),
        ev.AttendantReopenLane("healed"),
        ev.BarrierReported(position),
        *(ev.SensorChanged(s, False, lane.fresh("e")) for s in ("safety_loop", "light_curtain")),
        ev.SensorChanged("entry_loop", False, lane.fresh("e")),
    ):
        lane.feed(event)
    pending = list(lane.log[-1][2])
    for steps in range(budget):
        state = lane.state
        own = state.notices - {Alarm.PAID_NOT_PASSED}  # a refund record stays on the books
        owes = bool(state.carried)  # a payment carried over a restart: claimed or refunded
        if lane.phase() is Phase.IDLE and not own and not state.faults and not owes:
            return steps
        action = pending.pop(0) if pending else None
        vehicle = state.vehicle
        trip = vehicle.trip if vehicle is not None else None
        if (
            action is None
            and vehicle is not None
            and isinstance(trip, TapOut)
            and not vehicle.committed
        ):
            action = PriceTrip(trip.asked, vehicle.vehicle_id, 1, TripSource.CODE, "", None)
        elif action is None and vehicle is not None and vehicle.record_id is None:
            # A record asked for before the world got well is written now.
            persist_id = vehicle.pending_persist
            action = None if persist_id is None else Persist(persist_id, RECORD)
        if isinstance(action, OpenBarrier | CloseBarrier):
            position = "open" if isinstance(action, OpenBarrier) else "closed"
            actions = lane.feed(ev.BarrierAcked(action.cmd_id, True, position), 0.05)
            actions += lane.feed(ev.BarrierReported(position), 0.5)
        elif isinstance(action, QueryDevice):
            actions = lane.feed(ev.DeviceSnapshotted(position, ALL_CLEAR, lane.fresh("d")))
        elif isinstance(action, PriceTrip):
            actions = lane.feed(metro_answer(action.trip_id), 0.004)
        elif isinstance(action, Persist):
            actions = lane.feed(ev.Persisted(action.persist_id, lane.fresh("rec-"), 1), 0.004)
        elif action is not None:
            continue
        elif next_deadline(state) is not None:
            actions = lane.tick_at_deadline()
        else:
            actions = lane.tick(1.0)
        pending += actions
    raise AssertionError(f"not idle after {budget} steps: {lane.phase()} {lane.state}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lane_rules=lane_rules, data=st.data())
def test_liveness_from_any_reachable_state_the_lane_gets_back_to_idle(
    lane_rules: LaneRules, data: st.DataObject
) -> None:
    lane = LaneDriver(lane_rules)
    if data.draw(st.booleans(), label="a paid vehicle carried over a restart"):
        lane.paid_carried(age_s=data.draw(st.sampled_from([0.0, 45.0, 600.0]), label="age"))
    random_walk(lane, EventSource(hypothesis_chooser(data)), 40)
    note(f"after the walk: {lane.phase()} {lane.state}")
    start = lane.now
    steps = world_answers(lane, budget=60)
    note(f"idle after {steps} steps, {lane.now - start:.1f} s")
    # Every paid vehicle went through or has its refund record: none is left owed.
    assert not lane.monitor.owed, lane.monitor.owed
    # Bounded in time too: the longest dwell, a probe, a move and the acks, a few times over.
    r = lane.state.rules
    assert lane.now - start <= 3 * (r.pass_dwell_s + r.pay_dwell_s + r.probe_s + r.move_s)


def test_liveness_holds_in_every_mode_from_a_stuck_open_barrier() -> None:
    for mode in LaneMode:
        lane = LaneDriver(rules(mode))
        lane.report("open")
        lane.report("offline")
        world_answers(lane, budget=40)
        assert of_type(lane.actions, QueryDevice)


def lasting_fault_walk(lane: LaneDriver, choose: Chooser, as_recorded: bool) -> None:
    """A random walk (stopped as a record is on its way to disk, when `as_recorded`), then a
    blocking fault that lasts."""
    random_walk(lane, EventSource(choose), 40, until=recording if as_recorded else None)
    fault_lasts(lane, choose.pick(LASTING_FAULTS))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lane_rules=lane_rules, data=st.data())
def test_liveness_under_a_lasting_fault_every_paid_vehicle_ends_through_or_refunded(
    lane_rules: LaneRules, data: st.DataObject
) -> None:
    """Faults that outlast a paid vehicle's wait do not hold it for their duration: from any
    reachable state (often one with a record on its way to disk as the fault comes), every
    paid vehicle is through or refunded within its `pass_dwell_s` (the monitor), and once the
    world is well the lane is idle."""
    lane = LaneDriver(lane_rules)
    if data.draw(st.booleans(), label="a paid vehicle carried over a restart"):
        lane.paid_carried(age_s=data.draw(st.sampled_from([0.0, 45.0]), label="age"))
    as_recorded = data.draw(st.booleans(), label="the fault comes as a record is written")
    lasting_fault_walk(lane, hypothesis_chooser(data), as_recorded)
    note(f"after the fault: {lane.phase()} {lane.state}")
    world_answers(lane, budget=60)
    assert not lane.monitor.owed, lane.monitor.owed


def test_the_lasting_fault_walks_hold_vehicles_paid_as_the_fault_came() -> None:
    """The walks above meet the case they are for, in every mode: a vehicle whose record
    became durable under the fault, refunded without ever being opened for."""
    held: set[LaneMode] = set()
    for seed in range(120):
        mode = list(LaneMode)[seed % len(LaneMode)]
        lane = LaneDriver(rules(mode))
        lasting_fault_walk(lane, Chooser.seeded(seed), as_recorded=True)
        opened = {a.cmd_id for a in of_type(lane.actions, OpenBarrier)}
        refunded = [p for p in of_type(lane.actions, Persist) if p.ends_owed is not None]
        if any(f"{p.draft.vehicle_id}/open" not in opened for p in refunded):
            held.add(mode)
    assert held == set(LaneMode), held
