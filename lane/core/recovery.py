"""How the lane gets out of every wait by itself (issue #11): a bounded dwell in each phase, the
barrier's commanded position checked against what the device reports, a paid vehicle that was
never let through, and a vehicle under a boom the lane did not open.

Pure like the rest of the core. `machine.step` calls `settle` right after every event's
handler (the barrier's position clears `barrier_stuck_open` and `unpaid_passage`), `after_step` at
the end of it (other alarms whose cause is gone clear, the phase's dwell is (re)armed) and
`on_tick` on every Tick (what is overdue is raised and answered); `deadline` is this module's
share of `next_deadline`.

The way out of each phase once its dwell is over: the lane raises `lane_stuck` naming the
phase and what it waits for, and asks the device for its whole truth (QueryDevice). The
answer (DeviceSnapshotted) settles what a lost message left open: a vehicle gone from the pay
point, a vehicle through whose exit-loop edge was lost, an open barrier nobody paid for. In
FAULT the ask is repeated every `probe_s`, and a command held by `barrier_no_ack` or
`barrier_refused` is sent again, so a device that answers again clears the fault.

A boom that did not open when commanded latches `barrier_stuck` (state.StuckLatch): it holds
until the device reports the boom open, not merely until the lane stops wanting it up, so the
drivers behind are not charged and refunded one by one. Its cure is a self-test: at an empty
lane, on a doubling backoff, the lane asks the device for its truth; if that answer says nobody
is on a loop or under the boom, it commands an open of its own (`{snapshot id}/selftest/open`,
no passage, no record), closes again at once when someone comes, and closes after the test
either way. Seen open, the latch and the alarm clear and the lane takes payments again.
A boom that did not close when commanded raises `barrier_stuck_open` (state.StuckOpen), a notice:
it holds until the device reports the boom closed, not merely until the next command's position
is "reached" (a paid vehicle's open is, at once, under a boom that is up), so it lasts under
traffic. The lane keeps taking payments: refusing at an open boom would turn every driver into
an unpaid passage, and one who does not pay is recorded as such anyway. Its cure is the close
commanded again: at an empty lane, on the self-tests' doubling backoff, the lane asks the
device, and its answer (an open boom nobody paid for) commands the close. Nothing is kept over
a restart: the restarted lane asks the device at its start, and closes a boom found up for
nobody, which raises the alarm again if it does not come down.
A device that drops commands raises `barrier_no_ack`, which only an ack of a command clears:
a paid vehicle's open given up under it is replaced by a test close at the empty lane, probed
every `probe_s` like any held command.
A paid vehicle whose record is durable while a blocking fault keeps the barrier from opening
for it (it became durable under the fault, or the fault came while it waited) is held: told
to wait, opened for if the fault clears within `pass_dwell_s` of its record's commit, else
refunded (`paid_not_passed`) and let go at that due, as a passage never opened for.

Both outlive a restart (names.KEPT_LATCHES): the lane asks the shell to keep each on disk as it
is raised and to drop it as it clears (KeepLatch, DropLatch), and is told of a kept one at
start-up (LatchCarried, `carried`): the stuck latch starts its self-tests over, a carried
`barrier_no_ack` sends a test close of its own.
"""

from __future__ import annotations

from dataclasses import replace

from lane.core import events as ev
from lane.core.actions import (
    Action,
    CloseBarrier,
    DropLatch,
    KeepLatch,
    OpenBarrier,
    Persist,
    QueryDevice,
    ReleasePass,
    ShowOnDisplay,
)
from lane.core.alarms import add_fault, clear_notice, raise_notice, remove_fault
from lane.core.backoff import Backoff
from lane.core.display import ASSISTANCE, LANE_CLOSED, paid_wait
from lane.core.names import (
    BARRIER_DOWN,
    BLOCKING_FAULTS,
    BOOM_UP,
    COMMAND_FAULTS,
    Alarm,
    AuthResult,
    Method,
    Op,
    Position,
    RecordKind,
)
from lane.core.notes import BarrierSelfTest, PaidNotPassed, SelfTestStep, Tailgating
from lane.core.records import FLAG_RECORD, REFUND_FLAG, AuthInfo, RecordDraft
from lane.core.state import (
    RECORD_KINDS,
    Command,
    Committed,
    Expectation,
    LaneState,
    Passage,
    Phase,
    StuckLatch,
    StuckOpen,
    Vehicle,
    phase,
)

