"""The lane's state as plain frozen data, and the rules it runs under."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from lane.core.events import Decided
from lane.core.names import (
    BLOCKING_FAULTS,
    Alarm,
    DeviceWords,
    Op,
    PayloadKind,
    Position,
    RecordKind,
    Sensor,
)
from lane.core.trip import Priced, Ticket, Trip

# lane.auth.trip_rules' flag of a trip priced from a pass that had exited already.
PASS_USED = "pass_used"


class Phase(StrEnum):
    IDLE = "idle"
    VEHICLE_PRESENT = "vehicle_present"
    AUTHORISING = "authorising"
    DENIED = "denied"
    PERSISTING = "persisting"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    FAULT = "fault"
    CLOSED = "closed"


class LaneMode(StrEnum):
    TOLL = "toll"
    TRANSIT_ENTRY = "transit-entry"
    TRANSIT_EXIT = "transit-exit"
    # A closed road (docs/closed-road.md): the entry lane issues a pass and opens for every
    # vehicle; the exit lane prices the trip from the pass, then takes the payment.
    TOLL_ENTRY = "toll-entry"
    TOLL_EXIT = "toll-exit"

    @property
    def fare_gate(self) -> bool:
        """A metro gate: passengers known from their codes, no entry or exit loop."""
        return self in (LaneMode.TRANSIT_ENTRY, LaneMode.TRANSIT_EXIT)


# The record kind of a payment in each mode.
RECORD_KINDS = {
    LaneMode.TOLL: RecordKind.TOLL,
    LaneMode.TRANSIT_ENTRY: RecordKind.TAP_IN,
    LaneMode.TRANSIT_EXIT: RecordKind.TAP_OUT,
    LaneMode.TOLL_ENTRY: RecordKind.ENTRY,
    LaneMode.TOLL_EXIT: RecordKind.EXIT,
}


class FareTable(Protocol):
    """Fare lookup: (amount in minor units, ISO currency), or None for an unknown class."""

    def fare_for(self, vehicle_class: int) -> tuple[int, str] | None: ...


@dataclass(frozen=True)
class FlatFares:
    """A fare per vehicle class; the simplest FareTable (tests, defaults)."""

    amounts: tuple[tuple[int, int], ...]
    currency: str = "EUR"

    def fare_for(self, vehicle_class: int) -> tuple[int, str] | None:
        for cls, amount in self.amounts:
            if cls == vehicle_class:
                return amount, self.currency
        return None


COMMITTED_MEMORY = 64


@dataclass(frozen=True)
class LaneRules:
    lane_id: str
    fares: FareTable
    mode: LaneMode = LaneMode.TOLL
    budget_s: float = 2.0
    auth_grace_s: float = 0.5
    max_tries: int = 3
    ack_timeout_s: float = 0.6
    max_cmd_attempts: int = 3
    cmd_ttl_s: float = 3.0
    default_class: int = 1
    passback_window_s: float = 600.0
    gate_hold_s: float = 8.0
    # Bounds on waiting (issue #11 item 3); each phase's dwell is derived from these.
    move_s: float = 4.0  # the barrier reaches a commanded position within this
    pay_dwell_s: float = 120.0  # a vehicle at the pay point without a decision
    pass_dwell_s: float = 60.0  # a paid vehicle not through, a barrier not closed
    persist_dwell_s: float = 10.0  # a record being written
    probe_s: float = 5.0  # in FAULT: ask the device (and retry a held command) this often
    # A boom that failed to open is tried by the lane itself (a self-test, lane.core.recovery)
    # this long after, then after twice as long each time, up to selftest_max_s.
    selftest_s: float = 5.0
    selftest_max_s: float = 60.0
    # toll-exit: a suspect fare (no pass, pass used, plate mismatch ...) waits for the
    # attendant's confirm_fare before the lane takes a payment code.
    attendant_confirms: bool = True
    # toll-entry: an ANPR camera triggered by the entry loop reads the plate just after the
    # vehicle arrives; the pass waits this long for it (0: signed at once with what is known).
    plate_wait_s: float = 0.0
    # transit-exit: the fare is priced by the passenger's open tap-in (entry station to this
    # one, lane.core.metro) instead of the flat fare of the gate.
    metro_pricing: bool = False
    # Fare gates: a code this gate approved, read again within this, is its passenger's phone
    # still held up, not a new passenger (lane.core.reread).
    reread_s: float = 30.0

    @property
    def plaza(self) -> str:
        """The lane's plaza: its id up to the first '/' (`P01/e1` -> `P01`)."""
        return self.lane_id.split("/", 1)[0]


