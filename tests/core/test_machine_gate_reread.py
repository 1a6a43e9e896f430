"""A code read again at a fare gate (lane.core.reread): the phone of the passenger the code let
through, still held up, is not a new passenger; it reaches no acquirer, makes no record, opens
nothing and leaves the display as it is. Once that passenger walked through and the gate was
seen closed behind them, the code is someone else's copy: refused as used, on record, shown.
A code the network declined is refused again with its decline, not sent again. A different
code is served as usual; the same code after `reread_s` is the network's to refuse."""

from __future__ import annotations

import pytest
from core_kit import FRAME_AGE_S, LaneDriver, displayed, of_type, one, rules
from hypothesis import given, settings
from hypothesis import strategies as st

from lane.core import events as ev
from lane.core.actions import (
    Action,
    Authorise,
    CloseBarrier,
    OpenBarrier,
    Persist,
    PriceTrip,
    ShowOnDisplay,
)
from lane.core.before_arrival import PAID_BEFORE
from lane.core.names import PersistError
from lane.core.notes import Declined, ScanIgnored, VehicleArrived
from lane.core.records import credential_of
from lane.core.state import LaneMode, LaneRules, Phase

CODE = "281234567890123456"
OTHER = "289876543210987654"
REREAD_S = 30.0
ENTRY = rules(LaneMode.TRANSIT_ENTRY, reread_s=REREAD_S)
EXIT = rules(LaneMode.TRANSIT_EXIT, reread_s=REREAD_S)
METRO_EXIT = rules(LaneMode.TRANSIT_EXIT, metro_pricing=True, reread_s=REREAD_S)
GATES = [ENTRY, EXIT, METRO_EXIT]
GATE_IDS = ["entry", "exit", "metro-exit"]


def priced(trip_id: str) -> ev.TripPriced:
    return ev.TripPriced(trip_id, True, "charged", 400, "CNY", 1, "A", "0a" * 16, 2e9, (),
                         False, ("A to B", "Fare CNY 4.00"))  # fmt: skip


def sent(actions: list[Action]) -> bool:
    """The code went on its way to the acquirer (a metro exit prices its trip first)."""
    return bool(of_type(actions, Authorise) or of_type(actions, PriceTrip))


def decide(lane: LaneDriver, text: str, approved: bool, **kw: object) -> list[Action]:
    """A passenger shows `text` and the network answers: the actions of the answer's step."""
    actions = lane.scan(text)
    ask = of_type(actions, PriceTrip)
    if ask:
        lane.feed(priced(ask[0].trip_id))
    return lane.decide(approved=approved, dt=0.2, **kw)


def show(lane: LaneDriver, text: str, account: str = "acct-1") -> list[Action]:
    """A passenger shows `text` and is approved: the actions of the approval's step."""
    return decide(lane, text, True, account_ref=account)


def opened(lane: LaneDriver, text: str = CODE, account: str = "acct-1") -> None:
    """Approved, recorded, the gate open in front of the passenger."""
    show(lane, text, account)
    lane.persisted()
    lane.ack()


def let_through(lane: LaneDriver, text: str = CODE, account: str = "acct-1") -> None:
    """Approved, recorded, the gate opens and the passenger walks through; the gate closes."""
    opened(lane, text, account)
    lane.sensor("light_curtain", True)
    lane.sensor("light_curtain", False)
    assert one(lane.tick_at_deadline(), CloseBarrier)
    lane.ack()
    assert lane.phase() is Phase.IDLE


def ignored(actions: list[Action]) -> bool:
    """Nothing but the note: no passenger, no acquirer, no record, no display, no gate."""
    return (
        len(actions) == 1
        and isinstance(actions[0], ScanIgnored)
        and actions[0].reason == "read again"
    )


def refused_as_used(actions: list[Action]) -> bool:
    """Refused here as used: a declined record of its own, the display saying so; nothing sent
    to the network, nothing opened."""
    records = of_type(actions, Persist)
    return (
        not sent(actions)
        and of_type(actions, OpenBarrier) == []
        and len(records) == 1
        and records[0].owes is None
        and records[0].draft.auth.result == "declined"
        and records[0].draft.flags[-1] == "already_used"
        and "already_used" in displayed(actions)
        and one(actions, Declined).reason == "already_used"
    )


def declined_again(actions: list[Action], reason: str) -> bool:
    """Refused with the network's earlier decline: told again, no record, nothing sent."""
    return (
        not sent(actions)
        and of_type(actions, Persist) == []
        and one(actions, ShowOnDisplay).lines == ("Not accepted", reason)
        and one(actions, ScanIgnored).reason == f"declined before: {reason}"
    )