Result = tuple[LaneState, list[Action]]

WAITS_FOR = {
    Phase.IDLE: "the barrier to close",
    Phase.CLOSED: "the barrier to close",
    Phase.VEHICLE_PRESENT: "a code from the driver, or the vehicle to leave the pay point",
    Phase.DENIED: "another code, an attendant, or the vehicle to leave the pay point",
    Phase.AUTHORISING: "the authoriser's answer",
    Phase.PERSISTING: "the record to be written",
    Phase.OPENING: "the barrier to acknowledge the open",
    Phase.OPEN: "the vehicle to pass the exit loop",
    Phase.CLOSING: "the safety area to clear and the barrier to close",
    Phase.FAULT: "the fault to clear",
}


def dwell_limit(state: LaneState, ph: Phase) -> float | None:
    """How long the lane may stay in `ph` before it looks for a way out (None: for ever)."""
    r = state.rules
    if ph in (Phase.IDLE, Phase.CLOSED):
        # Idle is for ever, but not with the boom up: nobody paid for that. Known stuck open,
        # the lane asks on its own backoff (and says so in its own alarm).
        return r.move_s if state.barrier in BOOM_UP and state.stuck_open is None else None
    if ph is Phase.FAULT:
        return r.probe_s
    if ph in (Phase.VEHICLE_PRESENT, Phase.DENIED):
        return r.pay_dwell_s
    if ph is Phase.AUTHORISING:
        return r.budget_s + r.auth_grace_s + r.probe_s  # a backstop: the attempt's own deadline
    if ph is Phase.PERSISTING:
        return r.persist_dwell_s
    if ph is Phase.OPENING:
        return r.ack_timeout_s * r.max_cmd_attempts + r.move_s
    return r.pass_dwell_s


def deadline(state: LaneState) -> list[float]:
    """The times at which a Tick makes this module do something."""
    out = [] if state.dwell_at is None else [state.dwell_at]
    if state.expect is not None and not state.expect.overdue:
        out.append(state.expect.by)
    for due in (_not_passed_due(state), _held_due(state)):
        if due is not None:
            out.append(due)
    if state.latch is not None and _may_test(state):
        out.append(state.latch.test_at)
    if state.stuck_open is not None and _empty(state):
        out.append(state.stuck_open.retry_at)
    return out


def expect(state: LaneState, op: Op, acked: Position, now: float) -> LaneState:
    """The device acknowledged a move (its ack says the boom is now `acked`): it must report
    the position within `move_s`. A close still owed (not reached, not judged yet) is not let
    off by the commands after it: a later close keeps its deadline, and an open acked `open`
    while the boom was never seen leaving `open` (not `closing`, as a drive that moves says in
    its ack) is reached already and leaves the close to be judged, so a boom that sticks up
    between two vehicles is seen however soon the next one pays."""
    target = Position.OPEN if op == Op.OPEN else Position.CLOSED
    owed = state.expect
    if owed is not None and owed.target == Position.CLOSED and not owed.overdue:
        if target == Position.CLOSED:
            return state
        if acked == Position.OPEN and state.barrier == Position.OPEN:
            return state
    return replace(state, expect=Expectation(target, now + state.rules.move_s))


def query(state: LaneState, reason: str) -> Result:
    n = state.queries + 1
    return replace(state, queries=n), [QueryDevice(f"q{n}", reason)]


