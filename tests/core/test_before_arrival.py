"""A code in a frame taken before the vehicle at the pay point arrived is not its code: the
frame showed the vehicle before, and was decoded late (lane.core.before_arrival)."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import pytest
from core_kit import EventSource, LaneDriver, of_type, one, rules
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from test_invariants import STEPS, hypothesis_chooser, lane_rules

from lane.core import events as ev
from lane.core.actions import Authorise, ShowOnDisplay
from lane.core.before_arrival import BEFORE_ARRIVAL, PAID_BEFORE
from lane.core.machine import step
from lane.core.notes import CodeRefused, GateTimeout, ScanIgnored, VehicleArrived, VehicleLeft
from lane.core.state import LaneMode, LaneRules, Phase

PAID = "281234567890123456"  # the code the vehicle before paid with
OTHER = "285555555555555555"  # another code in its frames (a passenger's phone)
OWN = "289876543210987654"  # the vehicle's own code
GARBAGE = ("https://example.com/menu", "unknown", "not a payment code")
ARRIVES_AFTER_S = 1.0  # the next vehicle reaches the entry loop this long after it cleared

# When the frame holding a code of the vehicle before was taken, from the moment the entry loop
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
def test_a_code_of_the_vehicle_before_is_the_new_ones_only_in_a_frame_after_it_left(
    offset: float, theirs: bool
) -> None:
    lane, cleared = next_vehicle()
    before = lane.state
    actions = lane.scan(OTHER, taken=cleared + offset)
    if theirs:  # the next driver holding it up: the network answers
        assert one(actions, Authorise).auth_id == "v2/a1"
    else:
        assert actions == [ScanIgnored("v2", BEFORE_ARRIVAL)]  # no try, no display
        assert lane.state == before and lane.phase() is Phase.VEHICLE_PRESENT


@pytest.mark.parametrize(("offset", "theirs"), TAKEN)
def test_the_code_the_vehicle_before_paid_with_is_never_the_next_ones(
    offset: float, theirs: bool
) -> None:
    # Its driver's phone still in view: read again once the next vehicle arrived, it went to
    # the network, refused as used ("Payment refused", a try of the next driver spent).
    lane, cleared = next_vehicle()
    before = lane.state
    (paid,) = [e for _, e, _ in lane.log if isinstance(e, ev.Persisted)]
    actions = lane.scan(PAID, taken=cleared + offset)
    why = PAID_BEFORE if theirs else BEFORE_ARRIVAL
    record = paid.record_id if theirs else None
    assert actions == [ScanIgnored("v2", why, record)]  # no try, no display, no record
    assert lane.state == before and lane.phase() is Phase.VEHICLE_PRESENT
    assert one(lane.scan(OWN), Authorise).auth_id == "v2/a1"  # every try left


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
    lane.scan(OTHER, taken=cleared - 0.3)
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


# --- the loop's clear lost (a dropped message, a loop fault) -----------------------------------

# What the device tells as the vehicle at the barrier drives through (barrier.device).
ENTRY_CLEAR = ("entry_loop", False)
EXIT_CLEAR = ("exit_loop", False)
DRIVE_THROUGH = (("safety_loop", True), ENTRY_CLEAR, ("safety_loop", False),
                 ("exit_loop", True), EXIT_CLEAR)  # fmt: skip
STEP_S = 0.3


def drives_off(
    lane: LaneDriver,
    lost: Collection[tuple[str, bool]],
    readings: Sequence[tuple[str, bool]] = DRIVE_THROUGH,
) -> float:
    """The paid vehicle drives through: `readings` STEP_S apart, those in `lost` never heard.
    Returns when it drove off the entry loop (NaN: not in `readings`)."""
    left = math.nan
    for reading in readings:
        lane.now += STEP_S
        if reading == ENTRY_CLEAR:
            left = lane.now
        if reading not in lost:
            lane.sensor(*reading)
    return left


def paid_at_the_barrier(mode: LaneMode = LaneMode.TOLL) -> tuple[LaneDriver, float]:
    """v1 paid with PAID and the barrier is open for it; returns when it showed its code."""
    lane = LaneDriver(rules(mode))
    lane.arrive("v1")
    showed = lane.now
    lane.scan(PAID)
    lane.decide()
    lane.persisted()
    lane.ack()
    return lane, showed


def test_a_lost_clear_is_proved_by_the_vehicle_seen_through_the_exit() -> None:
    lane, showed = paid_at_the_barrier()
    left = drives_off(lane, {ENTRY_CLEAR})
    through = lane.now  # the exit loop left behind it
    lane.ack()  # the close
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    for taken in (showed, left - 0.001):  # v1 at the pay point
        assert lane.scan(OTHER, taken=taken) == [ScanIgnored("v2", BEFORE_ARRIVAL)]
    # From then on the pay point was clear, as if the loop had said so.
    assert one(lane.scan(OTHER, taken=through), Authorise).auth_id == "v2/a1"


def test_a_lost_clear_is_proved_by_a_snapshot_saying_the_loop_is_clear() -> None:
    # The lane asked the device (a reconnect) while v1 stood on the exit loop, barrier up.
    lane, showed = paid_at_the_barrier()
    left = drives_off(lane, {ENTRY_CLEAR}, DRIVE_THROUGH[:4])
    sensors = (("entry_loop", False), ("exit_loop", True), ("safety_loop", False))
    lane.feed(ev.DeviceSnapshotted("open", sensors, "d1"), dt=STEP_S)
    told = lane.now
    lane.now += STEP_S  # and its exit loop's clear is lost too
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    for taken in (showed, left - 0.001):
        assert lane.scan(OTHER, taken=taken) == [ScanIgnored("v2", BEFORE_ARRIVAL)]
    assert one(lane.scan(OTHER, taken=told), Authorise).auth_id == "v2/a1"


def test_a_lost_clear_is_proved_by_the_next_arrival_when_nothing_else_tells() -> None:
    # The exit loop's clear lost as well: the barrier stays up, v1 never seen through.
    lane, showed = paid_at_the_barrier()
    left = drives_off(lane, {ENTRY_CLEAR, EXIT_CLEAR})
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    arrived = lane.now
    for taken in (showed, left - 0.001, arrived - 0.001):
        assert lane.scan(OTHER, taken=taken) == [ScanIgnored("v2", BEFORE_ARRIVAL)]
    assert one(lane.scan(OTHER, taken=arrived), Authorise).auth_id == "v2/a1"


def test_the_vehicle_before_seen_through_after_the_next_arrived_sets_none_of_its_codes_aside() -> (
    None
):
    lane, showed = paid_at_the_barrier()
    left = drives_off(lane, {ENTRY_CLEAR}, DRIVE_THROUGH[:2])  # under the boom, off the loop
    lane.arrive("v2", dt=STEP_S)
    arrived = lane.now
    drives_off(lane, (), DRIVE_THROUGH[2:])
    assert of_type(lane.log[-1][2], VehicleLeft)  # v1 seen through
    for taken in (showed, left - 0.001):
        assert lane.scan(OTHER, taken=taken) == [ScanIgnored("v2", BEFORE_ARRIVAL)]
    assert one(lane.scan(OTHER, taken=arrived), Authorise).auth_id == "v2/a1"


def test_a_gate_closed_on_its_timeout_proves_no_clear() -> None:
    # The passenger on the loop never walked through: they may still be standing there.
    lane, _ = paid_at_the_barrier(LaneMode.TRANSIT_ENTRY)
    assert of_type(lane.tick_at_deadline(), GateTimeout)
    lane.ack()  # the gate closed
    waited = lane.now + 1.0
    lane.now += 2.0  # they walk off; the loop's clear is lost
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    assert lane.scan(OTHER, taken=waited) == [ScanIgnored("v2", BEFORE_ARRIVAL)]


def test_the_arrival_the_frozen_rule_waits_on_follows_the_same_evidence() -> None:
    """lane.core.frozen judges the picture by the vehicle's arrival: the loop's clear lost, the
    vehicle was taken to be there still, and an idle lane's unchanged picture for frozen."""
    lane, _ = paid_at_the_barrier()
    first = lane.state.entry_arrived_at
    assert first is not None
    drives_off(lane, {ENTRY_CLEAR})  # seen through the exit
    assert lane.state.entry_arrived_at is None
    lane.ack()
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    assert lane.state.entry_arrived_at == lane.now
    # Both clears lost: the next arrival onto the loop still held is the new vehicle's.
    lane, _ = paid_at_the_barrier()
    drives_off(lane, {ENTRY_CLEAR, EXIT_CLEAR})
    assert lane.state.entry_arrived_at == first
    lane.arrive("v2", dt=ARRIVES_AFTER_S)
    assert lane.state.entry_arrived_at == lane.now
    # A snapshot proves the loop clear; one saying it is held tells no time of arrival.
    sensors = (("entry_loop", False), ("exit_loop", False), ("safety_loop", False))
    lane.feed(ev.DeviceSnapshotted("open", sensors, "d1"), dt=STEP_S)
    assert lane.state.entry_arrived_at is None
    held = (("entry_loop", True), ("exit_loop", False), ("safety_loop", False))
    lane.feed(ev.DeviceSnapshotted("open", held, "d2"), dt=STEP_S)
    assert lane.state.entry_arrived_at is None


