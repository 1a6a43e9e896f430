"""Adversarial event sequences against the pure lane core: forged, stale, repeated and
out-of-order answers, clocks going backwards. Every step also runs the SafetyMonitor."""

from __future__ import annotations

from core_kit import LaneDriver, of_type, rules

from lane.core import events as ev
from lane.core.actions import Abandon, CloseBarrier, OpenBarrier, Persist, Settle
from lane.core.state import Phase

CODE = "281234567890123456"


def test_persisted_for_a_forged_or_declined_id_never_opens() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan(CODE)
    lane.decide(approved=False)
    declined = lane.last(Persist).persist_id
    for pid in (declined, "v1/a2", "v1/a1 ", "", "v2/a1"):
        actions = lane.feed(ev.Persisted(pid, "rec-x", 1))
        assert not of_type(actions, OpenBarrier), pid
        assert not of_type(actions, Settle), pid


def test_persisted_before_the_decision_never_opens() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan(CODE)
    assert not of_type(lane.feed(ev.Persisted("v1/a1", "rec-x", 1)), OpenBarrier)
    lane.decide()
    assert len(of_type(lane.persisted(), OpenBarrier)) == 1


def test_duplicate_decision_and_duplicate_persisted_act_once() -> None:
    lane = LaneDriver()
    lane.arrive("v1")
    lane.scan(CODE)
    lane.decide()
    lane.decide(auth_id="v1/a1")  # redelivered approval
    lane.persisted()
    lane.persisted(persist_id="v1/a1")  # redelivered durability report
    assert len(of_type(lane.actions, Persist)) == 1
    assert len(of_type(lane.actions, Settle)) == 1
    assert len(of_type(lane.actions, OpenBarrier)) == 1
    assert not of_type(lane.actions, Abandon)


def test_failure_report_after_the_record_is_durable_abandons_nothing() -> None:
    lane = LaneDriver()
    lane.pay("v1")
    actions = lane.feed(ev.PersistFailed("v1/a1", "disk_error"))
    assert not of_type(actions, Abandon)
    assert not of_type(actions, CloseBarrier)


def test_late_approval_after_timeout_is_abandoned_and_never_recorded_as_paid() -> None:
    lane = LaneDriver(rules(budget_s=1.0, auth_grace_s=0.5))
    lane.arrive("v1")
    lane.scan(CODE)
    lane.tick_at_deadline()
    assert any(a.auth_id == "v1/a1" for a in of_type(lane.actions, Abandon))
    lane.scan("282222222222222222")  # the driver tries another code
    late = lane.decide(auth_id="v1/a1")  # the first one went through after all
    assert [a.auth_id for a in of_type(late, Abandon)] == ["v1/a1"]
    assert not of_type(late, Persist)
    assert lane.phase() is Phase.AUTHORISING  # still waiting for the second code
    lane.decide(auth_id="v1/a2")
    assert len(of_type(lane.persisted(), OpenBarrier)) == 1


def test_clock_going_backwards_neither_opens_nor_loses_the_payment() -> None:
    lane = LaneDriver(rules(budget_s=2.0, auth_grace_s=0.5))
    lane.arrive("v1")
    lane.scan(CODE)
    lane.tick(-500.0)  # wall clock stepped back by NTP
    lane.tick(0.1)
    assert not of_type(lane.actions, Abandon)
    lane.decide(dt=-0.2)
    actions = lane.persisted(dt=-0.1)
    assert len(of_type(actions, OpenBarrier)) == 1


def test_ack_for_a_command_never_sent_or_a_stale_one_is_ignored() -> None:
    lane = LaneDriver()
    lane.pay("v1")
    open_cmd = lane.last_command().cmd_id
    for forged in ("x/open", open_cmd + "x", open_cmd.upper()):
        assert lane.feed(ev.BarrierAcked(forged, True, "open")) == []
    lane.ack(open_cmd)
    assert lane.feed(ev.BarrierAcked(open_cmd, True, "open")) == []  # redelivered


def test_no_close_while_the_safety_loop_is_occupied_whatever_the_other_sensors_say() -> None:
    lane = LaneDriver()
    lane.pay("v1")
    lane.ack()
    lane.leave_pay_point()
    lane.sensor("safety_loop", True)
    lane.sensor("exit_loop", True)
    lane.sensor("exit_loop", False)  # exit loop says "gone" while something is under the boom
    lane.tick(60.0)
    assert not of_type(lane.actions, CloseBarrier)
    lane.sensor("safety_loop", False)
    lane.tick(0.01)
    closes = of_type(lane.actions, CloseBarrier)
    assert closes and {c.cmd_id for c in closes} == {"v1/close"}  # resends reuse the cmd_id
