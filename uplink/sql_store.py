"""The store logic of `uplink.store` in SQL, over any DB-API cursor: what a batch holds byte
for byte, duplicates, conflicts (and their resolution), the prefix per queue epoch. Subclasses
(`uplink.sqlite_store`, `uplink.pg`) provide transactions and the dialect's parameter style."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from lane.core.names import RecordKind
from lane.core.records import REFUND_FLAG
from uplink.messages import Held, QueueIdentity, digest
from uplink.records import Record
from uplink.refunds import MADE_ROLES, RefundMark, RefundRole, RefundRows, stored_refund_mark
from uplink.store import (
    Conflict,
    ConflictRow,
    EpochInfo,
    Gap,
    IngestRecord,
    IngestStoreError,
    StoredRecord,
    StoreResult,
)
from uplink.trips import (
    ENTRY_KINDS,
    EXIT_KINDS,
    TripMark,
    TripRole,
    TripRows,
    stored_mark,
    trip_mark,
)

# The columns of a stored record, in the order both stores insert them.
RECORD_COLUMNS = (
    "record_id, lane, epoch, seq, ts_us, kind, amount_minor, currency, data, ingested_us,"
    " trip_role, trip_id, refund_of, refund_role"
)
COLUMN_COUNT = len(RECORD_COLUMNS.split(","))
# The store's schema version: SQLite's `user_version`, named in PostgreSQL's schema comment.
SCHEMA_VERSION = 8
ADVANCE_CHUNK = 1000  # seqs read per step when the prefix advances
# Rows (or trip ids) per step of an upgrade, each a transaction of its own in PostgreSQL.
UPGRADE_CHUNK = 5000
# A new batch's first entries of trips (`{rows}`: the dialect's table `t` of them, columns
# trip id, record id, time: `SqlIngestStore._entry_rows`), each opening its trip unless an exit
# of it is held. Parameters: the rows', then exit.
OPEN_NEW = (
    "INSERT INTO {open_trips} AS o (trip_id, record_id, ts_us)"
    " SELECT t.column1, t.column2, t.column3 FROM {rows}"
    " WHERE (SELECT 1 FROM {records} AS x WHERE x.trip_role=? AND x.trip_id=t.column1 LIMIT 1)"
    " IS NULL"
)
# OPEN_NEW's entry of a trip open already (by an entry stored before) moves it there when it is
# the earlier entry (SQLite; PostgreSQL stores such a batch as held, `uplink.pg`).
EARLIER_ENTRY = (
    " ON CONFLICT (trip_id) DO UPDATE SET record_id = excluded.record_id,"
    " ts_us = excluded.ts_us WHERE excluded.ts_us < o.ts_us OR (excluded.ts_us = o.ts_us"
    " AND excluded.record_id{bytewise} < o.record_id{bytewise})"
)
# The open trips come from their own table, as big as the trips open now, not from the index,
# which holds every entry and exit ever ingested. Each entry's record is read by its key in a
# scalar subquery, which PostgreSQL runs per row: a join could be planned as a hash join over
# all of `records` while the table's statistics are young. Parameters: entered before.
OPEN_ENTRIES = (
    "SELECT (SELECT r.data FROM {records} AS r WHERE r.record_id = o.record_id)"
    " FROM {open_trips} AS o WHERE o.ts_us < ?"
)
# The earliest entry of the trip id t.column1 (by time, then record id compared byte by byte,
# as uplink.trips._keep_first does): its {column}.
_FIRST_ENTRY = (
    "SELECT e.{column} FROM {records} AS e WHERE e.trip_role=? AND e.trip_id=t.column1"
    " ORDER BY e.ts_us, e.record_id{bytewise} LIMIT 1"
)
# The open-trips rows of some trip ids as the records hold them: each trip id with an entry
# and no exit, at its earliest entry. Driven by the trip ids, each probing `records_trip`
# in scalar subqueries (never turned into joins, so never a walk of every entry or exit,
# whatever the planner thinks of the table). `{ids}`: "(?), (?), ..." for the trip ids.
# Parameters: entry, entry, the trip ids, exit.
REOPEN = (
    "INSERT INTO {open_trips} (trip_id, record_id, ts_us) SELECT id, first_id, first_us FROM"
    " (SELECT t.column1 AS id,"
    f" ({_FIRST_ENTRY.replace('{column}', 'record_id')}) AS first_id,"
    f" ({_FIRST_ENTRY.replace('{column}', 'ts_us')}) AS first_us"
    " FROM (VALUES {ids}) AS t WHERE (SELECT 1 FROM {records} AS x"
    " WHERE x.trip_role=? AND x.trip_id=t.column1 LIMIT 1) IS NULL) AS w"
    " WHERE first_id IS NOT NULL"
)
# Whether an entry of the trip id t.{column} is held (NULL: none). Parameters: entry.
NO_ENTRY = (
    "(SELECT 1 FROM {records} AS x WHERE x.trip_role=? AND x.trip_id=t.{column} LIMIT 1) IS NULL"
)
# The closed count and the unmatched exits are kept without a walk of every entry and exit,
# and without work on a closed road's common path: each batch adds to its epoch's row the open
# trips its exits closed (`closed`), and keeps its exits that closed none, its "strays" (an
# exit before its entry, one whose pass no entry lane issued, a second exit), but only while
# their trip has no entry: a batch that leaves a trip of its own with an entry and strays
# prunes them (PRUNE_STRAYS), counting the trip closed if they were all its exits (a "late"
# entry: LATE_CLOSED). So the strays are the unmatched exits, no more, and `lane trips` reads
# them (STRAYS). An upgrade adds the trips closed before it to `trip_counts`
# (UpgradeJob.TALLY, UpgradeJob.PRUNE).
CLOSED_COUNTS = (
    "SELECT (SELECT COALESCE(SUM(closed), 0) FROM {epochs})"
    " + (SELECT COALESCE(SUM(closed), 0) FROM {trip_counts})"
)
# Every stray with its trip id, whether an entry of that trip is held, and how many exits of
# it are held: a stray of a trip with an entry is one a release before 6 kept, until the
# upgrade's PRUNE job reaches it (a late entry's trip is counted from them meanwhile). Each
# record is read by its key in a scalar subquery, never a join: while the table's statistics
# are young PostgreSQL would plan one as a hash join over all of `records`. Parameters:
# entry, exit.
STRAYS = (
    "SELECT w.record_id, w.trip_id,"
    " (SELECT 1 FROM {records} AS x WHERE x.trip_role=? AND x.trip_id=w.trip_id LIMIT 1),"
    " (SELECT COUNT(*) FROM {records} AS y WHERE y.trip_role=? AND y.trip_id=w.trip_id)"
    " FROM (SELECT s.record_id, (SELECT r.trip_id FROM {records} AS r"
    " WHERE r.record_id = s.record_id) AS trip_id FROM {stray_exits} AS s) AS w"
)
# The exits of some trip ids (`{ids}`, as REOPEN) whose trip has no entry, as strays (an
# upgrade's, for the rows stored before strays were kept). Parameters: exit, the trip ids,
# entry.
OLD_STRAYS = (
    "INSERT INTO {stray_exits} (record_id, trip_id) SELECT t.record_id, t.trip_id"
    " FROM {records} AS t WHERE t.trip_role=? AND t.trip_id IN (VALUES {ids})"
    f" AND {NO_ENTRY.replace('{column}', 'trip_id')} ON CONFLICT DO NOTHING"
)
# How many of some trip ids (`{ids}`) are closed (an entry and an exit held), counted by no
# batch meanwhile (`counted`) and closed by an exit that was no stray: an upgrade's tally of
# the trips closed before it. Parameters: the trip ids, entry, exit, exit.
TALLIED = (
    "SELECT COUNT(*) FROM (VALUES {ids}) AS t"
    " WHERE EXISTS (SELECT 1 FROM {records} AS e WHERE e.trip_role=? AND e.trip_id=t.column1)"
    " AND EXISTS (SELECT 1 FROM {records} AS o WHERE o.trip_role=? AND o.trip_id=t.column1)"
    " AND NOT EXISTS (SELECT 1 FROM {counted} AS c WHERE c.trip_id=t.column1)"
    " AND EXISTS (SELECT 1 FROM {records} AS z WHERE z.trip_role=? AND z.trip_id=t.column1"
    " AND z.record_id NOT IN (SELECT record_id FROM {stray_exits}))"
)
# Which of some trip ids (`{ids}`) had an entry and no exit but those of a batch (`{batch}`:
# the record ids of its exits, its entries of them having opened nothing): the trips it
# closed. Parameters: the trip ids, entry, exit, the batch's exits.
WERE_OPEN = (
    "SELECT t.column1 FROM (VALUES {ids}) AS t"
    " WHERE EXISTS (SELECT 1 FROM {records} AS e WHERE e.trip_role=? AND e.trip_id=t.column1)"
    " AND NOT EXISTS (SELECT 1 FROM {records} AS o WHERE o.trip_role=? AND o.trip_id=t.column1"
    " AND o.record_id NOT IN ({batch}))"
)
# Whether an exit of the trip id t.column1 that is (`{is}`: IS NOT NULL) or is not (IS NULL) a
# stray is held (NULL: none). Scalar subqueries, as REOPEN's: PostgreSQL could turn EXISTS into
# a join over every exit.
_STRAY_EXIT = (
    "(SELECT 1 FROM {records} AS x WHERE x.trip_role=? AND x.trip_id=t.column1 AND (SELECT 1"
    " FROM {stray_exits} AS s WHERE s.record_id = x.record_id) {is} LIMIT 1)"
)
# Which of some trip ids (`{ids}`) have an entry, a stray and no exit but strays: the trips a
# late entry closed, which no batch counted (PRUNE_STRAYS then drops their strays). Parameters:
# the trip ids, entry, exit, exit.
LATE_CLOSED = (
    "SELECT t.column1 FROM (VALUES {ids}) AS t"
    f" WHERE NOT ({NO_ENTRY.replace('{column}', 'column1')})"
    f" AND {_STRAY_EXIT.replace('{is}', 'IS NOT NULL')} IS NOT NULL"
    f" AND {_STRAY_EXIT.replace('{is}', 'IS NULL')} IS NULL"
)
# The strays of those of some trip ids (`{ids}`) that have an entry: no longer unmatched, and
# counted (by the exit that closed the trip, or as LATE_CLOSED says). Parameters: exit, the
# trip ids, entry.
PRUNE_STRAYS = (
    "DELETE FROM {stray_exits} WHERE record_id IN (SELECT x.record_id FROM {records} AS x"
    " WHERE x.trip_role=? AND x.trip_id IN (SELECT t.column1 FROM (VALUES {ids}) AS t WHERE"
    f" NOT ({NO_ENTRY.replace('{column}', 'column1')})))"
)
# Which of some record ids (`{ids}`: a batch's exits, and the exits its refunds of exits name)
# are exits whose refund is held (a refund of an exit is marked `undo`, its trip id the exit's
# record id): the exits a batch undoes, whatever came first. Parameters: exit, the ids, undo.
UNDONE = (
    "SELECT x.record_id, x.trip_id FROM {records} AS x WHERE x.trip_role=?"
    " AND x.record_id IN ({ids}) AND (SELECT 1 FROM {records} AS u WHERE u.trip_role=?"
    " AND u.trip_id = x.record_id LIMIT 1) IS NOT NULL"
)
# How many of some trip ids (`{ids}`) the kept counts hold closed: an entry and an exit that
# is no stray held. A trip with an entry whose exits are all strays (kept while an upgrade
# runs) is counted from them when read (STRAYS), not here: a refund undoing such an exit
# changes that count alone. Parameters: the trip ids, entry, exit.
CLOSED_AMONG = (
    "SELECT COUNT(*) FROM (VALUES {ids}) AS t"
    f" WHERE NOT ({NO_ENTRY.replace('{column}', 'column1')})"
    f" AND {_STRAY_EXIT.replace('{is}', 'IS NULL')} IS NOT NULL"
)
# Which of some trip ids (`{ids}`) a closed count holds while an upgrade's tally may be
# running, read in one snapshot with the tally's state (`{tally}`: whether its job is pending,
# and the last trip id it counted, NULL: none yet): every one once it is done (a batch that
# found it running may read this after its last chunk committed, which emptied `counted`:
# read apart, a trip it had counted was held by no count); else those a batch counted
# meanwhile (`counted`) and those up to the tally's last trip id (compared as the tally
# orders them). Parameters: the trip ids.
ACCOUNTED = (
    "SELECT t.column1 FROM (VALUES {ids}) AS t, ({tally}) AS u WHERE NOT u.pending"
    " OR t.column1 <= u.after"
    " OR (SELECT 1 FROM {counted} AS c WHERE c.trip_id = t.column1) IS NOT NULL"
)
# The refunds owed and not made (uplink.refunds): each `tap_out` owing one whose payment has
# no `made` or `made_by_hand` record held, with its payment's latest `unpaid` record (NULL:
# none). Driven by the refund index (`refund_of`, where set), the ends probed by key in scalar
# subqueries. Parameters: unpaid, owed, made, made by hand.
REFUND_OPEN = (
    "SELECT o.data, (SELECT e.data FROM {records} AS e WHERE e.refund_of = o.refund_of"
    " AND e.refund_role = ? ORDER BY e.ts_us DESC LIMIT 1)"
    " FROM {records} AS o WHERE o.refund_of IS NOT NULL AND o.refund_role = ?"
    " AND (SELECT 1 FROM {records} AS m WHERE m.refund_of = o.refund_of"
    " AND m.refund_role IN (?, ?) LIMIT 1) IS NULL"
)
# How a batch's UPDATE of its epoch's row adds the trips it closed. Parameter: how many.
ADD_CLOSED = "closed = closed + ?"
TALLY_SOURCE = "upgrade"  # the row of `trip_counts` an upgrade's tally adds to
ROLE_COUNT = "SELECT COUNT(*) FROM {records} WHERE trip_role=?"
# Where the run of held seqs that follows on from a prefix ends, within the next ADVANCE_CHUNK
# held seqs (NULL when the next one does not follow on): seqs are unique, so the n-th seq above
# the prefix p follows on exactly when it is p + n. Parameters: lane, epoch, p, chunk, p.
RUN_END = (
    "SELECT MAX(seq) AS upto FROM (SELECT seq, ROW_NUMBER() OVER (ORDER BY seq) AS n FROM"
    " (SELECT seq FROM {records} WHERE lane=? AND epoch=? AND seq > ? ORDER BY seq LIMIT ?)"
    " AS c) AS t WHERE seq - n = ?"
)
# How a new batch (seqs first..last) moves its epoch's row on, under the row's lock and over its
# latest committed version: the prefix becomes the batch's last seq when it reached the batch
# and nothing is held beyond it; the highest seq grows. Parameters: `move_on_args`.
MOVE_ON = (
    "contiguous = CASE WHEN contiguous >= ? AND max_seq <= ? AND contiguous < ? THEN ?"
    " ELSE contiguous END, max_seq = CASE WHEN max_seq > ? THEN max_seq ELSE ? END"
)


def move_on_args(first: int, last: int) -> tuple[int, ...]:
    return (first - 1, last, last, last, last, last)


def fills_a_hole(first: int, last: int, contiguous: int) -> bool:
    """After MOVE_ON: the prefix reached the batch but stopped short of its end, so seqs beyond
    the batch are held and the prefix must be walked on over them."""
    return first - 1 <= contiguous < last


class Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: Any, params: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


@dataclass(frozen=True)
class NewRows:
    """A batch's records as rows of `records` (RECORD_COLUMNS), for the dialect's insert."""

    lane: str
    epoch: str
    records: Sequence[IngestRecord]
    now_us: int

    def rows(self) -> list[tuple[object, ...]]:
        return [
            (r.record_id, self.lane, self.epoch, r.seq, r.ts_us, r.kind, r.amount_minor,
             r.currency, r.data, self.now_us, *trip_columns(r.trip), *refund_columns(r.refund))
            for r in self.records
        ]  # fmt: skip


def trip_columns(mark: TripMark | None) -> tuple[str | None, str | None]:
    """A record's `trip_role` and `trip_id` columns (both NULL: no part in a trip). The role's
    text is read from the member's `_value_`: `value` is a property of `enum`, which cost a
    closed road's batch more than the rest of its trip columns."""
    return (None, None) if mark is None else (mark.role._value_, mark.trip_id)