def settle(state: LaneState) -> Result:
    """What the barrier's position (as the step left it) settles: the expected position
    reached ends the wait for it, a boom seen open the latch (`barrier_stuck`), a closed boom
    `barrier_stuck_open` and `unpaid_passage`. `machine.step` calls it straight after the
    event's handler, so the rest of the step (an entry lane's pass and entry record, which wait
    for a lane that takes vehicles) sees the fault gone."""
    actions: list[Action] = []
    target = state.expect
    if target is not None and state.barrier == target.target:
        state = replace(state, expect=None)
    if state.latch is not None:
        state, actions = _latched(state)
    if state.barrier == Position.CLOSED:
        state = replace(state, stuck_open=None)
        for notice in (Alarm.BARRIER_STUCK_OPEN, Alarm.UNPAID_PASSAGE):
            state, more = clear_notice(state, notice)
            actions += more
    return state, actions


def after_step(state: LaneState, event: ev.Event, before: Phase, now: float) -> Result:
    # A held vehicle's due may be past in any step (a fault raised for one that has waited
    # behind the vehicle before for longer): given up at once, not left overdue.
    state, actions = _held_over(state, now)
    passage = state.passage
    if passage is not None and state.barrier == Position.OPEN and not passage.seen_open:
        state = replace(state, passage=replace(passage, seen_open=True))
    if isinstance(event, ev.AttendantOpen | ev.AttendantReopenLane) or (
        passage is not None and passage.left
    ):
        # An attendant took over, or the lane lets vehicles through again.
        state, more = clear_notice(state, Alarm.PAID_NOT_PASSED)
        actions += more
    # Any step may be the one that empties the lane with a self-test (or a close of a boom
    # stuck open) overdue: ask at once.
    state, more = _self_test_due(state, now)
    actions += more
    state, more = _close_again_due(state, now)
    actions += more
    ph = phase(state)
    limit = dwell_limit(state, ph)
    if ph != before or limit is None:
        state, more = clear_notice(state, Alarm.LANE_STUCK)
        actions += more
        state = replace(state, dwell_at=None if limit is None else now + limit)
    elif state.dwell_at is None:
        state = replace(state, dwell_at=now + limit)
    return state, actions


def on_tick(state: LaneState, now: float) -> Result:
    actions: list[Action] = []
    target = state.expect
    if target is not None and not target.overdue and now >= target.by:
        state = replace(state, expect=replace(target, overdue=True))
        if target.target == Position.OPEN:
            state, more = _not_opened(state, now, state.rules.move_s)
            actions += more
            state, more = query(state, "barrier_stuck")
            actions += more
        elif state.stuck_open is None:
            state, more = _not_closed(state, now)
            actions += more
        # (Stuck open already: the backoff of the close asks the device again.)
    due = _not_passed_due(state)
    if due is not None and now >= due:
        state, more = _not_let_through(state, now)
        actions += more
    if state.dwell_at is not None and now >= state.dwell_at:
        state, more = _dwell_over(state, now)
        actions += more
    return state, actions


def start_self_test(state: LaneState, event_id: str, sensors: dict[str, bool]) -> Result:
    """The device's answer to a self-test's query: test the boom if the lane is still empty
    and the device, too, sees nobody on a loop or under the boom."""
    latch = state.latch
    if latch is None or not latch.asked:
        return state, []
    latch = replace(latch, asked=False)
    state = replace(state, latch=latch)
    if not _may_test(state) or any(sensors.values()):
        return state, [BarrierSelfTest(SelfTestStep.SKIPPED)]
    test_id = f"{event_id}/selftest"
    command = Command(f"{test_id}/open", Op.OPEN, 0, None)
    state = replace(state, latch=replace(latch, test_id=test_id), command=command)
    return state, [BarrierSelfTest(SelfTestStep.STARTED, test_id)]


