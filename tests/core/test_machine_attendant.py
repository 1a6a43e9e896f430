"""The attendant (manual open, close and reopen the lane), the record queue and the broker link."""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, of_type, one, rules

from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    ClearAlarm,
    CloseBarrier,
    OpenBarrier,
    Persist,
    RaiseAlarm,
    Settle,
    ShowOnDisplay,
)
from lane.core.names import Alarm
from lane.core.notes import (
    AttendantOpenFailed,
    AttendantOpenIgnored,
    LaneClosed,
    LaneReopened,
    ScanRefused,
)
from lane.core.state import Phase

OPEN = ev.AttendantOpen("att-1", "barrier test", "op7")


def test_attendant_open_without_a_vehicle_writes_a_manual_record_then_opens() -> None:
    lane = LaneDriver()
    actions = lane.feed(OPEN)
    persist = one(actions, Persist)
    assert persist.persist_id == "att-1"
    draft = persist.draft
    assert (draft.kind, draft.method, draft.auth.result) == ("manual", "manual", "manual")
    assert (draft.vehicle_id, draft.amount_minor) == ("att-1", 0)
    assert draft.flags == ("manual", "reason:barrier test", "attendant:op7")
    assert of_type(actions, OpenBarrier) == []  # rule 1: not before the record is durable
    assert lane.phase() is Phase.PERSISTING
    actions = lane.persisted("att-1")
    assert of_type(actions, Settle) == []  # nothing was paid
    assert one(actions, OpenBarrier).cmd_id == "att-1/open"
    lane.ack()
    lane.cross()
    lane.ack()
    assert lane.phase() is Phase.IDLE


@pytest.mark.parametrize("refused", [False, True], ids=["present", "denied"])
def test_attendant_open_for_the_vehicle_at_the_pay_point(refused: bool) -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    if refused:
        lane.scan("garbage", "unknown", "not a payment code")
    persist = one(lane.feed(OPEN), Persist)
    assert persist.draft.vehicle_id == "v1"
    assert one(lane.persisted("att-1"), OpenBarrier).cmd_id == "v1/open"


def test_attendant_open_with_an_authorisation_in_flight_abandons_it() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    actions = lane.feed(OPEN)
    assert actions[0] == Abandon("v1/a1", "attendant_open")
    assert one(actions, Persist).draft.kind == "manual"
    assert lane.phase() is Phase.PERSISTING
    assert lane.scan("280000000000000009") == []  # no new payment while the record is written
    assert lane.decide("v1/a1")[0] == Abandon("v1/a1", "late")  # it is not charged after all


def test_attendant_open_for_a_vehicle_waiting_for_help_clears_the_alarm() -> None:
    lane = LaneDriver(rules(max_tries=1))
    lane.arrive("v1")
    lane.scan()
    lane.decide(approved=False)
    assert ClearAlarm(Alarm.ATTENDANT_NEEDED) in lane.feed(OPEN)


def test_attendant_open_for_a_paid_vehicle_is_ignored() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.decide()
    expected = [AttendantOpenIgnored(reason="vehicle already paid")]
    assert lane.feed(OPEN) == expected


def test_a_repeated_attendant_command_acts_once() -> None:
    lane = LaneDriver()
    lane.feed(OPEN)
    repeated = [AttendantOpenIgnored(reason="repeated command")]
    assert lane.feed(OPEN) == repeated  # MQTT QoS 1 redelivery while the record is written
    lane.persisted("att-1")
    lane.ack()
    lane.cross()
    lane.ack()
    assert lane.feed(OPEN) == repeated  # and after the passage: no second open with that id


def test_a_second_attendant_open_waits_for_the_first() -> None:
    lane = LaneDriver()
    lane.feed(OPEN)
    actions = lane.feed(ev.AttendantOpen("att-2", "again", "op7"))
    assert actions == [AttendantOpenIgnored(reason="attendant open in progress")]


def test_a_failed_manual_record_lets_the_attendant_try_again() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.feed(OPEN)
    actions = lane.feed(ev.PersistFailed("att-1", "disk_error"))
    assert AttendantOpenFailed(cmd_id="att-1") in actions
    assert of_type(actions, Abandon) == []
    lane.feed(ev.QueueChanged(full=False, high_water=False))  # the disk is back
    assert one(lane.feed(OPEN), Persist).persist_id == "att-1"  # the same command, retried


def test_a_failed_manual_record_with_nobody_there_leaves_the_lane_idle() -> None:
    lane = LaneDriver()
    lane.feed(OPEN)
    lane.feed(ev.PersistFailed("att-1", "disk_error"))
    lane.feed(ev.QueueChanged(full=False, high_water=False))
    assert lane.state.vehicle is None and lane.phase() is Phase.IDLE


# --- closing and reopening the lane ----------------------------------------------------------


def test_close_lane_lets_the_unpaid_vehicle_go_and_refuses_payments() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    actions = lane.feed(ev.AttendantCloseLane("maintenance"))
    assert actions == [
        ShowOnDisplay(("Lane closed", "Please use another lane")),
        Abandon("v1/a1", "lane_closed"),
        LaneClosed(reason="maintenance"),
    ]
    assert lane.phase() is Phase.CLOSED and lane.state.vehicle is None
    lane.arrive("v2")
    assert ScanRefused(reason="maintenance") in lane.scan()
    lane.leave_pay_point()
    actions = lane.feed(ev.AttendantReopenLane("done"))
    assert actions == [
        LaneReopened(reason="done"),
        ShowOnDisplay(("Lane open",), ttl_s=3.0),
    ]
    assert lane.phase() is Phase.IDLE
    lane.through("v3")


