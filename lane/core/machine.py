"""The lane state machine: `step(state, event, now) -> (state, actions)`.

Pure: no I/O, no clock, no tasks. `now` is the shell's monotonic clock in seconds; every
deadline in the state is on that clock, and `next_deadline(state)` tells the shell when to
call `step` with a `Tick`.

Each event has one handler (the pay point's are in lane.core.paypoint); after it, `_drive`
issues whatever barrier command the new state calls for. Keeping "what the barrier should do
next" in one function is what makes the safety rules checkable: OpenBarrier is only ever issued
for a Passage, and a Passage only ever exists for a vehicle whose record the queue has
confirmed durable (Persisted). Healing (dwell, probes, snapshots' ways out) is in
lane.core.recovery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import assert_never

from lane.core import (
    before_arrival,
    carried,
    diagram,
    metro,
    paypoint,
    recovery,
    reopened,
    reread,
    road,
    static_codes,
)
from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    Action,
    ClearAlarm,
    CloseBarrier,
    OpenBarrier,
    Persist,
    RaiseAlarm,
)
from lane.core.alarms import (
    add_fault,
    disk_answers_again,
    remove_fault,
    retell_fault,
    tell_fault,
)
from lane.core.display import LANE_CLOSED, THANK_YOU
from lane.core.names import (
    BARRIER_DOWN,
    BARRIER_FAULTS,
    BOOM_UP,
    REPORT_CLEARS,
    SAFETY_SENSORS,
    Alarm,
    AuthResult,
    DeviceWords,
    Method,
    Op,
    Position,
    RecordKind,
    Sensor,
)
from lane.core.notes import (
    AttendantOpened,
    AttendantOpenIgnored,
    BarrierOpened,
    BarrierReconciled,
    ExitLoopIgnored,
    GateTimeout,
    LaneClosed,
    LaneReopened,
    VehicleGone,
    VehicleLeft,
)
from lane.core.records import AuthInfo, RecordDraft
from lane.core.state import (
    Command,
    Committed,
    LaneRules,
    LaneState,
    Passage,
    Paying,
    Phase,
    UnreadableWords,
    Vehicle,
    phase,
)

Result = tuple[LaneState, list[Action]]
ENTRY = Sensor.ENTRY_LOOP


def initial_state(rules: LaneRules) -> LaneState:
    return LaneState(rules=rules)


class IllegalTransitionError(Exception):
    """The machine took a transition its table (lane.core.diagram) does not allow: a bug in the
    core. `step` raises it instead of returning the new state, so the caller's state stands."""

    def __init__(self, before: Phase, label: str, after: Phase) -> None:
        super().__init__(f"illegal transition {before.value} --{label}--> {after.value}")
        self.before = before
        self.label = label
        self.after = after


def step(state: LaneState, event: ev.Event, now: float) -> Result:
    before = phase(state)
    new_state, actions = _handle(state, event, now)
    new_state, more = recovery.settle(new_state)
    actions += more
    if road.road_mode(new_state):
        new_state, more = road.after_step(new_state, now)
        actions += more
    new_state, actions = _drive(new_state, actions, now)
    new_state, more = recovery.after_step(new_state, event, before, now)
    more += carried.served(state, new_state, actions + more)
    actions = recovery.tell_held(state, new_state, actions + more, now)
    actions += reopened.reopened(state, new_state)
    new_state = reread.remember(state, event, new_state, actions, now)
    new_state = before_arrival.follow(state, event, new_state, actions, now)
    after = phase(new_state)
    label = diagram.event_label(event)
    if not diagram.allows(before, label, after):
        raise IllegalTransitionError(before, label, after)
    return new_state, actions


