"""The default back-office store: one SQLite file (WAL, synchronous=FULL: an ack always follows a
durable commit). Several workers (threads or processes) may share the file; writers take turns.

Schema version 8 keys seqs by queue epoch, keeps conflicts, each record's part in the trip
ledger (`trip_role`, `trip_id`, indexed: uplink.trips), the trips open now (`open_trips`), the
closed count and the exits whose trip has no entry (`epochs.closed`, `trip_counts`,
`stray_exits`: uplink.sql_store.CLOSED_COUNTS), and each record's part in a refund's trail
(`refund_of`, `refund_role`, indexed: uplink.refunds). An older file is migrated in place on
open, in one transaction: version 1 (seqs per lane, no epochs) gets its records under the
empty epoch `""`; the trip columns of the rows of a version 1 or 2 file are filled from their bytes;
`open_trips`, the strays and the closed count are filled from the trip columns; the strays a
version 5 file kept of trips with an entry are pruned; the refund columns of the `tap_out`
rows of a version 1 to 6 file are filled from their bytes; the refunds of a version 3 to 7 file,
marked by an earlier `trip_mark`, are marked again (UpgradeJob.REMARK). A file of a newer
version is refused untouched.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lane import sqlite_schema
from uplink.sql_store import (
    SCHEMA_VERSION,
    TALLY_SOURCE,
    UPGRADE_CHUNK,
    Cursor,
    RowTakenError,
    Session,
    SqlIngestStore,
    UpgradeJob,
)
from uplink.store import (
    IngestStoreError,
    SchemaNewerError,
    StoreBusyError,
    StoreUpgradingError,
)

log = logging.getLogger("lane.uplink.sqlite_store")

__all__ = ["SCHEMA_VERSION", "SqliteIngestStore"]

RECORDS = (
    "CREATE TABLE records ("
    " record_id TEXT PRIMARY KEY, lane TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,"
    " ts_us INTEGER NOT NULL, kind TEXT NOT NULL, amount_minor INTEGER NOT NULL,"
    " currency TEXT NOT NULL, data BLOB NOT NULL, ingested_us INTEGER NOT NULL,"
    " trip_role TEXT, trip_id TEXT, refund_of TEXT, refund_role TEXT, UNIQUE (lane, epoch, seq))"
)
# Only the records that take part in a refund's trail (uplink.refunds) are in the index.
REFUND_INDEX = "CREATE INDEX records_refund ON records (refund_of) WHERE refund_of IS NOT NULL"
# Only the records that take part in trips are in the index: a toll record costs it nothing.
TRIP_INDEX = "CREATE INDEX records_trip ON records (trip_role, trip_id) WHERE trip_role IS NOT NULL"
# The trips open now, one row per trip id at its earliest entry (uplink.sql_store.REOPEN),
# in one b-tree on the trip id (WITHOUT ROWID): a row in or out is one b-tree write, not two.
OPEN_TRIPS = (
    "CREATE TABLE open_trips (trip_id TEXT PRIMARY KEY, record_id TEXT NOT NULL,"
    " ts_us INTEGER NOT NULL) WITHOUT ROWID"
)
EPOCHS = (
    "CREATE TABLE epochs ("
    " lane TEXT NOT NULL, epoch TEXT NOT NULL, base INTEGER NOT NULL,"
    " contiguous INTEGER NOT NULL, max_seq INTEGER NOT NULL, first_us INTEGER NOT NULL,"
    " PRIMARY KEY (lane, epoch))"
)
CONFLICTS = (
    "CREATE TABLE conflicts ("
    " lane TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, record_id TEXT NOT NULL,"
    " held_record_id TEXT NOT NULL, stored_digest TEXT NOT NULL, offered_digest TEXT NOT NULL,"
    " count INTEGER NOT NULL, first_us INTEGER NOT NULL, last_us INTEGER NOT NULL,"
    " PRIMARY KEY (record_id, offered_digest))"
)
# Version 1 -> 2: SQLite cannot change a table's UNIQUE constraint, so `records` is rebuilt.
FROM_V1 = (
    "ALTER TABLE records RENAME TO records_v1",
    RECORDS,
    "INSERT INTO records (record_id, lane, epoch, seq, ts_us, kind, amount_minor, currency,"
    " data, ingested_us) SELECT record_id, lane, '', seq, ts_us, kind, amount_minor, currency,"
    " data, ingested_us FROM records_v1",
    "DROP TABLE records_v1",
    EPOCHS,
    "INSERT INTO epochs SELECT lane, '', 0, contiguous, max_seq, 0 FROM lanes",
    "DROP TABLE lanes",
    CONFLICTS,
    TRIP_INDEX,
)
# Version 2 -> 3: the trip columns and their index; `_create_or_migrate` then fills them.
FROM_V2 = (
    "ALTER TABLE records ADD COLUMN trip_role TEXT",
    "ALTER TABLE records ADD COLUMN trip_id TEXT",
    TRIP_INDEX,
)
# Version 4 -> 5: the closed count (each epoch's, and an upgrade's tally of the trips closed
# before it) and the strays (uplink.sql_store.CLOSED_COUNTS); `counted` is an upgrade's
# scratch table (uplink.sql_store.UpgradeJob.TALLY).
TO_V5 = (
    "ALTER TABLE epochs ADD COLUMN closed INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE stray_exits (record_id TEXT PRIMARY KEY, trip_id TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE trip_counts (source TEXT PRIMARY KEY, closed INTEGER NOT NULL)",
    f"INSERT INTO trip_counts VALUES ('{TALLY_SOURCE}', 0)",
    "CREATE TABLE counted (trip_id TEXT PRIMARY KEY) WITHOUT ROWID",
)
# Version 6 -> 7: the refund columns and their index; UpgradeJob.REFUNDS then fills them.
TO_V7 = (
    "ALTER TABLE records ADD COLUMN refund_of TEXT",
    "ALTER TABLE records ADD COLUMN refund_role TEXT",
    REFUND_INDEX,
)
KEPT = (UpgradeJob.STRAYS, UpgradeJob.TALLY)
NEWER = (UpgradeJob.REFUNDS, UpgradeJob.REMARK)
# Each version's statements up to the current one, and what is then filled from the rows
# (version 1's `records` is made anew by FROM_V1, with the refund columns).
MIGRATIONS: dict[int, tuple[tuple[str, ...], tuple[UpgradeJob, ...]]] = {
    0: ((RECORDS, EPOCHS, CONFLICTS, TRIP_INDEX, REFUND_INDEX, OPEN_TRIPS, *TO_V5), ()),
    1: ((*FROM_V1, REFUND_INDEX, OPEN_TRIPS, *TO_V5), (UpgradeJob.MARK, *KEPT, UpgradeJob.REFUNDS)),
    2: ((*FROM_V2, OPEN_TRIPS, *TO_V5, *TO_V7), (UpgradeJob.MARK, *KEPT, UpgradeJob.REFUNDS)),
    3: ((OPEN_TRIPS, *TO_V5, *TO_V7), (UpgradeJob.OPEN, *KEPT, *NEWER)),
    4: ((*TO_V5, *TO_V7), (*KEPT, *NEWER)),
    # Version 6 prunes the strays of trips with an entry, as version 5 kept them.
    5: (TO_V7, (UpgradeJob.PRUNE, *NEWER)),
    6: (TO_V7, NEWER),
    # Version 8 marks the refunds an earlier `trip_mark` marked again (versions 1 and 2 get
    # today's marks from MARK).
    7: ((), (UpgradeJob.REMARK,)),
}


class SqliteIngestStore(SqlIngestStore):
    """`upgrade_wait_s`: how long the opening waits for another process's upgrade of the file
    (the write lock it holds) before it raises StoreUpgradingError; `busy_timeout_s` unless set."""

    def __init__(
        self, path: Path, busy_timeout_s: float = 30.0, upgrade_wait_s: float | None = None
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
        except sqlite3.Error as exc:
            raise IngestStoreError(f"{self.path}: {exc}") from exc
        try:
            # before WAL: a refused file keeps its bytes
            sqlite_schema.refuse_newer(self._db, SCHEMA_VERSION, self._too_new)
            sqlite_schema.use_wal(self._db)
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate(busy_timeout_s if upgrade_wait_s is None else upgrade_wait_s)
            self._db.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
        except sqlite3.Error as exc:
            self._db.close()
            raise IngestStoreError(f"{self.path}: {exc}") from exc
        except IngestStoreError:
            self._db.close()
            raise

    def _migrate(self, wait_s: float) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {round(wait_s * 1000)}")
        try:
            sqlite_schema.migrate(self._db, SCHEMA_VERSION, self._upgrade, self._too_new)
        except sqlite3.OperationalError as exc:
            # A file behind takes the write lock to be upgraded (a current one needs none):
            # who holds it past the wait is upgrading it, for as long as that takes.
            if sqlite_schema.busy(exc):
                raise StoreUpgradingError(
                    f"{self.path}: another process holds the write lock, upgrading the store"
                    f" (waited {wait_s:g} s): {exc}"
                ) from exc
            raise

    def _too_new(self, version: int) -> SchemaNewerError:
        return SchemaNewerError(
            f"{self.path}: schema version {version} is newer than this software"
            f" ({SCHEMA_VERSION}); not touched"
        )

    def _upgrade(self, db: sqlite3.Connection, version: int) -> int:
        """A file of `version` brought to SCHEMA_VERSION in the one transaction
        lane.sqlite_schema.migrate holds."""
        steps, jobs = MIGRATIONS[version]
        for stmt in steps:
            db.execute(stmt)
        remarked = unmarked = 0
        for job in jobs:
            after: str | None = None
            while True:
                step = self._upgrade_step(db, job, after, UPGRADE_CHUNK)
                remarked, unmarked = remarked + step.remarked, unmarked + step.unmarked
                if (after := step.reached) is None:
                    break
        if jobs:
            opened = int(db.execute("SELECT COUNT(*) FROM open_trips").fetchone()[0])
            log.info(
                "ingest store upgraded",
                extra={"path": str(self.path), "from": version, "open_trips": opened,
                       "refunds_remarked": remarked, "refunds_unmarked": unmarked},
            )  # fmt: skip
        return SCHEMA_VERSION

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                # Under the write lock, which an upgrade holds for its whole migration: a
                # worker left running while a newer release upgraded the file writes nothing.
                sqlite_schema.refuse_newer(self._db, SCHEMA_VERSION, self._too_new)
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise StoreBusyError(f"{self.path}: {exc}") from exc
                if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
                    raise RowTakenError(f"{self.path}: {exc}") from exc
                if isinstance(exc, sqlite3.Error):
                    raise IngestStoreError(f"{self.path}: {exc}") from exc
                raise
            finally:
                cur.close()

    @contextmanager
    def _batch(self) -> Iterator[Session]:
        with self._transaction():
            yield self._db

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                yield cur
            except sqlite3.Error as exc:
                raise IngestStoreError(f"{self.path}: {exc}") from exc
            finally:
                cur.close()

    @contextmanager
    def _snapshot(self) -> Iterator[Cursor]:
        # A read transaction: in WAL it sees the last commit before its first read, to its end.
        with self._reader() as cur:
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")  # it only read: ending it is all

    def close(self) -> None:
        with self._lock:
            self._db.close()
