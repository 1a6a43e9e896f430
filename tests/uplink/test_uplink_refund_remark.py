"""Refunds an earlier release marked, marked again when the store is upgraded (`remark`).

A release before the refund of an entry closed its trip marked every refund as none (no part
in a trip), and one before that as the record it refunds (an entry refund opened a trip, an
exit refund closed one). A store those releases filled, opened by this one, gives each such
refund today's `trip_mark` as if its batch came now: the trip ledger is then `trip_ledger`'s
over every stored record, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import groupby

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_server import waiting_here
from polling import eventually
from test_uplink_trip_index import T0, arrivals, kept_strays, open_table, stored_records
from uplink_kit import beside

from lane.core.records import REFUND_FLAG
from uplink.messages import QueueIdentity
from uplink.pg import PostgresIngestStore
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.sql_store import UpgradeJob
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore
from uplink.trips import END_OF_TIME_US, TripMark, open_trips, trip_ledger, trip_mark

# How an earlier release marked a refund: as none, or as the record it refunds.
OLD_MARKS = ("none", "as_refunded")


def old_mark(record: Record, how: str) -> TripMark | None:
    """A refund's mark as the release `how` names gave it."""
    if how == "none":
        return None
    flags = tuple(f for f in record.draft.flags if f != REFUND_FLAG)
    return trip_mark(replace(record, draft=replace(record.draft, flags=flags)))


def as_stored_before(rows: list[IngestRecord], draw: st.DrawFn) -> list[IngestRecord]:
    """`rows` as an earlier release ingested them: each refund with a drawn old mark."""
    out = []
    for row in rows:
        record = Record.readable(row.data)
        if record is not None and REFUND_FLAG in record.draft.flags:
            row = replace(row, trip=old_mark(record, draw(st.sampled_from(OLD_MARKS))))  # noqa: PLW2901
        out.append(row)
    return out


def made_old(store: IngestStore) -> None:
    """Tag the store's schema as an earlier release's (version 7) left it."""
    if isinstance(store, SqliteIngestStore):
        with sqlite3.connect(store.path) as db:
            db.execute("PRAGMA user_version = 7")
        return
    assert isinstance(store, PostgresIngestStore)
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute(
            f"COMMENT ON SCHEMA {store.schema} IS 'lane ingest schema v7 0123456789abcdef'"
        )


def reopened(store: IngestStore) -> IngestStore:
    """The store opened again by this release, as the next worker after an upgrade does."""
    if isinstance(store, SqliteIngestStore):
        return SqliteIngestStore(store.path)
    assert isinstance(store, PostgresIngestStore)
    return PostgresIngestStore(store.dsn, upgrade_chunk=4)


def test_refunds_an_earlier_release_marked_are_marked_again_on_upgrade(
    store_factory: Callable[[], IngestStore],
) -> None:
    """Drawn records (refunds of entries, tap-ins, exits and tap-outs among them) ingested in
    drawn orders with the refunds marked as an earlier release did; the store is then opened
    by this release: its open trips, closed count and unmatched exits are the pure ledger's
    over every record, its strays the unmatched exits, one open-trips row per open trip."""
    store = store_factory()

    @settings(max_examples=300, deadline=None, database=None)
    @given(data=st.data(), rows=stored_records())
    def check(data: st.DataObject, rows: list[IngestRecord]) -> None:
        for table in ("records", "open_trips", "stray_exits", "epochs"):
            beside(store, f"DELETE FROM {{t}}{table}", [()])
        beside(store, "UPDATE {t}trip_counts SET closed = 0", [()])
        epoch = QueueIdentity(uuid.uuid4().hex)
        for batch in data.draw(arrivals(as_stored_before(rows, data.draw))):
            store.store_batch(batch[0].lane, epoch, batch, 1)
        made_old(store)
        upgraded = reopened(store)
        try:
            pure = trip_ledger(upgraded.records_between(0, END_OF_TIME_US))
            assert open_trips(upgraded) == pure
            assert kept_strays(upgraded) == sorted(pure.unmatched_exits)
            assert open_table(upgraded) == len(pure.open_trips)
        finally:
            upgraded.close()

    check()


def passage(rid: str, lane: str, seq: int, kind: str, trip: str | None, *flags: str) -> Record:
    """An entry or an exit of the pass `trip`, or with `flags` a refund."""
    draft = RecordDraft(kind, "veh", 1, 0, "CNY", "token", None, AuthInfo("none"),
                        flags=flags, pass_id=trip)  # fmt: skip
    return Record(rid, lane, seq, T0 + seq, draft)


def refund(rid: str, lane: str, seq: int, kind: str, of: tuple[str | None, str]) -> Record:
    """The refund of the record `of[1]` (the vehicle held by a fault), naming the pass `of[0]`
    or none."""
    return passage(rid, lane, seq, kind, of[0], REFUND_FLAG, f"record:{of[1]}")


def old_postgres_schema(dsn: str, records: Sequence[Record]) -> None:
    """`records` ingested by a release that marked every refund as none (version 7)."""
    store = PostgresIngestStore(dsn)
    try:
        for lane, mine in groupby(sorted(records, key=lambda r: (r.lane, r.seq)), lambda r: r.lane):
            rows = [IngestRecord.of(r, r.encode()) for r in mine]
            old = [
                replace(r, trip=None) if REFUND_FLAG in d.draft.flags else r
                for r, d in zip(rows, (Record.decode(r.data) for r in rows), strict=True)
            ]
            store.store_batch(lane, QueueIdentity("old"), old, 1)
        made_old(store)
    finally:
        store.close()


class CrashError(Exception):
    """Stands for a worker killed between two chunks of the upgrade."""


