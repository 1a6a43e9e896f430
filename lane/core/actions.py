"""Actions: everything the lane core can ask the shell to do (notes, one class per note, are in
lane.core.notes; `Note` is their union)."""

from __future__ import annotations

from dataclasses import dataclass

from lane.core.names import Alarm, PayloadKind, TripSource
from lane.core.notes import Note, NoteBase
from lane.core.records import RecordDraft


@dataclass(frozen=True)
class ShowOnDisplay:
    lines: tuple[str, ...]
    ttl_s: float = 10.0


@dataclass(frozen=True)
class Authorise:
    auth_id: str
    vehicle_id: str
    text: str
    kind: PayloadKind
    amount_minor: int
    currency: str
    deadline: float
    # A metro exit charging a wallet code the maximum fare (its tap-in is found by the payer the
    # acquirer names, not by the code): once approved, the shell prices this trip again with
    # the answer's account, and the decision carries it (`Decided.repriced`).
    reprice: PriceTrip | None = None


@dataclass(frozen=True)
class Abandon:
    """The lane gave up on an authorisation: whatever it charged must be resolved (reversed)."""

    auth_id: str
    reason: str


@dataclass(frozen=True)
class Settle:
    """The record of this authorisation is durable: it must never be reversed. `refund_minor`:
    the record kept that much less than was charged, owed back to the payer (a partial refund,
    durable with the settle)."""

    auth_id: str
    refund_minor: int = 0


@dataclass(frozen=True)
class Persist:
    """Append the draft (fsync). `owes`: the record is a payment whose passage the lane owes
    until `PassageServed` (the digest of its code): the queue keeps that in the same commit, so
    a restart finds it (events.PaidCarried). `owed_pass`: with `owes`, the pass (a metro
    tap-in) this paid exit marks used (`Vehicle.marked_pass`), kept with the owed passage so
    its refund after a restart releases it as a live one does. `ends_owed`: this record
    (`paid_not_passed`) ends the owed passage of that record id, in the same commit."""

    persist_id: str
    draft: RecordDraft
    owes: str | None = None
    ends_owed: str | None = None
    owed_pass: str | None = None


@dataclass(frozen=True)
class PassageServed:
    """The paid vehicle of `record_id` went through: the lane owes it nothing any more (the
    queue forgets the owed passage; no extra wait for it, a later restart just never sees it)."""

    record_id: str


@dataclass(frozen=True)
class OpenBarrier:
    cmd_id: str
    deadline: float
    attempt: int = 1


@dataclass(frozen=True)
class CloseBarrier:
    cmd_id: str
    deadline: float
    attempt: int = 1


@dataclass(frozen=True)
class QueryDevice:
    """Ask the barrier device for its whole truth; it answers with a DeviceSnapshotted."""

    query_id: str
    reason: str


@dataclass(frozen=True)
class IssuePass:
    """Entry lane: sign an entry pass for this vehicle (the plaza's pass key, the wall clock),
    print it as a QR ticket (job id = `issue_id`, printed once), bind it to `plate` if one was
    read; answer with TicketIssued(issue_id, ...)."""

    issue_id: str
    vehicle_id: str
    vehicle_class: int
    plate: str | None


@dataclass(frozen=True)
class PriceTrip:
    """Exit lane: find the trip's entry (`source`: the pass text, the plate's open entry, or
    none: lost), verify it offline, ask the used-pass store, decide the fare; answer with
    exactly one TripPriced(trip_id, ...)."""

    trip_id: str
    vehicle_id: str
    vehicle_class: int  # read at the exit
    source: TripSource
    pass_text: str | None  # source pass; source code: the payment code shown
    plate: str | None  # read at the exit, if any
    code_kind: PayloadKind | None = None  # source code: what the scanner made of it
    account_ref: str | None = None  # the account the acquirer's answer named (metro, repriced)


@dataclass(frozen=True)
class MarkPassUsed:
    """Exit lane: the exit record of this pass is durable: the pass has exited (the used-pass
    store, shared with the plaza), and its plate binding is spent."""

    pass_id: str
    expires_at: float  # unix s: kept in the store until then
    plate: str | None
    record_id: str  # the exit record: a metro gate marks the exit by its time (lane.tap_desk)


@dataclass(frozen=True)
class ReleasePass:
    """Exit lane: the exit record that marked this pass used is refunded (`paid_not_passed`):
    the vehicle did not leave, so the pass is not spent. The lane's own mark is taken back, so
    the pass shown again prices as a trip, not as used."""

    pass_id: str
    record_id: str  # the refunded exit record: a metro gate gives back only a mark made by it


@dataclass(frozen=True)
class KeepLatch:
    """`fault` (one of names.KEPT_LATCHES) was raised: keep it on disk (with the wall time, UTC)
    so a restarted lane starts with it (LatchCarried), not charging the next driver for a boom
    that cannot rise or a device that drops its commands."""

    fault: Alarm
    detail: str


@dataclass(frozen=True)
class DropLatch:
    """`fault` cleared (the boom seen open; the device's ack): its kept latch is gone."""

    fault: Alarm


@dataclass(frozen=True)
class RaiseAlarm:
    code: Alarm
    message: str


@dataclass(frozen=True)
class ClearAlarm:
    code: Alarm


Action = (
    ShowOnDisplay
    | Authorise
    | Abandon
    | Settle
    | Persist
    | PassageServed
    | OpenBarrier
    | CloseBarrier
    | QueryDevice
    | IssuePass
    | PriceTrip
    | MarkPassUsed
    | ReleasePass
    | KeepLatch
    | DropLatch
    | RaiseAlarm
    | ClearAlarm
    | Note
)

__all__ = [
    "Abandon",
    "Action",
    "Authorise",
    "ClearAlarm",
    "CloseBarrier",
    "DropLatch",
    "IssuePass",
    "KeepLatch",
    "MarkPassUsed",
    "Note",
    "NoteBase",
    "OpenBarrier",
    "PassageServed",
    "Persist",
    "PriceTrip",
    "QueryDevice",
    "RaiseAlarm",
    "ReleasePass",
    "Settle",
    "ShowOnDisplay",
]
