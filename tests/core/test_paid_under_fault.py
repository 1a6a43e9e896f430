"""A paid vehicle whose record became durable while a blocking fault held the barrier: it is
told what is going on, the lane opens for it if the fault clears within `pass_dwell_s` of its
record's commit, else it is refunded (`paid_not_passed`) at that due and let go. Every
blocking fault, every lane mode; nothing charged twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from core_kit import CARRIED_RECORD, CARRIED_TEXT, LaneDriver, displayed, heal, of_type, one, rules
from test_machine_metro import TRIP_HEX
from test_machine_metro import priced as metro_priced
from test_machine_road import PASS_ID, PASS_TEXT, priced

from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    Action,
    Authorise,
    MarkPassUsed,
    OpenBarrier,
    Persist,
    PriceTrip,
    RaiseAlarm,
    ReleasePass,
    ShowOnDisplay,
)
from lane.core.display import ASSISTANCE, LANE_CLOSED
from lane.core.names import Alarm
from lane.core.notes import DuplicateDecision, PaidNotPassed
from lane.core.state import LaneMode, LaneRules, Phase

DWELL = 60.0
V0_TEXT = "280000000000000000"
V1_TEXT = "281111111111111111"

Step = Callable[[LaneDriver], object]


def v0_closing_then_v1_approved(lane: LaneDriver) -> None:
    """v0 is through and its close is on its way when v1's payment is approved (its record
    not yet durable)."""
    lane.pay("v0", V0_TEXT)
    lane.ack()
    lane.cross()
    assert lane.last_command().cmd_id == "v0/close"
    lane.arrive("v1")
    lane.scan(V1_TEXT)
    lane.decide()
    assert lane.state.vehicle is not None and lane.state.vehicle.pending_persist == "v1/a1"


def no_ack(lane: LaneDriver) -> None:
    while Alarm.BARRIER_NO_ACK not in lane.state.faults:
        lane.tick_at_deadline()


def working(lane: LaneDriver) -> None:
    lane.report("closed")


# fault: how it is raised, how it clears (the device or the link well again)
FAULTS: dict[Alarm, tuple[Step, Step]] = {
    Alarm.BARRIER_OFFLINE: (lambda lane: lane.report("offline"), working),
    Alarm.BARRIER_FAULT: (lambda lane: lane.report("fault"), working),
    Alarm.BROKER_DOWN: (
        lambda lane: lane.feed(ev.LinkChanged(up=False)),
        lambda lane: lane.feed(ev.LinkChanged(up=True)),
    ),
    Alarm.BARRIER_REFUSED: (
        lambda lane: lane.feed(ev.BarrierAcked("v0/close", False, "closed", "jammed")),
        working,
    ),
    Alarm.BARRIER_NO_ACK: (no_ack, lambda lane: lane.ack("v0/close")),
}


def held(lane: LaneDriver, fault: Alarm) -> str:
    """v1's record becomes durable under `fault`; returns its record id."""
    v0_closing_then_v1_approved(lane)
    raise_it, _ = FAULTS[fault]
    raise_it(lane)
    assert fault in lane.state.faults, lane.state.faults
    actions = lane.persisted("v1/a1")
    assert not of_type(actions, OpenBarrier)
    vehicle = lane.state.vehicle
    assert vehicle is not None and vehicle.record_id is not None
    return vehicle.record_id


def refunds(actions: list[Action]) -> list[Persist]:
    return [p for p in of_type(actions, Persist) if "paid_not_passed" in p.draft.flags]


def tick_until_refunded(lane: LaneDriver) -> list[Action]:
    for _ in range(100):
        actions = lane.tick_at_deadline()
        if of_type(actions, PaidNotPassed):
            return actions
    raise AssertionError(f"never refunded: {lane.state}")


