"""Back-office record stores: a record is held once, byte for byte, and an ack names only that.

`store_batch` stores a batch's records in one transaction and returns what the store now holds
of the batch *exactly as sent* (`StoreResult.held`): that list is the ack. A record whose id is
already held with the same bytes is a duplicate (a resend) and is held; a record whose id is
held with other bytes, or whose seq in its queue epoch is held by another record id, is a
conflict: stored in `conflicts` with both digests, never held, never acknowledged, so the lane
keeps its version. Nothing else can make the lane delete a record: not a seq, not a batch id.

Seqs are tracked per queue epoch (lane, epoch): a lane whose queue file was replaced starts a new
epoch at seq 1 and its records are stored beside the old ones. Per epoch the store keeps the
contiguous prefix (every seq base+1..contiguous held) for hole reports; acks do not depend on it.

This module holds the types and the protocol; the SQL, shared by SQLite
(`uplink.sqlite_store`) and PostgreSQL (`uplink.pg`), is in `uplink.sql_store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from uplink.messages import Held, QueueIdentity
from uplink.records import Record
from uplink.refunds import RefundMark, RefundRows, refund_mark
from uplink.trips import TripMark, TripRows, trip_mark


class IngestStoreError(Exception):
    """The store refused or failed a batch; it is not acknowledged (the lane will resend)."""


class StoreUnavailableError(IngestStoreError):
    """The database cannot be reached (refused, down, timed out connecting). Retry."""


class SchemaNewerError(IngestStoreError):
    """The store's schema is newer than this software: refused at open, or met by a write of a
    worker left running while a newer release upgraded the store, which then writes nothing
    (its rows would miss what the upgrade did to the others) and takes no more batches."""


class StoreUpgradingError(IngestStoreError):
    """Opening an old SQLite store, another process held its write lock past the wait: its
    upgrade of the store (which holds it for the whole migration). Open it again: the upgrade
    ends, or its process dies and the lock goes with it."""


class StoreBusyError(IngestStoreError):
    """A lock or statement timeout: another transaction held what the batch needs. Retry."""


@dataclass(frozen=True)
class IngestRecord:
    """One record as the ingest parsed it (the raw bytes are kept as received)."""

    record_id: str
    lane: str
    seq: int
    ts_us: int
    kind: str
    amount_minor: int
    currency: str
    data: bytes
    trip: TripMark | None  # its part in the trip ledger (uplink.trips), kept in columns
    refund: RefundMark | None = None  # its part in a refund's trail (uplink.refunds), as trip

    @classmethod
    def of(cls, record: Record, data: bytes) -> IngestRecord:
        """The row of a decoded record whose bytes as received are `data`."""
        d = record.draft
        return cls(record.record_id, record.lane, record.seq, record.ts_us, d.kind,
                   d.amount_minor, d.currency, data, trip_mark(record),
                   refund_mark(record))  # fmt: skip


@dataclass(frozen=True)
class StoredRecord:
    record_id: str
    epoch: str
    seq: int
    ts_us: int
    data: bytes


@dataclass(frozen=True)
class Conflict:
    """A record the store refused: what it already holds under that id (or that seq) differs."""

    lane: str
    epoch: str
    seq: int
    record_id: str
    held_record_id: str
    stored_digest: str  # hex SHA-256 of the bytes held
    offered_digest: str  # hex SHA-256 of the bytes offered

    def row(self) -> tuple[str, str, int, str, str, str, str]:
        return (self.lane, self.epoch, self.seq, self.record_id, self.held_record_id,
                self.stored_digest, self.offered_digest)  # fmt: skip


@dataclass(frozen=True)
class ConflictRow:
    conflict: Conflict
    count: int
    first_us: int
    last_us: int


@dataclass(frozen=True)
class EpochInfo:
    lane: str
    epoch: str
    base: int
    contiguous: int
    max_seq: int
    first_us: int


@dataclass(frozen=True)
class Gap:
    epoch: str
    first: int
    last: int


@dataclass(frozen=True)
class StoreResult:
    held: tuple[Held, ...]  # the batch's records held byte for byte: the ack
    inserted: int
    duplicates: int
    conflicts: tuple[Conflict, ...]  # refused now; store.conflicts() lists those still open
    contiguous: int  # every seq base+1..contiguous of the epoch is held
    max_seq: int
    new_epoch: bool  # this batch opened the epoch
    other_epochs: tuple[str, ...]  # the lane's earlier epochs, when new_epoch


class IngestStore(Protocol):
    def store_batch(
        self, lane: str, queue: QueueIdentity, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult: ...

    def contiguous(self, lane: str, epoch: str) -> int: ...

    def gaps(self, lane: str) -> list[Gap]: ...

    def count(self, lane: str) -> int: ...

    def records(self, lane: str) -> list[StoredRecord]: ...

    def records_between(self, start_us: int, end_us: int) -> list[bytes]: ...

    def trip_rows(self, entered_before_us: int) -> TripRows: ...

    def refund_rows(self) -> RefundRows: ...

    def lanes(self) -> list[str]: ...

    def epochs(self, lane: str) -> list[EpochInfo]: ...

    def conflicts(self) -> list[ConflictRow]: ...

    def upgrade_pending(self) -> bool: ...

    def close(self) -> None: ...