@pytest.mark.parametrize("lane_rules", GATES, ids=GATE_IDS)
def test_the_code_read_again_while_its_gate_is_open_is_ignored(lane_rules: LaneRules) -> None:
    lane = LaneDriver(lane_rules)
    opened(lane)
    assert lane.phase() is Phase.OPEN
    passenger = lane.state.passage.vehicle_id if lane.state.passage else None
    lane.tick(1.0)
    actions = lane.scan(CODE)
    assert ignored(actions) and one(actions, ScanIgnored).vehicle_id == passenger
    assert lane.phase() is Phase.OPEN and lane.state.vehicle is None


def reach(lane: LaneDriver, stage: str) -> None:
    """The passenger CODE opened the gate for, up to `stage` of their passage."""
    stages = iter(("crossing", "through", "closing", "closed"))
    opened(lane)
    if stage == "open":
        return
    lane.sensor("light_curtain", True)
    if stage == next(stages):
        return
    lane.sensor("light_curtain", False)  # through the gate: its close goes out
    if stage == next(stages):
        return
    close = lane.last(CloseBarrier)
    lane.feed(ev.BarrierAcked(close.cmd_id, True, "closing"), dt=0.05)
    if stage == next(stages):
        return
    lane.report("closed", dt=1.0)
    assert stage == next(stages)


@pytest.mark.parametrize("lane_rules", GATES, ids=GATE_IDS)
@pytest.mark.parametrize(
    ("stage", "later", "copy"),
    [
        ("open", 0.5, False),  # the gate open in front of its passenger
        ("crossing", 0.1, False),  # walking through, the phone still held up
        ("through", 0.1, False),  # past the light curtain, the close on its way
        ("closing", 0.1, False),  # the gate closing behind them
        ("closed", 0.0, False),  # seen closed, in a frame taken before that
        ("closed", FRAME_AGE_S, True),  # a frame from the moment it was seen closed
        ("closed", REREAD_S / 2, True),
    ],
)
def test_the_code_is_its_passengers_until_the_gate_closed_behind_them(
    lane_rules: LaneRules, stage: str, later: float, copy: bool
) -> None:
    """One passenger, the code still in the camera: silent. The gate seen closed behind the
    passenger who walked through: whoever shows the code in front of it is someone else."""
    lane = LaneDriver(lane_rules)
    reach(lane, stage)
    lane.tick(later)
    actions = lane.scan(CODE)
    assert ignored(actions) is not copy
    assert refused_as_used(actions) is copy
    if copy:
        assert lane.state.vehicle is None  # the copy's holder is told, the gate free again


@pytest.mark.parametrize("lane_rules", GATES, ids=GATE_IDS)
def test_a_copy_is_refused_once_the_gate_handed_over_at_its_passengers_crossing_closed(
    lane_rules: LaneRules,
) -> None:
    """A queue at the gate: the next passenger paid while the first was still in front of it,
    so the gate is handed over in the step of the first one's crossing. Their phone is theirs
    while the gate stays open; once it closed behind the next one, the code is a copy."""
    lane = LaneDriver(lane_rules)
    opened(lane)
    lane.tick(0.5)
    show(lane, OTHER, "acct-2")
    lane.persisted()
    lane.sensor("light_curtain", True)  # the first walks in: the gate is the next one's now
    assert lane.state.passage is not None and lane.state.passage.crossings == 0
    lane.sensor("light_curtain", False)
    assert ignored(lane.scan(CODE))
    lane.sensor("light_curtain", True)  # the next one walks through
    lane.sensor("light_curtain", False)
    assert one(lane.tick_at_deadline(), CloseBarrier)
    lane.ack()
    lane.tick(1.0)
    assert refused_as_used(lane.scan(CODE))


@pytest.mark.parametrize("lane_rules", GATES, ids=GATE_IDS)
def test_a_passenger_who_did_not_walk_through_keeps_their_code(lane_rules: LaneRules) -> None:
    """Nobody walked through: the gate closed after its hold in front of a passenger who may
    still be there, phone in hand."""
    lane = LaneDriver(lane_rules)
    opened(lane)
    assert one(lane.tick_at_deadline(), CloseBarrier)
    lane.ack()
    lane.tick(1.0)
    assert lane.phase() is Phase.IDLE
    assert ignored(lane.scan(CODE))