def _paid_code(k: int) -> str:
    return f"28{k:016d}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_over_lost_clears_a_code_is_the_next_vehicles_exactly_when_shown_after_it_arrived(
    data: st.DataObject,
) -> None:
    """Vehicles one after another, each paying and driving through, its entry or exit loop's
    clear sometimes lost, the next arriving at any point of the passage before it. While the
    next waits to pay: a code in a frame taken before the vehicle before drove off the loop
    never charges it (nor, in any frame, the code that vehicle paid with), and a code in a
    frame taken from its arrival on is its own."""
    lane = LaneDriver(rules(max_tries=3))
    gaps = st.sampled_from((0.01, STEP_S, 0.7, 2.0))
    lane.arrive("v0")
    came = lane.now  # when the vehicle before arrived
    _pays(lane, _paid_code(0))
    for k in range(1, 4):
        vid = f"v{k}"
        lost = data.draw(st.sets(st.sampled_from((ENTRY_CLEAR, EXIT_CLEAR))), label="lost")
        # Onto the loop once the vehicle before left it: after its second reading at the earliest.
        arrives_after = data.draw(st.integers(2, len(DRIVE_THROUGH)), label="arrives after")
        left = arrived = math.nan
        for i, reading in enumerate((*DRIVE_THROUGH, None)):
            if i == arrives_after:
                lane.arrive(vid, dt=data.draw(gaps))
                arrived = lane.now
            if reading is not None:
                lane.now += data.draw(gaps)
                left = lane.now if reading == ENTRY_CLEAR else left
                if reading not in lost:
                    lane.sensor(*reading)
                _acked(lane)  # the close behind it
            if i >= arrives_after:
                note(f"{vid} probed at t={lane.now:.3f}, lost {sorted(lost)}")
                _probe(lane, vid, (came, left - 0.001), (arrived, lane.now), _paid_code(k - 1))
        came = arrived
        _pays(lane, _paid_code(k))


def _pays(lane: LaneDriver, text: str) -> None:
    lane.scan(text, taken=lane.now)
    lane.decide()
    lane.persisted()
    _acked(lane)  # the open, unless the barrier up for the vehicle before was handed over


def _acked(lane: LaneDriver) -> None:
    cmd = lane.state.command
    if cmd is not None and not cmd.acked and cmd.ack_deadline is not None:
        lane.ack(cmd.cmd_id)


def _probe(
    lane: LaneDriver, vid: str, before: tuple[float, ...], after: tuple[float, ...], paid: str
) -> None:
    vehicle = lane.state.vehicle
    assert vehicle is not None and vehicle.vehicle_id == vid and not vehicle.committed
    for taken, text in [*((t, OTHER) for t in before), *((t, paid) for t in before + after)]:
        _, answer = step(lane.state, ev.Scanned(text, "payment_code", None, taken, "p"), lane.now)
        assert not of_type(answer, Authorise), (taken, text, lane.state)
    for taken in after:
        _, answer = step(lane.state, ev.Scanned(OTHER, "payment_code", None, taken, "p"), lane.now)
        assert one(answer, Authorise).vehicle_id == vid, (taken, lane.state)
