"""A metro exit gate priced by the passenger's tap-in, in the pure core (docs/closed-road.md#metro).

A `transit-exit` gate with `rules.metro_pricing` takes the passenger's payment code, and before
authorising it asks the shell to price the trip (`PriceTrip`, source `code`): the shell finds
the open tap-in of the code's account (shared along the line by the entry gates), and the
closed road's rules (lane.auth.trip_rules, `TripKind.METRO`) price it by entry station and
exit station, with their exceptions: no tap-in, a tap-in already closed, over the time limit,
the same station. The code held meanwhile (`TapOut`) is then authorised at that fare as at
any gate; the `tap_out` record carries the entry station, the tap-in's trip id and the rules'
flags, and once it is durable the tap-in is closed (`MarkPassUsed`, lane.core.road), so a
tap-in exits once. No attendant: a metro's exceptions charge at once, flagged.

A wallet code's one-time digits name no tap-in: it is charged the maximum fare and its
`Authorise` carries `reprice`, which the shell answers once approved with the payer's account
the acquirer named (`Decided.repriced`); `kept_fare` keeps that trip's fare, never more than
was charged, and the rest is refunded once the record is durable (`Settle.refund_minor`).

The tap-in charged its entry fare already (that payment is how a wallet's payer is learned),
so the exit charges the rest of the trip's fare (`exit_share`): entry + exit = the trip's fare.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lane.core import events as ev
from lane.core import paypoint, reread, road
from lane.core.actions import Action, Authorise, PriceTrip, ShowOnDisplay
from lane.core.display import ASSISTANCE
from lane.core.names import PAYABLE_KINDS, PayloadKind, TripSource
from lane.core.notes import RoadEventIgnored, ScanIgnored, TripPricedNote, VehicleArrived
from lane.core.records import FLAG_CHARGED, FLAG_REFUNDED
from lane.core.state import LaneMode, LaneState, Vehicle
from lane.core.trip import Priced, TapOut

Result = tuple[LaneState, list[Action]]

PROCESSING = "Processing payment"
# Record flags of a tap-out whose tap-in was paid (`exit_share`): what the tap-in charged, what
# it charged above the trip's fare, and the other currency it charged in (not taken off).
FLAG_ENTRY_PAID = "entry_paid:"
FLAG_ENTRY_OVERPAID = "entry_overpaid:"
FLAG_ENTRY_CURRENCY = "entry_currency:"
NO_TAP_IN = "no_pass"  # lane.auth.trip_rules' outcome: no tap-in of the account on the line


def priced_gate(state: LaneState) -> bool:
    return state.rules.mode is LaneMode.TRANSIT_EXIT and state.rules.metro_pricing


def on_classified(state: LaneState, event: ev.VehicleClassified, now: float) -> Result:
    """The class of the next passenger to show a code (a reduced-fare class, say): a trip
    being priced or paid keeps the class it was priced for."""
    return replace(state, next_class=event.vehicle_class), []


def on_scanned(state: LaneState, event: ev.Scanned, now: float) -> Result:
    """A payable code with nobody at the gate: hold it and ask for the trip's fare. Anything
    else is the fare gate's as usual (refused, ignored while a payment is in flight, a copy of
    a used code refused as used)."""
    vehicle = state.vehicle
    if vehicle is not None and isinstance(vehicle.trip, TapOut):
        return state, [ScanIgnored(vehicle.vehicle_id, "tap-in being looked up")]
    if (
        vehicle is not None
        or not state.accepting_payments
        or event.kind not in PAYABLE_KINDS
        or reread.copied(state, event, now)  # refused as used: no trip to price
    ):
        return paypoint.on_scanned(state, event, now)
    rules = state.rules
    vehicle_class = state.next_class if state.next_class is not None else rules.default_class
    trip_id = f"{event.event_id}/trip"
    vehicle = Vehicle(event.event_id, vehicle_class, None, "", implicit=True,
                      trip=TapOut(trip_id, event))  # fmt: skip
    ask = PriceTrip(trip_id, vehicle.vehicle_id, vehicle_class, TripSource.CODE, event.text,
                    None, event.kind)  # fmt: skip
    state = replace(state, vehicle=vehicle, next_class=None)
    return state, [VehicleArrived(vehicle.vehicle_id, vehicle_class, True), ask]


def on_priced(state: LaneState, event: ev.TripPriced, now: float) -> Result:
    """The fare of the held code's trip: authorise the code at it. A gate that cannot price
    the trip at all (a tariff without this station or class: check-config says so) refuses
    the passenger, who may try again; so does a gate that closed or faulted meanwhile."""
    vehicle = state.vehicle
    trip = vehicle.trip if vehicle is not None else None
    asked = isinstance(trip, TapOut) and trip.asked == event.trip_id
    if vehicle is None or vehicle.committed or not isinstance(trip, TapOut) or not asked:
        # Stale, or an attendant opened for the passenger meanwhile (a manual record).
        return state, [RoadEventIgnored(f"trip {event.trip_id}: not asked for now")]
    note = TripPricedNote(vehicle.vehicle_id, event.outcome, event.amount_minor, event.pass_id,
                          event.entry_plaza, False)  # fmt: skip
    if event.amount_minor is None or not state.accepting_payments:
        why = event.display[0] if event.amount_minor is None and event.display else "Not accepted"
        shown = ShowOnDisplay((why, ASSISTANCE), ttl_s=3.0)
        return replace(state, vehicle=None), [note, shown]
    vehicle, priced = road.take_price(vehicle, event, attendant=False, confirmed=True)
    by_payer = trip.code.kind == PayloadKind.PAYMENT_CODE and event.outcome == NO_TAP_IN
    if by_payer:
        vehicle = replace(vehicle, trip=replace(priced, by_payer=True))
    state, actions = paypoint.on_scanned(replace(state, vehicle=vehicle), trip.code, now)
    if any(isinstance(a, Authorise) for a in actions):
        # What the passenger is charged and why (`Same station exit`, `No tap-in` ...).
        actions = [a for a in actions if not isinstance(a, ShowOnDisplay)]
        actions.append(ShowOnDisplay((*event.display, PROCESSING)))
    if by_payer:
        again = PriceTrip(f"{trip.asked}/payer", vehicle.vehicle_id, vehicle.vehicle_class,
                          TripSource.CODE, trip.code.text, None, trip.code.kind)  # fmt: skip
        actions = [replace(a, reprice=again) if isinstance(a, Authorise) else a for a in actions]
    return state, [note, *actions]


def on_decided(state: LaneState, event: ev.Decided, now: float) -> Result:
    """The answer for the held code. A wallet code charged the maximum fare for want of a
    tap-in under its own reference comes back with its trip priced again by the payer the
    acquirer named (`repriced`): the record keeps that trip's fare, never more than was
    charged, and the rest is refunded once the record is durable (`Settle.refund_minor`)."""
    vehicle = state.vehicle
    trip = vehicle.trip if vehicle is not None else None
    attempt = vehicle.attempt if vehicle is not None else None
    mine = attempt is not None and attempt.auth_id == event.auth_id
    if (
        vehicle is not None
        and isinstance(trip, Priced)
        and trip.by_payer
        and mine
        and event.approved
        and event.repriced is not None
        and vehicle.amount_minor is not None
    ):
        kept = kept_fare(trip, vehicle.amount_minor, event.repriced)
        vehicle = replace(vehicle, trip=kept, amount_minor=kept.amount_minor)
        state = replace(state, vehicle=vehicle)
    return paypoint.on_decided(state, event, now)


def refund_of(charged: int, repriced: ev.TripPriced) -> int:
    """What a wallet code charged `charged` is owed back once its payer's trip is priced: the
    charge above that trip's fare (none when the trip cannot be priced). The shell writes it
    with the charged payment before the record (lane.runner), the core settles it (`kept_fare`):
    one rule for both."""
    fare = repriced.amount_minor
    if not repriced.found or fare is None:
        return 0
    return charged - min(charged, fare)


def kept_fare(priced: Priced, charged: int, repriced: ev.TripPriced) -> Priced:
    """The fare kept of `charged` once the payer's trip is priced (`repriced`): that trip's
    fare, never above what was charged; the difference is the refund. A trip the gate cannot
    price by the payer (`unpriced`: a configuration fault, or the shell's lookup failed) keeps
    the charge as it stands."""
    if not repriced.found or repriced.amount_minor is None:
        return replace(priced, by_payer=False)
    refund = refund_of(charged, repriced)
    kept = charged - refund
    money = (f"{FLAG_CHARGED}{charged}", f"{FLAG_REFUNDED}{refund}") if refund else ()
    return Priced(priced.trip_id, repriced.outcome, kept, priced.currency, repriced.entry_plaza,
                  repriced.pass_id, repriced.pass_exp, (*repriced.flags, *money), attendant=False,
                  confirmed=True, display=repriced.display, refund_minor=refund)  # fmt: skip


@dataclass(frozen=True)
class ExitShare:
    """What a tap-out charges of its trip (`exit_share`), and the record's flags saying why."""

    amount_minor: int
    flags: tuple[str, ...]


def exit_share(fare_minor: int, currency: str, entry_minor: int, entry_currency: str) -> ExitShare:
    """The part of the trip's fare the exit charges once its open tap-in charged `entry_minor`:
    the rest, so the rider pays the trip's fare in all. Never below 0: an exit cannot pay back
    the entry gate's payment, so a tap-in that charged more than the trip keeps it, flagged
    (`entry_overpaid:`) for the back office. A tap-in paid in another currency (a gate
    configured apart from the line) is not taken off: the whole fare, flagged."""
    paid = max(entry_minor, 0)
    if paid == 0:
        return ExitShare(fare_minor, ())
    if entry_currency != currency:
        return ExitShare(fare_minor, (f"{FLAG_ENTRY_CURRENCY}{entry_currency}",))
    over = paid - fare_minor
    flags = (f"{FLAG_ENTRY_PAID}{paid}", *((f"{FLAG_ENTRY_OVERPAID}{over}",) if over > 0 else ()))
    return ExitShare(max(-over, 0), flags)