def refund_columns(mark: RefundMark | None) -> tuple[str | None, str | None]:
    """A record's `refund_of` and `refund_role` columns (both NULL: no part in a refund)."""
    return (None, None) if mark is None else (mark.payment_id, mark.role.value)


@dataclass(frozen=True)
class BatchTrips:
    """A batch's part in trips, read in one pass (it is on every batch's path)."""

    trips: list[str]  # the trip ids its entries and exits (and its exit refunds) name, sorted
    exited: list[str]  # those its exits name, sorted
    # Each trip's earliest entry in the batch (by time, then record id, as
    # uplink.trips._keep_first), but for the trips it exits: trip id -> (time, record id).
    entries: dict[str, tuple[int, str]]
    exits: list[tuple[str, str]]  # its exits' record ids and trip ids
    # The record ids of its exits and of the exits its refunds undo: `_undo_exits` looks for
    # the refunded ones among them.
    undoable: list[str]
    # Those its refunds undo without naming their trip (no pass: an exit priced `pass_used`,
    # or carried over the lane queue's v6 upgrade): `_lock_batch` reads their trips.
    unnamed: list[str]
    undoes: bool  # it holds a refund of an exit


def batch_trips(records: Sequence[IngestRecord]) -> BatchTrips:
    """Pure: what `BatchTrips` says of `records`."""
    exits: list[tuple[str, str]] = []
    first: dict[str, tuple[int, str]] = {}  # trip id: its earliest entry's (time, record id)
    undos: list[TripMark] = []  # its refunds of exits
    # Each member looked up once: a lookup on the enum costs as much as a record's other work.
    entry, exit_, undo = TripRole.ENTRY, TripRole.EXIT, TripRole.UNDO
    for r in records:
        mark = r.trip
        if mark is None or (trip := mark.trip_id) is None:
            continue
        role = mark.role
        if role == entry:
            key = (r.ts_us, r.record_id)
            held = first.get(trip)
            if held is None or key < held:
                first[trip] = key
        elif role == exit_:
            exits.append((r.record_id, trip))
        elif role == undo:
            undos.append(mark)
    exited = {trip for _, trip in exits}
    entries = {t: e for t, e in first.items() if t not in exited} if exited else first
    undoable = sorted(
        {*(rid for rid, _ in exits), *(m.trip_id for m in undos if m.trip_id is not None)}
    )
    locked, unnamed = undo_locks(undos, {rid for rid, _ in exits})
    named = sorted(exited)
    trips = sorted(exited.union(first, locked)) if first or locked else named
    return BatchTrips(trips, named, entries, exits, undoable, unnamed, bool(undos))


