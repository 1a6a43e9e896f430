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

ADVANCE_CHUNK = 1000  # seqs read per step when the prefix advances


class Cursor(Protocol):
    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: Any, params: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


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

    def store_batch(
        self, lane: str, queue: QueueIdentity, records: Sequence[IngestRecord], now_us: int
    ) -> StoreResult:
        if not records:
            raise ValueError("empty batch")
        q = self._sql
        epoch = queue.epoch
        with self._transaction() as cur:
            cur.execute(
                q(
                    "INSERT INTO {epochs} (lane, epoch, base, contiguous, max_seq, first_us)"
                    " VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING"
                ),
                (lane, epoch, queue.base, queue.base, now_us),
            )
            new_epoch = cur.rowcount == 1
            cur.execute(
                q("SELECT contiguous FROM {epochs} WHERE lane=? AND epoch=?" + self.lock_suffix),
                (lane, epoch),
            )
            contiguous = int(cur.fetchone()[0])
            others: tuple[str, ...] = ()
            if new_epoch:
                cur.execute(
                    q("SELECT epoch FROM {epochs} WHERE lane=? AND epoch<>? ORDER BY first_us"),
                    (lane, epoch),
                )
                others = tuple(str(r[0]) for r in cur.fetchall())
            fresh, held, conflicts = self._classify(cur, lane, epoch, records)
            cur.executemany(
                q(
                    "INSERT INTO {records} (record_id, lane, epoch, seq, ts_us, kind,"
                    " amount_minor, currency, data, ingested_us)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                [
                    (
                        r.record_id,
                        lane,
                        epoch,
                        r.seq,
                        r.ts_us,
                        r.kind,
                        r.amount_minor,
                        *r.tail(now_us),
                    )
                    for r in fresh
                ],
            )
            for c in conflicts:
                self._note_conflict(cur, c, now_us)
            self._resolve_conflicts(cur, lane, held)
            contiguous = self._advance(cur, lane, epoch, contiguous)
            cur.execute(q("SELECT MAX(seq) FROM {records} WHERE lane=? AND epoch=?"), (lane, epoch))
            max_seq = int(cur.fetchone()[0] or queue.base)
            cur.execute(
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

    def _classify(
        self, cur: Cursor, lane: str, epoch: str, records: Sequence[IngestRecord]
    ) -> tuple[list[IngestRecord], list[Held], list[Conflict]]:
        """Split a batch into new records, records held byte for byte, and conflicts."""
        marks = ", ".join("?" for _ in records)
        cur.execute(
            self._sql(f"SELECT record_id, data FROM {{records}} WHERE record_id IN ({marks})"),
            [r.record_id for r in records],
        )
        by_id = {str(rid): bytes(data) for rid, data in cur.fetchall()}
        cur.execute(
            self._sql(
                "SELECT seq, record_id, data FROM {records}"
                " WHERE lane=? AND epoch=? AND seq BETWEEN ? AND ?"
            ),
            (lane, epoch, records[0].seq, records[-1].seq),
        )
        by_seq = {int(s): (str(rid), bytes(data)) for s, rid, data in cur.fetchall()}
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

    def _resolve_conflicts(self, cur: Cursor, lane: str, held: Sequence[Held]) -> None:
        """A conflict is over once the store holds the refused version itself (an operator
        removed the other one and the lane offered it again): its row goes."""
        cur.execute(self._sql("SELECT 1 FROM {conflicts} WHERE lane=? LIMIT 1"), (lane,))
        if not held or cur.fetchone() is None:
            return
        cur.executemany(
            self._sql("DELETE FROM {conflicts} WHERE record_id=? AND offered_digest=?"),
            [(h.record_id, h.digest.hex()) for h in held],
        )

    def _note_conflict(self, cur: Cursor, c: Conflict, now_us: int) -> None:
        q = self._sql
        cur.execute(
            q(
                "UPDATE {conflicts} SET count=count+1, last_us=?"
                " WHERE record_id=? AND offered_digest=?"
            ),
            (now_us, c.record_id, c.offered_digest),
        )
        if cur.rowcount == 0:
            cur.execute(
                q(
                    "INSERT INTO {conflicts} (lane, epoch, seq, record_id, held_record_id,"
                    " stored_digest, offered_digest, count, first_us, last_us)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
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
