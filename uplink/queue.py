"""The lane's durable store-and-forward queue: one SQLite file in WAL mode, synchronous=FULL
(but for `served`'s own commit, which is NORMAL: see there).

`append` returns only after the commit is on disk, so the lane may open the barrier when it
returns (safety rule 1). Sequence numbers are assigned in the same transaction as the insert and
kept in a meta table, so they are gap-free and never go back, even after every record has been
acknowledged and deleted and the process restarts.

The file is never dropped or recreated behind the caller's back: a file that is not a queue (or
a queue of another lane, or of a newer schema) raises `QueueError` naming the file. A new file is
created under a temporary name and linked (or renamed) into place, so a file at `path` is always
a complete queue and an empty or garbage one is reported as corrupt instead of being silently
re-initialised.

Methods are synchronous and thread-safe (one lock around one connection, for tools and tests
that share a queue between threads); the asyncio shell calls them only through
`uplink.queue_thread.QueueThread`, whose one worker thread owns the connection.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lane import sqlite_schema
from lane.durable import process_alive, sync_dir
from lane.sqlite_schema import Migration, Newer, chain
from lane.wire.codec import PayloadError
from lane.wire.ids import new_id, uuid7
from uplink.messages import Held, QueueIdentity, digest
from uplink.records import Record, RecordDraft

log = logging.getLogger("lane.uplink.queue")

SCHEMA_VERSION = 1
# A queue being created is built as `<name>.init.<pid>.<random>` and linked into place.
INIT_INFIX = ".init."
# What link() says on a file system without hard links (vfat and exFAT: an SD card, a USB
# stick; some FUSE and NFS exports): the queue is then renamed into place (`place_new`).
NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV})
# Bytes a row costs beyond its blob (rowid, ts, record id, cell header); used for the bound check.
ROW_OVERHEAD = 80
# What `writable()` commits (and removes again): room for dozens of records, so a disk that
# takes the probe takes the next vehicle's record too.
PROBE_BYTES = 64 * 1024


class QueueError(Exception):
    """The queue file cannot be used: I/O error, full disk, corruption, wrong lane or schema."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class QueueFull(QueueError):  # noqa: N818 (the name the lane uses)
    """The configured bound (max_bytes) would be exceeded; the record was NOT stored."""


class QueueDiskFull(QueueError):  # noqa: N818
    """SQLite reported 'database or disk is full'; the record was NOT stored."""


class QueueCorrupt(QueueError):  # noqa: N818
    """The file is not a readable queue database; it is left untouched for inspection."""


class QueueLocked(QueueError):  # noqa: N818
    """Another connection held the file's write lock past the busy wait; NOT stored."""


class QueueReadOnly(QueueError):  # noqa: N818
    """SQLite may not write the file (a read-only file or file system); NOT stored."""


class QueueIOError(QueueError):
    """The disk failed a read or write (SQLite's I/O error); NOT stored."""


@dataclass(frozen=True)
class OwedPassage:
    """A paid record whose vehicle the lane has not seen through yet (`owed` table)."""

    record_id: str
    vehicle_id: str
    vehicle_class: int
    credential: str  # the digest of the code it paid with, never the code
    ts_us: int  # the paid record's commit (wall clock, UTC)
    pass_id: str | None = None  # the pass its exit marked used, which its refund releases


@dataclass(frozen=True)
class Backlog:
    count: int
    oldest_ts_us: int | None
    bytes_used: int
    high_water_reached: bool


