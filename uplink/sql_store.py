"""The store logic of `uplink.store` in SQL, over any DB-API cursor: what a batch holds byte
for byte, duplicates, conflicts (and their resolution), the prefix per queue epoch. Subclasses
(`uplink.sqlite_store`, `uplink.pg`) provide transactions and the dialect's parameter style."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from uplink.messages import Held, QueueIdentity, digest
from uplink.store import (
    Conflict,
    ConflictRow,
    EpochInfo,
    Gap,
    IngestRecord,
    StoredRecord,
    StoreResult,
)

# The columns of a stored record, in the order both stores insert them.
RECORD_COLUMNS = (
    "record_id, lane, epoch, seq, ts_us, kind, amount_minor, currency, data, ingested_us"
)
ADVANCE_CHUNK = 1000  # seqs read per step when the prefix advances


class Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: Any, params: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


class Session(Protocol):
    def cursor(self) -> Any: ...


class SqlIngestStore:
    """The store logic over any DB-API cursor; subclasses provide transactions and dialect."""

    param = "?"
    lock_suffix = ""  # PostgreSQL: " FOR UPDATE" serialises the batches of one queue epoch
    prefix = ""  # PostgreSQL: "schema."

    def _sql(self, text: str) -> str:
        for table in ("records", "epochs", "conflicts"):
            text = text.replace("{" + table + "}", self.prefix + table)
        return text.replace("?", self.param)

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

    def store_batch(
        self, lane: str, queue: QueueIdentity, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult:
        """Two steps, each one round trip where the driver pipelines (PostgreSQL): read what
        the batch meets under the epoch's lock, then write the new rows, the prefix and the
        commit. Extra round trips only for conflicts and for a prefix that runs past the batch
        (a hole it filled)."""
        if not records:
            raise ValueError("empty batch")
        q = self._sql
        epoch = queue.epoch
        with self._batch() as db:
            made, locked, by_id_cur, by_seq_cur = (db.cursor() for _ in "abcd")
            made.execute(
                q(
                    "INSERT INTO {epochs} (lane, epoch, base, contiguous, max_seq, first_us)"
                    " VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING"
                ),
                (lane, epoch, queue.base, queue.base, now_us),
            )
            locked.execute(
                q(
                    "SELECT contiguous, max_seq,"
                    " EXISTS (SELECT 1 FROM {conflicts} WHERE lane=?)"
                    " FROM {epochs} WHERE lane=? AND epoch=?" + self.lock_suffix
                ),
                (lane, lane, epoch),
            )
            ids_sql, ids = self._any([r.record_id for r in records])
            by_id_cur.execute(
                q("SELECT record_id, data FROM {records} WHERE record_id " + ids_sql), ids
            )
            by_seq_cur.execute(
                q(
                    "SELECT seq, record_id, data FROM {records}"
                    " WHERE lane=? AND epoch=? AND seq BETWEEN ? AND ?"
                ),
                (lane, epoch, records[0].seq, records[-1].seq),
            )
            contiguous, held_max, conflicts_open = (int(v) for v in locked.fetchone())
            new_epoch = made.rowcount == 1
            by_id = {str(rid): bytes(data) for rid, data in by_id_cur.fetchall()}
            by_seq = {int(s): (str(rid), bytes(data)) for s, rid, data in by_seq_cur.fetchall()}
            others: tuple[str, ...] = ()
            if new_epoch:
                earlier = db.cursor()
                earlier.execute(
                    q("SELECT epoch FROM {epochs} WHERE lane=? AND epoch<>? ORDER BY first_us"),
                    (lane, epoch),
                )
                others = tuple(str(r[0]) for r in earlier.fetchall())
            fresh, held, conflicts = classify(lane, epoch, records, by_id, by_seq)
            if fresh:
                self._insert(db.cursor(), lane, epoch, fresh, now_us)
            for c in conflicts:
                self._note_conflict(db.cursor(), c, now_us)
            if conflicts_open and held:
                # A conflict is over once the store holds the refused version itself (an
                # operator removed the other one and the lane offered it again): its row goes.
                db.cursor().executemany(
                    q("DELETE FROM {conflicts} WHERE record_id=? AND offered_digest=?"),
                    [(h.record_id, h.digest.hex()) for h in held],
                )
            # The prefix can only grow through this batch's seqs (each batch leaves it as far
            # as the rows allow); past the batch only if rows stored earlier wait there.
            present = set(by_seq) | {r.seq for r in fresh}
            start = contiguous
            while contiguous + 1 in present:
                contiguous += 1
            if start < contiguous < held_max:
                contiguous = self._advance(db.cursor(), lane, epoch, contiguous)
            max_seq = max(held_max, queue.base, *present)
            db.cursor().execute(
                q("UPDATE {epochs} SET contiguous=?, max_seq=? WHERE lane=? AND epoch=?"),
                (contiguous, max_seq, lane, epoch),
            )
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

    def _any(self, values: list[str]) -> tuple[str, list[object]]:
        """`IN (...)` over `values`; PostgreSQL passes them as one array."""
        return "IN (" + ", ".join("?" for _ in values) + ")", list(values)

    def _insert(
        self, cur: Cursor, lane: str, epoch: str, fresh: Sequence[IngestRecord], now_us: int
    ) -> None:
        cur.executemany(
            self._sql(
                f"INSERT INTO {{records}} ({RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            [
                (r.record_id, lane, epoch, r.seq, r.ts_us, r.kind, r.amount_minor,
                 *r.tail(now_us))
                for r in fresh
            ],
        )  # fmt: skip

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

    def _advance(self, cur: Cursor, lane: str, epoch: str, contiguous: int) -> int:
        """Walk the held seqs above the prefix in index order while they follow on: an index
        range scan over this batch's seqs, or once over the run behind a filled hole. (An
        anti-join over the table made each batch cost O(rows) in PostgreSQL.)"""
        sql = self._sql(
            "SELECT seq FROM {records} WHERE lane=? AND epoch=? AND seq > ? ORDER BY seq LIMIT ?"
        )
        while True:
            cur.execute(sql, (lane, epoch, contiguous, ADVANCE_CHUNK))
            seqs = [int(r[0]) for r in cur.fetchall()]
            for seq in seqs:
                if seq != contiguous + 1:
                    return contiguous
                contiguous = seq
            if len(seqs) < ADVANCE_CHUNK:
                return contiguous

    def contiguous(self, lane: str, epoch: str) -> int:
        with self._reader() as cur:
            cur.execute(
                self._sql("SELECT contiguous FROM {epochs} WHERE lane=? AND epoch=?"),
                (lane, epoch),
            )
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

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
            return [
                EpochInfo(lane, str(e), int(b), int(c), int(m), int(f))
                for e, b, c, m, f in cur.fetchall()
            ]

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


def classify(
    lane: str,
    epoch: str,
    records: Sequence[IngestRecord],
    by_id: dict[str, bytes],
    by_seq: dict[int, tuple[str, bytes]],
) -> tuple[list[IngestRecord], list[Held], list[Conflict]]:
    """Split a batch into new records, records held byte for byte, and conflicts, given what
    the store holds under the batch's record ids (`by_id`) and at its seqs in the epoch."""
    fresh: list[IngestRecord] = []
    held: list[Held] = []
    conflicts: list[Conflict] = []
    seen: dict[str, bytes] = {}
    for r in records:
        mine = digest(r.data)
        if r.record_id in seen:
            other: tuple[str, bytes] | None = (r.record_id, seen[r.record_id])
        elif r.record_id in by_id:
            other = None if by_id[r.record_id] == r.data else (r.record_id, by_id[r.record_id])
        else:
            other = by_seq.get(r.seq)
        seen.setdefault(r.record_id, r.data)
        if other is not None:
            stored = digest(other[1]).hex()
            conflicts.append(
                Conflict(lane, epoch, r.seq, r.record_id, other[0], stored, mine.hex())
            )
            continue
        if r.record_id not in by_id:
            fresh.append(r)
        held.append(Held(r.seq, r.record_id, mine))
    return fresh, held, conflicts
