"""Opening, closing, safety loop (rule 3), acks and retries, barrier faults, tailgating."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, displayed, of_type, one, rules

from lane.core import events as ev
from lane.core.actions import (
    Authorise,
    ClearAlarm,
    CloseBarrier,
    OpenBarrier,
    PassageServed,
    Persist,
    QueryDevice,
    RaiseAlarm,
    Settle,
)
from lane.core.machine import next_deadline
from lane.core.names import Alarm, DeviceWords, Position
from lane.core.notes import BarrierOpened, ExitLoopIgnored, Tailgating, VehicleLeft
from lane.core.state import Phase


def opened(lane: LaneDriver, vehicle_id: str = "v1") -> None:
    lane.pay(vehicle_id)
    lane.ack()
    assert lane.phase() is Phase.OPEN


def test_ack_opens_with_a_latency_note() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()  # the code was in a frame taken 50 ms before
    lane.decide(dt=0.3)
    lane.persisted(dt=0.004)
    actions = lane.ack(dt=0.05)
    assert lane.phase() is Phase.OPEN
    note = one(actions, BarrierOpened)
    assert note.vehicle_id == "v1"
    assert note.record_id == lane.state.passage.record_id  # type: ignore[union-attr]
    assert note.latency_ms == pytest.approx(50 + 300 + 4 + 50)
    assert note.fields() == {"vehicle_id": "v1", "record_id": note.record_id, "latency_ms": 404.0}
    # Toll: the barrier waits for the vehicle, for a bounded time (then lane_stuck).
    assert next_deadline(lane.state) == pytest.approx(lane.now + lane.state.rules.pass_dwell_s)


def test_exit_loop_with_safety_clear_closes_then_idle() -> None:
    lane = LaneDriver(rules(cmd_ttl_s=3.0))
    opened(lane)
    lane.leave_pay_point()
    assert lane.sensor("safety_loop", True) == []
    assert lane.sensor("safety_loop", False) == []
    lane.sensor("exit_loop", True)
    actions = lane.sensor("exit_loop", False)
    record_id = lane.state.passage.record_id if lane.state.passage else ""
    assert actions == [
        VehicleLeft(vehicle_id="v1"),
        CloseBarrier("v1/close", lane.now + 3.0, 1),
        PassageServed(record_id),  # through: the queue owes it nothing any more
    ]
    assert lane.phase() is Phase.CLOSING
    assert lane.ack("v1/close") == []
    assert lane.phase() is Phase.IDLE
    assert lane.state.passage is None and lane.state.command is None


@pytest.mark.parametrize(
    "sensors",
    [("safety_loop",), ("light_curtain",), ("safety_loop", "light_curtain")],
    ids=["loop", "curtain", "both"],
)
def test_close_is_held_while_any_safety_sensor_is_occupied(sensors: tuple[str, ...]) -> None:
    lane = LaneDriver()
    opened(lane)
    for sensor in sensors:
        lane.sensor(sensor, True)
    lane.sensor("exit_loop", False)  # rule 3: no close over an occupied area
    assert of_type(lane.actions[-3:], CloseBarrier) == []
    assert lane.phase() is Phase.CLOSING
    for sensor in sensors[:-1]:
        assert lane.sensor(sensor, False) == []  # the other one still sees something
    actions = lane.sensor(sensors[-1], False)
    assert one(actions, CloseBarrier).cmd_id == "v1/close"


def test_one_safety_sensor_clearing_does_not_clear_the_other() -> None:
    lane = LaneDriver()
    opened(lane)
    lane.sensor("safety_loop", True)
    lane.sensor("light_curtain", True)
    lane.sensor("exit_loop", False)
    assert lane.sensor("light_curtain", False) == []  # the loop is still occupied
    assert lane.state.safety_occupied


def test_device_refusing_close_for_its_loop_waits_before_resending() -> None:
    lane = LaneDriver(rules(ack_timeout_s=0.6))
    opened(lane)
    lane.cross()
    assert lane.ack("v1/close", ok=False, error="safety_loop_occupied") == []  # no hot resend
    assert lane.phase() is Phase.CLOSING
    assert next_deadline(lane.state) == pytest.approx(lane.now + 0.6)
    # Our own sensors then see the loop and its clearing: that is what the close waited for.
    lane.sensor("safety_loop", True)
    actions = lane.sensor("safety_loop", False)
    assert one(actions, CloseBarrier) == CloseBarrier("v1/close", lane.now + 3.0, 1)


def test_device_refusing_close_is_retried_on_a_timer_if_our_sensors_saw_nothing() -> None:
    lane = LaneDriver(rules(ack_timeout_s=0.6))
    opened(lane)
    lane.cross()
    lane.ack("v1/close", ok=False, error="safety_loop_occupied")
    assert lane.tick(0.3) == []
    actions = lane.tick_at_deadline()
    assert one(actions, CloseBarrier).cmd_id == "v1/close"  # same cmd_id
    assert one(actions, CloseBarrier).attempt == 1  # the device answered: count afresh


# --- acks, timeouts and retries (rule 2) -----------------------------------------------------


@pytest.mark.parametrize("op", ["open", "close"])
def test_ack_timeout_resends_the_same_cmd_id_then_faults(op: str) -> None:
    lane = LaneDriver(rules(ack_timeout_s=0.6, max_cmd_attempts=3))
    lane.pay("v1")
    kind: type[OpenBarrier] | type[CloseBarrier] = OpenBarrier
    if op == "close":
        lane.ack()
        lane.cross()
        kind = CloseBarrier
    cmd_id = f"v1/{op}"
    assert lane.last_command() == kind(cmd_id, lane.now + 3.0, 1)
    for attempt in (2, 3):
        assert lane.tick(0.5) == []  # not yet
        actions = lane.tick_at_deadline()
        assert actions == [kind(cmd_id, lane.now + 3.0, attempt)]
    actions = lane.tick_at_deadline()
    assert one(actions, RaiseAlarm) == RaiseAlarm(
        Alarm.BARRIER_NO_ACK, f"{_no_ack_msg} {op} {cmd_id}"
    )
    assert of_type(actions, kind) == []
    assert lane.phase() is Phase.FAULT
    # Nothing is sent until the barrier is heard from or the fault's probe is due.
    assert next_deadline(lane.state) == pytest.approx(lane.now + lane.state.rules.probe_s)
    # A barrier state report does not clear it (a device that reports may drop commands):
    # the probe sends the SAME command again, and its ack clears the fault.
    assert lane.report("closed" if op == "open" else "open") == []
    actions = lane.tick_at_deadline()
    assert one(actions, kind) == kind(cmd_id, lane.now + 3.0, 1)
    assert ClearAlarm(Alarm.BARRIER_NO_ACK) in lane.ack(cmd_id)


_no_ack_msg = "barrier does not acknowledge commands:"


def test_a_late_ack_clears_the_no_ack_fault() -> None:
    lane = LaneDriver(rules(max_cmd_attempts=1))
    lane.pay()
    lane.tick_at_deadline()
    assert lane.phase() is Phase.FAULT
    actions = lane.ack("v1/open")
    assert ClearAlarm(Alarm.BARRIER_NO_ACK) in actions
    assert lane.phase() is Phase.OPEN


def test_a_device_acking_under_other_ids_gets_no_ack_with_how_many_it_sent() -> None:
    """A firmware that answers every command under a wrong id looks deaf: barrier_no_ack as
    ever, and its text counts the acks heard for other ids meanwhile."""
    lane = LaneDriver(rules(max_cmd_attempts=1))
    lane.pay()
    for wrong in ("w1", "w2"):
        assert lane.feed(ev.BarrierAcked(wrong, True, Position.OPENING)) == []
    alarm = one(lane.tick_at_deadline(), RaiseAlarm)
    assert alarm.code == Alarm.BARRIER_NO_ACK
    assert alarm.message == (
        f"{_no_ack_msg} open v1/open; 2 acks for other command ids heard meanwhile (does the"
        " device answer with the command's cmd_id?)"
    )


def test_stale_and_duplicate_acks_are_ignored() -> None:
    lane = LaneDriver()
    lane.pay()
    assert lane.ack("v0/open") == []  # someone else's
    lane.ack("v1/open")
    assert lane.ack("v1/open") == []  # QoS 1 redelivery
    assert lane.ack("v1/open", ok=False, error="jammed") == []
    assert lane.phase() is Phase.OPEN


def test_the_ack_is_the_report_of_the_move_its_command_started() -> None:
    """A device publishes no state for the move a command starts: its ack says where it is."""
    lane = LaneDriver(rules(move_s=4.0))
    lane.report("closed")
    lane.pay()
    lane.feed(ev.BarrierAcked("v1/open", True, Position.OPENING))
    assert lane.state.barrier == Position.OPENING
    lane.report("open")
    lane.leave_pay_point()
    lane.cross()
    lane.feed(ev.BarrierAcked("v1/close", True, Position.CLOSING))
    assert lane.state.barrier == Position.CLOSING
    assert lane.phase() is Phase.IDLE


def test_an_ack_at_the_commanded_position_needs_no_state_message() -> None:
    """A boom that is already there (or moves at once) is acked with the position it is in:
    the lane's expectation is met without waiting for a state, so no barrier_stuck."""
    lane = LaneDriver(rules(move_s=4.0))
    lane.report("closed")
    lane.pay()
    lane.feed(ev.BarrierAcked("v1/open", True, Position.OPEN))
    assert lane.state.expect is None
    lane.tick(5.0)
    assert "barrier_stuck" not in lane.state.faults


