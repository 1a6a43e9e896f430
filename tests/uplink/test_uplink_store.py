"""The back-office store: what it holds byte for byte (the ack), duplicates, conflicts, epochs,
prefix and gaps, against SQLite and a real PostgreSQL (a database of the test's own)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from pg_server import waiting_here
from polling import eventually
from uplink_kit import Q, beside, committed_behind, draft, held, recs

from uplink.messages import QueueIdentity, digest
from uplink.pg import PostgresIngestStore
from uplink.records import Record
from uplink.sql_store import trip_columns
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import Gap, IngestRecord, IngestStore, IngestStoreError, StoreBusyError
from uplink.trips import open_trips

LANE = "p09/l04"
E = Q.epoch

Factory = Callable[[], IngestStore]


def test_batch_is_stored_once_and_duplicates_collapse(store_factory: Factory) -> None:
    s = store_factory()
    r1 = s.store_batch(LANE, Q, recs(1, 10), 1)
    assert (r1.inserted, r1.duplicates, r1.contiguous, r1.max_seq) == (10, 0, 10, 10)
    assert r1.held == held(recs(1, 10)) and r1.conflicts == ()
    r2 = s.store_batch(LANE, Q, recs(1, 10), 2)
    assert (r2.inserted, r2.duplicates, r2.contiguous) == (0, 10, 10)
    assert r2.held == held(recs(1, 10))  # a resend is acknowledged again
    r3 = s.store_batch(LANE, Q, recs(5, 15), 3)  # overlapping resend
    assert (r3.inserted, r3.duplicates, r3.contiguous) == (5, 6, 15)
    assert s.count(LANE) == 15
    stored = s.records(LANE)
    assert sorted(r.seq for r in stored) == list(range(1, 16))
    assert {r.seq: r.data for r in stored}[1] == recs(1, 1)[0].data
    assert s.lanes() == [LANE]


def test_contiguous_prefix_stops_at_a_gap_and_gaps_are_reported(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 10), 1)
    r = s.store_batch(LANE, Q, recs(21, 30), 1)  # 11..20 still missing
    assert (r.contiguous, r.max_seq) == (10, 30)
    assert r.held == held(recs(21, 30))  # acked for itself: the lane deletes only these
    s.store_batch(LANE, Q, recs(41, 45), 1)
    assert s.gaps(LANE) == [Gap(E, 11, 20), Gap(E, 31, 40)]
    r = s.store_batch(LANE, Q, recs(11, 20), 1)  # the hole fills: prefix jumps to the next gap
    assert r.contiguous == 30
    assert s.gaps(LANE) == [Gap(E, 31, 40)]
    assert s.store_batch(LANE, Q, recs(31, 40), 1).contiguous == 45
    assert s.gaps(LANE) == []


def test_a_filled_hole_with_a_long_run_behind_it_walks_the_whole_run(
    store_factory: Factory,
) -> None:
    """The prefix is walked a chunk at a time (ADVANCE_CHUNK seqs): a run longer than a chunk
    behind the hole is walked to its end, and stops at the next gap."""
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 10), 1)
    for first in range(12, 2512, 500):
        s.store_batch(LANE, Q, recs(first, first + 499), 1)
    s.store_batch(LANE, Q, recs(2513, 2520), 1)
    r = s.store_batch(LANE, Q, recs(11, 11), 1)
    assert (r.contiguous, r.max_seq) == (2511, 2520)
    assert s.gaps(LANE) == [Gap(E, 2512, 2512)]


def test_gap_before_the_first_batch(store_factory: Factory) -> None:
    s = store_factory()
    assert s.store_batch(LANE, Q, recs(5, 9), 1).contiguous == 0
    assert s.gaps(LANE) == [Gap(E, 1, 4)]
    assert s.contiguous("nobody", E) == 0 and s.gaps("nobody") == [] and s.count("nobody") == 0


def test_seq_held_by_another_record_is_a_conflict_never_held(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 5), 1)
    r = s.store_batch(LANE, Q, recs(4, 8, tag="other-"), 2)
    # 4 and 5 are held by other record ids: refused, not in the ack; 6..8 are new and held.
    assert [c.seq for c in r.conflicts] == [4, 5]
    assert r.held == held(recs(6, 8, tag="other-"))
    c = r.conflicts[0]
    assert c.held_record_id == recs(4, 4)[0].record_id
    assert c.stored_digest == digest(recs(4, 4)[0].data).hex()
    assert c.offered_digest == digest(recs(4, 4, tag="other-")[0].data).hex()
    assert s.count(LANE) == 8
    assert [row.conflict.seq for row in s.conflicts()] == [4, 5]


def test_same_record_id_other_content_is_a_conflict(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 3), 1)
    forged = recs(1, 3, amount=1)  # same ids and seqs, another amount
    r = s.store_batch(LANE, Q, forged, 2)
    assert r.held == () and r.inserted == 0 and r.duplicates == 0
    assert [c.record_id for c in r.conflicts] == [x.record_id for x in forged]
    assert all(c.stored_digest != c.offered_digest for c in r.conflicts)
    # The stored version is untouched, byte for byte.
    assert {x.seq: x.data for x in s.records(LANE)} == {x.seq: x.data for x in recs(1, 3)}
    s.store_batch(LANE, Q, forged[:1], 3)  # seen again: counted, one row per conflict
    rows = s.conflicts()
    assert [(row.conflict.seq, row.count) for row in rows] == [(1, 2), (2, 1), (3, 1)]


def test_a_new_queue_epoch_is_stored_beside_the_old_one(store_factory: Factory) -> None:
    s = store_factory()
    first = s.store_batch(LANE, Q, recs(1, 5), 1)
    assert first.new_epoch and first.other_epochs == ()
    again = QueueIdentity("epoch-2")
    r = s.store_batch(LANE, again, recs(1, 3, tag="new-"), 2)  # seq restarts at 1
    assert r.conflicts == () and r.held == held(recs(1, 3, tag="new-"))
    assert r.new_epoch and r.other_epochs == (E,)
    assert not s.store_batch(LANE, again, recs(4, 4, tag="new-"), 3).new_epoch
    assert s.count(LANE) == 9
    assert [(e.epoch, e.contiguous) for e in s.epochs(LANE)] == [(E, 5), ("epoch-2", 4)]


def test_an_epoch_starting_after_a_base_has_no_false_gap(store_factory: Factory) -> None:
    s = store_factory()
    migrated = QueueIdentity("epoch-m", base=40)  # a queue upgraded from before epochs
    r = s.store_batch(LANE, migrated, recs(41, 45), 1)
    assert (r.contiguous, r.max_seq) == (45, 45)
    assert s.gaps(LANE) == []


def test_lanes_are_independent(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch("a/1", Q, recs(1, 3, "a/1"), 1)
    s.store_batch("b/1", Q, recs(1, 2, "b/1"), 1)
    assert (s.count("a/1"), s.count("b/1")) == (3, 2)
    assert (s.contiguous("a/1", E), s.contiguous("b/1", E)) == (3, 2)


def test_concurrent_workers_hold_each_batch_and_converge(store_factory: Factory) -> None:
    """Concurrent batches of one lane: each is held for itself, the prefix covers only held."""
    stores = [store_factory() for _ in range(4)]
    batches = [recs(i * 20 + 1, i * 20 + 20) for i in range(20)]
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        try:
            for b in batches[k::4][::-1]:  # each worker goes backwards: maximal disorder
                r = stores[k].store_batch(LANE, Q, b, 1)
                assert r.held == held(b) and r.conflicts == ()
                stored = {x.seq for x in stores[k].records(LANE)}
                assert set(range(1, r.contiguous + 1)) <= stored
                with lock:
                    results.append(r.contiguous)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 20
    assert max(results) == 400
    assert stores[0].gaps(LANE) == [] and stores[0].count(LANE) == 400


# The version-1 layout, spelled out (seqs per lane, a `lanes` table), as the previous release
# created it in SQLite and in PostgreSQL.
V1_TABLES = (
    "CREATE TABLE {p}records (record_id TEXT PRIMARY KEY, lane TEXT NOT NULL,"
    " seq BIGINT NOT NULL, ts_us BIGINT NOT NULL, kind TEXT NOT NULL,"
    " amount_minor BIGINT NOT NULL, currency TEXT NOT NULL, data {blob} NOT NULL,"
    " ingested_us BIGINT NOT NULL, UNIQUE (lane, seq))",
    "CREATE TABLE {p}lanes (lane TEXT PRIMARY KEY, contiguous BIGINT NOT NULL DEFAULT 0,"
    " max_seq BIGINT NOT NULL DEFAULT 0)",
)


def v1_rows(lane: str) -> list[tuple[object, ...]]:
    return [(r.record_id, lane, r.seq, r.ts_us, "toll", 500, "CNY", r.data, 1) for r in recs(1, 4)]


def check_migrated(s: IngestStore) -> None:
    assert sorted((r.epoch, r.seq) for r in s.records(LANE)) == [("", n) for n in range(1, 5)]
    assert [(e.epoch, e.contiguous) for e in s.epochs(LANE)] == [("", 4)]
    # Resent under a new epoch the same records are duplicates (by id, byte for byte).
    again = s.store_batch(LANE, QueueIdentity("e-new", 2), recs(3, 4), 2)
    assert again.held == held(recs(3, 4)) and again.conflicts == ()
    assert s.store_batch(LANE, Q, recs(1, 1, amount=9), 3).conflicts  # conflicts work too


def test_a_v1_sqlite_store_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "bo.sqlite"
    db = sqlite3.connect(path)
    for stmt in V1_TABLES:
        db.execute(stmt.format(p="", blob="BLOB"))
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", v1_rows(LANE))
    db.execute("INSERT INTO lanes VALUES (?, 4, 4)", (LANE,))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = SqliteIngestStore(path)
    try:
        check_migrated(s)
    finally:
        s.close()
    s = SqliteIngestStore(path)  # opening again changes nothing
    s.close()


def test_a_newer_sqlite_store_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "bo.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 9")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(IngestStoreError, match="newer"):
        SqliteIngestStore(path)
    assert path.read_bytes() == before


def test_a_v1_postgres_schema_is_migrated_in_place(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA lane_ingest")
        for stmt in V1_TABLES:
            conn.execute(stmt.format(p="lane_ingest.", blob="BYTEA"))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO lane_ingest.records VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                v1_rows(LANE),
            )
        conn.execute("INSERT INTO lane_ingest.lanes VALUES (%s, 4, 4)", (LANE,))
    s = PostgresIngestStore(pg_dsn)
    try:
        check_migrated(s)
    finally:
        s.close()
    PostgresIngestStore(pg_dsn).close()  # opening again changes nothing


def test_a_conflict_clears_once_the_refused_version_is_held(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 2), 1)
    mine = recs(1, 2, amount=9)  # the lane's version, refused
    assert len(s.store_batch(LANE, Q, mine, 2).conflicts) == 2
    assert len(s.conflicts()) == 2
    # The operator removes the wrong row of seq 1; the lane offers its version again.
    _delete(s, mine[0].record_id)
    again = s.store_batch(LANE, Q, mine, 3)
    assert again.held == held(mine[:1]) and len(again.conflicts) == 1
    assert [row.conflict.seq for row in s.conflicts()] == [2]  # seq 1 is no longer open


def _delete(s: IngestStore, record_id: str) -> None:
    beside(s, "DELETE FROM {t}records WHERE record_id=?", [(record_id,)])


def test_a_conflict_clears_when_the_refused_version_comes_in_a_batch_of_its_own(
    store_factory: Factory,
) -> None:
    """The refused version, offered again once the wrong row is gone, is a wholly new batch
    (PostgreSQL: the one-statement path) and clears its conflict in the same commit."""
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 2), 1)
    mine = recs(2, 2, amount=9)
    assert len(s.store_batch(LANE, Q, mine, 2).conflicts) == 1
    _delete(s, mine[0].record_id)
    s.store_batch(LANE, Q, recs(3, 4), 3)  # the epoch's batches go on meanwhile
    again = s.store_batch(LANE, Q, mine, 4)
    assert (again.held, again.inserted, again.conflicts) == (held(mine), 1, ())
    assert s.conflicts() == []


def test_a_prefix_left_short_by_a_stopped_worker_is_walked_on(store_factory: Factory) -> None:
    """A worker that stopped between the commit of a batch that filled a hole and the walk of
    the prefix after it loses nothing and leaves no false hole: the next read of the epoch
    walks the prefix on over the committed rows and keeps it, and later batches go on from
    there."""
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 10), 1)
    assert s.store_batch(LANE, Q, recs(21, 30), 1).contiguous == 10
    committed_behind(s, recs(11, 20), E)
    assert [(e.contiguous, e.max_seq) for e in s.epochs(LANE)] == [(30, 30)]
    assert s.contiguous(LANE, E) == 30 and s.gaps(LANE) == [] and s.count(LANE) == 30
    later = s.store_batch(LANE, Q, recs(31, 40), 1)
    assert (later.contiguous, later.max_seq) == (40, 40)


def test_an_epoch_row_removed_by_hand_comes_back_with_the_next_batch(
    store_factory: Factory,
) -> None:
    s = store_factory()
    s.store_batch(LANE, Q, recs(1, 2), 1)
    beside(s, "DELETE FROM {t}epochs", [()])
    r = s.store_batch(LANE, Q, recs(3, 4), 2)
    assert r.held == held(recs(3, 4)) and r.conflicts == ()
    assert [(e.epoch, e.contiguous, e.max_seq) for e in s.epochs(LANE)] == [(E, 4, 4)]


def test_postgres_a_batch_is_never_taken_inside_an_open_transaction_block(pg_dsn: str) -> None:
    """The one statement commits when it returns only outside a transaction block: a worker's
    connection left inside one (a stray BEGIN) refuses the batch instead of acknowledging
    records it does not hold."""
    s = PostgresIngestStore(pg_dsn)
    s.store_batch(LANE, Q, recs(1, 2), 1)
    s._connection().execute("BEGIN")
    with pytest.raises(IngestStoreError, match="inside a transaction block"):
        s.store_batch(LANE, Q, recs(3, 4), 2)
    assert s.count(LANE) == 2
    assert s.store_batch(LANE, Q, recs(3, 4), 3).held == held(recs(3, 4))
    s.close()


def entries(first: int, last: int) -> list[IngestRecord]:
    """Entries of a closed road, one pass each (so each opens a trip)."""
    out = []
    for seq in range(first, last + 1):
        made = replace(draft(seq), kind="entry", entry_plaza="P01", pass_id=f"pass-{seq}")
        rec = Record(f"rid-e{LANE}-{seq}", LANE, seq, 1_700_000_000_000_000 + seq, made)
        out.append(IngestRecord.of(rec, rec.encode()))
    return out


@pytest.mark.parametrize("make", [recs, entries], ids=["tolls", "entries"])
def test_postgres_a_new_batch_of_a_seen_epoch_is_one_round_trip(
    pg_dsn: str, tmp_path: Path, make: Callable[[int, int], list[IngestRecord]]
) -> None:
    """Counted on the worker's own connection (libpq's protocol trace): the client sends,
    then waits for the server once; when store_batch returns the batch is committed. A batch
    of entries too, its trip locks and open trips with it."""
    s = PostgresIngestStore(pg_dsn)
    s.store_batch(LANE, Q, make(1, 10), 1)  # the epoch's first batch here finds its row
    pgconn = s._connection().pgconn  # the worker's connection, under test
    trace = tmp_path / "libpq.trace"
    with trace.open("w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        r = s.store_batch(LANE, Q, make(11, 20), 2)
        pgconn.untrace()
    sides = [line.split("\t", 1)[0] for line in trace.read_text().splitlines()]
    assert sum(1 for a, b in itertools.pairwise(sides) if (a, b) == ("F", "B")) == 1
    assert r.held == held(make(11, 20)) and (r.contiguous, r.max_seq) == (20, 20)
    with psycopg.connect(pg_dsn) as other:
        (n,) = other.execute("SELECT COUNT(*) FROM lane_ingest.records").fetchone() or (0,)
        (opened,) = other.execute("SELECT COUNT(*) FROM lane_ingest.open_trips").fetchone() or (0,)
    assert (n, opened) == (20, 20 if make is entries else 0)
    s.close()


def passes(lane: str, kind: str, first: int, last: int) -> list[IngestRecord]:
    """A lane's entries or exits of passes first..last, as seqs first..last."""
    out = []
    for seq in range(first, last + 1):
        made = replace(draft(seq), kind=kind, entry_plaza="P01", pass_id=f"pass-{seq}")
        rec = Record(f"rid-{kind}-{seq}", lane, seq, 1_700_000_000_000_000 + seq, made)
        out.append(IngestRecord.of(rec, rec.encode()))
    return out


