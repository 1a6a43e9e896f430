"""The pay point: a vehicle arrives and is priced, shows codes, is authorised or refused, and its
record is written. Part of the pure lane core (see lane.core.machine, which dispatches to these
handlers and drives the barrier once a record is durable).
"""

from __future__ import annotations

from dataclasses import replace

from lane.core import events as ev
from lane.core import reread
from lane.core.actions import (
    Abandon,
    Action,
    Authorise,
    ClearAlarm,
    Persist,
    RaiseAlarm,
    Settle,
    ShowOnDisplay,
)
from lane.core.alarms import DISK_CAUSES, add_fault
from lane.core.display import ASSISTANCE, LANE_CLOSED, class_waits, not_accepted
from lane.core.names import PAYABLE_KINDS, Alarm, AuthResult, Method, PayloadKind, PersistError
from lane.core.notes import (
    AttendantOpenFailed,
    CodeRefused,
    Declined,
    DuplicateDecision,
    LateDecision,
    ScanIgnored,
    ScanRefused,
    ScanWithoutVehicle,
    VehicleArrived,
)
from lane.core.records import AuthInfo, RecordDraft, credential_of
from lane.core.state import (
    COMMITTED_MEMORY,
    RECORD_KINDS,
    Attempt,
    Authorising,
    Committed,
    LaneMode,
    LaneState,
    Paying,
    Tap,
    Vehicle,
)
from lane.core.trip import AwaitingEntry, Priced, Ticket

Result = tuple[LaneState, list[Action]]
METHODS = frozenset(Method)
# A vehicle that spent its tries: it waits for an attendant.
TRIES_SPENT = ShowOnDisplay(("Payment refused", ASSISTANCE))


def arrive(state: LaneState, vehicle_id: str, implicit: bool) -> Result:
    rules = state.rules
    vehicle_class = state.next_class if state.next_class is not None else rules.default_class
    fare = rules.fares.fare_for(vehicle_class)
    amount, currency = fare if fare is not None else (None, "")
    vehicle = Vehicle(vehicle_id, vehicle_class, amount, currency, implicit=implicit)
    actions: list[Action] = [VehicleArrived(vehicle_id, vehicle_class, implicit)]
    if not implicit:
        actions.append(fare_display(vehicle, state))
        actions += no_fare_alarm(vehicle)
    return replace(state, vehicle=vehicle, next_class=None), actions


def on_classified(state: LaneState, event: ev.VehicleClassified, now: float) -> Result:
    vehicle = state.vehicle
    if vehicle is None or vehicle.attempt is not None or vehicle.approved is not None:
        return replace(state, next_class=event.vehicle_class), []
    if vehicle.record_id is not None:
        return state, []
    fare = state.rules.fares.fare_for(event.vehicle_class)
    amount, currency = fare if fare is not None else (None, "")
    had_no_fare = vehicle.amount_minor is None and not vehicle.implicit
    vehicle = replace(
        vehicle, vehicle_class=event.vehicle_class, amount_minor=amount, currency=currency
    )
    actions: list[Action] = [fare_display(vehicle, state), *no_fare_alarm(vehicle)]
    if had_no_fare and amount is not None and vehicle.tries < state.rules.max_tries:
        actions.append(ClearAlarm(Alarm.ATTENDANT_NEEDED))  # the class was corrected: pay as usual
    return replace(state, vehicle=vehicle), actions