@pytest.mark.parametrize("lane_rules", GATES, ids=GATE_IDS)
@pytest.mark.parametrize(
    ("after", "again"),
    [
        (1.0, False),  # a copy shown as the passenger walks off: refused as used
        (REREAD_S - 0.1, False),
        (REREAD_S, True),  # the window is over: the network refuses a used code
        (REREAD_S + 60.0, True),
    ],
)
def test_a_copy_is_refused_here_within_the_window_and_the_networks_after(
    lane_rules: LaneRules, after: float, again: bool
) -> None:
    lane = LaneDriver(lane_rules)
    let_through(lane)
    approved_at = next(c.at for c in lane.state.approved_codes)
    assert lane.now <= approved_at + after
    lane.tick(approved_at + after - lane.now)
    actions = lane.scan(CODE)
    assert sent(actions) is again
    assert bool(of_type(actions, VehicleArrived))
    assert refused_as_used(actions) is not again


def test_a_vehicle_seen_arriving_after_the_gate_closed_is_refused_the_used_code() -> None:
    """A gate with an entry loop: the next one there showing the code just used spends a try
    on it, on their own record, and may show another code."""
    lane = LaneDriver(ENTRY)
    let_through(lane)
    lane.arrive("v2", dt=1.0)
    actions = lane.scan(CODE)
    assert refused_as_used(actions)
    assert one(actions, Persist).draft.vehicle_id == "v2"
    assert displayed(actions) == ["Payment refused", "already_used", "Try another code (2 left)"]
    assert sent(lane.scan(OTHER))


@pytest.mark.parametrize("lane_rules", GATES, ids=GATE_IDS)
def test_a_different_code_within_the_window_is_served_as_usual(lane_rules: LaneRules) -> None:
    lane = LaneDriver(lane_rules)
    let_through(lane)
    assert sent(lane.scan(OTHER))
    lane.tick(0.2)
    ask = of_type(lane.actions, PriceTrip)
    if lane_rules.metro_pricing:
        lane.feed(priced(ask[-1].trip_id))
    assert one(lane.decide(account_ref="acct-2"), Persist).draft.auth.result == "approved"


def test_a_token_read_again_at_a_gate_is_ignored_too() -> None:
    lane = LaneDriver(ENTRY)
    lane.scan("HC1:tok", "token")
    lane.decide(method="token", account_ref="acct-1")
    lane.persisted()
    lane.ack()
    assert ignored(lane.scan("HC1:tok", "token"))


@pytest.mark.parametrize("walked", [False, True], ids=["phone-in-view", "copy"])
def test_the_code_read_again_while_the_next_passenger_pays_leaves_them_alone(
    walked: bool,
) -> None:
    lane = LaneDriver(EXIT)
    (let_through if walked else opened)(lane)
    lane.tick(1.0)
    lane.scan(OTHER)
    paying = lane.state.vehicle
    assert paying is not None and paying.attempt is not None
    actions = lane.scan(CODE)
    assert not sent(actions) and of_type(actions, Persist) == [] and displayed(actions) == []
    assert lane.state.vehicle == paying
    assert one(lane.decide(account_ref="acct-2"), Persist).draft.auth.result == "approved"


def test_a_copied_screen_opens_nothing_and_is_the_networks_after_the_window() -> None:
    lane = LaneDriver(ENTRY)
    let_through(lane)
    lane.tick(1.0)
    copied = lane.scan(CODE)
    assert refused_as_used(copied)
    assert of_type(copied + lane.tick(5.0), OpenBarrier) == [] and lane.phase() is Phase.IDLE
    lane.tick(REREAD_S)
    lane.scan(CODE)
    # After the window it goes out as any code: anti-passback (and the network) refuse it.
    declined = one(lane.decide(account_ref="acct-1"), Persist)
    assert (declined.draft.auth.result, declined.draft.flags[-1]) == ("declined", "passback")


@pytest.mark.parametrize("lane_rules", GATES, ids=GATE_IDS)
@pytest.mark.parametrize(
    ("reason", "again"),
    [
        # The network's answer about the code (docs/acquirer.md): the same code, the same no.
        ("insufficient_funds", False),
        ("code_invalid", False),
        ("code_used", False),
        ("payment_failed", False),
        # Nothing said of the code: it may be shown again on purpose.
        ("timeout", True),
        ("acquirer_unavailable", True),
        ("acquirer_error", True),
        ("internal_error", True),
        # The network's answer about the call or the merchant, not the code.
        ("frequency_limited", True),
        ("out_trade_no_used", True),
        ("trade_no_repeat", True),
        ("access_forbidden", True),
        ("over_limit", False),
    ],
)
def test_a_code_the_network_declined_is_declined_again_without_asking(
    lane_rules: LaneRules, reason: str, again: bool
) -> None:
    lane = LaneDriver(lane_rules)
    passenger = one(decide(lane, CODE, False, reason=reason), Declined).vehicle_id
    assert lane.state.vehicle is None  # the gate takes the next passenger
    lane.tick(2.0)
    actions = lane.scan(CODE)
    assert sent(actions) is again
    assert declined_again(actions, reason) is not again
    if not again:
        assert one(actions, ScanIgnored).vehicle_id == passenger
        assert lane.state.vehicle is None


