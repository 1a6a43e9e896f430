"""What a metro exit charges of a trip whose tap-in paid its entry fare (lane.core.metro's
`exit_share`): the rest of the trip's fare, so entry + exit = the trip's fare; never below 0
(an entry that charged more keeps it, flagged); an entry paid in another currency is not
taken off (flagged)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.core.metro import ExitShare, exit_share


@pytest.mark.parametrize(
    ("fare", "paid", "currency", "share"),
    [
        (800, 250, "CNY", ExitShare(550, ("entry_paid:250",))),
        (800, 0, "CNY", ExitShare(800, ())),  # a free tap-in: nothing to take off
        (800, 800, "CNY", ExitShare(0, ("entry_paid:800",))),
        (300, 450, "CNY", ExitShare(0, ("entry_paid:450", "entry_overpaid:150"))),
        (800, 250, "EUR", ExitShare(800, ("entry_currency:EUR",))),
        (800, 0, "EUR", ExitShare(800, ())),
        (0, 0, "CNY", ExitShare(0, ())),
    ],
)
def test_the_exit_charges_the_rest_of_the_trip(
    fare: int, paid: int, currency: str, share: ExitShare
) -> None:
    assert exit_share(fare, "CNY", paid, currency) == share


@given(fare=st.integers(0, 10**7), paid=st.integers(0, 10**7))
def test_entry_and_exit_together_pay_the_trip_never_less_never_below_zero(
    fare: int, paid: int
) -> None:
    share = exit_share(fare, "CNY", paid, "CNY")
    assert share.amount_minor >= 0
    assert paid + share.amount_minor == max(fare, paid)
    # What the entry charged above the trip is flagged, never silently kept.
    assert (paid > fare) == any(f.startswith("entry_overpaid:") for f in share.flags)