def on_scanned(state: LaneState, event: ev.Scanned, now: float) -> Result:
    if not state.accepting_payments:
        why = state.closed_reason or ", ".join(sorted(state.faults))
        return state, [
            LANE_CLOSED,
            ScanRefused(why),
        ]
    actions: list[Action] = []
    if state.vehicle is None:
        if not state.rules.mode.fare_gate:
            return state, [ScanWithoutVehicle(event.kind)]
        state, actions = arrive(state, event.event_id, implicit=True)
    vehicle = state.vehicle
    assert vehicle is not None
    if vehicle.attempt is not None or vehicle.committed:
        return state, actions  # one payment at a time; the driver's later codes are ignored
    if vehicle.tries >= state.rules.max_tries:
        # Tries are bounded: this vehicle now waits for an attendant.
        return state, [
            *actions,
            TRIES_SPENT,
            ScanIgnored(vehicle.vehicle_id, "max_tries"),
        ]
    if event.text in vehicle.refused_texts:
        return state, actions
    if event.kind not in PAYABLE_KINDS:
        reason = event.reason or (
            "unreadable code"
            if event.kind == PayloadKind.UNKNOWN
            else f"unsupported code: {event.kind}"
        )
        return refuse(state, vehicle, event.text, reason, actions)
    if reread.copied(state, event, now):
        # The code a passenger went through this gate with, shown by someone else: a fraud
        # attempt, on record; the network would only say the same.
        return decline_here(state, vehicle, event, reread.ALREADY_USED, actions)
    if vehicle.amount_minor is None:
        reason = f"no fare for class {vehicle.vehicle_class}"
        if vehicle.implicit:
            return refuse(state, vehicle, event.text, reason, actions)
        # Not the driver's fault: the code is neither spent nor refused, the attendant (already
        # called on arrival) or a corrected class reading decides.
        return state, [
            *actions,
            class_waits(vehicle.vehicle_class),
            ScanIgnored(vehicle.vehicle_id, reason),
        ]
    tries = vehicle.tries + 1
    auth_id = f"{vehicle.vehicle_id}/a{tries}"
    deadline = now + state.rules.budget_s
    attempt = Attempt(auth_id, event.text, event.kind, event.frame_ts, deadline)
    vehicle = replace(vehicle, tries=tries, stage=Authorising(attempt))
    actions += [
        Authorise(
            auth_id,
            vehicle.vehicle_id,
            event.text,
            event.kind,
            vehicle.amount_minor or 0,
            vehicle.currency,
            deadline,
        ),
        ShowOnDisplay(("Processing payment", money(vehicle))),
    ]
    return replace(state, vehicle=vehicle), actions


def refuse(
    state: LaneState, vehicle: Vehicle, text: str, reason: str, actions: list[Action]
) -> Result:
    vehicle = replace(
        vehicle, tries=vehicle.tries + 1, refused_texts=vehicle.refused_texts | {text}
    )
    actions = [*actions, CodeRefused(vehicle.vehicle_id, reason)]
    return after_decline(state, vehicle, reason, actions)


def decline_here(
    state: LaneState, vehicle: Vehicle, event: ev.Scanned, reason: str, actions: list[Action]
) -> Result:
    """The lane declines the code itself, as the network would: a try spent, a declined record
    under the try's id, the display; nothing is sent."""
    tries = vehicle.tries + 1
    vehicle = replace(vehicle, tries=tries)
    decided = ev.Decided(f"{vehicle.vehicle_id}/a{tries}", False, reason, str(event.kind))
    return record_decline(state, vehicle, event.text, decided, actions)


def after_decline(state: LaneState, vehicle: Vehicle, reason: str, actions: list[Action]) -> Result:
    if vehicle.implicit:
        actions.append(not_accepted(reason))
        return replace(state, vehicle=None), actions
    if vehicle.tries >= state.rules.max_tries:
        actions += [
            ShowOnDisplay(("Payment refused", reason, ASSISTANCE)),
            RaiseAlarm(Alarm.ATTENDANT_NEEDED, f"vehicle {vehicle.vehicle_id}: {reason}"),
        ]
    else:
        left = state.rules.max_tries - vehicle.tries
        actions.append(
            ShowOnDisplay(("Payment refused", reason, f"Try another code ({left} left)"))
        )
    return replace(state, vehicle=vehicle), actions