def _may_test(state: LaneState) -> bool:
    """A self-test may open the boom: latched, no test running, an empty lane with the boom
    down."""
    latch = state.latch
    return (
        latch is not None
        and latch.test_id is None
        and _empty(state)
        and state.barrier == Position.CLOSED
    )


def _empty(state: LaneState) -> bool:
    """The lane may move the boom for nobody: nobody it knows of at the pay point or under the
    boom, no command, and no attendant closure (someone may be working on the boom). The
    device's state is the caller's to judge (a self-test wants the boom reported down)."""
    return (
        state.vehicle is None
        and state.passage is None
        and state.command is None
        and not state.occupied
        and not state.blocked
        and state.closed_reason is None
    )


def _self_test_due(state: LaneState, now: float) -> Result:
    """Ask the device first: its answer (start_self_test) names the test and confirms the
    lane is empty. The next try is due after twice the wait, capped."""
    latch = state.latch
    if latch is None or now < latch.test_at or not _may_test(state):
        return state, []
    tries = latch.tries + 1
    latch = replace(latch, test_at=now + _wait(state, tries), tries=tries, asked=True)
    return query(replace(state, latch=latch), "self-test of a boom that did not open")


def _close_again_due(state: LaneState, now: float) -> Result:
    """A boom stuck open, at an empty lane: ask the device; its answer closes a boom up for
    nobody (machine._on_snapshot), or says it is closed already. The next try is due after
    twice the wait, capped."""
    stuck = state.stuck_open
    if stuck is None or now < stuck.retry_at or not _empty(state):
        return state, []
    tries = stuck.tries + 1
    state = replace(state, stuck_open=StuckOpen(now + _wait(state, tries), tries))
    return query(state, "close again: boom stuck open")


def _wait(state: LaneState, tries: int) -> float:
    """The wait before the next self-test (or close again) after `tries` of them."""
    rules = state.rules
    return Backoff(rules.selftest_s, rules.selftest_max_s).delay(tries + 1)


def _stuck_detail(state: LaneState, target: Position, after_s: float) -> str:
    return f"commanded {target}, device reports {state.barrier} after {after_s:g} s"


def _backoff_terms(state: LaneState) -> str:
    r = state.rules
    return f"every {r.selftest_s:g} s doubling to {r.selftest_max_s:g} s while nobody is there"


def _latch_terms(state: LaneState) -> str:
    return f"lane closed to payments until the boom is seen open, self-test {_backoff_terms(state)}"


def _not_closed(state: LaneState, now: float) -> Result:
    """The boom was commanded closed and not seen closed: `barrier_stuck_open` until it is.
    The lane asks the device at once (a lost report, or a boom up for nobody to close again)."""
    state = replace(state, stuck_open=StuckOpen(now + _wait(state, 0)))
    detail = _stuck_detail(state, Position.CLOSED, state.rules.move_s)
    # Within the health message's text limit (barrier.messages.MAX_TEXT) at any setting.
    message = (
        f"barrier stuck open: {detail}, since that close; payments go on, unpaid passages"
        " recorded; clears when the device reports closed: close sent again"
        f" {_backoff_terms(state)}"
    )
    state, actions = raise_notice(state, Alarm.BARRIER_STUCK_OPEN, message)
    state, more = query(state, "barrier_stuck_open")
    return state, actions + more


def _not_opened(state: LaneState, now: float, after_s: float) -> Result:
    """The boom was commanded open and not seen open: `barrier_stuck`, latched."""
    detail = _stuck_detail(state, Position.OPEN, after_s)
    state, actions = _failed_open(state, now, detail)
    state, more = add_fault(state, Alarm.BARRIER_STUCK, f"{detail}; {_latch_terms(state)}")
    return state, actions + more


def _failed_open(state: LaneState, now: float, detail: str) -> Result:
    """The boom was not seen open in time: latch (kept on disk), or end a failed self-test."""
    latch = state.latch
    if latch is None:
        return _latch(state, now), [KeepLatch(Alarm.BARRIER_STUCK, detail)]
    if latch.test_id is None:
        return state, []
    return _end_test(state, latch.test_id, SelfTestStep.FAILED)


