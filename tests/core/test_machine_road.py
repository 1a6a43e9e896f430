"""A closed road's lanes: toll-entry issues a pass and opens for every vehicle; toll-exit wants
the pass (or the plate's entry, or the attendant's no_pass), prices the trip, then the payment."""

from __future__ import annotations

from typing import Any

import pytest
from core_kit import EventSource, LaneDriver, displayed, of_type, one, random_walk, rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_invariants import hypothesis_chooser
from test_recovery import world_answers

from lane.core import events as ev
from lane.core.actions import (
    Authorise,
    ClearAlarm,
    CloseBarrier,
    IssuePass,
    MarkPassUsed,
    OpenBarrier,
    Persist,
    PriceTrip,
    QueryDevice,
    RaiseAlarm,
    Settle,
    ShowOnDisplay,
)
from lane.core.machine import next_deadline
from lane.core.names import Alarm
from lane.core.notes import BarrierOpened, PassIssued, RoadEventIgnored, ScanIgnored, TripPricedNote
from lane.core.road import waits_for_ticket
from lane.core.state import LaneMode, Phase

ENTRY = rules(LaneMode.TOLL_ENTRY, lane_id="P01/e1")
EXIT = rules(LaneMode.TOLL_EXIT, lane_id="P03/x1")
PASS_ID = "0a0b0c0d0e0f10111213"
PASS_TEXT = "LP1:NCFOXN..."


# --- entry lane ----------------------------------------------------------------------------


def test_an_entry_lane_issues_a_pass_and_opens_once_the_ticket_is_printed() -> None:
    lane = LaneDriver(ENTRY)
    lane.feed(ev.VehicleClassified(2))
    lane.feed(ev.PlateRead("ZJA12345"))
    actions = lane.arrive("v1")
    assert one(actions, IssuePass) == IssuePass("v1/pass", "v1", 2, "ZJA12345")
    assert "Please take your ticket" in displayed(actions)
    assert not of_type(actions, Authorise)
    assert lane.phase() is Phase.VEHICLE_PRESENT
    actions = lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True))
    persist = one(actions, Persist)
    d = persist.draft
    assert (d.kind, d.amount_minor, d.method, d.auth.result) == ("entry", 0, "none", "none")
    assert (d.pass_id, d.plate, d.entry_plaza, d.vehicle_class, d.flags) == (
        PASS_ID, "ZJA12345", "P01", 2, ()
    )  # fmt: skip
    assert one(actions, PassIssued).printed
    assert lane.phase() is Phase.PERSISTING
    assert one(lane.persisted(), OpenBarrier).cmd_id == "v1/open"
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_no_ticket_and_no_plate_waits_until_the_printer_prints() -> None:
    lane = LaneDriver(ENTRY)
    lane.arrive("v1")
    actions = lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=False, error="paper_out"))
    assert not of_type(actions, Persist)
    assert displayed(actions) == ["Ticket printer fault", "Please wait for assistance"]
    assert lane.phase() is Phase.VEHICLE_PRESENT
    # Paper loaded: the shell sends the same job again and it prints.
    persist = one(lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True)), Persist)
    assert persist.draft.flags == ()
    assert of_type(lane.persisted(), OpenBarrier)


def test_the_shell_keeps_printing_exactly_while_the_vehicle_waits_for_its_ticket() -> None:
    lane = LaneDriver(ENTRY)
    lane.arrive("v1")
    assert waits_for_ticket(lane.state, "v1/pass")
    lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=False, error="paper_out"))
    assert waits_for_ticket(lane.state, "v1/pass") and not waits_for_ticket(lane.state, "v0/pass")
    lane.leave_pay_point()  # backed away: no ticket for it after this
    assert not waits_for_ticket(lane.state, "v1/pass")
    lane.arrive("v2")
    lane.feed(ev.TicketIssued("v2/pass", PASS_ID, printed=True))
    assert not waits_for_ticket(lane.state, "v2/pass")  # printed: its entry is on its way