def test_a_token_shown_before_it_is_valid_is_verified_again_once_it_may_be() -> None:
    """`not_yet_valid` (a token's `nbf` still ahead, by seconds) says when, not whether: the
    same token shown once that time has come is the verifier's again, not refused from memory."""
    lane = LaneDriver(ENTRY)
    lane.scan("HC1:early", "token")
    lane.decide(approved=False, method="token", reason="not_yet_valid")
    lane.tick(5.0)
    assert one(lane.scan("HC1:early", "token"), Authorise).text == "HC1:early"


def test_an_entry_gate_declines_a_passback_again_without_a_second_charge() -> None:
    lane = LaneDriver(ENTRY)
    let_through(lane)
    lane.tick(REREAD_S)
    refused = decide(lane, OTHER, True, account_ref="acct-1")  # the same payer again
    assert one(refused, Persist).draft.flags[-1] == "passback"
    assert declined_again(lane.scan(OTHER), "passback")


@pytest.mark.parametrize(("after", "again"), [(REREAD_S - 0.1, False), (REREAD_S, True)])
def test_a_declined_code_is_remembered_for_the_window(after: float, again: bool) -> None:
    lane = LaneDriver(EXIT)
    decide(lane, CODE, False)
    declined_at = lane.now
    lane.tick(declined_at + after - lane.now)
    assert sent(lane.scan(CODE)) is again


def test_after_a_decline_another_code_or_a_vehicle_seen_arriving_goes_to_the_network() -> None:
    lane = LaneDriver(ENTRY)
    decide(lane, CODE, False)
    assert sent(lane.scan(OTHER))
    lane.decide(approved=False)
    lane.arrive("v2", dt=1.0)
    assert sent(lane.scan(CODE))


def test_a_declined_code_at_a_closed_gate_is_told_the_gate_is_closed() -> None:
    lane = LaneDriver(EXIT)
    decide(lane, CODE, False)
    lane.feed(ev.AttendantCloseLane("cleaning"))
    actions = lane.scan(CODE)
    assert not sent(actions) and displayed(actions) == ["Lane closed", "Please use another lane"]


def test_a_payment_whose_record_failed_may_show_its_code_again() -> None:
    lane = LaneDriver(EXIT)
    show(lane, CODE)
    persist = lane.last(Persist)
    lane.feed(ev.PersistFailed(persist.persist_id, PersistError.DISK_ERROR))
    assert lane.state.approved_codes == ()
    lane.feed(ev.QueueChanged(full=False, high_water=False))  # the disk works again
    assert sent(lane.scan(CODE))


def test_a_failure_for_another_record_keeps_the_code() -> None:
    lane = LaneDriver(EXIT)
    let_through(lane)
    lane.feed(ev.PersistFailed("made-up", PersistError.DISK_ERROR))
    lane.feed(ev.QueueChanged(full=False, high_water=False), dt=1.0)
    assert refused_as_used(lane.scan(CODE))


def test_the_memory_is_bounded_by_the_window() -> None:
    lane = LaneDriver(EXIT)
    let_through(lane, CODE)
    decide(lane, "28" + "5" * 16, False)
    lane.tick(REREAD_S)
    let_through(lane, OTHER, "acct-2")
    assert [c.credential for c in lane.state.approved_codes] == [credential_of(OTHER)]
    assert lane.state.declined_codes == ()


def test_a_toll_lane_keeps_no_memory_and_needs_none() -> None:
    """A code read while the paid vehicle is still at the pay point or under the boom is
    ignored (one payment at a time, no vehicle without a loop); read at the next vehicle's pay
    point it is the vehicle before's paid code, ignored too (lane.core.before_arrival). A
    declined code is its vehicle's own."""
    lane = LaneDriver(rules(LaneMode.TOLL))
    lane.pay("v1", CODE)
    assert not sent(lane.scan(CODE))
    lane.ack()
    assert not sent(lane.scan(CODE))
    lane.leave_pay_point()
    lane.cross()
    lane.ack()
    assert lane.state.approved_codes == ()
    lane.arrive("v2")
    assert [n.reason for n in of_type(lane.scan(CODE), ScanIgnored)] == [PAID_BEFORE]
    assert sent(lane.scan(OTHER))
    lane.decide(approved=False)
    assert not sent(lane.scan(OTHER))  # its phone still in view
    assert lane.state.declined_codes == ()
    lane.leave_pay_point()
    lane.arrive("v3", dt=1.0)
    assert sent(lane.scan(OTHER))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), lane_rules=st.sampled_from(GATES))
