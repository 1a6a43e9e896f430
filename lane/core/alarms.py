"""Alarm codes the lane core raises, and the faults among them (pure data and helpers).

A fault is an alarm that also changes what the lane does (see BLOCKING_FAULTS and
PAYMENT_FAULTS in lane.core.state); a notice is an alarm that only tells the operator. Every
code here is documented in docs/operations.md with what raises it and how it clears.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum

from lane.core.actions import Action, ClearAlarm, RaiseAlarm, ShowOnDisplay
from lane.core.state import LaneState


class Alarm(StrEnum):
    """The codes of the alarms that heal the lane (issue #11); older codes are still strings."""

    LANE_STUCK = "lane_stuck"
    BARRIER_STUCK = "barrier_stuck"
    PAID_NOT_PASSED = "paid_not_passed"
    UNPAID_PASSAGE = "unpaid_passage"


# Everything a working barrier report clears.
BARRIER_FAULTS = ("barrier_offline", "barrier_fault", "barrier_no_ack", "barrier_refused")

# Every alarm that says the barrier cannot be relied on (readiness, metrics).
BARRIER_ALARMS = (*BARRIER_FAULTS, "barrier_stuck")

FAULT_MESSAGES = {
    "barrier_offline": "barrier device offline",
    "barrier_fault": "barrier reports a fault",
    "barrier_no_ack": "barrier does not acknowledge commands",
    "barrier_refused": "barrier refused a command",
    "broker_down": "controller lost the MQTT broker",
    "queue_full": "record queue is full: paid passages refused",
    "disk_error": "record queue cannot write to disk",
    Alarm.BARRIER_STUCK: "barrier did not reach its commanded position",
}


def add_fault(state: LaneState, fault: str, detail: str = "") -> tuple[LaneState, list[Action]]:
    if fault in state.faults:
        return state, []
    message = FAULT_MESSAGES.get(fault, fault) + (f": {detail}" if detail else "")
    actions: list[Action] = [
        RaiseAlarm(fault, message),
        ShowOnDisplay(("Lane closed", "Please use another lane")),
    ]
    return replace(state, faults=state.faults | {fault}), actions


def remove_fault(state: LaneState, fault: str) -> tuple[LaneState, list[Action]]:
    if fault not in state.faults:
        return state, []
    return replace(state, faults=state.faults - {fault}), [ClearAlarm(fault)]


def raise_notice(state: LaneState, code: Alarm, message: str) -> tuple[LaneState, list[Action]]:
    """An alarm that does not stop the lane; raised again only after it cleared."""
    if code in state.notices:
        return state, []
    return replace(state, notices=state.notices | {code}), [RaiseAlarm(code, message)]


def clear_notice(state: LaneState, code: Alarm) -> tuple[LaneState, list[Action]]:
    if code not in state.notices:
        return state, []
    return replace(state, notices=state.notices - {code}), [ClearAlarm(code)]
