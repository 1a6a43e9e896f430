"""Alarm codes the lane core raises, and the faults among them (pure data and helpers).

The codes are `lane.core.names.Alarm`. A fault is an alarm that also changes what the lane
does (BLOCKING_FAULTS and PAYMENT_FAULTS there); a notice is an alarm that only tells the
operator. Every code here is documented in docs/operations.md with what raises it and how it clears.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from lane.core.actions import Action, ClearAlarm, RaiseAlarm
from lane.core.display import LANE_CLOSED, record_wait
from lane.core.names import BARRIER_ALARMS, BARRIER_FAULTS, PAYMENT_FAULTS, Alarm, PersistError
from lane.core.state import LaneState

__all__ = ["BARRIER_ALARMS", "BARRIER_FAULTS", "Alarm", "add_fault", "remove_fault"]


FAULT_MESSAGES = {
    Alarm.BARRIER_OFFLINE: "barrier device offline",
    Alarm.BARRIER_FAULT: "barrier reports a fault",
    Alarm.BARRIER_NO_ACK: "barrier does not acknowledge commands",
    Alarm.BARRIER_REFUSED: "barrier refused a command",
    Alarm.BROKER_DOWN: "controller lost the MQTT broker",
    Alarm.QUEUE_FULL: "record queue is full: paid passages refused",
    Alarm.DISK_ERROR: "record queue cannot write",
    Alarm.DISK_NOT_ANSWERING: "data directory does not answer",
    Alarm.BARRIER_STUCK: "barrier did not reach its commanded position",
    Alarm.BARRIER_UNREADABLE: "barrier device's messages cannot be read",
    Alarm.CAMERA_BLACKOUT: "camera reads no codes",
}

DISK_ANSWERS_AGAIN = "data directory answers again"

# The `disk_error` text's cause, by the queue's failure (PersistFailed.reason): a file only
# locked by another process is not a disk to replace.
DISK_CAUSES: Mapping[str, str] = {
    PersistError.DISK_FULL: "disk full",
    PersistError.LOCKED: "queue file locked by another process",
    PersistError.READ_ONLY: "queue file or file system read-only",
    PersistError.IO_ERROR: "disk I/O error",
    PersistError.CORRUPT: "queue file corrupt",
}


def fault_message(fault: Alarm, detail: str = "") -> str:
    return FAULT_MESSAGES.get(fault, str(fault)) + (f": {detail}" if detail else "")


def add_fault(state: LaneState, fault: Alarm, detail: str = "") -> tuple[LaneState, list[Action]]:
    if fault in state.faults:
        return state, []
    vehicle = state.vehicle
    shown = LANE_CLOSED
    if fault in PAYMENT_FAULTS and vehicle is not None and vehicle.committed:
        # Its record is on its way and opens the barrier once written, fault or not: "use
        # another lane" is for drivers who have not paid.
        shown = record_wait(paid=vehicle.approved is not None or vehicle.carried)
    actions: list[Action] = [RaiseAlarm(fault, fault_message(fault, detail)), shown]
    return replace(state, faults=state.faults | {fault}), actions


def tell_fault(state: LaneState, fault: Alarm, detail: str = "") -> tuple[LaneState, list[Action]]:
    """Raise `fault`, or tell a held one's text again as it is now (another cause, since
    another time)."""
    if fault in state.faults:
        return retell_fault(state, fault, fault_message(fault, detail))
    return add_fault(state, fault, detail)


def retell_fault(state: LaneState, fault: Alarm, message: str) -> tuple[LaneState, list[Action]]:
    """A held fault's alarm with a new text: what the lane does is unchanged; nothing for a
    fault not held (a text never raises one)."""
    if fault not in state.faults:
        return state, []
    return state, [RaiseAlarm(fault, message)]


def disk_answers_again(detail: str) -> str:
    """`disk_not_answering`'s text once the disk answers, while the fault holds for its
    hold-off: "does not answer" would no longer be true."""
    return f"{DISK_ANSWERS_AGAIN}: {detail}"


def remove_fault(state: LaneState, fault: Alarm) -> tuple[LaneState, list[Action]]:
    if fault not in state.faults:
        return state, []
    return replace(state, faults=state.faults - {fault}), [ClearAlarm(fault)]


def raise_notice(state: LaneState, code: Alarm, message: str) -> tuple[LaneState, list[Action]]:
    """An alarm that does not stop the lane; raised again only after it cleared."""
    if code in state.notices:
        return state, []
    return tell_notice(state, code, message)


def tell_notice(state: LaneState, code: Alarm, message: str) -> tuple[LaneState, list[Action]]:
    """Raise the notice `code`, or tell a held one's text again as it is now (another cause):
    `tell_fault` for an alarm that does not stop the lane."""
    return replace(state, notices=state.notices | {code}), [RaiseAlarm(code, message)]


def clear_notice(state: LaneState, code: Alarm) -> tuple[LaneState, list[Action]]:
    if code not in state.notices:
        return state, []
    return replace(state, notices=state.notices - {code}), [ClearAlarm(code)]
