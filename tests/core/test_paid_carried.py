"""A vehicle that paid before a restart (lane.core.carried): the lane owes it its passage.

Its code shown again opens for it without a charge or a record; a boom found up at the
restart is its passage, not an unpaid one; nobody coming back is `paid_not_passed` once what
was left of `pass_dwell_s` runs out; other codes are served as usual; it is honoured once.
The random runs (test_invariants, test_recovery) start with one too and check that no record
gets two passages and that every paid vehicle ends through or refunded.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from core_kit import (
    CARRIED_RECORD,
    CARRIED_TEXT,
    KEPT_DETAILS,
    LaneDriver,
    of_type,
    one,
    rules,
)

from lane.core import events as ev
from lane.core.actions import (
    Action,
    Authorise,
    CloseBarrier,
    DropLatch,
    OpenBarrier,
    PassageServed,
    Persist,
    RaiseAlarm,
    ReleasePass,
    ShowOnDisplay,
)
from lane.core.machine import next_deadline
from lane.core.names import Alarm
from lane.core.notes import (
    CarriedStep,
    PaidCarriedNote,
    PaidNotPassed,
    ScanRefused,
    Tailgating,
)
from lane.core.state import LaneMode, Phase

CARRIED_VEHICLE = "v0/start1"  # the vehicle id in the run after the restart: fresh commands


def restarted(lane: LaneDriver, age_s: float = 0.0, marked_pass: str | None = None) -> None:
    """Started owing the vehicle its passage; the device says the boom is down."""
    note = one(lane.paid_carried(age_s=age_s, marked_pass=marked_pass), PaidCarriedNote)
    assert note == PaidCarriedNote(CARRIED_VEHICLE, CARRIED_RECORD, CarriedStep.CARRIED)
    lane.feed(ev.LinkChanged(up=True))
    lane.report("closed")


def through(lane: LaneDriver) -> list[object]:
    """The barrier acks the open, the vehicle crosses and leaves, the barrier closes."""
    actions: list[object] = list(lane.ack())
    actions += lane.cross()
    actions += lane.ack()
    return actions


def test_the_same_code_again_opens_for_it_without_a_charge_or_a_record() -> None:
    lane = LaneDriver()
    restarted(lane)
    lane.arrive("v7")
    actions = lane.scan(CARRIED_TEXT, "token")  # the replay the authoriser would refuse
    assert of_type(actions, Authorise) == [] and of_type(actions, Persist) == []
    assert one(actions, OpenBarrier).cmd_id == f"{CARRIED_VEHICLE}/open"
    assert ShowOnDisplay(("Already paid", "Please go ahead"), ttl_s=5.0) in actions
    claimed = PaidCarriedNote(CARRIED_VEHICLE, CARRIED_RECORD, CarriedStep.CLAIMED)
    assert claimed in actions
    assert lane.phase() is Phase.OPENING
    passage = lane.state.passage
    assert passage is not None and passage.record_id == CARRIED_RECORD  # that record's passage
    assert PassageServed(CARRIED_RECORD) in through(lane)
    assert lane.phase() is Phase.IDLE and not lane.state.carried
    assert of_type(lane.actions, Persist) == [] and of_type(lane.actions, PaidNotPassed) == []
    lane.monitor.check_outcomes()


def test_the_code_again_with_no_arrival_seen_opens_too() -> None:
    """Toll: the vehicle stood on the entry loop through the restart, so the lane saw no edge."""
    lane = LaneDriver()
    restarted(lane)
    actions = lane.scan(CARRIED_TEXT, "token")
    assert one(actions, OpenBarrier).cmd_id == f"{CARRIED_VEHICLE}/open"
    through(lane)
    assert lane.phase() is Phase.IDLE
    lane.monitor.check_outcomes()


def test_after_a_refused_code_the_carried_one_still_opens_and_the_attendant_is_not_needed() -> None:
    lane = LaneDriver(rules(max_tries=1))
    restarted(lane)
    lane.arrive("v7")
    lane.scan("junk", "unknown", "not a payment code")  # the driver's last try, refused
    assert lane.phase() is Phase.DENIED and "attendant_needed" in lane.monitor.alarms
    lane.scan(CARRIED_TEXT, "token")
    assert lane.phase() is Phase.OPENING and "attendant_needed" not in lane.monitor.alarms


def test_a_different_code_is_served_as_usual_and_the_carried_one_is_refunded_in_time() -> None:
    lane = LaneDriver()
    restarted(lane, age_s=20.0)
    due = lane.now + 40.0  # what was left of pass_dwell_s (60 s)
    assert next_deadline(lane.state) == pytest.approx(due)
    lane.through("v7", "282222222222222222")  # another driver pays and passes
    assert len(of_type(lane.actions, Authorise)) == 1
    assert lane.state.carried
    actions = lane.feed(ev.Tick(), due - lane.now)
    refund = one(actions, Persist)
    assert refund.persist_id == f"{CARRIED_VEHICLE}/not_passed"
    assert refund.draft.flags == ("paid_not_passed", f"record:{CARRIED_RECORD}", "carried")
    assert refund.draft.amount_minor == 0 and refund.ends_owed == CARRIED_RECORD
    assert PaidNotPassed(CARRIED_VEHICLE, CARRIED_RECORD) in actions
    alarm = one(actions, RaiseAlarm)
    assert alarm.code == Alarm.PAID_NOT_PASSED and "paid before a restart" in alarm.message
    assert not lane.state.carried
    # Honoured at most once: the code is now an ordinary (replayed) code.
    lane.arrive("v8")
    assert len(of_type(lane.scan(CARRIED_TEXT, "token"), Authorise)) == 1


def test_honoured_once_the_code_a_third_time_goes_to_the_authoriser() -> None:
    lane = LaneDriver()
    restarted(lane)
    lane.scan(CARRIED_TEXT, "token")
    through(lane)
    lane.arrive("v8")
    assert len(of_type(lane.scan(CARRIED_TEXT, "token"), Authorise)) == 1


def test_a_payment_older_than_the_dwell_waits_a_probe_for_the_device_then_is_refunded() -> None:
    lane = LaneDriver()
    lane.paid_carried(age_s=600.0)
    assert next_deadline(lane.state) == pytest.approx(lane.now + lane.state.rules.probe_s)
    actions = lane.tick_at_deadline()
    assert one(actions, Persist).ends_owed == CARRIED_RECORD


@pytest.mark.parametrize("how", ["report", "snapshot"])
def test_the_boom_up_at_the_restart_is_its_passage_not_an_unpaid_one(how: str) -> None:
    lane = LaneDriver()
    lane.paid_carried()
    lane.feed(ev.LinkChanged(up=True))
    if how == "report":  # the retained state comes first
        actions = lane.report("open")
    else:  # the device's answer: the driver still waits before the boom
        sensors = (("entry_loop", True), ("safety_loop", False))
        actions = lane.feed(ev.DeviceSnapshotted("open", sensors, "snap1"))
    note = PaidCarriedNote(CARRIED_VEHICLE, CARRIED_RECORD, CarriedStep.UNDER_OPEN_BOOM)
    assert note in actions
    assert lane.phase() is Phase.OPEN and of_type(actions, Persist) == []
    assert lane.state.command is None  # not closed in front of it
    actions = lane.cross()
    assert of_type(actions, Tailgating) == [] and of_type(actions, Persist) == []
    assert PassageServed(CARRIED_RECORD) in actions
    lane.ack(f"{CARRIED_VEHICLE}/close")
    assert lane.phase() is Phase.IDLE and "unpaid_passage" not in lane.monitor.alarms
    lane.monitor.check_outcomes()


def test_without_a_carried_payment_the_same_passage_is_an_unpaid_one() -> None:
    """The gap this closes: the restarted lane took the paying vehicle for a violator."""
    lane = LaneDriver()
    lane.feed(ev.LinkChanged(up=True))
    lane.report("open")
    actions = lane.sensor("safety_loop", True)
    assert one(actions, Persist).draft.kind == "violation"


def test_a_vehicle_under_the_boom_before_its_position_is_known_is_the_carried_one() -> None:
    """After a restart the queued readings come before the retained state."""
    lane = LaneDriver()
    lane.paid_carried()
    lane.sensor("safety_loop", True)
    actions = lane.report("open")
    assert of_type(actions, Persist) == [] and lane.phase() is Phase.OPEN
    passage = lane.state.passage
    assert passage is not None and passage.crossings == 1
    lane.sensor("safety_loop", False)
    lane.sensor("exit_loop", True)
    assert PassageServed(CARRIED_RECORD) in lane.sensor("exit_loop", False)


def test_up_for_it_but_never_seen_open_and_nobody_crosses_is_refunded_at_its_due() -> None:
    lane = LaneDriver()
    lane.paid_carried(age_s=50.0)
    lane.report("opening")  # up, never reported open
    assert lane.phase() is Phase.OPEN
    actions = lane.tick_at_deadline()
    assert one(actions, Persist).ends_owed == CARRIED_RECORD
    assert one(actions, PaidNotPassed).record_id == CARRIED_RECORD


def test_a_claimed_open_that_never_comes_is_refunded_as_today() -> None:
    lane = LaneDriver(rules(pass_dwell_s=5.0))
    restarted(lane)
    lane.scan(CARRIED_TEXT, "token")
    lane.feed(ev.BarrierAcked(f"{CARRIED_VEHICLE}/open", True, "closed"))  # never moves
    refunds = []
    for _ in range(10):
        refunds += [p for p in of_type(lane.tick_at_deadline(), Persist) if p.ends_owed]
        if refunds:
            break
    assert [p.ends_owed for p in refunds] == [CARRIED_RECORD]


def test_claimed_under_a_payment_fault_it_still_opens() -> None:
    """Nothing is charged or written, so a full queue does not hold it back."""
    lane = LaneDriver()
    restarted(lane)
    lane.feed(ev.QueueChanged(full=True, high_water=True))
    assert lane.phase() is Phase.FAULT
    lane.scan(CARRIED_TEXT, "token")
    assert lane.phase() is Phase.OPENING


def test_a_fare_gate_opens_for_its_passenger_too() -> None:
    lane = LaneDriver(rules(LaneMode.TRANSIT_ENTRY))
    restarted(lane)
    actions = lane.scan(CARRIED_TEXT, "token")
    assert one(actions, OpenBarrier).cmd_id == f"{CARRIED_VEHICLE}/open"
    assert of_type(actions, Authorise) == []


def gate_held_open(lane: LaneDriver) -> None:
    """A fare gate owing a carried passage, open past its hold for an attendant's passenger
    still under the curtain: closing, once the curtain clears."""
    restarted(lane)
    lane.feed(ev.AttendantOpen("att1", "help", "op1"))
    lane.persisted("att1")
    lane.ack()
    lane.sensor("safety_loop", True)
    lane.tick_at_deadline()  # the gate hold is over
    assert lane.phase() is Phase.CLOSING


def test_its_code_under_a_gate_still_open_takes_the_gate_over_at_once() -> None:
    """The carried code hands the open gate over in the same step, as a payment made durable
    there does (closing --scan--> open, found by test_invariants)."""
    lane = LaneDriver(rules(LaneMode.TRANSIT_ENTRY))
    gate_held_open(lane)
    actions = lane.scan(CARRIED_TEXT, "token")
    assert of_type(actions, Authorise) == [] and of_type(actions, Persist) == []
    assert of_type(actions, OpenBarrier) == []  # the gate is open already
    assert lane.phase() is Phase.OPEN
    passage = lane.state.passage
    assert passage is not None and passage.record_id == CARRIED_RECORD
    lane.sensor("safety_loop", False)  # the one before is through
    lane.sensor("safety_loop", True)
    assert PassageServed(CARRIED_RECORD) in lane.sensor("safety_loop", False)
    lane.ack(lane.last_command().cmd_id)
    assert lane.phase() is Phase.IDLE and not lane.state.carried
    lane.monitor.check_outcomes()


def test_two_owed_passages_each_is_honoured_once_the_boom_up_is_the_first_ones() -> None:
    """The next vehicle had paid under the open barrier when the lane died: both are owed;
    the boom found up is the first one's (its open went out first), the second one's code
    opens for it after."""
    lane = LaneDriver()
    lane.paid_carried()
    lane.paid_carried(text="282222222222222222", record_id="rec-next")
    assert lane.paid_carried() == []  # told twice: owed once
    lane.report("open")
    passage = lane.state.passage
    assert passage is not None and passage.record_id == CARRIED_RECORD
    lane.arrive("v9")
    assert of_type(lane.scan("282222222222222222"), Authorise) == []
    lane.cross()  # the first one through: the open barrier is handed over to the second
    passage = lane.state.passage
    assert passage is not None and passage.record_id == "rec-next"
    assert PassageServed("rec-next") in lane.cross()
    lane.ack(lane.last_command().cmd_id)
    assert lane.phase() is Phase.IDLE and not lane.state.carried
    lane.monitor.check_outcomes()


def test_every_approved_record_is_owed_and_a_refund_ends_it() -> None:
    """What the queue keeps: an approved payment's Persist owes its passage (the code's digest,
    never the code); a paid_not_passed record ends it in its own commit."""
    lane = LaneDriver(rules(pass_dwell_s=5.0))
    lane.arrive("v1")
    lane.scan()
    paid = one(lane.decide(), Persist)
    assert paid.owes is not None and "2812345" not in paid.owes and paid.ends_owed is None
    lane.persisted()
    passage = lane.state.passage
    assert passage is not None
    refunds: list[Persist] = []
    while not refunds:
        refunds = [p for p in of_type(lane.tick_at_deadline(), Persist) if p.ends_owed]
    assert refunds[0].owes is None and refunds[0].ends_owed == passage.record_id
    lane.monitor.check_outcomes()


# --- with a barrier fault kept over the same restart ----------------------------------------


def restarted_with(
    lane: LaneDriver,
    faults: tuple[Alarm, ...],
    paid_first: bool,
    marked_pass: str | None = None,
) -> str:
    """The shell hands over the kept faults, then the owed passages (lane.daemon); the core
    takes them in either order. Returns the carried vehicle's id in this run."""
    if paid_first:
        lane.paid_carried(marked_pass=marked_pass)
    for fault in faults:
        lane.carried(fault, KEPT_DETAILS[fault])
    if not paid_first:
        lane.paid_carried(marked_pass=marked_pass)
    lane.feed(ev.LinkChanged(up=True))
    return lane.state.carried[0].vehicle_id