def test_postgres_an_out_of_order_backlog_batch_is_one_round_trip(
    pg_dsn: str, tmp_path: Path
) -> None:
    """An entry lane's backlog after an outage: each batch of exits comes before the batch of
    their entries. Once an epoch's batch met strays, its next batch keeps and prunes them in
    one round trip (the client sends, then waits for the server once), and the strays go as
    the entries arrive, each trip counted closed once."""
    s = PostgresIngestStore(pg_dsn)
    out_q, in_q = QueueIdentity("exits-1"), QueueIdentity("entries-1")
    out_lane, in_lane = "p01/l09", "p01/l01"
    s.store_batch(out_lane, out_q, passes(out_lane, "exit", 1, 10), 1)
    s.store_batch(in_lane, in_q, passes(in_lane, "entry", 1, 10), 1)
    pgconn = s._connection().pgconn
    for lane, q, kind in ((out_lane, out_q, "exit"), (in_lane, in_q, "entry")):
        trace = tmp_path / f"{kind}.trace"
        with trace.open("w") as out:
            pgconn.trace(out.fileno())
            pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            r = s.store_batch(lane, q, passes(lane, kind, 11, 20), 2)
            pgconn.untrace()
        sides = [line.split("\t", 1)[0] for line in trace.read_text().splitlines()]
        assert sum(1 for a, b in itertools.pairwise(sides) if (a, b) == ("F", "B")) == 1, kind
        assert r.held == held(passes(lane, kind, 11, 20)) and r.contiguous == 20
    ledger = open_trips(s)
    assert (ledger.closed, ledger.open_trips, ledger.unmatched_exits) == (20, (), ())
    with psycopg.connect(pg_dsn) as other:
        (kept,) = other.execute("SELECT COUNT(*) FROM lane_ingest.stray_exits").fetchone() or (0,)
    assert kept == 0
    s.close()


