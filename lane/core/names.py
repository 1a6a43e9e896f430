"""The core's vocabulary: every name the lane core decides on is a member of a StrEnum here, so
mypy --strict catches a typo that a bare string would hide.

Each enum is a `StrEnum`: a member compares equal to (and hashes like) its wire string, so the
shell may hand the core what a validated message carried and the logs show the plain value.
"""

from __future__ import annotations

from enum import StrEnum


class Alarm(StrEnum):
    """Every alarm code the lane core raises; a fault (in FAULTS) also changes what it does."""

    BARRIER_OFFLINE = "barrier_offline"
    BARRIER_FAULT = "barrier_fault"
    BARRIER_NO_ACK = "barrier_no_ack"
    BARRIER_REFUSED = "barrier_refused"
    BROKER_DOWN = "broker_down"
    QUEUE_FULL = "queue_full"
    DISK_ERROR = "disk_error"
    DISK_NOT_ANSWERING = "disk_not_answering"
    BARRIER_STUCK = "barrier_stuck"
    BARRIER_STUCK_OPEN = "barrier_stuck_open"
    BARRIER_UNREADABLE = "barrier_unreadable"
    CAMERA_BLACKOUT = "camera_blackout"
    QUEUE_HIGH_WATER = "queue_high_water"
    ATTENDANT_NEEDED = "attendant_needed"
    LANE_STUCK = "lane_stuck"
    PAID_NOT_PASSED = "paid_not_passed"
    UNPAID_PASSAGE = "unpaid_passage"


# Faults that stop the lane from taking new payments and from moving the barrier.
BLOCKING_FAULTS = frozenset(
    {
        Alarm.BARRIER_OFFLINE,
        Alarm.BARRIER_FAULT,
        Alarm.BARRIER_NO_ACK,
        Alarm.BARRIER_REFUSED,
        Alarm.BROKER_DOWN,
    }
)
# Faults that stop new payments only (the barrier may still serve a vehicle that already paid).
# A device whose words about its boom cannot be read (barrier_unreadable) may be in any
# position or fault: the lane takes nobody's money it may not be able to let through. A lane
# whose camera reads no code (camera_blackout) must not invite drivers to show one; a vehicle
# that already paid needs no camera to be let through.
PAYMENT_FAULTS = frozenset(
    {
        Alarm.QUEUE_FULL,
        Alarm.DISK_ERROR,
        Alarm.DISK_NOT_ANSWERING,
        Alarm.BARRIER_STUCK,
        Alarm.BARRIER_UNREADABLE,
        Alarm.CAMERA_BLACKOUT,
    }
)
FAULTS = BLOCKING_FAULTS | PAYMENT_FAULTS
# Faults about one command that a later probe of the same command can clear.
COMMAND_FAULTS = frozenset({Alarm.BARRIER_NO_ACK, Alarm.BARRIER_REFUSED})
# The faults of the barrier device itself.
BARRIER_FAULTS = (
    Alarm.BARRIER_OFFLINE,
    Alarm.BARRIER_FAULT,
    Alarm.BARRIER_NO_ACK,
    Alarm.BARRIER_REFUSED,
)
# What a working barrier report clears: not barrier_no_ack, which only an ack clears, as a
# device that reports its state (or answers queries) may still drop every command.
REPORT_CLEARS = tuple(a for a in BARRIER_FAULTS if a is not Alarm.BARRIER_NO_ACK)
# Every alarm that says the barrier cannot be relied on (readiness, metrics). A boom stuck open
# is one too, though only a notice: the lane still takes payments under it.
BARRIER_ALARMS = (
    *BARRIER_FAULTS,
    Alarm.BARRIER_STUCK,
    Alarm.BARRIER_STUCK_OPEN,
    Alarm.BARRIER_UNREADABLE,
)
# The barrier faults a restart must not forget (a boom that did not open, a device that drops
# commands): the shell keeps each on disk while it holds (KeepLatch, DropLatch) and hands it
# back at start-up (LatchCarried), so the next driver is not charged for a barrier that
# cannot let them through.
KEPT_LATCHES = (Alarm.BARRIER_STUCK, Alarm.BARRIER_NO_ACK)


