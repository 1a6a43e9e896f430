"""An exit lane's trip, from the entry evidence to the core's `TripPriced` (pure).

The exit lane's shell reads the evidence (the pass text the driver showed, the pass bound to
the plate, or none), asks the used-pass store whether the pass already exited, and calls
`price_trip`; everything between is here and pure: the pass verified offline by signature
(`verify_pass`: the key set's pass keys, the pass lifetime), the fare and its exceptions
(`decide_fare`), and the answer the core takes. docs/closed-road.md has the rules and texts.

A metro exit gate (`price_tap_out`) prices the same way from the passenger's tap-in: the
account of the code shown (`code_account`: the token's subject, or the keyed reference of a
payment code, exactly as the authoriser records it) finds the tap-in in the shell's store,
`tap_in_entry` makes it the entry evidence, and "already used" means it already exited.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lane.auth.deny import DenyList
from lane.auth.fares import FareError, Money, Tariff
from lane.auth.keys import KeySet
from lane.auth.passes import (
    DEFAULT_PASS_LIFETIME_S,
    EntryPass,
    PassAccepted,
    pass_valid_until,
    verify_pass,
)
from lane.auth.paycodes import CodeError, online_code
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S, DEFAULT_SKEW_S, TokenAccepted, verify_token
from lane.auth.trip_rules import (
    MAX_LINE,
    Evidence,
    ExitContext,
    RoadRules,
    StampedRecord,
    decide_fare,
    display_lines,
    tap_in_entry,
)
from lane.core.actions import PriceTrip
from lane.core.events import TripPriced
from lane.core.metro import exit_share
from lane.core.names import PayloadKind


@dataclass(frozen=True)
class ExitLaneRules:
    """What an exit lane prices with, besides the tariff and the keys."""

    plaza: str
    lane: str
    road: RoadRules
    pass_lifetime_s: float = DEFAULT_PASS_LIFETIME_S
    skew_s: float = DEFAULT_SKEW_S
    max_token_lifetime_s: float = DEFAULT_MAX_LIFETIME_S


def evidence_of(text: str | None, keys: KeySet, now: float, rules: ExitLaneRules) -> Evidence:
    """The verified pass (EntryPass), why it is refused (PassRefused), or None: no pass."""
    if text is None:
        return None
    verdict = verify_pass(text, keys, now, rules.skew_s, rules.pass_lifetime_s)
    return verdict.entry if isinstance(verdict, PassAccepted) else verdict


def pass_expiry(entry: EntryPass, rules: ExitLaneRules) -> float:
    """Until when the used-pass store must remember the pass: after that it is expired anyway."""
    return pass_valid_until(entry.entered_at, rules.skew_s, rules.pass_lifetime_s)


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


def code_account(  # noqa: PLR0917 - what each kind of code needs to name its account
    kind: PayloadKind | None,
    text: str,
    keys: KeySet,
    deny: DenyList,
    account_key: bytes,
    now: float,
    rules: ExitLaneRules,
) -> str | None:
    """The account reference the authoriser will record for this code (a token's subject, a
    payment code's keyed reference), or None: a code it will refuse anyway."""
    if kind is PayloadKind.TOKEN:
        verdict = verify_token(text, keys, deny, now, rules.skew_s, rules.max_token_lifetime_s)
        return verdict.account_ref if isinstance(verdict, TokenAccepted) else None
    try:
        return online_code(str(kind), text, account_key).account_ref
    except CodeError:
        return None


def price_tap_out(  # noqa: PLR0917 - the trip's inputs, each its own
    request: PriceTrip,
    tap_in: StampedRecord | None,
    exited: bool,
    tariff: Tariff,
    rules: ExitLaneRules,
    now: float,
) -> TripPriced:
    """A metro exit: `tap_in` is the account's latest tap-in (None: none on the line within
    the retention), `exited` whether it already exited. A tap-in record the rules cannot read
    (no usable trip id) counts as no tap-in: the passenger pays the maximum fare, flagged.
    An open tap-in paid its entry fare already: the exit charges the rest (`exit_share`)."""
    try:
        entry = tap_in_entry(tap_in) if tap_in is not None else None
    except ValueError:
        entry = None
    answer = price_trip(request, entry, exited and entry is not None, tariff, rules, now)
    if tap_in is None or entry is None or exited or answer.amount_minor is None:
        return answer
    paid = tap_in.draft
    share = exit_share(answer.amount_minor, answer.currency, paid.amount_minor, paid.currency)
    if share.amount_minor == answer.amount_minor:
        return dataclasses.replace(answer, flags=(*answer.flags, *share.flags))
    due = tariff.format(Money(share.amount_minor, answer.currency))
    less = f"Less entry {tariff.format(Money(paid.amount_minor, paid.currency))}: {due}"
    return dataclasses.replace(answer, amount_minor=share.amount_minor,
                               flags=(*answer.flags, *share.flags),
                               display=(*answer.display, less[:MAX_LINE]))  # fmt: skip


def unpriced(trip_id: str, headline: str, detail: str, currency: str = "") -> TripPriced:
    """No fare can be charged here (a configuration fault, a failure): the attendant decides."""
    return TripPriced(trip_id, True, "unpriced", None, currency, flags=("unpriced",),
                      attendant=True, display=(headline[:MAX_LINE], detail[:MAX_LINE]))  # fmt: skip


def not_found(request: PriceTrip) -> TripPriced:
    """A plate lookup without an open entry: the lane waits for the pass."""
    return TripPriced(request.trip_id, False)


__all__ = [
    "ExitLaneRules",
    "code_account",
    "evidence_of",
    "not_found",
    "pass_expiry",
    "price_tap_out",
    "price_trip",
    "unpriced",
]
