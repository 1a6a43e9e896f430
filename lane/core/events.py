"""Events: everything the lane core can be told. Small, frozen, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from lane.core.names import Alarm, DeviceWords, PayloadKind, PersistError, Position, Sensor


@dataclass(frozen=True)
class SensorChanged:
    """A lane sensor changed (the shell drops readings of sensors the core does not know).

    `event_id` is a fresh unique id from the shell; an arrival uses it as the vehicle id.
    """

    sensor: Sensor
    occupied: bool
    event_id: str


@dataclass(frozen=True)
class VehicleClassified:
    vehicle_class: int


@dataclass(frozen=True)
class Scanned:
    """A code was read; `frame_ts` is when the frame holding it was captured (shell clock)."""

    text: str
    kind: PayloadKind
    reason: str | None
    frame_ts: float
    event_id: str
    # The scanner knows this code to be printed at the booth (a sticker): no driver shows it.
    static: bool = False


@dataclass(frozen=True)
class Decided:
    auth_id: str
    approved: bool
    reason: str
    method: str
    account_ref: str | None = None
    payment_id: str | None = None
    acquirer_ref: str | None = None
    latency_ms: int = 0
    offline: bool = False
    flags: tuple[str, ...] = ()
    repriced: TripPriced | None = None  # Authorise.reprice, answered with the payer's account


@dataclass(frozen=True)
class Persisted:
    persist_id: str
    record_id: str
    seq: int


@dataclass(frozen=True)
class PersistFailed:
    persist_id: str
    reason: PersistError


@dataclass(frozen=True)
class BarrierAcked:
    cmd_id: str
    ok: bool
    state: Position
    error: str | None = None


@dataclass(frozen=True)
class BarrierReported:
    state: Position


@dataclass(frozen=True)
class DeviceSnapshotted:
    """The device's whole truth (after a start, a reconnect, or a QueryDevice).

    `barrier` is its position (BarrierReported's vocabulary); `sensors` each loop or curtain it
    knows with occupied, sorted by name. `event_id` is fresh from the shell: a command or a
    record the snapshot causes is named after it.
    """

    barrier: Position
    sensors: tuple[tuple[str, bool], ...]
    event_id: str


@dataclass(frozen=True)
class DeviceUnreadable:
    """The barrier device said something on its ack, state or snapshot topic that does not
    decode (another firmware's format, a corrupted payload): what it says of its boom, its
    faults and its commands is not known. `topic` and `error` are for the alarm's text;
    `words` is which of the device's words the topic carries (its acks, or its reports)."""

    topic: str
    error: str
    words: DeviceWords


@dataclass(frozen=True)
class AttendantOpen:
    cmd_id: str
    reason: str
    attendant: str


@dataclass(frozen=True)
class AttendantCloseLane:
    reason: str


@dataclass(frozen=True)
class AttendantReopenLane:
    reason: str


@dataclass(frozen=True)
class QueueChanged:
    full: bool
    high_water: bool


@dataclass(frozen=True)
class DiskAnswering:
    """Whether the data directory answers the record queue: False once a read or write has
    waited past `disk_answer_s` (a hung disk: no error, no answer), True once none has for
    `disk_clear_s` (lane.disk_answer). `detail` names the directory and since when."""

    answering: bool
    detail: str = ""


@dataclass(frozen=True)
class DiskAnswersAgain:
    """The data directory answers again while `disk_not_answering` holds for its hold-off
    (`disk_clear_s`): the lane stays closed to payments, and the alarm no longer says the disk
    does not answer. `detail` says when the lane reopens unless it stalls again."""

    detail: str


@dataclass(frozen=True)
class CameraSees:
    """Whether the lane's camera gives codes to read: False while it cannot (lost, black
    frames, capture failed or stalled, decoding stalled, a frozen picture: the shell's camera
    watch, past the scanner's own thresholds), again whenever its cause changes; True once
    fresh frames are decoded again. `detail` says what the shell saw."""

    seeing: bool
    detail: str = ""


@dataclass(frozen=True)
class LinkChanged:
    """The broker link of the controller went down or came back; while down, again whenever
    the cause changes (the text `broker_down` names: a TLS failure, an unreadable CA file)."""

    up: bool
    cause: str | None = None


@dataclass(frozen=True)
class CommandNotSent:
    """The shell could not hand a barrier command to the broker (h11's send_failed).

    The core treats it like an ack timeout of that send, at once: the same cmd_id goes again
    until `max_cmd_attempts`, then the command is held under `barrier_no_ack`.
    """

    cmd_id: str
    reason: str


@dataclass(frozen=True)
class PlateRead:
    """The lane's ANPR camera read a plate (lane/{id}/io/plate)."""

    plate: str


@dataclass(frozen=True)
class TicketIssued:
    """Entry lane: the shell signed the pass of `IssuePass(issue_id)` and tried to print it.

    `printed` False with `error` (paper_out, offline, bad_job, timeout): the ticket is not in
    the driver's hand; the shell sends the job again once the printer is ready, and posts
    another TicketIssued for the same issue_id when it prints. `pass_id` None: the pass could
    not be signed at all (no usable pass key)."""

    issue_id: str
    pass_id: str | None
    printed: bool
    error: str | None = None


@dataclass(frozen=True)
class TripPriced:
    """Exit lane: the shell's answer to `PriceTrip(trip_id)` (lane.auth.trip_rules).

    `found` False: a plate lookup found no open entry (the lane waits for the pass). Else the
    decision: `amount_minor` None when the exit cannot be priced (a configuration fault)."""

    trip_id: str
    found: bool
    outcome: str = ""
    amount_minor: int | None = None
    currency: str = ""
    charged_class: int = 0
    entry_plaza: str | None = None
    pass_id: str | None = None
    pass_exp: float | None = None
    flags: tuple[str, ...] = ()
    attendant: bool = False
    display: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttendantNoPass:
    """Exit lane: the attendant declares the pass of the vehicle at the pay point lost."""

    cmd_id: str
    attendant: str


@dataclass(frozen=True)
class AttendantConfirmFare:
    """Exit lane: the attendant confirms the suspect fare shown (pass used, plate mismatch...)."""

    cmd_id: str
    attendant: str


@dataclass(frozen=True)
class LatchCarried:
    """At start-up: the lane stopped (or crashed) with `fault` (one of names.KEPT_LATCHES)
    raised, as the shell kept it on disk (KeepLatch) since `since` (UTC, ISO 8601) with
    `detail`. The lane starts with it raised: a restart does not make a boom that did not open,
    or a device that dropped commands, trustworthy again. `event_id` is a fresh unique id from
    the shell: a carried `barrier_no_ack`'s test close is named after it."""

    fault: Alarm
    since: str
    detail: str
    event_id: str


@dataclass(frozen=True)
class PaidCarried:
    """At start-up: the lane stopped (or crashed) owing a paid vehicle its passage. Its paid
    record `record_id` (vehicle `vehicle_id`, class `vehicle_class`) was committed `age_s`
    seconds ago (wall time) and neither a passage nor a `paid_not_passed` record followed it.
    `credential` is the digest of the code it paid with (lane.core.records.credential_of),
    never the code. `event_id` is a fresh unique id from the shell. `marked_pass`: the pass
    (a metro tap-in) its exit record marked used (actions.Persist.owed_pass), which a refund
    of it releases."""

    record_id: str
    vehicle_id: str
    vehicle_class: int
    credential: str
    age_s: float
    event_id: str
    marked_pass: str | None = None


@dataclass(frozen=True)
class Tick:
    """Time passed: the shell calls step with Tick at next_deadline()."""


Event = (
    SensorChanged
    | VehicleClassified
    | Scanned
    | Decided
    | Persisted
    | PersistFailed
    | BarrierAcked
    | CommandNotSent
    | BarrierReported
    | DeviceSnapshotted
    | DeviceUnreadable
    | AttendantOpen
    | AttendantCloseLane
    | AttendantReopenLane
    | QueueChanged
    | DiskAnswering
    | DiskAnswersAgain
    | CameraSees
    | LinkChanged
    | PlateRead
    | TicketIssued
    | TripPriced
    | AttendantNoPass
    | AttendantConfirmFare
    | LatchCarried
    | PaidCarried
    | Tick
)