def test_no_code_is_charged_twice_within_the_window(
    data: st.DataObject, lane_rules: LaneRules
) -> None:
    """Passengers show codes from a small pool, read again at random moments; the acquirer
    approves or declines, records fail sometimes, passengers walk through, time passes. A code
    approved (on its way to disk, not failed) never reaches the acquirer again within
    `reread_s`: read again it is ignored while its passenger may be there, and once they walked
    through and the gate was seen closed behind them it is refused as used, on record, when the
    gate is free. A code the network declined is not sent again within it either. A code that
    is neither, shown at an idle gate, is served."""
    lane = LaneDriver(lane_rules)
    pool = [f"28{n:016d}" for n in range(4)]
    approvals: dict[str, tuple[str, float, str]] = {}  # persist id -> code, when, passenger
    declines: list[tuple[str, float]] = []  # the codes the network declined, and when
    crossed: set[str] = set()  # passengers seen walking through their gate
    gone: dict[str, float] = {}  # passenger -> when the gate was seen closed behind them
    for _ in range(data.draw(st.integers(5, 40))):
        move = data.draw(st.sampled_from(["scan", "scan", "decide", "persist", "gate", "wait"]))
        vehicle = lane.state.vehicle
        if move == "scan":
            text = data.draw(st.sampled_from(pool))
            idle = lane.phase() is Phase.IDLE
            free = vehicle is None and lane.state.accepting_payments
            frame = lane.now - FRAME_AGE_S
            window = [(t, p) for t, at, p in approvals.values() if lane.now - at < REREAD_S]
            recent = [p for t, p in window if t == text]
            copy = any(p in gone and gone[p] <= frame for p in recent)
            declined = any(t == text and lane.now - at < REREAD_S for t, at in declines)
            actions = lane.scan(text)
            if recent and not copy:
                assert ignored(actions), (text, actions)
            elif recent and free:
                assert refused_as_used(actions), (text, actions)
            elif declined and free:
                assert not sent(actions) and of_type(actions, Persist) == [], (text, actions)
            elif idle and not recent:
                assert sent(actions), (text, actions)
            ask = of_type(actions, PriceTrip)
            if ask:
                lane.feed(priced(ask[0].trip_id))
        elif move == "decide" and vehicle is not None and vehicle.attempt is not None:
            attempt = vehicle.attempt
            ok = data.draw(st.booleans())
            reason = data.draw(st.sampled_from(["insufficient_funds", "timeout"]))
            account = f"acct-{attempt.text[-1]}"
            actions = lane.decide(attempt.auth_id, approved=ok, account_ref=account, reason=reason)
            for p in of_type(actions, Persist):
                if p.owes is not None:
                    approvals[p.persist_id] = (attempt.text, lane.now, vehicle.vehicle_id)
                elif p.draft.flags[-1] != "timeout":  # passback too: the same payer again
                    declines.append((attempt.text, lane.now))
        elif move == "persist" and vehicle is not None and vehicle.pending_persist is not None:
            pending = vehicle.pending_persist
            if data.draw(st.booleans()):
                lane.persisted(pending)
            else:
                lane.feed(ev.PersistFailed(pending, PersistError.DISK_ERROR))
                approvals.pop(pending, None)  # given up: the passenger may show it again
                lane.feed(ev.QueueChanged(full=False, high_water=False))
        elif move == "gate" and lane.state.command is not None:
            lane.ack()
            passage = lane.state.passage
            if lane.state.barrier == "closed":
                mine = {passage.vehicle_id} if passage is not None else set()
                gone |= {p: lane.now for p in crossed - mine - gone.keys()}
            if passage is not None:
                crossed.add(passage.vehicle_id)
                lane.sensor("light_curtain", True)
                lane.sensor("light_curtain", False)
        elif move == "wait":
            lane.tick(data.draw(st.sampled_from([0.5, 5.0, REREAD_S / 2, REREAD_S])))
    sent_at = [(a.text, at) for at, _, actions in lane.log for a in of_type(actions, Authorise)]
    refused = [(t, when) for t, when, _ in approvals.values()] + declines
    for text, when in refused:
        again = [t for c, t in sent_at if c == text and when < t < when + REREAD_S]
        assert again == [], f"{text} refused or approved at {when}, sent again at {again}"
