"""The display once the lane takes payments again (lane.core.reopened): a fault, or the
attendant, showed `Lane closed`; once the last of them ends, the display says what the lane
shows in its phase (the fare to the vehicle at the pay point, `Lane open` to nobody), not the
`Lane closed` it said before, which the display would otherwise keep for its ttl."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from lane.core import events as ev
from lane.core.actions import Action, ShowOnDisplay
from lane.core.display import LANE_CLOSED, LANE_OPEN
from lane.core.names import DeviceWords
from lane.core.state import Phase
from tests.core.core_kit import LaneDriver, of_type

FARE = ShowOnDisplay(("Class 1", "2.50 EUR", "Show your QR code"))
TOPIC = "lane/p01/l01/barrier/state"


def _snapshot(lane: LaneDriver) -> ev.Event:
    """A device that reads again, its entry loop as the lane knows it."""
    present = (("entry_loop", lane.state.vehicle is not None),)
    return ev.DeviceSnapshotted("closed", present, lane.fresh("snap"))


# Each payment or blocking fault the lane clears by itself: what raises it, what clears it.
FAULTS: dict[str, tuple[Callable[[LaneDriver], ev.Event], Callable[[LaneDriver], ev.Event]]] = {
    "barrier_unreadable": (
        lambda _: ev.DeviceUnreadable(TOPIC, "garbled", DeviceWords.REPORTS),
        _snapshot,
    ),
    "queue_full": (lambda _: ev.QueueChanged(True, True), lambda _: ev.QueueChanged(False, False)),
    "disk_not_answering": (
        lambda _: ev.DiskAnswering(False, "no answer in 5 s"),
        lambda _: ev.DiskAnswering(True),
    ),
    "broker_down": (lambda _: ev.LinkChanged(False, "refused"), lambda _: ev.LinkChanged(True)),
    "camera_blackout": (
        lambda _: ev.CameraSees(False, "camera blackout: black frames for 2.0 s"),
        lambda _: ev.CameraSees(True),
    ),
    "attendant": (
        lambda _: ev.AttendantCloseLane("maintenance"),
        lambda _: ev.AttendantReopenLane("done"),
    ),
}


def last_display(actions: list[Action]) -> ShowOnDisplay | None:
    shown = of_type(actions, ShowOnDisplay)
    return shown[-1] if shown else None


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize(
    ("arrives", "expected"),
    [("before", FARE), ("during", FARE), ("never", LANE_OPEN)],
)
def test_once_the_lane_opens_again_the_display_shows_the_phase_not_lane_closed(
    fault: str, arrives: str, expected: ShowOnDisplay
) -> None:
    raise_it, clear_it = FAULTS[fault]
    lane = LaneDriver()
    if arrives == "before":
        lane.arrive("v1")
    lane.feed(raise_it(lane))
    if arrives == "during":
        lane.arrive("v1")
    assert last_display(lane.actions) == LANE_CLOSED
    if fault == "attendant" and arrives == "before":
        expected = LANE_OPEN  # closing the lane let the unpaid vehicle go
    lane.feed(clear_it(lane))
    assert lane.phase() in (Phase.IDLE, Phase.VEHICLE_PRESENT)
    assert last_display(lane.actions) == expected


def test_a_fault_that_clears_while_another_lasts_leaves_the_lane_closed() -> None:
    lane = LaneDriver()
    lane.feed(ev.DeviceUnreadable(TOPIC, "garbled", DeviceWords.REPORTS))
    lane.feed(ev.QueueChanged(True, False))
    lane.arrive("v1")
    assert of_type(lane.feed(_snapshot(lane)), ShowOnDisplay) == []
    reopened = lane.feed(ev.AttendantReopenLane("not closed"))  # no `Lane open` under a fault
    assert of_type(reopened, ShowOnDisplay) == []
    assert last_display(lane.actions) == LANE_CLOSED
    assert of_type(lane.feed(ev.QueueChanged(False, False)), ShowOnDisplay) == [FARE]


def test_a_driver_who_spent_the_tries_is_told_to_wait_for_assistance_again() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    for n in range(lane.state.rules.max_tries):
        lane.scan(f"28{n:016d}")
        lane.decide(approved=False)
    lane.feed(ev.DeviceUnreadable(TOPIC, "garbled", DeviceWords.REPORTS))
    lane.feed(_snapshot(lane))
    assert last_display(lane.actions) == ShowOnDisplay(
        ("Payment refused", "Please wait for assistance")
    )


STEPS = st.lists(
    st.sampled_from(["arrive", "leave", *(f"+{f}" for f in FAULTS), *(f"-{f}" for f in FAULTS)]),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_an_open_lane_never_leaves_lane_closed_on_its_display(steps: list[str]) -> None:
    """Whatever faults came and went: whenever the lane takes payments, an idle lane's last
    display is not `Lane closed`, and a vehicle present is shown its fare."""
    lane = LaneDriver()
    for name in steps:
        note(name)
        if name == "arrive":
            lane.arrive(lane.fresh("v"))
        elif name == "leave":
            lane.leave_pay_point()
        else:
            raise_it, clear_it = FAULTS[name[1:]]
            lane.feed((raise_it if name[0] == "+" else clear_it)(lane))
        if not lane.state.accepting_payments:
            continue
        if lane.phase() is Phase.IDLE:
            assert last_display(lane.actions) != LANE_CLOSED
        else:
            assert lane.phase() is Phase.VEHICLE_PRESENT
            assert last_display(lane.actions) == FARE
