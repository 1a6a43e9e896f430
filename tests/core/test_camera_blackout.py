"""A lane whose camera reads no codes (`camera_blackout`, CameraSees) is closed to payments: it
does not invite drivers to show a code nobody reads, takes nobody's money, and says so
(`Lane closed`, not accepting); a vehicle that paid before it needs no camera and is let
through; once fresh frames decode again the lane reopens by itself and shows its phase's text."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, displayed, heal, of_type, one
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    Authorise,
    ClearAlarm,
    CloseBarrier,
    OpenBarrier,
    Persist,
    RaiseAlarm,
    ShowOnDisplay,
)
from lane.core.display import LANE_CLOSED, LANE_OPEN
from lane.core.names import Alarm, RecordKind
from lane.core.notes import ScanRefused
from lane.core.state import Phase

DARK = ev.CameraSees(False, "camera blackout: black frames for 2.0 s")
SEES = ev.CameraSees(True)
FARE = ShowOnDisplay(("Class 1", "2.50 EUR", "Show your QR code"))


def test_a_dark_camera_closes_the_lane_to_payments_and_says_why() -> None:
    lane = LaneDriver()
    actions = lane.feed(DARK)
    text = "camera reads no codes: camera blackout: black frames for 2.0 s"
    assert actions == [RaiseAlarm(Alarm.CAMERA_BLACKOUT, text), LANE_CLOSED]
    assert not lane.state.accepting_payments and lane.phase() is Phase.FAULT
    assert of_type(lane.arrive("v1"), ShowOnDisplay) in ([], [LANE_CLOSED])
    assert lane.last(ShowOnDisplay) == LANE_CLOSED  # no fare, no "Show your QR code"
    # A code read in the one frame that came through is not charged.
    assert lane.scan() == [LANE_CLOSED, ScanRefused("camera_blackout")]
    assert of_type(lane.actions, Authorise) == []


def test_the_text_follows_the_cause_and_the_lane_stays_closed() -> None:
    lane = LaneDriver()
    lane.feed(DARK)
    lane.arrive("v1")
    actions = lane.feed(ev.CameraSees(False, "capture stalled: no frame for over 12 s"))
    text = "camera reads no codes: capture stalled: no frame for over 12 s"
    assert actions == [RaiseAlarm(Alarm.CAMERA_BLACKOUT, text)]  # the display keeps its text
    assert not lane.state.accepting_payments


@pytest.mark.parametrize(("arrived", "shown"), [(True, FARE), (False, LANE_OPEN)])
def test_fresh_frames_reopen_the_lane_by_itself(arrived: bool, shown: ShowOnDisplay) -> None:
    lane = LaneDriver()
    lane.feed(DARK)
    if arrived:
        lane.arrive("v1")
    actions = lane.feed(SEES)
    assert actions == [ClearAlarm(Alarm.CAMERA_BLACKOUT), shown]
    assert lane.state.accepting_payments
    if arrived:
        assert one(lane.scan(), Authorise)


def test_a_vehicle_whose_payment_is_being_written_is_told_to_wait_and_let_through() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    lane.decide()
    assert displayed(lane.feed(DARK)) == ["Paid", "Please wait"]
    assert one(lane.persisted(), OpenBarrier)
    lane.ack()
    lane.leave_pay_point()
    assert one(lane.cross(), CloseBarrier)
    lane.ack()
    assert lane.phase() is Phase.FAULT  # through, and the lane stays closed to payments
    assert of_type(lane.actions, Abandon) == []


def test_a_vehicle_under_an_open_barrier_goes_through() -> None:
    lane = LaneDriver()
    lane.pay("v1")
    actions = lane.feed(DARK)
    assert of_type(actions, ShowOnDisplay) == [LANE_CLOSED]  # for whoever comes next
    assert lane.phase() is Phase.OPENING
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    assert lane.state.passage is None and lane.phase() is Phase.FAULT
    assert of_type(lane.actions, Abandon) == []


def test_a_payment_in_flight_when_the_camera_goes_dark_is_reversed() -> None:
    """As under any payment fault: the driver is told the lane is closed while it is in
    flight, so the lane does not take the money after saying so."""
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    lane.feed(DARK)
    actions = lane.decide()
    assert actions[0] == Abandon("v1/a1", "camera_blackout")
    assert of_type(actions, Persist) == []


STEPS = st.lists(
    st.sampled_from(["dark", "sees", "arrive", "scan", "approve", "persist", "ack", "cross"]),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(STEPS)
@example(["arrive", "scan", "approve", "dark", "persist", "cross", "cross"])  # a tailgater
def test_no_payment_is_taken_while_the_camera_is_dark(steps: list[str]) -> None:
    """Whatever comes and goes: no authorisation starts and no payment is committed while the
    camera is dark, the lane never says it accepts then, and once it sees again the lane
    accepts again (nothing else held it)."""
    lane = LaneDriver()
    for name in steps:
        note(name)
        state = lane.state
        match name:
            case "dark" | "sees":
                actions = lane.feed(DARK if name == "dark" else SEES)
            case "arrive" if state.vehicle is None:
                actions = lane.arrive(lane.fresh("v"))
            case "scan" if state.vehicle is not None:
                actions = lane.scan(f"28{lane.fresh(''):0>16}")
            case "approve" if of_type(lane.actions, Authorise) and state.vehicle is not None:
                actions = lane.decide()
            case "persist" if state.vehicle is not None and state.vehicle.pending_persist:
                actions = lane.persisted()
            case "ack" if state.command is not None and not state.command.acked:
                actions = lane.ack()
            case "cross" if state.passage is not None:
                actions = lane.leave_pay_point() + lane.cross()
            case _:
                continue
        dark = Alarm.CAMERA_BLACKOUT in lane.state.faults
        if name in ("dark", "sees"):
            assert dark == (name == "dark")
        assert dark == (lane.state.faults == {Alarm.CAMERA_BLACKOUT})
        if dark:
            assert not lane.state.accepting_payments
            assert of_type(actions, Authorise) == []
            if name != "dark":  # the step that went dark may commit an approval already in
                # A tailgater's violation is written whatever the camera sees: no payment.
                paid = [
                    p for p in of_type(actions, Persist) if p.draft.kind != RecordKind.VIOLATION
                ]
                assert paid == []
        else:
            assert lane.state.accepting_payments or lane.state.vehicle is not None
    heal(lane)  # the camera sees again, and the world answers what is in flight
    assert lane.state.accepting_payments
    lane.monitor.check_outcomes()
