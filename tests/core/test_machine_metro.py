"""A metro exit gate priced by the passenger's tap-in (lane.core.metro): the code is held while
its trip is priced, then authorised at exactly that fare; the tap_out record carries the entry
station, the tap-in's trip id and the rules' flags; the tap-in is closed once it is durable."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, displayed, of_type, one, rules

from lane.core import events as ev
from lane.core.actions import Authorise, MarkPassUsed, Persist, PriceTrip, Settle
from lane.core.names import TripSource
from lane.core.notes import ScanIgnored, TripPricedNote
from lane.core.state import LaneMode, Phase

METRO_EXIT = rules(LaneMode.TRANSIT_EXIT, metro_pricing=True)
TRIP_HEX = "0a0b0c0d0e0f10111213141516171819"


def priced(trip_id: str, outcome: str = "charged", amount: int | None = 400) -> ev.TripPriced:
    flags = () if outcome == "charged" else (outcome,)
    head = {"charged": "A to B", "no_pass": "No tap-in", "u_turn": "Same station exit"}
    return ev.TripPriced(trip_id, True, outcome, amount, "CNY", 1,
                         None if outcome == "no_pass" else "A",
                         None if outcome == "no_pass" else TRIP_HEX, 2e9, flags, False,
                         (head.get(outcome, outcome), "Fare CNY 4.00"))  # fmt: skip


def test_a_code_is_held_and_its_trip_priced_before_it_is_authorised() -> None:
    lane = LaneDriver(METRO_EXIT)
    actions = lane.scan("HC1:tok", "token")
    ask = one(actions, PriceTrip)
    assert (ask.source, ask.pass_text, ask.code_kind) == (TripSource.CODE, "HC1:tok", "token")
    assert of_type(actions, Authorise) == []
    assert lane.phase() is Phase.VEHICLE_PRESENT
    # Another code meanwhile (the camera reads the phone again) is not a second passenger.
    again = lane.scan("HC1:tok", "token")
    assert of_type(again, PriceTrip) == [] and of_type(again, ScanIgnored) != []
    actions = lane.feed(priced(ask.trip_id))
    auth = one(actions, Authorise)
    assert (auth.text, auth.amount_minor, auth.currency) == ("HC1:tok", 400, "CNY")
    assert displayed(actions)[:2] == ["A to B", "Fare CNY 4.00"]
    assert one(actions, TripPricedNote).amount_minor == 400
    assert lane.phase() is Phase.AUTHORISING


@pytest.mark.parametrize(
    ("outcome", "amount", "entry", "trip"),
    [("charged", 400, "A", TRIP_HEX), ("no_pass", 800, None, None), ("u_turn", 200, "A", TRIP_HEX)],
)
def test_the_tap_out_record_carries_the_trip_and_closes_the_tap_in(
    outcome: str, amount: int, entry: str | None, trip: str | None
) -> None:
    lane = LaneDriver(METRO_EXIT)
    ask = one(lane.scan("HC1:tok", "token"), PriceTrip)
    lane.feed(priced(ask.trip_id, outcome, amount))
    persist = one(lane.decide(method="token", account_ref="acct-1"), Persist)
    d = persist.draft
    assert (d.kind, d.amount_minor, d.entry_plaza, d.pass_id) == ("tap_out", amount, entry, trip)
    assert d.flags[: len(() if outcome == "charged" else (outcome,))] == (
        () if outcome == "charged" else (outcome,)
    )
    marks = of_type(lane.persisted(), MarkPassUsed)
    assert [m.pass_id for m in marks] == ([trip] if trip else [])


def test_a_declined_payment_leaves_the_tap_in_open() -> None:
    lane = LaneDriver(METRO_EXIT)
    ask = one(lane.scan("HC1:tok", "token"), PriceTrip)
    lane.feed(priced(ask.trip_id))
    actions = lane.decide(approved=False, method="token", account_ref="acct-1")
    assert one(actions, Persist).draft.auth.result == "declined"
    assert lane.phase() is Phase.IDLE
    assert of_type(lane.persisted(), MarkPassUsed) == []


def test_a_trip_the_gate_cannot_price_refuses_the_passenger() -> None:
    lane = LaneDriver(METRO_EXIT)
    ask = one(lane.scan("HC1:tok", "token"), PriceTrip)
    answer = ev.TripPriced(ask.trip_id, True, "unpriced", None, "CNY", flags=("unpriced",),
                           display=("No fare at B", "class 9"))  # fmt: skip
    actions = lane.feed(answer)
    assert of_type(actions, Authorise) == []
    assert displayed(actions)[0] == "No fare at B"
    assert lane.phase() is Phase.IDLE


def test_a_stale_answer_is_ignored_and_the_gate_closed_meanwhile_refuses() -> None:
    lane = LaneDriver(METRO_EXIT)
    ask = one(lane.scan("HC1:tok", "token"), PriceTrip)
    assert of_type(lane.feed(priced("other/trip")), Authorise) == []
    lane.feed(ev.AttendantCloseLane("maintenance"))
    assert of_type(lane.feed(priced(ask.trip_id)), Authorise) == []
    assert lane.state.vehicle is None


@pytest.mark.parametrize("kind", ["unknown", "entry_pass"])
def test_a_code_that_cannot_pay_is_refused_without_a_lookup(kind: str) -> None:
    lane = LaneDriver(METRO_EXIT)
    actions = lane.scan("junk", kind, reason="unreadable code")
    assert of_type(actions, PriceTrip) == []
    assert lane.phase() is Phase.IDLE


def test_without_metro_pricing_a_transit_exit_charges_its_flat_fare() -> None:
    lane = LaneDriver(rules(LaneMode.TRANSIT_EXIT))
    actions = lane.scan("HC1:tok", "token")
    assert of_type(actions, PriceTrip) == []
    assert one(actions, Authorise).amount_minor > 0


# --- a dynamic wallet code: charged the maximum, priced again by the payer the answer names ---

WALLET = "281234567890123456"


def by_payer(trip_id: str, outcome: str, amount: int | None, found: bool = True) -> ev.TripPriced:
    """The shell's answer to the reprice asked with the payer's account."""
    return ev.TripPriced(trip_id, found, outcome, amount, "CNY", 1,
                         None if outcome == "no_pass" else "A",
                         None if outcome == "no_pass" else TRIP_HEX, 2e9,
                         () if outcome == "charged" else (outcome,), False,
                         (outcome, "Fare"))  # fmt: skip


def wallet_out(lane: LaneDriver, first: str = "no_pass", amount: int = 800) -> Authorise:
    ask = one(lane.scan(WALLET, "payment_code"), PriceTrip)
    return one(lane.feed(priced(ask.trip_id, first, amount)), Authorise)


@pytest.mark.parametrize(
    ("again", "kept", "refund", "entry", "trip", "flags"),
    [
        # The payer's tap-in at A: the trip's fare is kept, the rest refunded.
        (("charged", 400), 400, 400, "A", TRIP_HEX, ("charged:800", "refunded:400")),
        (("u_turn", 200), 200, 600, "A", TRIP_HEX, ("u_turn", "charged:800", "refunded:600")),
        # No tap-in of the payer either, or it exited already: the maximum stands.
        (("no_pass", 800), 800, 0, None, None, ("no_pass",)),
        (("pass_used", 800), 800, 0, "A", TRIP_HEX, ("pass_used",)),
        # Never more than was charged (a fare that rose between the two lookups).
        (("charged", 900), 800, 0, "A", TRIP_HEX, ()),
        # The gate cannot price it again: the charge stands as priced first.
        (("unpriced", None), 800, 0, None, None, ("no_pass",)),
    ],
)  # fmt: skip
def test_a_wallet_code_without_a_tap_in_is_priced_again_by_its_payer(  # noqa: PLR0917
    again: tuple[str, int | None],
    kept: int,
    refund: int,
    entry: str | None,
    trip: str | None,
    flags: tuple[str, ...],
) -> None:
    lane = LaneDriver(METRO_EXIT)
    auth = wallet_out(lane)
    assert auth.amount_minor == 800  # the maximum from this station: charged first
    assert auth.reprice is not None and auth.reprice.account_ref is None  # the shell fills it
    outcome, amount = again
    answer = by_payer(auth.reprice.trip_id, outcome, amount)
    persist = one(lane.decide(account_ref="alipay:payer", repriced=answer), Persist)
    d = persist.draft
    assert (d.amount_minor, d.entry_plaza, d.pass_id) == (kept, entry, trip)
    assert d.flags == flags and d.account_ref == "alipay:payer"
    actions = lane.persisted()
    assert one(actions, Settle).refund_minor == refund
    assert [m.pass_id for m in of_type(actions, MarkPassUsed)] == ([trip] if trip else [])


@pytest.mark.parametrize(
    ("code", "kind", "first"),
    [
        (WALLET, "payment_code", "charged"),  # its tap-in was found by the code: no reprice
        ("HC1:tok", "token", "no_pass"),  # a token's account is known before paying
        ("hQVDUFYwMQ==", "emv", "no_pass"),  # so is a card's (its PAN)
    ],
)
def test_only_a_wallet_code_without_a_tap_in_is_priced_again(
    code: str, kind: str, first: str
) -> None:
    lane = LaneDriver(METRO_EXIT)
    ask = one(lane.scan(code, kind), PriceTrip)
    assert one(lane.feed(priced(ask.trip_id, first, 800)), Authorise).reprice is None


def test_a_declined_or_late_answer_refunds_nothing() -> None:
    lane = LaneDriver(METRO_EXIT)
    auth = wallet_out(lane)
    assert auth.reprice is not None
    answer = by_payer(auth.reprice.trip_id, "charged", 400)
    persist = one(lane.decide(approved=False, repriced=answer), Persist)
    assert (persist.draft.amount_minor, persist.draft.auth.result) == (800, "declined")
    assert of_type(lane.persisted(), Settle) == []
