"""A code read again at a fare gate (lane.core.reread): the phone of the passenger the code let
through, still held up, is not a new passenger; it reaches no acquirer, makes no record, opens
nothing and leaves the display as it is. A different code is served as usual; the same code
after `reread_s` is the network's to refuse."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, of_type, one, rules
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
)
from lane.core.names import PersistError
from lane.core.notes import ScanIgnored, VehicleArrived
from lane.core.records import credential_of
from lane.core.state import LaneMode, LaneRules, Phase

CODE = "281234567890123456"
OTHER = "289876543210987654"
REREAD_S = 30.0
ENTRY = rules(LaneMode.TRANSIT_ENTRY, reread_s=REREAD_S)
EXIT = rules(LaneMode.TRANSIT_EXIT, reread_s=REREAD_S)
METRO_EXIT = rules(LaneMode.TRANSIT_EXIT, metro_pricing=True, reread_s=REREAD_S)
GATES = [ENTRY, EXIT, METRO_EXIT]


def priced(trip_id: str) -> ev.TripPriced:
    return ev.TripPriced(trip_id, True, "charged", 400, "CNY", 1, "A", "0a" * 16, 2e9, (),
                         False, ("A to B", "Fare CNY 4.00"))  # fmt: skip


def sent(actions: list[Action]) -> bool:
    """The code went on its way to the acquirer (a metro exit prices its trip first)."""
    return bool(of_type(actions, Authorise) or of_type(actions, PriceTrip))


def show(lane: LaneDriver, text: str, account: str = "acct-1") -> list[Action]:
    """A passenger shows `text` and is approved: the actions of the approval's step."""
    actions = lane.scan(text)
    ask = of_type(actions, PriceTrip)
    if ask:
        lane.feed(priced(ask[0].trip_id))
    return lane.decide(account_ref=account, dt=0.2)


def let_through(lane: LaneDriver, text: str = CODE, account: str = "acct-1") -> None:
    """Approved, recorded, the gate opens and the passenger walks through; the gate closes."""
    show(lane, text, account)
    lane.persisted()
    lane.ack()
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


@pytest.mark.parametrize("lane_rules", GATES, ids=["entry", "exit", "metro-exit"])
def test_the_code_read_again_while_its_gate_is_open_is_ignored(lane_rules: LaneRules) -> None:
    lane = LaneDriver(lane_rules)
    show(lane, CODE)
    lane.persisted()
    lane.ack()
    assert lane.phase() is Phase.OPEN
    passenger = lane.state.passage.vehicle_id if lane.state.passage else None
    lane.tick(1.0)
    actions = lane.scan(CODE)
    assert ignored(actions) and one(actions, ScanIgnored).vehicle_id == passenger
    assert lane.phase() is Phase.OPEN and lane.state.vehicle is None


@pytest.mark.parametrize("lane_rules", GATES, ids=["entry", "exit", "metro-exit"])
@pytest.mark.parametrize(
    ("after", "again"),
    [
        (1.0, False),  # the phone still in view as the gate closes behind its passenger
        (REREAD_S - 0.1, False),
        (REREAD_S, True),  # the window is over: the network refuses a used code
        (REREAD_S + 60.0, True),
    ],
)
def test_the_code_read_again_after_its_passage_within_the_window(
    lane_rules: LaneRules, after: float, again: bool
) -> None:
    lane = LaneDriver(lane_rules)
    let_through(lane)
    approved_at = next(c.at for c in lane.state.approved_codes)
    assert lane.now <= approved_at + after
    lane.tick(approved_at + after - lane.now)
    actions = lane.scan(CODE)
    assert sent(actions) is again
    assert bool(of_type(actions, VehicleArrived)) is again
    assert ignored(actions) is not again


@pytest.mark.parametrize("lane_rules", GATES, ids=["entry", "exit", "metro-exit"])
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


def test_the_code_read_again_while_the_next_passenger_pays_leaves_them_alone() -> None:
    lane = LaneDriver(EXIT)
    let_through(lane)
    lane.scan(OTHER)
    assert lane.phase() is Phase.AUTHORISING
    assert ignored(lane.scan(CODE))
    assert lane.phase() is Phase.AUTHORISING
    assert one(lane.decide(account_ref="acct-2"), Persist).draft.auth.result == "approved"


