"""Which vehicles entered a closed road and have not exited: a query over ingested records.

An `entry` record (written by a toll-entry lane) opens a trip under its pass id; an `exit`
record carrying the same pass id closes it. A metro's `tap_in` opens a trip under its own
record id (as hex: the id a `transit-exit` gate puts in its `tap_out`'s `pass_id`, docs/
closed-road.md#metro), and the `tap_out` naming it closes it. A declined tap-in admitted
nobody and a declined exit let nobody out: neither counts. Two entries under one trip id (a
pass shown at two entry lanes) are one trip, entered at the earlier of them. The refund of an
entry or a tap-in (`paid_not_passed`: the vehicle was held by a fault and never let in, and
the record undoes its entry) closes the trip that entry opened, as its exit would: an entry
refund names the entry's pass, a tap-in refund the tap-in's record (`record:<id>`). The
refund of an exit or a tap-out (the vehicle was never let out) undoes that exit, the record
its `record:<id>` names, whatever the order they arrive in: the exit closes nothing, so its
trip is open again (or its exit no longer unmatched), and the passenger's later exit closes
it as any exit would.

`trip_mark` says what one record is to the ledger and `trip_ledger` is the ledger of a set of
encoded records, both pure. The back office does not decode its records to answer: the store
keeps each record's mark in columns filled at ingest (`trip_role`, `trip_id`, indexed), a
table of the trips open now, the count of trips closed and the exits that closed none, kept in
the same transactions; `open_trips` asks it for the entries of open trips (from that table),
the closed count, the unmatched exits and the unreadable count in SQL (`TripIndex.trip_rows`,
shared by SQLite and PostgreSQL, none of it a walk of every entry and exit), decoding only the
open trips' entries. For the same records the answer is `trip_ledger`'s, whatever order
they arrived in: an exit ingested before its entry closes the trip when the entry comes.

The back office answers from what it has ingested, so a trip is "open" until the exit lane's
record has arrived, which may lag while that lane is offline. An exit whose pass has no
ingested entry is reported apart (`unmatched_exits`): its entry record has not arrived yet, or
the pass was not issued by an entry lane of this road.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from lane.core.names import AuthResult, RecordKind
from lane.core.records import FLAG_RECORD, REFUND_FLAG, flag_value, tap_in_trip_id
from lane.wire.codec import PayloadError
from uplink.records import Record

END_OF_TIME_US = 1 << 62
ENTRY_KINDS = frozenset({"entry", "tap_in"})
EXIT_KINDS = frozenset({"exit", "tap_out"})


class TripRole(StrEnum):
    """What a stored record is to the ledger (the store's `trip_role` column)."""

    ENTRY = "entry"  # opens a trip
    EXIT = "exit"  # closes one (an exit, or the refund of its entry)
    UNREADABLE = "unreadable"  # its bytes do not decode (counted, never fatal)
    # The refund of an exit: its `trip_id` is the record id of the exit it undoes (not a trip).
    UNDO = "undo"
    # An exit whose refund the store holds: it closes nothing (set by the store, never marked).
    REFUNDED = "refunded"


@dataclass(frozen=True)
class TripMark:
    role: TripRole
    trip_id: str | None  # None only when UNREADABLE
    # UNDO: the trip the refunded exit closed, when the refund names it (its pass): the store
    # locks it (uplink.pg); not stored.
    undone_trip: str | None = None


UNREADABLE = TripMark(TripRole.UNREADABLE, None)


def trip_mark(record: Record) -> TripMark | None:
    """Pure: the record's part in a trip; None when it takes none (another kind, declined, a
    refund naming no record it undoes, or no trip id an exit could name)."""
    d = record.draft
    if d.auth.result == AuthResult.DECLINED:
        return None
    if REFUND_FLAG in d.flags:
        return _undone_exit(record) if d.kind in EXIT_KINDS else _undone_entry(record)
    role = (
        TripRole.ENTRY if d.kind in ENTRY_KINDS else TripRole.EXIT if d.kind in EXIT_KINDS else None
    )
    trip = _trip_id(record)
    return None if role is None or trip is None else TripMark(role, trip)


def _undone_entry(record: Record) -> TripMark | None:
    """A refund closes the trip of the entry it undoes; it never opens one of its own (under
    the refund's own id no exit would ever close it). An entry refund written before refunds
    named their pass names no trip."""
    d = record.draft
    refunded = flag_value(d.flags, FLAG_RECORD)
    if d.kind == RecordKind.ENTRY:
        trip = d.pass_id
    elif d.kind == RecordKind.TAP_IN and refunded is not None:
        try:
            trip = tap_in_trip_id(refunded, d).hex()
        except ValueError:
            trip = None  # not a gate's tap-in: no trip was opened under it
    else:
        trip = None
    return None if not trip else TripMark(TripRole.EXIT, trip)


def _undone_exit(record: Record) -> TripMark | None:
    """The refund of an exit undoes the exit its `record:<id>` names (one written before
    refunds named their record names none)."""
    d = record.draft
    refunded = flag_value(d.flags, FLAG_RECORD)
    return None if not refunded else TripMark(TripRole.UNDO, refunded, d.pass_id or None)


def stored_mark(data: bytes) -> TripMark | None:
    """Pure: the mark of a record's stored bytes (what a store upgrade fills old rows with)."""
    record = Record.readable(data)
    return UNREADABLE if record is None else trip_mark(record)


@dataclass(frozen=True)
class OpenTrip:
    pass_id: str
    record_id: str  # the entry record
    lane: str  # the entry lane
    entry_plaza: str | None
    ts_us: int  # when the vehicle entered
    vehicle_class: int
    plate: str | None


@dataclass(frozen=True)
class TripLedger:
    open_trips: tuple[OpenTrip, ...]  # entered, not (yet) exited; oldest first
    closed: int  # entries with an exit (or the refund of the entry), not refunded
    unmatched_exits: tuple[str, ...]  # record ids of exits whose entry is not held, not refunded
    unreadable: int  # stored records that do not decode (counted, never fatal)
    # The store's upgrade has not yet reached every record (PostgreSQL, docs/uplink.md):
    # trips of the records it has not reached are missing from this answer.
    upgrading: bool = False


@dataclass(frozen=True)
class TripRows:
    """What the store's index answers (`TripIndex.trip_rows`), in no particular order."""

    open_entries: list[bytes]  # every entry record of a trip with no exit, entered before
    closed: int  # trip ids with an entry and an exit
    unmatched_exits: list[str]  # record ids of exits with no entry
    unreadable: int
    upgrading: bool  # an upgrade job of the store has not finished


class TripIndex(Protocol):
    def trip_rows(self, entered_before_us: int) -> TripRows: ...


def trip_ledger(blobs: Iterable[bytes]) -> TripLedger:
    """Pure: the trips of a set of encoded records (in any order). An exit whose refund is
    among them closes nothing."""
    entries: dict[str, OpenTrip] = {}
    exits: dict[str, list[str]] = {}
    marked, unreadable = _marked(blobs)
    undone = {trip for _, role, trip in marked if role == TripRole.UNDO}
    for record, role, trip in marked:
        if role == TripRole.ENTRY:
            _keep_first(entries, _open_trip(record, trip))
        elif role == TripRole.EXIT and record.record_id not in undone:
            exits.setdefault(trip, []).append(record.record_id)
    still_open = (t for p, t in entries.items() if p not in exits)
    unmatched = [r for p, ids in exits.items() if p not in entries for r in ids]
    closed = sum(1 for p in entries if p in exits)
    return _ledger(still_open, closed, unmatched, unreadable)


def overdue(ledger: TripLedger, entered_before_us: int) -> TripLedger:
    """Pure: the ledger with only the open trips that entered before `entered_before_us`."""
    kept = tuple(t for t in ledger.open_trips if t.ts_us < entered_before_us)
    return replace(ledger, open_trips=kept)


def indexed_ledger(rows: TripRows) -> TripLedger:
    """Pure: the ledger of what the store's index answered (the open entries decoded)."""
    entries: dict[str, OpenTrip] = {}
    # The store decoded them at ingest; a row changed by hand since may not decode.
    marked, unreadable = _marked(rows.open_entries)
    for record, role, trip in marked:
        if role == TripRole.ENTRY:
            _keep_first(entries, _open_trip(record, trip))
    unreadable += rows.unreadable
    ledger = _ledger(entries.values(), rows.closed, rows.unmatched_exits, unreadable)
    return replace(ledger, upgrading=rows.upgrading)


def open_trips(store: TripIndex, entered_before_us: int = END_OF_TIME_US) -> TripLedger:
    """The ledger over every ingested record, from the store's trip index;
    `entered_before_us` drops trips that entered later (e.g. now minus the road's time limit:
    the vehicles overdue on the road)."""
    return indexed_ledger(store.trip_rows(entered_before_us))


def _marked(blobs: Iterable[bytes]) -> tuple[list[tuple[Record, TripRole, str]], int]:
    """The records among `blobs` that take part in a trip, each with its role and trip id,
    and how many of `blobs` did not decode."""
    marked: list[tuple[Record, TripRole, str]] = []
    unreadable = 0
    for blob in blobs:
        try:
            record = Record.decode(blob)
        except PayloadError:
            unreadable += 1
            continue
        mark = trip_mark(record)
        if mark is not None and mark.trip_id is not None:
            marked.append((record, mark.role, mark.trip_id))
    return marked, unreadable


def _ledger(
    still_open: Iterable[OpenTrip], closed: int, unmatched: Iterable[str], unreadable: int
) -> TripLedger:
    ordered = sorted(still_open, key=lambda t: (t.ts_us, t.pass_id))
    return TripLedger(tuple(ordered), closed, tuple(sorted(unmatched)), unreadable)


def _keep_first(entries: dict[str, OpenTrip], trip: OpenTrip) -> None:
    held = entries.get(trip.pass_id)
    if held is None or (trip.ts_us, trip.record_id) < (held.ts_us, held.record_id):
        entries[trip.pass_id] = trip


def _open_trip(record: Record, trip: str) -> OpenTrip:
    d = record.draft
    plaza = d.entry_plaza or record.lane.split("/")[0]
    return OpenTrip(trip, record.record_id, record.lane, plaza, record.ts_us, d.vehicle_class,
                    d.plate)  # fmt: skip


def _trip_id(record: Record) -> str | None:
    d = record.draft
    if d.pass_id is not None or d.kind != "tap_in":
        return d.pass_id
    try:
        return tap_in_trip_id(record.record_id, d).hex()
    except ValueError:
        return None  # no exit gate can name it
