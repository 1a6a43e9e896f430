"""The back-office half of bench/uplink.py: each ingest step beside its raw operation, run in
the same process and the same minute, so the ratios hold on a machine shared with other work.

- decode: `Record.decode` per record against a bare `msgpack.unpackb` of the same bytes.
- store: `store_batch` of 100-record batches against the raw anchors of the same rows into a
  table of the same shape (same keys): one COPY per batch and one executemany per batch, each
  in its own transaction (PostgreSQL); one executemany per batch (SQLite). PostgreSQL also in
  swapped pairs (every second batch fills a hole, as when two workers share a lane) and in
  1-record batches.
- trips: `lane trips`' read (`uplink.trips.open_trips`) on a store of a road's history and on
  one of ten times the history (the same trips open): the ratio is how its cost grows.
- workers: 1 and 2 worker processes storing the batches of many lanes (as a shared
  subscription spreads them), against 1 and 2 processes doing the raw COPY of the same rows,
  which shows how far the machine itself scales at that moment; and the CPU each record cost
  the workers and their database backends, which the machine's other work does not move.

Each figure is the best of `rounds` alternating runs (the machine's load only ever slows a run).
This half alone (bench/uplink.py runs it between its own parts):

    .venv/bin/python -m bench.uplink_ingest [--ingest 20000] [--singles 2000] [--rounds 3]
                                            [--trip-history 20000]
                                            [--worker-records 100000] [--lanes 16]
                                            [--dsn DSN | --no-pg]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import msgpack
import psycopg
from psycopg.conninfo import make_conninfo

from bench import args as bench_args
from lane.core.names import AuthResult, Method, RecordKind
from lane.wire.codec import unpack
from lane.wire.ids import new_id
from uplink.ingest import parse_batch
from uplink.messages import QueueIdentity, encode_batch
from uplink.pg import PostgresIngestStore
from uplink.records import RECORD_VERSION, AuthInfo, Record, RecordDraft
from uplink.sql_store import (
    CLOSED_COUNTS,
    COLUMN_COUNT,
    RECORD_COLUMNS,
    STRAYS,
    NewRows,
    SqlIngestStore,
)
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore
from uplink.trips import open_trips

BATCH = 100
PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=2"


def draft(i: int) -> RecordDraft:
    return RecordDraft(
        kind=RecordKind.TOLL,
        vehicle_id=f"veh-{i}",
        vehicle_class=1 + i % 4,
        amount_minor=1500,
        currency="CNY",
        method=Method.TOKEN,
        account_ref=f"acct-{i % 1000}",
        auth=AuthInfo(AuthResult.APPROVED, acquirer_ref=None, latency_ms=3, offline=True),
        payment_id=str(uuid.uuid4()),
    )


def road_draft(lane: int, seq: int) -> RecordDraft:
    """A closed road's record: lane 2k enters pass k-seq, lane 2k+1 exits it (so every
    exit closes a trip its entry opened, and every entry opens one)."""
    kind = RecordKind.EXIT if lane % 2 else RecordKind.ENTRY
    return replace(draft(seq), kind=kind, entry_plaza="P01", pass_id=f"{lane // 2}-{seq}")


@dataclass(frozen=True)
class LaneBatch:
    lane: str
    queue: QueueIdentity
    records: list[IngestRecord]


def make_batches(
    n: int, lanes: int, size: int = BATCH, draft_of: Callable[[int, int], RecordDraft] | None = None
) -> list[LaneBatch]:
    """`n` records as `size`-record batches of `lanes` lanes, parsed as the ingest parses
    them, interleaved lane by lane as they would arrive; `draft_of(lane, seq)` (default:
    tolls) makes each record."""
    per_lane: list[list[LaneBatch]] = []
    made = draft_of or (lambda _, seq: draft(seq))
    for i in range(lanes):
        lane = f"bench/l{i:03d}"
        queue = QueueIdentity(str(uuid.uuid4()))
        out = []
        for start in range(1, n // lanes + 1, size):
            rows = [
                (seq, Record(new_id(), lane, seq, seq, made(i, seq)).encode())
                for seq in range(start, min(n // lanes, start + size - 1) + 1)
            ]
            payload = encode_batch(lane, queue, "b", rows)
            out.append(LaneBatch(lane, queue, parse_batch(f"uplink/{lane}/records", payload)[1]))
        per_lane.append(out)
    return [b for group in zip(*per_lane, strict=False) for b in group]


def rows(b: LaneBatch) -> list[tuple[object, ...]]:
    """The batch's rows of `records`, as the store inserts them (the raw anchors' input)."""
    return NewRows(b.lane, b.queue.epoch, b.records, 0).rows()


def bench_decode(n: int = 2000) -> None:
    raws = [Record(str(uuid.uuid4()), "bench/l01", i, i, draft(i)).encode() for i in range(n)]

    def raw() -> None:
        for r in raws:
            msgpack.unpackb(r, raw=False)

    def ours() -> None:
        for r in raws:
            Record.decode(r)

    def checked() -> None:  # the field-by-field path every record took before
        for r in raws:
            Record._checked(unpack(r, max_version=RECORD_VERSION))

    t_raw, t_ours, t_checked = (
        min(timeit.repeat(fn, number=1, repeat=5)) / n * 1e6 for fn in (raw, ours, checked)
    )
    print(
        f"decode: Record.decode {t_ours:.1f} µs/record, raw msgpack.unpackb {t_raw:.1f} µs"
        f" -> {t_ours / t_raw:.1f}x raw (field by field: {t_checked:.1f} µs,"
        f" {t_checked / t_raw:.1f}x raw)"
    )


# --- per-batch store against the raw anchors ------------------------------------------------


def copy_batch(conn: psycopg.Connection[tuple[object, ...]], schema: str, b: LaneBatch) -> None:
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(f"COPY {schema}.records ({RECORD_COLUMNS}) FROM STDIN") as cp,
    ):
        for row in rows(b):
            cp.write_row(row)


def executemany_batch(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, b: LaneBatch
) -> None:
    marks = ", ".join(["%s"] * COLUMN_COUNT)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {schema}.records ({RECORD_COLUMNS}) VALUES ({marks})", rows(b)
        )


def interleaved(
    steps: dict[str, Callable[[LaneBatch], object]], batches: Sequence[LaneBatch]
) -> dict[str, float]:
    """Records/s of each step, run batch by batch in turn: a change in the machine's load
    meets every step alike."""
    spent = dict.fromkeys(steps, 0.0)
    for b in batches:
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(b)
            spent[name] += time.perf_counter() - t0
    n = sum(len(b.records) for b in batches)
    return {name: n / t for name, t in spent.items()}


def pg_rates(dsn: str, batches: Sequence[LaneBatch]) -> dict[str, float]:
    """Records/s of store_batch, a COPY and an executemany per batch, each into its own tables."""
    schemas = [f"bench_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    stores = [PostgresIngestStore(dsn, schema=s) for s in schemas]
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return interleaved(
                {
                    "store": lambda b: stores[0].store_batch(b.lane, b.queue, b.records, 0),
                    "copy": lambda b: copy_batch(conn, schemas[1], b),
                    "executemany": lambda b: executemany_batch(conn, schemas[2], b),
                },
                batches,
            )
    finally:
        for st in stores:
            st.drop()
            st.close()


def sqlite_rates(tmp: str, batches: Sequence[LaneBatch]) -> dict[str, float]:
    store = SqliteIngestStore(Path(tmp) / f"store-{uuid.uuid4().hex[:6]}.sqlite")
    anchor = SqliteIngestStore(Path(tmp) / f"anchor-{uuid.uuid4().hex[:6]}.sqlite")
    sql = f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({', '.join(['?'] * COLUMN_COUNT)})"

    def raw(b: LaneBatch) -> None:
        with anchor._transaction() as cur:
            cur.executemany(sql, rows(b))

    try:
        return interleaved(
            {
                "store": lambda b: store.store_batch(b.lane, b.queue, b.records, 0),
                "executemany": raw,
            },
            batches,
        )
    finally:
        store.close()
        anchor.close()


def best(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: max(r[k] for r in runs) for k in runs[0]}


def bench_store(
    dsn: str | None, tmp: str, n: int, rounds: int, singles: int = 2000
) -> dict[str, float]:
    """Prints the figures; returns each store's store_batch rate (records/s)."""
    batches = make_batches(n, lanes=1)
    sq = best([sqlite_rates(tmp, batches) for _ in range(rounds)])
    print(
        f"store SQLite, {BATCH}-record batches: store_batch {sq['store']:,.0f} records/s,"
        f" executemany {sq['executemany']:,.0f}/s -> {sq['store'] / sq['executemany']:.2f}x"
    )
    if dsn is None:
        return {"sqlite": sq["store"]}
    pg = best([pg_rates(dsn, batches) for _ in range(rounds)])
    print(
        f"store PostgreSQL, {BATCH}-record batches: store_batch {pg['store']:,.0f} records/s,"
        f" COPY {pg['copy']:,.0f}/s, executemany {pg['executemany']:,.0f}/s"
        f" -> {pg['store'] / pg['copy']:.2f}x COPY, {pg['store'] / pg['executemany']:.2f}x"
        " executemany"
    )
    # Two workers sharing a lane commit its batches out of order: here every second batch
    # arrives before the one below it, so the other fills a hole and walks the prefix on.
    swapped = [b for pair in zip(batches[1::2], batches[::2], strict=False) for b in pair]
    shuffled = best([pg_rates(dsn, swapped) for _ in range(rounds)])
    print(
        f"store PostgreSQL, {BATCH}-record batches in swapped pairs: store_batch"
        f" {shuffled['store']:,.0f} records/s, COPY {shuffled['copy']:,.0f}/s"
        f" -> {shuffled['store'] / shuffled['copy']:.2f}x COPY"
    )
    # Under light traffic a lane sends each record as it is made: batches of one.
    one = best([pg_rates(dsn, make_batches(singles, lanes=20, size=1)) for _ in range(rounds)])
    print(
        f"store PostgreSQL, 1-record batches (20 lanes): store_batch {one['store']:,.0f}"
        f" batches/s, COPY {one['copy']:,.0f}/s -> {one['store'] / one['copy']:.2f}x COPY"
    )
    # A closed road: batches of entries, each followed by the batch of exits closing them,
    # which keep the open-trips table (a row in, then out) beside the trip index.
    road = make_batches(n, lanes=2, draft_of=road_draft)
    sq_road = best([sqlite_rates(tmp, road) for _ in range(rounds)])
    pg_road = best([pg_rates(dsn, road) for _ in range(rounds)])
    print(
        f"store, {BATCH}-record batches of entries then their exits: SQLite store_batch"
        f" {sq_road['store']:,.0f} records/s, executemany {sq_road['executemany']:,.0f}/s"
        f" -> {sq_road['store'] / sq_road['executemany']:.2f}x; PostgreSQL store_batch"
        f" {pg_road['store']:,.0f} records/s, COPY {pg_road['copy']:,.0f}/s"
        f" -> {pg_road['store'] / pg_road['copy']:.2f}x COPY"
    )
    # An entry lane behind (an outage, then its backlog): each batch of exits comes before the
    # batch of their entries, so the exits are strays until the entries close their trips and
    # prune them (the store's path for batches that meet strays).
    late = [b for pair in zip(road[1::2], road[::2], strict=False) for b in pair]
    sq_late = best([sqlite_rates(tmp, late) for _ in range(rounds)])
    pg_late = best([pg_rates(dsn, late) for _ in range(rounds)])
    print(
        f"store, {BATCH}-record batches of exits then their entries: SQLite store_batch"
        f" {sq_late['store']:,.0f} records/s -> {sq_late['store'] / sq_late['executemany']:.2f}x"
        f" executemany; PostgreSQL store_batch {pg_late['store']:,.0f} records/s"
        f" -> {pg_late['store'] / pg_late['copy']:.2f}x COPY"
    )
    return {"sqlite": sq["store"], "postgres": pg["store"]}