def on_decided(state: LaneState, event: ev.Decided, now: float) -> Result:
    vehicle = state.vehicle
    attempt = vehicle.attempt if vehicle is not None else None
    if event.auth_id in state.committed:
        # A redelivered answer for a payment the lane accepted: it is (being) settled.
        return state, [DuplicateDecision(event.auth_id)]
    if vehicle is None or attempt is None or attempt.auth_id != event.auth_id:
        # The lane already gave up on this authorisation: nothing may stay charged.
        late: list[Action] = [LateDecision(event.auth_id)]
        if event.approved:
            late.insert(0, Abandon(event.auth_id, "late"))
        return state, late
    vehicle = replace(vehicle, stage=Paying())
    if event.method not in METHODS:
        # The record schema rejects unknown methods: record the kind of code the lane sent,
        # and keep what the authoriser said as a flag.
        # Every payable kind is also a method (the attempt exists only for a payable kind).
        method = Method(str(attempt.kind))
        event = replace(event, method=method, flags=(*event.flags, f"method:{event.method}"))
    if event.approved and state.rules.mode is LaneMode.TRANSIT_ENTRY:
        recent = recent_taps(state, now)
        if any(tap.account_ref == event.account_ref for tap in recent):
            state = replace(state, taps=recent)
            declined = replace(event, approved=False, reason="passback")
            abandon = Abandon(event.auth_id, "passback")
            return record_decline(state, vehicle, attempt.text, declined, [abandon])
    if not event.approved:
        return record_decline(state, vehicle, attempt.text, event, [])
    if not state.accepting_payments:
        why = ", ".join(sorted(state.faults)) or "lane closed"
        vehicle = replace(vehicle, tries=state.rules.max_tries)
        return after_decline(state, vehicle, why, [Abandon(event.auth_id, why)])
    result = AuthResult.DEFERRED if "deferred" in event.flags else AuthResult.APPROVED
    draft = record_draft(state, vehicle, event, result)
    owes = credential_of(attempt.text)
    stage = Committed(event.auth_id, event, attempt.frame_ts, credential=owes)
    vehicle = replace(vehicle, stage=stage)
    state = commit(state, event.auth_id)
    # Owed a passage from its commit on, over a restart too (lane.core.carried), with the pass
    # its refund would release.
    persist = Persist(event.auth_id, draft, owes=owes, owed_pass=vehicle.marked_pass)
    return replace(state, vehicle=vehicle), [persist]


def record_decline(
    state: LaneState, vehicle: Vehicle, text: str, event: ev.Decided, actions: list[Action]
) -> Result:
    # A declined code stays declined: the camera keeps reading the same phone screen, and it
    # must not spend the driver's remaining tries.
    vehicle = replace(vehicle, refused_texts=vehicle.refused_texts | {text})
    draft = record_draft(state, vehicle, event, AuthResult.DECLINED)
    actions = [
        *actions,
        Persist(event.auth_id, draft),
        Declined(vehicle.vehicle_id, event.reason),
    ]
    assert vehicle.attempt is None
    return after_decline(state, vehicle, event.reason, actions)


def record_draft(
    state: LaneState, vehicle: Vehicle, event: ev.Decided, result: AuthResult
) -> RecordDraft:
    mode = state.rules.mode
    kind = RECORD_KINDS[mode]
    flags = tuple(event.flags) + ((event.reason,) if result == AuthResult.DECLINED else ())
    trip = vehicle.trip
    if isinstance(trip, Priced):
        # An exit: the trip rules' flags first, then the payment's.
        flags = (*trip.flags, *flags)
    return RecordDraft(
        kind=kind,
        vehicle_id=vehicle.vehicle_id,
        vehicle_class=vehicle.vehicle_class,
        amount_minor=vehicle.amount_minor or 0,
        currency=vehicle.currency,
        method=Method(event.method),
        account_ref=event.account_ref,
        auth=AuthInfo(
            result=result,
            acquirer_ref=event.acquirer_ref,
            latency_ms=event.latency_ms,
            offline=event.offline,
        ),
        payment_id=event.payment_id,
        flags=flags,
        entry_plaza=trip.entry_plaza if isinstance(trip, Priced) else None,
        pass_id=trip.pass_id if isinstance(trip, Priced) else None,
        plate=vehicle.plate,
    )


def recent_taps(state: LaneState, now: float) -> tuple[Tap, ...]:
    window = state.rules.passback_window_s
    return tuple(tap for tap in state.taps if now - tap.at < window)


def on_persisted(state: LaneState, event: ev.Persisted, now: float) -> Result:
    vehicle = state.vehicle
    stage = vehicle.stage if vehicle is not None else None
    if (
        vehicle is None
        or not isinstance(stage, Committed)
        or stage.record_id is not None
        or stage.persist_id != event.persist_id
    ):
        return state, []  # a duplicate or stale answer: the record it names is settled already
    vehicle = replace(vehicle, stage=replace(stage, record_id=event.record_id, durable_at=now))
    approved = vehicle.approved
    if approved is None:
        return replace(state, vehicle=vehicle), []
    if state.rules.mode is LaneMode.TRANSIT_ENTRY and approved.account_ref is not None:
        # The tap-in counts for anti-passback once it is on record, not before: a record that
        # failed charged nothing and must not lock the passenger out.
        tap = Tap(approved.account_ref, now, event.record_id)
        state = replace(state, taps=(*recent_taps(state, now), tap))
    trip = vehicle.trip
    refund = trip.refund_minor if isinstance(trip, Priced) else 0
    return replace(state, vehicle=vehicle), [Settle(event.persist_id, refund)]