def test_close_lane_without_a_reason_still_closes() -> None:
    lane = LaneDriver()
    lane.feed(ev.AttendantCloseLane(""))
    assert lane.state.closed_reason == "closed by attendant"
    assert lane.phase() is Phase.CLOSED


def test_close_lane_keeps_a_paid_vehicle_and_finishes_its_passage() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan()
    lane.decide()
    lane.feed(ev.AttendantCloseLane("end of shift"))
    assert one(lane.persisted(), OpenBarrier).cmd_id == "v1/open"
    lane.ack()
    assert one(lane.cross(), CloseBarrier).cmd_id == "v1/close"
    lane.ack()
    assert lane.phase() is Phase.CLOSED


def test_attendant_can_open_a_closed_lane() -> None:
    lane = LaneDriver()
    lane.feed(ev.AttendantCloseLane("maintenance"))
    lane.feed(OPEN)
    assert lane.phase() is Phase.PERSISTING
    assert one(lane.persisted("att-1"), OpenBarrier).cmd_id == "att-1/open"


# --- the record queue and the broker ---------------------------------------------------------

QUEUE_TABLE = [
    # full, high water -> the alarms raised and cleared
    (True, True, [RaiseAlarm, RaiseAlarm], ["queue_full", "queue_high_water"]),
    (True, False, [RaiseAlarm, ClearAlarm], ["queue_full", "queue_high_water"]),
    (False, True, [RaiseAlarm], ["queue_high_water"]),
    (False, False, [ClearAlarm], ["queue_high_water"]),
]


@pytest.mark.parametrize(("full", "high", "kinds", "codes"), QUEUE_TABLE)
def test_queue_changes_raise_and_clear_alarms(
    full: bool, high: bool, kinds: list[type], codes: list[str]
) -> None:
    lane = LaneDriver()
    actions = lane.feed(ev.QueueChanged(full=full, high_water=high))
    alarms = [a for a in actions if isinstance(a, RaiseAlarm | ClearAlarm)]
    assert [type(a) for a in alarms] == kinds
    assert [a.code for a in alarms] == codes
    assert (lane.phase() is Phase.FAULT) == full


def test_queue_full_stops_payments_not_a_passage_already_paid() -> None:
    lane = LaneDriver()
    lane.pay("v1")
    lane.feed(ev.QueueChanged(full=True, high_water=True))
    assert lane.phase() is Phase.OPENING  # the barrier still serves the paid vehicle
    lane.ack()
    assert one(lane.cross(), CloseBarrier).cmd_id == "v1/close"
    lane.ack()
    assert lane.phase() is Phase.FAULT


def test_broker_down_faults_the_lane_and_holds_commands() -> None:
    lane = LaneDriver()
    lane.arrive()
    lane.scan()
    lane.decide()
    actions = lane.feed(ev.LinkChanged(up=False))
    assert one(actions, RaiseAlarm) == RaiseAlarm(
        Alarm.BROKER_DOWN, "controller lost the MQTT broker"
    )
    assert lane.phase() is Phase.FAULT
    assert of_type(lane.persisted(), OpenBarrier) == []  # no command into a dead link
    actions = lane.feed(ev.LinkChanged(up=True))
    assert ClearAlarm(Alarm.BROKER_DOWN) in actions
    assert one(actions, OpenBarrier).cmd_id == "v1/open"


def test_broker_down_says_what_keeps_it_down_as_that_changes() -> None:
    """The link down for a cause the operator can fix at the lane (a TLS certificate the CA
    file does not verify): the alarm says it, and says the new cause when it changes, without
    closing the lane twice; back, it clears."""
    lane = LaneDriver()
    actions = lane.feed(ev.LinkChanged(up=False))
    assert one(actions, RaiseAlarm).message == "controller lost the MQTT broker"
    tls = "TLS: certificate verify failed: unable to get local issuer certificate"
    actions = lane.feed(ev.LinkChanged(up=False, cause=tls))
    assert actions == [RaiseAlarm(Alarm.BROKER_DOWN, f"controller lost the MQTT broker: {tls}")]
    actions = lane.feed(ev.LinkChanged(up=False))
    assert actions == [RaiseAlarm(Alarm.BROKER_DOWN, "controller lost the MQTT broker")]
    assert lane.phase() is Phase.FAULT
    assert ClearAlarm(Alarm.BROKER_DOWN) in lane.feed(ev.LinkChanged(up=True))
    assert lane.phase() is Phase.IDLE


def test_broker_down_during_a_command_resends_the_same_cmd_id_when_back() -> None:
    lane = LaneDriver()
    lane.pay()
    lane.feed(ev.LinkChanged(up=False))
    assert lane.tick_at_deadline() == []  # ack deadline passes; nothing to send it on
    actions = lane.feed(ev.LinkChanged(up=True))
    assert one(actions, OpenBarrier) == OpenBarrier("v1/open", lane.now + 3.0, 2)


def test_attendant_open_without_a_command_id_is_ignored() -> None:
    lane = LaneDriver()
    actions = lane.feed(ev.AttendantOpen("", "no id", "op7"))
    assert of_type(actions, Persist) == [] and of_type(actions, OpenBarrier) == []
    assert lane.phase() is Phase.IDLE