def bench_guard(dsn: str, n: int, rounds: int) -> None:
    """The write guard (`writable_by`, each PostgreSQL write's first statement) pipelined
    before a statement, beside a plain statement in its place, transaction by transaction in
    turn: what the guard adds to a 1-record batch (uplink.pg `_guard`)."""
    store = PostgresIngestStore(dsn, schema=f"bench_{uuid.uuid4().hex[:8]}")
    firsts: tuple[Callable[[psycopg.Connection[tuple[object, ...]]], object], ...] = (
        store._guard,
        lambda conn: conn.execute("SELECT 1"),
    )
    best = [float("inf")] * len(firsts)
    try:
        with store._connected() as conn:
            for _ in range(rounds):
                spent = [0.0] * len(firsts)
                for _ in range(n):
                    for i, first in enumerate(firsts):
                        t0 = time.perf_counter()
                        with conn.pipeline():
                            first(conn)
                            conn.execute("SELECT 1")
                        spent[i] += time.perf_counter() - t0
                best = [min(b, t / n) for b, t in zip(best, spent, strict=True)]
    finally:
        store.drop()
        store.close()
    guard, plain = (t * 1e6 for t in best)
    print(
        f"write guard (writable_by) and a statement, pipelined: {guard:.0f} µs,"
        f" two plain statements {plain:.0f} µs -> {guard / plain:.2f}x"
    )