def undo_locks(undos: Iterable[TripMark], beside: Collection[str]) -> tuple[set[str], list[str]]:
    """Pure: what refunds of exits (`undo` marks) lock, in a batch and in an upgrade's `mark`
    chunk alike: the trips they name (`TripMark.undone_trip`), and the record ids of the exits
    they undo without naming one, whose trips `_lock_batch` reads from their rows; but for
    the exits `beside` them (in the same batch or chunk), whose own marks name their trips,
    locked with the rest. (`_lock_batch` finds no row of such an exit yet, and would lock
    every trip group: the whole ingest held back for a lane's backlog of such refunds.)"""
    named = {m.undone_trip for m in undos if m.undone_trip is not None}
    unnamed = {m.trip_id for m in undos if m.undone_trip is None and m.trip_id is not None}
    return named, sorted(unnamed.difference(beside))


class UpgradeJob(StrEnum):
    """What an upgraded store still has to fill from its rows, a chunk at a time, in this
    order (each reads what the ones before it filled)."""

    MARK = "mark"  # the trip columns of rows stored before them (and their open trips)
    OPEN = "open"  # the open-trips table, from the trip columns of every entry
    STRAYS = "strays"  # the strays of the exits stored before them: those with no entry
    TALLY = "tally"  # the closed count of the trips closed before it (`counted`)
    # The strays a release before 6 kept of trips with an entry: dropped, each trip whose
    # exits were all strays counted (`LATE_CLOSED`). Its answer is whole meanwhile.
    PRUNE = "prune"
    # The refund columns of the `tap_out` rows stored before them (uplink.refunds): the trip
    # ledger's answer is whole meanwhile, the refunds' is not.
    REFUNDS = "refunds"
    # The trip columns of the refunds that an earlier release's `trip_mark` marked (none, or
    # as the record they refund), marked again with today's (`_remark_refunds`), after the
    # closed count is whole (`tally`): what that changes is counted as a batch would.
    REMARK = "remark"


class UpgradeStep(NamedTuple):
    """What one chunk of an upgrade job did (`SqlIngestStore._upgrade_step`)."""

    reached: str | None  # the key to go on after; None: the job is done
    remarked: int = 0  # REMARK: refunds whose trip columns it changed
    # REMARK: refunds today's `trip_mark` gives no part in a trip (an entry's refund from a
    # lane of an earlier release names no pass, an exit's no record): they take none.
    unmarked: int = 0


def new_held(records: Sequence[IngestRecord]) -> tuple[Held, ...]:
    """The ack of a batch the store took whole: every record, as sent."""
    return tuple(Held(r.seq, r.record_id, digest(r.data)) for r in records)


class RowTakenError(IngestStoreError):
    """An insert met a record id or a seq that the store holds already (the transaction is
    rolled back; store_batch stores the batch again, looking up what is held)."""


class Session(Protocol):
    def cursor(self) -> Any: ...