class Sensor(StrEnum):
    """The lane sensors the core knows; the wire may carry others (the core ignores them)."""

    ENTRY_LOOP = "entry_loop"
    SAFETY_LOOP = "safety_loop"
    EXIT_LOOP = "exit_loop"
    LIGHT_CURTAIN = "light_curtain"


# The sensors that watch the area under the barrier: clear only when none is occupied.
SAFETY_SENSORS = (Sensor.SAFETY_LOOP, Sensor.LIGHT_CURTAIN)


class Position(StrEnum):
    """The barrier's position as the device reports it (`unknown` until it has)."""

    UNKNOWN = "unknown"
    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    FAULT = "fault"
    OFFLINE = "offline"


# Positions in which a vehicle can drive under the boom.
BOOM_UP = frozenset({Position.OPEN, Position.OPENING, Position.CLOSING})
# Positions that say the device cannot move the barrier.
BARRIER_DOWN = frozenset({Position.FAULT, Position.OFFLINE})


class DeviceWords(StrEnum):
    """What a barrier device says that the lane may fail to read (`barrier_unreadable` holds
    while any is unreadable). Judged apart: a device whose acks alone broke answers every
    query readably, and that answer says nothing of its acks."""

    ACKS = "acks"  # its answers to commands: read again when an ack decodes
    REPORTS = "reports"  # its states and snapshots: read again when a snapshot decodes


class Op(StrEnum):
    """A barrier command."""

    OPEN = "open"
    CLOSE = "close"


class PayloadKind(StrEnum):
    """What the scanner made of a code (scanner.payload's `kind` values)."""

    TOKEN = "token"
    PAYMENT_CODE = "payment_code"
    EMV = "emv"
    ENTRY_PASS = "entry_pass"  # a closed road's entry pass (`LP1:`): read by exit lanes
    UNKNOWN = "unknown"


# The kinds of code the lane sends for authorisation; anything else is refused at the lane.
PAYABLE_KINDS = frozenset({PayloadKind.TOKEN, PayloadKind.PAYMENT_CODE, PayloadKind.EMV})


class RecordKind(StrEnum):
    TOLL = "toll"
    TAP_IN = "tap_in"
    TAP_OUT = "tap_out"
    MANUAL = "manual"
    VIOLATION = "violation"
    # A closed road (docs/closed-road.md): the entry lane let a vehicle on and issued a pass
    # (amount 0); the exit lane charged the trip of that pass.
    ENTRY = "entry"
    EXIT = "exit"
    # How a partial refund owed on a payment ended (made, made by hand, unpaid): written by
    # the shell's resolver, not the core (lane.auth.refund_ends); no vehicle, no passage.
    REFUND = "refund"


class RefundEndKind(StrEnum):
    """How a partial refund owed on a payment ended (a `refund` record's `refund:` flag).
    UNPAID is not final: the network may still make it (WeChat Pay's ABNORMAL turns SUCCESS
    once refunded by hand there), or an operator says it was made."""

    MADE = "made"  # the network made it
    MADE_BY_HAND = "made_by_hand"  # an operator made it outside the lane (`lane refunds --made`)
    UNPAID = "unpaid"  # the network ended it without paying: an operator's case


class Method(StrEnum):
    """How a record's passage was paid (or not)."""

    TOKEN = "token"
    PAYMENT_CODE = "payment_code"
    EMV = "emv"
    MANUAL = "manual"
    NONE = "none"


class AuthResult(StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    DEFERRED = "deferred"
    MANUAL = "manual"
    NONE = "none"


class TripSource(StrEnum):
    """Where an exit lane takes a trip's entry from (lane.core.road)."""

    PASS = "pass"  # the entry pass QR the driver showed
    PLATE = "plate"  # the open entry bound to the plate the ANPR read
    LOST = "lost"  # none: the attendant declared the pass lost (no_pass)
    CODE = "code"  # metro exit: the open tap-in of the account of the code shown


class PersistError(StrEnum):
    """Why the queue did not write a record (PersistFailed.reason): `queue_full` is that
    fault; every other is `disk_error`, whose text names the cause (lane.core.alarms)."""

    QUEUE_FULL = "queue_full"
    DISK_ERROR = "disk_error"  # a failure of no known class
    DISK_FULL = "disk_full"
    LOCKED = "locked"
    READ_ONLY = "read_only"
    IO_ERROR = "io_error"
    CORRUPT = "corrupt"