# --- lane trips over a road's history ------------------------------------------------------


def trips_store_filled(store: IngestStore, closed: int) -> IngestStore:
    """`store` holding a road's history: `closed` trips entered and exited, then 100 open and
    10 exits whose entry never came (1000-record batches: filling is not what is measured)."""
    fills = (
        make_batches(2 * closed, lanes=2, size=1000, draft_of=road_draft),
        make_batches(100, lanes=1, draft_of=lambda _, seq: road_draft(2, seq)),
        make_batches(10, lanes=1, draft_of=lambda _, seq: road_draft(3, 10**9 + seq)),
    )
    for batches in fills:
        for b in batches:
            store.store_batch(b.lane, b.queue, b.records, 0)
    return store


def trips_read_ms(store: IngestStore, rounds: int) -> tuple[float, float]:
    """`lane trips`' read (`open_trips`), and of it the closed count and the unmatched exits
    alone (the counts kept and the strays): best of `rounds`, in ms."""
    assert isinstance(store, SqlIngestStore)
    whole, counts = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ledger = open_trips(store)
        t1 = time.perf_counter()
        with store._snapshot() as cur:
            cur.execute(store._sql(CLOSED_COUNTS))
            cur.execute(store._sql(STRAYS), ("entry", "exit"))
            cur.fetchall()
        whole.append(t1 - t0)
        counts.append(time.perf_counter() - t1)
    assert len(ledger.open_trips) == 100 and len(ledger.unmatched_exits) == 10, ledger
    return min(whole) * 1000, min(counts) * 1000


