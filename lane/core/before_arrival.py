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
by: a code read again there is lane.core.reread's. Pure: times are the events'.
"""

from __future__ import annotations

from lane.core import events as ev
from lane.core.actions import Action
from lane.core.notes import ScanIgnored
from lane.core.state import LaneState

BEFORE_ARRIVAL = "frame taken before the vehicle arrived"


def ignores(state: LaneState, event: ev.Scanned) -> bool:
    vehicle = state.vehicle
    cleared = state.entry_cleared_at
    if vehicle is None or vehicle.implicit or cleared is None:
        return False
    return event.frame_ts < cleared


def ignore(state: LaneState, event: ev.Scanned) -> tuple[LaneState, list[Action]]:
    assert state.vehicle is not None
    return state, [ScanIgnored(state.vehicle.vehicle_id, BEFORE_ARRIVAL)]