def _handle(state: LaneState, event: ev.Event, now: float) -> Result:
    match event:
        case ev.SensorChanged():
            return _on_sensor(state, event, now)
        case ev.VehicleClassified() if road.road_mode(state):
            return road.on_classified(state, event, now)
        case ev.VehicleClassified() if metro.priced_gate(state):
            return metro.on_classified(state, event, now)
        case ev.VehicleClassified():
            return paypoint.on_classified(state, event, now)
        case ev.Scanned() if static_codes.ignores(event):
            return static_codes.ignore(state, event)
        case ev.Scanned() if before_arrival.ignores(state, event):
            return before_arrival.ignore(state, event)
        case ev.Scanned() if before_arrival.paid_before(state, event):
            return before_arrival.ignore_paid(state, event)
        case ev.Scanned() if carried.claims(state, event):
            return carried.claim(state, event, now)
        case ev.Scanned() if reread.ignores(state, event, now):
            return reread.ignore(state, event, now)
        case ev.Scanned() if reread.declines_again(state, event, now):
            return reread.decline_again(state, event, now)
        case ev.Scanned() if road.road_mode(state):
            return road.on_scanned(state, event, now)
        case ev.Scanned() if metro.priced_gate(state):
            return metro.on_scanned(state, event, now)
        case ev.Scanned():
            return paypoint.on_scanned(state, event, now)
        case ev.Decided() if metro.priced_gate(state):
            return metro.on_decided(state, event, now)
        case ev.Decided():
            return paypoint.on_decided(state, event, now)
        case ev.Persisted():
            return road.on_persisted(state, event, now)
        case ev.PersistFailed():
            return paypoint.on_persist_failed(state, event, now)
        case ev.BarrierAcked():
            return _on_acked(state, event, now)
        case ev.CommandNotSent():
            return _on_not_sent(state, event, now)
        case ev.BarrierReported():
            return _on_reported(state, event, now)
        case ev.DeviceSnapshotted():
            return _on_snapshot(state, event, now)
        case ev.DeviceUnreadable():
            return _on_unreadable(state, event)
        case ev.AttendantOpen():
            return _on_attendant_open(state, event, now)
        case ev.AttendantCloseLane():
            return _on_close_lane(state, event, now)
        case ev.AttendantReopenLane():
            return _on_reopen_lane(state, event, now)
        case ev.QueueChanged():
            return _on_queue(state, event, now)
        case ev.DiskAnswering(answering=True):
            return remove_fault(state, Alarm.DISK_NOT_ANSWERING)
        case ev.DiskAnswering(detail=detail):
            # Raised, or stalled again in the hold-off: the text says it does not answer.
            return tell_fault(state, Alarm.DISK_NOT_ANSWERING, detail)
        case ev.DiskAnswersAgain(detail=detail):
            return retell_fault(state, Alarm.DISK_NOT_ANSWERING, disk_answers_again(detail))
        case ev.CameraSees() if road.entry_camera(state):
            return road.on_entry_camera(state, event)
        case ev.CameraSees(seeing=True):
            return remove_fault(state, Alarm.CAMERA_BLACKOUT)
        case ev.CameraSees(detail=detail):
            return tell_fault(state, Alarm.CAMERA_BLACKOUT, detail)
        case ev.LinkChanged():
            return _on_link(state, event, now)
        case ev.PlateRead() if road.road_mode(state):
            return road.on_plate(state, event, now)
        case ev.PlateRead():
            return state, []  # a lane that binds no plates takes the reading and leaves it
        case ev.TicketIssued():
            return road.on_ticket(state, event, now)
        case ev.TripPriced() if metro.priced_gate(state):
            return metro.on_priced(state, event, now)
        case ev.TripPriced():
            return road.on_priced(state, event, now)
        case ev.AttendantNoPass():
            return road.on_no_pass(state, event, now)
        case ev.AttendantConfirmFare():
            return road.on_confirm(state, event, now)
        case ev.LatchCarried():
            return recovery.carried(state, event, now)
        case ev.PaidCarried():
            return carried.on_carried(state, event, now)
        case ev.Tick():
            return _on_tick(state, event, now)
        case _:
            assert_never(event)


def next_deadline(state: LaneState) -> float | None:
    """The earliest time at which a Tick changes something, or None."""
    candidates: list[float] = []
    vehicle = state.vehicle
    if vehicle is not None and vehicle.attempt is not None:
        candidates.append(vehicle.attempt.deadline + state.rules.auth_grace_s)
    cmd = state.command
    if cmd is not None and not cmd.acked:
        if cmd.ack_deadline is not None:
            candidates.append(cmd.ack_deadline)
        elif cmd.retry_at is not None:
            candidates.append(cmd.retry_at)
    hold = _gate_hold_until(state)
    if hold is not None:
        candidates.append(hold)
    candidates += recovery.deadline(state)
    candidates += carried.deadline(state)
    candidates += road.deadline(state)
    return min(candidates) if candidates else None