def test_no_ticket_with_a_bound_plate_opens_with_the_flag_no_ticket() -> None:
    lane = LaneDriver(ENTRY)
    lane.feed(ev.PlateRead("ZJA12345"))
    lane.arrive("v1")
    actions = lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=False, error="paper_out"))
    persist = one(actions, Persist)
    assert (persist.draft.plate, persist.draft.flags) == ("ZJA12345", ("no_ticket",))
    assert not one(actions, PassIssued).printed
    assert of_type(lane.persisted(), OpenBarrier)


def test_an_entry_lane_takes_no_codes_and_ignores_stale_tickets() -> None:
    lane = LaneDriver(ENTRY)
    lane.arrive("v1")
    actions = lane.scan()
    assert one(actions, ScanIgnored).reason == "an entry lane takes no codes"
    assert not of_type(actions, Authorise)
    lane.leave_pay_point()
    actions = lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True))
    assert of_type(actions, RoadEventIgnored) and not of_type(actions, Persist)
    assert lane.phase() is Phase.IDLE


def test_no_pass_signed_calls_the_attendant_and_clears_when_the_vehicle_goes() -> None:
    lane = LaneDriver(ENTRY)
    lane.arrive("v1")
    actions = lane.feed(ev.TicketIssued("v1/pass", None, printed=False, error="no pass key"))
    assert one(actions, RaiseAlarm).code == "attendant_needed"
    assert one(lane.leave_pay_point(), ClearAlarm).code == "attendant_needed"


def test_a_plate_read_just_after_arrival_goes_on_the_pass() -> None:
    """An ANPR camera triggered by the entry loop: the pass waits `plate_wait_s` for it."""
    lane = LaneDriver(rules(LaneMode.TOLL_ENTRY, lane_id="P01/e1", plate_wait_s=0.5))
    actions = lane.arrive("v1")
    assert not of_type(actions, IssuePass)
    assert next_deadline(lane.state) == lane.now + 0.5
    ask = one(lane.feed(ev.PlateRead("ZJA12345"), dt=0.2), IssuePass)
    assert ask == IssuePass("v1/pass", "v1", 1, "ZJA12345")
    lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True))
    lane.persisted()
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    # No plate read in time: the pass is signed without one at the deadline.
    lane.arrive("v2")
    ask = one(lane.tick_at_deadline(), IssuePass)
    assert (ask.vehicle_id, ask.plate) == ("v2", None)
    assert of_type(lane.feed(ev.PlateRead("ZJB1")), RoadEventIgnored)  # too late for its pass


def test_an_entry_lane_that_takes_no_vehicles_issues_and_enters_nothing_until_it_does() -> None:
    lane = LaneDriver(ENTRY)
    lane.feed(ev.LinkChanged(up=False))
    actions = lane.arrive("v1")
    assert not of_type(actions, IssuePass) and "Lane closed" in displayed(actions)
    assert one(lane.feed(ev.LinkChanged(up=True)), IssuePass).issue_id == "v1/pass"
    # The queue fills while the ticket prints: no entry record until it has room again.
    lane.feed(ev.QueueChanged(full=True, high_water=True))
    assert not of_type(lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True)), Persist)
    assert lane.phase() is Phase.FAULT
    persist = one(lane.feed(ev.QueueChanged(full=False, high_water=False)), Persist)
    assert persist.draft.kind == "entry"
    assert of_type(lane.persisted(), OpenBarrier)


def test_an_entry_whose_record_failed_is_entered_again_once_the_disk_is_back() -> None:
    lane = LaneDriver(ENTRY)
    lane.arrive("v1")
    lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True))
    actions = lane.feed(ev.PersistFailed("v1/pass", "disk_error"))
    assert not of_type(actions, Persist) and lane.phase() is Phase.FAULT
    assert one(lane.feed(ev.QueueChanged(full=False, high_water=False)), Persist).persist_id == (
        "v1/pass"
    )
    assert of_type(lane.persisted(), OpenBarrier)