def _latch(state: LaneState, now: float) -> LaneState:
    """Latched: the self-tests start over from the shortest wait."""
    return replace(state, latch=StuckLatch(now + _wait(state, 0)))


def carried(state: LaneState, event: ev.LatchCarried, now: float) -> Result:
    """Start-up with a fault kept from before: raised again (its text says so), payments
    refused until what clears it while the lane runs clears it. It is on disk already:
    nothing to keep."""
    since = f"latched since {event.since} (carried over a restart): {event.detail}"
    match event.fault:
        case Alarm.BARRIER_STUCK if state.latch is None:
            # Latched as it was; the self-tests clear it once the boom is seen open.
            return add_fault(
                _latch(state, now), Alarm.BARRIER_STUCK, f"{since}; {_latch_terms(state)}"
            )
        case Alarm.BARRIER_NO_ACK if Alarm.BARRIER_NO_ACK not in state.faults:
            terms = (
                "lane closed to payments until the barrier acks a command, a test close sent"
                f" every {state.rules.probe_s:g} s"
            )
            state, actions = add_fault(state, Alarm.BARRIER_NO_ACK, f"{since}; {terms}")
            if state.command is None:
                # What the lane waited for died with the process: a test close takes its place,
                # as after a refund, so the device's first ack clears the fault.
                state = replace(state, command=_no_ack_test(event.event_id))
            return state, actions
        case _:
            return state, []  # raised already, or not a fault the lane keeps


def no_ack(state: LaneState, detail: str) -> Result:
    """A command went unanswered `max_cmd_attempts` times: `barrier_no_ack`, kept on disk so
    a restart under a device that still drops commands refuses the next driver too."""
    state, actions = add_fault(state, Alarm.BARRIER_NO_ACK, detail)
    if actions:
        actions.append(KeepLatch(Alarm.BARRIER_NO_ACK, detail))
    return state, actions


def acked(state: LaneState) -> Result:
    """The device acked the command the lane waited for: `barrier_no_ack` clears, on disk too."""
    state, actions = remove_fault(state, Alarm.BARRIER_NO_ACK)
    if actions:
        actions.append(DropLatch(Alarm.BARRIER_NO_ACK))
    return state, actions


NO_ACK_TEST = "/noack_test/close"


def _no_ack_test(owner: str) -> Command:
    """A close sent for nobody under `barrier_no_ack`: its ack is what clears the fault (an
    answer to a query or a report only says the device is there)."""
    return Command(f"{owner}{NO_ACK_TEST}", Op.CLOSE, 0, None)


def close_waits(state: LaneState) -> bool:
    """A close is held: rule 3 (the safety area is occupied), and never in front of the
    vehicle the boom is up for (a carried barrier_no_ack's test close, held under a boom found
    up for a payer: lane.core.carried), however the close is sent (a drive, a probe)."""
    passage = state.passage
    return state.safety_occupied or (passage is not None and not passage.left)


def held_test_close(cmd: Command | None) -> bool:
    """`cmd` is a `barrier_no_ack` test close not on its way to the device: it moved nothing
    and moves nothing before the probe sends it. One sent and not answered yet may still
    bring the boom down."""
    return (
        cmd is not None
        and cmd.cmd_id.endswith(NO_ACK_TEST)
        and not cmd.acked
        and cmd.ack_deadline is None
    )