def closes(actions: list[object]) -> list[str]:
    return [a.cmd_id for a in of_type(actions, CloseBarrier)]


@pytest.mark.parametrize("paid_first", [False, True], ids=["latch_first", "paid_first"])
@pytest.mark.parametrize(
    "faults",
    [(Alarm.BARRIER_NO_ACK,), (Alarm.BARRIER_STUCK, Alarm.BARRIER_NO_ACK)],
    ids=["no_ack", "stuck_and_no_ack"],
)
def test_with_a_carried_no_ack_the_boom_found_up_is_still_the_payers(
    faults: tuple[Alarm, ...], paid_first: bool
) -> None:
    """The test close a carried barrier_no_ack holds moved nothing: the open that went out
    before the crash was the payer's, so whoever passes under it is that payment's passage,
    not an unpaid one, and the test close waits until the vehicle is through (it would come
    down in front of it) before it goes out; its ack then clears the fault."""
    lane = LaneDriver(rules(probe_s=5.0))
    payer = restarted_with(lane, faults, paid_first)
    test_close = lane.state.command
    assert test_close is not None and test_close.cmd_id.endswith("/noack_test/close")
    actions = lane.report("open")
    assert PaidCarriedNote(payer, CARRIED_RECORD, CarriedStep.UNDER_OPEN_BOOM) in actions
    assert Alarm.BARRIER_STUCK not in lane.state.faults  # seen open: the boom works
    assert lane.phase() is Phase.FAULT  # barrier_no_ack holds until an ack
    while lane.now < 1000.0 + 20.0:  # three probes: the vehicle is not through yet
        assert closes(lane.tick_at_deadline()) == []
    actions = lane.cross()
    assert of_type(actions, Tailgating) == [] and of_type(actions, Persist) == []
    assert PassageServed(CARRIED_RECORD) in actions
    sent: list[str] = []
    while not sent:  # through: the next probe sends the test close
        sent = closes(lane.tick_at_deadline())
    assert sent == [test_close.cmd_id]
    actions = lane.feed(ev.BarrierAcked(test_close.cmd_id, True, "closing"), 0.05)
    assert DropLatch(Alarm.BARRIER_NO_ACK) in actions
    lane.report("closed")
    assert lane.phase() is Phase.IDLE and lane.state.faults == frozenset()
    assert "unpaid_passage" not in lane.monitor.alarms
    assert of_type(lane.actions, PaidNotPassed) == []
    lane.monitor.check_outcomes()


