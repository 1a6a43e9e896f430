"""A closed road's lanes in the pure core: `toll-entry` and `toll-exit` (docs/closed-road.md).

toll-entry: every vehicle that arrives gets a pass (`IssuePass`: the shell signs it with the
plaza's pass key, prints it as a QR ticket, binds it to the plate read), and once the ticket is
printed, or the pass is bound to a plate when the printer cannot print, the `entry` record is
written and the barrier opens like for a payment (rule 1 holds: the record is durable first).
No code is taken. Without a printed ticket and without a plate the vehicle waits (the display
says why, the shell's printer alarm says what): it would have no way to prove its entry.

toll-exit: the lane first wants the trip's entry: the pass QR (a scan of kind `entry_pass`),
the open entry of the plate the ANPR read, or the attendant's `no_pass` (lost pass). It asks
the shell to price it (`PriceTrip` -> `TripPriced`: pass verified offline, used-pass store
asked, lane.auth.trip_rules.decide_fare), shows the fare and then takes the payment code as a
toll lane does, at that fare. A suspect fare (the rules' `attendant`) waits for the attendant's
`confirm_fare` first when `rules.attendant_confirms`. The `exit` record carries the pass id,
plate, entry plaza and the rules' flags; once it is durable the pass is marked used
(`MarkPassUsed`), so it never exits twice.
"""

from __future__ import annotations

from dataclasses import replace

from lane.core import events as ev
from lane.core import paypoint
from lane.core.actions import (
    Action,
    ClearAlarm,
    IssuePass,
    MarkPassUsed,
    Persist,
    PriceTrip,
    RaiseAlarm,
    ShowOnDisplay,
)
from lane.core.alarms import clear_notice, tell_notice
from lane.core.display import ASSISTANCE, LANE_CLOSED, class_waits
from lane.core.names import Alarm, AuthResult, Method, PayloadKind, RecordKind, TripSource
from lane.core.notes import (
    FareConfirmed,
    PassIssued,
    RoadEventIgnored,
    ScanIgnored,
    TripPricedNote,
    VehicleArrived,
)
from lane.core.records import AuthInfo, RecordDraft
from lane.core.state import Committed, LaneMode, LaneState, Vehicle
from lane.core.trip import AwaitingEntry, Priced, Ticket

Result = tuple[LaneState, list[Action]]

SHOW_PASS = "Show your entry pass"
SHOW_PASS_FIRST = ShowOnDisplay((f"{SHOW_PASS} first",), ttl_s=3.0)
SHOW_PAYMENT = "Show your payment code"
ATTENDANT_COMING = "Attendant coming"
TAKE_TICKET = ShowOnDisplay(("Please take your ticket",))
PRINTER_FAULT = ShowOnDisplay(("Ticket printer fault", ASSISTANCE))
NO_TICKET = "no_ticket"  # entry record flag: opened on the plate binding, no ticket printed


def road_mode(state: LaneState) -> bool:
    return state.rules.mode in (LaneMode.TOLL_ENTRY, LaneMode.TOLL_EXIT)


def arrive(state: LaneState, vehicle_id: str, now: float) -> Result:
    """A vehicle on the entry loop of an entry or exit lane."""
    rules = state.rules
    vehicle_class = state.next_class if state.next_class is not None else rules.default_class
    plate = state.next_plate
    state = replace(state, next_class=None, next_plate=None)
    if rules.mode is LaneMode.TOLL_ENTRY:
        wait = now + rules.plate_wait_s if rules.plate_wait_s > 0 else None
        ticket = Ticket(f"{vehicle_id}/pass", wait_until=wait)
        vehicle = Vehicle(vehicle_id, vehicle_class, 0, "", plate=plate, trip=ticket)
        actions: list[Action] = [
            VehicleArrived(vehicle_id, vehicle_class, False),
            TAKE_TICKET if state.accepting_payments else LANE_CLOSED,
        ]
        return replace(state, vehicle=vehicle), actions  # `after_step` asks for the pass
    vehicle = Vehicle(vehicle_id, vehicle_class, None, "", plate=plate, trip=AwaitingEntry())
    state = replace(state, vehicle=vehicle)
    actions = [VehicleArrived(vehicle_id, vehicle_class, False), _ask_pass(state)]
    if plate is not None and state.accepting_payments:
        state, more = _price(state, vehicle, TripSource.PLATE, None)
        actions += more
    return state, actions


def shown(state: LaneState, vehicle: Vehicle) -> ShowOnDisplay | None:
    """What the pay point shows this vehicle (no payment on its way) while the lane is open."""
    trip = vehicle.trip
    if isinstance(trip, Ticket):
        return PRINTER_FAULT if trip.printer_error and not trip.printed else TAKE_TICKET
    if isinstance(trip, AwaitingEntry):
        return _ask_pass(state)
    if isinstance(trip, Priced):
        return fare_display(trip)
    return None