def test_postgres_an_exit_batch_closes_its_trips_by_a_join(pg_dsn: str) -> None:
    """The exits' DELETE of their open trips as the worker runs it, its statement prepared
    and its plan cached (auto_explain's plans, on the worker's own connection): a join with
    the batch's trip ids, never `trip_id = ANY(array)`, whose cached plan scanned the table
    and compared each row with every exit of the batch."""
    s = PostgresIngestStore(pg_dsn)
    in_q, out_q = QueueIdentity("entries-1"), QueueIdentity("exits-1")
    in_lane, out_lane = "p01/l01", "p01/l09"
    plans: list[str] = []

    def pair(first: int) -> None:
        s.store_batch(in_lane, in_q, passes(in_lane, "entry", first, first + 9), 1)
        s.store_batch(out_lane, out_q, passes(out_lane, "exit", first, first + 9), 1)

    for first in range(1, 121, 10):  # psycopg prepares it, PostgreSQL caches its plan
        pair(first)
    conn = s._connection()
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                    "SET client_min_messages = log"):  # fmt: skip
        conn.execute(setting)
    pair(121)
    conn.execute("RESET client_min_messages")
    deletes = [p for p in plans if "Delete on open_trips" in p]
    assert len(deletes) == 1, plans
    assert "trip_id = ANY" not in deletes[0] and "= x.trip_id" in deletes[0], deletes
    ledger = open_trips(s)
    assert (ledger.closed, ledger.open_trips) == (130, ())
    s.close()