def _latched(state: LaneState) -> Result:
    """Seen open: the boom works, the latch and its alarm clear. Someone at the pay point or
    under the boom while a test runs, or an attendant closing the lane: the test ends and the
    boom comes down (once the area is clear); a vehicle under it meanwhile is an unpaid
    passage like any other."""
    latch = state.latch
    assert latch is not None
    test_id = latch.test_id
    if state.barrier == Position.OPEN:
        state, actions = remove_fault(replace(state, latch=None), Alarm.BARRIER_STUCK)
        actions.append(DropLatch(Alarm.BARRIER_STUCK))
        if test_id is None:
            return state, actions
        state, more = _end_test(state, test_id, SelfTestStep.PASSED)
        return state, actions + more
    present = state.vehicle is not None or state.passage is not None or state.safety_occupied
    if test_id is not None and (present or state.closed_reason is not None):
        return _end_test(state, test_id, SelfTestStep.ABORTED)
    return state, []


def _end_test(state: LaneState, test_id: str, how: SelfTestStep) -> Result:
    """The test is over: the boom is commanded down (a drive that frees itself later must
    not rise for nobody), with the test's own close id."""
    if state.latch is not None:
        state = replace(state, latch=replace(state.latch, test_id=None))
    cmd = state.command
    if cmd is not None and cmd.cmd_id == f"{test_id}/open":
        state = replace(state, command=Command(f"{test_id}/close", Op.CLOSE, 0, None))
    return state, [BarrierSelfTest(how, test_id)]


def unpaid_passage(state: LaneState, event_id: str) -> Result:
    """A vehicle went under a boom the lane did not open for it: a violation and an alarm."""
    vehicle_class = state.next_class if state.next_class is not None else state.rules.default_class
    flags = ("unpaid_passage", f"barrier:{state.barrier}")
    state, actions = violation(state, event_id, vehicle_class, flags)
    state, alarm = raise_notice(
        state,
        Alarm.UNPAID_PASSAGE,
        f"a vehicle passed under the {state.barrier} barrier the lane did not open for it",
    )
    return state, actions + alarm


def violation(state: LaneState, after: str, vehicle_class: int, flags: tuple[str, ...]) -> Result:
    """A vehicle through without a record of its own: a violation record and a note."""
    n = state.violations + 1
    persist_id = f"{after}/violation/{n}"
    draft = _uncharged(
        kind=RecordKind.VIOLATION, vehicle_id=persist_id, vehicle_class=vehicle_class
    )
    actions: list[Action] = [
        Persist(persist_id, replace(draft, flags=flags)),
        Tailgating(after, flags),
    ]
    return replace(state, violations=n), actions


def _uncharged(kind: RecordKind, vehicle_id: str, vehicle_class: int) -> RecordDraft:
    """A record that charges nothing and took no payment."""
    none = AuthInfo(AuthResult.NONE)
    return RecordDraft(kind, vehicle_id, vehicle_class, 0, "", Method.NONE, None, none)


def _not_passed_due(state: LaneState) -> float | None:
    """When a paid vehicle the barrier never opened for (and nothing crossed) is given up on.
    Once the device said open, the vehicle was let through: waiting longer is `lane_stuck`."""
    p = state.passage
    if p is None or p.crossings or p.left or p.seen_open:
        return None
    return p.since + state.rules.pass_dwell_s


def _not_let_through(state: LaneState, now: float) -> Result:
    """Paid, and not let through: a record the back office refunds from, an alarm that calls
    the attendant; the lane stops waiting for this passage."""
    p = state.passage
    assert p is not None
    cmd = state.command
    keep = cmd if cmd is not None and cmd.op == Op.CLOSE else None
    if keep is None and Alarm.BARRIER_NO_ACK in state.faults:
        # The open went unanswered: a test close takes its place, probed like any held
        # command; anything short of an ack would let the next driver pay for a dead boom.
        keep = _no_ack_test(p.vehicle_id)
    state = replace(state, passage=None, command=keep)
    latched: list[Action] = []
    target = state.expect
    if target is not None and target.target == Position.OPEN:
        if not target.overdue:  # acked, never seen open (a pass dwell shorter than a move)
            state, latched = _not_opened(state, now, now - p.since)
        # Whatever the barrier does now, the lane wants it closed.
        state = replace(state, expect=Expectation(Position.CLOSED, now + state.rules.move_s))
    state, actions = passage_not_passed(state, p)
    return state, actions + latched


