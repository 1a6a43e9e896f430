"""Arrival at the pay point, vehicle class and fare display."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, displayed, of_type, one

from lane.core import events as ev
from lane.core.actions import Authorise, ClearAlarm, RaiseAlarm, ShowOnDisplay
from lane.core.names import Alarm
from lane.core.notes import NoteBase, ScanWithoutVehicle, VehicleArrived, VehicleGone
from lane.core.state import Phase


def test_arrival_shows_the_default_class_fare() -> None:
    lane = LaneDriver()
    actions = lane.arrive("v1")
    assert lane.phase() is Phase.VEHICLE_PRESENT
    arrived = VehicleArrived(vehicle_id="v1", vehicle_class=1, implicit=False)
    assert one(actions, NoteBase) == arrived
    assert one(actions, ShowOnDisplay).lines == ("Class 1", "2.50 EUR", "Show your QR code")
    assert lane.state.vehicle is not None
    assert (lane.state.vehicle.amount_minor, lane.state.vehicle.currency) == (250, "EUR")


CLASS_TABLE = [
    # classifier reading, what the display shows, amount the lane will ask for
    (1, ("Class 1", "2.50 EUR", "Show your QR code"), 250),
    (2, ("Class 2", "4.80 EUR", "Show your QR code"), 480),
    (3, ("Class 3", "12.75 EUR", "Show your QR code"), 1275),
    (7, ("Class 7", "Please wait for assistance"), None),  # a class with no fare
]


@pytest.mark.parametrize(("vehicle_class", "lines", "amount"), CLASS_TABLE)
def test_class_read_before_arrival_sets_the_fare(
    vehicle_class: int, lines: tuple[str, ...], amount: int | None
) -> None:
    lane = LaneDriver()
    assert lane.feed(ev.VehicleClassified(vehicle_class)) == []
    assert lane.phase() is Phase.IDLE
    actions = lane.arrive()
    assert one(actions, ShowOnDisplay).lines == lines
    assert lane.state.vehicle is not None
    assert lane.state.vehicle.amount_minor == amount
    assert lane.state.next_class is None  # used up by this vehicle


@pytest.mark.parametrize(("vehicle_class", "lines", "amount"), CLASS_TABLE)
def test_class_read_after_arrival_updates_the_fare(
    vehicle_class: int, lines: tuple[str, ...], amount: int | None
) -> None:
    lane = LaneDriver()
    lane.arrive()
    actions = lane.feed(ev.VehicleClassified(vehicle_class))
    assert one(actions, ShowOnDisplay).lines == lines
    assert lane.state.vehicle is not None
    assert lane.state.vehicle.vehicle_class == vehicle_class
    assert lane.state.vehicle.amount_minor == amount


def test_class_reading_does_not_change_a_payment_in_flight() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    assert lane.feed(ev.VehicleClassified(3)) == []
    assert lane.last(Authorise).amount_minor == 250
    lane.decide()
    assert lane.state.vehicle is not None
    assert lane.state.vehicle.amount_minor == 250


def test_unknown_class_calls_the_attendant_and_spends_no_try() -> None:
    lane = LaneDriver()
    lane.feed(ev.VehicleClassified(7))
    actions = lane.arrive()
    assert one(actions, RaiseAlarm).code == "attendant_needed"
    actions = lane.scan()
    assert of_type(actions, Authorise) == []
    assert "Please wait for assistance" in displayed(actions)
    assert lane.state.vehicle is not None and lane.state.vehicle.tries == 0
    assert lane.phase() is Phase.VEHICLE_PRESENT


def test_a_corrected_class_lets_the_same_code_pay() -> None:
    lane = LaneDriver()
    lane.feed(ev.VehicleClassified(7))
    lane.arrive()
    lane.scan("281234567890123456")
    actions = lane.feed(ev.VehicleClassified(2))
    assert ClearAlarm(Alarm.ATTENDANT_NEEDED) in actions
    actions = lane.scan("281234567890123456")
    assert one(actions, Authorise).amount_minor == 480


def test_a_second_entry_loop_reading_is_the_same_vehicle() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    assert lane.arrive("v2") == []
    assert lane.state.vehicle is not None and lane.state.vehicle.vehicle_id == "v1"


def test_a_vehicle_backing_away_frees_the_pay_point() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    actions = lane.leave_pay_point()
    assert actions == [VehicleGone(vehicle_id="v1")]
    assert lane.phase() is Phase.IDLE


def test_toll_scan_without_a_vehicle_is_only_noted() -> None:
    lane = LaneDriver()
    actions = lane.scan()
    assert actions == [ScanWithoutVehicle(kind="payment_code")]
    assert lane.phase() is Phase.IDLE and lane.state.vehicle is None


@pytest.mark.parametrize(
    "close",
    [
        ev.AttendantCloseLane("maintenance"),
        ev.BarrierReported("offline"),
        ev.LinkChanged(up=False),
        ev.QueueChanged(full=True, high_water=True),
    ],
    ids=["closed", "barrier_offline", "broker_down", "queue_full"],
)
def test_arrival_at_a_closed_or_faulted_lane_is_told_so(close: ev.Event) -> None:
    lane = LaneDriver()
    lane.feed(close)
    actions = lane.arrive()
    assert one(actions, ShowOnDisplay).lines == ("Lane closed", "Please use another lane")


@pytest.mark.parametrize("sensor", ["x", "exit_loop", "safety_loop"])
def test_other_sensors_do_not_make_a_vehicle(sensor: str) -> None:
    lane = LaneDriver()
    lane.sensor(sensor, True)
    lane.sensor(sensor, False)
    assert lane.state.vehicle is None and lane.phase() is Phase.IDLE