def test_postgres_stores_any_text_as_sent(pg_dsn: str) -> None:
    """A batch's text columns go to PostgreSQL as one string each, split by the server at
    ASCII 31 with ASCII 30 for NULL (the worker's cheapest form): a value holding either
    character, or an empty string alone in its batch (which would split into no value), goes
    as a binary array instead, and every column is stored as it was sent, both ways a batch
    is stored (the first of an epoch, then one statement)."""
    s = PostgresIngestStore(pg_dsn)
    sent: list[IngestRecord] = []
    trip_ids: list[str | None] = ["a\x1fb", "\x1e", "", None, "plain"]
    for seq, trip in enumerate(trip_ids, start=1):
        kind = "toll" if trip is None else "entry"
        made = replace(draft(seq), kind=kind, entry_plaza="P01", pass_id=trip)
        rec = Record(f"rid-{seq}\x1f{seq}" if seq == 2 else f"rid-{seq}", LANE, seq, seq, made)
        sent.append(IngestRecord.of(rec, rec.encode()))
    s.store_batch(LANE, Q, sent[:2], 1)
    s.store_batch(LANE, Q, sent[2:3], 1)  # "" alone
    s.store_batch(LANE, Q, sent[3:], 1)
    with psycopg.connect(pg_dsn) as other:
        rows = other.execute(
            "SELECT record_id, seq, ts_us, kind, currency, data, trip_role, trip_id"
            " FROM lane_ingest.records ORDER BY seq"
        ).fetchall()
    assert rows == [
        (r.record_id, r.seq, r.ts_us, r.kind, r.currency, r.data, *trip_columns(r.trip))
        for r in sent
    ]
    assert sent[3].trip is None and sent[2].trip is not None  # NULL and "" both sent
    s.close()