def test_a_boom_found_up_while_the_test_close_awaits_its_ack_is_not_taken() -> None:
    """A test close on its way may bring the boom down in front of the payer: the boom is not
    taken for its passage then (it would be served without passing). The close acked, the
    fault clears and the payer's code opens for it."""
    lane = LaneDriver(rules(probe_s=5.0))
    payer = restarted_with(lane, (Alarm.BARRIER_NO_ACK,), paid_first=False)
    sent: list[str] = []
    while not sent:
        sent = closes(lane.tick_at_deadline())
    actions = lane.report("open")  # the device's state, older than the close
    assert of_type(actions, PaidCarriedNote) == [] and lane.state.passage is None
    actions = lane.feed(ev.BarrierAcked(sent[0], True, "closing"), 0.05)
    assert PassageServed(CARRIED_RECORD) not in actions
    lane.report("closed")
    assert lane.phase() is Phase.IDLE and lane.state.carried
    lane.arrive("v7")
    assert one(lane.scan(CARRIED_TEXT, "token"), OpenBarrier).cmd_id == f"{payer}/open"
    through(lane)
    lane.monitor.check_outcomes()


def test_a_test_close_given_up_on_and_executed_late_in_front_of_the_payer_refunds_it() -> None:
    """Found up after the test close went unanswered, the boom is the payer's; if the device
    did execute that close (its ack comes late), the boom came down in front of the payer: not
    let through, refunded, never counted as through."""
    lane = LaneDriver(rules(probe_s=5.0, max_cmd_attempts=1))
    restarted_with(lane, (Alarm.BARRIER_NO_ACK,), paid_first=False)
    sent: list[str] = []
    while not sent:
        sent = closes(lane.tick_at_deadline())
    lane.tick_at_deadline()  # no ack in time: held for the next probe
    assert of_type(lane.report("open"), PaidCarriedNote)  # the payer's boom after all
    actions = lane.feed(ev.BarrierAcked(sent[0], True, "closing"), 0.05)
    assert PassageServed(CARRIED_RECORD) not in actions
    assert one(actions, Persist).ends_owed == CARRIED_RECORD
    assert one(actions, PaidNotPassed).record_id == CARRIED_RECORD
    lane.report("closed")
    assert lane.phase() is Phase.IDLE
    lane.monitor.check_outcomes()