def _held(state: LaneState) -> tuple[Vehicle, str, float] | None:
    """The vehicle whose record is durable and whom a blocking fault keeps the barrier from
    opening for (machine._drive opens for it once the fault clears), its record id and its
    due: `pass_dwell_s` from its record's commit, as a passage waits from its open (one rule
    for every paid vehicle not let through, a carried one's too)."""
    vehicle = state.vehicle
    stage = vehicle.stage if vehicle is not None else None
    if vehicle is None or not isinstance(stage, Committed) or not state.blocked:
        return None
    if stage.record_id is None or stage.durable_at is None:
        return None
    return vehicle, stage.record_id, stage.durable_at + state.rules.pass_dwell_s


def _held_due(state: LaneState) -> float | None:
    found = _held(state)
    return None if found is None else found[2]


def _held_over(state: LaneState, now: float) -> Result:
    """Held all its wait: refunded and let go like a passage never opened for. The barrier
    must not rise hours later, when the fault clears, for whoever is at the lane then."""
    found = _held(state)
    if found is None or now < found[2]:
        return state, []
    vehicle, record_id, _ = found
    state = replace(state, vehicle=None)
    return not_passed(
        state,
        vehicle.vehicle_id,
        vehicle.vehicle_class,
        record_id,
        manual=vehicle.manual is not None,
        carried=vehicle.carried,
        marked_pass=vehicle.marked_pass,
        entered_pass=vehicle.entered_pass,
    )


def tell_held(
    before: LaneState, after: LaneState, actions: list[Action], now: float
) -> list[Action]:
    """A held vehicle is told to wait as its hold begins, and instead of "Lane closed" (a fault
    raised, its code read again): told to use another lane, it would drive off paid and owed."""
    found = _held(after)
    if found is None:
        return actions
    vehicle, _, due = found
    closed = LANE_CLOSED in actions
    if not closed and _held_due(before) is not None:
        return actions
    paid = vehicle.approved is not None or vehicle.carried  # not an attendant's or entry's
    wait = paid_wait(max(due - now, 0.0), gate=after.rules.mode.fare_gate, paid=paid)
    return [*(a for a in actions if a != LANE_CLOSED), wait]


def passage_not_passed(state: LaneState, p: Passage) -> Result:
    """`not_passed` for the vehicle of a passage, a carried payment's too (however the
    passage ends)."""
    return not_passed(
        state,
        p.vehicle_id,
        p.vehicle_class,
        p.record_id,
        manual=p.manual,
        carried=p.carried,
        marked_pass=p.marked_pass,
        entered_pass=p.entered_pass,
    )


def not_passed(
    state: LaneState,
    vehicle_id: str,
    vehicle_class: int,
    record_id: str,
    *,
    manual: bool = False,
    carried: bool = False,
    marked_pass: str | None = None,
    entered_pass: str | None = None,
) -> Result:
    """The record the back office refunds from (`record:<id>`, it ends the passage the queue
    kept as owed in the same commit; `carried`: paid before a restart, lane.core.carried), its
    note and alarm, the attendant called. The one place a refund's flags are built. What the
    refunded record spent is given back: its tap-in no longer counts for anti-passback, the
    pass its exit marked used (`marked_pass`) is released. The refund names that pass in its
    `pass_id`: an entry's the pass the entry issued (`entered_pass`: the back office closes the
    trip it opened), an exit's the pass it gives back (a metro line's other gates reopen the
    tap-in they heard this exit close, lane.tap_desk)."""
    kind = RecordKind.MANUAL if manual else RECORD_KINDS[state.rules.mode]
    flags = (REFUND_FLAG, f"{FLAG_RECORD}{record_id}", *(("carried",) if carried else ()))
    draft = replace(
        _uncharged(kind, vehicle_id, vehicle_class),
        flags=flags,
        pass_id=entered_pass or marked_pass,
    )
    faults = ", ".join(sorted(state.faults & BLOCKING_FAULTS))
    cause = f"barrier {state.barrier}" + (f", lane in fault: {faults}" if faults else "")
    waited = f"{state.rules.pass_dwell_s:g} s ({cause})"
    message = _not_passed_text(kind, vehicle_id, record_id, waited, carried=carried)
    state, alarm = raise_notice(state, Alarm.PAID_NOT_PASSED, message)
    state = replace(state, taps=tuple(t for t in state.taps if t.record_id != record_id))
    actions: list[Action] = [
        Persist(f"{vehicle_id}/not_passed", draft, ends_owed=record_id),
        PaidNotPassed(vehicle_id, record_id),
        ShowOnDisplay((ASSISTANCE,)),
        *alarm,
    ]
    if marked_pass is not None:
        actions.append(ReleasePass(marked_pass, record_id))
    return state, actions


