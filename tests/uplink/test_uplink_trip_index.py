"""`lane trips` from the store's trip index: the same ledger as decoding every record.

Each stored record's part in a trip (`trip_role`, `trip_id`) is filled at ingest by the pure
`uplink.trips.trip_mark`; the store finds open trips, the closed count and unmatched exits in
SQL over an index. Hypothesis draws closed-road and metro records (entries, exits, tap-ins
under their own record id or a pass id, tap-outs naming either, declines, tolls, a pass
entered twice, equal times, bytes that do not decode) into real SQLite and PostgreSQL stores,
and the indexed answer must be the pure ledger's over every stored record.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_server import waiting_here
from polling import eventually
from uplink_kit import beside

from uplink.messages import QueueIdentity
from uplink.pg import (
    TRIP_LOCK_GROUP_BASE,
    TRIP_LOCKS_HELD,
    TRIP_LOCKS_OWN,
    PostgresIngestStore,
    TripLocks,
    trip_lock_keys,
)
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.sql_store import (
    CLOSED_COUNTS,
    COLUMN_COUNT,
    LATE_CLOSED,
    OLD_STRAYS,
    OPEN_ENTRIES,
    OPEN_NEW,
    PRUNE_STRAYS,
    RECORD_COLUMNS,
    REOPEN,
    ROLE_COUNT,
    STRAYS,
    TALLIED,
    NewRows,
    batch_trips,
)
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore, StoreBusyError
from uplink.trips import END_OF_TIME_US, open_trips, overdue, stored_mark, trip_ledger

T0 = 1_800_000_000_000_000
LANES = ("P01/e1", "P02/x1", "S01/g1")
KINDS = ("entry", "exit", "tap_in", "tap_out", "toll")


def gate_record_id(i: int) -> str:
    """A record id of the UUID form, whose hex a tap-out names for a tap-in without pass id."""
    return f"0194f9a0-0000-7000-8000-{i:012x}"


@st.composite
def stored_records(draw: st.DrawFn) -> list[IngestRecord]:
    """Rows as the ingest makes them (`IngestRecord.of`), and now and then one whose bytes do
    not decode, marked as the store upgrade marks such a row. Some are refunds of another row
    (`paid_not_passed`, `record:<id>`): of an entry or a tap-in, they close its trip."""
    n = draw(st.integers(0, 24))
    some_gate_record = st.integers(0, max(n - 1, 0)).map(gate_record_id)
    trip_ids = st.one_of(
        st.none(),
        st.sampled_from(("p1", "p2", "p3", "")),
        some_gate_record.map(lambda r: uuid.UUID(r).hex),
    )
    refund_flags = st.one_of(
        st.just(()), some_gate_record.map(lambda r: ("paid_not_passed", f"record:{r}"))
    )
    seqs = dict.fromkeys(LANES, 0)
    rows: list[IngestRecord] = []
    for i in range(n):
        lane = draw(st.sampled_from(LANES))
        seqs[lane] += 1
        seq, ts_us = seqs[lane], T0 + draw(st.integers(0, 4))
        if draw(st.integers(0, 11)) == 0:
            junk = b"\x00junk-%d" % i
            rows.append(IngestRecord(f"g-{i}", lane, seq, ts_us, "toll", 0, "CNY", junk,
                                     stored_mark(junk)))  # fmt: skip
            continue
        draft = RecordDraft(
            draw(st.sampled_from(KINDS)),
            f"v-{i}",
            draw(st.integers(1, 3)),
            0,
            "CNY",
            "token",
            None,
            AuthInfo(draw(st.sampled_from(("approved", "declined", "none")))),
            entry_plaza=draw(st.sampled_from((None, "P09"))),
            flags=draw(refund_flags),
            pass_id=draw(trip_ids),
            plate=draw(st.sampled_from((None, "ZJA1"))),
        )
        record_id = gate_record_id(i) if draw(st.booleans()) else f"r-{i}"
        record = Record(record_id, lane, seq, ts_us, draft)
        rows.append(IngestRecord.of(record, record.encode()))
    return rows


@st.composite
def arrivals(draw: st.DrawFn, rows: list[IngestRecord]) -> list[list[IngestRecord]]:
    """The rows as batches (runs of one lane's seqs) in a drawn order of arrival: an exit
    may come before its entry, a lane's later batch before its earlier one."""
    batches: list[list[IngestRecord]] = []
    for lane in LANES:
        mine = [r for r in rows if r.lane == lane]
        while mine:
            size = draw(st.integers(1, len(mine)))
            batches.append(mine[:size])
            mine = mine[size:]
    return draw(st.permutations(batches))


def test_the_indexed_ledger_is_the_pure_ledger_over_every_record(
    store_factory: Callable[[], IngestStore],
) -> None:
    """After every batch, in any order of arrival, and after batches replayed: the open trips
    kept at ingest are the pure ledger's over the records stored so far, and the strays kept
    are its unmatched exits, no more (a stray goes once its trip has an entry)."""
    store = store_factory()

    @settings(max_examples=60, deadline=None, database=None)
    @given(data=st.data(), rows=stored_records(), cutoff=st.integers(0, 5))
    def check(data: st.DataObject, rows: list[IngestRecord], cutoff: int) -> None:
        for table in ("records", "open_trips", "stray_exits", "epochs"):
            beside(store, f"DELETE FROM {{t}}{table}", [()])
        epoch = QueueIdentity(uuid.uuid4().hex)
        batches = data.draw(arrivals(rows))
        for batch in batches:
            store.store_batch(batch[0].lane, epoch, batch, 1)
            ledger = trip_ledger(store.records_between(0, END_OF_TIME_US))
            assert open_trips(store) == ledger
            assert kept_strays(store) == sorted(ledger.unmatched_exits)
        blobs = store.records_between(0, END_OF_TIME_US)
        assert len(blobs) == len(rows)
        pure = trip_ledger(blobs)
        assert trip_ledger(reversed(blobs)) == pure  # the order records are read in is no matter
        for replayed in data.draw(st.lists(st.sampled_from(batches)) if batches else st.just([])):
            store.store_batch(replayed[0].lane, epoch, replayed, 2)  # a resend changes nothing
        assert open_table(store) == len(pure.open_trips)  # one row per open trip, no more
        assert kept_strays(store) == sorted(pure.unmatched_exits)
        for before in (END_OF_TIME_US, T0 + cutoff):
            assert open_trips(store, before) == overdue(pure, before)

    check()


def test_the_open_trips_table_follows_arrivals_and_ignores_replays(
    store_factory: Callable[[], IngestStore],
) -> None:
    """An entry opens its trip, a second entry of the pass moves it to the earlier one, its
    exit closes it; an exit that arrives before its entry leaves the trip closed when the entry
    comes; a batch sent again neither adds a row nor opens a closed trip."""
    store = store_factory()
    lanes: dict[str, int] = {}

    def batch(lane: str, kind: str, trip: str, ts_us: int) -> list[IngestRecord]:
        lanes[lane] = lanes.get(lane, 0) + 1
        draft = RecordDraft(kind, "v", 1, 0, "CNY", "token", None, AuthInfo("none"),
                            pass_id=trip)  # fmt: skip
        record = Record(f"{lane}-{lanes[lane]}", lane, lanes[lane], T0 + ts_us, draft)
        return [IngestRecord.of(record, record.encode())]

    def send(rows: list[IngestRecord]) -> list[tuple[str, str]]:
        store.store_batch(rows[0].lane, QueueIdentity("q"), rows, 1)
        ledger = open_trips(store)
        assert ledger == trip_ledger(store.records_between(0, END_OF_TIME_US))
        assert open_table(store) == len(ledger.open_trips)
        return [(t.pass_id, t.record_id) for t in ledger.open_trips]

    later = batch("P01/e1", "entry", "p1", 5)
    assert send(later) == [("p1", "P01/e1-1")]
    # A lane's later batches take PostgreSQL's one statement (an epoch the worker has seen).
    assert send(batch("P02/e1", "toll", "p1", 1)) == [("p1", "P01/e1-1")]
    earlier = batch("P02/e1", "entry", "p1", 3)
    assert send(earlier) == [("p1", "P02/e1-2")]  # the pass entered at the earlier entry
    assert send(later) == [("p1", "P02/e1-2")]
    out = batch("P03/x1", "exit", "p1", 9)
    assert send(out) == []
    for again in (later, earlier, out):
        assert send(again) == []  # a closed trip stays closed
    assert send(batch("P03/x1", "exit", "p2", 10)) == []  # its entry has not arrived
    assert open_trips(store).unmatched_exits == ("P03/x1-2",)
    assert send(batch("P01/e1", "entry", "p2", 8)) == []  # closed by the exit ingested before
    assert open_trips(store).closed == 2 and open_trips(store).unmatched_exits == ()


def test_the_strays_go_when_the_entries_arrive_after_their_exits(
    store_factory: Callable[[], IngestStore],
) -> None:
    """An entry lane offline while its vehicles leave: the exit lane's batches keep their
    exits as strays (unmatched), then the entry lane's backlog closes their trips, each
    counted once, and the strays go with it. Outage after outage (traffic in order between
    them: PostgreSQL's one statement then meets the next outage's first exits, refuses itself
    and the batch is stored by the pipelined transaction), what is kept is the exits still
    unmatched, not every exit that ever came early; a second exit of a trip closed before, a
    foreign pass and a replay leave the same."""
    store = store_factory()
    seqs: dict[str, int] = {}

    def batch(lane: str, kind: str, trips: list[str]) -> list[IngestRecord]:
        rows = []
        for trip in trips:
            seqs[lane] = seqs.get(lane, 0) + 1
            draft = RecordDraft(kind, "v", 1, 0, "CNY", "token", None, AuthInfo("none"),
                                pass_id=trip)  # fmt: skip
            record = Record(f"{lane}-{seqs[lane]}", lane, seqs[lane], T0 + seqs[lane], draft)
            rows.append(IngestRecord.of(record, record.encode()))
        store.store_batch(lane, QueueIdentity(lane), rows, 1)
        return rows

    for outage in range(3):
        passes = [f"o{outage}-{i}" for i in range(12)]
        for k in range(0, 12, 4):  # the exit lane's batches of its epoch (PostgreSQL's one
            batch("P02/x1", "exit", passes[k : k + 4])  # statement after the first)
        assert len(kept_strays(store)) == 12 == len(open_trips(store).unmatched_exits)
        for k in range(0, 12, 6):
            again = batch("P01/e1", "entry", passes[k : k + 6])
        store.store_batch("P01/e1", QueueIdentity("P01/e1"), again, 2)  # a resend
        ledger = open_trips(store)
        assert ledger == trip_ledger(store.records_between(0, END_OF_TIME_US))
        assert ledger.closed == 16 * outage + 12 and ledger.unmatched_exits == ()
        assert kept_strays(store) == []
        batch("P01/e1", "entry", [f"n{outage}-{i}" for i in range(4)])
        batch("P02/x1", "exit", [f"n{outage}-{i}" for i in range(4)])
    batch("P03/x1", "exit", ["o0-0", "foreign"])  # a second exit, a pass of no entry lane
    ledger = open_trips(store)
    assert ledger == trip_ledger(store.records_between(0, END_OF_TIME_US))
    assert ledger.closed == 48 and kept_strays(store) == list(ledger.unmatched_exits)
    assert ledger.unmatched_exits == ("P03/x1-2",)


def kept_strays(store: IngestStore) -> list[str]:
    """The record ids of the strays the store keeps (in `stray_exits`: the only place since
    version 6), sorted."""
    beside_rows = "SELECT record_id FROM {t}stray_exits ORDER BY record_id"
    if isinstance(store, SqliteIngestStore):
        with sqlite3.connect(store.path) as db:
            return [str(r[0]) for r in db.execute(beside_rows.format(t=""))]
    assert isinstance(store, PostgresIngestStore)
    with psycopg.connect(store.dsn) as conn:
        rows = conn.execute(beside_rows.format(t=f"{store.schema}.")).fetchall()
        return sorted(str(r[0]) for r in rows)  # byte for byte, as Python sorts


# A batch naming more trip ids than get locks of their own (it locks their groups).
MANY_TRIPS = st.integers(0, 10**6).map(lambda n: [f"t{n + i}" for i in range(TRIP_LOCKS_OWN + 1)])


def exclusive_and_shared(locks: TripLocks) -> tuple[set[int], set[int]]:
    shared = {k for k in locks.keys if locks.share_groups and k >= TRIP_LOCK_GROUP_BASE}
    return set(locks.keys) - shared, shared


@settings(max_examples=300, deadline=None, database=None)
@given(
    common=st.text(max_size=8),
    mine=st.lists(st.text(max_size=8), max_size=30) | MANY_TRIPS,
    theirs=st.lists(st.text(max_size=8), max_size=30) | MANY_TRIPS,
)
def test_two_transactions_naming_a_trip_id_in_common_never_both_hold_their_locks(
    common: str, mine: list[str], theirs: list[str]
) -> None:
    """Pure: whatever trip ids two transactions name beside a common one, one of them asks for
    a lock the other holds exclusive (or holds one it asks for exclusive), so one waits for
    the other's commit; each asks for at most TRIP_LOCKS_HELD locks, in ascending order."""
    a, b = (trip_lock_keys("lane_ingest", [common, *ids]) for ids in (mine, theirs))
    for locks in (a, b):
        assert locks.keys == sorted(set(locks.keys)) and len(locks.keys) <= TRIP_LOCKS_HELD
    (a_excl, a_shared), (b_excl, b_shared) = exclusive_and_shared(a), exclusive_and_shared(b)
    assert a_excl & (b_excl | b_shared) or b_excl & a_shared


def test_two_lane_batches_of_other_trips_take_no_lock_in_common() -> None:
    """Two full lane batches (100 trip ids each, none in common) ask for no lock the other
    holds exclusive, so two workers store them side by side: a closed road's ingest scales
    with workers (locking every batch's groups exclusive would make them take turns)."""
    a = trip_lock_keys("lane_ingest", [f"a{i}" for i in range(100)])
    b = trip_lock_keys("lane_ingest", [f"b{i}" for i in range(100)])
    (a_excl, a_shared), (b_excl, b_shared) = exclusive_and_shared(a), exclusive_and_shared(b)
    assert not a_excl & (b_excl | b_shared) and not b_excl & a_shared


OTHERS = [f"q{i}" for i in range(TRIP_LOCKS_OWN + 1)]  # enough for a batch to lock its groups


@pytest.mark.parametrize("seen", [False, True], ids=["new-epoch", "seen-epoch"])
@pytest.mark.parametrize(
    ("entries", "exits"),
    [([], []), (OTHERS, []), ([], OTHERS)],
    ids=["one-each", "many-entries", "many-exits"],
)
async def test_postgres_a_trips_exit_waits_for_its_entry_in_flight(
    pg_dsn: str, seen: bool, entries: list[str], exits: list[str]
) -> None:
    """Two workers storing a trip's entry and its exit at once (other lanes, other epochs)
    take turns on the trip id: the exit's batch waits for the entry's commit, then closes the
    trip. Without the wait its refresh would not see the uncommitted entry and the trip would
    stay open after both commits. Both ways a batch is stored: the first of its epoch, and
    one of an epoch the worker has seen (one statement for a batch without trips); and
    whichever batch names trip ids enough to lock their groups rather than their buckets."""
    store = PostgresIngestStore(pg_dsn)
    rows = []
    for lane, kind, trip in (
        ("P03/x1", "toll", None),
        ("P01/e1", "entry", "p1"),
        *(("P03/x1", "exit", t) for t in ["p1", *exits]),
    ):
        draft = RecordDraft(kind, "v", 1, 0, "CNY", "token", None, AuthInfo("none"),
                            pass_id=trip)  # fmt: skip
        record = Record(f"r-{kind}-{trip}", lane, len(rows) if kind == "exit" else 1, T0, draft)
        rows.append(IngestRecord.of(record, record.encode()))
    toll, entry, *exits_ = rows
    if seen:
        store.store_batch("P03/x1", QueueIdentity("x"), [toll], 1)
    else:
        exits_ = [replace(r, seq=r.seq - 1) for r in exits_]
    marks = ", ".join(["%s"] * COLUMN_COUNT)
    try:
        with psycopg.connect(pg_dsn) as first:  # the entry's batch, in flight in another worker
            store._lock_trips(
                first, ["p1", *entries]
            )  # its trip ids' locks, as a worker takes them
            first.execute(
                f"INSERT INTO lane_ingest.records ({RECORD_COLUMNS}) VALUES ({marks})",
                NewRows("P01/e1", "e", [entry], 1).rows()[0],
            )
            first.execute(
                "INSERT INTO lane_ingest.open_trips VALUES ('p1', %s, %s)", (entry.record_id, T0)
            )
            closing = asyncio.create_task(
                asyncio.to_thread(store.store_batch, "P03/x1", QueueIdentity("x"), exits_, 1)
            )
            await eventually(
                lambda: advisory_waits(pg_dsn), what="the exit's batch waits for the trip id"
            )
            first.commit()
        await closing
        ledger = open_trips(store)
        assert (ledger.open_trips, ledger.closed) == ((), 1)
    finally:
        store.close()


async def test_postgres_a_trip_batch_holds_its_trip_locks_to_its_commit(pg_dsn: str) -> None:
    """A batch of an epoch the worker has seen takes its trip ids' locks and stores its rows
    in one round trip, no BEGIN: both in the one transaction up to the pipeline's Sync. Held
    up on its epoch's row, it still holds its trip locks (were they a transaction of their
    own, they would be free), and once it commits its rows and its open trip are there."""
    store = PostgresIngestStore(pg_dsn)
    records = []
    for seq, (kind, trip) in enumerate((("toll", None), ("entry", "p1")), start=1):
        draft = RecordDraft(kind, "v", 1, 0, "CNY", "token", None, AuthInfo("none"),
                            pass_id=trip)  # fmt: skip
        record = Record(f"r-{seq}", "P01/e1", seq, T0, draft)
        records.append(IngestRecord.of(record, record.encode()))
    locks = trip_lock_keys("lane_ingest", ["p1"])
    bucket = (locks.schema, locks.keys[0])  # taken exclusive by a batch of few trip ids
    try:
        store.store_batch("P01/e1", QueueIdentity("q"), records[:1], 1)  # the epoch is seen
        with psycopg.connect(pg_dsn) as holder, psycopg.connect(pg_dsn, autocommit=True) as peer:
            holder.execute("SELECT 1 FROM lane_ingest.epochs WHERE lane = 'P01/e1' FOR UPDATE")
            storing = asyncio.create_task(
                asyncio.to_thread(store.store_batch, "P01/e1", QueueIdentity("q"), records[1:], 1)
            )
            await eventually(lambda: row_waits(pg_dsn), what="the batch waits for its epoch row")
            taken = "SELECT pg_try_advisory_xact_lock(%s, %s)"
            assert peer.execute(taken, bucket).fetchone() == (False,)
            assert open_table(store) == 0  # nothing of the batch is committed yet
            holder.commit()
            await storing
            assert peer.execute(taken, bucket).fetchone() == (True,)
        assert store.count("P01/e1") == 2 and open_table(store) == 1
    finally:
        store.close()


def test_postgres_batches_refused_on_their_trip_locks_leave_the_worker_storing(
    pg_dsn: str,
) -> None:
    """A batch that waits past lock_timeout for its trip ids' locks is refused as busy, and
    the server skips the statement sent after them. psycopg names a statement it prepares
    (the fifth run of its form) as it sends it: skipped, the name would be taken for there,
    and every later batch of that form on the worker's connection refused for good."""
    store = PostgresIngestStore(pg_dsn, lock_timeout_s=0.1)
    records = []
    for seq in (1, 2, 3):
        draft = RecordDraft("entry", "v", 1, 0, "CNY", "token", None, AuthInfo("none"),
                            pass_id=f"p{seq}")  # fmt: skip
        record = Record(f"r-{seq}", "P01/e1", seq, T0, draft)
        records.append(IngestRecord.of(record, record.encode()))
    locks = trip_lock_keys("lane_ingest", ["p3"])
    try:
        for record in records[:2]:  # the epoch is seen, then a batch of its one statement
            store.store_batch("P01/e1", QueueIdentity("q"), [record], 1)
        with psycopg.connect(pg_dsn) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", (locks.schema, locks.keys[0]))
            for _ in range(8):  # past psycopg's prepare threshold
                with pytest.raises(StoreBusyError, match="lock timeout"):
                    store.store_batch("P01/e1", QueueIdentity("q"), records[2:], 1)
            holder.rollback()
        stored = store.store_batch("P01/e1", QueueIdentity("q"), records[2:], 1)
        assert stored.contiguous == 3 and store.count("P01/e1") == 3
        assert open_table(store) == 3
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["entry", "exit"])
async def test_postgres_a_batch_of_5000_trips_holds_a_bounded_number_of_locks(
    pg_dsn: str, kind: str
) -> None:
    """A batch naming 5,000 trip ids (the largest an uplink sends) holds at most
    TRIP_LOCKS_HELD advisory locks while it runs, counted in pg_locks from another
    connection while the batch waits on its epoch's row: not one per trip id, which would
    take most of PostgreSQL's default shared lock table (6,400) for one transaction."""
    store = PostgresIngestStore(pg_dsn)
    records = []
    for seq in range(1, 5002):
        kind_of = "toll" if seq == 1 else kind
        draft = RecordDraft(kind_of, "v", 1, 0, "CNY", "token", None, AuthInfo("none"),
                            pass_id=f"pass-{seq}")  # fmt: skip
        record = Record(f"r-{seq}", "P01/e1", seq, T0, draft)
        records.append(IngestRecord.of(record, record.encode()))
    try:
        store.store_batch("P01/e1", QueueIdentity("q"), records[:1], 1)  # the epoch is seen
        backend = store._connection().info.backend_pid
        with psycopg.connect(pg_dsn) as holder, psycopg.connect(pg_dsn, autocommit=True) as peer:
            holder.execute("SELECT 1 FROM lane_ingest.epochs WHERE lane = 'P01/e1' FOR UPDATE")
            storing = asyncio.create_task(
                asyncio.to_thread(store.store_batch, "P01/e1", QueueIdentity("q"), records[1:], 1)
            )
            await eventually(lambda: row_waits(pg_dsn), what="the batch waits for its epoch row")
            held = peer.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s"
                " AND granted",
                (backend,),
            ).fetchone()
            holder.commit()
            await storing
        assert held is not None and 0 < held[0] <= TRIP_LOCKS_HELD
        assert store.count("P01/e1") == 5001
        assert open_table(store) == (5000 if kind == "entry" else 0)
    finally:
        store.close()