# --- sensors -------------------------------------------------------------------------------


def _on_sensor(state: LaneState, event: ev.SensorChanged, now: float) -> Result:
    if event.sensor == Sensor.ENTRY_LOOP:
        return _entry_loop(state, event, now)
    if event.sensor in SAFETY_SENSORS:
        return _safety_loop(state, Sensor(event.sensor), event.occupied, event.event_id)
    passage = state.passage
    if event.sensor == Sensor.EXIT_LOOP and not event.occupied and passage is not None:
        if passage.crossings == 0:
            # Nothing went under the barrier yet: this is not the paying vehicle leaving (a
            # trailer's second pulse, loop chatter); closing now would close in front of it.
            return state, [ExitLoopIgnored(passage.vehicle_id)]
        note = VehicleLeft(passage.vehicle_id)
        return replace(state, passage=replace(passage, left=True)), [note]
    return state, []


def _entry_loop(state: LaneState, event: ev.SensorChanged, now: float) -> Result:
    if not event.occupied:
        state = replace(state, entry_cleared_at=now)  # lane.core.before_arrival
    vehicle = state.vehicle
    if event.occupied:
        if vehicle is not None or metro.priced_gate(state):
            return state, []  # a metro gate's passenger is known from their code only
        if road.road_mode(state):
            return road.arrive(state, event.event_id, now)
        return paypoint.arrive(state, event.event_id, implicit=False)
    if vehicle is None or vehicle.committed or vehicle.implicit:
        return state, []  # a vehicle with a record on the way is leaving towards the barrier
    # The vehicle backed away from the pay point before it was cleared to pass.
    actions: list[Action] = [VehicleGone(vehicle.vehicle_id)]
    return replace(state, vehicle=None), actions + paypoint.let_go(state, vehicle, "vehicle_gone")


def _safety_loop(state: LaneState, sensor: Sensor, occupied: bool, event_id: str) -> Result:
    actions: list[Action] = []
    passage = state.passage
    if occupied and not state.safety_occupied and passage is not None:
        passage = replace(passage, crossings=passage.crossings + 1)
        if passage.crossings >= 2:
            # Another vehicle under one opening: record each one, the barrier stays safe.
            state, violation = _violation(state, passage)
            actions.extend(violation)
        state = replace(state, passage=passage)
    elif occupied and not state.safety_occupied and state.barrier in BOOM_UP:
        # Under a boom that is up for nobody (a restart, a lost close): a violation.
        state, violation = recovery.unpaid_passage(state, event_id)
        actions.extend(violation)
    elif occupied and state.barrier == "unknown" and passage is None:
        state = replace(state, under_before_known=True)  # judged once the position is known
    sensors = state.occupied | {sensor} if occupied else state.occupied - {sensor}
    state = replace(state, occupied=sensors)
    cmd = state.command
    if not sensors and cmd is not None and cmd.retry_at is not None:
        state = replace(state, command=replace(cmd, retry_at=None))  # what the close waited for
    passage = state.passage
    if (
        not sensors
        and passage is not None
        and passage.crossings >= 1
        and not passage.left
        and state.rules.mode.fare_gate
    ):
        # A fare gate has no exit loop: the passenger is through once the curtain clears.
        state = replace(state, passage=replace(passage, left=True))
        actions.append(VehicleLeft(passage.vehicle_id))
    return state, actions


def _violation(state: LaneState, passage: Passage) -> Result:
    return recovery.violation(state, passage.vehicle_id, passage.vehicle_class, ("tailgating",))


# --- payment ---------------------------------------------------------------------------------


# --- barrier ---------------------------------------------------------------------------------