def test_a_device_of_the_previous_release_still_publishes_the_move_as_a_state() -> None:
    """It acks `opening`, publishes `opening` too, then `open`: the same as one that does not."""
    lane = LaneDriver()
    lane.report("closed")
    lane.pay()
    acked = lane.feed(ev.BarrierAcked("v1/open", True, Position.OPENING))
    assert of_type(acked, BarrierOpened)
    assert lane.report("opening") == []
    assert lane.report("open") == []
    assert lane.phase() is Phase.OPEN and not lane.state.faults
    assert lane.state.barrier == Position.OPEN and lane.state.expect is None


@pytest.mark.parametrize("op", ["open", "close"])
def test_refused_command_faults_and_goes_again_when_the_barrier_recovers(op: str) -> None:
    lane = LaneDriver()
    lane.pay("v1")
    if op == "close":
        lane.ack()
        lane.cross()
    actions = lane.ack(f"v1/{op}", ok=False, error="jammed")
    assert one(actions, RaiseAlarm) == RaiseAlarm(
        "barrier_refused", "barrier refused a command: jammed"
    )
    assert lane.phase() is Phase.FAULT
    actions = lane.report("closed")
    assert ClearAlarm(Alarm.BARRIER_REFUSED) in actions
    kind: type[OpenBarrier] | type[CloseBarrier] = OpenBarrier if op == "open" else CloseBarrier
    assert one(actions, kind).cmd_id == f"v1/{op}"