def on_persist_failed(state: LaneState, event: ev.PersistFailed, now: float) -> Result:
    full = event.reason == PersistError.QUEUE_FULL
    fault = Alarm.QUEUE_FULL if full else Alarm.DISK_ERROR
    state, actions = add_fault(state, fault, DISK_CAUSES.get(event.reason, ""))
    vehicle = state.vehicle
    if vehicle is None or vehicle.pending_persist != event.persist_id:
        return state, actions  # not the record the lane waits for: never undo a durable one
    committed = tuple(c for c in state.committed if c != event.persist_id)
    state = replace(state, committed=committed)
    if vehicle.approved is not None:
        actions.insert(0, Abandon(event.persist_id, "record_failed"))
        actions.append(ShowOnDisplay(("Payment cancelled", "Lane closed")))
        if vehicle.implicit:
            return replace(state, vehicle=None), actions  # no loop will ever clear a passenger
        vehicle = replace(vehicle, stage=Paying(), tries=state.rules.max_tries)
        return replace(state, vehicle=vehicle), actions
    stage = vehicle.stage
    if isinstance(stage, Committed) and stage.entry:
        # An entry without its record does not open; its ticket is out: the attendant opens.
        return replace(state, vehicle=replace(vehicle, stage=Paying())), actions
    # An attendant open without a record does not open: the attendant may try again.
    actions.append(AttendantOpenFailed(event.persist_id))
    if vehicle.implicit or vehicle.vehicle_id == vehicle.manual:
        return replace(state, vehicle=None), actions  # nobody a loop could clear
    return replace(state, vehicle=replace(vehicle, stage=Paying())), actions


def commit(state: LaneState, persist_id: str) -> LaneState:
    return replace(state, committed=(*state.committed, persist_id)[-COMMITTED_MEMORY:])


def let_go(state: LaneState, vehicle: Vehicle, reason: str) -> list[Action]:
    """The lane stops serving this (uncommitted) vehicle: give up its payment in flight, and
    the attendant it was waiting for is no longer needed."""
    actions: list[Action] = []
    if vehicle.attempt is not None:
        actions.append(Abandon(vehicle.attempt.auth_id, reason))
    if (
        vehicle.tries >= state.rules.max_tries
        or waits_for_a_fare(vehicle)
        or waits_for_attendant(vehicle)
    ):
        actions.append(ClearAlarm(Alarm.ATTENDANT_NEEDED))
    return actions


def waits_for_attendant(vehicle: Vehicle) -> bool:
    """A closed road's vehicle the attendant was called for: a suspect fare to confirm, or an
    entry that no pass could be signed for."""
    trip = vehicle.trip
    if isinstance(trip, Priced):
        return trip.waits_for_attendant
    return isinstance(trip, Ticket) and trip.pass_id is None and trip.printer_error is not None


def waits_for_a_fare(vehicle: Vehicle) -> bool:
    # An exit lane's vehicle whose trip is not priced yet waits for its pass, not a fare.
    pricing = isinstance(vehicle.trip, AwaitingEntry)
    return (
        vehicle.amount_minor is None
        and not vehicle.implicit
        and vehicle.manual is None
        and not pricing
    )


def no_fare_alarm(vehicle: Vehicle) -> list[Action]:
    if not waits_for_a_fare(vehicle):
        return []
    message = f"vehicle {vehicle.vehicle_id}: no fare for class {vehicle.vehicle_class}"
    return [RaiseAlarm(Alarm.ATTENDANT_NEEDED, message)]


def fare_display(vehicle: Vehicle, state: LaneState) -> ShowOnDisplay:
    if not state.accepting_payments:
        return LANE_CLOSED
    if vehicle.amount_minor is None:
        return class_waits(vehicle.vehicle_class)
    return ShowOnDisplay((f"Class {vehicle.vehicle_class}", money(vehicle), "Show your QR code"))


def money(vehicle: Vehicle) -> str:
    amount = vehicle.amount_minor or 0
    return f"{amount // 100}.{amount % 100:02d} {vehicle.currency}"