@dataclass(frozen=True)
class Attempt:
    """One authorisation in flight for the vehicle at the pay point."""

    auth_id: str
    text: str
    kind: PayloadKind
    frame_ts: float
    deadline: float


@dataclass(frozen=True)
class Paying:
    """At the pay point with no authorisation in flight: the fare shown, or codes refused."""


@dataclass(frozen=True)
class Authorising:
    attempt: Attempt


@dataclass(frozen=True)
class Committed:
    """The lane is committed to this vehicle: its record is on its way to disk (`record_id`
    None) or durable (since `durable_at`). `approved` is the payment; None when an attendant
    opened (`persist_id` is then the attendant's cmd_id)."""

    persist_id: str
    approved: Decided | None
    frame_ts: float | None  # the frame that held the paying code (the open's latency)
    record_id: str | None = None
    entry: bool = False  # an entry lane's free passage (its `entry` record), not an attendant's
    carried: bool = False  # paid before a restart (lane.core.carried): its record, no new one
    carried_pass: str | None = None  # a carried payment's marked pass (CarriedPayment.marked_pass)
    # When the lane could first open for it (its record durable, or a carried payment claimed):
    # held by a blocking fault, it waits `pass_dwell_s` from here (lane.core.recovery).
    durable_at: float | None = None
    # A payment's code, by its digest (`records.credential_of`): once the record is durable,
    # the code the next vehicle is not charged with (lane.core.before_arrival).
    credential: str | None = None


# A vehicle's sub-phase at the pay point: one of these, so no illegal mix is representable.
Stage = Paying | Authorising | Committed


@dataclass(frozen=True)
class Vehicle:
    vehicle_id: str
    vehicle_class: int
    amount_minor: int | None
    currency: str
    implicit: bool = False  # a fare-gate passenger known only from the code they showed
    tries: int = 0
    stage: Stage = Paying()
    refused_texts: frozenset[str] = frozenset()
    plate: str | None = None  # read by the lane's ANPR camera
    trip: Trip | None = None  # a closed road's lanes only (lane.core.trip)

    # Read-only views of the stage, for the rules that ask one question of it.
    @property
    def attempt(self) -> Attempt | None:
        return self.stage.attempt if isinstance(self.stage, Authorising) else None

    @property
    def committed(self) -> bool:
        """A record for this vehicle is durable or on its way to disk."""
        return isinstance(self.stage, Committed)

    @property
    def approved(self) -> Decided | None:
        return self.stage.approved if isinstance(self.stage, Committed) else None

    @property
    def record_id(self) -> str | None:
        return self.stage.record_id if isinstance(self.stage, Committed) else None

    @property
    def manual(self) -> str | None:
        """The attendant's cmd_id when an attendant opened for this vehicle."""
        stage = self.stage
        if (
            isinstance(stage, Committed)
            and stage.approved is None
            and not stage.entry
            and not stage.carried
        ):
            return stage.persist_id
        return None

    @property
    def carried(self) -> bool:
        """Paid before a restart (lane.core.carried): its refund, if any, says so."""
        return isinstance(self.stage, Committed) and self.stage.carried

    @property
    def marked_pass(self) -> str | None:
        """The pass (a metro tap-in) whose used mark is this vehicle's paid exit record's
        (lane.core.road, MarkPassUsed): None when nothing marks it, or when the trip was priced
        from a pass an exit before had marked (taking that mark back would free a spent pass).
        A carried payment's is the one its record marked before the restart."""
        if isinstance(self.stage, Committed) and self.stage.carried:
            return self.stage.carried_pass
        trip = self.trip
        if self.approved is None or not isinstance(trip, Priced) or PASS_USED in trip.flags:
            return None
        return trip.pass_id

    @property
    def entered_pass(self) -> str | None:
        """The pass this vehicle's `entry` record issued (an entry lane's; None elsewhere): the
        id of the trip the entry opened, which a refund of it names (lane.core.recovery)."""
        trip = self.trip
        stage = self.stage
        if not isinstance(stage, Committed) or not stage.entry or not isinstance(trip, Ticket):
            return None
        return trip.pass_id

    @property
    def pending_persist(self) -> str | None:
        """The persist id of the record this vehicle waits for, if any."""
        stage = self.stage
        if isinstance(stage, Committed) and stage.record_id is None:
            return stage.persist_id
        return None