def serve_until_open(lane: LaneDriver, cmd_id: str) -> None:
    """The device acks every command it is sent until `cmd_id` goes out."""
    for _ in range(6):
        if lane.last_command().cmd_id == cmd_id:
            return
        lane.ack()
    raise AssertionError(f"{cmd_id} never sent: {lane.state}")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_paid_as_the_fault_came_it_is_told_to_wait_then_refunded_at_its_due(fault: Alarm) -> None:
    lane = LaneDriver(rules(pass_dwell_s=DWELL))
    record_id = held(lane, fault)
    durable_at = lane.now
    shown = of_type(lane.log[-1][2], ShowOnDisplay)
    assert shown and shown[-1].lines == ("Paid", "Barrier out of order", "Please wait")
    assert shown[-1].ttl_s == pytest.approx(DWELL)
    # The camera still reads its code: it is not told to use another lane.
    assert LANE_CLOSED not in lane.scan(V1_TEXT)
    actions = tick_until_refunded(lane)
    assert lane.now == pytest.approx(durable_at + DWELL)
    (refund,) = refunds(actions)
    assert refund.persist_id == "v1/not_passed" and refund.ends_owed == record_id
    assert refund.draft.flags == ("paid_not_passed", f"record:{record_id}")
    assert (refund.draft.kind, refund.draft.amount_minor) == ("toll", 0)
    assert one(actions, PaidNotPassed) == PaidNotPassed("v1", record_id)
    alarm = next(a for a in of_type(actions, RaiseAlarm) if a.code == Alarm.PAID_NOT_PASSED)
    assert fault in alarm.message and "attendant" in alarm.message
    assert displayed(actions) == [ASSISTANCE]
    assert not of_type(lane.actions, Abandon)  # a durable payment is refunded, never reversed
    assert lane.state.vehicle is None and fault in lane.state.faults
    assert record_id not in lane.monitor.owed
    # The fault clears: v1 was let go, the barrier does not open for it, the lane recovers.
    _, cure = FAULTS[fault]
    cure(lane)
    heal(lane)
    assert "v1/open" not in {a.cmd_id for a in of_type(lane.actions, OpenBarrier)}
    lane.through("v2", "282222222222222222")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_fault_clearing_before_its_due_lets_it_through_with_no_refund(fault: Alarm) -> None:
    lane = LaneDriver(rules(pass_dwell_s=DWELL))
    held(lane, fault)
    lane.tick(DWELL - 10.0)
    _, cure = FAULTS[fault]
    cure(lane)
    serve_until_open(lane, "v1/open")
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    assert lane.phase() is Phase.IDLE
    assert not refunds(lane.actions)
    assert not lane.monitor.owed


def test_recorded_behind_the_vehicle_before_then_the_fault_it_is_refunded_at_its_due() -> None:
    """Durable while the barrier was still busy with v0, then the device goes: the same due,
    from its record's commit."""
    lane = LaneDriver(rules(pass_dwell_s=DWELL))
    v0_closing_then_v1_approved(lane)
    lane.persisted("v1/a1")
    durable_at = lane.now
    actions = lane.report("offline", dt=20.0)
    assert ("Paid", "Barrier out of order", "Please wait") in [
        s.lines for s in of_type(actions, ShowOnDisplay)
    ]
    assert LANE_CLOSED not in actions
    tick_until_refunded(lane)
    assert lane.now == pytest.approx(durable_at + DWELL)


def test_refunded_its_payment_answered_again_is_not_charged_again() -> None:
    lane = LaneDriver(rules(pass_dwell_s=DWELL))
    held(lane, Alarm.BARRIER_OFFLINE)
    tick_until_refunded(lane)
    actions = lane.decide("v1/a1")  # a redelivered approval
    assert of_type(actions, DuplicateDecision) and not of_type(actions, Persist)
    lane.report("closed")
    assert not of_type(lane.scan(V1_TEXT), Authorise)  # nobody at the pay point: no charge


def test_a_carried_payment_claimed_behind_the_vehicle_before_is_held_from_its_claim() -> None:
    """Paid before a restart, its code shown again while the boom is up for v1 (not under it
    yet): it waits with its record, and the device going offline holds it; refunded,
    flagged carried, `pass_dwell_s` after its claim."""
    lane = LaneDriver(rules(pass_dwell_s=DWELL))
    lane.paid_carried()
    lane.report("closed")
    lane.pay("v1", V1_TEXT)
    lane.ack()
    lane.leave_pay_point()  # v1 drives on towards the boom
    lane.arrive("v2")
    lane.scan(CARRIED_TEXT, "token")  # claimed: waits behind v1
    vehicle = lane.state.vehicle
    assert vehicle is not None and vehicle.carried and vehicle.record_id == CARRIED_RECORD
    claimed_at = lane.now
    lane.report("offline", dt=5.0)
    (refund,) = refunds(tick_until_refunded(lane))
    assert lane.now == pytest.approx(claimed_at + DWELL)
    assert refund.draft.flags == ("paid_not_passed", f"record:{CARRIED_RECORD}", "carried")
    assert refund.ends_owed == CARRIED_RECORD and lane.state.vehicle is None