def entry_failed_at_a_closed_lane(lane: LaneDriver) -> None:
    """The lane is closed while v1's entry record is on its way (a vehicle with a record on
    the way stays), and the record fails: v1 holds its printed ticket at a closed lane."""
    lane.arrive("v1")
    lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True))
    lane.feed(ev.AttendantCloseLane("maintenance"))
    assert lane.phase() is Phase.PERSISTING
    lane.feed(ev.PersistFailed("v1/pass", "queue_full"))
    assert not of_type(lane.feed(ev.QueueChanged(full=False, high_water=False)), Persist)
    assert lane.phase() is Phase.VEHICLE_PRESENT  # closed: nobody is entered


def test_an_entry_whose_record_failed_at_a_closed_lane_is_entered_when_it_reopens() -> None:
    """Its ticket is out: the reopen is the step that writes its entry (no second pass), and
    the barrier opens once that record is durable (vehicle_present --reopen lane-->
    persisting, found by test_invariants)."""
    lane = LaneDriver(ENTRY)
    entry_failed_at_a_closed_lane(lane)
    actions = lane.feed(ev.AttendantReopenLane("done"))
    assert one(actions, Persist).persist_id == "v1/pass" and not of_type(actions, IssuePass)
    assert lane.phase() is Phase.PERSISTING
    assert one(lane.persisted(), OpenBarrier).cmd_id == "v1/open"


def faulted(lane: LaneDriver) -> None:
    """The device reports a fault: the lane takes no vehicles until it reports a working
    state. (A boom stuck open is no such fault: the lane goes on taking vehicles under it.)"""
    lane.report("fault")
    assert "barrier_fault" in lane.state.faults and not lane.state.accepting_payments


def test_a_ticket_printed_while_the_barrier_was_faulted_is_entered_when_it_works() -> None:
    """The fault clears with the device's report: that step writes the entry (not the next
    event, whatever it is: vehicle_present --safety off--> persisting is no transition)."""
    lane = LaneDriver(ENTRY)
    lane.arrive("v1")
    faulted(lane)
    assert not of_type(lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True)), Persist)
    assert one(lane.report("closed"), Persist).persist_id == "v1/pass"
    assert lane.phase() is Phase.PERSISTING
    assert of_type(lane.persisted(), OpenBarrier)


def test_a_plate_wait_over_while_the_barrier_was_faulted_asks_for_the_pass_when_it_works() -> None:
    """The wait ran out while the lane took no vehicles: the pass is asked for in the step the
    fault clears, not left as a deadline in the past (the driver's monitor checks that)."""
    lane = LaneDriver(rules(LaneMode.TOLL_ENTRY, lane_id="P01/e1", plate_wait_s=0.5))
    faulted(lane)
    assert not of_type(lane.arrive("v1"), IssuePass)
    assert one(lane.report("closed", dt=1.0), IssuePass).issue_id == "v1/pass"


def test_an_entry_lane_with_its_boom_stuck_open_goes_on_issuing_passes() -> None:
    """A boom stuck open is a notice, not a fault: the next vehicle gets its pass and entry."""
    lane = LaneDriver(ENTRY)
    lane.feed(ev.DeviceSnapshotted("open", (), "snap1"))  # up for nobody: closed ...
    lane.feed(ev.BarrierAcked("snap1/close", True, "open"))  # ... acked, and it stays up
    lane.tick_at_deadline()
    assert "barrier_stuck_open" in lane.state.notices and lane.state.accepting_payments
    assert one(lane.arrive("v1"), IssuePass).issue_id == "v1/pass"
    assert one(lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True)), Persist)
    assert "barrier_stuck_open" in lane.state.notices


# --- exit lane -----------------------------------------------------------------------------


def priced(trip_id: str, **kw: Any) -> ev.TripPriced:
    fields: dict[str, Any] = {
        "outcome": "charged",
        "amount_minor": 4000,
        "currency": "CNY",
        "charged_class": 1,
        "entry_plaza": "P01",
        "pass_id": PASS_ID,
        "pass_exp": 2_000_000.0,
        "flags": (),
        "attendant": False,
        "display": ("P01 to P03", "Fare CNY 40.00"),
    }
    fields.update(kw)
    return ev.TripPriced(trip_id, True, **fields)


