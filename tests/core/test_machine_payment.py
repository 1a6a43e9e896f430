"""Codes, authorisation, declines and tries, timeouts, late answers, the record of a payment."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, displayed, of_type, one, rules
from hypothesis import given
from hypothesis import strategies as st

from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    Authorise,
    ClearAlarm,
    OpenBarrier,
    Persist,
    RaiseAlarm,
    Settle,
    ShowOnDisplay,
)
from lane.core.machine import next_deadline
from lane.core.names import Alarm
from lane.core.notes import (
    CodeRefused,
    Declined,
    DuplicateDecision,
    LateDecision,
    ScanIgnored,
    ScanRefused,
    VehicleGone,
)
from lane.core.state import Phase

CODE = "281234567890123456"


def test_scan_sends_the_fare_for_authorisation_within_the_budget() -> None:
    lane = LaneDriver(rules(budget_s=2.5, auth_grace_s=0.5))
    lane.arrive("v1")
    actions = lane.scan(CODE, "payment_code")
    assert one(actions, Authorise) == Authorise(
        auth_id="v1/a1",
        vehicle_id="v1",
        text=CODE,
        kind="payment_code",
        amount_minor=250,
        currency="EUR",
        deadline=lane.now + 2.5,
    )
    assert one(actions, ShowOnDisplay).lines == ("Processing payment", "2.50 EUR")
    assert lane.phase() is Phase.AUTHORISING
    assert next_deadline(lane.state) == lane.now + 2.5 + 0.5


@pytest.mark.parametrize("kind", ["token", "payment_code", "emv"])
def test_every_payable_kind_is_authorised(kind: str) -> None:
    lane = LaneDriver()
    lane.arrive()
    assert one(lane.scan("some code", kind), Authorise).kind == kind


REFUSALS = [
    # scanner kind, scanner reason, what the driver reads
    ("unknown", "not a payment code", "not a payment code"),
    ("unknown", None, "unreadable code"),
    ("barcode", None, "unsupported code: barcode"),
    ("", None, "unsupported code: "),
]


@pytest.mark.parametrize(("kind", "reason", "shown"), REFUSALS)
def test_codes_the_lane_cannot_pay_with_are_refused_with_a_reason(
    kind: str, reason: str | None, shown: str
) -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    actions = lane.scan("garbage", kind, reason)
    assert of_type(actions, Authorise) == []
    assert one(actions, ShowOnDisplay).lines == (
        "Payment refused",
        shown,
        "Try another code (2 left)",
    )
    assert CodeRefused(vehicle_id="v1", reason=shown) in actions
    assert lane.phase() is Phase.DENIED


def test_the_same_refused_text_is_ignored() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan("garbage", "unknown", "not a payment code")
    assert lane.scan("garbage", "unknown", "not a payment code") == []
    assert lane.state.vehicle is not None and lane.state.vehicle.tries == 1


DECLINE_TABLE = [
    # declines so far, last line the driver reads, alarm raised
    (1, "Try another code (2 left)", False),
    (2, "Try another code (1 left)", False),
    (3, "Please wait for assistance", True),
]


@pytest.mark.parametrize(("declines", "last_line", "alarm"), DECLINE_TABLE)
def test_decline_shows_the_tries_left_then_calls_an_attendant(
    declines: int, last_line: str, alarm: bool
) -> None:
    lane = LaneDriver(rules(max_tries=3))
    lane.arrive("v1")
    for n in range(declines):
        lane.scan(f"28000000000000000{n}")
        actions = lane.decide(approved=False, reason="insufficient_funds")
    assert lane.phase() is Phase.DENIED
    show = of_type(actions, ShowOnDisplay)[-1]
    assert show.lines == ("Payment refused", "insufficient_funds", last_line)
    raised = of_type(actions, RaiseAlarm)
    assert bool(raised) == alarm
    if alarm:
        assert raised[0].code == "attendant_needed"


def test_a_decline_is_recorded() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    actions = lane.decide(approved=False, reason="insufficient_funds", payment_id="pay-1")
    persist = one(actions, Persist)
    assert persist.persist_id == "v1/a1"
    assert persist.draft.auth.result == "declined"
    assert persist.draft.kind == "toll" and persist.draft.vehicle_id == "v1"
    assert persist.draft.payment_id == "pay-1"
    assert "insufficient_funds" in persist.draft.flags
    assert Declined(vehicle_id="v1", reason="insufficient_funds") in actions
    assert of_type(lane.persisted(), OpenBarrier) == []  # a declined record opens nothing


def test_after_max_tries_codes_are_ignored_until_an_attendant_comes() -> None:
    lane = LaneDriver(rules(max_tries=2))
    lane.arrive("v1")
    for n in range(2):
        lane.scan(f"28000000000000000{n}")
        lane.decide(approved=False)
    actions = lane.scan("289999999999999999")
    assert of_type(actions, Authorise) == []
    assert ScanIgnored(vehicle_id="v1", reason="max_tries") in actions
    assert "Please wait for assistance" in displayed(actions)


def test_a_declined_code_is_not_sent_again() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan(CODE)
    lane.decide(approved=False)
    assert lane.scan(CODE) == []  # the camera still sees the same phone screen
    assert one(lane.scan("280000000000000009"), Authorise).auth_id == "v1/a2"


def test_one_payment_at_a_time() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan(CODE)
    assert lane.scan("280000000000000009") == []
    lane.decide()
    assert lane.scan("280000000000000009") == []  # approved: later codes are ignored


@pytest.mark.parametrize(
    ("flags", "result"), [((), "approved"), (("deferred",), "deferred")], ids=["online", "floor"]
)
def test_approval_persists_the_record_before_anything_opens(
    flags: tuple[str, ...], result: str
) -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan(CODE, "payment_code")
    actions = lane.decide(
        approved=True,
        method="payment_code",
        account_ref="acct-9",
        payment_id="pay-1",
        acquirer_ref="acq-1",
        latency_ms=340,
        flags=flags,
    )
    assert lane.phase() is Phase.PERSISTING
    persist = one(actions, Persist)
    assert [type(a) for a in actions] == [Persist]  # nothing opens before the record is durable
    draft = persist.draft
    assert persist.persist_id == "v1/a1"
    assert (draft.kind, draft.vehicle_id, draft.vehicle_class) == ("toll", "v1", 1)
    assert (draft.amount_minor, draft.currency, draft.method) == (250, "EUR", "payment_code")
    assert (draft.account_ref, draft.payment_id) == ("acct-9", "pay-1")
    assert draft.auth.result == result
    assert (draft.auth.acquirer_ref, draft.auth.latency_ms) == ("acq-1", 340)
    assert CODE not in repr(draft)  # the raw payment code never goes into a record


def test_persisted_settles_then_opens() -> None:
    lane = LaneDriver(rules(cmd_ttl_s=3.0, ack_timeout_s=0.6))
    lane.arrive("v1")
    lane.scan()
    lane.decide()
    actions = lane.persisted()
    assert lane.phase() is Phase.OPENING
    assert [type(a) for a in actions] == [Settle, OpenBarrier, ShowOnDisplay]
    assert one(actions, Settle) == Settle("v1/a1")
    assert one(actions, OpenBarrier) == OpenBarrier("v1/open", lane.now + 3.0, 1)
    assert one(actions, ShowOnDisplay).lines == ("Thank you", "Have a good journey")
    assert next_deadline(lane.state) == lane.now + 0.6


def test_unknown_method_is_recorded_as_the_kind_the_lane_sent() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan("HC1:abc", "token")
    draft = one(lane.decide(method="wallet-x"), Persist).draft
    assert draft.method == "token"
    assert "method:wallet-x" in draft.flags


# --- time: budget and grace ----------------------------------------------------------------


def test_no_decision_by_deadline_plus_grace_abandons() -> None:
    lane = LaneDriver(rules(budget_s=2.0, auth_grace_s=0.5))
    lane.arrive("v1")
    lane.scan()
    assert lane.tick(2.0) == []  # the budget is spent, the grace is not
    assert lane.phase() is Phase.AUTHORISING
    actions = lane.tick_at_deadline()
    assert lane.now == pytest.approx(1002.5)
    assert actions[0] == Abandon("v1/a1", "timeout")
    assert one(actions, ShowOnDisplay).lines[:2] == ("Payment refused", "timeout")
    record = one(actions, Persist)  # the decision is recorded like any other decline
    assert record.persist_id == "v1/a1"
    assert (record.draft.auth.result, record.draft.method) == ("declined", "payment_code")
    assert "timeout" in record.draft.flags
    assert lane.phase() is Phase.DENIED
    # The driver may try another code; the lane looks again after the pay point's dwell.
    assert next_deadline(lane.state) == pytest.approx(lane.now + lane.state.rules.pay_dwell_s)


def test_a_late_approval_is_abandoned() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.tick(5.0)
    actions = lane.decide("v1/a1", approved=True)
    assert actions == [Abandon("v1/a1", "late"), LateDecision(auth_id="v1/a1")]
    assert lane.phase() is Phase.DENIED


def test_a_late_decline_is_only_noted() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.tick(5.0)
    assert lane.decide("v1/a1", approved=False) == [LateDecision(auth_id="v1/a1")]


def test_a_repeated_approval_never_reverses_a_recorded_payment() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.decide()
    duplicate = [DuplicateDecision(auth_id="v1/a1")]
    assert lane.decide("v1/a1") == duplicate  # while the record is being written
    lane.persisted()
    lane.ack()
    assert lane.decide("v1/a1") == duplicate  # and after the barrier opened


# --- the record queue ------------------------------------------------------------------------


def test_record_failure_abandons_and_faults_the_lane() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.decide()
    actions = lane.feed(ev.PersistFailed("v1/a1", "queue_full"))
    assert actions[0] == Abandon("v1/a1", "record_failed")
    assert one(actions, RaiseAlarm).code == "queue_full"
    assert ("Payment cancelled", "Lane closed") in [
        a.lines for a in of_type(actions, ShowOnDisplay)
    ]
    assert lane.phase() is Phase.FAULT
    assert of_type(lane.persisted("v1/a1"), OpenBarrier) == []  # never opens after that
    refused = lane.scan("280000000000000009")
    assert ScanRefused(reason="queue_full") in refused


@pytest.mark.parametrize(
    ("reason", "fault", "text"),
    [
        ("disk_error", "disk_error", "record queue cannot write"),
        ("odd", "disk_error", "record queue cannot write"),
        ("locked", "disk_error", "record queue cannot write: queue file locked by another process"),
        (
            "read_only",
            "disk_error",
            "record queue cannot write: queue file or file system read-only",
        ),
        ("io_error", "disk_error", "record queue cannot write: disk I/O error"),
        ("disk_full", "disk_error", "record queue cannot write: disk full"),
        ("corrupt", "disk_error", "record queue cannot write: queue file corrupt"),
        ("queue_full", "queue_full", "record queue is full: paid passages refused"),
    ],
)
def test_record_failure_reasons_map_to_faults_named_by_their_cause(
    reason: str, fault: str, text: str
) -> None:
    """A queue file only locked by another process used to read "cannot write to disk"."""
    lane = LaneDriver()
    actions = lane.feed(ev.PersistFailed("nobody", reason))
    assert (one(actions, RaiseAlarm).code, one(actions, RaiseAlarm).message) == (fault, text)
    assert lane.phase() is Phase.FAULT


def test_stale_record_answers_touch_no_payment() -> None:
    lane = LaneDriver()
    lane.pay()
    lane.ack()
    assert lane.persisted("v1/a1") == []  # a duplicate Persisted: no second Settle
    actions = lane.feed(ev.PersistFailed("v1/a1", "disk_error"))  # stale: record is durable
    assert of_type(actions, Abandon) == []
    assert one(actions, RaiseAlarm).code == "disk_error"  # the queue is unwell all the same


def test_the_queue_recovering_reopens_payments() -> None:
    lane = LaneDriver()
    lane.feed(ev.QueueChanged(full=True, high_water=True))
    lane.arrive()
    assert of_type(lane.scan(), Authorise) == []
    actions = lane.feed(ev.QueueChanged(full=False, high_water=False))
    assert ClearAlarm(Alarm.QUEUE_FULL) in actions
    assert one(lane.scan(), Authorise).amount_minor == 250


def test_a_data_directory_that_answers_again_reopens_payments() -> None:
    lane = LaneDriver()
    actions = lane.feed(ev.DiskAnswering(answering=False, detail="/var/lib/lane: waited 15 s"))
    assert (
        RaiseAlarm(
            Alarm.DISK_NOT_ANSWERING, "data directory does not answer: /var/lib/lane: waited 15 s"
        )
        in actions
    )
    lane.arrive()
    assert of_type(lane.scan(), Authorise) == []
    actions = lane.feed(ev.DiskAnswering(answering=True))
    assert ClearAlarm(Alarm.DISK_NOT_ANSWERING) in actions
    assert one(lane.scan(), Authorise).amount_minor == 250


DISK_LATE = ev.DiskAnswering(answering=False, detail="/var/lib/lane: waited 15 s")
DISK_AGAIN = ev.DiskAnswersAgain("/var/lib/lane: the lane reopens at 10:58:50 UTC")
NOT_ANSWERING = "data directory does not answer: /var/lib/lane: waited 15 s"
ANSWERS_AGAIN = "data directory answers again: /var/lib/lane: the lane reopens at 10:58:50 UTC"


@pytest.mark.parametrize(
    ("events", "texts"),
    [
        # raised, the disk answers (the hold-off runs), cleared
        ([DISK_LATE, DISK_AGAIN], [NOT_ANSWERING, ANSWERS_AGAIN]),
        # it stalls again in the hold-off: the text says so again
        ([DISK_LATE, DISK_AGAIN, DISK_LATE], [NOT_ANSWERING, ANSWERS_AGAIN, NOT_ANSWERING]),
        # no fault held: the disk's answer raises nothing
        ([DISK_AGAIN], [None]),
        ([DISK_LATE, ev.DiskAnswering(answering=True), DISK_AGAIN], [NOT_ANSWERING, None, None]),
    ],
)
def test_the_disk_fault_s_text_says_what_the_disk_does_now(
    events: list[ev.Event], texts: list[str | None]
) -> None:
    """The text it was raised with ("does not answer") was kept through the hold-off, when the
    disk answers again: it now says so, and when the lane reopens; payments stay refused."""
    lane = LaneDriver()
    shown: str | None = None
    for event, text in zip(events, texts, strict=True):
        actions = lane.feed(event)
        raised = of_type(actions, RaiseAlarm)
        if raised:
            shown = one(raised, RaiseAlarm).message
        if ClearAlarm(Alarm.DISK_NOT_ANSWERING) in actions:
            shown = None
        assert shown == text
        lane.arrive(lane.fresh("v"))
        assert bool(of_type(lane.scan(), Authorise)) == (text is None)
        lane.leave_pay_point()


@given(st.lists(st.sampled_from([DISK_LATE, DISK_AGAIN, ev.DiskAnswering(answering=True)])))
def test_the_disk_fault_s_text_is_always_the_disk_s_latest_word(events: list[ev.Event]) -> None:
    """Held from a late call to the clear; its text, what the health loop last said."""
    lane = LaneDriver()
    shown: str | None = None
    for event in events:
        for action in lane.feed(event):
            if isinstance(action, RaiseAlarm):
                shown = action.message
            elif action == ClearAlarm(Alarm.DISK_NOT_ANSWERING):
                shown = None
        held = Alarm.DISK_NOT_ANSWERING in lane.state.faults
        assert held == (shown is not None)
        if held:
            assert shown == (ANSWERS_AGAIN if event == DISK_AGAIN else NOT_ANSWERING)


@pytest.mark.parametrize(
    "fault",
    [
        ev.DiskAnswering(answering=False, detail="/var/lib/lane: waited 15 s"),
        ev.QueueChanged(full=True, high_water=True),
    ],
)
def test_a_payment_fault_while_a_paid_record_is_written_tells_its_driver_to_wait(
    fault: ev.Event,
) -> None:
    """The disk hangs (or the queue fills) as a paid vehicle's record is being written: the
    barrier still opens for it once the record is on disk, so its driver is told to wait,
    not to use another lane; the next driver is refused."""
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.decide()
    assert displayed(lane.feed(fault)) == ["Paid", "Please wait"]
    assert one(lane.persisted(), OpenBarrier)
    lane.ack()
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    lane.arrive("v2")
    assert of_type(lane.scan(), Authorise) == []


# --- refused when the lane cannot take payments ----------------------------------------------

BLOCKERS = [
    # what happened, the reason noted for a refused scan
    (ev.BarrierReported("offline"), "barrier_offline"),
    (ev.BarrierReported("fault"), "barrier_fault"),
    (ev.LinkChanged(up=False), "broker_down"),
    (ev.QueueChanged(full=True, high_water=False), "queue_full"),
    (ev.DiskAnswering(answering=False, detail="/var/lib/lane"), "disk_not_answering"),
    (ev.AttendantCloseLane("maintenance"), "maintenance"),
]


@pytest.mark.parametrize(("blocker", "why"), BLOCKERS)
def test_scan_while_faulted_or_closed_is_refused(blocker: ev.Event, why: str) -> None:
    lane = LaneDriver()
    lane.feed(blocker)
    lane.arrive()
    actions = lane.scan()
    assert actions == [
        ShowOnDisplay(("Lane closed", "Please use another lane")),
        ScanRefused(reason=why),
    ]


@pytest.mark.parametrize(("blocker", "why"), BLOCKERS[:4])
def test_approval_after_the_lane_faulted_is_abandoned(blocker: ev.Event, why: str) -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    lane.feed(blocker)
    actions = lane.decide()
    assert actions[0] == Abandon("v1/a1", why)
    assert of_type(actions, Persist) == []
    assert lane.state.vehicle is not None and lane.state.vehicle.tries == lane.state.rules.max_tries


# --- the vehicle leaves ----------------------------------------------------------------------


def test_backing_away_while_paying_abandons() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    actions = lane.leave_pay_point()
    assert actions == [VehicleGone(vehicle_id="v1"), Abandon("v1/a1", "vehicle_gone")]
    assert lane.phase() is Phase.IDLE


def test_leaving_the_loop_once_approved_does_not_undo_the_payment() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    lane.decide()
    assert lane.leave_pay_point() == []  # edging forward while the record is written
    actions = lane.persisted()
    assert one(actions, Settle) == Settle("v1/a1")
    assert one(actions, OpenBarrier).cmd_id == "v1/open"


def test_backing_away_after_max_tries_clears_the_attendant_alarm() -> None:
    lane = LaneDriver(rules(max_tries=1))
    lane.arrive("v1")
    lane.scan()
    assert one(lane.decide(approved=False), RaiseAlarm).code == "attendant_needed"
    assert ClearAlarm(Alarm.ATTENDANT_NEEDED) in lane.leave_pay_point()