def test_a_copied_screen_opens_nothing_and_is_the_networks_after_the_window() -> None:
    lane = LaneDriver(ENTRY)
    let_through(lane)
    copied = lane.scan(CODE) + lane.tick(5.0)
    assert of_type(copied, OpenBarrier) == [] and lane.phase() is Phase.IDLE
    lane.tick(REREAD_S)
    lane.scan(CODE)
    # After the window it goes out as any code: anti-passback (and the network) refuse it.
    declined = one(lane.decide(account_ref="acct-1"), Persist)
    assert (declined.draft.auth.result, declined.draft.flags[-1]) == ("declined", "passback")


def test_a_declined_code_is_not_remembered() -> None:
    lane = LaneDriver(EXIT)
    lane.scan(CODE)
    lane.decide(approved=False)
    assert lane.state.approved_codes == ()
    assert sent(lane.scan(CODE))


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
    lane.feed(ev.QueueChanged(full=False, high_water=False))
    assert ignored(lane.scan(CODE))


def test_the_memory_is_bounded_by_the_window() -> None:
    lane = LaneDriver(EXIT)
    let_through(lane, CODE)
    lane.tick(REREAD_S)
    let_through(lane, OTHER, "acct-2")
    assert [c.credential for c in lane.state.approved_codes] == [credential_of(OTHER)]


def test_a_toll_lane_keeps_no_memory_and_needs_none() -> None:
    """A code read while the paid vehicle is still at the pay point or under the boom is
    ignored (one payment at a time, no vehicle without a loop); the next vehicle's driver
    showing it is the replay check's to refuse."""
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
    assert sent(lane.scan(CODE))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), lane_rules=st.sampled_from(GATES))
def test_no_code_is_charged_twice_within_the_window(
    data: st.DataObject, lane_rules: LaneRules
) -> None:
    """Passengers show codes from a small pool, read again at random moments; the acquirer
    approves or declines, records fail sometimes, time passes. A code approved (on its way to
    disk, not failed) never reaches the acquirer again within `reread_s`; a code shown at an
    idle gate that is not one of those is served."""
    lane = LaneDriver(lane_rules)
    pool = [f"28{n:016d}" for n in range(4)]
    approvals: dict[str, tuple[str, float]] = {}  # persist id -> the code and when approved
    for _ in range(data.draw(st.integers(5, 40))):
        move = data.draw(st.sampled_from(["scan", "scan", "decide", "persist", "gate", "wait"]))
        vehicle = lane.state.vehicle
        if move == "scan":
            text = data.draw(st.sampled_from(pool))
            idle = lane.phase() is Phase.IDLE
            recent = any(t == text and lane.now - at < REREAD_S for t, at in approvals.values())
            actions = lane.scan(text)
            if recent:
                assert ignored(actions), (text, actions)
            elif idle:
                assert sent(actions), (text, actions)
            ask = of_type(actions, PriceTrip)
            if ask:
                lane.feed(priced(ask[0].trip_id))
        elif move == "decide" and vehicle is not None and vehicle.attempt is not None:
            attempt = vehicle.attempt
            ok = data.draw(st.booleans())
            account = f"acct-{attempt.text[-1]}"
            actions = lane.decide(attempt.auth_id, approved=ok, account_ref=account)
            for p in of_type(actions, Persist):
                if p.owes is not None:
                    approvals[p.persist_id] = (attempt.text, lane.now)
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
            if lane.state.passage is not None:
                lane.sensor("light_curtain", True)
                lane.sensor("light_curtain", False)
        elif move == "wait":
            lane.tick(data.draw(st.sampled_from([0.5, 5.0, REREAD_S / 2, REREAD_S])))
    sent_at = [(a.text, at) for at, _, actions in lane.log for a in of_type(actions, Authorise)]
    for text, when in approvals.values():
        again = [t for c, t in sent_at if c == text and when < t < when + REREAD_S]
        assert again == [], f"{text} approved at {when}, sent again at {again}"