# --- barrier health --------------------------------------------------------------------------

BARRIER_DOWN = [("offline", "barrier_offline"), ("fault", "barrier_fault")]


@pytest.mark.parametrize(("report", "fault"), BARRIER_DOWN)
def test_barrier_offline_or_faulted_faults_the_lane(report: str, fault: str) -> None:
    lane = LaneDriver()
    actions = lane.report(report)
    assert one(actions, RaiseAlarm).code == fault
    assert lane.phase() is Phase.FAULT
    assert lane.report(report) == []  # raised once


@pytest.mark.parametrize(("report", "fault"), BARRIER_DOWN)
def test_no_command_goes_to_a_barrier_that_is_down(report: str, fault: str) -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.decide()
    lane.report(report)
    actions = lane.persisted()
    assert one(actions, Settle).auth_id == "v1/a1"  # the record is durable: it stays paid
    assert of_type(actions, OpenBarrier) == []
    assert lane.phase() is Phase.FAULT
    actions = lane.report("closed")
    assert ClearAlarm(fault) in actions
    assert one(actions, OpenBarrier).cmd_id == "v1/open"


def test_barrier_down_while_open_holds_the_close_until_it_is_back() -> None:
    lane = LaneDriver()
    opened(lane)
    lane.report("offline")
    assert of_type(lane.cross(), CloseBarrier) == []
    assert one(lane.report("open"), CloseBarrier).cmd_id == "v1/close"


# --- crossing the barrier --------------------------------------------------------------------


