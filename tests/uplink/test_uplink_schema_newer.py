"""A worker of an older release left running while a newer release upgrades the back-office
store: its next write finds the schema newer than it knows, writes nothing, and the worker
stops taking batches with one error line (`lane ingest` exits 1).

The newer release is the store's version set one above this code's: SQLite's user_version,
PostgreSQL's schema tag."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from polling import eventually
from test_uplink_cli import ingest_drained
from test_uplink_trips import entry
from uplink_kit import Q, recs

from sim.broker import Mosquitto
from uplink.ingest import Ingest
from uplink.messages import QueueIdentity
from uplink.pg import PostgresIngestStore
from uplink.records import Record
from uplink.sql_store import SCHEMA_VERSION
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore, SchemaNewerError

NEWER = SCHEMA_VERSION + 1
STOPS = "ingest store schema newer, worker stops"


def upgrade_sqlite(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version = {NEWER}")
    db.close()


def upgrade_pg(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"COMMENT ON SCHEMA lane_ingest IS 'lane ingest schema v{NEWER} 0123456789'")


@pytest.fixture(params=["sqlite", "postgres"])
def opened(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[IngestStore, Callable[[], None]]]:
    """A store of this release, and how a newer release's upgrade of it is made."""
    if request.param == "sqlite":
        path = tmp_path / "ingest.sqlite"
        sqlite = SqliteIngestStore(path)
        yield sqlite, lambda: upgrade_sqlite(path)
        sqlite.close()
    else:
        dsn = request.getfixturevalue("pg_dsn")
        pg = PostgresIngestStore(dsn)
        yield pg, lambda: upgrade_pg(dsn)
        pg.close()


def entries(first: int, last: int, lane: str) -> list[IngestRecord]:
    """A closed road's entries, each of a pass of its own."""
    out = []
    for seq in range(first, last + 1):
        rec = Record(f"rid-{lane}-{seq}", lane, seq, 1_700_000_000_000_000 + seq, entry(f"{seq}"))
        out.append(IngestRecord.of(rec, rec.encode()))
    return out


def test_a_write_finding_the_schema_newer_stores_nothing(
    opened: tuple[IngestStore, Callable[[], None]],
) -> None:
    store, upgrade = opened
    lane = "p09/l04"
    store.store_batch(lane, Q, recs(1, 3), 1)
    store.store_batch(lane, Q, recs(4, 6), 2)  # a seen epoch's batch: its own path on postgres
    upgrade()
    batches = [
        (Q, recs(7, 9)),  # the next batch of a seen epoch
        # ... with trips: on postgres the guard and the trip locks are one statement
        (Q, entries(7, 9, lane)),
        (QueueIdentity("epoch-2"), recs(1, 3, tag="e2")),  # a new epoch's first
        (Q, recs(4, 9)),  # a resend, part of it held already (stored carefully)
    ]
    for queue, records in batches:
        with pytest.raises(SchemaNewerError, match=f"v{NEWER}|version {NEWER}"):
            store.store_batch(lane, queue, records, 3)
    assert store.count(lane) == 6
    assert [e.epoch for e in store.epochs(lane)] == [Q.epoch]


async def test_a_hole_check_finding_the_schema_newer_stops_the_worker(
    opened: tuple[IngestStore, Callable[[], None]], caplog: pytest.LogCaptureFixture
) -> None:
    """A lane's hole is checked by reading its epochs, which walks the prefix on in a write
    transaction: the check is a write too, and a quiet lane sends no batch to stop the worker
    (it used to warn `uplink hole check failed` at every check and run on)."""
    store, upgrade = opened
    lane = "p09/l06"
    ingest = Ingest(store)
    store.store_batch(lane, Q, recs(1, 3), 1)
    held = store.store_batch(lane, Q, recs(6, 8), 2)  # 4..5 missing: a hole
    ingest.holes.observe(lane, Q.epoch, held.contiguous, held.max_seq, 0.0)
    upgrade()
    await ingest.check_holes()
    assert ingest.schema_newer.is_set()
    (stopped,) = [r for r in caplog.records if r.getMessage() == STOPS]
    assert (stopped.__dict__["lane"], stopped.__dict__["epoch"]) == (lane, Q.epoch)
    assert not [r for r in caplog.records if r.getMessage() == "uplink hole check failed"]


async def test_lane_ingest_left_running_after_a_newer_upgrade_stops_and_exits_1(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    db = tmp_path / "ingest.sqlite"
    async with ingest_drained(mosquitto, lane_id, tmp_path, db, 5) as (lines, side, store):
        store.close()  # closed again on the way out: a second close does nothing
        upgrade_sqlite(db)
        await side.append(5, start=5)
        await eventually(lambda: lines.proc.returncode is not None, within=20, what="exited")
    assert lines.proc.returncode == 1, lines.err.decode()
    (stopped,) = lines.named(STOPS)
    assert stopped["lane"] == lane_id and f"version {NEWER}" in str(stopped["error"])
    assert not lines.named("uplink batch not stored")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as read:
        assert read.execute("SELECT COUNT(*) FROM records").fetchone() == (5,)
    assert side.queue.backlog().count == 5  # kept for a worker of the new release


def test_a_schema_retagged_by_a_release_of_the_same_version_is_still_written(
    pg_dsn: str,
) -> None:
    """A worker of an earlier release of the same schema version, restarted after this one's
    upgrade, runs its own DDL and tags the schema with its digest: the schema is not newer,
    and this release's workers go on storing (they used to stop, every one, at their next
    batch with "newer than this worker")."""
    store = PostgresIngestStore(pg_dsn)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "COMMENT ON SCHEMA lane_ingest IS"
                f" 'lane ingest schema v{SCHEMA_VERSION} 0123456789abcdef'"
            )
        lane = "p09/l05"
        assert store.store_batch(lane, Q, recs(1, 3), 1).inserted == 3
        assert store.store_batch(lane, Q, recs(4, 6), 2).inserted == 3
        assert store.count(lane) == 6
    finally:
        store.close()