def _unclaimed(lane: LaneDriver, marked_pass: str | None) -> list[Action]:
    restarted(lane, marked_pass=marked_pass)
    return lane.feed(ev.Tick(), lane.state.carried[0].due - lane.now)


def _claimed_never_opened(lane: LaneDriver, marked_pass: str | None) -> list[Action]:
    restarted(lane, marked_pass=marked_pass)
    lane.arrive("v7")
    lane.scan(CARRIED_TEXT, "token")
    lane.feed(ev.BarrierAcked(f"{CARRIED_VEHICLE}/open", True, "opening"), 0.05)  # never open
    actions: list[Action] = []
    while not of_type(actions, PaidNotPassed):
        actions = lane.tick_at_deadline()
    return actions


def _late_close(lane: LaneDriver, marked_pass: str | None) -> list[Action]:
    restarted_with(lane, (Alarm.BARRIER_NO_ACK,), paid_first=False, marked_pass=marked_pass)
    sent: list[str] = []
    while not sent:
        sent = closes(lane.tick_at_deadline())
    lane.tick_at_deadline()  # no ack in time: held for the next probe
    lane.report("open")  # the payer's boom after all
    return lane.feed(ev.BarrierAcked(sent[0], True, "closing"), 0.05)


@pytest.mark.parametrize("marked_pass", [None, "9f2c"], ids=["no_pass", "its_exit_marked_one"])
@pytest.mark.parametrize(
    "refunded",
    [_unclaimed, _claimed_never_opened, _late_close],
    ids=["unclaimed_at_its_due", "claimed_never_opened", "late_close_in_front_of_it"],
)
def test_every_refund_of_a_carried_payment_is_flagged_carried_and_releases_its_pass(
    refunded: Callable[[LaneDriver, str | None], list[Action]], marked_pass: str | None
) -> None:
    """However a carried payment ends unpassed, its refund record says it was paid before a
    restart: the back office and the operator tell it from a refund of this run's payment.
    And it gives back what a live refund does: the pass its exit marked (a metro tap-in),
    kept with the owed passage, is released and named in the refund's `pass_id`."""
    lane = LaneDriver(rules(probe_s=5.0, max_cmd_attempts=1))
    actions = refunded(lane, marked_pass)
    refund = one(actions, Persist)
    assert refund.draft.flags == ("paid_not_passed", f"record:{CARRIED_RECORD}", "carried")
    assert refund.ends_owed == CARRIED_RECORD and refund.draft.pass_id == marked_pass
    released = [r.pass_id for r in of_type(actions, ReleasePass)]
    assert released == ([] if marked_pass is None else [marked_pass])
    [alarm] = [a for a in of_type(actions, RaiseAlarm) if a.code == Alarm.PAID_NOT_PASSED]
    assert "paid before a restart" in alarm.message
    lane.monitor.check_outcomes()


