"""Back-office record stores: idempotent by record id, one transaction per batch, gap tracking.

`store_batch` inserts a batch's records (a record id already held is a duplicate and collapses)
and, in the same transaction, advances the lane's *contiguous prefix*: the highest seq n such
that every seq 1..n of the lane is held. That prefix is what the ingest acknowledges, because the
lane deletes everything <= upto: acking only what is provably stored means a batch committed
out of order (two workers, a resend after a gap) can never make the lane delete a record the
store does not have. A seq already held under a *different* record id is a conflict: the batch
is refused (never silently dropped) and not acknowledged.

The SQL is shared by SQLite (default, `SqliteIngestStore`) and PostgreSQL (`uplink.pg`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class IngestStoreError(Exception):
    """The store refused or failed a batch; it is not acknowledged (the lane will resend)."""


class SeqConflictError(IngestStoreError):
    """A seq of the lane is already held under another record id."""


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


@dataclass(frozen=True)
class StoredRecord:
    record_id: str
    seq: int
    ts_us: int
    data: bytes


@dataclass(frozen=True)
class StoreResult:
    inserted: int
    duplicates: int
    contiguous: int  # every seq 1..contiguous of the lane is held: the ack's upto
    max_seq: int


class IngestStore(Protocol):
    def store_batch(
        self, lane: str, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult: ...

    def contiguous(self, lane: str) -> int: ...

    def gaps(self, lane: str) -> list[tuple[int, int]]: ...

    def count(self, lane: str) -> int: ...

    def records(self, lane: str) -> list[StoredRecord]: ...

    def lanes(self) -> list[str]: ...

    def close(self) -> None: ...


class Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: Any, params: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


class SqlIngestStore:
    """The store logic over any DB-API cursor; subclasses provide transactions and dialect."""

    param = "?"
    lock_suffix = ""  # PostgreSQL: " FOR UPDATE" serialises the batches of one lane
    records_table = "records"
    lanes_table = "lanes"

    def _sql(self, text: str) -> str:
        text = text.replace("{records}", self.records_table).replace("{lanes}", self.lanes_table)
        return text.replace("?", self.param)

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        raise NotImplementedError
        yield  # pragma: no cover

    def store_batch(self, lane: str, records: Sequence[IngestRecord], now_us: int) -> StoreResult:
        if not records:
            raise ValueError("empty batch")
        first, last = records[0].seq, records[-1].seq
        q = self._sql
        with self._transaction() as cur:
            cur.execute(q("INSERT INTO {lanes} (lane) VALUES (?) ON CONFLICT DO NOTHING"), (lane,))
            lock = self.lock_suffix
            cur.execute(q("SELECT contiguous FROM {lanes} WHERE lane=?" + lock), (lane,))
            contiguous = int(cur.fetchone()[0])
            before = self._count_range(cur, lane, first, last)
            cur.executemany(
                q(
                    "INSERT INTO {records} (record_id, lane, seq, ts_us, kind, amount_minor,"
                    " currency, data, ingested_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (record_id) DO NOTHING"
                ),
                [
                    (
                        r.record_id,
                        r.lane,
                        r.seq,
                        r.ts_us,
                        r.kind,
                        r.amount_minor,
                        r.currency,
                        r.data,
                        now_us,
                    )
                    for r in records
                ],
            )
            after = self._count_range(cur, lane, first, last)
            if after != len(records):
                # Some seq of the batch is held by a record id that is not in the batch.
                raise SeqConflictError(
                    f"lane {lane}: seqs {first}..{last} already held under other record ids"
                )
            contiguous = self._advance(cur, lane, contiguous)
            cur.execute(q("SELECT MAX(seq) FROM {records} WHERE lane=?"), (lane,))
            max_seq = int(cur.fetchone()[0])
            cur.execute(
                q("UPDATE {lanes} SET contiguous=?, max_seq=? WHERE lane=?"),
                (contiguous, max_seq, lane),
            )
        inserted = after - before
        return StoreResult(inserted, len(records) - inserted, contiguous, max_seq)

    def _count_range(self, cur: Cursor, lane: str, first: int, last: int) -> int:
        cur.execute(
            self._sql("SELECT COUNT(*) FROM {records} WHERE lane=? AND seq BETWEEN ? AND ?"),
            (lane, first, last),
        )
        return int(cur.fetchone()[0])

    def _advance(self, cur: Cursor, lane: str, contiguous: int) -> int:
        cur.execute(
            self._sql("SELECT 1 FROM {records} WHERE lane=? AND seq=?"), (lane, contiguous + 1)
        )
        if cur.fetchone() is None:
            return contiguous
        # The run starting at contiguous+1 ends at the first held seq whose successor is missing.
        cur.execute(
            self._sql(
                "SELECT r.seq FROM {records} r WHERE r.lane=? AND r.seq > ? AND NOT EXISTS"
                " (SELECT 1 FROM {records} n WHERE n.lane=r.lane AND n.seq=r.seq+1)"
                " ORDER BY r.seq LIMIT 1"
            ),
            (lane, contiguous),
        )
        return int(cur.fetchone()[0])

    def contiguous(self, lane: str) -> int:
        with self._reader() as cur:
            cur.execute(self._sql("SELECT contiguous FROM {lanes} WHERE lane=?"), (lane,))
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def gaps(self, lane: str) -> list[tuple[int, int]]:
        """Missing seq ranges (inclusive) between 1 and the highest seq held for the lane."""
        c = self.contiguous(lane)
        with self._reader() as cur:
            cur.execute(
                self._sql("SELECT MIN(seq) FROM {records} WHERE lane=? AND seq > ?"), (lane, c)
            )
            row = cur.fetchone()
            if row is None or row[0] is None:
                return []
            out: list[tuple[int, int]] = []
            if int(row[0]) > c + 1:
                out.append((c + 1, int(row[0]) - 1))
            cur.execute(
                self._sql(
                    "SELECT seq, nxt FROM (SELECT seq, LEAD(seq) OVER (ORDER BY seq) AS nxt"
                    " FROM {records} WHERE lane=? AND seq > ?) AS t WHERE nxt > seq + 1"
                    " ORDER BY seq"
                ),
                (lane, c),
            )
            out.extend((int(s) + 1, int(n) - 1) for s, n in cur.fetchall())
        return out

    def count(self, lane: str) -> int:
        with self._reader() as cur:
            cur.execute(self._sql("SELECT COUNT(*) FROM {records} WHERE lane=?"), (lane,))
            return int(cur.fetchone()[0])

    def records(self, lane: str) -> list[StoredRecord]:
        with self._reader() as cur:
            cur.execute(
                self._sql(
                    "SELECT record_id, seq, ts_us, data FROM {records} WHERE lane=? ORDER BY seq"
                ),
                (lane,),
            )
            return [StoredRecord(str(r), int(s), int(t), bytes(d)) for r, s, t, d in cur.fetchall()]

    def records_between(self, start_us: int, end_us: int) -> list[bytes]:
        """The encoded records of every lane with start_us <= ts_us < end_us (`lane reconcile`)."""
        with self._reader() as cur:
            cur.execute(
                self._sql("SELECT data FROM {records} WHERE ts_us >= ? AND ts_us < ?"),
                (start_us, end_us),
            )
            return [bytes(r[0]) for r in cur.fetchall()]

    def lanes(self) -> list[str]:
        with self._reader() as cur:
            cur.execute(self._sql("SELECT lane FROM {lanes} ORDER BY lane"))
            return [str(r[0]) for r in cur.fetchall()]


SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records ("
    " record_id TEXT PRIMARY KEY, lane TEXT NOT NULL, seq INTEGER NOT NULL,"
    " ts_us INTEGER NOT NULL, kind TEXT NOT NULL, amount_minor INTEGER NOT NULL,"
    " currency TEXT NOT NULL, data BLOB NOT NULL, ingested_us INTEGER NOT NULL,"
    " UNIQUE (lane, seq))",
    "CREATE TABLE IF NOT EXISTS lanes ("
    " lane TEXT PRIMARY KEY, contiguous INTEGER NOT NULL DEFAULT 0,"
    " max_seq INTEGER NOT NULL DEFAULT 0)",
)


class SqliteIngestStore(SqlIngestStore):
    """The default store: one SQLite file (WAL, synchronous=FULL: an ack follows a durable commit).

    Several workers (threads or processes) may share the file; writers take turns.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > 1:
                raise IngestStoreError(f"{self.path}: schema version {version} is too new")
            for stmt in SQLITE_SCHEMA:
                self._db.execute(stmt)
            self._db.execute("PRAGMA user_version=1")
        except sqlite3.Error as exc:
            raise IngestStoreError(f"{self.path}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise SeqConflictError(f"{self.path}: seq held twice: {exc}") from exc
                if isinstance(exc, sqlite3.Error):
                    raise IngestStoreError(f"{self.path}: {exc}") from exc
                raise
            finally:
                cur.close()

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

    def close(self) -> None:
        with self._lock:
            self._db.close()