def test_exit_loop_before_anything_crossed_does_not_close() -> None:
    lane = LaneDriver()
    lane.pay("v1")
    assert lane.sensor("exit_loop", False) == [ExitLoopIgnored(vehicle_id="v1")]
    assert of_type(lane.ack(), CloseBarrier) == []
    assert lane.phase() is Phase.OPEN
    assert of_type(lane.cross(), CloseBarrier) != []


def test_a_vehicle_already_over_the_loop_counts_as_crossing() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.sensor("safety_loop", True)  # nosing under the closed barrier
    lane.scan()
    lane.decide()
    lane.persisted()
    lane.ack()
    lane.sensor("safety_loop", False)
    actions = lane.sensor("exit_loop", False)
    assert one(actions, CloseBarrier).cmd_id == "v1/close"
    assert lane.state.violations == 0


def test_tailgating_is_recorded_as_a_violation() -> None:
    lane = LaneDriver()
    opened(lane, "v1")
    lane.sensor("safety_loop", True)
    lane.sensor("safety_loop", False)
    actions = lane.sensor("safety_loop", True)  # a second vehicle under the same opening
    persist = one(actions, Persist)
    assert persist.persist_id == "v1/violation/1"
    draft = persist.draft
    assert (draft.kind, draft.amount_minor, draft.auth.result) == ("violation", 0, "none")
    assert draft.flags == ("tailgating",)
    assert Tailgating(vehicle_id="v1", flags=("tailgating",)) in actions
    assert lane.persisted("v1/violation/1") == []  # the record opens nothing
    lane.sensor("safety_loop", False)
    third = one(lane.sensor("safety_loop", True), Persist)  # every one of them is recorded
    assert third.persist_id == "v1/violation/2"
    lane.sensor("safety_loop", False)
    assert one(lane.sensor("exit_loop", False), CloseBarrier).cmd_id == "v1/close"
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_next_vehicle_is_served_after_the_close() -> None:
    lane = LaneDriver()
    opened(lane, "v1")
    lane.leave_pay_point()
    lane.cross()
    lane.arrive("v2")  # v1 is through, the barrier is closing
    lane.scan("280000000000000002")
    lane.decide()
    assert of_type(lane.persisted(), OpenBarrier) == []  # the close in flight comes first
    actions = lane.ack("v1/close")
    assert one(actions, OpenBarrier).cmd_id == "v2/open"
    assert lane.phase() is Phase.OPENING
    assert lane.state.passage is not None and lane.state.passage.vehicle_id == "v2"


def test_a_paid_follower_takes_over_the_open_barrier() -> None:
    """v2 pays while the barrier is up for v1: once v1 is under it, the opening is v2's."""
    lane = LaneDriver()
    opened(lane, "v1")
    lane.leave_pay_point()
    lane.arrive("v2")
    lane.scan("280000000000000002")
    lane.decide()
    actions = lane.persisted()
    assert of_type(actions, OpenBarrier) == []  # v1 has not crossed yet: still its passage
    assert lane.phase() is Phase.OPEN
    actions = lane.sensor("safety_loop", True)  # v1 under the barrier
    handed = of_type(actions, BarrierOpened)
    assert handed and handed[0].vehicle_id == "v2" and handed[0].handover
    assert of_type(actions, CloseBarrier) == [] and of_type(actions, Persist) == []
    lane.sensor("safety_loop", False)
    lane.sensor("exit_loop", True)
    assert of_type(lane.sensor("exit_loop", False), CloseBarrier) == []  # v1 out, v2 not yet
    actions = lane.cross()  # v2 drives through: its own crossing, no tailgating record
    assert of_type(actions, Persist) == []
    assert one(actions, CloseBarrier).cmd_id == "v2/close"
    lane.ack("v2/close")
    assert lane.phase() is Phase.IDLE


def test_a_whole_day_of_vehicles_reuses_no_command() -> None:
    lane = LaneDriver()
    for n in range(20):
        lane.through(f"v{n}", f"28{n:016d}")
    cmds = [a.cmd_id for a in lane.actions if isinstance(a, OpenBarrier | CloseBarrier)]
    assert len(cmds) == len(set(cmds)) == 40