def _on_acked(state: LaneState, event: ev.BarrierAcked, now: float) -> Result:
    # An ack that decodes, whatever command it answers, says the device's acks read again.
    state, actions = _read_again(state, DeviceWords.ACKS)
    state, more = _acked(state, event, now)
    return state, actions + more


def _acked(state: LaneState, event: ev.BarrierAcked, now: float) -> Result:
    cmd = state.command
    if cmd is not None and not cmd.acked and cmd.cmd_id != event.cmd_id:
        return replace(state, command=replace(cmd, stray_acks=cmd.stray_acks + 1)), []
    if cmd is None or cmd.cmd_id != event.cmd_id or cmd.acked:
        return state, []  # a duplicate or stale ack: at-most-once was already settled
    state, actions = recovery.acked(state)
    if not event.ok:
        if cmd.op == Op.CLOSE and event.error == "safety_loop_occupied":
            # The device saw the loop before we did: ask again once our sensors report the area
            # clear, or after an ack timeout if they never saw it occupied.
            retry_at = now + state.rules.ack_timeout_s
            held = replace(cmd, attempt=0, ack_deadline=None, retry_at=retry_at)
            return replace(state, command=held), actions
        state, more = add_fault(state, Alarm.BARRIER_REFUSED, event.error or "")
        # Keep the command, as for barrier_no_ack: a paid passage still needs its open. The same
        # cmd_id is sent again once a barrier state report clears the fault.
        held = replace(cmd, attempt=0, ack_deadline=None)
        return replace(state, command=held), actions + more
    # Acked from here on: a boom up in this ack is the command's doing, not one found up for
    # a payer carried over a restart (lane.core.carried.adopt).
    state = replace(
        recovery.expect(state, cmd.op, event.state, now), command=replace(cmd, acked=True)
    )
    # The ack says where the command put the barrier (`opening`, `closing`, or already there):
    # a device publishes no separate state for it (docs/barrier.md), so the ack is the report.
    state, more = _position(state, event.state, now, BARRIER_FAULTS)
    actions += more
    if cmd.op == Op.CLOSE:
        passage = state.passage
        state = replace(state, command=None, passage=None)
        if passage is not None and not passage.left and not passage.crossings:
            # Down in front of the vehicle the boom was up for (a carried barrier_no_ack's
            # test close, given up on before the boom was found up for a payer carried over
            # the restart, executed late): not let through.
            state, more = recovery.passage_not_passed(state, passage)
            actions += more
        return state, actions
    passage = state.passage
    if passage is None:
        # A self-test's open (lane.core.recovery): nobody to let through; the position the
        # device reports decides the test.
        return state, actions
    passage = replace(passage, opened_at=now)
    actions.append(_opened(passage, now))
    return replace(state, passage=passage), actions


def _on_reported(state: LaneState, event: ev.BarrierReported, now: float) -> Result:
    # A device that moves is alive: what it refused before is sent again. One that drops
    # commands may still report: barrier_no_ack waits for an ack.
    return _position(state, event.state, now, REPORT_CLEARS)


def _position(state: LaneState, position: Position, now: float, clears: Iterable[Alarm]) -> Result:
    """The device's barrier position: its faults, and a boom up over an unpaid vehicle (or
    over the vehicle that paid before a restart: lane.core.carried)."""
    actions: list[Action] = []
    if position in BOOM_UP:
        state, actions = carried.adopt(state, now)
    boom_up = position in BOOM_UP and state.barrier not in BOOM_UP
    under = state.safety_occupied or state.under_before_known
    if boom_up and state.passage is None and under:
        # Up for nobody who paid, over a vehicle the lane saw under it, or that went under
        # and away before the position was known (after a restart, its readings can come
        # before the barrier's state).
        up = replace(state, barrier=position)
        state, actions = recovery.unpaid_passage(up, f"up-{now:.6f}")
    state = replace(state, barrier=position, under_before_known=False)
    if position in BARRIER_DOWN:
        fault = Alarm.BARRIER_OFFLINE if position == Position.OFFLINE else Alarm.BARRIER_FAULT
        state, more = add_fault(state, fault)
        return state, actions + more
    for fault in clears:
        state, cleared = remove_fault(state, fault)
        actions += cleared
    return state, actions