def tap(lane: LaneDriver) -> None:
    lane.scan("HC1:tok", "token")
    lane.decide(method="token")


def toll_exit(lane: LaneDriver) -> None:
    lane.arrive("v1")
    lane.scan(PASS_TEXT, "entry_pass")
    lane.feed(priced("v1/trip1"))
    lane.scan()
    lane.decide()


def toll_entry(lane: LaneDriver) -> None:
    lane.arrive("v1")
    lane.feed(ev.TicketIssued("v1/pass", PASS_ID, printed=True))


MODES: list[tuple[LaneRules, Callable[[LaneDriver], None], str]] = [
    (rules(LaneMode.TRANSIT_ENTRY, pass_dwell_s=DWELL), tap, "tap_in"),
    (rules(LaneMode.TRANSIT_EXIT, pass_dwell_s=DWELL), tap, "tap_out"),
    (rules(LaneMode.TOLL_EXIT, lane_id="P03/x1", pass_dwell_s=DWELL), toll_exit, "exit"),
    (rules(LaneMode.TOLL_ENTRY, lane_id="P01/e1", pass_dwell_s=DWELL), toll_entry, "entry"),
]


@pytest.mark.parametrize(("lane_rules", "pay", "kind"), MODES)
def test_the_wait_names_the_gate_at_a_fare_gate_and_the_barrier_elsewhere(
    lane_rules: LaneRules, pay: Callable[[LaneDriver], None], kind: str
) -> None:
    lane = LaneDriver(lane_rules)
    pay(lane)
    lane.report("offline")
    lane.persisted(lane.last(Persist).persist_id)
    word = "Gate" if lane_rules.mode.fare_gate else "Barrier"
    paid = ("Paid",) if kind != "entry" else ()  # an entry lane charges nothing
    assert of_type(lane.log[-1][2], ShowOnDisplay)[-1].lines == (
        *paid, f"{word} out of order", "Please wait"
    )  # fmt: skip


@pytest.mark.parametrize(("lane_rules", "pay", "kind"), MODES)
def test_every_mode_refunds_at_the_due_and_lets_the_vehicle_go(
    lane_rules: LaneRules, pay: Callable[[LaneDriver], None], kind: str
) -> None:
    """A fare gate's passenger, an exit that charged a trip (its pass marked used with its
    record), an entry whose pass was issued (nothing charged: the record says the entry did
    not happen)."""
    lane = LaneDriver(lane_rules)
    pay(lane)
    persist = lane.last(Persist)
    lane.report("offline")
    actions = lane.persisted(persist.persist_id)
    assert not of_type(actions, OpenBarrier)
    if kind == "exit":
        assert one(actions, MarkPassUsed).pass_id == PASS_ID
    vehicle = lane.state.vehicle
    assert vehicle is not None and vehicle.record_id is not None
    (refund,) = refunds(tick_until_refunded(lane))
    assert refund.draft.kind == kind and refund.ends_owed == vehicle.record_id
    assert refund.draft.flags == ("paid_not_passed", f"record:{vehicle.record_id}")
    assert lane.state.vehicle is None
    lane.report("closed")
    heal(lane)
    assert not of_type(lane.actions, OpenBarrier)


@pytest.mark.parametrize(("lane_rules", "pay", "kind"), MODES)
def test_the_alarm_says_paid_only_of_a_vehicle_that_paid(
    lane_rules: LaneRules, pay: Callable[[LaneDriver], None], kind: str
) -> None:
    """An entry lane charged nothing: its alarm says so, not "paid ... refund"."""
    actions = held_and_refunded(LaneDriver(lane_rules), pay)
    alarm = next(a for a in of_type(actions, RaiseAlarm) if a.code == Alarm.PAID_NOT_PASSED)
    assert "attendant, please help" in alarm.message
    if kind == "entry":
        assert "paid" not in alarm.message and "refund" not in alarm.message
        assert "nothing was charged, a record undoing the entry is written" in alarm.message
    else:
        assert "paid" in alarm.message and "a refund record is written" in alarm.message