def advisory_waits(dsn: str) -> int:
    return lock_waits(dsn, "advisory")


def row_waits(dsn: str) -> int:
    """Lock waits for a row another transaction has locked (on that transaction's id)."""
    return lock_waits(dsn, "transactionid")


def lock_waits(dsn: str, locktype: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = %s AND NOT granted", (locktype,)
        ).fetchone()
        return int(row[0]) if row else 0


def open_table(store: IngestStore) -> int:
    """How many rows the store's open-trips table holds."""
    if isinstance(store, SqliteIngestStore):
        with sqlite3.connect(store.path) as db:
            return int(db.execute("SELECT COUNT(*) FROM open_trips").fetchone()[0])
    assert isinstance(store, PostgresIngestStore)
    with psycopg.connect(store.dsn) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM {store.schema}.open_trips").fetchone()
        return int(row[0]) if row else 0


def sqlite_plan(path: Path, sql: str, params: tuple[object, ...]) -> list[str]:
    """The table reads (SCAN, SEARCH) of SQLite's plan for one of the store's statements."""
    for table in ("records", "open_trips", "stray_exits", "epochs", "trip_counts", "counted"):
        sql = sql.replace("{" + table + "}", table)
    db = sqlite3.connect(path)
    try:
        plan = [str(row[3]) for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        db.close()
    return [step for step in plan if step.startswith(("SCAN", "SEARCH"))]


def test_the_ledgers_queries_walk_the_trip_index(tmp_path: Path) -> None:
    """Not one of them reads the whole table: the open trips of a batch or an upgrade's chunk,
    its strays and its tally go over its trip ids, probing the index for each; the unreadable
    count searches it for its role."""
    SqliteIngestStore(tmp_path / "ingest.sqlite").close()
    ids = "(?), (?)"
    for sql, params in (
        (ROLE_COUNT, ("unreadable",)),
        (REOPEN.replace("{ids}", ids), ("entry", "entry", "p1", "p2", "exit")),
        (OPEN_NEW.replace("{rows}", "(VALUES (?, ?, ?)) AS t"), ("p1", "r", 1, "exit")),
        (OLD_STRAYS.replace("{ids}", ids), ("exit", "p1", "p2", "entry")),
        (TALLIED.replace("{ids}", ids), ("p1", "p2", "entry", "exit", "exit")),
        (LATE_CLOSED.replace("{ids}", ids), ("p1", "p2", "entry", "exit", "exit")),
        (PRUNE_STRAYS.replace("{ids}", ids), ("exit", "p1", "p2", "entry")),
    ):  # fmt: skip
        reads = sqlite_plan(tmp_path / "ingest.sqlite", sql.replace("{bytewise}", ""), params)
        # The trip ids given (VALUES) are scanned, the strays' own table scanned or searched
        # by key, the trips an upgrade's batches counted searched; every read of `records`
        # searches its index.
        of_records = [
            s for s in reads
            if "CONSTANT ROW" not in s and not s.startswith(("SCAN t", "SCAN stray_exits"))
            and not s.startswith(("SEARCH c USING PRIMARY KEY", "SEARCH s USING PRIMARY KEY",
                                  "SEARCH stray_exits USING PRIMARY KEY"))
        ]  # fmt: skip
        assert of_records and all("INDEX records_trip" in s for s in of_records), reads
        assert all(s.startswith("SEARCH") for s in of_records), reads


def test_the_closed_count_and_the_unmatched_exits_walk_no_trip(tmp_path: Path) -> None:
    """`lane trips`' closed count sums the counts kept beside (a row per queue epoch, one per
    upgrade), and reads the strays, each record by its key and probing the index for its
    trip: as big as the exits that closed no trip, whatever the road's history."""
    SqliteIngestStore(tmp_path / "ingest.sqlite").close()
    assert all(
        " records" not in s for s in sqlite_plan(tmp_path / "ingest.sqlite", CLOSED_COUNTS, ())
    )
    reads = sqlite_plan(tmp_path / "ingest.sqlite", STRAYS, ("entry", "exit"))
    assert reads[0] == "SCAN s", reads  # the strays' own table
    assert all(s.startswith("SEARCH") for s in reads[1:]), reads


def test_the_open_trips_come_from_their_own_table(tmp_path: Path) -> None:
    """The open trips read the open-trips table (as big as the trips open now) and each
    entry's record by its key: nothing over the index of every entry and exit ingested."""
    SqliteIngestStore(tmp_path / "ingest.sqlite").close()
    reads = sqlite_plan(tmp_path / "ingest.sqlite", OPEN_ENTRIES, (T0,))
    assert reads[0].startswith("SCAN o"), reads
    assert all("records_trip" not in s for s in reads), reads
    assert any("SEARCH r USING INDEX sqlite_autoindex_records_1 (record_id=?)" in s for s in reads)


# The records of a refunded exit, in the order a lane writes them: the entry (another lane),
# then at the exit lane a toll (so that lane's epoch is one PostgreSQL's worker has seen: its
# later batches take the one statement), the exit, its refund (the vehicle not let out), the
# vehicle's second, real exit; and a stray exit (no entry) refunded too.
REFUNDED_EXIT = ("entry", "toll", "exit", "refund", "again", "stray", "stray_refund")
# Orders of arrival, one record a batch: in order; each refund before its exit; the refund
# before the entry; everything backwards.
REFUND_ORDERS = (
    REFUNDED_EXIT,
    ("toll", "refund", "stray_refund", "entry", "exit", "stray", "again"),
    ("toll", "exit", "refund", "entry", "again", "stray_refund", "stray"),
    tuple(reversed(REFUNDED_EXIT)),
)


def refunded_exit_records(n: int, *, named: bool = True) -> dict[str, IngestRecord]:
    """`REFUNDED_EXIT`'s records of the trip t{n}; not `named`: the refunds name no pass (an
    exit priced `pass_used`), so the store finds each one's trip from its exit."""
    trip, stray, entry_lane, exit_lane = f"t{n}", f"s{n}", f"P01/e{n}", f"P03/x{n}"

    def draft(kind: str, pass_id: str, flags: tuple[str, ...] = ()) -> RecordDraft:
        result = "none" if flags or kind == "entry" else "approved"
        return RecordDraft(kind, "v", 1, 0 if flags else 500, "CNY", "token", None,
                           AuthInfo(result), flags=flags, pass_id=pass_id)  # fmt: skip

    def refund(of: str, pass_id: str) -> RecordDraft:
        return draft("exit", pass_id if named else "", ("paid_not_passed", f"record:{of}"))

    drafts = {
        "entry": (entry_lane, 1, draft("entry", trip)),
        "toll": (exit_lane, 1, draft("toll", "")),
        "exit": (exit_lane, 2, draft("exit", trip)),
        "refund": (exit_lane, 3, refund(f"x{n}-2", trip)),
        "again": (exit_lane, 4, draft("exit", trip)),
        "stray": (exit_lane, 5, draft("exit", stray)),
        "stray_refund": (exit_lane, 6, refund(f"x{n}-5", stray)),
    }
    out = {}
    for name, (lane, seq, d) in drafts.items():
        rid = f"e{n}-{seq}" if lane == entry_lane else f"x{n}-{seq}"
        record = Record(rid, lane, seq, T0 + seq, replace(d, pass_id=d.pass_id or None))
        out[name] = IngestRecord.of(record, record.encode())
    return out


@pytest.mark.parametrize("named", [True, False], ids=["refunds-name-the-pass", "no-pass"])
def test_a_refunded_exit_reopens_its_trip_whatever_the_order(
    store_factory: Callable[[], IngestStore], named: bool
) -> None:
    """The vehicle was not let out: the refund of its exit (naming the exit's record) undoes
    the exit, whichever arrives first, so the trip is open again (counted closed no more) and
    a refunded exit with no entry is no unmatched exit; the vehicle's later exit closes the
    trip again, not an unmatched exit. After every batch the store's answer is the pure
    ledger's; batches sent again change nothing. Alike with refunds that name no pass, whose
    trips the store reads from their exits (on PostgreSQL, one whose exit is not held yet
    locks every trip group)."""
    store = store_factory()
    for n, order in enumerate(REFUND_ORDERS):
        rows = refunded_exit_records(n, named=named)
        epochs = {lane: QueueIdentity(f"q-{lane}") for lane in {r.lane for r in rows.values()}}
        for name in order:
            row = rows[name]
            store.store_batch(row.lane, epochs[row.lane], [row], 1)
            ledger = trip_ledger(store.records_between(0, END_OF_TIME_US))
            assert open_trips(store) == ledger, (order, name)
            assert kept_strays(store) == sorted(ledger.unmatched_exits), (order, name)
            held = set(order[: order.index(name) + 1])
            trips = [t.pass_id for t in ledger.open_trips]
            # Entered, and exited by no exit but the refunded one: on the road.
            on_road = (
                "entry" in held
                and "again" not in held
                and not ("exit" in held and "refund" not in held)
            )
            assert (f"t{n}" in trips) == on_road, (order, name)
        for name in order:  # every batch sent again
            row = rows[name]
            store.store_batch(row.lane, epochs[row.lane], [row], 2)
        ledger = open_trips(store)
        assert ledger == trip_ledger(store.records_between(0, END_OF_TIME_US))
        assert f"t{n}" not in [t.pass_id for t in ledger.open_trips]
        assert not [r for r in ledger.unmatched_exits if r.startswith(f"x{n}-")]
    assert open_trips(store).closed == len(REFUND_ORDERS)  # each trip once, by its second exit
    assert open_table(store) == 0


# The exit lane's records as a backlog brings them, several a batch (an exit and its refund
# in one), the entry before, between or after them.
BACKLOG = ("toll", "exit", "refund", "again", "stray", "stray_refund")
REFUND_BATCHES = (
    (("entry",), BACKLOG),
    (BACKLOG, ("entry",)),
    (BACKLOG[:3], ("entry",), BACKLOG[3:]),
    (("toll",), BACKLOG[1:4], ("entry",), BACKLOG[4:]),
)


@pytest.mark.parametrize("named", [True, False], ids=["refunds-name-the-pass", "no-pass"])
def test_a_refunded_exit_in_the_batch_of_its_refund_reopens_its_trip(
    store_factory: Callable[[], IngestStore], named: bool
) -> None:
    """An exit and its refund in one batch (a lane's backlog), the entry before, between or
    after: after every batch the store's answer is the pure ledger's, and batches sent again
    change nothing; the trip is closed once, by the vehicle's second exit."""
    store = store_factory()
    for n, batches in enumerate(REFUND_BATCHES):
        rows = refunded_exit_records(n, named=named)
        epochs = {lane: QueueIdentity(f"q-{lane}") for lane in {r.lane for r in rows.values()}}
        for names in batches:
            batch = [rows[name] for name in names]
            store.store_batch(batch[0].lane, epochs[batch[0].lane], batch, 1)
            ledger = trip_ledger(store.records_between(0, END_OF_TIME_US))
            assert open_trips(store) == ledger, (batches, names)
            assert kept_strays(store) == sorted(ledger.unmatched_exits), (batches, names)
        for names in batches:  # every batch sent again
            batch = [rows[name] for name in names]
            store.store_batch(batch[0].lane, epochs[batch[0].lane], batch, 2)
        ledger = open_trips(store)
        assert ledger == trip_ledger(store.records_between(0, END_OF_TIME_US))
        assert f"t{n}" not in [t.pass_id for t in ledger.open_trips]
        assert not [r for r in ledger.unmatched_exits if r.startswith(f"x{n}-")]
    assert open_trips(store).closed == len(REFUND_BATCHES)
    assert open_table(store) == 0


def trip_row(
    rid: str, lane: str, seq: int, kind: str, trip: str | None, *flags: str
) -> IngestRecord:
    """A record of a trip (`trip`: its pass), or with `flags` a refund (nothing charged)."""
    result = "none" if flags or kind == "entry" else "approved"
    draft = RecordDraft(kind, "v", 1, 0 if flags else 500, "CNY", "token", None,
                        AuthInfo(result), flags=flags, pass_id=trip)  # fmt: skip
    record = Record(rid, lane, seq, T0 + seq, draft)
    return IngestRecord.of(record, record.encode())


async def test_postgres_a_refund_naming_no_trip_waits_for_its_trips_entry_in_flight(
    pg_dsn: str,
) -> None:
    """A refund of an exit that names no trip (no pass: an exit priced `pass_used`, or one
    carried over the lane queue's v6 upgrade) and that trip's late entry, stored at once by
    two workers: the refund's batch locks the trip of the exit it undoes (read from the exit's
    row) and waits for the entry's commit, so the trip is open again and counted closed no
    more. Without the wait the entry's batch counts the trip closed by the exit the refund is
    undoing, and the refund's finds no entry to reopen: the trip closed, and counted."""
    refunds, entries = PostgresIngestStore(pg_dsn), PostgresIngestStore(pg_dsn)
    row = trip_row
    exit_q, entry_q = QueueIdentity("x"), QueueIdentity("e")
    exit_ = row("x-1", "P03/x9", 1, "exit", "p9")
    refund = row("x-2", "P03/x9", 2, "exit", None, "paid_not_passed", "record:x-1")
    entry = row("e-2", "P01/e9", 2, "entry", "p9")
    try:
        refunds.store_batch("P03/x9", exit_q, [exit_], 1)  # a stray: its entry is late
        refunds.store_batch("P01/e9", entry_q, [row("e-1", "P01/e9", 1, "toll", None)], 1)
        with psycopg.connect(pg_dsn) as holder:
            # The entry's batch, in flight in another worker: under its trip's lock, it has
            # kept its records and counted the trip closed by the exit, and waits on its
            # epoch's row.
            holder.execute("SELECT 1 FROM lane_ingest.epochs WHERE lane = 'P01/e9' FOR UPDATE")
            entering = asyncio.create_task(
                asyncio.to_thread(entries.store_batch, "P01/e9", entry_q, [entry], 1)
            )
            await eventually(
                lambda: waiting_here(pg_dsn, "transactionid"), what="the entry's batch waits"
            )
            undoing = asyncio.create_task(
                asyncio.to_thread(refunds.store_batch, "P03/x9", exit_q, [refund], 1)
            )
            # Waiting for the trip's lock; without it, it would wait for the exit's stray row
            # the entry's batch removed, having found no entry already.
            await eventually(
                lambda: (
                    waiting_here(pg_dsn, "advisory") or waiting_here(pg_dsn, "transactionid") > 1
                ),
                what="the refund's batch waits",
            )
            holder.commit()
        await entering
        await undoing
        ledger = open_trips(refunds)
        assert ledger == trip_ledger(refunds.records_between(0, END_OF_TIME_US))
        assert ([t.pass_id for t in ledger.open_trips], ledger.closed) == (["p9"], 0)
    finally:
        refunds.close()
        entries.close()


@pytest.mark.parametrize("first", ["exit", "refund"])
async def test_postgres_a_refund_naming_no_trip_and_its_exit_stored_at_once_meet(
    pg_dsn: str, first: str
) -> None:
    """A refund of an exit that names no trip and that very exit, stored at the same moment
    by two workers (a lane's backlog, its batches spread over workers), whichever starts
    first: the second waits for the first's commit, then sees it, so the exit is undone and
    its trip open again. The refund, finding no exit to read its trip from, locks every trip
    group; the exit's batch holds its trip's group. Without that common lock each misses the
    other's uncommitted row: the exit closes its trip and the refund is never applied."""
    exits, refunds = PostgresIngestStore(pg_dsn), PostgresIngestStore(pg_dsn)
    lane, queue = "P03/x8", QueueIdentity("x")
    batches = {
        "exit": (exits, trip_row("x-2", lane, 2, "exit", "p8")),
        "refund": (
            refunds,
            trip_row("x-3", lane, 3, "exit", None, "paid_not_passed", "record:x-2"),
        ),
    }
    second = "refund" if first == "exit" else "exit"
    try:
        exits.store_batch(
            "P01/e8", QueueIdentity("e"), [trip_row("e-1", "P01/e8", 1, "entry", "p8")], 1
        )
        # The exit's worker has seen the epoch: its batch is the one statement.
        exits.store_batch(lane, queue, [trip_row("x-1", lane, 1, "toll", None)], 1)
        with psycopg.connect(pg_dsn) as holder:
            # The first batch, in flight: under its locks it has read and written what it
            # does, and waits on its epoch's row.
            holder.execute("SELECT 1 FROM lane_ingest.epochs WHERE lane = %s FOR UPDATE", (lane,))
            store, row = batches[first]
            storing = asyncio.create_task(
                asyncio.to_thread(store.store_batch, lane, queue, [row], 1)
            )
            await eventually(
                lambda: waiting_here(pg_dsn, "transactionid"), what=f"the {first}'s batch waits"
            )
            store, row = batches[second]
            meeting = asyncio.create_task(
                asyncio.to_thread(store.store_batch, lane, queue, [row], 1)
            )
            # Waiting for the first's locks; without them, on the epoch's row behind the first
            # (a second waiter for a row waits on its tuple lock), its reads done.
            await eventually(
                lambda: waiting_here(pg_dsn, "advisory") or waiting_here(pg_dsn, "tuple"),
                what=f"the {second}'s batch waits",
            )
            holder.commit()
        await storing
        await meeting
        ledger = open_trips(exits)
        assert ledger == trip_ledger(exits.records_between(0, END_OF_TIME_US))
        assert ([t.pass_id for t in ledger.open_trips], ledger.closed) == (["p8"], 0)
    finally:
        exits.close()
        refunds.close()


def test_a_refund_naming_no_trip_reads_the_trip_only_of_an_exit_not_beside_it() -> None:
    """Pure: the exits a batch's refunds undo without naming a trip are read from their rows
    (`BatchTrips.unnamed`) only when the batch does not bring them itself; one it brings is
    locked by its own trip."""
    exit_ = trip_row("x-1", "P03/x6", 1, "exit", "p6")
    refund = trip_row("x-2", "P03/x6", 2, "exit", None, "paid_not_passed", "record:x-1")
    earlier = trip_row("x-3", "P03/x6", 3, "exit", None, "paid_not_passed", "record:x-0")
    marked = batch_trips([exit_, refund, earlier])
    assert (marked.trips, marked.unnamed) == (["p6"], ["x-0"])
    assert marked.undoable == ["x-0", "x-1"]


async def test_postgres_a_refund_naming_no_trip_beside_its_exit_locks_that_trip_alone(
    pg_dsn: str,
) -> None:
    """A lane's backlog brings an exit and its refund naming no trip (no pass) in one batch:
    the exit the refund undoes is the batch's own, its trip among the batch's locks, so the
    batch takes no lock more and is stored while another trip's batch is in flight. It locked
    every trip group instead (as for an exit not held yet), so it waited for every trip batch
    in flight (here until `lock_timeout`: refused as busy) and held back all the others."""
    backlog, entries = PostgresIngestStore(pg_dsn, lock_timeout_s=1), PostgresIngestStore(pg_dsn)
    entry_q = QueueIdentity("e")
    exit_ = trip_row("x-1", "P03/x6", 1, "exit", "p6")
    refund = trip_row("x-2", "P03/x6", 2, "exit", None, "paid_not_passed", "record:x-1")
    try:
        entries.store_batch("P01/e6", entry_q, [trip_row("e-1", "P01/e6", 1, "entry", "p6")], 1)
        with psycopg.connect(pg_dsn) as holder:
            # Another trip's entry batch, in flight: under its trip's locks, it waits on its
            # epoch's row.
            holder.execute("SELECT 1 FROM lane_ingest.epochs WHERE lane = 'P01/e6' FOR UPDATE")
            entering = asyncio.create_task(asyncio.to_thread(
                entries.store_batch, "P01/e6", entry_q,
                [trip_row("e-2", "P01/e6", 2, "entry", "p5")], 1,
            ))  # fmt: skip
            await eventually(
                lambda: waiting_here(pg_dsn, "transactionid"), what="the entry's batch waits"
            )
            stored = await asyncio.to_thread(
                backlog.store_batch, "P03/x6", QueueIdentity("x"), [exit_, refund], 1
            )
            assert [h.seq for h in stored.held] == [1, 2]
            holder.commit()
        await entering
        ledger = open_trips(backlog)
        assert ledger == trip_ledger(backlog.records_between(0, END_OF_TIME_US))
        assert ([t.pass_id for t in ledger.open_trips], ledger.closed) == (["p6", "p5"], 0)
    finally:
        backlog.close()
        entries.close()