def _on_unreadable(state: LaneState, event: ev.DeviceUnreadable) -> Result:
    """A payment fault: the lane cannot tell whether the boom works, so it charges nobody.
    Each kind of word is read again by its own answer (`_read_again`): reports by a snapshot
    that decodes (in the fault phase the lane asks every probe_s), acks by an ack that decodes
    (a command waiting for one is sent again every probe_s under barrier_no_ack), or by a
    snapshot while no command waits for an ack. A snapshot of a device whose acks alone broke
    reads, and must not clear the alarm the next garbled ack raises again. The alarm's text
    names each kind unreadable now (told again when that changes), not one garbled message
    after another."""
    if any(u.words is event.words for u in state.unreadable):
        return state, []
    heard = UnreadableWords(event.words, event.topic, event.error)
    state = replace(state, unreadable=(*state.unreadable, heard))
    return tell_fault(state, Alarm.BARRIER_UNREADABLE, _unreadable_detail(state))


def _unreadable_detail(state: LaneState) -> str:
    probe_s = f"{state.rules.probe_s:g} s"
    until = {
        DeviceWords.ACKS: (
            f"its acks read again (a command waiting for one is sent again every {probe_s};"
            " with none waiting, a query answered readably does)"
        ),
        DeviceWords.REPORTS: f"the device answers a query readably (asked every {probe_s})",
    }
    heard = "; ".join(f"{u.topic}: {u.error}" for u in state.unreadable)
    untils = " and ".join(until[u.words] for u in state.unreadable)
    return f"{heard}; lane closed to payments until {untils}"


def _read_again(state: LaneState, words: DeviceWords) -> Result:
    """The device's `words` decode again: barrier_unreadable clears once none is unreadable
    (its text, until then, names those still unreadable)."""
    left = tuple(u for u in state.unreadable if u.words is not words)
    if left == state.unreadable:
        return state, []
    state = replace(state, unreadable=left)
    if left:
        return tell_fault(state, Alarm.BARRIER_UNREADABLE, _unreadable_detail(state))
    return remove_fault(state, Alarm.BARRIER_UNREADABLE)


def _on_snapshot(state: LaneState, event: ev.DeviceSnapshotted, now: float) -> Result:
    """Adopt the device's whole truth: what the lane missed while it could not hear it."""
    # A snapshot that decodes says the device's reports read again; of its acks only while no
    # command waits for one (none will come to say so, and none is needed).
    cmd = state.command
    state, actions = _read_again(state, DeviceWords.REPORTS)
    if cmd is None or cmd.acked:
        state, more = _read_again(state, DeviceWords.ACKS)
        actions += more
    # An answer to a query says the device is there, not that it executes commands: a command
    # fault clears with the ack of its command (recovery's probe); a refusal also below when
    # no command waits.
    clears = (Alarm.BARRIER_OFFLINE, Alarm.BARRIER_FAULT)
    state, more = _position(state, event.barrier, now, clears)
    actions += more
    sensors = dict(event.sensors)
    for name in SAFETY_SENSORS:
        if name in sensors and sensors[name] != (name in state.occupied):
            state, more = _safety_loop(state, name, sensors[name], f"{event.event_id}/{name}")
            actions += more
    vehicle = state.vehicle
    gone = sensors.get(Sensor.ENTRY_LOOP) is False and vehicle is not None and not vehicle.implicit
    if gone and vehicle is not None and not vehicle.committed:
        left = ev.SensorChanged(Sensor.ENTRY_LOOP, False, event.event_id)
        state, more = _entry_loop(state, left, now)
        actions += more
    clear = not any(sensors.get(s, False) for s in (*SAFETY_SENSORS, Sensor.EXIT_LOOP))
    passage = state.passage
    waiting = passage is not None and passage.awaited
    # The boom let the vehicle through: it is up, or it was seen up and is down again (a
    # device that closed by itself, after a fault or a reset), with nobody left at the pay point.
    let_through = event.barrier == Position.OPEN or (
        event.barrier == Position.CLOSED and passage is not None and passage.seen_open
    )
    # The entry loop holds the passage's vehicle unless the lane saw another arrive after it.
    at_pay_point = sensors.get(Sensor.ENTRY_LOOP, False) and (
        vehicle is None or passage is None or vehicle.vehicle_id == passage.vehicle_id
    )
    if (
        passage is not None
        and waiting
        and clear
        and (passage.crossings or (not at_pay_point and let_through))
    ):
        # Through (or gone) while the lane could not hear it: the exit edge was lost. Nobody
        # at the pay point and a barrier that is (or was, for this passage) open: gone too,
        # else a barrier the device closed by itself would hold the lane open for ever.
        note = VehicleLeft(passage.vehicle_id, seen="snapshot")
        state = replace(state, passage=replace(passage, left=True))
        actions.append(note)
    if state.command is None:
        # Nothing waits for an answer: a device that answers is not refusing commands. Not so
        # barrier_no_ack: while it lasts a test close waits (recovery._not_let_through).
        state, more = remove_fault(state, Alarm.BARRIER_REFUSED)
        actions += more
    vehicle = state.vehicle
    if (
        event.barrier in (Position.OPEN, Position.OPENING)
        and state.passage is None
        and state.command is None
        and (vehicle is None or not vehicle.committed)
    ):
        # Up for nobody who paid (a restart, a lost close): close it once the area is clear.
        close = Command(f"{event.event_id}/close", Op.CLOSE, 0, None)
        state = replace(state, command=close)
        actions.append(BarrierReconciled(event.barrier, close.cmd_id))
    state, more = recovery.start_self_test(state, event.event_id, sensors)
    return state, actions + more