def bench_trips_read(dsn: str | None, tmp: str, closed: int, rounds: int) -> None:
    """`lane trips` on a store of `closed` closed trips and on one of ten times as many (the
    same open trips and unmatched exits): how its cost grows with the road's history."""
    made: dict[str, Callable[[], IngestStore]] = {
        "SQLite": lambda: SqliteIngestStore(Path(tmp) / f"trips-{uuid.uuid4().hex[:6]}.sqlite")
    }
    if dsn is not None:
        made["PostgreSQL"] = lambda: PostgresIngestStore(
            dsn, schema=f"bench_{uuid.uuid4().hex[:8]}"
        )
    for name, make in made.items():
        small, large = (trips_store_filled(make(), n) for n in (closed, 10 * closed))
        try:
            (a, a_counts), (b, b_counts) = (trips_read_ms(st, rounds) for st in (small, large))
        finally:
            for st in (small, large):
                if isinstance(st, PostgresIngestStore):
                    st.drop()
                st.close()
        print(
            f"lane trips (open_trips), {name}: {closed:,} closed trips {a:.1f} ms,"
            f" {10 * closed:,} {b:.1f} ms -> {b / a:.1f}x; the closed count and unmatched"
            f" exits {a_counts:.1f} ms and {b_counts:.1f} ms -> {b_counts / a_counts:.1f}x"
        )


# --- worker processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    dsn: str
    schema: str
    method: str  # "store" or "copy"
    n: int
    lanes: int
    workers: int
    road: bool = False  # closed-road batches (entries, then their exits) instead of tolls


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process of this machine has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker(job: Job, me: int, go: Barrier, spent: Queue[float]) -> None:
    # Lanes are dealt to workers as a shared subscription would: each batch to one of them.
    draft_of = road_draft if job.road else None
    batches = make_batches(job.n, job.lanes, draft_of=draft_of)
    mine = [b for b in batches if int(b.lane[-3:]) % job.workers == me]
    name = f"{job.schema}-{me}"
    store = PostgresIngestStore(make_conninfo(job.dsn, application_name=name), schema=job.schema)
    schema = job.schema
    with psycopg.connect(job.dsn, autocommit=True) as conn:
        store.lanes()  # its connection is open: its backend can be found by name
        found = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
        assert found is not None, name
        backend = int(found[0]) if job.method == "store" else conn.info.backend_pid
        go.wait()
        start = time.process_time() + cpu_s(backend)
        for b in mine:
            if job.method == "store":
                store.store_batch(b.lane, b.queue, b.records, 0)
            else:
                copy_batch(conn, schema, b)
        spent.put(time.process_time() + cpu_s(backend) - start)
    store.close()


