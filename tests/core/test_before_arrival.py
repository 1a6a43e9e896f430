"""A code in a frame taken before the vehicle at the pay point arrived is not its code: the
frame showed the vehicle before, and was decoded late (lane.core.before_arrival)."""

from __future__ import annotations

import pytest
from core_kit import EventSource, LaneDriver, of_type, one, rules
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_invariants import STEPS, hypothesis_chooser, lane_rules

from lane.core import events as ev
from lane.core.actions import Authorise, ShowOnDisplay
from lane.core.before_arrival import BEFORE_ARRIVAL
from lane.core.machine import step
from lane.core.notes import CodeRefused, ScanIgnored, VehicleArrived
from lane.core.state import LaneMode, LaneRules, Phase

PAID = "281234567890123456"  # the code the vehicle before paid with
OWN = "289876543210987654"  # the vehicle's own code
GARBAGE = ("https://example.com/menu", "unknown", "not a payment code")
ARRIVES_AFTER_S = 1.0  # the next vehicle reaches the entry loop this long after it cleared

# When the frame holding the vehicle before's code was taken, from the moment the entry loop
# was seen clear, and whether the vehicle there now takes it as its own.
TAKEN = [
    (-2.0, False),  # while the vehicle before was paying: its phone, decoded late
    (-0.001, False),  # the last frame before it drove off the loop
    (0.0, True),  # the pay point clear: this vehicle rolling in
    (0.5, True),  # before its arrival, the phone already held up
    (ARRIVES_AFTER_S + 0.3, True),  # after its arrival
]


def next_vehicle(mode: LaneMode = LaneMode.TOLL) -> tuple[LaneDriver, float]:
    """v1 paid with PAID and drove through; v2 is at the pay point. Returns when the entry
    loop was seen clear between them."""
    lane = LaneDriver(rules(mode))
    lane.through("v1", PAID)
    cleared = lane.state.entry_cleared_at
    assert cleared is not None
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    lane.tick(dt=0.5)
    return lane, cleared


@pytest.mark.parametrize(("offset", "theirs"), TAKEN)
def test_the_paid_code_of_the_vehicle_before_is_the_new_ones_only_in_a_frame_after_it_left(
    offset: float, theirs: bool
) -> None:
    lane, cleared = next_vehicle()
    before = lane.state
    actions = lane.scan(PAID, taken=cleared + offset)
    if theirs:  # the next driver holding up a copy: the network's replay check answers
        assert one(actions, Authorise).auth_id == "v2/a1"
    else:
        assert actions == [ScanIgnored("v2", BEFORE_ARRIVAL)]  # no try, no display
        assert lane.state == before and lane.phase() is Phase.VEHICLE_PRESENT


@pytest.mark.parametrize(("offset", "theirs"), TAKEN)
def test_a_code_refused_to_the_vehicle_before_spends_no_try_of_the_new_one(
    offset: float, theirs: bool
) -> None:
    lane = LaneDriver(rules(max_tries=3))
    lane.arrive("v1")
    lane.scan(*GARBAGE)
    lane.sensor("entry_loop", False, dt=0.2)  # it backed away after the refusal
    cleared = lane.now
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    actions = lane.scan(*GARBAGE, taken=cleared + offset)
    refused = of_type(actions, CodeRefused)
    assert refused == ([CodeRefused("v2", "not a payment code")] if theirs else [])
    assert lane.state.vehicle is not None and lane.state.vehicle.tries == int(theirs)


def test_after_the_late_frame_the_drivers_own_code_pays_with_every_try_left() -> None:
    lane, cleared = next_vehicle()
    lane.scan(PAID, taken=cleared - 0.3)
    actions = lane.scan(OWN)
    assert one(actions, Authorise).auth_id == "v2/a1"
    assert one(actions, Authorise).text == OWN
    assert one(actions, ShowOnDisplay).lines[0] == "Processing payment"


def test_a_vehicle_seen_gone_in_a_snapshot_clears_the_pay_point_too() -> None:
    # The entry loop's edge was lost (the device offline a moment): its snapshot tells.
    lane = LaneDriver(rules(max_tries=3))
    lane.arrive("v1")
    lane.scan(*GARBAGE)
    lane.feed(ev.DeviceSnapshotted("closed", (("entry_loop", False),), "d1"), dt=0.2)
    assert lane.state.vehicle is None
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    taken = lane.now - ARRIVES_AFTER_S - 0.1
    assert lane.scan(*GARBAGE, taken=taken) == [ScanIgnored("v2", BEFORE_ARRIVAL)]


@pytest.mark.parametrize("mode", [LaneMode.TRANSIT_ENTRY, LaneMode.TRANSIT_EXIT])
def test_at_a_fare_gate_a_passenger_on_the_loop_is_told_apart_the_same_way(
    mode: LaneMode,
) -> None:
    lane = LaneDriver(rules(mode, max_tries=3))
    lane.arrive("v1")
    lane.scan(*GARBAGE)
    lane.sensor("entry_loop", False, dt=0.2)
    cleared = lane.now
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    assert lane.scan(*GARBAGE, taken=cleared - 0.1) == [ScanIgnored("v2", BEFORE_ARRIVAL)]
    assert one(lane.scan(OWN), Authorise).auth_id == "v2/a1"


def test_a_passenger_known_only_from_their_code_is_the_code_readers_own() -> None:
    # No loop to go by: whatever frame made the passenger is theirs (lane.core.reread).
    lane = LaneDriver(rules(LaneMode.TRANSIT_ENTRY))
    lane.arrive("v1")
    lane.sensor("entry_loop", False, dt=0.2)
    cleared = lane.now
    actions = lane.scan(OWN, taken=cleared - 0.1)
    assert one(actions, Authorise).vehicle_id != "v1"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lane_rules=lane_rules, data=st.data())
def test_a_code_shown_after_the_vehicle_arrived_is_never_set_aside_as_before_it(
    lane_rules: LaneRules, data: st.DataObject
) -> None:
    """Liveness, for any event sequence of any mode (the loop chattering, snapshots, restarts,
    payments in flight, refused, failed to write): a code in a frame taken once the vehicle at
    the pay point arrived (or once a failed write made it pay again) is that vehicle's."""
    lane = LaneDriver(lane_rules)
    source = EventSource(hypothesis_chooser(data))
    since: dict[str, float] = {}  # vehicle id -> from when its frames are its own
    committed: set[str] = set()
    for _ in range(STEPS):
        dt, event = source.next(lane.state, lane.now)
        note(f"t={lane.now + dt:.3f} {event}")
        actions = lane.feed(event, dt)
        source.learn(actions)
        for arrived in of_type(actions, VehicleArrived):
            since[arrived.vehicle_id] = lane.now
        vehicle = lane.state.vehicle
        if vehicle is None or vehicle.implicit or vehicle.vehicle_id not in since:
            continue  # a fare-gate passenger (reread.py) or a carried, paid one
        vid = vehicle.vehicle_id
        if vehicle.committed:
            committed.add(vid)
            continue  # one payment at a time: its codes are ignored anyway
        if vid in committed:  # its record failed: it pays again from now
            committed.discard(vid)
            since[vid] = lane.now
        for taken in (since[vid], lane.now):
            probe = ev.Scanned(OWN, "token", None, taken, "probe")
            _, answer = step(lane.state, probe, lane.now)
            assert ScanIgnored(vid, BEFORE_ARRIVAL) not in answer, (taken, lane.state)
