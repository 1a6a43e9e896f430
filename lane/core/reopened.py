"""What the display says once the lane takes payments again (pure).

A fault or an attendant closing the lane shows `Lane closed`; nothing else the lane does
replaces it while the driver at the pay point waits, and the display keeps a text for its
`ttl`. So the step in which the lane opens again (the last fault cleared, the lane reopened)
shows what the lane's state shows: the fare to the vehicle present, `Lane open` to nobody.
"""

from __future__ import annotations

from lane.core import paypoint, road
from lane.core.actions import Action, ShowOnDisplay
from lane.core.display import LANE_OPEN
from lane.core.state import LaneState


def shown(state: LaneState) -> ShowOnDisplay | None:
    """What an open lane in this state shows; None: what it shows is a payment's own (on its
    way, or the driver's code being authorised), not the lane's."""
    vehicle = state.vehicle
    if vehicle is None:
        return LANE_OPEN
    if vehicle.committed or vehicle.attempt is not None or vehicle.implicit:
        return None
    if road.road_mode(state):
        return road.shown(state, vehicle)
    if vehicle.tries >= state.rules.max_tries:
        return paypoint.TRIES_SPENT
    return paypoint.fare_display(vehicle, state)


def reopened(before: LaneState, after: LaneState) -> list[Action]:
    """The display of a lane that went from refusing payments to taking them."""
    if before.accepting_payments or not after.accepting_payments:
        return []
    display = shown(after)
    return [] if display is None else [display]