def _on_tick(state: LaneState, event: ev.Tick, now: float) -> Result:
    actions: list[Action] = []
    vehicle = state.vehicle
    attempt = vehicle.attempt if vehicle is not None else None
    timed_out = attempt is not None and now >= attempt.deadline + state.rules.auth_grace_s
    if vehicle is not None and attempt is not None and timed_out:
        vehicle = replace(vehicle, stage=Paying())
        # The authoriser never answered: the lane gives up, records the decision like any other
        # decline, and leaves the money to the resolver (Abandon).
        decided = ev.Decided(attempt.auth_id, False, "timeout", attempt.kind)
        abandon: list[Action] = [Abandon(attempt.auth_id, "timeout")]
        state, actions = paypoint.record_decline(state, vehicle, attempt.text, decided, abandon)
    cmd = state.command
    if cmd is not None and cmd.retry_at is not None and now >= cmd.retry_at:
        state = replace(state, command=replace(cmd, retry_at=None))
    cmd = state.command
    if (
        cmd is not None
        and not cmd.acked
        and cmd.ack_deadline is not None
        and now >= cmd.ack_deadline
    ):
        state, more = _send_lapsed(state, cmd, "")
        actions += more
    passage = state.passage
    hold = _gate_hold_until(state)
    if passage is not None and hold is not None and now >= hold:
        state = replace(state, passage=replace(passage, left=True))
        actions.append(GateTimeout(passage.vehicle_id))
    state, more = recovery.on_tick(state, now)
    actions += more
    state, more = carried.on_tick(state, now)
    return state, actions + more


def _on_not_sent(state: LaneState, event: ev.CommandNotSent, now: float) -> Result:
    cmd = state.command
    if cmd is None or cmd.cmd_id != event.cmd_id or cmd.acked or cmd.ack_deadline is None:
        return state, []  # a send the lane no longer waits for (acked, replaced, or held)
    return _send_lapsed(state, cmd, f"not sent: {event.reason}")


def _send_lapsed(state: LaneState, cmd: Command, why: str) -> Result:
    """The command's last send got no ack (or never left): send again, or fault after the last
    attempt. `_drive` does the sending, so a failed send is retried at once."""
    if cmd.attempt < state.rules.max_cmd_attempts:
        return replace(state, command=replace(cmd, ack_deadline=None)), []
    detail = f"{cmd.op} {cmd.cmd_id}" + (f" ({why})" if why else "")
    if cmd.stray_acks:
        detail += (
            f"; {cmd.stray_acks} acks for other command ids heard meanwhile (does the device"
            " answer with the command's cmd_id?)"
        )
    state, actions = recovery.no_ack(state, detail)
    # Keep the command: the same cmd_id is sent again once the fault clears, so a device that
    # did receive it still executes it at most once.
    return replace(state, command=replace(cmd, attempt=0, ack_deadline=None)), actions