# --- what a refund gives back -----------------------------------------------------------------


def held_and_refunded(lane: LaneDriver, pay: Callable[[LaneDriver], None]) -> list[Action]:
    """Paid as the device went offline: refunded at its due."""
    pay(lane)
    persist = lane.last(Persist)
    lane.report("offline")
    lane.persisted(persist.persist_id)
    return tick_until_refunded(lane)


def opened_and_refunded(lane: LaneDriver, pay: Callable[[LaneDriver], None]) -> list[Action]:
    """Paid, the open sent, then the device went offline before the gate moved: a passage never
    opened, refunded `pass_dwell_s` after its open."""
    pay(lane)
    assert of_type(lane.persisted(lane.last(Persist).persist_id), OpenBarrier)
    lane.report("offline")
    return tick_until_refunded(lane)


REFUNDS = [held_and_refunded, opened_and_refunded]


@pytest.mark.parametrize("refunded", REFUNDS)
def test_a_refunded_tap_in_does_not_count_for_passback(
    refunded: Callable[[LaneDriver, Callable[[LaneDriver], None]], list[Action]],
) -> None:
    """The passenger was refunded, not let in: tapping in again at this gate is a new tap-in,
    not a passback (which would leave them outside, refunded, for `passback_window_s`)."""
    lane = LaneDriver(rules(LaneMode.TRANSIT_ENTRY, pass_dwell_s=DWELL, passback_window_s=600.0))
    refunded(lane, tap)
    lane.report("closed")
    heal(lane)
    tap(lane)
    again = one(of_type(lane.log[-1][2], Persist), Persist)
    assert (again.draft.auth.result, again.draft.flags) == ("approved", ())
    # That tap-in (on record, let through) counts: the next tap is passback (another token of
    # the account: the same one read again is the passenger's phone, ignored, lane.core.reread).
    lane.persisted(again.persist_id)
    lane.ack()
    lane.tick_at_deadline()
    lane.ack()
    lane.scan("HC1:tok2", "token")
    lane.decide(method="token")
    assert "passback" in one(of_type(lane.log[-1][2], Persist), Persist).draft.flags


def exit_priced(**kw: object) -> Callable[[LaneDriver], None]:
    def pay(lane: LaneDriver) -> None:
        lane.arrive("v1")
        lane.scan(PASS_TEXT, "entry_pass")
        lane.feed(priced("v1/trip1", **kw))
        if kw.get("attendant"):
            lane.feed(ev.AttendantConfirmFare("c1", "op7"))
        lane.scan()
        lane.decide()

    return pay


@pytest.mark.parametrize("refunded", REFUNDS)
def test_a_refunded_exit_releases_the_pass_it_marked_used(
    refunded: Callable[[LaneDriver, Callable[[LaneDriver], None]], list[Action]],
) -> None:
    """The driver was refunded and did not leave: the pass is not spent. Its used mark (made as
    the exit record became durable) is taken back in the refund's step."""
    lane = LaneDriver(rules(LaneMode.TOLL_EXIT, lane_id="P03/x1", pass_dwell_s=DWELL))
    actions = refunded(lane, exit_priced())
    mark = one(lane.actions, MarkPassUsed)
    assert mark.pass_id == PASS_ID
    # It names the exit record that made the mark: a metro gate gives back only that exit's.
    assert one(actions, ReleasePass) == ReleasePass(PASS_ID, mark.record_id)


@pytest.mark.parametrize("refunded", REFUNDS)
def test_a_refunded_exit_priced_from_a_used_pass_leaves_the_earlier_mark(
    refunded: Callable[[LaneDriver, Callable[[LaneDriver], None]], list[Action]],
) -> None:
    """The pass had exited before (priced `pass_used`, the attendant confirmed): that mark is an
    earlier exit's, and a pass pays once."""
    lane = LaneDriver(rules(LaneMode.TOLL_EXIT, lane_id="P03/x1", pass_dwell_s=DWELL))
    used = exit_priced(outcome="pass_used", flags=("pass_used", "attendant"), attendant=True)
    actions = refunded(lane, used)
    assert of_type(actions, PaidNotPassed) and not of_type(actions, ReleasePass)