def workers_rate(
    dsn: str, method: str, workers: int, n: int, lanes: int, *, road: bool = False
) -> tuple[float, float]:
    """Records/s of `workers` processes, and the CPU seconds per record they and their
    database backends used (PostgreSQL on this machine: the backends' /proc entries)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    setup = PostgresIngestStore(dsn, schema=schema)
    ctx = mp.get_context("fork")
    go = ctx.Barrier(workers + 1)
    spent: Queue[float] = ctx.Queue()
    job = Job(dsn, schema, method, n, lanes, workers, road)
    procs = [ctx.Process(target=_worker, args=(job, i, go, spent)) for i in range(workers)]
    try:
        for p in procs:
            p.start()
        go.wait(timeout=120)
        t0 = time.perf_counter()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - t0
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"a {method} worker failed")
        return n / elapsed, sum(spent.get(timeout=10) for _ in procs) / n
    finally:
        setup.drop()
        setup.close()


def bench_workers(dsn: str, n: int, lanes: int, rounds: int) -> None:
    runs, cpu = [], []
    for _ in range(rounds):
        measured = {f"{m}{w}": workers_rate(dsn, m, w, n, lanes) for w in (1, 2)
                    for m in ("store", "copy")}  # fmt: skip
        runs.append({k: rate for k, (rate, _) in measured.items()})
        cpu.append({k: -per for k, (_, per) in measured.items()})  # best: the least CPU
    r, c = best(runs), {k: -v * 1e6 for k, v in best(cpu).items()}
    print(
        f"workers PostgreSQL, {lanes} lanes, {n:,} records: 1 worker {r['store1']:,.0f} records/s,"
        f" 2 workers {r['store2']:,.0f}/s -> {r['store2'] / r['store1']:.2f}x;"
        f" raw COPY 1 process {r['copy1']:,.0f}/s, 2 processes {r['copy2']:,.0f}/s"
        f" -> {r['copy2'] / r['copy1']:.2f}x; 2 workers at {r['store2'] / r['copy2']:.2f}x"
        " 2 COPY processes"
    )
    # The machine's other work moves the rates, not the CPU each record costs: two workers
    # that cost what one does per record reach 2x one wherever two cores are free for them.
    print(
        f"workers PostgreSQL, CPU per record (worker and its database backend): 1 worker"
        f" {c['store1']:.1f} µs, 2 workers {c['store2']:.1f} µs"
        f" -> {c['store2'] / c['store1']:.2f}x;"
        f" COPY 1 process {c['copy1']:.1f} µs, 2 processes {c['copy2']:.1f} µs"
        f" -> {c['copy2'] / c['copy1']:.2f}x"
    )
    # Closed-road batches: two workers take turns only on a trip id in common (the locks of
    # uplink.pg.trip_lock_keys), here an exit and the entry of its trip, dealt to each.
    road = best(
        [{f"{w}": workers_rate(dsn, "store", w, n, lanes, road=True)[0] for w in (1, 2)}
         for _ in range(rounds)]
    )  # fmt: skip
    print(
        f"workers PostgreSQL, closed-road batches: 1 worker {road['1']:,.0f} records/s,"
        f" 2 workers {road['2']:,.0f}/s -> {road['2'] / road['1']:.2f}x"
    )


# --- this half alone --------------------------------------------------------------------------


def reachable(dsn: str) -> str | None:
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        print(f"postgres: skipped ({exc.__class__.__name__})")
        return None
    return dsn


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of this half, which bench/uplink.py takes too."""
    ap.add_argument("--ingest", type=int, default=20_000, help="records of the store benchmark")
    ap.add_argument(
        "--singles", type=int, default=2000, help="1-record batches of the store benchmark"
    )
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs; the best is shown")
    ap.add_argument("--lanes", type=int, default=16, help="lanes of the worker benchmark")
    # A run of 20,000 records lasts under a second, where starting and ending the processes
    # weighs on the ratio: 100,000 keep each run to several seconds.
    ap.add_argument(
        "--worker-records", type=int, default=100_000, help="records of the worker benchmark"
    )
    ap.add_argument("--dsn", default=PG_DSN, help="PostgreSQL (on this machine: /proc is read)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")


def main() -> None:
    ap = bench_args.parser(__doc__)
    add_arguments(ap)
    ap.add_argument(
        "--trip-history", type=int, default=20_000, help="closed trips of lane trips' read"
    )
    args = ap.parse_args()
    dsn = None if args.no_pg else reachable(args.dsn)
    bench_decode()
    with tempfile.TemporaryDirectory(prefix="lane-bench-ingest-") as tmp:
        bench_store(dsn, tmp, args.ingest, args.rounds, args.singles)
        bench_trips_read(dsn, tmp, args.trip_history, args.rounds)
    if dsn is not None:
        bench_guard(dsn, args.singles, args.rounds)
        bench_workers(dsn, args.worker_records, args.lanes, args.rounds)


if __name__ == "__main__":
    main()
