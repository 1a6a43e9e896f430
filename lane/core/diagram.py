"""The lane's phase transitions, declared as a table and rendered to a Mermaid state diagram.

The table is authoritative (h11's `_state.py` is the model): `lane.core.machine.step` checks
every (phase before, event, phase after) it takes against `allows()` and raises
`IllegalTransition`, leaving the caller's state as it was, for any the table does not hold.
The tests run the machine through tables and hypothesis runs (so an illegal step fails them)
and check that every row here is taken at least once, so the diagram cannot drift from the
code.

Reading the table:
- an event is named by `event_label`: its type, refined where the outcome differs
  (Decided -> approved / declined, SensorChanged -> entry_loop on, safety off, ...);
- any event not listed for a phase leaves the phase unchanged (it may change data: a class
  reading, a fault added while another one already holds, a tailgating record, ...);
- a source or target may be a Group: "any of these phases". After a fault clears, or the
  barrier closes behind a vehicle, the lane shows whatever phase its data now implies.

`python -m lane.core.diagram` prints the Mermaid text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from lane.core import events as ev
from lane.core.state import Phase

P = Phase


@dataclass(frozen=True)
class Group:
    """A set of phases standing in for a source or a target."""

    name: str  # the Mermaid id of the pseudo-state drawn for it
    title: str
    phases: frozenset[Phase]


@dataclass(frozen=True)
class Transition:
    source: Phase | Group
    label: str
    target: Phase | Group
    why: str


AT_PAY_POINT = Group(
    "no_passage",
    "any phase without a barrier passage",
    frozenset({P.IDLE, P.VEHICLE_PRESENT, P.AUTHORISING, P.DENIED, P.PERSISTING, P.CLOSED}),
)
IN_SERVICE = Group(
    "in_service", "any phase but fault", AT_PAY_POINT.phases | {P.OPENING, P.OPEN, P.CLOSING}
)
NEXT_UP = Group(
    "next_up",
    "the waiting vehicle's phase (or closed / fault)",
    frozenset(
        {P.VEHICLE_PRESENT, P.AUTHORISING, P.DENIED, P.PERSISTING, P.OPENING, P.CLOSED, P.FAULT}
    ),
)

PAYING = Group(
    "paying", "a vehicle paying", frozenset({P.VEHICLE_PRESENT, P.AUTHORISING, P.DENIED})
)
PASSAGE = Group("passage", "a paid passage", frozenset({P.OPENING, P.OPEN}))
# A vehicle that paid before a restart (lane.core.carried): where its code may come back, and
# where the boom may be found up for it.
CLAIMING = Group(
    "claiming",
    "nobody's passage (or only a payment fault)",
    frozenset({P.IDLE, P.VEHICLE_PRESENT, P.DENIED, P.CLOSED, P.FAULT}),
)
CLAIMED = Group(
    "claimed", "its open (a running self-test closes first)", frozenset({P.OPENING, P.CLOSING})
)
FOUND_UP = Group("found_up", "no passage, no command", PAYING.phases | {P.IDLE, P.CLOSED})

# Which event type each label stands for (the labels are refinements of event types).
LABELS: dict[str, type] = {
    "entry_loop on": ev.SensorChanged,
    "entry_loop off": ev.SensorChanged,
    "exit_loop on": ev.SensorChanged,
    "exit_loop off": ev.SensorChanged,
    "safety on": ev.SensorChanged,
    "safety off": ev.SensorChanged,
    "other sensor": ev.SensorChanged,
    "classified": ev.VehicleClassified,
    "scan": ev.Scanned,
    "approved": ev.Decided,
    "declined": ev.Decided,
    "persisted": ev.Persisted,
    "persist failed": ev.PersistFailed,
    "ack ok": ev.BarrierAcked,
    "ack refused": ev.BarrierAcked,
    "not sent": ev.CommandNotSent,
    "barrier down": ev.BarrierReported,
    "barrier up": ev.BarrierReported,
    "snapshot": ev.DeviceSnapshotted,
    "unreadable": ev.DeviceUnreadable,
    "attendant open": ev.AttendantOpen,
    "close lane": ev.AttendantCloseLane,
    "reopen lane": ev.AttendantReopenLane,
    "queue full": ev.QueueChanged,
    "queue ok": ev.QueueChanged,
    "disk hung": ev.DiskAnswering,
    "disk answers": ev.DiskAnswering,
    "disk answers again": ev.DiskAnswersAgain,
    "camera dark": ev.CameraSees,
    "camera sees": ev.CameraSees,
    "link down": ev.LinkChanged,
    "link up": ev.LinkChanged,
    "plate": ev.PlateRead,
    "ticket": ev.TicketIssued,
    "trip priced": ev.TripPriced,
    "no pass": ev.AttendantNoPass,
    "confirm fare": ev.AttendantConfirmFare,
    "latch carried": ev.LatchCarried,
    "paid carried": ev.PaidCarried,
    "tick": ev.Tick,
}


def _t(source: Phase | Group, label: str, target: Phase | Group, why: str) -> Transition:
    return Transition(source, label, target, why)


TRANSITIONS: tuple[Transition, ...] = (
    # A vehicle arrives, pays, and goes through.
    _t(P.IDLE, "entry_loop on", P.VEHICLE_PRESENT, "a vehicle at the pay point: fare shown"),
    _t(P.CLOSED, "entry_loop on", P.VEHICLE_PRESENT, "a vehicle at a closed lane"),
    _t(P.IDLE, "scan", P.AUTHORISING, "fare gate: a passenger known from their code"),
    _t(P.VEHICLE_PRESENT, "scan", P.AUTHORISING, "a code read: Authorise, budget starts"),
    _t(P.DENIED, "scan", P.AUTHORISING, "another code, tries left"),
    _t(P.VEHICLE_PRESENT, "scan", P.DENIED, "unreadable or unsupported code, or no fare"),
    _t(P.AUTHORISING, "approved", P.PERSISTING, "Persist the approved record"),
    _t(P.AUTHORISING, "declined", P.DENIED, "declined record; try another code"),
    _t(P.AUTHORISING, "declined", P.IDLE, "fare gate: the passenger is refused"),
    _t(P.AUTHORISING, "approved", P.IDLE, "fare gate: passback, refused and Abandoned"),
    _t(P.AUTHORISING, "approved", P.DENIED, "fare gate: passback for one seen arriving: tries"),
    _t(P.AUTHORISING, "tick", P.DENIED, "no answer by budget + grace: Abandon"),
    _t(P.AUTHORISING, "tick", P.IDLE, "fare gate: no answer in time, Abandon"),
    _t(P.PERSISTING, "persisted", P.OPENING, "record durable: Settle, OpenBarrier"),
    _t(P.FAULT, "persisted", P.OPENING, "record durable while the queue is full: still opens"),
    _t(P.OPENING, "ack ok", P.OPEN, "the barrier acknowledged the open"),
    _t(P.OPEN, "exit_loop off", P.CLOSING, "the vehicle crossed and left: CloseBarrier"),
    _t(P.OPENING, "exit_loop off", P.CLOSING, "it crossed before the open ack came"),
    _t(P.OPEN, "tick", P.CLOSING, "fare gate: gate hold over, nobody passed"),
    _t(P.OPEN, "safety off", P.CLOSING, "fare gate: the passenger is through the curtain"),
    _t(P.OPENING, "safety off", P.CLOSING, "fare gate: through before the open ack came"),
    _t(P.CLOSING, "persisted", P.OPEN, "the next vehicle paid under the open barrier: handed over"),
    _t(P.CLOSING, "ack ok", P.OPEN, "late open ack, the next vehicle has paid: handed over"),
    _t(P.CLOSING, "ack ok", P.IDLE, "barrier closed, nobody waiting"),
    _t(P.CLOSING, "ack ok", NEXT_UP, "barrier closed: serve the next vehicle"),
    _t(P.VEHICLE_PRESENT, "ticket", P.PERSISTING, "entry lane: ticket printed: entry record"),
    _t(P.IDLE, "scan", P.VEHICLE_PRESENT, "metro exit: the code held, its tap-in looked up"),
    _t(P.VEHICLE_PRESENT, "trip priced", P.AUTHORISING, "metro exit: the held code authorised"),
    _t(P.VEHICLE_PRESENT, "trip priced", P.IDLE, "metro exit: no fare here, passenger refused"),
    # The vehicle goes away, or an attendant steps in.
    _t(P.VEHICLE_PRESENT, "entry_loop off", P.IDLE, "the vehicle backed away"),
    _t(P.VEHICLE_PRESENT, "entry_loop off", P.CLOSED, "it backed away from a closed lane"),
    _t(P.AUTHORISING, "entry_loop off", P.IDLE, "backed away while paying: Abandon"),
    _t(P.DENIED, "entry_loop off", P.IDLE, "backed away after a refusal"),
    _t(P.IDLE, "attendant open", P.PERSISTING, "manual record for an open"),
    _t(P.CLOSED, "attendant open", P.PERSISTING, "manual record at a closed lane"),
    _t(P.VEHICLE_PRESENT, "attendant open", P.PERSISTING, "manual record for this vehicle"),
    _t(P.AUTHORISING, "attendant open", P.PERSISTING, "Abandon the payment; manual record"),
    _t(P.DENIED, "attendant open", P.PERSISTING, "manual record for a refused vehicle"),
    _t(P.IDLE, "close lane", P.CLOSED, "attendant closes the lane"),
    _t(P.VEHICLE_PRESENT, "close lane", P.CLOSED, "the unpaid vehicle is let go"),
    _t(P.AUTHORISING, "close lane", P.CLOSED, "Abandon the payment in flight"),
    _t(P.DENIED, "close lane", P.CLOSED, "the refused vehicle is let go"),
    _t(P.CLOSED, "reopen lane", P.IDLE, "attendant reopens the lane"),
    _t(P.VEHICLE_PRESENT, "reopen lane", P.PERSISTING, "entry lane: its ticket is out: entry"),
    # Faults: the barrier or the broker stop everything; a full queue stops payments only.
    _t(IN_SERVICE, "barrier down", P.FAULT, "barrier offline or faulted"),
    _t(IN_SERVICE, "link down", P.FAULT, "controller lost the broker"),
    _t(AT_PAY_POINT, "queue full", P.FAULT, "no new paid passages"),
    _t(AT_PAY_POINT, "disk hung", P.FAULT, "no new paid passages: no record could be written"),
    _t(AT_PAY_POINT, "persist failed", P.FAULT, "a record was not written"),
    _t(AT_PAY_POINT, "unreadable", P.FAULT, "the device's words cannot be read: no payments"),
    _t(AT_PAY_POINT, "camera dark", P.FAULT, "no code can be read: no payments"),
    _t(P.OPENING, "tick", P.FAULT, "no ack after max attempts"),
    _t(P.CLOSING, "tick", P.FAULT, "no ack after max attempts"),
    _t(P.OPENING, "ack refused", P.FAULT, "the barrier refused the open"),
    _t(P.CLOSING, "ack refused", P.FAULT, "the barrier refused the close"),
    _t(P.OPENING, "not sent", P.FAULT, "the open could not be sent, max attempts"),
    _t(P.CLOSING, "not sent", P.FAULT, "the close could not be sent, max attempts"),
    _t(P.FAULT, "barrier up", IN_SERVICE, "barrier reports a working state"),
    _t(P.FAULT, "link up", IN_SERVICE, "broker back"),
    _t(P.FAULT, "queue ok", AT_PAY_POINT, "queue has room again"),
    _t(P.FAULT, "disk answers", AT_PAY_POINT, "records can be written again"),
    _t(P.FAULT, "camera sees", AT_PAY_POINT, "fresh frames decoded again"),
    _t(P.FAULT, "ack ok", IN_SERVICE, "a late ack: the barrier is alive"),
    _t(P.FAULT, "ack refused", P.CLOSING, "a late refusal (loop occupied): alive"),
    _t(P.FAULT, "ack refused", AT_PAY_POINT, "a stale refusal decodes: the acks read again"),
    # Healing: no phase waits for ever (lane.core.recovery).
    _t(PASSAGE, "tick", NEXT_UP, "paid, not let through in time: refund record, attendant"),
    _t(PASSAGE, "tick", P.IDLE, "paid, not let through in time: refund record, attendant"),
    _t(P.OPEN, "tick", P.OPENING, "not let through: the next paid vehicle's open"),
    _t(IN_SERVICE, "snapshot", P.FAULT, "the device says it is offline or faulted"),
    _t(P.FAULT, "snapshot", IN_SERVICE, "the device answers and works: its faults clear"),
    _t(PAYING, "snapshot", P.IDLE, "the vehicle left the pay point unheard"),
    _t(PAYING, "snapshot", P.CLOSED, "the vehicle left a closed lane unheard"),
    _t(AT_PAY_POINT, "snapshot", P.CLOSING, "the barrier is up for nobody who paid: close"),
    _t(PASSAGE, "snapshot", P.CLOSING, "through while unheard: the exit edge was lost"),
    # A boom that did not open: barrier_stuck latched, the lane's self-test (open, close).
    _t(P.FAULT, "tick", P.CLOSING, "self-test: not open within move_s: close again"),
    _t(P.FAULT, "entry_loop on", P.CLOSING, "self-test: a vehicle came: close at once"),
    _t(P.FAULT, "safety on", P.CLOSING, "self-test: someone under it: close once clear"),
    _t(P.FAULT, "attendant open", P.CLOSING, "self-test ends: the attendant's vehicle next"),
    _t(P.FAULT, "close lane", P.CLOSING, "self-test ends: the attendant closed the lane"),
    _t(P.IDLE, "latch carried", P.FAULT, "start-up: a barrier fault kept when the lane stopped"),
    # A vehicle that paid before a restart (lane.core.carried).
    _t(CLAIMING, "scan", CLAIMED, "the carried payment's code again: open, no new charge"),
    _t(P.CLOSING, "scan", P.OPEN, "its code under the open barrier: handed over"),
    _t(FOUND_UP, "barrier up", P.OPEN, "the boom up at a restart: the carried vehicle's"),
    _t(FOUND_UP, "snapshot", P.OPEN, "the boom up at a restart: the carried vehicle's"),
)


def _phases(end: Phase | Group) -> frozenset[Phase]:
    return end.phases if isinstance(end, Group) else frozenset({end})


def expanded() -> frozenset[tuple[Phase, str, Phase]]:
    """Every (before, label, after) the table allows, groups expanded; self-loops excluded."""
    return frozenset(
        (before, t.label, after)
        for t in TRANSITIONS
        for before in _phases(t.source)
        for after in _phases(t.target)
        if before != after
    )


_ALLOWED = expanded()


def allows(before: Phase, label: str, after: Phase) -> bool:
    return before == after or (before, label, after) in _ALLOWED


def rows_taken(taken: set[tuple[Phase, str, Phase]]) -> set[Transition]:
    """The table rows that these observed transitions exercise."""
    return {
        t
        for t in TRANSITIONS
        for before, label, after in taken
        if label == t.label and before in _phases(t.source) and after in _phases(t.target)
    }


def event_label(event: ev.Event) -> str:
    """The name an event goes by in the diagram: its type, refined where the outcome differs."""
    match event:
        case ev.SensorChanged(sensor="safety_loop" | "light_curtain", occupied=occupied):
            return "safety on" if occupied else "safety off"
        case ev.SensorChanged(sensor="entry_loop" | "exit_loop" as sensor, occupied=occupied):
            return f"{sensor} {'on' if occupied else 'off'}"
        case ev.SensorChanged():
            return "other sensor"
        case ev.VehicleClassified():
            return "classified"
        case ev.Scanned():
            return "scan"
        case ev.Decided(approved=approved):
            return "approved" if approved else "declined"
        case ev.Persisted():
            return "persisted"
        case ev.PersistFailed():
            return "persist failed"
        case ev.BarrierAcked(ok=ok):
            return "ack ok" if ok else "ack refused"
        case ev.CommandNotSent():
            return "not sent"
        case ev.BarrierReported(state="fault" | "offline"):
            return "barrier down"
        case ev.BarrierReported():
            return "barrier up"
        case ev.DeviceSnapshotted():
            return "snapshot"
        case ev.DeviceUnreadable():
            return "unreadable"
        case ev.AttendantOpen():
            return "attendant open"
        case ev.AttendantCloseLane():
            return "close lane"
        case ev.AttendantReopenLane():
            return "reopen lane"
        case ev.QueueChanged(full=full):
            return "queue full" if full else "queue ok"
        case ev.DiskAnswering(answering=answering):
            return "disk answers" if answering else "disk hung"
        case ev.DiskAnswersAgain():
            return "disk answers again"
        case ev.CameraSees(seeing=seeing):
            return "camera sees" if seeing else "camera dark"
        case ev.LinkChanged(up=up):
            return "link up" if up else "link down"
        case ev.PlateRead():
            return "plate"
        case ev.TicketIssued():
            return "ticket"
        case ev.TripPriced():
            return "trip priced"
        case ev.AttendantNoPass():
            return "no pass"
        case ev.AttendantConfirmFare():
            return "confirm fare"
        case ev.LatchCarried():
            return "latch carried"
        case ev.PaidCarried():
            return "paid carried"
        case ev.Tick():
            return "tick"
        case _:
            assert_never(event)


def mermaid() -> str:
    """The table as a Mermaid stateDiagram-v2; groups are drawn as one pseudo-state each."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    groups: dict[str, Group] = {}
    edges: dict[tuple[str, str], list[str]] = {}
    for t in TRANSITIONS:
        ends = []
        for end in (t.source, t.target):
            if isinstance(end, Group):
                groups[end.name] = end
                ends.append(end.name)
            else:
                ends.append(end.value)
        labels = edges.setdefault((ends[0], ends[1]), [])
        if t.label not in labels:
            labels.append(t.label)
    for group in groups.values():
        lines.append(f'    state "{group.title}" as {group.name}')
    for (source, target), labels in edges.items():
        lines.append(f"    {source} --> {target} : {' / '.join(labels)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    print(mermaid(), end="")


if __name__ == "__main__":
    main()
