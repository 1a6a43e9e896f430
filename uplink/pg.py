"""The PostgreSQL back-office store (psycopg 3): the same logic as SQLite, for many workers.

Each worker holds its own connection. The batches of one queue epoch are serialised by the
lock on its `epochs` row (taken by the UPDATE that moves it on), so two workers committing
neighbouring batches of the same lane both see each other's rows when they compute the
contiguous prefix; batches of different lanes proceed in parallel. Lock waits and statements
are bounded (`lock_timeout`, `statement_timeout`). Tables live in their own schema (default
`lane_ingest`). A broken connection is reopened on the next call; the batch that hit it is not
acknowledged.

A new batch of an epoch this worker has seen is one statement, its own transaction: one round
trip, where a COPY in a transaction takes four (see `_store_new`). A batch with entries or exits
takes its trip locks in its write guard's statement, before it: still one round trip and one
transaction.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import NamedTuple, TypeVar, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from uplink.messages import QueueIdentity
from uplink.sql_store import (
    ADVANCE_CHUNK,
    LATE_CLOSED,
    MOVE_ON,
    NO_ENTRY,
    OPEN_NEW,
    RECORD_COLUMNS,
    RUN_END,
    SCHEMA_VERSION,
    TALLY_SOURCE,
    UPGRADE_CHUNK,
    BatchTrips,
    Cursor,
    NewRows,
    RowTakenError,
    Session,
    SqlIngestStore,
    UpgradeJob,
    batch_trips,
    fills_a_hole,
    move_on_args,
    new_held,
    refund_columns,
    trip_columns,
)
from uplink.store import (
    IngestRecord,
    IngestStoreError,
    SchemaNewerError,
    StoreBusyError,
    StoreResult,
    StoreUnavailableError,
)
from uplink.trips import TripRole

log = logging.getLogger("lane.uplink.pg")
_T = TypeVar("_T")

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# The SQLSTATE of a write the guard refused (`writable_by`): the schema is newer.
NEWER_STATE = "LI001"


def _schema_sql(schema: str) -> tuple[str, ...]:
    return (
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        # A schema written by the version-1 store (seqs per lane, a `lanes` table) is migrated
        # in place: its records keep the empty epoch ''.
        f"ALTER TABLE IF EXISTS {schema}.records ADD COLUMN IF NOT EXISTS"
        " epoch TEXT NOT NULL DEFAULT ''",
        f"ALTER TABLE IF EXISTS {schema}.records DROP CONSTRAINT IF EXISTS records_lane_seq_key",
        # A schema written before the trip columns gets them; an upgrade job fills them.
        f"ALTER TABLE IF EXISTS {schema}.records ADD COLUMN IF NOT EXISTS trip_role TEXT",
        f"ALTER TABLE IF EXISTS {schema}.records ADD COLUMN IF NOT EXISTS trip_id TEXT",
        # Version 7: the refund columns (uplink.refunds); UpgradeJob.REFUNDS fills them.
        f"ALTER TABLE IF EXISTS {schema}.records ADD COLUMN IF NOT EXISTS refund_of TEXT",
        f"ALTER TABLE IF EXISTS {schema}.records ADD COLUMN IF NOT EXISTS refund_role TEXT",
        f"CREATE TABLE IF NOT EXISTS {schema}.records ("
        " record_id TEXT PRIMARY KEY, lane TEXT NOT NULL, epoch TEXT NOT NULL, seq BIGINT NOT NULL,"
        " ts_us BIGINT NOT NULL, kind TEXT NOT NULL, amount_minor BIGINT NOT NULL,"
        " currency TEXT NOT NULL, data BYTEA NOT NULL, ingested_us BIGINT NOT NULL,"
        " trip_role TEXT, trip_id TEXT, refund_of TEXT, refund_role TEXT)",
        f"CREATE UNIQUE INDEX IF NOT EXISTS records_lane_epoch_seq ON {schema}.records"
        " (lane, epoch, seq)",
        # The trips open now (uplink.sql_store.REOPEN), and the upgrade jobs still to run, each
        # with the key it goes on after (`_upgrade`).
        f"CREATE TABLE IF NOT EXISTS {schema}.open_trips (trip_id TEXT PRIMARY KEY,"
        " record_id TEXT NOT NULL, ts_us BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {schema}.upgrade (job TEXT PRIMARY KEY, after TEXT)",
        f"CREATE TABLE IF NOT EXISTS {schema}.epochs ("
        " lane TEXT NOT NULL, epoch TEXT NOT NULL, base BIGINT NOT NULL,"
        " contiguous BIGINT NOT NULL, max_seq BIGINT NOT NULL, first_us BIGINT NOT NULL,"
        " PRIMARY KEY (lane, epoch))",
        f"CREATE TABLE IF NOT EXISTS {schema}.conflicts ("
        " lane TEXT NOT NULL, epoch TEXT NOT NULL, seq BIGINT NOT NULL, record_id TEXT NOT NULL,"
        " held_record_id TEXT NOT NULL, stored_digest TEXT NOT NULL,"
        " offered_digest TEXT NOT NULL, count BIGINT NOT NULL, first_us BIGINT NOT NULL,"
        " last_us BIGINT NOT NULL, PRIMARY KEY (record_id, offered_digest))",
        # Version 5: the closed count (each epoch's, and an upgrade's tally of the trips closed
        # before it: `trip_counts`) and the strays (uplink.sql_store.CLOSED_COUNTS);
        # `counted` is an upgrade's scratch table (UpgradeJob.TALLY). A column with a constant
        # default is a catalog change.
        f"ALTER TABLE {schema}.epochs ADD COLUMN IF NOT EXISTS closed BIGINT NOT NULL DEFAULT 0",
        f"CREATE TABLE IF NOT EXISTS {schema}.stray_exits (record_id TEXT PRIMARY KEY,"
        " trip_id TEXT NOT NULL)",
        # Version 6: the strays are pruned, which the epochs' arrays of version 5 (`strays`,
        # rewritten by every batch that added to them) would make a write to other epochs'
        # rows: they join `stray_exits` and the column goes (UpgradeJob.PRUNE then prunes
        # them). A worker of version 5 still running fails on the column, acknowledging
        # nothing: stop them before starting this release.
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema ="
        f" '{schema}' AND table_name = 'epochs' AND column_name = 'strays') THEN"
        f" INSERT INTO {schema}.stray_exits (record_id, trip_id) SELECT r.record_id, r.trip_id"
        f" FROM {schema}.epochs AS e CROSS JOIN LATERAL unnest(e.strays) AS s (id)"
        f" JOIN {schema}.records AS r ON r.record_id = s.id ON CONFLICT DO NOTHING;"
        f" ALTER TABLE {schema}.epochs DROP COLUMN strays; END IF; END $$",
        f"CREATE TABLE IF NOT EXISTS {schema}.trip_counts (source TEXT PRIMARY KEY,"
        " closed BIGINT NOT NULL)",
        f"INSERT INTO {schema}.trip_counts VALUES ('{TALLY_SOURCE}', 0) ON CONFLICT DO NOTHING",
        f"CREATE TABLE IF NOT EXISTS {schema}.counted (trip_id TEXT PRIMARY KEY)",
        f"DO $$ BEGIN IF to_regclass('{schema}.lanes') IS NOT NULL THEN"
        f" INSERT INTO {schema}.epochs SELECT lane, '', 0, contiguous, max_seq, 0"
        f" FROM {schema}.lanes ON CONFLICT DO NOTHING; DROP TABLE {schema}.lanes; END IF; END $$",
        # Every write's guard (`PostgresIngestStore._guard`): it takes turns with an upgrade's
        # DDL, which holds the schema's lock exclusive, then refuses when the schema's tag
        # names a version above the writer's (a newer release upgraded it while a worker of
        # this one ran): the write's transaction is aborted, nothing of it stored. A tag of
        # the same version with other DDL is not newer: a worker of an earlier release of it,
        # restarted, tags the schema with its own digest again, which must not stop this one.
        f"CREATE OR REPLACE FUNCTION {schema}.writable_by(tag TEXT) RETURNS void"
        " LANGUAGE plpgsql AS $$ DECLARE found TEXT; BEGIN"
        f" PERFORM pg_advisory_xact_lock_shared(hashtext('{schema}'));"
        # The comment read from its catalog (obj_description cost a batch 0.2x more).
        " SELECT description INTO found FROM pg_catalog.pg_description"
        f" WHERE objoid = '{schema}'::regnamespace"
        " AND classoid = 'pg_catalog.pg_namespace'::regclass AND objsubid = 0;"
        # The writer's own tag (every write's case but a retag) is compared as text first:
        # it skips the two regexes, half of what the guard cost beyond a plain statement
        # (bench.uplink_ingest's `write guard` line).
        " IF found IS DISTINCT FROM tag"
        f" AND substring(found FROM '{_TAG.pattern}')::int"
        f" > substring(tag FROM '{_TAG.pattern}')::int"
        f" THEN RAISE EXCEPTION USING ERRCODE = '{NEWER_STATE}',"
        " MESSAGE = format('the schema is tagged %L, newer than this worker''s %L', found, tag);"
        " END IF; END $$",
    )


# What a schema of an earlier release needs filled from its rows, read before its DDL runs:
# whether it has `records` without the trip columns (MARK), or with them but no `open_trips`
# (OPEN), or no `stray_exits` (STRAYS, TALLY), or the epochs' `strays` of version 5 (PRUNE);
# and whether its `records` has the refund columns (else REFUNDS). Parameters: the schema,
# six times.
_OLD_TABLES = (
    "SELECT to_regclass(%s || '.records') IS NOT NULL, EXISTS (SELECT 1 FROM"
    " information_schema.columns WHERE table_schema = %s AND table_name = 'records'"
    " AND column_name = 'trip_role'), to_regclass(%s || '.open_trips') IS NOT NULL,"
    " to_regclass(%s || '.stray_exits') IS NOT NULL, EXISTS (SELECT 1 FROM"
    " information_schema.columns WHERE table_schema = %s AND table_name = 'epochs'"
    " AND column_name = 'strays'), EXISTS (SELECT 1 FROM information_schema.columns"
    " WHERE table_schema = %s AND table_name = 'records' AND column_name = 'refund_of')"
)
_TAG = re.compile(r"^lane ingest schema v(\d+) ")
# The jobs that run once the closed count is whole (after TALLY): a batch notes no trip it
# closes for them (`counted`, `_note_counted`); REMARK counts what it changes itself.
COUNT_WHOLE = (UpgradeJob.PRUNE, UpgradeJob.REFUNDS, UpgradeJob.REMARK)
_COUNT_WHOLE = ", ".join(f"'{j.value}'" for j in COUNT_WHOLE)
# The first version whose refunds were all marked by today's `trip_mark` (UpgradeJob.REMARK).
REMARKED_FROM = 8
# Every transaction touching a trip id waits for the others that do (`_lock_trips`), on the
# locks `trip_lock_keys` names: keys in one order, taken in one statement, so two batches never
# deadlock on them; one row back. Parameters: the schema's key, whether the groups are shared,
# the keys (`_int_array`).
_TAKE_LOCKS = (
    "SELECT COUNT(CASE WHEN k >= %(groups)s AND %(share)s"
    " THEN pg_advisory_xact_lock_shared(%(schema)s::int, k)"
    " ELSE pg_advisory_xact_lock(%(schema)s::int, k) END) FROM {rows}unnest(%(keys)s::int[]) AS k"
)
_LOCK_TRIPS = _TAKE_LOCKS.replace("{rows}", "")
# The write guard (`writable_by`), then the trip locks, in one statement: a batch's round trip
# sends one statement fewer (0.03-0.07x a COPY of a closed road's batch). A lock is taken per
# row of the join, and there is none before the guard's CTE has run (none at all if it
# raised): the guard still comes first. `{schema}`: the schema's prefix. Parameters:
# _LOCK_TRIPS's and the worker's tag.
_GUARD_LOCK_TRIPS = "WITH guard AS MATERIALIZED (SELECT {schema}writable_by(%(tag)s)) " + (
    _TAKE_LOCKS.replace("{rows}", "guard, ")
)
_HALF = 1 << 31
# A trip id's own lock is its CRC-32 shifted into [0, TRIP_LOCK_GROUP_BASE); its group's is
# TRIP_LOCK_GROUP_BASE + the CRC-32 modulo TRIP_LOCK_GROUPS, above every trip id's key.
TRIP_LOCK_GROUP_BASE = 1 << 30
TRIP_LOCK_GROUPS = 16
# A transaction naming at most this many trip ids locks each of them: a lane's batch (100
# records by default), so workers storing batches of other trips run side by side. One naming
# more (a backlog's large batch, an upgrade chunk) locks its groups exclusive instead, so no
# transaction takes more than TRIP_LOCKS_HELD of PostgreSQL's shared lock table (64 a
# connection by default, max_locks_per_transaction, shared by all).
TRIP_LOCKS_OWN = 256
TRIP_LOCKS_HELD = TRIP_LOCKS_OWN + TRIP_LOCK_GROUPS


# PRUNE_STRAYS driven by the trip ids (same parameters): each one's exits read from the trip
# index in a scalar subquery, the strays then deleted by key. PostgreSQL plans PRUNE_STRAYS's
# `IN` as a hash join over every exit in the index, a cost that grows with the road's history
# (4 ms a batch at 10,000 trips, 0.1 ms this way).
PRUNE_BY_TRIP = (
    "DELETE FROM {stray_exits} WHERE record_id = ANY(ARRAY(SELECT unnest(ARRAY(SELECT"
    " x.record_id FROM {records} AS x WHERE x.trip_role=? AND x.trip_id=t.column1))"
    f" FROM (VALUES {{ids}}) AS t WHERE NOT ({NO_ENTRY.replace('{column}', 'column1')})))"
)


class TripsMetError(IngestStoreError):
    """A batch's one statement refused itself: it leaves strays, or meets exits held
    (`PostgresIngestStore._trip_statements`); it is stored by the pipelined transaction."""


class ExitsUndoneError(IngestStoreError):
    """A batch's one statement refused itself: an exit of it is refunded already (its refund
    came first, `PostgresIngestStore._trip_statements`); it is stored by the pipelined
    transaction, which undoes it (`SqlIngestStore._undo_exits`)."""


class TripLocks(NamedTuple):
    schema: int  # the schema's key, the first of each lock's two
    keys: list[int]  # ascending
    share_groups: bool  # the group keys are taken shared (else all exclusive)


def trip_lock_keys(schema: str, trips: Iterable[str], *, every_group: bool = False) -> TripLocks:
    """The advisory locks that make two transactions naming a common trip id take turns, and
    no other pair but rarely, at most TRIP_LOCKS_HELD of them. A transaction naming at most
    TRIP_LOCKS_OWN trip ids takes each one's lock exclusive and their groups shared; one
    naming more takes its groups exclusive and no trip id's. Two transactions with a trip id
    in common both hold its lock, or one holds its group exclusive: one waits for the other's
    commit. `every_group`: every group exclusive, so it takes turns with every transaction
    naming any trip id (one that must meet a trip it cannot name: a refund of an exit not
    held yet). Taken in ascending order (trip ids' keys below groups'), so they never
    deadlock. Computed here rather than in SQL, so the server only takes them; every worker
    and upgrade of a schema must agree on them."""
    key = zlib.crc32(schema.encode()) - _HALF
    if every_group:
        every = [TRIP_LOCK_GROUP_BASE + g for g in range(TRIP_LOCK_GROUPS)]
        return TripLocks(key, every, share_groups=False)
    hashes = {zlib.crc32(t.encode()) for t in trips}
    groups = sorted({TRIP_LOCK_GROUP_BASE + h % TRIP_LOCK_GROUPS for h in hashes})
    if len(hashes) <= TRIP_LOCKS_OWN:
        own = sorted({h >> 2 for h in hashes})
        return TripLocks(key, [*own, *groups], share_groups=True)
    return TripLocks(key, groups, share_groups=False)


# A text column as one string, split by the server: its values joined by the ASCII unit
# separator, NULL written as the record separator (`_text_column`).
_SPLIT = "string_to_array(%s, chr(31), chr(30))"


def _text_column(values: list[str | None]) -> tuple[str, object]:
    """A text column's SQL (an array) and its parameter: `_SPLIT`, a C call each side, where no
    value holds either separator and the string is not empty (it would split into no value
    at all); else a binary array, which holds anything."""
    text = "\x1f".join(["\x1e" if v is None else v for v in values])
    if text and text.count("\x1f") == len(values) - 1 and text.count("\x1e") == values.count(None):
        return _SPLIT, text
    return "%b::text[]", values


def _int_array(values: Iterable[int]) -> str:
    """Integers as the text of a PostgreSQL array: a few µs, where psycopg's binary dumper
    packs them one by one in Python."""
    return "{" + ",".join(map(str, values)) + "}"


def _refund_index_sql(schema: str, *, concurrently: bool = True) -> str:
    """The refund index (uplink.refunds), built as the trip index is: only the records that
    take part in a refund's trail are in it."""
    how = "CONCURRENTLY " if concurrently else "IF NOT EXISTS "
    return (
        f"CREATE INDEX {how}records_refund ON {schema}.records (refund_of)"
        " WHERE refund_of IS NOT NULL"
    )