def _ask_pass(state: LaneState) -> ShowOnDisplay:
    vehicle = state.vehicle
    if not state.accepting_payments or vehicle is None:
        return LANE_CLOSED
    return ShowOnDisplay((f"Class {vehicle.vehicle_class}", SHOW_PASS))


def _price(state: LaneState, vehicle: Vehicle, source: TripSource, text: str | None) -> Result:
    trip = vehicle.trip
    assert isinstance(trip, AwaitingEntry)
    trip_id = f"{vehicle.vehicle_id}/trip{trip.asks + 1}"
    asked = AwaitingEntry(trip_id, trip.asks + 1, trip.plate_tried, lost=source is TripSource.LOST)
    vehicle = replace(vehicle, trip=asked)
    action = PriceTrip(trip_id, vehicle.vehicle_id, vehicle.vehicle_class, source, text,
                       vehicle.plate)  # fmt: skip
    return replace(state, vehicle=vehicle), [action]


def fare_display(trip: Priced) -> ShowOnDisplay:
    """The trip's lines (headline, fare, class), then what the driver does next."""
    last = ATTENDANT_COMING if trip.waits_for_attendant else SHOW_PAYMENT
    return ShowOnDisplay((*trip.display, last))


def _open_vehicle(state: LaneState) -> Vehicle | None:
    """The vehicle at the pay point that no record or payment is on its way for."""
    vehicle = state.vehicle
    if vehicle is None or vehicle.committed or vehicle.attempt is not None or vehicle.implicit:
        return None
    return vehicle


def waits_for_ticket(state: LaneState, issue_id: str) -> bool:
    """Entry lane: the vehicle of `issue_id` is at the pay point, its ticket not printed and
    no record on its way (the shell keeps sending the print job while this holds)."""
    vehicle = _open_vehicle(state)
    trip = vehicle.trip if vehicle is not None else None
    return isinstance(trip, Ticket) and trip.issue_id == issue_id and not trip.printed


# --- events --------------------------------------------------------------------------------


def on_classified(state: LaneState, event: ev.VehicleClassified, now: float) -> Result:
    """Before pricing, the exit's class; an entry pass is signed on arrival, so a later
    reading is the next vehicle's (as is one with nobody at the pay point)."""
    vehicle = _open_vehicle(state)
    if vehicle is not None and isinstance(vehicle.trip, AwaitingEntry):
        return replace(state, vehicle=replace(vehicle, vehicle_class=event.vehicle_class)), []
    if vehicle is None or isinstance(vehicle.trip, Ticket):
        return replace(state, next_class=event.vehicle_class), []
    return state, [RoadEventIgnored(f"class {event.vehicle_class} after the trip was priced")]


def on_plate(state: LaneState, event: ev.PlateRead, now: float) -> Result:
    vehicle = _open_vehicle(state)
    if vehicle is None:
        return replace(state, next_plate=event.plate), []
    trip = vehicle.trip
    if isinstance(trip, Ticket) and not trip.asked and vehicle.plate is None:
        return replace(state, vehicle=replace(vehicle, plate=event.plate)), []  # on its pass
    if not isinstance(trip, AwaitingEntry) or vehicle.plate is not None:
        return state, [RoadEventIgnored(f"plate {event.plate}: {vehicle.vehicle_id} has one")]
    vehicle = replace(vehicle, plate=event.plate)
    state = replace(state, vehicle=vehicle)
    if trip.asked is not None or trip.plate_tried or not state.accepting_payments:
        return state, []
    return _price(state, vehicle, TripSource.PLATE, None)


def entry_camera(state: LaneState) -> bool:
    """An entry lane takes no codes (it prints its passes): its camera is not what lets
    vehicles in, so a camera that reads none closes nothing there."""
    return state.rules.mode is LaneMode.TOLL_ENTRY


# What a dark camera leaves an entry lane, before the cause: first, so a long cause cut short
# on the console (256 characters) never hides that the lane works.
ENTRY_CAMERA_DARK = (
    "camera reads no codes (this entry lane takes none and still issues tickets;"
    " plates come from its plate reader, not this camera)"
)


def on_entry_camera(state: LaneState, event: ev.CameraSees) -> Result:
    """`camera_blackout` at an entry lane: the alarm tells it (an operator still fixes the
    camera), the lane goes on issuing passes."""
    if event.seeing:
        return clear_notice(state, Alarm.CAMERA_BLACKOUT)
    # Told again whenever its cause changes (the shell says it once per change).
    text = f"{ENTRY_CAMERA_DARK}: {event.detail}" if event.detail else ENTRY_CAMERA_DARK
    return tell_notice(state, Alarm.CAMERA_BLACKOUT, text)


