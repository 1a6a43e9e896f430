"""Notes: what the core tells operators (lane events topic, dashboard, simulator report), one
frozen dataclass per note, so a consumer names a note by its type and mypy catches a typo.

Each note's `name` (a `NoteName`) and `fields()` are its wire form on the events topic: the
shell publishes `{"name": note.name, **note.fields()}`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, ClassVar

from lane.core.names import PayloadKind, Position


class NoteName(StrEnum):
    VEHICLE_ARRIVED = "vehicle_arrived"
    VEHICLE_GONE = "vehicle_gone"
    VEHICLE_LEFT = "vehicle_left"
    EXIT_LOOP_IGNORED = "exit_loop_ignored"
    GATE_TIMEOUT = "gate_timeout"
    BARRIER_OPENED = "barrier_opened"
    BARRIER_RECONCILED = "barrier_reconciled"
    BARRIER_SELF_TEST = "barrier_self_test"
    SCAN_REFUSED = "scan_refused"
    SCAN_WITHOUT_VEHICLE = "scan_without_vehicle"
    SCAN_IGNORED = "scan_ignored"
    CODE_REFUSED = "code_refused"
    DECLINED = "declined"
    LATE_DECISION = "late_decision"
    DUPLICATE_DECISION = "duplicate_decision"
    TAILGATING = "tailgating"
    PAID_NOT_PASSED = "paid_not_passed"
    PAID_CARRIED = "paid_carried"
    ATTENDANT_OPEN = "attendant_open"
    ATTENDANT_OPEN_IGNORED = "attendant_open_ignored"
    ATTENDANT_OPEN_FAILED = "attendant_open_failed"
    LANE_CLOSED = "lane_closed"
    LANE_REOPENED = "lane_reopened"
    PASS_ISSUED = "pass_issued"
    TRIP_PRICED = "trip_priced"
    FARE_CONFIRMED = "fare_confirmed"
    ROAD_EVENT_IGNORED = "road_event_ignored"


@dataclass(frozen=True)
class NoteBase:
    name: ClassVar[NoteName]

    def fields(self) -> dict[str, Any]:
        """The note's fields as JSON-ready data; an optional field that is not set is left out."""
        return {
            k: (str(v) if isinstance(v, StrEnum) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
            if v is not None or k in _ALWAYS
        }


# Fields sent even when None (their absence would change what a consumer reads).
_ALWAYS = frozenset({"latency_ms"})


# Shapes several notes share (each note is still its own class with its own name).
@dataclass(frozen=True)
class _OfVehicle(NoteBase):
    vehicle_id: str


@dataclass(frozen=True)
class _WithReason(NoteBase):
    reason: str


@dataclass(frozen=True)
class _VehicleReason(NoteBase):
    vehicle_id: str
    reason: str


@dataclass(frozen=True)
class _OfAuth(NoteBase):
    auth_id: str


@dataclass(frozen=True)
class VehicleArrived(NoteBase):
    name = NoteName.VEHICLE_ARRIVED
    vehicle_id: str
    vehicle_class: int
    implicit: bool  # a fare-gate passenger known only from their code


@dataclass(frozen=True)
class VehicleGone(_OfVehicle):
    """The vehicle backed away from the pay point before it was cleared to pass."""

    name = NoteName.VEHICLE_GONE


@dataclass(frozen=True)
class VehicleLeft(NoteBase):
    name = NoteName.VEHICLE_LEFT
    vehicle_id: str
    seen: str | None = None  # "snapshot": learnt from the device's truth, the edge was lost


@dataclass(frozen=True)
class ExitLoopIgnored(_OfVehicle):
    name = NoteName.EXIT_LOOP_IGNORED


@dataclass(frozen=True)
class GateTimeout(_OfVehicle):
    name = NoteName.GATE_TIMEOUT


@dataclass(frozen=True)
class BarrierOpened(NoteBase):
    name = NoteName.BARRIER_OPENED
    vehicle_id: str
    record_id: str
    latency_ms: float | None  # from the frame with the code to the open (None: no code)
    handover: bool | None = None  # True: the open barrier was handed to the next vehicle


@dataclass(frozen=True)
class BarrierReconciled(NoteBase):
    """The boom is up for nobody who paid: the lane closes it."""

    name = NoteName.BARRIER_RECONCILED
    device: Position
    cmd: str


class SelfTestStep(StrEnum):
    """What became of a self-test of a boom that failed to open (lane.core.recovery)."""

    STARTED = "started"  # the lane is empty: the test open is commanded
    SKIPPED = "skipped"  # the device reports someone on a loop or under the boom
    PASSED = "passed"  # the boom was seen open: barrier_stuck clears, the test close follows
    FAILED = "failed"  # not open within move_s: the test close follows, the next try backs off
    ABORTED = "aborted"  # someone came while it ran: the boom is closed at once


@dataclass(frozen=True)
class BarrierSelfTest(NoteBase):
    """A step of a self-test; `cmd` is the test open's cmd_id (none when skipped)."""

    name = NoteName.BARRIER_SELF_TEST
    step: SelfTestStep
    cmd: str | None = None


@dataclass(frozen=True)
class ScanRefused(_WithReason):
    name = NoteName.SCAN_REFUSED


@dataclass(frozen=True)
class ScanWithoutVehicle(NoteBase):
    name = NoteName.SCAN_WITHOUT_VEHICLE
    kind: PayloadKind


@dataclass(frozen=True)
class ScanIgnored(_VehicleReason):
    name = NoteName.SCAN_IGNORED
    # The paid record of the code, when the code is the one the vehicle before paid with.
    record_id: str | None = None


@dataclass(frozen=True)
class CodeRefused(_VehicleReason):
    name = NoteName.CODE_REFUSED


@dataclass(frozen=True)
class Declined(_VehicleReason):
    name = NoteName.DECLINED


@dataclass(frozen=True)
class LateDecision(_OfAuth):
    name = NoteName.LATE_DECISION


@dataclass(frozen=True)
class DuplicateDecision(_OfAuth):
    name = NoteName.DUPLICATE_DECISION


@dataclass(frozen=True)
class Tailgating(NoteBase):
    """A vehicle through without a record of its own (a violation record is written)."""

    name = NoteName.TAILGATING
    vehicle_id: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class PaidNotPassed(NoteBase):
    name = NoteName.PAID_NOT_PASSED
    vehicle_id: str
    record_id: str


class CarriedStep(StrEnum):
    """What became of a paid vehicle carried over a restart (lane.core.carried); a lapse is
    the `paid_not_passed` note."""

    CARRIED = "carried"  # start-up: the lane owes it a passage
    CLAIMED = "claimed"  # its code shown again: opened for it, no new charge
    UNDER_OPEN_BOOM = "under_open_boom"  # the boom was up at the restart: that passage is its


@dataclass(frozen=True)
class PaidCarriedNote(NoteBase):
    name = NoteName.PAID_CARRIED
    vehicle_id: str
    record_id: str
    step: CarriedStep


@dataclass(frozen=True)
class AttendantOpened(_WithReason):
    name = NoteName.ATTENDANT_OPEN


@dataclass(frozen=True)
class AttendantOpenIgnored(_WithReason):
    name = NoteName.ATTENDANT_OPEN_IGNORED


@dataclass(frozen=True)
class AttendantOpenFailed(NoteBase):
    name = NoteName.ATTENDANT_OPEN_FAILED
    cmd_id: str


@dataclass(frozen=True)
class LaneClosed(_WithReason):
    name = NoteName.LANE_CLOSED


@dataclass(frozen=True)
class LaneReopened(_WithReason):
    name = NoteName.LANE_REOPENED


@dataclass(frozen=True)
class PassIssued(NoteBase):
    """Entry lane: the vehicle's pass is issued; `printed` False means bound to its plate only."""

    name = NoteName.PASS_ISSUED
    vehicle_id: str
    pass_id: str
    printed: bool
    plate: str | None


@dataclass(frozen=True)
class TripPricedNote(NoteBase):
    """Exit lane: the trip's fare is known (a scanner forgets what it saw: the payment code
    still in view counts now)."""

    name = NoteName.TRIP_PRICED
    vehicle_id: str
    outcome: str
    amount_minor: int | None
    pass_id: str | None
    entry_plaza: str | None
    attendant: bool


@dataclass(frozen=True)
class FareConfirmed(NoteBase):
    name = NoteName.FARE_CONFIRMED
    vehicle_id: str
    attendant: str


@dataclass(frozen=True)
class RoadEventIgnored(_WithReason):
    """A pass, ticket, trip or attendant road op that does not apply now (stale, wrong lane)."""

    name = NoteName.ROAD_EVENT_IGNORED


Note = (
    VehicleArrived
    | VehicleGone
    | VehicleLeft
    | ExitLoopIgnored
    | GateTimeout
    | BarrierOpened
    | BarrierReconciled
    | BarrierSelfTest
    | ScanRefused
    | ScanWithoutVehicle
    | ScanIgnored
    | CodeRefused
    | Declined
    | LateDecision
    | DuplicateDecision
    | Tailgating
    | PaidNotPassed
    | PaidCarriedNote
    | AttendantOpened
    | AttendantOpenIgnored
    | AttendantOpenFailed
    | LaneClosed
    | LaneReopened
    | PassIssued
    | TripPricedNote
    | FareConfirmed
    | RoadEventIgnored
)
