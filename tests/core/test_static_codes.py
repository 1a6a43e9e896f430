"""A code printed at the booth (`Scanned.static`: a sticker the scanner saw stay put, seen again
after a truck hid it) is nobody's try; a driver's own code that is no payment code is refused
as before (lane.core.static_codes)."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, displayed, of_type, one, rules
from hypothesis import given
from hypothesis import strategies as st

from lane.core import events as ev
from lane.core.actions import Authorise, ShowOnDisplay
from lane.core.notes import CodeRefused, ScanIgnored, ScanWithoutVehicle
from lane.core.state import LaneMode, Phase
from lane.core.static_codes import STATIC_CODE

STICKER = "https://example.com/booth-7"
TRIES_SPENT = [0, 1, 2, 3]  # codes the vehicle had refused before the sticker came back


def refused_times(lane: LaneDriver, n: int) -> None:
    for i in range(n):
        lane.scan(f"personal QR {i}", "unknown", "not a payment code")


@pytest.mark.parametrize("spent", TRIES_SPENT)
def test_the_sticker_seen_again_spends_no_try_and_shows_nothing(spent: int) -> None:
    lane = LaneDriver(rules(max_tries=3))
    lane.arrive("v1")
    refused_times(lane, spent)
    before, phase = lane.state.vehicle, lane.phase()
    actions = lane.scan(STICKER, "unknown", "not a payment code", static=True)
    assert actions == [ScanIgnored("v1", STATIC_CODE)]
    assert lane.state.vehicle == before and lane.phase() is phase


def test_a_drivers_own_code_that_is_no_payment_code_is_still_refused() -> None:
    lane = LaneDriver(rules(max_tries=3))
    lane.arrive("v1")
    lane.scan(STICKER, "unknown", "not a payment code", static=True)
    actions = lane.scan("my business card", "unknown", "not a payment code")
    assert CodeRefused("v1", "not a payment code") in actions
    assert one(actions, ShowOnDisplay).lines == (
        "Payment refused",
        "not a payment code",
        "Try another code (2 left)",
    )
    assert lane.phase() is Phase.DENIED


def test_the_sticker_then_a_payment_code_pays_with_every_try_left() -> None:
    lane = LaneDriver(rules(max_tries=1))
    lane.arrive("v1")
    lane.scan(STICKER, "unknown", "not a payment code", static=True)
    assert one(lane.scan(), Authorise).auth_id == "v1/a1"


def test_a_code_the_lane_can_pay_with_is_never_set_aside_as_static() -> None:
    # Only a code that is no payment code: the scanner's word cannot cost a driver a payment.
    lane = LaneDriver()
    lane.arrive("v1")
    assert one(lane.scan("281234567890123456", "payment_code", static=True), Authorise)


@pytest.mark.parametrize("mode", [LaneMode.TRANSIT_ENTRY, LaneMode.TRANSIT_EXIT])
def test_at_a_fare_gate_the_sticker_makes_no_passenger(mode: LaneMode) -> None:
    lane = LaneDriver(rules(mode))
    actions = lane.scan(STICKER, "unknown", "not a payment code", static=True)
    assert actions == [ScanWithoutVehicle("unknown")]
    assert lane.state.vehicle is None and lane.phase() is Phase.IDLE
    # A passenger's own QR makes one, refused with the reason, as before.
    refused = lane.scan("my ticket photo", "unknown", "not a payment code")
    assert "not a payment code" in displayed(refused)


def test_a_closed_lane_shows_nothing_for_the_sticker() -> None:
    lane = LaneDriver()
    lane.feed(ev.AttendantCloseLane("maintenance"))
    assert lane.scan(STICKER, "unknown", "not a payment code", static=True) == [
        ScanWithoutVehicle("unknown")
    ]


@given(
    codes=st.lists(
        st.tuples(st.sampled_from(["personal QR", "card", STICKER]), st.booleans()),
        max_size=8,
    )
)
def test_tries_spent_are_the_drivers_own_codes_only(codes: list[tuple[str, bool]]) -> None:
    # Any mix of sightings of the sticker and of the driver's own non-payment codes: the tries
    # spent are the distinct codes the driver showed (up to max_tries), whatever the sticker did.
    lane = LaneDriver(rules(max_tries=3))
    lane.arrive("v1")
    shown: set[str] = set()
    for text, static in codes:
        actions = lane.scan(text, "unknown", "not a payment code", static=static)
        if static:
            assert of_type(actions, ShowOnDisplay) == []
        else:
            shown.add(text)
    assert lane.state.vehicle is not None
    assert lane.state.vehicle.tries == min(len(shown), 3)
