"""A code printed at the booth (a QR sticker, an ad), read again as the camera sees it anew.

The scanner reports each code in view once, and keeps the sticker's sighting from one vehicle
to the next (docs/scanner.md, "A sticker in view"). Hidden for longer than its deduplication
window (a tall vehicle in front of it, a truck parked), the sticker is reported again when it
comes back, and was refused for the vehicle then present as any unreadable code: one of the
driver's tries spent and "Payment refused ... Try another code" shown for a code nobody
showed. The scanner knows such a code (`Scanned.static`: a code that stayed put in its view,
or one the operator listed); the core ignores it: no try, no display, no record, and no
implicit passenger at a fare gate. Only a code that is no payment code of any kind: a code
the lane could take payment from is never set aside on the scanner's word.
"""

from __future__ import annotations

from lane.core import events as ev
from lane.core.actions import Action
from lane.core.names import PayloadKind
from lane.core.notes import ScanIgnored, ScanWithoutVehicle
from lane.core.state import LaneState

STATIC_CODE = "static code at the booth"


def ignores(event: ev.Scanned) -> bool:
    return event.static and event.kind == PayloadKind.UNKNOWN


def ignore(state: LaneState, event: ev.Scanned) -> tuple[LaneState, list[Action]]:
    if state.vehicle is None:
        return state, [ScanWithoutVehicle(event.kind)]
    return state, [ScanIgnored(state.vehicle.vehicle_id, STATIC_CODE)]