def _trip_index_sql(schema: str, *, concurrently: bool = True) -> str:
    """The trip index: on a table of an earlier release, built apart from the DDL's
    transaction and without blocking writes (`PostgresIngestStore._build_index`); on a
    new, empty one, in the DDL's transaction (a concurrent build would wait for every older
    transaction of the database). Only the records that take part in trips are in it
    (uplink.trips)."""
    how = "CONCURRENTLY " if concurrently else "IF NOT EXISTS "
    return (
        f"CREATE INDEX {how}records_trip ON {schema}.records (trip_role, trip_id)"
        " WHERE trip_role IS NOT NULL"
    )


# The indexes built apart from the DDL's transaction (`PostgresIngestStore._build_index`), by
# name: each one's statement for a schema.
INDEXES: dict[str, Callable[..., str]] = {
    "trip": _trip_index_sql,
    "refund": _refund_index_sql,
}
# Whether an index is there and valid: no row (missing), or its `indisvalid` (false: a
# build is running, or one died and left it half made). Parameter: the index's name.
_INDEX_STATE = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)"


def _schema_tag(schema: str) -> str:
    """Names the schema's version and DDL: any change to the DDL makes a new tag, so a store of
    a new release migrates a schema an older one made; the version refuses the reverse."""
    ddl = (*_schema_sql(schema), *(index(schema) for index in INDEXES.values()))
    digest = hashlib.sha256("\n".join(ddl).encode()).hexdigest()[:16]
    return f"lane ingest schema v{SCHEMA_VERSION} {digest}"