def test_the_test_closes_own_late_ack_is_not_a_boom_found_up() -> None:
    """The position in an ack is where the command put the boom: never taken for the payer's
    (taken, and ended by that very close, it would be refunded at once; found by
    test_invariants). The payment stays owed: its code opens for it."""
    lane = LaneDriver(rules(probe_s=5.0, max_cmd_attempts=1))
    payer = restarted_with(lane, (Alarm.BARRIER_NO_ACK,), paid_first=False)
    sent: list[str] = []
    while not sent:
        sent = closes(lane.tick_at_deadline())
    lane.tick_at_deadline()  # no ack in time: held for the next probe
    actions = lane.feed(ev.BarrierAcked(sent[0], True, "open"), 0.05)
    assert DropLatch(Alarm.BARRIER_NO_ACK) in actions
    assert of_type(actions, PaidCarriedNote) == [] and of_type(actions, Persist) == []
    assert [c.record_id for c in lane.state.carried] == [CARRIED_RECORD]
    lane.report("closed")
    lane.arrive("v7")
    assert one(lane.scan(CARRIED_TEXT, "token"), OpenBarrier).cmd_id == f"{payer}/open"
    through(lane)
    assert of_type(lane.actions, PaidNotPassed) == []
    lane.monitor.check_outcomes()