def _create_v1(db: sqlite3.Connection) -> None:
    db.execute(
        "CREATE TABLE records ("
        " seq INTEGER PRIMARY KEY,"  # rowid: the records are stored in seq order
        " record_id TEXT NOT NULL,"
        " ts_us INTEGER NOT NULL,"
        " data BLOB NOT NULL)"  # the encoded record exactly as written, forwarded unchanged
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('last_seq', 0), ('appended_total', 0)")


PAID_RESULTS = ("approved", "deferred")
PAID_RETENTION_US = 30 * 86400 * 1_000_000


def _add_paid_v2(db: sqlite3.Connection) -> None:
    """Payments the lane recorded as paid, kept after the records themselves are forwarded and
    deleted: crash recovery settles these and reverses any other payment left open."""
    db.execute(
        "CREATE TABLE paid (payment_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
        " ts_us INTEGER NOT NULL)"
    )
    for seq, ts_us, data in db.execute("SELECT seq, ts_us, data FROM records").fetchall():
        try:
            draft = Record.decode(data).draft
        except PayloadError:
            continue  # an older record format: forwarded as it is, never a payment of ours
        if draft.payment_id is not None and draft.auth.result in PAID_RESULTS:
            db.execute(
                "INSERT OR REPLACE INTO paid VALUES (?, ?, ?)", (draft.payment_id, seq, ts_us)
            )


def _add_epoch_v3(db: sqlite3.Connection) -> None:
    """The queue's identity, made with the file: a queue file that replaces another one (a
    restore, a new disk) restarts its seq at 1 under a new epoch, so the back office stores its
    records beside the old ones instead of taking them for conflicts. A file migrated from v2
    keeps its seq; its epoch begins at its oldest record still queued (`base` is the seq before
    it): every seq below was acknowledged, so the back office holds it already."""
    last = int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
    oldest = db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
    base = last if oldest is None else int(oldest) - 1
    db.execute("INSERT INTO meta VALUES ('epoch', ?), ('base', ?)", (new_id(), base))


def _add_owed_v4(db: sqlite3.Connection) -> None:
    """Paid vehicles the lane still owes a passage (lane.core.carried): a row is written in the
    commit of its paid record and removed when the vehicle is through or in the commit of its
    `paid_not_passed` record, so a lane that dies in between finds it at its next start."""
    db.execute(
        "CREATE TABLE owed (record_id TEXT PRIMARY KEY, vehicle_id TEXT NOT NULL,"
        " vehicle_class INTEGER NOT NULL, credential TEXT NOT NULL, ts_us INTEGER NOT NULL)"
    )


def _add_keyed_v5(db: sqlite3.Connection) -> None:
    """The records appended under an id their writer derived (`append_once`: a refund's end,
    lane.auth.refund_ends), kept after they are forwarded and deleted, as `paid`: asked again
    after a crash, the queue appends none a second time."""
    db.execute(
        "CREATE TABLE keyed (record_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,"
        " ts_us INTEGER NOT NULL) WITHOUT ROWID"  # one b-tree: the empty file grows by a page
    )


def _add_owed_pass_v6(db: sqlite3.Connection) -> None:
    """The pass a paid exit marked used (a metro tap-in), kept with its owed passage, so a
    refund after a restart releases it as a live one does. A passage owed across the upgrade
    itself has none (NULL): its refund releases nothing, as before."""
    db.execute("ALTER TABLE owed ADD COLUMN pass_id TEXT")


# MIGRATIONS[n] upgrades a database at user_version n to n + 1. Records are never re-encoded by a
# migration: an older record format stays in the queue as bytes and is forwarded unchanged.
MIGRATIONS: dict[int, Migration] = {
    0: _create_v1,
    1: _add_paid_v2,
    2: _add_epoch_v3,
    3: _add_owed_v4,
    4: _add_keyed_v5,
    5: _add_owed_pass_v6,
}


def migrate(db: sqlite3.Connection, path: Path, steps: Mapping[int, Migration] = MIGRATIONS) -> int:
    """Bring the schema to the newest version in `steps`, one transaction per step, one opener
    at a time (lane.sqlite_schema)."""
    target = len(steps)
    for _, version in sqlite_schema.migrate(db, target, chain(steps), _too_new(path, target)):
        log.info("queue schema migrated", extra={"path": str(path), "to_version": version})
    return target


def _drop_dead_inits(path: Path) -> None:
    """Remove the files a creation of the queue at `path` left when its process died (a
    crash, a power cut): they never held records. One of a live process is its own to finish."""
    for leftover in path.parent.glob(f"{path.name}{INIT_INFIX}*"):
        pid = leftover.name.removeprefix(path.name + INIT_INFIX).split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def place_new(tmp: Path, path: Path) -> None:
    """`tmp` put at `path`, never over a file there (FileExistsError): a hard link, or where
    the file system takes none, a look and a rename under a lock of the directory that every
    creator there takes, so no other creator's queue comes between the two (the lock is the
    process's: one that dies lets go of it)."""
    try:
        os.link(tmp, path)
        return
    except OSError as exc:
        if exc.errno not in NO_LINKS:
            raise
        log.info(
            "queue renamed into place: no hard links here",
            extra={"path": str(path), "error": str(exc)},
        )
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        os.rename(tmp, path)
    finally:
        os.close(dfd)  # lets go of the lock


def _too_new(path: Path, known: int) -> Newer:
    return lambda version: QueueError(
        path, f"schema version {version} is newer than this software ({known}); not touched"
    )


# SQLite's primary result codes (the low byte of an extended code) that name the file's state.
DISK_FULL_CODES = frozenset({sqlite3.SQLITE_FULL})
CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
# The other failures a running lane's queue meets, each its own class (the `disk_error` text).
CODE_ERRORS: dict[int, type[QueueError]] = {
    sqlite3.SQLITE_BUSY: QueueLocked,
    sqlite3.SQLITE_LOCKED: QueueLocked,
    sqlite3.SQLITE_READONLY: QueueReadOnly,
    sqlite3.SQLITE_IOERR: QueueIOError,
}


def _classify(path: Path, exc: sqlite3.Error) -> QueueError:
    """By SQLite's result code, never by message text (which SQLite may word differently).

    An error without a code (a closed connection, a misuse) is a plain QueueError."""
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or exc.__class__.__name__
    primary = None if code is None else code & 0xFF
    if primary in DISK_FULL_CODES:
        return QueueDiskFull(path, f"database or disk is full ({name}: {exc})")
    if primary in CORRUPT_CODES:
        return QueueCorrupt(path, f"corrupted queue file, left untouched ({name}: {exc})")
    error = QueueError if primary is None else CODE_ERRORS.get(primary, QueueError)
    return error(path, f"{name}: {exc}")


class RecordQueue:
    def __init__(
        self,
        path: Path,
        lane: str,
        max_bytes: int,
        high_water: float = 0.8,
        wall: Callable[[], float] = time.time,
        *,
        sqlite_pragmas: Mapping[str, int | str] | None = None,
        migrations: Mapping[int, Migration] = MIGRATIONS,
    ) -> None:
        """Open (or atomically create) the queue of `lane` at `path`.

        `sqlite_pragmas` are applied after the durability settings: for tuning and for tests
        (max_page_count simulates a full disk; the benchmark fills a backlog with synchronous=OFF).
        """
        self.path = Path(path)
        self.lane = lane
        self.max_bytes = max_bytes
        self.high_water = high_water
        self._wall = wall
        self._lock = threading.Lock()
        self._unwritable: str | None = None  # the last probe's error, while writes fail
        if not self.path.exists():
            try:
                self._create(migrations)
            except sqlite3.Error as exc:
                raise _classify(self.path, exc) from exc
            except OSError as exc:
                raise QueueError(self.path, f"cannot create the queue: {exc}") from exc
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise _classify(self.path, exc) from exc
        try:
            # Read-only checks first: a file that is not our queue must not be modified at all.
            self._check_file()
            self._check_owner()
            known = len(migrations)  # before WAL: a refused file stays as it was
            sqlite_schema.refuse_newer(self._db, known, _too_new(self.path, known))
            self._configure(sqlite_pragmas or {})
            migrate(self._db, self.path, migrations)
            self.identity = self._identity()
            self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        except sqlite3.Error as exc:
            self._db.close()
            raise _classify(self.path, exc) from exc
        except QueueError:
            self._db.close()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _create(self, migrations: Mapping[int, Migration]) -> None:
        wal = self.path.with_name(self.path.name + "-wal")
        # A creator that won the race since `__init__` looked has its queue there, and its WAL.
        if wal.exists() and wal.stat().st_size > 0 and not self.path.exists():
            raise QueueCorrupt(self.path, f"queue file missing but {wal.name} exists; not touched")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_dead_inits(self.path)
        # A name of this process and attempt: two processes creating the queue at once (a
        # lane restarted while the old one still runs, `lane refunds` at a first start) each
        # build their own file, where one shared name had one unlink the other's half-built.
        tmp = self.path.with_name(
            f"{self.path.name}{INIT_INFIX}{os.getpid()}.{secrets.token_hex(4)}"
        )
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                migrate(db, tmp, migrations)
                db.execute("INSERT INTO meta VALUES ('lane', ?)", (self.lane,))
            finally:
                db.close()  # checkpoints and removes the -wal file
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            # Never over a queue another creator put there first, which may hold records
            # already (a plain rename would drop them with their file).
            place_new(tmp, self.path)
        except FileExistsError:
            log.info(
                "queue created by another process",
                extra={"path": str(self.path), "lane": self.lane},
            )
            return
        finally:
            tmp.unlink(missing_ok=True)
        sync_dir(self.path.parent)
        log.info("queue created", extra={"path": str(self.path), "lane": self.lane})

    def _check_file(self) -> None:
        if self.path.stat().st_size == 0:
            raise QueueCorrupt(self.path, "empty file is not a queue; not touched")
        self._db.execute("PRAGMA busy_timeout=10000")
        if int(self._db.execute("PRAGMA user_version").fetchone()[0]) == 0:
            # Queues are created complete (see _create): version 0 is someone else's file.
            raise QueueCorrupt(self.path, "not a lane queue (schema version 0); not touched")
        problems = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise QueueCorrupt(
                self.path, "corrupted queue file, left untouched: " + "; ".join(problems[:5])
            )

    def _configure(self, extra: Mapping[str, int | str]) -> None:
        mode = sqlite_schema.use_wal(self._db)
        if str(mode).lower() != "wal":
            raise QueueError(self.path, f"could not enable WAL mode (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        for name, value in extra.items():
            self._db.execute(f"PRAGMA {name}={value}")
        # The level every commit but `served`'s runs at (FULL, unless `sqlite_pragmas` set
        # another), which `served` puts back after its own.
        level = int(self._db.execute("PRAGMA synchronous").fetchone()[0])
        self._synchronous = ("OFF", "NORMAL", "FULL", "EXTRA")[level]

    def _check_owner(self) -> None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key='lane'").fetchone()
        except sqlite3.OperationalError as exc:
            raise QueueCorrupt(self.path, f"not a lane queue ({exc}); not touched") from exc
        if row is None:
            raise QueueCorrupt(self.path, "queue file has no lane id")
        if row[0] != self.lane:
            raise QueueError(self.path, f"queue belongs to lane {row[0]!r}, not {self.lane!r}")

    def _identity(self) -> QueueIdentity:
        rows = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('epoch', 'base')"))
        if "epoch" not in rows:
            raise QueueCorrupt(self.path, "queue file has no epoch")
        return QueueIdentity(str(rows["epoch"]), int(rows["base"]))

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                try:  # a closed connection raises even on this check
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    # A call that relaxed it for its own commit (`served`) and failed: every
                    # other commit runs at the configured level (fixed within a transaction).
                    self._db.execute(f"PRAGMA synchronous={self._synchronous}")
                except sqlite3.Error:
                    log.exception("queue rollback failed", extra={"path": str(self.path)})
                raise _classify(self.path, exc) from exc

    # -- the API -------------------------------------------------------------------------------

    def append(
        self,
        draft: RecordDraft,
        owes: str | None = None,
        ends_owed: str | None = None,
        owed_pass: str | None = None,
    ) -> Record:
        """Stamp and durably store one record; return it once the commit is on disk. In the
        same commit: `owes` (a code's digest) keeps the passage this paid record is owed, with
        `owed_pass` (the pass its exit marked, which a refund releases), `ends_owed` (a record
        id) ends one (lane.core.actions.Persist)."""
        record = self._append(draft, None, (owes, owed_pass), ends_owed)
        assert record is not None  # only a keyed append finds its record there already
        return record

    def append_once(self, draft: RecordDraft, record_id: str) -> Record | None:
        """Store one record under `record_id` (derived by its writer) unless this queue has
        appended one under it before (kept 30 days, as `paid`): the record once on disk, or
        None when it was there already. A writer that crashed between this and noting it
        asks again, and nothing is appended twice."""
        return self._append(draft, record_id, (None, None), None)

    def _append(
        self,
        draft: RecordDraft,
        keyed: str | None,
        owed: tuple[str | None, str | None],
        ends_owed: str | None,
    ) -> Record | None:
        owes, owed_pass = owed
        now = self._wall()
        ts_us = int(now * 1_000_000)
        record_id = keyed or str(uuid7(unix_ms=ts_us // 1000))
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            taken = "SELECT 1 FROM keyed WHERE record_id=?"
            if keyed is not None and db.execute(taken, (keyed,)).fetchone() is not None:
                db.execute("ROLLBACK")
                return None
            seq = int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0]) + 1
            record = Record(record_id=record_id, lane=self.lane, seq=seq, ts_us=ts_us, draft=draft)
            data = record.encode()
            used = self._used(db)
            if used + len(data) + ROW_OVERHEAD > self.max_bytes:
                db.execute("ROLLBACK")
                raise QueueFull(
                    self.path, f"queue bound reached ({used} of {self.max_bytes} bytes used)"
                )
            db.execute(
                "INSERT INTO records (seq, record_id, ts_us, data) VALUES (?, ?, ?, ?)",
                (seq, record_id, ts_us, data),
            )
            if draft.payment_id is not None and draft.auth.result in PAID_RESULTS:
                db.execute(
                    "INSERT OR REPLACE INTO paid VALUES (?, ?, ?)", (draft.payment_id, seq, ts_us)
                )
            if owes is not None:
                db.execute(
                    "INSERT OR REPLACE INTO owed (record_id, vehicle_id, vehicle_class,"
                    " credential, ts_us, pass_id) VALUES (?, ?, ?, ?, ?, ?)",
                    (record_id, draft.vehicle_id, draft.vehicle_class, owes, ts_us, owed_pass),
                )
            if ends_owed is not None:
                db.execute("DELETE FROM owed WHERE record_id=?", (ends_owed,))
            if keyed is not None:
                db.execute("INSERT INTO keyed VALUES (?, ?, ?)", (keyed, seq, ts_us))
            db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))
            db.execute("UPDATE meta SET value=value+1 WHERE key='appended_total'")
            db.execute("COMMIT")
        return record

    def writable(self) -> bool:
        """Whether the queue commits writes now: a probe of PROBE_BYTES, written to disk
        through the queue's own connection and removed again, in two transactions.

        After a write failed (disk full, I/O error) nothing else would find out that space
        is back: the lane refuses payments, so no record is written. The lane asks this
        while its `disk_error` fault holds; True clears it. Logged on change only."""
        try:
            with self._locked() as db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('probe', zeroblob(?))", (PROBE_BYTES,)
                )
                db.execute("COMMIT")
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM meta WHERE key = 'probe'")
                db.execute("COMMIT")
        except QueueError as exc:
            if self._unwritable is None:
                extra = {"lane": self.lane, "path": str(self.path), "error": str(exc)}
                log.warning("queue cannot write", extra=extra)
            self._unwritable = str(exc)
            return False
        if self._unwritable is not None:
            log.info("queue writes again", extra={"path": str(self.path), "lane": self.lane})
            self._unwritable = None
        return True

    @property
    def write_error(self) -> str | None:
        """Why the last `writable()` probe failed; None once one succeeded (or before any)."""
        return self._unwritable

    def recorded_paid(self, payment_id: str) -> bool:
        """Whether a record of this lane says the payment was taken (approved or deferred),
        even if that record has since been forwarded and deleted (kept 30 days)."""
        with self._locked() as db:
            row = db.execute("SELECT 1 FROM paid WHERE payment_id=?", (payment_id,)).fetchone()
        return row is not None

    def owed(self) -> list[OwedPassage]:
        """The passages still owed, oldest first (read once, at the lane's start)."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT record_id, vehicle_id, vehicle_class, credential, ts_us, pass_id"
                " FROM owed ORDER BY ts_us, record_id"
            ).fetchall()
        return [
            OwedPassage(str(r), str(v), int(c), str(k), int(t), None if p is None else str(p))
            for r, v, c, k, t, p in rows
        ]

    def served(self, record_id: str) -> None:
        """This paid vehicle went through: forget the passage its record owed.

        Committed at synchronous=NORMAL, this transaction alone: a write to the WAL, no fsync,
        so the next vehicle's record (FULL, on the same thread) does not wait behind one. In
        WAL mode that commit survives a crash or kill -9 of the process (its frames are in the
        OS's page cache); a power cut before the next FULL commit, whose fsync of the WAL
        covers every frame before it, can lose only this delete, never corrupt the file: the
        vehicle is then still owed at the next start and, unless its code is shown again, gets
        a refund record flagged `carried` (lane.core.carried) although it passed."""
        with self._locked() as db:
            db.execute("PRAGMA synchronous=NORMAL")  # outside the transaction: fixed within one
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM owed WHERE record_id=?", (record_id,))
            db.execute("COMMIT")
            db.execute(f"PRAGMA synchronous={self._synchronous}")  # before the lock goes

    def batch(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to `limit` stored records with seq > after_seq, in seq order, as stored bytes."""
        with self._locked() as db:
            rows = db.execute(
                "SELECT seq, data FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def ack(self, held: Sequence[Held]) -> list[int]:
        """Delete the records the back office holds: only a record whose seq, id and content
        digest are all named by `held`. Return the seqs deleted."""
        deleted: list[int] = []
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            for h in held:
                row = db.execute(
                    "SELECT record_id, data FROM records WHERE seq=?", (h.seq,)
                ).fetchone()
                if row is not None and row[0] == h.record_id and digest(row[1]) == h.digest:
                    db.execute("DELETE FROM records WHERE seq=?", (h.seq,))
                    deleted.append(h.seq)
            horizon = int(self._wall() * 1_000_000) - PAID_RETENTION_US
            db.execute("DELETE FROM paid WHERE ts_us < ?", (horizon,))
            db.execute("DELETE FROM keyed WHERE ts_us < ?", (horizon,))
            db.execute("COMMIT")
        return deleted

    def backlog(self) -> Backlog:
        with self._locked() as db:
            # Batches are acknowledged one by one, in any order: what is left may have holes.
            count, first = db.execute("SELECT COUNT(*), MIN(seq) FROM records").fetchone()
            oldest = None
            if first is not None:
                oldest = int(
                    db.execute("SELECT ts_us FROM records WHERE seq=?", (first,)).fetchone()[0]
                )
            used = self._used(db)
        return Backlog(int(count), oldest, used, used >= self.high_water * self.max_bytes)

    def last_seq(self) -> int:
        with self._locked() as db:
            return int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])

    def record_count_total(self) -> int:
        """Records ever appended to this queue (acknowledged or not): for reconciliation."""
        with self._locked() as db:
            row = db.execute("SELECT value FROM meta WHERE key='appended_total'").fetchone()
            return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RecordQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _used(self, db: sqlite3.Connection) -> int:
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size