def _tagged_version(comment: str | None) -> int | None:
    """The schema version a schema's comment names (None: no tag, a release before tags)."""
    version = _TAG.match(comment or "")
    return None if version is None else int(version[1])


def _pending_jobs(
    has_records: bool,
    has_trip_columns: bool,
    has_open_trips: bool,
    has_strays: bool,
    has_stray_arrays: bool,
    *,
    has_refund_columns: bool,
    version: int | None,
) -> tuple[UpgradeJob, ...]:
    if not has_records:
        return ()  # a new schema: nothing to fill
    refunds = () if has_refund_columns else (UpgradeJob.REFUNDS,)
    # Trip columns an earlier release filled hold its marks of refunds (MARK gives today's).
    remarked = has_trip_columns and (version is None or version < REMARKED_FROM)
    remark = (UpgradeJob.REMARK,) if remarked else ()
    trips = _trip_jobs(has_trip_columns, has_open_trips, has_strays, has_stray_arrays)
    return trips + refunds + remark


def _trip_jobs(
    has_trip_columns: bool, has_open_trips: bool, has_strays: bool, has_stray_arrays: bool
) -> tuple[UpgradeJob, ...]:
    kept = (UpgradeJob.STRAYS, UpgradeJob.TALLY)
    if not has_trip_columns:
        return (UpgradeJob.MARK, *kept)  # MARK refreshes the open trips of what it meets
    if not has_open_trips:
        return (UpgradeJob.OPEN, *kept)
    if not has_strays:
        return kept  # the strays it keeps are of trips with no entry: nothing to prune
    return (UpgradeJob.PRUNE,) if has_stray_arrays else ()


