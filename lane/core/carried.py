"""A paid vehicle carried over a restart: the lane owes it its passage.

The lane commits a payment's record before it opens (rule 1); a process that dies between the
two (a crash, kill -9, a power cut) must not forget the vehicle. Each approved payment's
`Persist` says the passage is owed (`owes`, the digest of the code); the queue keeps that in
the record's own commit, and forgets it when the vehicle is through (`PassageServed`) or its
`paid_not_passed` record is written (`ends_owed`, same commit). At start-up the shell hands
each owed passage to the core as a `PaidCarried` (oldest first; normally there is one, two
when the next vehicle had paid under the open barrier), and the lane honours each once:

- the same code shown again (which the authoriser would refuse as a replay): the lane opens
  for it with its record, no new charge and no new record (not under a blocking fault: the
  lane could not open, so the payment stays owed);
- the boom found up (a report or a snapshot) with nothing else going on (a carried
  `barrier_no_ack`'s test close held for the probe moved nothing): the open that went out
  before the crash was this vehicle's, so what passes under it is its passage, not an
  unpaid one;
- neither within what is left of `pass_dwell_s` (counted from the record's commit; at least
  `probe_s`): `paid_not_passed`, as when the barrier never opened for it (lane.core.recovery).

Its refund, whichever way it comes, gives back what a live one does: the pass its exit marked
used (`marked_pass`, kept with the owed passage: `Persist.owed_pass`) is released.

Other codes are served as usual meanwhile. Pure like the rest of the core.
"""

from __future__ import annotations

from dataclasses import replace

from lane.core import events as ev
from lane.core import paypoint, recovery
from lane.core.actions import Action, PassageServed, Persist, ShowOnDisplay
from lane.core.notes import CarriedStep, PaidCarriedNote
from lane.core.records import credential_of
from lane.core.state import CarriedPayment, Committed, LaneState, Passage, Vehicle

Result = tuple[LaneState, list[Action]]

PAID_GO_AHEAD = ShowOnDisplay(("Already paid", "Please go ahead"), ttl_s=5.0)


def lane_vehicle_id(event: ev.PaidCarried) -> str:
    """The carried vehicle's id in this run: its barrier commands get ids the device has not
    executed before (it runs a repeated cmd_id at most once, and the one before the crash may
    have gone out), its records still name the vehicle that paid."""
    return f"{event.vehicle_id}/{event.event_id}"


def on_carried(state: LaneState, event: ev.PaidCarried, now: float) -> Result:
    if any(c.record_id == event.record_id for c in state.carried):
        return state, []  # told twice: owed once
    rules = state.rules
    # What is left of its wait, and at least a probe: the device's first answer after the
    # start may still find the boom up for it (then it is through, not refunded).
    left = max(rules.pass_dwell_s - max(0.0, event.age_s), rules.probe_s)
    vehicle_id = lane_vehicle_id(event)
    owed = CarriedPayment(
        event.record_id,
        vehicle_id,
        event.vehicle_class,
        event.credential,
        now + left,
        event.marked_pass,
    )
    note = PaidCarriedNote(vehicle_id, event.record_id, CarriedStep.CARRIED)
    return replace(state, carried=(*state.carried, owed)), [note]


def _claimed(state: LaneState, event: ev.Scanned) -> CarriedPayment | None:
    credential = credential_of(event.text)
    return next((c for c in state.carried if c.credential == credential), None)


def claims(state: LaneState, event: ev.Scanned) -> bool:
    """The code shown is a carried payment's, at a pay point free to take it, at a lane that
    may move its barrier. Under a blocking fault (a device that drops commands, is offline,
    refuses) the code is refused like any other: claimed, the vehicle would wait for an open
    that may never come, its payment neither through nor refunded; left owed, it is refunded
    at its due, or claimed once the fault clears."""
    if not state.carried or state.blocked or _claimed(state, event) is None:
        return False
    vehicle = state.vehicle
    return vehicle is None or (vehicle.attempt is None and not vehicle.committed)