def test_a_held_sqlite_write_lock_is_a_busy_error_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bo.sqlite"
    s = SqliteIngestStore(path, busy_timeout_s=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(StoreBusyError, match="locked"):
            s.store_batch(LANE, Q, recs(1, 2), 1)
        other.execute("ROLLBACK")
        assert s.store_batch(LANE, Q, recs(1, 2), 2).held == held(recs(1, 2))
    finally:
        other.close()
        s.close()


def test_postgres_batches_of_one_epoch_wait_for_its_lock(pg_dsn: str) -> None:
    """The batches of one queue epoch are serialised by the lock on its `epochs` row: a batch
    that finds it held past lock_timeout is a busy error and stores nothing (new or resent);
    another epoch of the same lane is not held up."""
    s = PostgresIngestStore(pg_dsn, lock_timeout_s=0.2)
    s.store_batch(LANE, Q, recs(1, 2), 1)
    with psycopg.connect(pg_dsn) as other:
        other.execute(
            "SELECT 1 FROM lane_ingest.epochs WHERE lane=%s AND epoch=%s FOR UPDATE", (LANE, E)
        )
        for batch in (recs(3, 4), recs(1, 4)):  # a new batch, and one partly held
            with pytest.raises(StoreBusyError, match="lock timeout"):
                s.store_batch(LANE, Q, batch, 1)
        assert s.count(LANE) == 2
        beside = s.store_batch(LANE, QueueIdentity("epoch-2"), recs(1, 2, tag="n"), 1)
        assert beside.held == held(recs(1, 2, tag="n"))
        other.rollback()  # the holder ends its transaction
    r = s.store_batch(LANE, Q, recs(3, 4), 2)
    assert r.held == held(recs(3, 4)) and r.contiguous == 4
    s.close()


async def test_postgres_two_batches_of_an_epoch_deadlocked_on_its_row_are_tried_again(
    pg_dsn: str,
) -> None:
    """A lane's resend, cut other than the first sending, stored by two workers at once: one
    batch partly held takes its epoch's row first and waits to insert a seq the other has
    inserted uncommitted, which waits for that row. PostgreSQL ends the deadlock by failing
    one: a busy error (the ingest tries it again after a back-off, as for a lock timeout),
    storing and acknowledging nothing, and tried again it is held. It was a plain store
    error: `uplink batch not stored`, `lane_ingest_store_failing` raised, nothing retried
    until the lane's resend."""
    resend, batch = PostgresIngestStore(pg_dsn), PostgresIngestStore(pg_dsn)
    try:
        # Seq 1 stored by a third worker: each of these two takes the epoch for one it has
        # not seen, storing its records before it moves the epoch's row on.
        seed = PostgresIngestStore(pg_dsn)
        seed.store_batch(LANE, Q, recs(1, 1), 1)
        seed.close()
        with psycopg.connect(pg_dsn) as holder:  # the epoch's row held, as by a third batch
            holder.execute(
                "SELECT 1 FROM lane_ingest.epochs WHERE lane=%s AND epoch=%s FOR UPDATE", (LANE, E)
            )
            # Seq 1 held: stored carefully, under the epoch's row, which it waits for first.
            resending = asyncio.create_task(
                asyncio.to_thread(resend.store_batch, LANE, Q, recs(1, 2), 1)
            )
            await eventually(lambda: waiting_here(pg_dsn, "transactionid"), what="the resend waits")
            # Seqs 2 and 3 inserted, waiting for the row behind it.
            storing = asyncio.create_task(
                asyncio.to_thread(batch.store_batch, LANE, Q, recs(2, 3), 1)
            )
            await eventually(lambda: waiting_here(pg_dsn, "tuple"), what="the batch waits")
            holder.commit()
        results = await asyncio.gather(resending, storing, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1, results
        assert isinstance(failed[0], StoreBusyError), failed
        assert "deadlock" in str(failed[0])
        again = {0: (resend, recs(1, 2)), 1: (batch, recs(2, 3))}[results.index(failed[0])]
        assert again[0].store_batch(LANE, Q, again[1], 2).held == held(again[1])
        assert [r.seq for r in batch.records(LANE)] == [1, 2, 3]
        assert batch.contiguous(LANE, E) == 3
    finally:
        resend.close()
        batch.close()


def test_postgres_a_worker_starting_beside_a_busy_one_needs_no_table_lock(pg_dsn: str) -> None:
    """A second `lane ingest` starting while the first holds its tables (a batch in flight)
    opens at once: a schema this release made needs no DDL, whose ALTER TABLE would wait for
    an exclusive lock and give up as busy."""
    PostgresIngestStore(pg_dsn).close()
    with psycopg.connect(pg_dsn) as first:
        first.execute("LOCK TABLE lane_ingest.records IN ROW EXCLUSIVE MODE")
        second = PostgresIngestStore(pg_dsn, lock_timeout_s=0.2)
        second.close()
        first.rollback()
