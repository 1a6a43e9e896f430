"""CommandNotSent: the shell could not hand a barrier command to the broker (issue #12).

The core answers at once, as an ack timeout would, without waiting for the timeout: the same
cmd_id goes again, and after `max_cmd_attempts` the lane faults with `barrier_no_ack` (safe:
no payment, nothing moves), tells the operator why, and clears when the barrier is heard from.
"""

from __future__ import annotations

import pytest
from core_kit import LaneDriver, of_type, one, rules

from lane.core import events as ev
from lane.core.actions import ClearAlarm, CloseBarrier, OpenBarrier, RaiseAlarm
from lane.core.names import Alarm
from lane.core.state import Phase


def _lane_waiting_for(op: str) -> tuple[LaneDriver, type[OpenBarrier] | type[CloseBarrier]]:
    lane = LaneDriver(rules(ack_timeout_s=0.6, max_cmd_attempts=3))
    lane.pay("v1")
    if op == "open":
        return lane, OpenBarrier
    lane.ack()
    lane.cross()
    return lane, CloseBarrier


@pytest.mark.parametrize("op", ["open", "close"])
def test_a_failed_send_goes_again_at_once_with_the_same_cmd_id(op: str) -> None:
    lane, kind = _lane_waiting_for(op)
    cmd_id = f"v1/{op}"
    actions = lane.feed(ev.CommandNotSent(cmd_id, "broker connection lost"))
    assert actions == [kind(cmd_id, lane.now + 3.0, 2)]  # no ack timeout waited out


@pytest.mark.parametrize("op", ["open", "close"])
def test_sends_failing_up_to_the_last_attempt_fault_then_clear(op: str) -> None:
    lane, kind = _lane_waiting_for(op)
    cmd_id = f"v1/{op}"
    lane.feed(ev.CommandNotSent(cmd_id, "broker connection lost"))
    lane.feed(ev.CommandNotSent(cmd_id, "broker connection lost"))
    actions = lane.feed(ev.CommandNotSent(cmd_id, "broker connection lost"))
    # Safe while it lasts: nothing more is sent, no payment is taken; visible: the alarm says why.
    assert of_type(actions, kind) == []
    message = (
        f"barrier does not acknowledge commands: {op} {cmd_id} (not sent: broker connection lost)"
    )
    assert one(actions, RaiseAlarm) == RaiseAlarm(Alarm.BARRIER_NO_ACK, message)
    assert lane.phase() is Phase.FAULT
    assert lane.state.command is not None and lane.state.command.cmd_id == cmd_id
    # Clears by itself: the probe sends the SAME command again, and its ack clears the fault
    # (a state report alone does not).
    assert lane.report("closed" if op == "open" else "open") == []
    actions = lane.tick_at_deadline()
    assert one(actions, kind) == kind(cmd_id, lane.now + 3.0, 1)
    assert ClearAlarm(Alarm.BARRIER_NO_ACK) in lane.ack(cmd_id)


def test_a_failed_send_the_lane_no_longer_waits_for_changes_nothing() -> None:
    lane, _ = _lane_waiting_for("open")
    for stale in ("zz/open", "v0/close"):
        before = lane.state
        assert lane.feed(ev.CommandNotSent(stale, "broker connection lost")) == []
        assert lane.state == before
    lane.ack()  # acked: a late report of a failed earlier send is history
    before = lane.state
    assert lane.feed(ev.CommandNotSent("v1/open", "broker connection lost")) == []
    assert lane.state == before


def test_a_failed_send_of_a_held_command_is_ignored() -> None:
    lane, _ = _lane_waiting_for("open")
    for _ in range(3):
        lane.feed(ev.CommandNotSent("v1/open", "broker connection lost"))
    assert lane.phase() is Phase.FAULT
    before = lane.state
    # The command is held (not in flight): a repeated failure report must not count again.
    assert lane.feed(ev.CommandNotSent("v1/open", "broker connection lost")) == []
    assert lane.state == before