def test_an_exit_lane_wants_the_pass_then_the_payment_at_the_trip_fare() -> None:
    lane = LaneDriver(EXIT)
    actions = lane.arrive("v1")
    assert displayed(actions) == ["Class 1", "Show your entry pass"]
    assert not of_type(actions, RaiseAlarm)  # waiting for a pass is not waiting for a fare
    # A payment code first: ignored, no try spent.
    actions = lane.scan()
    assert one(actions, ScanIgnored).reason == "entry pass first"
    assert not of_type(actions, Authorise)
    assert lane.state.vehicle is not None and lane.state.vehicle.tries == 0
    ask = one(lane.scan(PASS_TEXT, "entry_pass"), PriceTrip)
    assert (ask.trip_id, ask.source, ask.pass_text, ask.vehicle_class) == (
        "v1/trip1", "pass", PASS_TEXT, 1
    )  # fmt: skip
    actions = lane.feed(priced("v1/trip1"))
    assert displayed(actions) == ["P01 to P03", "Fare CNY 40.00", "Show your payment code"]
    assert one(actions, TripPricedNote).amount_minor == 4000
    auth = one(lane.scan(), Authorise)
    assert (auth.amount_minor, auth.currency) == (4000, "CNY")
    d = one(lane.decide(), Persist).draft
    assert (d.kind, d.amount_minor, d.pass_id, d.entry_plaza) == ("exit", 4000, PASS_ID, "P01")
    actions = lane.persisted()
    (record_id,) = [e.record_id for _, e, _ in lane.log if isinstance(e, ev.Persisted)][-1:]
    assert one(actions, MarkPassUsed) == MarkPassUsed(PASS_ID, 2_000_000.0, None, record_id)
    assert of_type(actions, Settle) and of_type(actions, OpenBarrier)


def test_a_plate_with_an_open_entry_prices_without_a_pass() -> None:
    lane = LaneDriver(EXIT)
    lane.feed(ev.PlateRead("ZJA12345"))
    ask = one(lane.arrive("v1"), PriceTrip)
    assert (ask.source, ask.plate, ask.pass_text) == ("plate", "ZJA12345", None)
    lane.feed(priced(ask.trip_id))
    d = one(lane.decide(auth_id=one(lane.scan(), Authorise).auth_id), Persist).draft
    assert d.plate == "ZJA12345"
    assert one(lane.persisted(), MarkPassUsed).plate == "ZJA12345"


def test_a_plate_without_an_open_entry_waits_for_the_pass() -> None:
    lane = LaneDriver(EXIT)
    lane.arrive("v1")
    ask = one(lane.feed(ev.PlateRead("ZJA12345")), PriceTrip)
    actions = lane.feed(ev.TripPriced(ask.trip_id, found=False))
    assert displayed(actions) == ["Class 1", "Show your entry pass"]
    second = one(lane.scan(PASS_TEXT, "entry_pass"), PriceTrip)
    assert (second.trip_id, second.source, second.plate) == ("v1/trip2", "pass", "ZJA12345")
    # The first answer again (a redelivery) is stale now.
    assert of_type(lane.feed(priced(ask.trip_id)), RoadEventIgnored)


SUSPECT = [
    ("pass_used", ("Entry pass already used", "Maximum fare CNY 80.00")),
    ("plate_mismatch", ("Plate differs from the pass", "Maximum fare CNY 80.00")),
    ("unknown_plaza_key", ("Pass from an unknown plaza key", "Maximum fare CNY 80.00")),
    ("pass_refused", ("Entry pass not valid: expired", "Maximum fare CNY 80.00")),
]


@pytest.mark.parametrize(("outcome", "lines"), SUSPECT)
def test_a_suspect_fare_waits_for_the_attendant(outcome: str, lines: tuple[str, ...]) -> None:
    lane = LaneDriver(EXIT)
    lane.arrive("v1")
    ask = one(lane.scan(PASS_TEXT, "entry_pass"), PriceTrip)
    trip = priced(ask.trip_id, outcome=outcome, amount_minor=8000, attendant=True, display=lines)
    actions = lane.feed(trip)
    assert displayed(actions) == [*lines, "Attendant coming"]
    assert one(actions, RaiseAlarm).code == "attendant_needed"
    actions = lane.scan()
    assert not of_type(actions, Authorise)
    assert one(actions, ScanIgnored).reason == "fare waits for the attendant"
    actions = lane.feed(ev.AttendantConfirmFare("c1", "op7"))
    assert one(actions, ClearAlarm).code == "attendant_needed"
    assert displayed(actions) == [*lines, "Show your payment code"]
    assert one(lane.scan("282222222222222222"), Authorise).amount_minor == 8000


