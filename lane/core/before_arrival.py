"""A code in a frame taken before the vehicle at the pay point arrived: not its code.

The shell decodes frames off the event loop and reports a code once per sighting, forgetting
what it saw each time a vehicle leaves or arrives (docs/scanner.md). A frame taken while the
vehicle before was still at the pay point, decoded late (a loaded machine: a decode of 0.7 s
was seen) and reported after that forgetting, reached the core as a code of the vehicle
arrived since: the previous driver's paid code was authorised again for the next driver, who
was declined for it as used (a try spent, "Payment refused" shown) while their own code was
ignored as "one payment at a time".

A sighting belongs to the vehicle at the pay point by the time its frame was taken
(`Scanned.frame_ts`, on the shell's clock as `now` is): the vehicle arrived on the entry loop
after the loop was last seen clear (`LaneState.entry_cleared_at`), so a frame taken before
that clear shows the pay point as it was for the vehicle before. Such a code is ignored
(`ScanIgnored`): no try, no authorisation, no record, no display. A frame taken after the
clear (the pay point empty, or this vehicle rolling in with the phone held up) is this
vehicle's. A fare-gate passenger known only from their code (`implicit`) has no loop to go
by: a code read again there is lane.core.reread's.

The loop's clear may never be heard (a dropped message, a loop fault): the clear time would
stay where the vehicle before the one that left found it, and that one's frames would be the
next driver's. What else proves the loop clear moves it (`follow`): the vehicle through the
exit (`VehicleLeft`: the exit loop left after a crossing, a gate's curtain clear after one, a
snapshot) while nobody waits at the pay point; a snapshot saying the loop is clear; and the
next arrival on a loop last heard held, whose edge says the loop was clear just before it.
Each is a bound after the true clear: a frame of the next driver's phone taken in between is
set aside, as it is after a clear heard late, and the scanner's cut at the same moments (the
daemon's forget_seen on each arrival and leaving) has that phone read again. A gate's timeout
proves nothing (its passenger may still stand on the loop), nor does the barrier closing: it
follows the vehicle leaving, or a timeout or a refund.

A driver's phone often stays in view after the vehicle moves on: in a frame taken after the
next vehicle arrived it is read again (the scanner forgets its sightings for the next person),
and the network refused the code as used, "Payment refused" shown to a driver who never showed
it and a try spent. At a toll lane the code the last vehicle to pay paid with
(`LaneState.paid_code`, from its durable record) is not the next vehicle's: ignored for any
other vehicle, with its paid record in the note. Fare gates keep theirs in lane.core.reread.
Pure: times are the events'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from lane.core import events as ev
from lane.core.actions import Action
from lane.core.names import Sensor
from lane.core.notes import ScanIgnored, VehicleLeft
from lane.core.records import credential_of
from lane.core.state import Committed, LaneState, PaidCode

BEFORE_ARRIVAL = "frame taken before the vehicle arrived"
PAID_BEFORE = "code the vehicle before paid with"


def ignores(state: LaneState, event: ev.Scanned) -> bool:
    vehicle = state.vehicle
    cleared = state.entry_cleared_at
    if vehicle is None or vehicle.implicit or cleared is None:
        return False
    return event.frame_ts < cleared


def ignore(state: LaneState, event: ev.Scanned) -> tuple[LaneState, list[Action]]:
    assert state.vehicle is not None
    return state, [ScanIgnored(state.vehicle.vehicle_id, BEFORE_ARRIVAL)]


def paid_before(state: LaneState, event: ev.Scanned) -> bool:
    """The code is the one the last vehicle to pay paid with, shown at another's pay point."""
    paid = state.paid_code
    vehicle = state.vehicle
    if paid is None or vehicle is None or vehicle.vehicle_id == paid.vehicle_id:
        return False
    return credential_of(event.text) == paid.credential


def ignore_paid(state: LaneState, event: ev.Scanned) -> tuple[LaneState, list[Action]]:
    paid = state.paid_code
    assert state.vehicle is not None and paid is not None
    return state, [ScanIgnored(state.vehicle.vehicle_id, PAID_BEFORE, paid.record_id)]


def follow(
    before: LaneState, event: ev.Event, after: LaneState, actions: Sequence[Action], now: float
) -> LaneState:
    """After each step: whether the entry loop is held as last heard, the clear that other
    evidence proves when the loop's own was lost, and the code the last vehicle to pay paid
    with once its record is durable."""
    held, cleared, arrived = _loop(before, event, after, actions, now)
    paid = _paid(before, event, after)
    old = (after.entry_held, after.entry_cleared_at, after.entry_arrived_at, after.paid_code)
    if (held, cleared, arrived, paid) == old:
        return after
    return replace(
        after, entry_held=held, entry_cleared_at=cleared, entry_arrived_at=arrived, paid_code=paid
    )


def _loop(
    before: LaneState, event: ev.Event, after: LaneState, actions: Sequence[Action], now: float
) -> tuple[bool, float | None, float | None]:
    held, cleared, arrived = after.entry_held, after.entry_cleared_at, after.entry_arrived_at
    heard: bool | None = None
    edge = False
    if isinstance(event, ev.SensorChanged) and event.sensor == Sensor.ENTRY_LOOP:
        heard, edge = event.occupied, True
    elif isinstance(event, ev.DeviceSnapshotted):
        heard = dict(event.sensors).get(Sensor.ENTRY_LOOP)
    if heard is not None:
        # An edge onto a loop held as last heard, with nobody at the pay point: the arrival of
        # the next vehicle, the clear before it lost. Loop chatter under a vehicle that stays
        # (someone at the pay point) moves nothing, else that vehicle's frames were set aside.
        arrival = heard and edge and before.vehicle is None
        if before.entry_held and (arrival or not heard):
            cleared = now
        if not heard:
            arrived = None
        elif edge and (arrival or not before.entry_held):
            arrived = now  # a snapshot's "held" tells no arrival time: the frozen rule waits
        return heard, cleared, arrived
    through = any(isinstance(a, VehicleLeft) for a in actions)
    if held and through and after.vehicle is None:
        # Past the exit, so off the loop; nobody arrived since to be wronged.
        return False, now, None
    return held, cleared, arrived


def _paid(before: LaneState, event: ev.Event, after: LaneState) -> PaidCode | None:
    vehicle = before.vehicle
    stage = vehicle.stage if vehicle is not None else None
    if (
        isinstance(event, ev.Persisted)
        and vehicle is not None
        and isinstance(stage, Committed)
        and stage.credential is not None
        and stage.record_id is None
        and stage.persist_id == event.persist_id
        and not after.rules.mode.fare_gate
    ):
        return PaidCode(stage.credential, vehicle.vehicle_id, event.record_id)
    return after.paid_code