def _gate_hold_until(state: LaneState) -> float | None:
    """A fare gate open for a passenger not yet seen through closes at this time."""
    passage = state.passage
    if passage is None or passage.opened_at is None or passage.left:
        return None
    if not state.rules.mode.fare_gate:
        return None
    return passage.opened_at + state.rules.gate_hold_s


# --- attendant and health --------------------------------------------------------------------


def _on_attendant_open(state: LaneState, event: ev.AttendantOpen, now: float) -> Result:
    actions: list[Action] = []
    if not event.cmd_id:
        return state, [AttendantOpenIgnored("command without an id")]
    if event.cmd_id in state.committed:
        return state, [AttendantOpenIgnored("repeated command")]
    vehicle = state.vehicle
    if vehicle is not None and vehicle.committed:
        why = "attendant open in progress" if vehicle.manual is not None else "vehicle already paid"
        return state, [AttendantOpenIgnored(why)]
    opened = Committed(event.cmd_id, approved=None, frame_ts=None)
    if vehicle is not None:
        actions += paypoint.let_go(state, vehicle, "attendant_open")
        vehicle = replace(vehicle, stage=opened)
    else:
        vehicle = Vehicle(event.cmd_id, state.rules.default_class, 0, "", stage=opened)
    draft = RecordDraft(
        kind=RecordKind.MANUAL,
        vehicle_id=vehicle.vehicle_id,
        vehicle_class=vehicle.vehicle_class,
        amount_minor=0,
        currency=vehicle.currency,
        method=Method.MANUAL,
        account_ref=None,
        auth=AuthInfo(result=AuthResult.MANUAL),
        flags=("manual", f"reason:{event.reason}", f"attendant:{event.attendant}"),
    )
    actions += [Persist(event.cmd_id, draft), AttendantOpened(event.reason)]
    return replace(paypoint.commit(state, event.cmd_id), vehicle=vehicle), actions


def _on_close_lane(state: LaneState, event: ev.AttendantCloseLane, now: float) -> Result:
    actions: list[Action] = [LANE_CLOSED]
    vehicle = state.vehicle
    if vehicle is not None and not vehicle.committed:
        actions += paypoint.let_go(state, vehicle, "lane_closed")
        state = replace(state, vehicle=None)
    actions.append(LaneClosed(event.reason))
    return replace(state, closed_reason=event.reason or "closed by attendant"), actions


def _on_reopen_lane(state: LaneState, event: ev.AttendantReopenLane, now: float) -> Result:
    # What the lane shows now (`Lane open`, or still `Lane closed` under a fault) is
    # lane.core.reopened's, once the step is done.
    return replace(state, closed_reason=None), [LaneReopened(event.reason)]


def _on_queue(state: LaneState, event: ev.QueueChanged, now: float) -> Result:
    actions: list[Action] = []
    if event.full:
        state, actions = add_fault(state, Alarm.QUEUE_FULL)
    else:
        for fault in (Alarm.QUEUE_FULL, Alarm.DISK_ERROR):
            state, cleared = remove_fault(state, fault)
            actions += cleared
    if event.high_water:
        actions.append(RaiseAlarm(Alarm.QUEUE_HIGH_WATER, "record queue above its high-water mark"))
    else:
        actions.append(ClearAlarm(Alarm.QUEUE_HIGH_WATER))
    return state, actions


def _on_link(state: LaneState, event: ev.LinkChanged, now: float) -> Result:
    why = event.cause or ""
    if event.up:
        # Whatever the device did while the lane could not hear it: ask for its whole truth.
        state, actions = remove_fault(state, Alarm.BROKER_DOWN)
        state, query = recovery.query(state, "connected")
        return state, actions + query
    # Down still, for another cause: the alarm's text says what keeps it down now.
    return tell_fault(state, Alarm.BROKER_DOWN, why)