def test_without_attendant_confirms_a_suspect_fare_is_charged_at_once() -> None:
    lane = LaneDriver(rules(LaneMode.TOLL_EXIT, lane_id="P03/x1", attendant_confirms=False))
    lane.arrive("v1")
    ask = one(lane.scan(PASS_TEXT, "entry_pass"), PriceTrip)
    actions = lane.feed(priced(ask.trip_id, outcome="pass_used", attendant=True))
    assert not of_type(actions, RaiseAlarm)
    assert one(lane.scan(), Authorise).amount_minor == 4000


def test_a_lost_pass_is_declared_by_the_attendant_and_needs_no_second_confirmation() -> None:
    lane = LaneDriver(EXIT)
    lane.arrive("v1")
    ask = one(lane.feed(ev.AttendantNoPass("c1", "op7")), PriceTrip)
    assert (ask.source, ask.pass_text) == ("lost", None)
    lines = ("No entry pass", "Maximum fare CNY 80.00")
    flags = ("no_pass", "attendant")
    trip = priced(ask.trip_id, outcome="no_pass", amount_minor=8000, attendant=True,
                  pass_id=None, entry_plaza=None, flags=flags, display=lines)  # fmt: skip
    actions = lane.feed(trip)
    assert not of_type(actions, RaiseAlarm)
    assert displayed(actions) == [*lines, "Show your payment code"]
    d = one(lane.decide(auth_id=one(lane.scan(), Authorise).auth_id), Persist).draft
    assert (d.kind, d.amount_minor, d.pass_id, d.flags[:2]) == (
        "exit",
        8000,
        None,
        ("no_pass", "attendant"),
    )
    assert not of_type(lane.persisted(), MarkPassUsed)  # no pass to mark


def test_an_exit_that_cannot_be_priced_calls_the_attendant() -> None:
    lane = LaneDriver(EXIT)
    lane.arrive("v1")
    ask = one(lane.scan(PASS_TEXT, "entry_pass"), PriceTrip)
    actions = lane.feed(priced(ask.trip_id, outcome="unpriced", amount_minor=None, display=()))
    assert one(actions, RaiseAlarm).code == "attendant_needed"
    assert not of_type(lane.scan(), Authorise)
    assert one(lane.leave_pay_point(), ClearAlarm).code == "attendant_needed"


def test_a_declined_exit_payment_does_not_spend_the_pass() -> None:
    lane = LaneDriver(EXIT)
    lane.arrive("v1")
    lane.feed(priced(one(lane.scan(PASS_TEXT, "entry_pass"), PriceTrip).trip_id))
    lane.scan()
    d = one(lane.decide(approved=False), Persist).draft
    assert (d.kind, d.auth.result, d.pass_id) == ("exit", "declined", PASS_ID)
    assert not of_type(lane.persisted(), MarkPassUsed)
    assert lane.phase() is Phase.DENIED


def test_a_second_pass_or_a_late_plate_does_not_reprice() -> None:
    lane = LaneDriver(EXIT)
    lane.arrive("v1")
    lane.scan(PASS_TEXT, "entry_pass")
    actions = lane.scan("LP1:another", "entry_pass")
    assert one(actions, ScanIgnored).reason == "entry pass already read"
    assert not of_type(lane.feed(ev.PlateRead("ZJA1")), PriceTrip)


def test_road_events_at_other_lanes_are_ignored() -> None:
    lane = LaneDriver(rules())
    lane.arrive("v1")
    assert lane.feed(ev.PlateRead("ZJA1")) == []
    assert of_type(lane.feed(ev.AttendantNoPass("c", "a")), RoadEventIgnored)
    assert of_type(lane.feed(ev.AttendantConfirmFare("c", "a")), RoadEventIgnored)
    # An entry pass at a toll lane is a code it does not take: refused with a reason.
    assert "unsupported code: entry_pass" in displayed(lane.scan(PASS_TEXT, "entry_pass"))