@dataclass(frozen=True)
class Command:
    cmd_id: str
    op: Op
    attempt: int
    ack_deadline: float | None  # None: not sent yet (held back by a fault or the safety loop)
    acked: bool = False
    # Held after the device refused it: not sent again before this time (or the safety area
    # reporting clear), so a refusal is never answered by an immediate resend.
    retry_at: float | None = None
    # Acks heard for another cmd_id while this one waited: barrier_no_ack says how many (a
    # device that answers every command under a wrong id looks deaf, not broken).
    stray_acks: int = 0


@dataclass(frozen=True)
class Passage:
    """The vehicle the barrier is open (or opening) for; it has a durable record."""

    vehicle_id: str
    record_id: str
    frame_ts: float | None
    vehicle_class: int
    opened_at: float | None = None
    crossings: int = 0
    left: bool = False
    since: float = 0.0  # when the lane committed to it (a paid vehicle waits from here)
    manual: bool = False  # opened by an attendant, not paid
    seen_open: bool = False  # the device reported the barrier open for it: it was let through
    carried: bool = False  # paid before a restart (lane.core.carried): its refund says so
    marked_pass: str | None = None  # Vehicle.marked_pass: released if it is refunded
    entered_pass: str | None = None  # Vehicle.entered_pass: its refund names it

    @property
    def awaited(self) -> bool:
        """The barrier was acked open for it and it is not through yet."""
        return self.opened_at is not None and not self.left


@dataclass(frozen=True)
class Expectation:
    """The barrier must report `target` by `by`, or it is stuck."""

    target: Position  # open | closed
    by: float
    overdue: bool = False  # barrier_stuck(_open) was raised for it


@dataclass(frozen=True)
class StuckLatch:
    """The boom did not open when commanded: `barrier_stuck` holds until the device reports it
    open, whatever the lane wants of it meanwhile, so no further driver pays at a lane whose
    boom cannot rise. The lane tries the boom itself (a self-test: open, then close) when
    nobody is there, at `test_at`: `selftest_s` after the latch, then after twice the wait
    with each of its `tries`, up to `selftest_max_s` (lane.core.backoff)."""

    test_at: float
    tries: int = 0
    asked: bool = False  # a self-test's query is out: its snapshot may start the test
    test_id: str | None = None  # the cmd_id of the self-test's open, while it runs


@dataclass(frozen=True)
class StuckOpen:
    """A close was not reached: `barrier_stuck_open` holds until the device reports the boom
    closed, whatever the lane commands meanwhile (a later open is "reached" at once under a boom
    that is up). Payments go on. While nobody is at the lane it asks the device at `retry_at`,
    and the answer commands the close again (a boom up for nobody), waiting after each of its
    `tries` as the self-tests of a StuckLatch wait."""

    retry_at: float
    tries: int = 0


@dataclass(frozen=True)
class Tap:
    """A transit-entry gate's tap-in on record: its account may not tap in here again for
    `passback_window_s` (anti-passback), unless the tap-in is refunded (`record_id` names it)."""

    account_ref: str
    at: float
    record_id: str


@dataclass(frozen=True)
class CarriedPayment:
    """A vehicle that paid before a restart and was owed its passage (events.PaidCarried): the
    lane honours it once, for the same code shown again or under a boom found up, or writes
    `paid_not_passed` at `due` (what was left of `pass_dwell_s`). `vehicle_id` is its id in
    this run (lane.core.carried.lane_vehicle_id)."""

    record_id: str
    vehicle_id: str
    vehicle_class: int
    credential: str
    due: float
    marked_pass: str | None = None  # the pass its exit marked (PaidCarried): a refund releases it


@dataclass(frozen=True)
class ApprovedCode:
    """A code a fare gate approved (lane.core.reread), by its digest (`records.credential_of`):
    read again within `reread_s` of `at` it is ignored, unless its passenger is gone: seen
    walking through (`crossed`) and the gate seen closed behind them (`gone_at`), after which
    whoever shows it is someone else. `persist_id` is its payment's record, `vehicle_id` the
    passenger it let through."""

    credential: str
    vehicle_id: str
    persist_id: str
    at: float
    crossed: bool = False
    gone_at: float | None = None


@dataclass(frozen=True)
class DeclinedCode:
    """A code the network declined at a fare gate (lane.core.reread), by its digest: read again
    within `reread_s` of `at` it is refused with the same `reason`, not sent again."""

    credential: str
    vehicle_id: str
    reason: str
    at: float


@dataclass(frozen=True)
class PaidCode:
    """The code the vehicle that paid last paid with (lane.core.before_arrival), by its digest
    (`records.credential_of`), with that vehicle and its durable record."""

    credential: str
    vehicle_id: str
    record_id: str