# A server that vanished without a word (its host down, a cut link) leaves a half-open
# connection the kernel would keep for hours: keepalives find an idle one within 25 s, and
# tcp_user_timeout (ms) ends one whose sent data goes unanswered for 30 s. A DSN's own win.
KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


class PostgresIngestStore(SqlIngestStore):
    """`lock_timeout_s` bounds the wait for a row or table lock held by another transaction and
    `statement_timeout_s` any one statement: a batch that hits either is refused with
    StoreBusyError (the ingest retries it) instead of stalling the worker without a word.

    A schema of an earlier release is upgraded when a store opens it: its DDL in one short
    transaction, then what must be filled from its rows (`UpgradeJob`) `upgrade_chunk` rows
    per transaction, resumed where it stopped by the next store to open it. `after_chunk` is
    called after each chunk's commit (tests stop an upgrade there)."""

    param = "%s"
    lock_suffix = " FOR UPDATE"
    bytewise = ' COLLATE "C"'
    # A new batch's first entries are plain INSERTs: under the trip locks no other transaction
    # writes their rows, and ON CONFLICT's speculative insertion of each row cost 0.025x a
    # COPY of the batch. An entry of a trip open already (a pass shown at two entry lanes)
    # meets the row's key, and the batch is stored as held (RowTakenError), where REOPEN keeps
    # the earlier entry.
    open_new = OPEN_NEW
    prune_strays = PRUNE_BY_TRIP
    holds_bytes = "position(? IN data) > 0"

    def __init__(
        self,
        dsn: str,
        schema: str = "lane_ingest",
        connect_timeout: float = 5.0,
        lock_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        *,
        upgrade_chunk: int = UPGRADE_CHUNK,
        after_chunk: Callable[[UpgradeJob, str | None], None] | None = None,
    ) -> None:
        if not _IDENT.match(schema):
            raise IngestStoreError(f"invalid schema name {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.prefix = f"{schema}."
        self._connect_timeout = connect_timeout
        given = conninfo_to_dict(dsn)
        self._conninfo = make_conninfo(
            dsn, **{k: v for k, v in KEEPALIVE.items() if k not in given}
        )
        self._options = (
            f"-c lock_timeout={int(lock_timeout_s * 1000)}"
            f" -c statement_timeout={int(statement_timeout_s * 1000)}"
        )
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        # Epochs whose row this store has seen committed (rows are never deleted): a batch of
        # one of them takes the one-statement path.
        self._seen: set[tuple[str, str]] = set()
        # Epochs whose last batch met strays (`_met_strays`): an entry lane's backlog after an
        # outage, an exit lane's batches meanwhile. Their next batch is stored by the
        # pipelined transaction at once, not refused by the one statement first.
        self._meeting: set[tuple[str, str]] = set()
        tag = self._tag = _schema_tag(schema)
        with self._transaction() as cur:
            # A schema already made by this release needs no DDL: its ALTER TABLE would wait
            # for an exclusive lock behind the batches of the workers already running.
            cur.execute("SELECT obj_description(to_regnamespace(%s), 'pg_namespace')", (schema,))
            found = cur.fetchone()
            if found is None or found[0] != tag:
                # Two workers starting together would race on CREATE IF NOT EXISTS.
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (schema,))
                cur.execute(
                    "SELECT obj_description(to_regnamespace(%s), 'pg_namespace')", (schema,)
                )
                comment = cast(tuple[str | None], cur.fetchone())[0]
                self._refuse_newer(comment)
                cur.execute(_OLD_TABLES, (schema,) * 6)
                old = cast(tuple[bool, bool, bool, bool, bool, bool], cur.fetchone())
                for stmt in _schema_sql(schema):
                    cur.execute(stmt)
                if not old[0]:  # a new schema: its empty table indexed at once
                    for index in INDEXES.values():
                        cur.execute(index(schema, concurrently=False))
                jobs = _pending_jobs(
                    *old[:5], has_refund_columns=old[5], version=_tagged_version(comment)
                )
                for job in jobs:
                    cur.execute(
                        self._sql(f"INSERT INTO {self.prefix}upgrade (job) VALUES (?)"
                                  " ON CONFLICT DO NOTHING"),
                        (job.value,),
                    )  # fmt: skip
                cur.execute(f"COMMENT ON SCHEMA {schema} IS '{tag}'")
        for name, index in INDEXES.items():
            self._build_index(name, index(schema))
        self._upgrade(upgrade_chunk, after_chunk)
        self.upgrade_pending()

    def _refuse_newer(self, comment: str | None) -> None:
        version = _tagged_version(comment)
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaNewerError(
                f"postgres schema {self.schema}: schema version {version} is newer than this"
                f" software ({SCHEMA_VERSION}); not touched"
            )

    def _build_index(self, index: str, build: str) -> None:
        """Make sure the `index` index (`trip`, `refund`: `INDEXES`) is there and valid,
        building it (`build`) if not with CREATE INDEX
        CONCURRENTLY: outside a transaction, it reads the table without blocking the batches
        that other workers write meanwhile (a plain CREATE INDEX holds their inserts until it
        has read every row, which on a large store of version 2 is minutes). One worker builds
        it at a time, under a session advisory lock, which goes with its connection if it dies;
        a build that died leaves the index invalid, and the next store to open the schema drops
        and rebuilds it. A store that finds another worker building it is refused as
        unavailable (`lane ingest` retries its start with backoff), rather than waiting in a
        statement: a waiting statement holds a snapshot, which the build waits for in turn."""
        name = f"{self.prefix}records_{index}"
        with self._connected() as conn:
            state = conn.execute(_INDEX_STATE, (name,)).fetchone()
            if state is not None and state[0]:
                return
            key = f"{name} build"
            taken = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
            if taken is None or not taken[0]:
                raise StoreUnavailableError(
                    f"postgres schema {self.schema}: another worker is building its {index}"
                    " index (CREATE INDEX CONCURRENTLY); try again when it is done"
                )
            try:
                # The build reads the whole table, and waits for the transactions before it.
                conn.execute("SET statement_timeout = 0")
                conn.execute("SET lock_timeout = 0")
                state = conn.execute(_INDEX_STATE, (name,)).fetchone()
                if state is not None and not state[0]:
                    log.warning(
                        "ingest %s index invalid, rebuilt",
                        index,
                        extra={"schema": self.schema, "index": name},
                    )
                    conn.execute(f"DROP INDEX CONCURRENTLY {name}")
                if state is None or not state[0]:
                    # It waits for the transactions older than it: an open one delays it.
                    x = {"schema": self.schema, "index": name}
                    log.info("ingest %s index building", index, extra=x)
                    conn.execute(build)
                    log.info("ingest %s index built", index, extra=x)
            finally:
                if not conn.broken:  # else its session, and the lock with it, is gone
                    conn.execute("RESET statement_timeout")
                    conn.execute("RESET lock_timeout")
                    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    def _upgrade(
        self, chunk: int, after_chunk: Callable[[UpgradeJob, str | None], None] | None
    ) -> None:
        """Run the schema's upgrade jobs a chunk per transaction, each resumed from the key its
        row holds: batches ingested meanwhile wait at most for one chunk's trip locks. The
        jobs run in `UpgradeJob`'s order, each reading what the ones before it filled: when
        another worker is running a chunk of the first one left (its row locked), the upgrade
        is left to that worker."""
        table = f"{self.prefix}upgrade"
        order = [j.value for j in UpgradeJob]
        while True:
            with self._session(pipeline=False, writes=True) as conn:
                row = conn.execute(
                    f"SELECT job, after FROM {table} WHERE job = (SELECT job FROM {table}"
                    " ORDER BY array_position(%s::text[], job) LIMIT 1)"
                    " FOR UPDATE SKIP LOCKED",
                    (order,),
                ).fetchone()
                if row is None:
                    return
                job, after = UpgradeJob(str(row[0])), cast(str | None, row[1])
                step = self._upgrade_step(conn, job, after, chunk)
                reached = step.reached
                if reached is None:
                    conn.execute(f"DELETE FROM {table} WHERE job = %s", (job.value,))
                else:
                    conn.execute(
                        f"UPDATE {table} SET after = %s WHERE job = %s", (reached, job.value)
                    )
            x: dict[str, object] = {"schema": self.schema, "job": job.value, "after": reached}
            if job == UpgradeJob.REMARK:
                x |= {"refunds_remarked": step.remarked, "refunds_unmarked": step.unmarked}
            log.info("ingest schema upgrade step", extra=x)
            if after_chunk is not None:
                after_chunk(job, reached)

    def _upgrading(self, cur: Cursor) -> bool:
        # While only PRUNE is left the answer is whole: `lane trips` counts a late entry's trip
        # from the strays the job has not reached yet (uplink.sql_store.STRAYS). REFUNDS
        # fills no trip column.
        return self._pending_but(cur, (UpgradeJob.PRUNE, UpgradeJob.REFUNDS))

    def _tally_running(self, db: Session) -> bool:
        return self.upgrade_seen and self._pending_but(db.cursor(), COUNT_WHOLE)

    def _pending_but(self, cur: Cursor, jobs: Collection[UpgradeJob]) -> bool:
        """Whether a job other than `jobs` is pending."""
        cur.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self.prefix}upgrade WHERE job <> ALL(%s))",
            ([j.value for j in jobs],),
        )
        return bool(cur.fetchone()[0])

    def _tally_state(self) -> str:
        job = f"FROM {self.prefix}upgrade WHERE job = '{UpgradeJob.TALLY.value}'"
        return f"SELECT EXISTS (SELECT 1 {job}) AS pending, (SELECT after {job}) AS after"

    def _refunds_upgrading(self, cur: Cursor) -> bool:
        cur.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self.prefix}upgrade WHERE job = %s)",
            (UpgradeJob.REFUNDS.value,),
        )
        return bool(cur.fetchone()[0])

    def upgrade_pending(self) -> bool:
        # Once the tally and the jobs before it are done, none is ever pending again for this
        # store: its batches stop noting (the jobs after it count what they change, or fill
        # no trip column).
        with self._reader() as cur:
            self.upgrade_seen = self._pending_but(cur, COUNT_WHOLE)
            # The trip ledger's answer is whole while PRUNE or REFUNDS alone is left
            # (`_upgrading`), the refunds' while any job but REFUNDS is: both only under PRUNE.
            return self._pending_but(cur, (UpgradeJob.PRUNE,))

    def _lock_batch(self, db: Session, trips: Sequence[str], unnamed: Sequence[str]) -> None:
        """A refund of an exit that names no trip (`unnamed`: the exits' record ids) locks the
        trip of the exit it undoes too, read from that exit's row first (a round trip more,
        for a rare batch): it takes turns with a batch bringing that trip's entry or another
        exit, whose records its `_undo_exits` reads. An exit not held yet (or not marked yet:
        an upgrade's `mark` has not reached it) may be in flight in another worker under its
        trip's lock, which nothing here can name: then every group is taken exclusive
        (`trip_lock_keys`), so the two take turns whichever starts first and the second to
        commit sees the first (the exit finds the refund, or the refund the exit)."""
        every = False
        if unnamed:
            cur = db.cursor()
            cur.execute(
                self._sql(
                    "SELECT record_id, trip_id FROM {records} WHERE record_id = ANY(%s)"
                    " AND trip_role IN (%s, %s)"
                ),
                (list(unnamed), TripRole.EXIT.value, TripRole.REFUNDED.value),
            )
            found = {str(rid): str(trip) for rid, trip in cur.fetchall()}
            trips = sorted({*trips, *found.values()})
            every = not set(unnamed) <= found.keys()
        self._lock_trips(db, trips, every_group=every)

    def _lock_trips(self, db: Session, trips: Sequence[str], *, every_group: bool = False) -> None:
        if trips or every_group:
            db.cursor().execute(_LOCK_TRIPS, self._lock_params(trips, every_group=every_group))

    def _lock_params(self, trips: Sequence[str], *, every_group: bool = False) -> dict[str, object]:
        """_LOCK_TRIPS's parameters for the locks of `trips` (`trip_lock_keys`)."""
        locks = trip_lock_keys(self.schema, trips, every_group=every_group)
        return {
            "groups": TRIP_LOCK_GROUP_BASE,
            "share": locks.share_groups,
            "schema": locks.schema,
            "keys": _int_array(locks.keys),
        }

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=max(1, int(self._connect_timeout)),
                    options=self._options,
                )
            except psycopg.Error as exc:
                raise StoreUnavailableError(f"postgres unreachable: {exc}") from exc
        return self._conn

    @contextmanager
    def _connected(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """The worker's connection (autocommit: a statement outside a transaction is its
        own), with the driver's errors as the store's."""
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except (
                psycopg.errors.LockNotAvailable,
                psycopg.errors.QueryCanceled,
                # The server ended a wait cycle by failing this transaction (two batches of one
                # epoch, a resend cut otherwise: one holds the epoch's row and waits for a
                # seq the other inserted, which waits for the row): tried again, it goes on.
                psycopg.errors.DeadlockDetected,
            ) as exc:
                raise StoreBusyError(f"postgres: {_first_line(exc)}") from exc
            except psycopg.errors.UniqueViolation as exc:
                raise RowTakenError(f"postgres: {_first_line(exc)}") from exc
            except psycopg.errors.NotNullViolation as exc:
                if exc.diag.table_name == "epochs" and exc.diag.column_name == "closed":
                    raise TripsMetError(f"postgres: {_first_line(exc)}") from exc
                if exc.diag.table_name == "epochs" and exc.diag.column_name == "first_us":
                    raise ExitsUndoneError(f"postgres: {_first_line(exc)}") from exc
                raise IngestStoreError(f"postgres: {exc}") from exc
            except psycopg.Error as exc:
                if exc.sqlstate == NEWER_STATE:
                    raise SchemaNewerError(
                        f"postgres schema {self.schema}: {_first_line(exc)}"
                    ) from exc
                raise IngestStoreError(f"postgres: {exc}") from exc

    def _guard(
        self, conn: psycopg.Connection[tuple[object, ...]], trips: Sequence[str] = ()
    ) -> None:
        """A write transaction's first statement (`writable_by`): it fails the transaction
        when the schema is newer than this worker. Pipelined with the rest, it costs no round
        trip of its own. With `trips`, the same statement then takes their locks, as
        `_lock_trips` would in a statement after it (_GUARD_LOCK_TRIPS)."""
        if not trips:
            conn.execute(f"SELECT {self.prefix}writable_by(%s)", (self._tag,))
            return
        params = self._lock_params(trips) | {"tag": self._tag}
        conn.execute(_GUARD_LOCK_TRIPS.replace("{schema}", self.prefix), params)

    @contextmanager
    def _session(
        self, pipeline: bool, *, writes: bool = False
    ) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """One transaction on the worker's connection; with `pipeline`, statements are sent
        without waiting for each other's results (psycopg pipeline mode): a result is read,
        in one round trip for everything sent so far, only when the code asks for it. One
        that `writes` begins with the guard (`_guard`)."""
        with (
            self._connected() as conn,
            conn.pipeline() if pipeline else nullcontext(),
            conn.transaction(),
        ):
            if writes:
                self._guard(conn)
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        with self._session(pipeline=False) as conn, conn.cursor() as cur:
            yield cur

    @contextmanager
    def _batch(self) -> Iterator[Session]:
        with self._session(pipeline=True, writes=True) as conn:
            yield conn

    def _store_new(
        self, lane: str, queue: QueueIdentity, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult:
        """The first batch of an epoch this worker sees opens or finds its row (SQL's
        pipelined transaction); every later one is a single statement, sent and committed in
        one round trip before the result is read (so the ack still follows the commit): the
        records are inserted in a WITH, which also clears the lane's conflicts this batch
        resolves, and the epoch's row is moved on by the UPDATE around it. A batch with
        entries or exits keeps its open trips in that statement too, and sends its trip ids'
        locks before it in the same round trip and transaction. A batch that filled a hole
        walks the prefix on in a second transaction after that commit; a worker that stops
        in between leaves the prefix short, and the next `epochs()` walks it on."""
        key = (lane, queue.epoch)
        trips = batch_trips(records)
        # A batch with a refund of an exit (rare) undoes it in the pipelined transaction.
        if key not in self._seen or (key in self._meeting and self.upgrade_seen) or trips.undoes:
            result = super()._store_new(lane, queue, records, now_us)
            self._seen.add(key)
            return result
        first, last = records[0].seq, records[-1].seq
        # An epoch whose last batch met strays (an entry lane's backlog, its exit lanes'
        # batches meanwhile) keeps and prunes them in the same round trip at once; any other
        # batch tries the closed road's form, which refuses itself when it meets them, or an
        # exit of it refunded already.
        new = NewRows(lane, queue.epoch, records, now_us)
        strays = key in self._meeting
        try:
            try:
                rows, held = self._one_statement(
                    trips.trips,
                    lambda: self._new_statements(new, trips, strays=strays),
                    lambda: new_held(records),
                )
            except TripsMetError:
                if self.upgrade_seen:  # the trips a late entry closed are noted (`_note_counted`)
                    return super()._store_new(lane, queue, records, now_us)
                rows, held = self._one_statement(
                    trips.trips,
                    lambda: self._new_statements(new, trips, strays=True),
                    lambda: new_held(records),
                )
        except ExitsUndoneError:
            return super()._store_new(lane, queue, records, now_us)
        row = rows[0]
        if row is None:  # its row was removed by hand: the records are held, the row is not
            self._seen.discard(key)
            self._meeting.discard(key)
            return self._store_held(lane, queue, records, now_us)
        pruned = cast(tuple[int, bool] | None, rows[1] if len(rows) > 1 else None)
        self._met_strays(key, pruned is not None and (pruned[0] > 0 or pruned[1]))
        contiguous, max_seq = cast(tuple[int, int], row)  # BIGINT comes as int
        if fills_a_hole(first, last, contiguous):
            contiguous = self._walk_on(lane, queue.epoch, contiguous)
        return StoreResult(held, len(held), 0, (), contiguous, max_seq, False, ())

    def _new_statements(
        self, new: NewRows, trips: BatchTrips, *, strays: bool
    ) -> list[tuple[str, tuple[object, ...]]]:
        """A new batch of a seen epoch as one statement: the records inserted in a WITH,
        which also clears the lane's conflicts this batch resolves and keeps its open trips
        (`_trip_statements`), and the epoch's row moved on by the UPDATE around it. With
        `strays`, it keeps the batch's strays too, and a second statement (`_pruning`) prunes
        those its trips no longer have (a statement's WITHs all read the store as it was
        before it: the pruning reads this batch's records and strays, so it comes after)."""
        lane, epoch = new.lane, new.epoch
        first, last = new.records[0].seq, new.records[-1].seq
        sql, params = self._insert_sql(new, returning="")
        kept, changed, sets, values = self._trip_statements(trips, strays=strays)
        statement = self._sql(
            f"WITH ins AS ({sql} RETURNING record_id, data), gone AS"
            " (DELETE FROM {conflicts} AS c USING ins WHERE c.lane=%s"
            " AND c.record_id = ins.record_id"
            # the digest of uplink.messages.digest: SHA-256, lower-case hex
            f" AND c.offered_digest = encode(sha256(ins.data), 'hex')){kept}"
            f" UPDATE {{epochs}} SET {MOVE_ON}{sets} WHERE lane=%s AND epoch=%s"
            " RETURNING contiguous, max_seq"
        )
        args = (*params, lane, *changed, *move_on_args(first, last), *values, lane, epoch)
        if not strays or not trips.trips:
            return [(statement, args)]
        return [(statement, args), self._pruning(lane, epoch, trips)]

    def _pruning(self, lane: str, epoch: str, batch: BatchTrips) -> tuple[str, tuple[object, ...]]:
        """`_prune_strays` in one statement over the batch's trip ids as an array, after the
        batch's statement: the trips a late entry closed (LATE_CLOSED) added to its epoch's
        count and their strays dropped (`prune_strays`), when the batch has entries or kept
        strays of its own (`_add_trips`' condition). Its row: how many trips it counted
        closed, and whether the batch kept strays."""
        form, ids = _text_column(list(batch.trips))
        rows = f"unnest({form}) AS t (column1)"
        exit_form, exit_ids = _text_column([r for r, _ in batch.exits])
        entry, exit_ = TripRole.ENTRY.value, TripRole.EXIT.value
        statement = self._sql(
            "WITH kept AS (SELECT EXISTS (SELECT 1 FROM {stray_exits}"
            f" WHERE record_id = ANY({exit_form})) AS yes),"
            " met AS (SELECT %s OR (SELECT yes FROM kept) AS yes),"
            f" late AS ({LATE_CLOSED.replace('(VALUES {ids}) AS t', rows)}"
            " AND (SELECT yes FROM met)),"
            f" pruned AS ({self.prune_strays.replace('(VALUES {ids}) AS t', rows)}"
            " AND (SELECT yes FROM met))"
            " UPDATE {epochs} SET closed = closed + (SELECT COUNT(*) FROM late)"
            " WHERE lane=%s AND epoch=%s RETURNING (SELECT COUNT(*) FROM late),"
            " (SELECT yes FROM kept)"
        )
        args = (
            exit_ids,
            bool(batch.entries),
            ids,
            entry,
            exit_,
            exit_,
            exit_,
            ids,
            entry,
            lane,
            epoch,
        )
        return statement, args

    def _met_strays(self, key: tuple[str, str], met: bool) -> None:
        if met:
            self._meeting.add(key)
        else:
            self._meeting.discard(key)

    def _one_statement(
        self,
        trips: Sequence[str],
        build: Callable[[], list[tuple[str, tuple[object, ...]]]],
        meanwhile: Callable[[], _T],
    ) -> tuple[list[tuple[object, ...] | None], _T]:
        """Run a batch's statements (`build` makes them) after its guard and its trips'
        locks, in one round trip and one transaction: each one's first row (the first: its
        epoch's row as moved on), and what `meanwhile` gives. Both run while the server
        works: `build` once the guard and the locks are sent, `meanwhile` once the
        statements are (the server runs each as it comes, and commits at the pipeline's
        Sync, sent after it). Nothing is read from the server before the commit."""
        with self._connected() as conn:
            # The guard and the trip ids' locks come first (`_guard`), in a statement of
            # their own: the batch's statements then take their snapshots after any other
            # transaction holding one of them committed. All run in one transaction, the
            # implicit one of the extended protocol up to the pipeline's Sync (no
            # BEGIN/COMMIT, which psycopg would each wait for).
            with conn.pipeline():
                self._guard(conn, trips)
                # psycopg takes a statement it names as it sends it for prepared, unless it
                # was told to prepare it (then it checks that the server did). The first is,
                # at once: the guard or the locks failing skip it. One after it never is:
                # skipped because the first failed (a held row), its name reused next would
                # not exist.
                sent = [conn.execute(s, a, prepare=not i) for i, (s, a) in enumerate(build())]
                done = meanwhile()
            rows = [c.fetchone() for c in sent]
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                # Only a statement outside a transaction block is committed when it returns;
                # inside one left open the batch would not be, and an ack names only what is.
                conn.rollback()
                raise IngestStoreError("postgres: connection was inside a transaction block")
        return rows, done

    def _walk_on(self, lane: str, epoch: str, since: int) -> int:
        """`_walk_prefix` in one round trip: lock the epoch's row, then move its prefix on
        over the next chunk of the run (RUN_END, read in a snapshot taken after the lock, so
        every batch committed before it is seen), then commit, all sent at once; the results
        are read after the commit. A run longer than the chunk is walked on by
        `_walk_prefix`."""
        q = self._sql
        with self._connected() as conn, conn.pipeline():
            with conn.transaction():
                self._guard(conn)
                # Its commit is not waited for on disk (the batch's rows were): a crash that
                # loses it leaves the prefix short, which the next `epochs()` walks on.
                conn.execute("SET LOCAL synchronous_commit TO off")
                locked = conn.execute(
                    q("SELECT contiguous FROM {epochs} WHERE lane=%s AND epoch=%s FOR UPDATE"),
                    (lane, epoch),
                )
                moved = conn.execute(
                    q(
                        f"UPDATE {{epochs}} SET contiguous = w.upto FROM ({RUN_END}) AS w"
                        " WHERE lane=%s AND epoch=%s AND w.upto > contiguous"
                        " RETURNING contiguous"
                    ),
                    (lane, epoch, since, ADVANCE_CHUNK, since, lane, epoch),
                )
            stored = cast(tuple[int], locked.fetchone())[0]
            row = moved.fetchone()
        contiguous = max(stored, since if row is None else cast(int, row[0]))
        if contiguous < since + ADVANCE_CHUNK:
            return contiguous
        with self._batch() as db:
            return self._walk_prefix(db, lane, epoch, contiguous)

    def _entry_rows(self, entries: Mapping[str, tuple[int, str]]) -> tuple[str, tuple[object, ...]]:
        # Three arrays, as the records' columns (`_insert_sql`): one plan whatever the batch's
        # size.
        trip_form, trip_ids = _text_column(list(entries))
        record_form, record_ids = _text_column([rid for _, rid in entries.values()])
        rows = f"unnest({trip_form}, {record_form}, %s::bigint[])"
        times = _int_array(ts for ts, _ in entries.values())
        return f"{rows} AS t (column1, column2, column3)", (trip_ids, record_ids, times)

    def _closing(
        self, trips: Collection[str], *, returning: bool = False
    ) -> tuple[str, tuple[object, ...]]:
        # A join with the batch's trip ids, which the planner hashes (or probes the key with,
        # once the table is large), not `trip_id = ANY(array)`: with the array a parameter of
        # the prepared statement, its cached plan scanned the table and compared each row
        # with every id of the array (1.2 ms of an exit batch's 2.6 ms under auto_explain;
        # the join 0.35 ms).
        form, value = _text_column(list(trips))
        back = " RETURNING o.trip_id" if returning else ""
        return self._sql(
            f"DELETE FROM {{open_trips}} AS o USING unnest({form}) AS x (trip_id)"
            f" WHERE o.trip_id = x.trip_id{back}"
        ), (value,)

    def _trip_statements(
        self, batch: BatchTrips, *, strays: bool = False
    ) -> tuple[str, tuple[object, ...], str, tuple[object, ...]]:
        """What a new batch of a seen epoch adds to its statement to keep its trips, as
        `_add_trips` keeps them: data-modifying WITHs over the batch's arrays (each one's
        parameters in order), then what its epoch's UPDATE sets besides (and its
        parameters). No WITH reads what another writes (the trips of the entries opened are
        not those closed). The trips its exits closed (`trip_gone`) are added to the epoch's
        count. Without `strays`, only when every exit closed a trip and every entry opened
        one (a closed road's common path); else the count is set to NULL, which its column
        refuses (TripsMetError): the batch leaves strays, or meets an exit held and maybe
        strays to prune, and `_store_new` stores it again with `strays`, which keeps its exits
        that closed nothing (`trip_kept`) and prunes after it (`_pruning`). Keeping them on
        every batch would set up a data-modifying WITH for each, even one that writes
        nothing."""
        if not batch.trips:
            return "", (), "", ()
        steps: list[tuple[str, str, tuple[object, ...]]] = []
        short: list[str] = []  # each true when the batch met strays, over `values`
        values: tuple[object, ...] = ()
        if batch.entries:
            rows, params = self._entry_rows(batch.entries)
            opening = self.open_new.replace("{rows}", rows) + " RETURNING 1"
            steps.append(("trip_opened", opening, (*params, TripRole.EXIT.value)))
            short.append("(SELECT COUNT(*) FROM trip_opened) < %s")
            values = (len(batch.entries),)
        gone = "0"
        if batch.exited:
            steps.append(("trip_gone", *self._closing(batch.exited, returning=True)))
            if self.upgrade_seen:
                steps.append((
                    "trip_noted",
                    "INSERT INTO {counted} (trip_id) SELECT trip_id FROM trip_gone WHERE EXISTS"
                    f" (SELECT 1 FROM {self.prefix}upgrade WHERE job NOT IN ({_COUNT_WHOLE}))"
                    " ON CONFLICT DO NOTHING",
                    (),
                ))  # fmt: skip
            gone = "(SELECT COUNT(*) FROM trip_gone)"
            short.append(f"{gone} < %s")
            values = (*values, len(batch.exited))
        if strays:
            if batch.exits:
                record_form, record_ids = _text_column([r for r, _ in batch.exits])
                trip_form, trip_ids = _text_column([t for _, t in batch.exits])
                steps.append((
                    "trip_kept",
                    "INSERT INTO {stray_exits} (record_id, trip_id) SELECT x.r, x.t FROM"
                    f" unnest({record_form}, {trip_form}) AS x (r, t) WHERE x.t NOT IN"
                    " (SELECT trip_id FROM trip_gone) ON CONFLICT DO NOTHING",
                    (record_ids, trip_ids),
                ))  # fmt: skip
            sets, values = f", closed = closed + {gone}", ()
        else:
            sets = f", closed = closed + CASE WHEN {' OR '.join(short)} THEN NULL ELSE {gone} END"
        if batch.exits:
            # An exit of the batch refunded already (its refund came first) refuses the
            # statement: `first_us` NULL (ExitsUndoneError). An index probe per exit, in the
            # same round trip.
            form, exits = _text_column([r for r, _ in batch.exits])
            sets += (
                f", first_us = CASE WHEN (SELECT 1 FROM unnest({form}) AS z (r) JOIN {{records}}"
                " AS u ON u.trip_role = %s AND u.trip_id = z.r LIMIT 1) IS NULL THEN first_us END"
            )
            values = (*values, exits, TripRole.UNDO.value)
        ctes = "".join(f", {name} AS ({self._sql(sql)})" for name, sql, _ in steps)
        return ctes, tuple(v for _, _, p in steps for v in p), sets, values

    def _insert_sql(self, new: NewRows, returning: str) -> tuple[str, tuple[object, ...]]:
        # One statement over arrays instead of a row at a time: a single plan and a single
        # message for the batch, as cheap as a COPY. Each column is sent in the form the worker
        # makes fastest (`_text_column`, `_int_array`; the records' bytes in binary): psycopg's
        # binary array dumper, value by value in Python, cost more than the server's work.
        records = new.records
        trips = [trip_columns(r.trip) for r in records]
        refunds = [refund_columns(r.refund) for r in records]
        columns = (
            _text_column([r.record_id for r in records]),
            ("%s::bigint[]", _int_array(r.seq for r in records)),
            ("%s::bigint[]", _int_array(r.ts_us for r in records)),
            _text_column([r.kind for r in records]),
            ("%s::bigint[]", _int_array(r.amount_minor for r in records)),
            _text_column([r.currency for r in records]),
            ("%b::bytea[]", [r.data for r in records]),
            _text_column([role for role, _ in trips]),
            _text_column([trip for _, trip in trips]),
            _text_column([payment for payment, _ in refunds]),
            _text_column([role for _, role in refunds]),
        )
        sql = self._sql(
            f"INSERT INTO {{records}} ({RECORD_COLUMNS})"
            " SELECT r, %b, %b, s, t, k, a, c, d, %b, tr, ti, ro, rr"
            f" FROM unnest({', '.join(form for form, _ in columns)})"
            " AS u(r, s, t, k, a, c, d, tr, ti, ro, rr)" + returning
        )
        return sql, (new.lane, new.epoch, new.now_us, *(value for _, value in columns))

    def _insert(self, db: Session, new: NewRows, *, careful: bool) -> Callable[[], set[int]]:
        sql, params = self._insert_sql(
            new, " ON CONFLICT DO NOTHING RETURNING seq" if careful else ""
        )
        cur = db.cursor()
        cur.execute(sql, params)
        if not careful:
            return lambda: {r.seq for r in new.records}
        return lambda: {int(row[0]) for row in cur.fetchall()}

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        with self._transaction() as cur:
            yield cur

    @contextmanager
    def _snapshot(self) -> Iterator[Cursor]:
        with self._transaction() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # Its reads probe by key; the planner, guessing the size of tables it has no
            # statistics of yet (the strays'), would compile them (JIT) for longer than they run.
            cur.execute("SET LOCAL jit = off")
            yield cur

    def drop(self) -> None:
        """Drop the whole schema (tests and benchmarks only)."""
        with self._transaction() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        self._seen.clear()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