def _not_passed_text(
    kind: RecordKind, vehicle_id: str, record_id: str, waited: str, *, carried: bool
) -> str:
    """The `paid_not_passed` alarm's text, true to what the record undoes: a payment, which
    the back office refunds; an attendant's open or an entry lane's entry, which charged
    nothing."""
    match kind:
        case RecordKind.MANUAL:
            # The attendant who pressed open is told that the lane forgot it, so a later open
            # is theirs to give.
            return (
                f"attendant open for {vehicle_id} (record {record_id}) not carried out in"
                f" {waited}: given up, the barrier will not rise for it later; open again once"
                " the barrier works"
            )
        case RecordKind.ENTRY:
            return (
                f"vehicle {vehicle_id} let on (entry record {record_id}) was not let through in"
                f" {waited}: attendant, please help; nothing was charged, a record undoing the"
                " entry is written (the printed pass stays valid)"
            )
        case _:
            before = " (paid before a restart)" if carried else ""
            return (
                f"vehicle {vehicle_id} paid (record {record_id}){before} and was not let"
                f" through in {waited}: attendant, please help; a refund record is written"
            )


def _dwell_over(state: LaneState, now: float) -> Result:
    ph = phase(state)
    limit = dwell_limit(state, ph)
    if limit is None:
        return replace(state, dwell_at=None), []  # what it waited for happened in this tick
    state = replace(state, dwell_at=now + limit)
    waits = WAITS_FOR[ph]
    state, actions = query(state, f"{ph.value}: waiting for {waits}")
    if ph is Phase.FAULT:
        state, more = _probe(state, now)
        return state, actions + more
    message = f"lane stuck in {ph.value} for {limit:g} s: waiting for {waits}"
    if ph in (Phase.IDLE, Phase.CLOSED):
        message += f" (device reports {state.barrier})"
    state, more = raise_notice(state, Alarm.LANE_STUCK, message)
    return state, actions + more


def _probe(state: LaneState, now: float) -> Result:
    """Send a command held by a command fault once more: an ack is what clears the fault."""
    cmd = state.command
    if cmd is None or cmd.acked or cmd.ack_deadline is not None:
        return state, []
    if not (state.faults & BLOCKING_FAULTS) <= COMMAND_FAULTS or state.barrier in BARRIER_DOWN:
        return state, []
    if cmd.op == Op.CLOSE and close_waits(state):
        return state, []
    rules = state.rules
    attempt = min(cmd.attempt + 1, rules.max_cmd_attempts)
    held = replace(cmd, attempt=attempt, ack_deadline=now + rules.ack_timeout_s, retry_at=None)
    kind = OpenBarrier if cmd.op == Op.OPEN else CloseBarrier
    return replace(state, command=held), [kind(cmd.cmd_id, now + rules.cmd_ttl_s, attempt)]