def test_a_refused_test_close_sent_again_once_the_refusal_clears_waits_for_the_payer() -> None:
    """The device refused the test close (barrier_refused, held for a report to clear): the
    boom found up is the payer's, and the report that clears the refusal does not send the
    held close in front of it (found by seeded random walks); it goes once the vehicle is
    through."""
    lane = LaneDriver(rules(probe_s=5.0))
    restarted_with(lane, (Alarm.BARRIER_NO_ACK,), paid_first=False)
    sent: list[str] = []
    while not sent:
        sent = closes(lane.tick_at_deadline())
    lane.feed(ev.BarrierAcked(sent[0], False, "open", "jammed"), 0.05)
    assert lane.state.faults == {Alarm.BARRIER_REFUSED}
    actions = lane.report("open")  # clears the refusal
    assert of_type(actions, PaidCarriedNote) and lane.state.faults == frozenset()
    assert closes(actions) == [] and lane.phase() is Phase.CLOSING
    lane.sensor("safety_loop", True)
    assert closes(lane.sensor("safety_loop", False)) == []  # under it, not through yet
    lane.sensor("exit_loop", True)
    actions = lane.sensor("exit_loop", False)
    assert PassageServed(CARRIED_RECORD) in actions and closes(actions) == [sent[0]]
    lane.ack(sent[0])
    assert lane.phase() is Phase.IDLE and of_type(lane.actions, Tailgating) == []
    lane.monitor.check_outcomes()