# --- properties: after anything, a road lane serves the next vehicle -----------------------


def serve(lane: LaneDriver, vehicle_id: str, budget: int = 80) -> int:
    """The world answers everything the lane asks for the next vehicle (a printed ticket; the
    pass shown when asked, a priced trip, the payment code when asked, an approved payment; a
    durable record, a barrier that moves): it must open for that vehicle. Returns the steps."""
    pending = list(lane.arrive(vehicle_id))
    for steps in range(budget):
        if any(o.vehicle_id == vehicle_id for o in of_type(lane.actions, BarrierOpened)):
            return steps
        action = pending.pop(0) if pending else None
        match action:
            case IssuePass():
                answer: ev.Event = ev.TicketIssued(action.issue_id, PASS_ID, printed=True)
            case PriceTrip():
                answer = priced(action.trip_id)
            case ShowOnDisplay(lines=lines) if "Show your entry pass" in lines:
                answer = ev.Scanned(PASS_TEXT, "entry_pass", None, lane.now, lane.fresh("s"))
            case ShowOnDisplay(lines=lines) if "Show your payment code" in lines:
                answer = ev.Scanned("282222222222222222", "payment_code", None, lane.now,
                                    lane.fresh("s"))  # fmt: skip
            case Authorise():
                answer = ev.Decided(action.auth_id, True, "ok", "payment_code", "acct-9")
            case Persist():
                answer = ev.Persisted(action.persist_id, lane.fresh("rec-"), 1)
            case OpenBarrier() | CloseBarrier():
                up = isinstance(action, OpenBarrier)
                answer = ev.BarrierAcked(action.cmd_id, True, "open" if up else "closed")
            case QueryDevice():
                answer = ev.DeviceSnapshotted("closed", (("entry_loop", True),), lane.fresh("d"))
            case None:
                deadline = next_deadline(lane.state)
                answer = ev.Tick()
                if deadline is not None:
                    lane.now = max(lane.now, deadline)
            case _:
                continue
        pending += lane.feed(answer, 0.01)
    raise AssertionError(f"{vehicle_id} not let through: {lane.phase()} {lane.state}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from([LaneMode.TOLL_ENTRY, LaneMode.TOLL_EXIT]),
    plate_wait_s=st.sampled_from([0.0, 0.5]),
    data=st.data(),
)
def test_after_any_history_the_next_vehicle_is_served(
    mode: LaneMode, plate_wait_s: float, data: st.DataObject
) -> None:
    lane = LaneDriver(rules(mode, lane_id="P01/e1", plate_wait_s=plate_wait_s))
    random_walk(lane, EventSource(hypothesis_chooser(data)), 40)
    world_answers(lane, budget=60)  # the world gets well: the lane is idle again
    serve(lane, "next")
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_an_entry_lane_whose_camera_reads_nothing_goes_on_issuing_passes() -> None:
    """An entry lane takes no codes: a dark camera is told (the operator fixes it), the lane
    is not closed, the next vehicle gets its pass; the alarm clears once the camera sees."""
    lane = LaneDriver(ENTRY)
    dark = lane.feed(ev.CameraSees(False, "camera lost: stream stopped delivering frames"))
    text = (
        "camera reads no codes (this entry lane takes none and still issues tickets; plates"
        " come from its plate reader, not this camera): camera lost: stream stopped delivering"
        " frames"
    )
    assert dark == [RaiseAlarm(Alarm.CAMERA_BLACKOUT, text)]
    assert lane.state.accepting_payments and not lane.state.faults
    assert "Please take your ticket" in displayed(lane.arrive("v1"))
    assert one(lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True)), Persist)
    assert one(lane.persisted(), OpenBarrier)
    assert lane.feed(ev.CameraSees(True)) == [ClearAlarm(Alarm.CAMERA_BLACKOUT)]