def on_scanned(state: LaneState, event: ev.Scanned, now: float) -> Result:
    vehicle = _open_vehicle(state)
    if state.rules.mode is LaneMode.TOLL_ENTRY:
        if vehicle is None:
            return state, []
        return state, [ScanIgnored(vehicle.vehicle_id, "an entry lane takes no codes")]
    if vehicle is None or not state.accepting_payments:
        return paypoint.on_scanned(state, event, now)  # refused, or ignored, as at a toll lane
    trip = vehicle.trip
    if event.kind == PayloadKind.ENTRY_PASS:
        if isinstance(trip, AwaitingEntry) and trip.asked is None:
            return _price(state, vehicle, TripSource.PASS, event.text)
        return state, [ScanIgnored(vehicle.vehicle_id, "entry pass already read")]
    if isinstance(trip, AwaitingEntry):
        return state, [SHOW_PASS_FIRST, ScanIgnored(vehicle.vehicle_id, "entry pass first")]
    if isinstance(trip, Priced) and trip.waits_for_attendant:
        return state, [
            fare_display(trip),
            ScanIgnored(vehicle.vehicle_id, "fare waits for the attendant"),
        ]
    return paypoint.on_scanned(state, event, now)


def on_ticket(state: LaneState, event: ev.TicketIssued, now: float) -> Result:
    vehicle = _open_vehicle(state)
    trip = vehicle.trip if vehicle is not None else None
    asked = isinstance(trip, Ticket) and trip.asked and trip.issue_id == event.issue_id
    if vehicle is None or not isinstance(trip, Ticket) or not asked:
        return state, [RoadEventIgnored(f"ticket {event.issue_id}: not the vehicle present")]
    if event.pass_id is None:
        # No pass could be signed (no usable plaza key): nothing proves this entry.
        trip = replace(trip, pass_id=None, printer_error=event.error or "no pass signed")
        state = replace(state, vehicle=replace(vehicle, trip=trip))
        why = f"vehicle {vehicle.vehicle_id}: no pass: {event.error}"
        return state, [PRINTER_FAULT, RaiseAlarm(Alarm.ATTENDANT_NEEDED, why)]
    called = paypoint.waits_for_attendant(vehicle)
    error = None if event.printed else event.error
    trip = replace(trip, pass_id=event.pass_id, printed=event.printed, printer_error=error)
    vehicle = replace(vehicle, trip=trip)
    actions: list[Action] = [ClearAlarm(Alarm.ATTENDANT_NEEDED)] if called else []
    if not event.printed and vehicle.plate is None:
        actions.append(PRINTER_FAULT)
    return replace(state, vehicle=vehicle), actions  # `after_step` writes the entry


def after_step(state: LaneState, now: float) -> Result:
    """Entry lane, after every event: ask for the vehicle's pass once it is due (a plate read,
    or its wait over), and write its entry record once the ticket is printed or the pass bound
    to a plate; neither while the lane takes no vehicles (closed, faulted): they happen in the
    step that ends that."""
    vehicle = _open_vehicle(state)
    trip = vehicle.trip if vehicle is not None else None
    if vehicle is None or not isinstance(trip, Ticket) or not state.accepting_payments:
        return state, []
    if not trip.asked:
        due = vehicle.plate is not None or trip.wait_until is None or now >= trip.wait_until
        if not due:
            return state, []
        vehicle = replace(vehicle, trip=replace(trip, asked=True, wait_until=None))
        ask = IssuePass(trip.issue_id, vehicle.vehicle_id, vehicle.vehicle_class, vehicle.plate)
        return replace(state, vehicle=vehicle), [ask]
    if trip.pass_id is None or not (trip.printed or vehicle.plate is not None):
        return state, []
    draft = RecordDraft(
        kind=RecordKind.ENTRY,
        vehicle_id=vehicle.vehicle_id,
        vehicle_class=vehicle.vehicle_class,
        amount_minor=0,
        currency="",
        method=Method.NONE,
        account_ref=None,
        auth=AuthInfo(result=AuthResult.NONE),
        entry_plaza=state.rules.plaza,
        flags=() if trip.printed else (NO_TICKET,),
        pass_id=trip.pass_id,
        plate=vehicle.plate,
    )
    vehicle = replace(vehicle, stage=Committed(trip.issue_id, None, None, entry=True))
    state = replace(paypoint.commit(state, trip.issue_id), vehicle=vehicle)
    note = PassIssued(vehicle.vehicle_id, trip.pass_id, trip.printed, vehicle.plate)
    return state, [Persist(trip.issue_id, draft), note]