def test_under_a_carried_no_ack_its_code_is_refused_and_it_is_refunded_at_its_due() -> None:
    """Claimed under a device that drops commands, the vehicle would wait for an open that
    never comes, its payment neither through nor refunded: the code is refused like any, the
    payment stays owed and is refunded at its due, the device still deaf."""
    lane = LaneDriver(rules(probe_s=5.0))
    restarted_with(lane, (Alarm.BARRIER_NO_ACK,), paid_first=False)
    lane.report("closed")
    lane.arrive("v7")
    actions = lane.scan(CARRIED_TEXT, "token")
    assert of_type(actions, OpenBarrier) == [] and of_type(actions, PaidCarriedNote) == []
    assert "barrier_no_ack" in one(actions, ScanRefused).reason
    refunds: list[Persist] = []
    while not refunds:
        refunds = [p for p in of_type(lane.tick_at_deadline(), Persist) if p.ends_owed]
    assert [p.ends_owed for p in refunds] == [CARRIED_RECORD]
    assert lane.now == pytest.approx(1000.0 + 60.0)
    lane.monitor.check_outcomes()


@pytest.mark.parametrize("paid_first", [False, True], ids=["latch_first", "paid_first"])
def test_with_a_carried_stuck_latch_the_boom_found_up_is_the_payers_and_clears_the_latch(
    paid_first: bool,
) -> None:
    lane = LaneDriver()
    payer = restarted_with(lane, (Alarm.BARRIER_STUCK,), paid_first)
    actions = lane.report("open")
    assert PaidCarriedNote(payer, CARRIED_RECORD, CarriedStep.UNDER_OPEN_BOOM) in actions
    assert DropLatch(Alarm.BARRIER_STUCK) in actions and lane.state.latch is None
    assert lane.phase() is Phase.OPEN
    actions = lane.cross()
    assert of_type(actions, Tailgating) == [] and PassageServed(CARRIED_RECORD) in actions
    lane.ack(f"{payer}/close")
    assert lane.phase() is Phase.IDLE and lane.state.faults == frozenset()
    lane.monitor.check_outcomes()


def test_with_a_carried_stuck_latch_its_code_opens_and_the_boom_seen_open_clears_it() -> None:
    """The latch refuses payment, not a payer owed its passage: nothing is charged, and the
    open is the boom's test too (a late open clears a latch)."""
    lane = LaneDriver()
    payer = restarted_with(lane, (Alarm.BARRIER_STUCK,), paid_first=False)
    lane.report("closed")
    lane.arrive("v7")
    actions = lane.scan(CARRIED_TEXT, "token")
    assert one(actions, OpenBarrier).cmd_id == f"{payer}/open"
    assert DropLatch(Alarm.BARRIER_STUCK) in through(lane)
    assert lane.phase() is Phase.IDLE and lane.state.faults == frozenset()
    assert of_type(lane.actions, Authorise) == [] and of_type(lane.actions, Persist) == []
    lane.monitor.check_outcomes()


def test_with_a_carried_stuck_latch_still_stuck_its_code_opens_in_vain_and_is_refunded() -> None:
    lane = LaneDriver(rules(move_s=4.0))
    payer = restarted_with(lane, (Alarm.BARRIER_STUCK,), paid_first=False)
    lane.report("closed")
    lane.scan(CARRIED_TEXT, "token")
    lane.feed(ev.BarrierAcked(f"{payer}/open", True, "opening"), 0.05)  # never up
    refunds: list[Persist] = []
    while not refunds:
        refunds = [p for p in of_type(lane.tick_at_deadline(), Persist) if p.ends_owed]
    assert [p.ends_owed for p in refunds] == [CARRIED_RECORD]
    assert lane.state.latch is not None and Alarm.BARRIER_STUCK in lane.state.faults
    lane.monitor.check_outcomes()