class SqlIngestStore:
    """The store logic over any DB-API cursor; subclasses provide transactions and dialect."""

    param = "?"
    lock_suffix = ""  # PostgreSQL: " FOR UPDATE" (SQLite's writers take turns anyway)
    prefix = ""  # PostgreSQL: "schema."
    bytewise = ""  # PostgreSQL: ' COLLATE "C"' (SQLite compares text byte by byte already)
    open_new = OPEN_NEW + EARLIER_ENTRY  # PostgreSQL: OPEN_NEW alone
    prune_strays = PRUNE_STRAYS  # PostgreSQL: `uplink.pg.PRUNE_BY_TRIP`
    # Whether a row's bytes hold the parameter's (PostgreSQL: `position`).
    holds_bytes = "instr(data, ?) > 0"
    # Whether an upgrade job the closed count waits for (the tally or one before it) may
    # still be running beside this store (PostgreSQL: one was pending when it opened the
    # schema, `upgrade_pending`; jobs are only made by the DDL of a newer release).
    upgrade_seen = False

    def _sql(self, text: str) -> str:
        for table in (
            "records",
            "epochs",
            "conflicts",
            "open_trips",
            "stray_exits",
            "trip_counts",
            "counted",
        ):
            text = text.replace("{" + table + "}", self.prefix + table)
        return text.replace("{bytewise}", self.bytewise).replace("?", self.param)

    def _lock_trips(self, db: Session, trips: Sequence[str], *, every_group: bool = False) -> None:
        """Make the other transactions that touch these trip ids (`every_group`: any trip id)
        wait for this one's commit (PostgreSQL; SQLite's writers take turns anyway). Taken
        first in a transaction."""

    def _lock_batch(self, db: Session, trips: Sequence[str], unnamed: Sequence[str]) -> None:
        """`_lock_trips` of the trip ids a batch or an upgrade's `mark` chunk names
        (`BatchTrips.trips`); PostgreSQL adds the trips of the exits (`unnamed`: their record
        ids) that its refunds undo without naming them (`BatchTrips.unnamed`)."""
        self._lock_trips(db, trips)

    def _refresh_trips(self, db: Session, trips: Sequence[str]) -> None:
        """Set the open-trips rows of `trips` to what the records now hold (REOPEN), under
        their locks: an entry opens its trip unless an exit of it is held, in either order of
        arrival; an exit closes it; a second entry moves it to the earlier. Derived from the
        records, not from what a batch added, so a replayed batch changes nothing."""
        if not trips:
            return
        self._close_trips(db, trips)
        rows = ", ".join("(?)" for _ in trips)
        entry, exit_ = TripRole.ENTRY.value, TripRole.EXIT.value
        db.cursor().execute(self._sql(REOPEN.replace("{ids}", rows)), (entry, entry, *trips, exit_))

    def _close_trips(self, db: Session, trips: Collection[str]) -> None:
        sql, params = self._closing(trips)
        db.cursor().execute(sql, params)

    def _closing(
        self, trips: Collection[str], *, returning: bool = False
    ) -> tuple[str, tuple[object, ...]]:
        """The DELETE of the open-trips rows of `trips`; `returning`: it answers their ids."""
        marks = ", ".join("?" for _ in trips)
        back = " RETURNING trip_id" if returning else ""
        return self._sql(f"DELETE FROM {{open_trips}} WHERE trip_id IN ({marks}){back}"), (*trips,)

    def _entry_rows(self, entries: Mapping[str, tuple[int, str]]) -> tuple[str, tuple[object, ...]]:
        """OPEN_NEW's `{rows}` for `entries` (`BatchTrips.entries`), and their parameters: a
        VALUES list here."""
        rows = ", ".join("(?, ?, ?)" for _ in entries)
        return f"(VALUES {rows}) AS t", tuple(
            v for trip, (ts, rid) in entries.items() for v in (trip, rid, ts)
        )

    def _add_trips(self, db: Session, batch: BatchTrips) -> tuple[int, bool]:
        """Keep the open trips and the strays after a batch every record of which was
        inserted now, under its trip ids' locks: the open-trips rows as `_refresh_trips` gives
        them, for less; and say how many trips it closed. The rows held are those of the
        records before the batch. Each of its first entries of a trip (`BatchTrips.entries`)
        opens it unless an exit of it is held, or moves it to this entry if that is the earlier
        (`open_new`); each of its exits closes its trip if open (counted), else is a stray.
        Only when an entry opened nothing or an exit closed nothing are the strays of its
        trips pruned (`_prune_strays`): never on a closed road's common path. Also says
        whether it kept strays or counted a trip closed by a late entry."""
        met = False  # a trip of the batch may have an entry and strays now
        if batch.entries:
            rows, params = self._entry_rows(batch.entries)
            opened = db.cursor()
            opened.execute(
                self._sql(self.open_new.replace("{rows}", rows)), (*params, TripRole.EXIT.value)
            )
            # An entry that opened nothing met an exit held (or a trip open at an earlier
            # entry). PostgreSQL's pipeline has no count yet (-1): its trips are pruned.
            met = opened.rowcount < len(batch.entries)
        closed: Collection[str] = ()
        kept = False  # strays of its own
        if batch.exited:
            gone = db.cursor()
            # Which trips closed is read back only while an upgrade may run (to note them);
            # else the count of rows deleted says whether every exit closed one, as in a
            # closed road.
            gone.execute(*self._closing(batch.exited, returning=self.upgrade_seen))
            if self.upgrade_seen:
                closed = {str(r[0]) for r in gone.fetchall()}
                self._note_counted(db, closed)
            elif gone.rowcount == len(batch.exited):
                closed = batch.exited
            else:
                closed = self._were_open(db, batch)
            strays = [e for e in batch.exits if e[1] not in closed]
            self._add_strays(db, strays)
            kept = bool(strays)
        late = self._prune_strays(db, batch.trips) if met or kept else 0
        return len(closed) + late, kept or late > 0

    def _undo_exits(self, db: Session, undoable: Sequence[str], *, upgrading: bool = False) -> int:
        """Undo the exits refunded by now among `undoable` (a batch's exits and the exits its
        refunds name: `BatchTrips.undoable`), whichever of an exit and its refund came first:
        each becomes `refunded` (it closes nothing, and is no stray: not unmatched), its trip's
        open-trips row is what the records now hold (open again when it had an entry and no
        other exit), and the count of trips closed changes by what that did (returned, for
        the batch's epoch row). After the batch's own trips are kept, under their locks (an
        undone exit of the batch's is of its trips; a refund's, of the trip it names). One
        read when the batch has exits or refunds of exits; more only when it undoes one.

        While an upgrade's tally has not finished (`upgrading`: the upgrade's own `mark`
        step), the change is counted only over the trips a count holds already
        (`_accounted`): the tally counts every other trip from its rows when it reaches it,
        under its lock, so a change counted here too would be counted twice (a trip closed
        before the upgrade and reopened by a refund meanwhile would end one short)."""
        if not undoable:
            return 0
        q = self._sql
        marks = ", ".join("?" for _ in undoable)
        found = db.cursor()
        found.execute(
            q(UNDONE.replace("{ids}", marks)),
            (TripRole.EXIT.value, *undoable, TripRole.UNDO.value),
        )
        undone = [(str(rid), str(trip)) for rid, trip in found.fetchall()]
        if not undone:
            return 0
        trips = sorted({trip for _, trip in undone})
        held = self._accounted(db, trips) if upgrading or self._tally_running(db) else trips
        before = self._closed_among(db, held)
        ids = [rid for rid, _ in undone]
        db.cursor().executemany(
            q("UPDATE {records} SET trip_role=? WHERE record_id=?"),
            [(TripRole.REFUNDED.value, rid) for rid in ids],
        )
        db.cursor().execute(
            q(f"DELETE FROM {{stray_exits}} WHERE record_id IN ({', '.join('?' for _ in ids)})"),
            (*ids,),
        )
        self._refresh_trips(db, trips)
        return self._closed_among(db, held) - before

    def _tally_running(self, db: Session) -> bool:
        """Whether an upgrade job that the closed count waits for may be running beside this
        store's batches (PostgreSQL; SQLite runs its upgrade before any batch)."""
        return self.upgrade_seen and self._upgrading(db.cursor())

    def _accounted(self, db: Session, trips: Sequence[str]) -> list[str]:
        """Which of `trips` a closed count holds while an upgrade's tally may be running
        (ACCOUNTED): all once it is done, else those a batch counted meanwhile (`counted`)
        and those the tally has gone past."""
        cur = db.cursor()
        sql = ACCOUNTED.replace("{ids}", ", ".join("(?)" for _ in trips))
        cur.execute(self._sql(sql.replace("{tally}", self._tally_state())), (*trips,))
        return [str(r[0]) for r in cur.fetchall()]

    def _tally_state(self) -> str:
        """ACCOUNTED's `{tally}`: one row, whether the upgrade's tally is pending and the last
        trip id it counted. SQLite's tally runs after its `mark` step in the opening
        transaction, with no batch beside it: pending, none counted yet."""
        return "SELECT TRUE AS pending, CAST(NULL AS TEXT) AS after"

    def _closed_among(self, db: Session, trips: Sequence[str]) -> int:
        if not trips:
            return 0
        cur = db.cursor()
        ids = ", ".join("(?)" for _ in trips)
        cur.execute(
            self._sql(CLOSED_AMONG.replace("{ids}", ids)),
            (*trips, TripRole.ENTRY.value, TripRole.EXIT.value),
        )
        return int(cur.fetchone()[0])

    def _met_strays(self, key: tuple[str, str], met: bool) -> None:
        """After a batch of the epoch `key` stored by `_store_new`'s transaction: whether it
        kept strays or counted a trip a late entry closed (PostgreSQL stores the epoch's next
        batch the same way while it does)."""

    def _prune_strays(self, db: Session, trips: Sequence[str]) -> int:
        """Drop the strays of those of `trips` that have an entry now (PRUNE_STRAYS), so the
        strays are the unmatched exits and no more, and say how many of those trips this
        counts closed: the ones whose every exit was a stray (LATE_CLOSED), which no exit
        closed. Under the trips' locks, after the batch's own strays are kept."""
        if not trips:
            return 0
        ids = ", ".join("(?)" for _ in trips)
        entry, exit_ = TripRole.ENTRY.value, TripRole.EXIT.value
        late = db.cursor()
        late.execute(self._sql(LATE_CLOSED.replace("{ids}", ids)), (*trips, entry, exit_, exit_))
        closed = {str(r[0]) for r in late.fetchall()}  # read whole before the strays go
        db.cursor().execute(
            self._sql(self.prune_strays.replace("{ids}", ids)), (exit_, *trips, entry)
        )
        self._note_counted(db, closed)
        return len(closed)

    def _were_open(self, db: Session, batch: BatchTrips) -> set[str]:
        """Which trips the batch exits were open before it (every record of it inserted):
        those with an entry and no exit but the batch's (WERE_OPEN)."""
        ids = [r for r, _ in batch.exits]
        sql = WERE_OPEN.replace("{ids}", ", ".join("(?)" for _ in batch.exited))
        sql = sql.replace("{batch}", ", ".join("?" for _ in ids))
        cur = db.cursor()
        cur.execute(
            self._sql(sql),
            (*batch.exited, TripRole.ENTRY.value, TripRole.EXIT.value, *ids),
        )
        return {str(r[0]) for r in cur.fetchall()}

    def _add_strays(self, db: Session, strays: Sequence[tuple[str, str]]) -> None:
        if strays:
            marks = ", ".join("(?, ?)" for _ in strays)
            db.cursor().execute(
                self._sql(f"INSERT INTO {{stray_exits}} (record_id, trip_id) VALUES {marks}"
                          " ON CONFLICT DO NOTHING"),
                tuple(v for e in strays for v in e),
            )  # fmt: skip

    def _note_counted(self, db: Session, closed: Collection[str]) -> None:
        """While an upgrade runs, the trips a batch counted closed are noted, so its tally
        (`UpgradeJob.TALLY`) does not count them again."""
        if closed and self._tally_running(db):
            db.cursor().execute(
                self._sql(
                    f"INSERT INTO {{counted}} (trip_id) VALUES {', '.join('(?)' for _ in closed)}"
                    " ON CONFLICT DO NOTHING"
                ),
                (*closed,),
            )

    def _open_among(self, db: Session, trips: Sequence[str]) -> set[str]:
        """Which of `trips` are open now."""
        if not trips:
            return set()
        cur = db.cursor()
        marks = ", ".join("?" for _ in trips)
        cur.execute(
            self._sql(f"SELECT trip_id FROM {{open_trips}} WHERE trip_id IN ({marks})"), (*trips,)
        )
        return {str(r[0]) for r in cur.fetchall()}

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def _batch(self) -> Iterator[Session]:
        """A transaction for store_batch; PostgreSQL pipelines its statements."""
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def _snapshot(self) -> Iterator[Cursor]:
        """Reads that see one state of the store while batches commit beside them."""
        raise NotImplementedError
        yield  # pragma: no cover

    def store_batch(
        self, lane: str, queue: QueueIdentity, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult:
        """A batch is first taken for new, which nearly every batch is (`_store_new`); when a
        record id or seq of it is held already (a resend, a conflict) that transaction is
        rolled back and the batch is stored again carefully (`_store_held`), inserting what is
        free and looking up what kept the rest out."""
        if not records:
            raise ValueError("empty batch")
        try:
            return self._store_new(lane, queue, records, now_us)
        except RowTakenError:
            return self._store_held(lane, queue, records, now_us)

    def _store_new(
        self, lane: str, queue: QueueIdentity, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult:
        """Insert every record, then move the epoch's row on in one UPDATE (MOVE_ON). The
        UPDATE takes the row's lock and works on its latest committed version, which is what
        serialises the batches of one epoch (here and in `_store_held`). Only a prefix that
        must run on past the batch (the batch filled a hole) reads the table. Two round trips
        where the driver pipelines; PostgreSQL stores a batch of an epoch it has seen in one
        statement (`uplink.pg`)."""
        q = self._sql
        epoch = queue.epoch
        first, last = records[0].seq, records[-1].seq
        move_on = q(
            f"UPDATE {{epochs}} SET {MOVE_ON}, {ADD_CLOSED} WHERE lane=? AND epoch=?"
            " RETURNING contiguous, max_seq, EXISTS (SELECT 1 FROM {conflicts} WHERE lane=?)"
        )
        held = new_held(records)
        trips = batch_trips(records)
        with self._batch() as db:
            self._lock_batch(db, trips.trips, trips.unnamed)
            self._insert(db, NewRows(lane, epoch, records, now_us), careful=False)
            # every record is inserted (or RowTakenError)
            closed, met = self._add_trips(db, trips)
            closed += self._undo_exits(db, trips.undoable)
            self._met_strays((lane, epoch), met)
            args = (*move_on_args(first, last), closed, lane, epoch, lane)
            moved = db.cursor()
            moved.execute(move_on, args)
            row = moved.fetchone()
            new_epoch = False
            if row is None:
                made = self._open_epoch(db, lane, queue, now_us)
                moved.execute(move_on, args)
                row = moved.fetchone()
                new_epoch = made.rowcount == 1  # known once a later result was read
            contiguous, max_seq, conflicts_open = (int(v) for v in row)
            if fills_a_hole(first, last, contiguous):
                contiguous = self._walk_prefix(db, lane, epoch, contiguous)
            others = self._other_epochs(db, lane, epoch) if new_epoch else ()
            if conflicts_open:
                self._resolve(db, held)
        return StoreResult(held, len(held), 0, (), contiguous, max_seq, new_epoch, others)

    def _open_epoch(self, db: Session, lane: str, queue: QueueIdentity, now_us: int) -> Cursor:
        """Make the epoch's row (an extra round trip once per queue file); its rowcount is 0
        when another worker made it first (this one waited for that worker's commit)."""
        made = db.cursor()
        made.execute(
            self._sql(
                "INSERT INTO {epochs} (lane, epoch, base, contiguous, max_seq, first_us)"
                " VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING"
            ),
            (lane, queue.epoch, queue.base, queue.base, now_us),
        )
        return made  # type: ignore[no-any-return]

    def _other_epochs(self, db: Session, lane: str, epoch: str) -> tuple[str, ...]:
        earlier = db.cursor()
        earlier.execute(
            self._sql("SELECT epoch FROM {epochs} WHERE lane=? AND epoch<>? ORDER BY first_us"),
            (lane, epoch),
        )
        return tuple(str(r[0]) for r in earlier.fetchall())

    def _resolve(self, db: Session, held: Sequence[Held]) -> None:
        """A conflict is over once the store holds the refused version itself (an operator
        removed the other one and the lane offered it again): its row goes."""
        db.cursor().executemany(
            self._sql("DELETE FROM {conflicts} WHERE record_id=? AND offered_digest=?"),
            [(h.record_id, h.digest.hex()) for h in held],
        )

    def _store_held(
        self, lane: str, queue: QueueIdentity, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult:
        """A batch the store holds some of: lock the epoch's row, insert what is free, look
        up what kept the rest out, classify, walk the prefix."""
        q = self._sql
        epoch = queue.epoch
        lock_sql = q(
            "SELECT contiguous, max_seq, EXISTS (SELECT 1 FROM {conflicts} WHERE lane=?)"
            " FROM {epochs} WHERE lane=? AND epoch=?" + self.lock_suffix
        )
        marked = batch_trips(records)
        trips = marked.trips
        with self._batch() as db:
            self._lock_batch(db, trips, marked.unnamed)
            was_open = self._open_among(db, marked.exited)
            locked = db.cursor()
            locked.execute(lock_sql, (lane, lane, epoch))
            row = locked.fetchone()
            new_epoch = False
            if row is None:
                made = self._open_epoch(db, lane, queue, now_us)
                locked.execute(lock_sql, (lane, lane, epoch))
                row = locked.fetchone()
                new_epoch = made.rowcount == 1  # known once a later result was read
            contiguous, held_max, conflicts_open = (int(v) for v in row)
            inserted = self._insert(db, NewRows(lane, epoch, records, now_us), careful=True)
            self._refresh_trips(db, trips)
            fresh = inserted()
            # Its exits inserted now close their trips that were open, or are strays.
            ids = {r.record_id for r in records if r.seq in fresh}
            exits = [e for e in marked.exits if e[0] in ids]
            closed = {t for _, t in exits if t in was_open}
            self._add_strays(db, [e for e in exits if e[1] not in was_open])
            self._note_counted(db, closed)
            late = self._prune_strays(db, trips) + self._undo_exits(db, marked.undoable)
            by_id, by_seq = self._held_rows(
                db, lane, epoch, [r for r in records if r.seq not in fresh]
            )
            held, conflicts = classify(lane, epoch, records, fresh, by_id, by_seq)
            others = self._other_epochs(db, lane, epoch) if new_epoch else ()
            for c in conflicts:
                self._note_conflict(db.cursor(), c, now_us)
            if conflicts_open and held:
                self._resolve(db, held)
            # The prefix can only grow through this batch's seqs (each batch leaves it as far
            # as the rows allow); past the batch only if rows stored earlier wait there.
            present = fresh | set(by_seq)
            start = contiguous
            while contiguous + 1 in present:
                contiguous += 1
            if start < contiguous < held_max:
                contiguous = self._advance(db.cursor(), lane, epoch, contiguous)
            max_seq = max(held_max, queue.base, *present)
            db.cursor().execute(
                q(f"UPDATE {{epochs}} SET contiguous=?, max_seq=?, {ADD_CLOSED}"
                  " WHERE lane=? AND epoch=?"),
                (contiguous, max_seq, len(closed) + late, lane, epoch),
            )  # fmt: skip
        return StoreResult(
            held=tuple(held),
            inserted=len(fresh),
            duplicates=len(held) - len(fresh),
            conflicts=tuple(conflicts),
            contiguous=contiguous,
            max_seq=max_seq,
            new_epoch=new_epoch,
            other_epochs=others,
        )

    def _held_rows(
        self, db: Session, lane: str, epoch: str, skipped: Sequence[IngestRecord]
    ) -> tuple[dict[str, bytes], dict[int, tuple[str, bytes]]]:
        """What the store holds under the record ids of `skipped` (any epoch) and at their
        seqs in this epoch: the rows that kept them from being inserted."""
        if not skipped:
            return {}, {}
        by_id_cur, by_seq_cur = db.cursor(), db.cursor()
        marks = ", ".join("?" for _ in skipped)
        by_id_cur.execute(
            self._sql(f"SELECT record_id, data FROM {{records}} WHERE record_id IN ({marks})"),
            [r.record_id for r in skipped],
        )
        by_seq_cur.execute(
            self._sql(
                "SELECT seq, record_id, data FROM {records}"
                " WHERE lane=? AND epoch=? AND seq BETWEEN ? AND ?"
            ),
            (lane, epoch, skipped[0].seq, skipped[-1].seq),
        )
        by_id = {str(rid): bytes(data) for rid, data in by_id_cur.fetchall()}
        by_seq = {int(s): (str(rid), bytes(data)) for s, rid, data in by_seq_cur.fetchall()}
        return by_id, by_seq

    def _insert(self, db: Session, new: NewRows, *, careful: bool) -> Callable[[], set[int]]:
        """Insert the batch; the returned call gives the seqs inserted (PostgreSQL reads them
        with the next round trip). Not `careful`: every record, and a held id or seq raises
        RowTakenError; `careful`: each record whose id and seq are both free."""
        sql = self._sql(
            f"INSERT INTO {{records}} ({RECORD_COLUMNS}) VALUES ({', '.join('?' * COLUMN_COUNT)})"
        )
        rows = new.rows()
        cur = db.cursor()
        if not careful:
            cur.executemany(sql, rows)
            return lambda: {r.seq for r in new.records}
        done: set[int] = set()
        for r, row in zip(new.records, rows, strict=True):
            cur.execute(sql + " ON CONFLICT DO NOTHING RETURNING seq", row)
            if cur.fetchone() is not None:
                done.add(r.seq)
        return lambda: done

    def _note_conflict(self, cur: Cursor, c: Conflict, now_us: int) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO {conflicts} AS c (lane, epoch, seq, record_id, held_record_id,"
                " stored_digest, offered_digest, count, first_us, last_us)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (record_id, offered_digest)"
                " DO UPDATE SET count = c.count + 1, last_us = excluded.last_us"
            ),
            (*c.row(), now_us, now_us),
        )

    def _walk_prefix(self, db: Session, lane: str, epoch: str, since: int) -> int:
        """Lock the epoch's row, walk its prefix on over the committed rows and store it; the
        prefix it now has. Under the lock, every batch committed before it is seen, and one
        committing after it moves the prefix on from this one. The walk starts from `since`,
        a prefix read before (the stored one can only be as far or further), so it is sent
        with the lock and both come back in one round trip where the driver pipelines."""
        q = self._sql
        locked = db.cursor()
        locked.execute(
            q("SELECT contiguous FROM {epochs} WHERE lane=? AND epoch=?" + self.lock_suffix),
            (lane, epoch),
        )
        contiguous = self._advance(db.cursor(), lane, epoch, since)
        start = int(locked.fetchone()[0])
        if contiguous > start:
            db.cursor().execute(
                q("UPDATE {epochs} SET contiguous=? WHERE lane=? AND epoch=?"),
                (contiguous, lane, epoch),
            )
        return max(contiguous, start)

    def _advance(self, cur: Cursor, lane: str, epoch: str, contiguous: int) -> int:
        """Walk the held seqs above the prefix in index order while they follow on, a chunk
        per statement (RUN_END): an index range scan over this batch's seqs, or once over the
        run behind a filled hole. (An anti-join over the table made each batch cost O(rows) in
        PostgreSQL.)"""
        while True:
            cur.execute(self._sql(RUN_END), (lane, epoch, contiguous, ADVANCE_CHUNK, contiguous))
            upto = cur.fetchone()[0]
            if upto is None:
                return contiguous
            if int(upto) < contiguous + ADVANCE_CHUNK:  # the run stops inside this chunk
                return int(upto)
            contiguous = int(upto)

    def contiguous(self, lane: str, epoch: str) -> int:
        return next((e.contiguous for e in self.epochs(lane) if e.epoch == epoch), 0)

    def gaps(self, lane: str) -> list[Gap]:
        """Missing seq ranges (inclusive) of each epoch, between its base and its highest seq."""
        out: list[Gap] = []
        for e in self.epochs(lane):
            with self._reader() as cur:
                cur.execute(
                    self._sql(
                        "SELECT seq, nxt FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS nxt"
                        " FROM {records} WHERE lane=? AND epoch=? AND seq > ?) AS t"
                        " WHERE nxt > seq + 1 ORDER BY seq"
                    ),
                    (lane, e.epoch, e.contiguous),
                )
                rows = cur.fetchall()
                cur.execute(
                    self._sql("SELECT MIN(seq) FROM {records} WHERE lane=? AND epoch=? AND seq>?"),
                    (lane, e.epoch, e.contiguous),
                )
                low = cur.fetchone()[0]
            if low is not None and int(low) > e.contiguous + 1:
                out.append(Gap(e.epoch, e.contiguous + 1, int(low) - 1))
            out.extend(Gap(e.epoch, int(s) + 1, int(n) - 1) for s, n in rows)
        return out

    def count(self, lane: str) -> int:
        with self._reader() as cur:
            cur.execute(self._sql("SELECT COUNT(*) FROM {records} WHERE lane=?"), (lane,))
            return int(cur.fetchone()[0])

    def records(self, lane: str) -> list[StoredRecord]:
        with self._reader() as cur:
            cur.execute(
                self._sql(
                    "SELECT record_id, epoch, seq, ts_us, data FROM {records} WHERE lane=?"
                    " ORDER BY ingested_us, epoch, seq"
                ),
                (lane,),
            )
            return [
                StoredRecord(str(r), str(e), int(s), int(t), bytes(d))
                for r, e, s, t, d in cur.fetchall()
            ]

    def records_between(self, start_us: int, end_us: int) -> list[bytes]:
        """The encoded records of every lane with start_us <= ts_us < end_us (`lane reconcile`)."""
        with self._reader() as cur:
            cur.execute(
                self._sql("SELECT data FROM {records} WHERE ts_us >= ? AND ts_us < ?"),
                (start_us, end_us),
            )
            return [bytes(r[0]) for r in cur.fetchall()]

    def trip_rows(self, entered_before_us: int) -> TripRows:
        """The trip ledger's figures, no record decoded and none of them a walk of every
        entry or exit: the open trips' entries (their bytes) from the open-trips table, the
        closed count from the counts kept beside (CLOSED_COUNTS) and the strays (STRAYS), the
        unreadable count from the trip index (uplink.trips)."""
        entry, exit_ = TripRole.ENTRY.value, TripRole.EXIT.value
        q = self._sql
        with self._snapshot() as cur:
            cur.execute(q(OPEN_ENTRIES), (entered_before_us,))
            open_entries = [bytes(r[0]) for r in cur.fetchall()]
            cur.execute(q(CLOSED_COUNTS))
            closed = int(cur.fetchone()[0])
            cur.execute(q(STRAYS), (entry, exit_))
            strays = [(str(rid), str(t), entered is not None, int(n))
                      for rid, t, entered, n in cur.fetchall()]  # fmt: skip
            cur.execute(q(ROLE_COUNT), (TripRole.UNREADABLE.value,))
            unreadable = int(cur.fetchone()[0])
            upgrading = self._upgrading(cur)
        unmatched = [rid for rid, _, entered, _ in strays if not entered]
        # A trip closed by a late entry: an entry, and every exit of it a stray (a version-5
        # store's strays, until its upgrade prunes them; a batch prunes its own).
        of_trip = Counter(t for _, t, entered, _ in strays if entered)
        exits = {t: n for _, t, entered, n in strays if entered}
        closed += sum(1 for t, n in of_trip.items() if n == exits[t])
        return TripRows(open_entries, closed, unmatched, unreadable, upgrading)

    def refund_rows(self) -> RefundRows:
        """The refunds owed and not made (REFUND_OPEN), no record decoded here."""
        roles = (RefundRole.UNPAID, RefundRole.OWED, *MADE_ROLES)
        with self._snapshot() as cur:
            cur.execute(self._sql(REFUND_OPEN), tuple(r.value for r in roles))
            rows = [(bytes(o), None if e is None else bytes(e)) for o, e in cur.fetchall()]
            upgrading = self._refunds_upgrading(cur)
        return RefundRows(rows, upgrading)

    def _refunds_upgrading(self, cur: Cursor) -> bool:
        """Whether an upgrade has `tap_out` rows left to mark (SQLite marks them all on open)."""
        return False

    def upgrade_pending(self) -> bool:
        """Whether an upgrade of the store has rows still to fill: until then the trip
        ledger's answer (`TripRows.upgrading`) or the refunds' (`RefundRows.upgrading`) is
        not whole."""
        with self._reader() as cur:
            return self._upgrading(cur) or self._refunds_upgrading(cur)

    def _upgrading(self, cur: Cursor) -> bool:
        """Whether an upgrade job has rows still to fill (SQLite fills them all on open)."""
        return False

    def _upgrade_step(
        self, db: Session, job: UpgradeJob, after: str | None, chunk: int
    ) -> UpgradeStep:
        """One chunk of an upgrade job, past the key `after` (None: from the start): the key
        to go on after, None when the job is done. MARK fills the trip columns of the next
        `chunk` rows (by record id) from their bytes (a record that does not decode is marked
        unreadable); OPEN takes the next `chunk` trip ids with an entry. Either way the
        open-trips rows of the trip ids met are then refreshed under their locks, so batches
        ingested meanwhile and the job agree whichever commits first. STRAYS takes the next
        trip ids with an exit and keeps as strays their exits whose trip has no entry; TALLY
        the next trip ids with an entry, and adds to the closed count those closed that no
        batch counted meanwhile (`counted`, which it empties when it is done) and that the
        strays do not account for. PRUNE takes the next `chunk` strays (by record id) and
        prunes those of their trips that have an entry (`_prune_strays`), adding the trips
        it counts closed to the upgrade's count. REFUNDS fills the refund columns of the next
        `chunk` `tap_out` rows (by record id) from their bytes; REMARK marks the refunds
        among the next `chunk` rows again (`_remark_refunds`)."""
        if job == UpgradeJob.REMARK:
            return self._remark_refunds(db, after, chunk)
        q = self._sql
        read = db.cursor()
        past = "" if after is None else " AND {key} > ?"
        params: tuple[object, ...] = () if after is None else (after,)
        entry, exit_ = TripRole.ENTRY.value, TripRole.EXIT.value
        if job == UpgradeJob.REFUNDS:
            read.execute(
                q("SELECT record_id, data FROM {records} WHERE kind=?"
                  + past.format(key="record_id") + " ORDER BY record_id LIMIT ?"),
                (RecordKind.TAP_OUT.value, *params, chunk),
            )  # fmt: skip
            tap_outs = [(str(r), stored_refund_mark(bytes(data))) for r, data in read.fetchall()]
            refunds = [(*refund_columns(m), rid) for rid, m in tap_outs if m is not None]
            if refunds:
                db.cursor().executemany(
                    q("UPDATE {records} SET refund_of=?, refund_role=? WHERE record_id=?"), refunds
                )
            return UpgradeStep(tap_outs[-1][0] if len(tap_outs) == chunk else None)
        if job == UpgradeJob.MARK:
            read.execute(
                q("SELECT record_id, data FROM {records} WHERE TRUE" + past.format(key="record_id")
                  + " ORDER BY record_id LIMIT ?"),
                (*params, chunk),
            )  # fmt: skip
            rows = [(str(rid), stored_mark(bytes(data))) for rid, data in read.fetchall()]
            marked = [(rid, m) for rid, m in rows if m is not None]
            keys = [rid for rid, _ in rows]
            # The locks the live ingest takes for these records (`batch_trips`), so a worker
            # storing one of their trips meanwhile takes turns with the chunk: an undo's are
            # the trip its refund names, or the trip of the exit it undoes, read from that
            # exit's row unless the exit is in this chunk (its own mark names its trip).
            named, unnamed = undo_locks([m for _, m in marked if m.role == TripRole.UNDO], keys)
            own = (
                m.trip_id for _, m in marked if m.role != TripRole.UNDO and m.trip_id is not None
            )
            trips = sorted({*named, *own})
            self._lock_batch(db, trips, unnamed)
            if marked:
                # An exit a worker stored meanwhile may be `refunded` by now (a role no mark
                # gives): it stays so, else the chunk would undo it, and count that, again.
                db.cursor().executemany(
                    q("UPDATE {records} SET trip_role=?, trip_id=? WHERE record_id=?"
                      " AND COALESCE(trip_role, '') <> ?"),
                    [(*trip_columns(m), rid, TripRole.REFUNDED.value) for rid, m in marked],
                )  # fmt: skip
            # Exits refunded, in this chunk or one before: what that changed in the trips a
            # count holds already (those a batch counted meanwhile) goes to the upgrade's count;
            # the TALLY job counts the others from the rows.
            undoable = [m.trip_id if m.role == TripRole.UNDO else rid for rid, m in marked
                        if m.role in (TripRole.EXIT, TripRole.UNDO)]  # fmt: skip
            undone = self._undo_exits(db, [r for r in undoable if r is not None], upgrading=True)
            if undone:
                self._add_tally(db, undone)
        elif job == UpgradeJob.PRUNE:
            read.execute(
                q("SELECT record_id, trip_id FROM {stray_exits} WHERE TRUE"
                  + past.format(key="record_id") + " ORDER BY record_id LIMIT ?"),
                (*params, chunk),
            )  # fmt: skip
            strays = [(str(rid), str(trip)) for rid, trip in read.fetchall()]
            keys = [rid for rid, _ in strays]
            trips = sorted({trip for _, trip in strays})
            self._lock_trips(db, trips)
        else:
            role = exit_ if job == UpgradeJob.STRAYS else entry
            read.execute(
                q("SELECT DISTINCT trip_id FROM {records} WHERE trip_role=?"
                  + past.format(key="trip_id") + " ORDER BY trip_id LIMIT ?"),
                (role, *params, chunk),
            )  # fmt: skip
            trips = keys = [str(r[0]) for r in read.fetchall()]
            self._lock_trips(db, trips)
        reached = keys[-1] if len(keys) == chunk else None
        ids = ", ".join("(?)" for _ in trips)
        if job in (UpgradeJob.MARK, UpgradeJob.OPEN):
            self._refresh_trips(db, trips)
        elif job == UpgradeJob.STRAYS:
            if trips:
                db.cursor().execute(q(OLD_STRAYS.replace("{ids}", ids)), (exit_, *trips, entry))
        else:
            found = 0
            if job == UpgradeJob.PRUNE:
                found = self._prune_strays(db, trips)
            elif trips:
                cur = db.cursor()
                cur.execute(q(TALLIED.replace("{ids}", ids)), (*trips, entry, exit_, exit_))
                found = int(cur.fetchone()[0])
            self._add_tally(db, found)
            if job == UpgradeJob.TALLY and reached is None:
                db.cursor().execute(q("DELETE FROM {counted}"))
        return UpgradeStep(reached)

    def _remark_refunds(self, db: Session, after: str | None, chunk: int) -> UpgradeStep:
        """REMARK's chunk: the next `chunk` rows by record id (past `after`), of which only the
        entries' and exits' rows holding the refund flag's bytes are decoded (`holds_bytes`).
        Each refund whose trip columns are not what today's `trip_mark` says, but an `undo`
        (only today's release gives that) or a `refunded` exit of that mark's trip (today's
        release undid it), takes today's mark as if its batch came now:
        under the locks that batch would take (`undo_locks`, `_lock_batch`) and those of the
        trip its old mark named, its old mark's part goes (an exit it was, a stray it was, an
        entry it opened), the open trips, the strays and the closed count of those trips are
        what the records now hold (the change counted to the upgrade's count), and the exits
        its `undo` names are undone (`_undo_exits`)."""
        q = self._sql
        read = db.cursor()
        past = "" if after is None else " AND record_id > ?"
        params: tuple[object, ...] = () if after is None else (after,)
        read.execute(
            q("SELECT record_id FROM {records} WHERE TRUE" + past
              + " ORDER BY record_id LIMIT 1 OFFSET ?"),
            (*params, chunk - 1),
        )  # fmt: skip
        last = read.fetchone()
        reached = None if last is None else str(last[0])
        upto = "" if reached is None else " AND record_id <= ?"
        kinds = sorted(ENTRY_KINDS | EXIT_KINDS)
        read.execute(
            q("SELECT record_id, data, trip_role, trip_id FROM {records} WHERE kind IN"
              f" ({', '.join('?' for _ in kinds)}){past}{upto} AND {self.holds_bytes}"),
            (*kinds, *params, *(() if reached is None else (reached,)), REFUND_FLAG.encode()),
        )  # fmt: skip
        changed: list[tuple[str, str | None, TripMark | None]] = []  # id, old trip, new mark
        unmarked = 0
        for rid, data, role, trip in read.fetchall():
            record = Record.readable(bytes(data))
            if record is None or REFUND_FLAG not in record.draft.flags:
                continue
            mark = trip_mark(record)
            unmarked += mark is None
            # An entry's refund that a refund undid is `refunded` (a role no mark gives), as
            # today's marks leave it.
            held = TripRole.EXIT.value if role == TripRole.REFUNDED.value else role
            if trip_columns(mark) == (held, trip) or role == TripRole.UNDO.value:
                continue
            changed.append((str(rid), None if trip is None else str(trip), mark))
        if not changed:
            return UpgradeStep(reached, 0, unmarked)
        undos = [m for _, _, m in changed if m is not None and m.role == TripRole.UNDO]
        named, unnamed = undo_locks(undos, ())
        # The trip ids an old mark or a new one names, but an undo's (an exit's record id).
        trips = sorted({*named, *(t for _, t, _ in changed if t is not None),
                        *(m.trip_id for _, _, m in changed if m is not None
                          and m.role != TripRole.UNDO and m.trip_id is not None)})  # fmt: skip
        self._lock_batch(db, trips, unnamed)
        before = self._closed_among(db, trips)
        ids = [rid for rid, _, _ in changed]
        db.cursor().execute(
            q(f"DELETE FROM {{stray_exits}} WHERE record_id IN ({', '.join('?' for _ in ids)})"),
            (*ids,),
        )
        db.cursor().executemany(
            q("UPDATE {records} SET trip_role=?, trip_id=? WHERE record_id=?"),
            [(*trip_columns(m), rid) for rid, _, m in changed],
        )
        self._refresh_trips(db, trips)
        if trips:
            entry, exit_ = TripRole.ENTRY.value, TripRole.EXIT.value
            marks = ", ".join("(?)" for _ in trips)
            db.cursor().execute(q(OLD_STRAYS.replace("{ids}", marks)), (exit_, *trips, entry))
            db.cursor().execute(
                q(self.prune_strays.replace("{ids}", marks)), (exit_, *trips, entry)
            )
        closed = self._closed_among(db, trips) - before
        # As a batch's (`BatchTrips.undoable`): the exits its undos name, and its own new
        # exits (an entry's refund), which an undo held already may name.
        exits = (rid for rid, _, m in changed if m is not None and m.role == TripRole.EXIT)
        undoable = {*exits, *(m.trip_id for m in undos if m.trip_id is not None)}
        closed += self._undo_exits(db, sorted(undoable))
        if closed:
            self._add_tally(db, closed)
        return UpgradeStep(reached, len(changed), unmarked)

    def _add_tally(self, db: Session, closed: int) -> None:
        """Add to the upgrade's closed count (`trip_counts`, TALLY_SOURCE)."""
        db.cursor().execute(
            self._sql("UPDATE {trip_counts} SET closed = closed + ? WHERE source = ?"),
            (closed, TALLY_SOURCE),
        )

    def lanes(self) -> list[str]:
        with self._reader() as cur:
            cur.execute(self._sql("SELECT DISTINCT lane FROM {epochs} ORDER BY lane"))
            return [str(r[0]) for r in cur.fetchall()]

    def epochs(self, lane: str) -> list[EpochInfo]:
        with self._reader() as cur:
            cur.execute(
                self._sql(
                    "SELECT epoch, base, contiguous, max_seq, first_us FROM {epochs}"
                    " WHERE lane=? ORDER BY first_us, epoch"
                ),
                (lane,),
            )
            rows = cur.fetchall()
        return [
            EpochInfo(lane, str(e), int(b), self._caught_up(lane, str(e), int(c), int(m)),
                      int(m), int(f))
            for e, b, c, m, f in rows
        ]  # fmt: skip

    def _caught_up(self, lane: str, epoch: str, contiguous: int, max_seq: int) -> int:
        """The epoch's prefix over the committed rows. One short of the highest seq may have
        been left behind by a worker that stopped between a batch's commit and the walk after
        it (uplink.pg): it is walked on and stored."""
        if contiguous >= max_seq:
            return contiguous
        with self._batch() as db:
            return self._walk_prefix(db, lane, epoch, contiguous)

    def conflicts(self) -> list[ConflictRow]:
        with self._reader() as cur:
            cur.execute(
                self._sql(
                    "SELECT lane, epoch, seq, record_id, held_record_id, stored_digest,"
                    " offered_digest, count, first_us, last_us FROM {conflicts}"
                    " ORDER BY lane, epoch, seq"
                )
            )
            return [
                ConflictRow(
                    Conflict(str(la), str(e), int(s), str(r), str(h), str(sd), str(od)),
                    int(n),
                    int(f),
                    int(t),
                )
                for la, e, s, r, h, sd, od, n, f, t in cur.fetchall()
            ]


def classify(  # noqa: PLR0917 - what the store held, all of it read in one place
    lane: str,
    epoch: str,
    records: Sequence[IngestRecord],
    inserted: set[int],
    by_id: dict[str, bytes],
    by_seq: dict[int, tuple[str, bytes]],
) -> tuple[list[Held], list[Conflict]]:
    """What the store holds of a batch byte for byte (the ack), and its conflicts.

    Records this batch inserted (by seq) are held. Any other one is held when the store has
    its id with the very same bytes (a resend); when it has that id with other bytes, or its
    seq under another id, it is a conflict. One neither inserted nor found (a row removed
    meanwhile) is neither: not acknowledged, so the lane sends it again."""
    held: list[Held] = []
    conflicts: list[Conflict] = []
    for r in records:
        mine = digest(r.data)
        if r.seq in inserted:
            held.append(Held(r.seq, r.record_id, mine))
            continue
        stored = by_id.get(r.record_id)
        if stored == r.data:
            held.append(Held(r.seq, r.record_id, mine))
            continue
        other = (r.record_id, stored) if stored is not None else by_seq.get(r.seq)
        if other is not None:
            conflicts.append(
                Conflict(
                    lane, epoch, r.seq, r.record_id, other[0], digest(other[1]).hex(), mine.hex()
                )
            )
    return held, conflicts
