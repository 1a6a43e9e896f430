"""An exit lane's trip, from the entry evidence to the core's `TripPriced` (pure).

The exit lane's shell reads the evidence (the pass text the driver showed, the pass bound to
the plate, or none), asks the used-pass store whether the pass already exited, and calls
`price_trip`; everything between is here and pure: the pass verified offline by signature
(`verify_pass`: the key set's pass keys, the pass lifetime), the fare and its exceptions
(`decide_fare`), and the answer the core takes. docs/closed-road.md has the rules and texts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lane.auth.fares import FareError, Tariff
from lane.auth.keys import KeySet
from lane.auth.passes import EntryPass, PassAccepted, verify_pass
from lane.auth.trip_rules import (
    MAX_LINE,
    Evidence,
    ExitContext,
    RoadRules,
    decide_fare,
    display_lines,
)
from lane.core.actions import PriceTrip
from lane.core.events import TripPriced

DAY_S = 86_400


@dataclass(frozen=True)
class ExitLaneRules:
    """What an exit lane prices with, besides the tariff and the keys."""

    plaza: str
    lane: str
    road: RoadRules
    pass_lifetime_s: float = 30 * DAY_S
    skew_s: float = 30.0


def evidence_of(text: str | None, keys: KeySet, now: float, rules: ExitLaneRules) -> Evidence:
    """The verified pass (EntryPass), why it is refused (PassRefused), or None: no pass."""
    if text is None:
        return None
    verdict = verify_pass(text, keys, now, rules.skew_s, rules.pass_lifetime_s)
    return verdict.entry if isinstance(verdict, PassAccepted) else verdict


def pass_expiry(entry: EntryPass, rules: ExitLaneRules) -> float:
    """Until when the used-pass store must remember the pass: after that it is expired anyway."""
    return entry.entered_at + rules.pass_lifetime_s + rules.skew_s


def price_trip(  # noqa: PLR0917 - the trip's inputs, each its own
    request: PriceTrip,
    evidence: Evidence,
    already_used: bool,
    tariff: Tariff,
    rules: ExitLaneRules,
    now: float,
) -> TripPriced:
    """The core's answer to `request`. An exit the tariff cannot price at all (a class or a
    plaza it does not hold: a configuration fault) is `unpriced`, amount None: the attendant."""
    at_exit = ExitContext(rules.plaza, rules.lane, request.vehicle_class, request.plate, now)
    try:
        decision = decide_fare(evidence, already_used, at_exit, tariff, rules.road)
    except FareError as exc:
        return unpriced(request.trip_id, f"No fare at {rules.plaza}", str(exc), tariff.currency)
    entry = evidence if isinstance(evidence, EntryPass) else None
    # The core adds what the driver does next ("Attendant coming" or the payment code).
    lines = display_lines(
        dataclasses.replace(decision, attendant=False), tariff.format(decision.amount)
    )
    return TripPriced(
        request.trip_id,
        True,
        decision.outcome.value,
        decision.amount.amount_minor,
        decision.amount.currency,
        decision.charged_class,
        decision.entry_plaza,
        decision.pass_id,
        pass_expiry(entry, rules) if entry is not None else None,
        tuple(f.value for f in decision.flags),
        decision.attendant,
        lines,
    )


def unpriced(trip_id: str, headline: str, detail: str, currency: str = "") -> TripPriced:
    """No fare can be charged here (a configuration fault, a failure): the attendant decides."""
    return TripPriced(trip_id, True, "unpriced", None, currency, flags=("unpriced",),
                      attendant=True, display=(headline[:MAX_LINE], detail[:MAX_LINE]))  # fmt: skip


def not_found(request: PriceTrip) -> TripPriced:
    """A plate lookup without an open entry: the lane waits for the pass."""
    return TripPriced(request.trip_id, False)


__all__ = [
    "ExitLaneRules",
    "evidence_of",
    "not_found",
    "pass_expiry",
    "price_trip",
    "unpriced",
]