def test_a_postgres_remark_resumes_after_a_crash_beside_a_worker(pg_dsn: str) -> None:
    """Ten passes entered and refunded (the vehicles never let in), an exit refunded (never let
    out), and a refund undoing the refund of p9's entry that the upgrade reaches chunks before
    that refund. The upgrading worker dies after its first chunk of 4 rows, once another
    worker has stored an exit of p0, whose refund it has not reached; the next store to open
    the schema goes on from that chunk. The ledger is then the pure one over every record:
    p9 and q1 open, every other pass closed once (p0 too, though an exit and its entry's
    refund both closed it)."""
    records = [passage(f"e-{i}", "P01/e1", i + 1, "entry", f"p{i}") for i in range(10)]
    records += [refund(f"f-{i}", "P01/e1", 11 + i, "entry", (f"p{i}", f"e-{i}")) for i in range(10)]
    records += [
        passage("e-q", "P01/e1", 21, "entry", "q1"),
        passage("x-q", "P03/x1", 1, "exit", "q1"),
        refund("c-x", "P03/x1", 2, "exit", ("q1", "x-q")),
        refund("b-undo", "P03/x1", 3, "exit", (None, "f-9")),
    ]
    old_postgres_schema(pg_dsn, records)
    during = passage("x-p0", "P03/x9", 1, "exit", "p0")
    chunks: list[str | None] = []

    def crash_after_the_first(job: UpgradeJob, reached: str | None) -> None:
        chunks.append(reached)
        with psycopg.connect(pg_dsn) as other:  # another worker, in the middle of a chunk
            other.execute("SELECT * FROM lane_ingest.upgrade FOR UPDATE")
            worker = PostgresIngestStore(pg_dsn, lock_timeout_s=0.2)
            try:
                worker.store_batch("P03/x9", QueueIdentity("during"),
                                   [IngestRecord.of(during, during.encode())], 1)  # fmt: skip
                assert open_trips(worker).upgrading  # the answer says it is not whole yet
            finally:
                worker.close()
        raise CrashError

    with pytest.raises(CrashError):
        PostgresIngestStore(pg_dsn, upgrade_chunk=4, after_chunk=crash_after_the_first)
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute("SELECT job, after FROM lane_ingest.upgrade").fetchall()
    assert left == [(UpgradeJob.REMARK.value, chunks[0])] and chunks[0] is not None
    resumed: list[tuple[UpgradeJob, str | None]] = []
    store = PostgresIngestStore(
        pg_dsn, upgrade_chunk=4, after_chunk=lambda job, at: resumed.append((job, at))
    )
    try:
        assert len(resumed) == 24 // 4  # 25 rows: the first chunk is not done again
        pure = trip_ledger(r.encode() for r in (*records, during))
        assert [t.pass_id for t in pure.open_trips] == ["p9", "q1"] and pure.closed == 9
        assert open_trips(store) == pure
        assert kept_strays(store) == [] and open_table(store) == 2
    finally:
        store.close()


async def test_a_postgres_remark_chunk_takes_turns_with_a_worker_on_its_trip(pg_dsn: str) -> None:
    """A worker's batch holding p1's exit is in flight (under p1's lock, it has closed the trip
    and waits on its epoch's row) when the upgrade reaches the refund of p1's entry: the chunk
    waits for the trip's lock, so the trip is counted closed once, and p2, refunded alone,
    closed by the upgrade (not waiting, the chunk found p1 open, counted it closed, and the
    worker's commit counted it again)."""
    records = [
        passage("e-1", "P01/e1", 1, "entry", "p1"),
        passage("e-2", "P01/e1", 2, "entry", "p2"),
        refund("f-1", "P01/e1", 3, "entry", ("p1", "e-1")),
        refund("f-2", "P01/e1", 4, "entry", ("p2", "e-2")),
    ]
    old_postgres_schema(pg_dsn, records)
    toll = passage("t-0", "P03/x1", 1, "toll", None)
    exit_ = passage("x-1", "P03/x1", 2, "exit", "p1")

    def crash(job: UpgradeJob, reached: str | None) -> None:
        raise CrashError

    with pytest.raises(CrashError):  # the schema's DDL is done, its first row (e-1) gone over
        PostgresIngestStore(pg_dsn, upgrade_chunk=1, after_chunk=crash)
    with psycopg.connect(pg_dsn) as other:  # opened beside the upgrade, as a worker is
        other.execute("SELECT * FROM lane_ingest.upgrade FOR UPDATE")
        worker, seeder = PostgresIngestStore(pg_dsn), PostgresIngestStore(pg_dsn)
    queue = QueueIdentity("x")
    try:
        seeder.store_batch("P03/x1", queue, [IngestRecord.of(toll, toll.encode())], 1)
        with psycopg.connect(pg_dsn) as holder:
            holder.execute("SELECT 1 FROM lane_ingest.epochs WHERE lane = 'P03/x1' FOR UPDATE")
            exiting = asyncio.create_task(asyncio.to_thread(
                worker.store_batch, "P03/x1", queue, [IngestRecord.of(exit_, exit_.encode())], 1
            ))  # fmt: skip
            await eventually(
                lambda: waiting_here(pg_dsn, "transactionid"), what="the exit's batch waits"
            )
            upgrading = asyncio.create_task(
                asyncio.to_thread(PostgresIngestStore, pg_dsn, upgrade_chunk=1)
            )
            await eventually(
                lambda: waiting_here(pg_dsn, "advisory"), what="the chunk waits for p1's lock"
            )
            holder.commit()
        await exiting
        upgraded = await upgrading
        try:
            pure = trip_ledger(r.encode() for r in (*records, toll, exit_))
            assert pure.open_trips == () and pure.closed == 2
            assert open_trips(upgraded) == pure
        finally:
            upgraded.close()
    finally:
        worker.close()
        seeder.close()