def deadline(state: LaneState) -> list[float]:
    """Entry lane: the pass of the vehicle waiting for its plate is asked for at this time."""
    vehicle = _open_vehicle(state)
    trip = vehicle.trip if vehicle is not None else None
    if not isinstance(trip, Ticket) or trip.asked or trip.wait_until is None:
        return []
    return [trip.wait_until] if state.accepting_payments else []


def on_priced(state: LaneState, event: ev.TripPriced, now: float) -> Result:
    vehicle = _open_vehicle(state)
    trip = vehicle.trip if vehicle is not None else None
    if vehicle is None or not isinstance(trip, AwaitingEntry) or trip.asked != event.trip_id:
        return state, [RoadEventIgnored(f"trip {event.trip_id}: not asked for now")]
    if not event.found:
        vehicle = replace(vehicle, trip=AwaitingEntry(None, trip.asks, plate_tried=True))
        state = replace(state, vehicle=vehicle)
        return state, [_ask_pass(state)]
    # The attendant who declared the pass lost confirmed its fare with it.
    confirmed = trip.lost or not state.rules.attendant_confirms
    vehicle, priced = take_price(vehicle, event, event.attendant, confirmed)
    note = TripPricedNote(vehicle.vehicle_id, event.outcome, event.amount_minor, event.pass_id,
                          event.entry_plaza, event.attendant)  # fmt: skip
    actions: list[Action] = [note]
    if event.amount_minor is None:
        message = (
            f"vehicle {vehicle.vehicle_id}: no fare at this exit for class {vehicle.vehicle_class}"
        )
        actions += [class_waits(vehicle.vehicle_class), RaiseAlarm(Alarm.ATTENDANT_NEEDED, message)]
    elif priced.waits_for_attendant:
        headline = event.display[0] if event.display else event.outcome
        actions += [
            fare_display(priced),
            RaiseAlarm(Alarm.ATTENDANT_NEEDED, f"vehicle {vehicle.vehicle_id}: {headline}"),
        ]
    else:
        actions.append(fare_display(priced))
    return replace(state, vehicle=vehicle), actions


def take_price(
    vehicle: Vehicle, event: ev.TripPriced, attendant: bool, confirmed: bool
) -> tuple[Vehicle, Priced]:
    """The vehicle with its trip priced as the shell answered: its fare is the trip's."""
    priced = Priced(event.trip_id, event.outcome, event.amount_minor, event.currency,
                    event.entry_plaza, event.pass_id, event.pass_exp, event.flags,
                    attendant=attendant, confirmed=confirmed, display=event.display)  # fmt: skip
    vehicle = replace(
        vehicle,
        trip=priced,
        amount_minor=event.amount_minor,
        currency=event.currency,
        vehicle_class=event.charged_class or vehicle.vehicle_class,
    )
    return vehicle, priced


def on_no_pass(state: LaneState, event: ev.AttendantNoPass, now: float) -> Result:
    vehicle = _open_vehicle(state)
    if state.rules.mode is not LaneMode.TOLL_EXIT or vehicle is None:
        return state, [RoadEventIgnored("no_pass: no vehicle waiting at an exit lane")]
    trip = vehicle.trip
    if not isinstance(trip, AwaitingEntry):
        return state, [RoadEventIgnored(f"no_pass: the trip of {vehicle.vehicle_id} is priced")]
    # Whatever was asked before is stale now (its answer is ignored): the attendant decides.
    return _price(state, vehicle, TripSource.LOST, None)


def on_confirm(state: LaneState, event: ev.AttendantConfirmFare, now: float) -> Result:
    vehicle = _open_vehicle(state)
    trip = vehicle.trip if vehicle is not None else None
    if vehicle is None or not isinstance(trip, Priced) or not trip.waits_for_attendant:
        return state, [RoadEventIgnored("confirm_fare: no fare waits for the attendant")]
    vehicle = replace(vehicle, trip=replace(trip, confirmed=True))
    actions: list[Action] = [FareConfirmed(vehicle.vehicle_id, event.attendant)]
    if vehicle.tries < state.rules.max_tries:
        actions.append(ClearAlarm(Alarm.ATTENDANT_NEEDED))
    actions.append(fare_display(replace(trip, confirmed=True)))
    return replace(state, vehicle=vehicle), actions


def on_persisted(state: LaneState, event: ev.Persisted, now: float) -> Result:
    vehicle = state.vehicle
    trip = vehicle.trip if vehicle is not None else None
    state, actions = paypoint.on_persisted(state, event, now)
    if (
        vehicle is not None
        and isinstance(trip, Priced)
        and trip.pass_id is not None
        and vehicle.pending_persist == event.persist_id
        and vehicle.approved is not None
    ):
        expires = trip.pass_exp if trip.pass_exp is not None else 0.0
        actions.append(MarkPassUsed(trip.pass_id, expires, vehicle.plate, event.record_id))
    return state, actions