def claim(state: LaneState, event: ev.Scanned, now: float) -> Result:
    """Its code again: the vehicle holds its durable record, so the barrier opens for it
    (machine._drive) with no authorisation and no record."""
    owed = _claimed(state, event)
    assert owed is not None
    waiting = state.vehicle
    actions = [] if waiting is None else paypoint.let_go(state, waiting, "paid_carried")
    stage = Committed(
        owed.record_id,
        None,
        event.frame_ts,
        record_id=owed.record_id,
        carried=True,
        carried_pass=owed.marked_pass,
        durable_at=now,
    )
    vehicle = Vehicle(
        owed.vehicle_id,
        owed.vehicle_class,
        None,
        "",
        implicit=state.rules.mode.fare_gate,
        stage=stage,
        plate=waiting.plate if waiting is not None else None,
    )
    note = PaidCarriedNote(owed.vehicle_id, owed.record_id, CarriedStep.CLAIMED)
    state = replace(state, vehicle=vehicle, carried=_without(state, owed))
    return state, [*actions, PAID_GO_AHEAD, note]


def adopt(state: LaneState, now: float) -> Result:
    """The boom is up with no passage and no command of this run's: the open that went out
    before the restart was a carried vehicle's (the one that paid first, which the open was
    for). Its passage takes what is left of its wait. A carried `barrier_no_ack`'s test close
    held for the probe moved nothing: the boom is still the payer's, and the close waits for
    the vehicle to be through (recovery.close_waits) before it goes out for its ack."""
    cmd = state.command
    if not state.carried or state.passage is not None:
        return state, []
    if cmd is not None and not recovery.held_test_close(cmd):
        return state, []
    if state.vehicle is not None and state.vehicle.committed:
        return state, []  # that vehicle's own record waits for this barrier
    owed = state.carried[0]
    under = state.safety_occupied or state.under_before_known
    passage = Passage(
        owed.vehicle_id,
        owed.record_id,
        None,
        owed.vehicle_class,
        opened_at=now,
        crossings=1 if under else 0,
        since=owed.due - state.rules.pass_dwell_s,
        carried=True,
        marked_pass=owed.marked_pass,
    )
    note = PaidCarriedNote(owed.vehicle_id, owed.record_id, CarriedStep.UNDER_OPEN_BOOM)
    return replace(state, passage=passage, carried=_without(state, owed)), [note]


def deadline(state: LaneState) -> list[float]:
    return [c.due for c in state.carried]


def on_tick(state: LaneState, now: float) -> Result:
    """Nobody claimed it in time: refunded like a vehicle the barrier never opened for."""
    actions: list[Action] = []
    for owed in [c for c in state.carried if now >= c.due]:
        state = replace(state, carried=_without(state, owed))
        state, more = recovery.not_passed(
            state,
            owed.vehicle_id,
            owed.vehicle_class,
            owed.record_id,
            carried=True,
            marked_pass=owed.marked_pass,
        )
        actions += more
    return state, actions


def _without(state: LaneState, owed: CarriedPayment) -> tuple[CarriedPayment, ...]:
    return tuple(c for c in state.carried if c is not owed)


def served(before: LaneState, after: LaneState, actions: list[Action]) -> list[Action]:
    """A paid passage that ended with its vehicle through (it left, or the next vehicle took
    the open barrier over once it was under it): nothing owed any more. A passage given up on
    (`paid_not_passed`, in `actions`) ends its owed passage in its record's commit instead."""
    was, now = before.passage, after.passage
    done: list[Action] = []
    if was is not None and not was.manual and not was.left:
        gone = now is None or now.record_id != was.record_id or now.left
        refunded = any(isinstance(a, Persist) and a.ends_owed == was.record_id for a in actions)
        if gone and not refunded:
            done.append(PassageServed(was.record_id))
    new = now is not None and (was is None or was.record_id != now.record_id)
    if new and now is not None and now.left and not now.manual:
        done.append(PassageServed(now.record_id))  # found up and already gone, in one step
    return done