@dataclass(frozen=True)
class UnreadableWords:
    """Words of the barrier device the lane could not read (`barrier_unreadable`): the topic
    and error first heard of them, for the alarm's text."""

    words: DeviceWords
    topic: str
    error: str


@dataclass(frozen=True)
class LaneState:
    rules: LaneRules
    vehicle: Vehicle | None = None
    passage: Passage | None = None
    command: Command | None = None
    barrier: Position = Position.UNKNOWN
    # Each safety sensor (safety_loop, light_curtain) that last reported occupied: the area
    # under the barrier is clear only when none is, whatever order their reports come in.
    occupied: frozenset[Sensor] = frozenset()
    # A safety sensor went occupied while the barrier's position was not known yet (a restart:
    # readings queued in the lane's MQTT session come before the retained state). If the
    # position then turns out to be up, that vehicle went under a boom nobody paid for.
    under_before_known: bool = False
    faults: frozenset[Alarm] = frozenset()
    # The device's words the lane could not read last it heard them, first heard first
    # (barrier_unreadable holds while any is here, its text names each): each kind is read
    # again by its own answer (lane.core.machine).
    unreadable: tuple[UnreadableWords, ...] = ()
    closed_reason: str | None = None
    next_class: int | None = None
    next_plate: str | None = None  # a plate read before its vehicle reached the entry loop
    taps: tuple[Tap, ...] = field(default=())
    violations: int = 0
    # Persist ids of the records the lane committed to (approved payments, attendant opens),
    # newest last, the last COMMITTED_MEMORY of them: a repeated Decided or AttendantOpen for
    # one of these is a redelivery and must not act a second time.
    committed: tuple[str, ...] = ()
    # Alarms that tell the operator without stopping the lane.
    notices: frozenset[Alarm] = frozenset()
    # When the current phase's dwell runs out (None: the phase may last for ever, e.g. idle
    # with the barrier closed); past it the lane asks the device and takes the way out.
    dwell_at: float | None = None
    expect: Expectation | None = None
    latch: StuckLatch | None = None
    stuck_open: StuckOpen | None = None
    # Paid vehicles owed their passage over a restart (lane.core.carried), oldest first.
    carried: tuple[CarriedPayment, ...] = ()
    queries: int = 0
    # Fare gates: the codes approved within `reread_s`, oldest first (lane.core.reread).
    approved_codes: tuple[ApprovedCode, ...] = ()
    # Fare gates: the codes the network declined within `reread_s`, oldest first (ditto).
    declined_codes: tuple[DeclinedCode, ...] = ()
    # When the entry loop was last seen clear (a vehicle drove on or backed away): a frame
    # taken before it shows the vehicle before the one there now (lane.core.before_arrival).
    entry_cleared_at: float | None = None
    # The entry loop held, as last heard (its edges, a snapshot): a vehicle arriving on a loop
    # still held left the one before without its clear being heard (lane.core.before_arrival).
    entry_held: bool = False
    # When the vehicle on the entry loop arrived (None: the loop proved clear, or held with no
    # arrival heard): the frozen-camera rule's arrival (lane.core.frozen), on the same evidence.
    entry_arrived_at: float | None = None
    # Toll lanes: the code the last vehicle to pay paid with, not the next one's (ditto).
    paid_code: PaidCode | None = None

    @property
    def safety_occupied(self) -> bool:
        return bool(self.occupied)

    @property
    def blocked(self) -> bool:
        return bool(self.faults & BLOCKING_FAULTS)

    @property
    def accepting_payments(self) -> bool:
        return not (self.faults or self.closed_reason)


def phase(state: LaneState) -> Phase:
    """The one-word state shown to operators, derived from the lane's data."""
    if state.blocked:
        return Phase.FAULT
    if state.passage is not None:
        cmd = state.command
        if state.passage.left or (cmd is not None and cmd.op == Op.CLOSE):
            return Phase.CLOSING
        if state.passage.opened_at is None:
            return Phase.OPENING
        return Phase.OPEN
    if state.command is not None and state.command.op == Op.CLOSE:
        return Phase.CLOSING
    if state.faults:
        return Phase.FAULT
    vehicle = state.vehicle
    if vehicle is not None:
        if vehicle.committed:
            return Phase.PERSISTING
        if vehicle.attempt is not None:
            return Phase.AUTHORISING
        if vehicle.tries > 0:
            return Phase.DENIED
        return Phase.VEHICLE_PRESENT
    if state.closed_reason is not None:
        return Phase.CLOSED
    return Phase.IDLE