# --- helpers ---------------------------------------------------------------------------------


def _drive(state: LaneState, actions: list[Action], now: float) -> Result:
    """Issue the barrier command the state calls for, if any, and at most one at a time."""
    if state.blocked or state.barrier in BARRIER_DOWN:
        return state, actions
    rules = state.rules
    cmd = state.command
    if cmd is not None:
        if cmd.ack_deadline is None and not cmd.acked:
            if cmd.op == Op.CLOSE and recovery.close_waits(state):
                return state, actions  # rule 3, nor in front of the vehicle the boom is up for
            if cmd.retry_at is not None:
                return state, actions  # refused a moment ago: wait for the area or the timer
            attempt = cmd.attempt + 1
            cmd = replace(cmd, attempt=attempt, ack_deadline=now + rules.ack_timeout_s)
            kind = OpenBarrier if cmd.op == Op.OPEN else CloseBarrier
            actions = [*actions, kind(cmd.cmd_id, now + rules.cmd_ttl_s, attempt)]
            state = replace(state, command=cmd)
        if not cmd.acked or cmd.op == Op.CLOSE:
            return state, actions
    passage = state.passage
    if passage is not None:
        waiting = state.vehicle
        if passage.crossings >= 1 and waiting is not None and waiting.record_id is not None:
            # The next vehicle has paid (its record is durable) and the one before is through:
            # the open barrier is now its passage, rather than closing in front of it.
            return _hand_over(state, waiting, actions, now)
        if passage.left and not state.safety_occupied:
            cmd_id = f"{passage.vehicle_id}/close"
            command = Command(cmd_id, Op.CLOSE, 1, now + rules.ack_timeout_s)
            actions = [*actions, CloseBarrier(cmd_id, now + rules.cmd_ttl_s, 1)]
            return replace(state, command=command), actions
        return state, actions
    vehicle = state.vehicle
    if vehicle is not None and vehicle.record_id is not None:
        cmd_id = f"{vehicle.vehicle_id}/open"
        passage = Passage(
            vehicle.vehicle_id,
            vehicle.record_id,
            _frame_ts(vehicle),
            vehicle.vehicle_class,
            # A vehicle already nosing over the loop under the closed barrier is this one.
            crossings=1 if state.safety_occupied else 0,
            since=now,
            manual=vehicle.manual is not None,
            carried=vehicle.carried,
            marked_pass=vehicle.marked_pass,
            entered_pass=vehicle.entered_pass,
        )
        command = Command(cmd_id, Op.OPEN, 1, now + rules.ack_timeout_s)
        actions = [
            *actions,
            OpenBarrier(cmd_id, now + rules.cmd_ttl_s, 1),
            THANK_YOU,
        ]
        return replace(state, vehicle=None, passage=passage, command=command), actions
    return state, actions


def _hand_over(state: LaneState, vehicle: Vehicle, actions: list[Action], now: float) -> Result:
    assert vehicle.record_id is not None
    passage = Passage(
        vehicle.vehicle_id,
        vehicle.record_id,
        _frame_ts(vehicle),
        vehicle.vehicle_class,
        opened_at=now,
        since=now,
        manual=vehicle.manual is not None,
        carried=vehicle.carried,
        marked_pass=vehicle.marked_pass,
        entered_pass=vehicle.entered_pass,
    )
    actions = [*actions, THANK_YOU, _opened(passage, now, handover=True)]
    return replace(state, vehicle=None, passage=passage), actions


def _frame_ts(vehicle: Vehicle) -> float | None:
    return vehicle.stage.frame_ts if isinstance(vehicle.stage, Committed) else None


def _opened(passage: Passage, now: float, handover: bool | None = None) -> BarrierOpened:
    """The barrier is open for this passage; latency from the frame that held the code."""
    frame_ts = passage.frame_ts
    latency = None if frame_ts is None else round((now - frame_ts) * 1000, 3)
    return BarrierOpened(passage.vehicle_id, passage.record_id, latency, handover)


__all__ = ["IllegalTransitionError", "initial_state", "next_deadline", "phase", "step"]
