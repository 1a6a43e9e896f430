"""Fare gates: implicit passengers, tap-in / tap-out records, anti-passback, the gate hold."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, displayed, of_type, one, rules

from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    Action,
    Authorise,
    CloseBarrier,
    OpenBarrier,
    Persist,
    ShowOnDisplay,
)
from lane.core.machine import next_deadline
from lane.core.notes import GateTimeout, VehicleArrived
from lane.core.state import LaneMode, Phase

ENTRY = rules(LaneMode.TRANSIT_ENTRY, passback_window_s=600.0, gate_hold_s=8.0)
EXIT = rules(LaneMode.TRANSIT_EXIT, gate_hold_s=8.0)


def tap(lane: LaneDriver, token: str, account: str, approved: bool = True) -> list[Action]:
    lane.scan(token, "token")
    return list(lane.decide(approved=approved, method="token", account_ref=account, dt=0.01))


def gate_passed(lane: LaneDriver, recorded: bool = False) -> None:
    """The gate opens, the passenger walks through the light curtain, the hold closes it."""
    if not recorded:
        lane.persisted()
    lane.ack()
    lane.sensor("light_curtain", True)
    lane.sensor("light_curtain", False)
    assert one(lane.tick_at_deadline(), CloseBarrier).cmd_id.endswith("/close")
    lane.ack()
    assert lane.phase() is Phase.IDLE


@pytest.mark.parametrize(("lane_rules", "kind"), [(ENTRY, "tap_in"), (EXIT, "tap_out")])
def test_a_passenger_is_known_from_the_code_they_show(lane_rules: object, kind: str) -> None:
    lane = LaneDriver(lane_rules)  # type: ignore[arg-type]
    actions = lane.scan("HC1:tok", "token")
    assert lane.phase() is Phase.AUTHORISING
    assert VehicleArrived(vehicle_id="s1", vehicle_class=1, implicit=True) in actions
    assert one(actions, Authorise).vehicle_id == "s1"
    assert "Show your QR code" not in displayed(actions)  # no fare screen for a passenger
    persist = one(lane.decide(method="token", account_ref="acct-1"), Persist)
    assert persist.draft.kind == kind
    gate_passed(lane)


def test_the_gate_hold_closes_when_nobody_passes() -> None:
    lane = LaneDriver(ENTRY)
    tap(lane, "HC1:tok", "acct-1")
    lane.persisted()
    lane.ack()
    assert lane.phase() is Phase.OPEN
    assert next_deadline(lane.state) == pytest.approx(lane.now + 8.0)
    assert lane.tick(7.9) == []
    actions = lane.tick_at_deadline()
    assert actions[0] == GateTimeout(vehicle_id="s1")
    assert one(actions, CloseBarrier).cmd_id == "s1/close"
    lane.ack()
    assert lane.phase() is Phase.IDLE


def test_the_gate_hold_waits_for_the_light_curtain() -> None:
    lane = LaneDriver(ENTRY)
    tap(lane, "HC1:tok", "acct-1")
    lane.persisted()
    lane.ack()
    lane.sensor("light_curtain", True)  # someone is in the gate when the hold runs out
    assert of_type(lane.tick_at_deadline(), CloseBarrier) == []
    assert lane.phase() is Phase.CLOSING
    assert one(lane.sensor("light_curtain", False), CloseBarrier).cmd_id == "s1/close"


def test_a_refused_passenger_leaves_the_gate_free() -> None:
    lane = LaneDriver(ENTRY)
    actions = tap(lane, "HC1:tok", "acct-1", approved=False)
    assert ShowOnDisplay(("Not accepted", "insufficient_funds"), ttl_s=3.0) in actions
    assert lane.phase() is Phase.IDLE and lane.state.vehicle is None
    tap(lane, "HC1:other", "acct-2")
    assert lane.phase() is Phase.PERSISTING


def test_a_passenger_whose_answer_never_comes_leaves_the_gate_free() -> None:
    lane = LaneDriver(ENTRY)
    lane.scan("HC1:tok", "token")
    assert lane.tick_at_deadline()[0] == Abandon("s1/a1", "timeout")
    assert lane.phase() is Phase.IDLE


def test_an_unreadable_code_at_the_gate_is_refused_and_forgotten() -> None:
    lane = LaneDriver(ENTRY)
    actions = lane.scan("garbage", "unknown", "not a payment code")
    assert ShowOnDisplay(("Not accepted", "not a payment code"), ttl_s=3.0) in actions
    assert lane.state.vehicle is None


PASSBACK_TABLE = [
    # seconds after the first tap-in, another account?, refused as passback?
    (5.0, False, True),
    (599.0, False, True),
    (600.0, False, False),  # the window is over
    (5.0, True, False),  # somebody else
]


@pytest.mark.parametrize(("after", "other", "refused"), PASSBACK_TABLE)
def test_anti_passback_within_the_window(after: float, other: bool, refused: bool) -> None:
    lane = LaneDriver(ENTRY)
    tap(lane, "HC1:first", "acct-1")
    lane.persisted()
    recorded_at = lane.now  # the tap-in counts from when it is on record
    gate_passed(lane, recorded=True)
    lane.now = recorded_at + after - 0.01  # `tap` lets 10 ms pass before the decision
    actions = tap(lane, "HC1:second", "acct-2" if other else "acct-1")
    if refused:
        auth_id = lane.last(Authorise).auth_id
        assert actions[0] == Abandon(auth_id, "passback")  # nothing is charged
        persist = one(actions, Persist)
        assert persist.draft.auth.result == "declined" and "passback" in persist.draft.flags
        assert ShowOnDisplay(("Not accepted", "passback"), ttl_s=3.0) in actions
        assert lane.phase() is Phase.IDLE
    else:
        assert one(actions, Persist).draft.auth.result == "approved"


def test_passback_for_a_passenger_seen_on_the_entry_loop_is_a_decline_like_any() -> None:
    """A gate with an entry loop knows the passenger from their arrival, not only from the code:
    refused as passback (Abandoned, nothing charged), they stay at the gate with their other
    tries, or the attendant once none is left (authorising --approved--> denied, found by
    seeded random walks)."""
    lane = LaneDriver(ENTRY)
    tap(lane, "HC1:first", "acct-1")
    gate_passed(lane)
    lane.arrive("p2")
    actions = tap(lane, "HC1:second", "acct-1")
    assert actions[0] == Abandon(lane.last(Authorise).auth_id, "passback")
    assert one(actions, Persist).draft.auth.result == "declined"
    assert lane.phase() is Phase.DENIED
    assert ShowOnDisplay(("Payment refused", "passback", "Try another code (2 left)")) in actions
    tap(lane, "HC1:third", "acct-2")  # another account's code: let in
    gate_passed(lane)
    lane.monitor.check_outcomes()


def test_a_tap_in_that_was_never_recorded_does_not_count_for_passback() -> None:
    lane = LaneDriver(ENTRY)
    tap(lane, "HC1:first", "acct-1")
    lane.feed(ev.PersistFailed(lane.last(Persist).persist_id, "queue_full"))
    assert lane.state.vehicle is None  # the passenger is not left standing in the gate
    lane.feed(ev.QueueChanged(full=False, high_water=False))
    actions = tap(lane, "HC1:again", "acct-1")
    assert one(actions, Persist).draft.auth.result == "approved"


def test_tap_out_has_no_passback() -> None:
    lane = LaneDriver(EXIT)
    tap(lane, "HC1:first", "acct-1")
    gate_passed(lane)
    assert one(tap(lane, "HC1:second", "acct-1"), Persist).draft.auth.result == "approved"


def test_the_next_passenger_takes_over_the_open_gate() -> None:
    lane = LaneDriver(ENTRY)
    tap(lane, "HC1:first", "acct-1")
    lane.persisted()
    lane.ack()
    tap(lane, "HC1:second", "acct-2")  # while the gate is still open for the first
    assert of_type(lane.persisted(), OpenBarrier) == []
    actions = lane.sensor("light_curtain", True)  # the first walks through
    assert of_type(actions, CloseBarrier) == []
    assert lane.state.passage is not None and lane.state.passage.vehicle_id != "s1"
    lane.sensor("light_curtain", False)
    actions = lane.sensor("light_curtain", True) + lane.sensor("light_curtain", False)
    assert one(actions, CloseBarrier).cmd_id.endswith("/close")
    assert of_type(actions, Persist) == []


def test_a_passenger_through_the_curtain_closes_the_gate_at_once() -> None:
    lane = LaneDriver(ENTRY)
    tap(lane, "HC1:first", "acct-1")
    lane.persisted()
    lane.ack()
    lane.sensor("light_curtain", True)
    assert one(lane.sensor("light_curtain", False), CloseBarrier).cmd_id == "s1/close"