@pytest.mark.parametrize("refunded", REFUNDS)
def test_a_refund_names_the_pass_it_gives_back(
    refunded: Callable[[LaneDriver, Callable[[LaneDriver], None]], list[Action]],
) -> None:
    """The record undoing an entry names the entry's pass (the trip it opened), so the back
    office closes that trip; one undoing an exit names the pass it releases (a metro line's
    other gates reopen the tap-in from it); an exit priced from a used pass releases none and
    names none."""
    lane = LaneDriver(rules(LaneMode.TOLL_ENTRY, lane_id="P01/e1", pass_dwell_s=DWELL))
    (refund,) = refunds(refunded(lane, toll_entry))
    entry = next(p for p in of_type(lane.actions, Persist) if p.draft.kind == "entry")
    assert refund.draft.pass_id == entry.draft.pass_id == PASS_ID
    other = LaneDriver(rules(LaneMode.TOLL_EXIT, lane_id="P03/x1", pass_dwell_s=DWELL))
    (refund,) = refunds(refunded(other, exit_priced()))
    assert refund.draft.pass_id == PASS_ID
    used = exit_priced(outcome="pass_used", flags=("pass_used", "attendant"), attendant=True)
    again = LaneDriver(rules(LaneMode.TOLL_EXIT, lane_id="P03/x1", pass_dwell_s=DWELL))
    (refund,) = refunds(refunded(again, used))
    assert refund.draft.pass_id is None


def metro_tap_out(lane: LaneDriver) -> None:
    ask = one(lane.scan("HC1:tok", "token"), PriceTrip)
    lane.feed(metro_priced(ask.trip_id))
    lane.decide(method="token")


@pytest.mark.parametrize("refunded", REFUNDS)
def test_a_refunded_metro_tap_out_reopens_its_tap_in(
    refunded: Callable[[LaneDriver, Callable[[LaneDriver], None]], list[Action]],
) -> None:
    """The passenger did not leave: the tap-in stays open, so tapping out again prices the
    trip, not `Tap-in already used` at the maximum fare."""
    lane = LaneDriver(rules(LaneMode.TRANSIT_EXIT, metro_pricing=True, pass_dwell_s=DWELL))
    actions = refunded(lane, metro_tap_out)
    mark = one(lane.actions, MarkPassUsed)
    assert mark.pass_id == TRIP_HEX
    # It names the exit record that made the mark: a metro gate gives back only that exit's.
    assert one(actions, ReleasePass) == ReleasePass(TRIP_HEX, mark.record_id)


def test_an_attendant_open_under_a_fault_is_given_up_and_the_alarm_tells_the_attendant() -> None:
    """The attendant pressed open while the device was away: nobody paid, so the driver is not
    told "Paid", and at the due the alarm says the open was given up (no refund: nothing was
    charged) and that the attendant opens again once the barrier works."""
    lane = LaneDriver(rules(pass_dwell_s=DWELL))
    lane.arrive("v1")
    lane.report("offline")
    lane.feed(ev.AttendantOpen("att-1", "no fare", "op7"))
    actions = lane.persisted("att-1")
    assert of_type(actions, ShowOnDisplay)[-1].lines == ("Barrier out of order", "Please wait")
    actions = tick_until_refunded(lane)
    (record,) = refunds(actions)
    assert (record.draft.kind, record.draft.amount_minor) == ("manual", 0)
    alarm = next(a for a in of_type(actions, RaiseAlarm) if a.code == Alarm.PAID_NOT_PASSED)
    assert alarm.message.startswith("attendant open for v1 (record ")
    assert "given up" in alarm.message and "open again" in alarm.message
    assert "barrier_offline" in alarm.message and "paid" not in alarm.message
    assert "refund" not in alarm.message
    lane.report("closed")
    heal(lane)
    assert "v1/open" not in {a.cmd_id for a in of_type(lane.actions, OpenBarrier)}