STATE_TOPIC = "lane/p07/l03/barrier/state"


def test_a_device_that_cannot_be_read_takes_nobody_s_money_until_a_snapshot_reads() -> None:
    """Garbled words about the boom (a device in fault saying so in a format the lane does not
    read): safe (no payment taken), seen (the alarm names the topic and the error), and it
    clears by itself once the device answers the lane's query in words it reads."""
    lane = LaneDriver()
    actions = lane.feed(
        ev.DeviceUnreadable(STATE_TOPIC, "unsupported version 99", DeviceWords.REPORTS)
    )
    alarm = one(actions, RaiseAlarm)
    assert alarm.code == Alarm.BARRIER_UNREADABLE
    assert STATE_TOPIC in alarm.message and "unsupported version 99" in alarm.message
    assert lane.phase() is Phase.FAULT
    lane.arrive("v1")
    assert of_type(lane.scan(), Authorise) == []  # refused: nobody is charged
    assert "Lane closed" in displayed(lane.actions)
    assert (
        lane.feed(ev.DeviceUnreadable(STATE_TOPIC, "again", DeviceWords.REPORTS)) == []
    )  # raised once
    asked = of_type(lane.tick_at_deadline(), QueryDevice)  # the fault phase asks the device
    assert len(asked) == 1
    actions = lane.feed(ev.DeviceSnapshotted("closed", (("entry_loop", True),), "d1"))
    assert ClearAlarm(Alarm.BARRIER_UNREADABLE) in actions
    assert lane.phase() is Phase.VEHICLE_PRESENT
    assert of_type(lane.scan("289876543210123456"), Authorise) != []  # served again


ACK_TOPIC = "lane/p07/l03/barrier/ack"


def test_unreadable_acks_hold_the_alarm_through_readable_snapshots_until_an_ack_reads() -> None:
    """A device whose acks alone broke answers every query readably: that answer says nothing
    of its acks while a command waits for one, so the alarm holds (it does not blink at each
    probe) and clears with the first ack that decodes."""
    lane = LaneDriver()
    lane.pay("v1")
    alarm = one(lane.feed(ev.DeviceUnreadable(ACK_TOPIC, "bad", DeviceWords.ACKS)), RaiseAlarm)
    assert alarm.code == Alarm.BARRIER_UNREADABLE and "acks read again" in alarm.message
    snapshot = ev.DeviceSnapshotted("open", (("entry_loop", True),), "d1")
    assert ClearAlarm(Alarm.BARRIER_UNREADABLE) not in lane.feed(snapshot)
    assert lane.feed(ev.DeviceUnreadable(ACK_TOPIC, "bad again", DeviceWords.ACKS)) == []
    lane.feed(ev.DeviceUnreadable(STATE_TOPIC, "bad", DeviceWords.REPORTS))
    assert ClearAlarm(Alarm.BARRIER_UNREADABLE) not in lane.ack("v1/open")  # reports still not
    assert ClearAlarm(Alarm.BARRIER_UNREADABLE) in lane.feed(snapshot)
    assert not lane.state.unreadable


def test_the_unreadable_alarm_names_every_kind_of_word_unreadable_now() -> None:
    """Acks garbled, then states too: the text names both and what reads each again; the acks
    read again, it names the states alone (not acks that read, over a lane still closed)."""
    lane = LaneDriver()
    lane.pay("v1")
    lane.feed(ev.DeviceUnreadable(ACK_TOPIC, "bad ack", DeviceWords.ACKS))
    both = one(lane.feed(ev.DeviceUnreadable(STATE_TOPIC, "bad state", DeviceWords.REPORTS)),
               RaiseAlarm)  # fmt: skip
    assert both.code == Alarm.BARRIER_UNREADABLE
    assert f"{ACK_TOPIC}: bad ack" in both.message and f"{STATE_TOPIC}: bad state" in both.message
    assert "acks read again" in both.message and "answers a query readably" in both.message
    states = one(lane.ack("v1/open"), RaiseAlarm)
    assert states.code == Alarm.BARRIER_UNREADABLE
    assert f"{STATE_TOPIC}: bad state" in states.message and "answers a query" in states.message
    assert ACK_TOPIC not in states.message and "acks read again" not in states.message
