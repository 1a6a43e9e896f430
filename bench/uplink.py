"""Uplink benchmark: durable enqueue latency, backlog drain rate, ingest rate (prints figures).

    .venv/bin/python -m bench.uplink [--backlog 50000] [--appends 2000] [--drain-lanes 4]
                                     [--ingest 20000] [--singles 2000] [--rounds 3]
                                     [--worker-records 100000] [--lanes 16]
                                     [--dsn DSN | --no-pg]

1. enqueue: `RecordQueue.append` with durable commits (WAL, synchronous=FULL), p50/p99/max.
2. drain: a backlog (default 50,000 records, as after an outage) forwarded over a private
   mosquitto to one ingest worker (SQLite, and PostgreSQL when reachable), end-to-end acked
   and deleted: records/s until the lane's queue is empty, and that as a share of the same
   store's own `store_batch` rate.
3. ingest, beside the raw operations in the same run (bench/uplink_ingest.py): decode against
   msgpack, `store_batch` against a COPY / executemany per batch, 1 and 2 worker processes
   against 1 and 2 COPY processes (rates, and CPU per record of the workers and their
   PostgreSQL backends, read from /proc: the database must run on this machine).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/uplink.py`, this file would shadow the `uplink` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import asyncio  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from multiprocessing.synchronize import Event  # noqa: E402

from bench import args as bench_args  # noqa: E402
from bench.uplink_ingest import (  # noqa: E402
    add_arguments,
    bench_decode,
    bench_store,
    bench_workers,
    draft,
    reachable,
)
from lane.transport.mqtt import Incoming, MqttLink  # noqa: E402
from sim.broker import running_mosquitto  # noqa: E402
from uplink.forwarder import Forwarder  # noqa: E402
from uplink.ingest import Ingest  # noqa: E402
from uplink.pg import PostgresIngestStore  # noqa: E402
from uplink.queue import RecordQueue  # noqa: E402
from uplink.queue_thread import QueueThread  # noqa: E402
from uplink.sqlite_store import SqliteIngestStore  # noqa: E402
from uplink.store import IngestStore  # noqa: E402

LANE = "bench/l01"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def bench_enqueue(tmp: Path, n: int) -> None:
    with RecordQueue(tmp / "enqueue.sqlite", LANE, 10**9) as q:
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            a = time.perf_counter()
            q.append(draft(i))
            lat.append((time.perf_counter() - a) * 1000)
        total = time.perf_counter() - t0
    print(
        f"enqueue (durable, {n} appends): p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms"
        f"  max {max(lat):.2f} ms  mean {statistics.mean(lat):.2f} ms  {n / total:,.0f} appends/s"
    )


def fill_backlog(path: Path, lane: str, n: int) -> None:
    # Filling without fsync keeps the benchmark short; draining uses the durable settings.
    with RecordQueue(path, lane, 10**10, sqlite_pragmas={"synchronous": "OFF"}) as q:
        for i in range(n):
            q.append(draft(i))


async def forward(host: str, port: int, backlogs: list[tuple[str, Path]], ready: Event) -> None:
    """The lanes' side of a drain: one queue, link and forwarder per lane, until all are empty."""
    sides = []
    for lane, path in backlogs:
        queue = RecordQueue(path, lane, 10**10)
        link = MqttLink(host, port, f"bench-lane-{uuid.uuid4().hex[:6]}")
        fw = Forwarder(QueueThread(queue), link, lane, batch_size=100, window=4, ack_timeout=10.0)
        link.subscriptions = fw.subscriptions()

        async def on_ack(msg: Incoming, fw: Forwarder = fw) -> None:
            fw.handle_ack(msg.payload)

        link.handler = on_ack
        sides.append((queue, link, fw))
    tasks = [asyncio.create_task(link.run()) for _, link, _ in sides]
    for _, link, _ in sides:
        await link.wait_connected(5)
    ready.set()
    tasks += [asyncio.create_task(fw.run()) for _, _, fw in sides]
    try:
        for queue, _, _ in sides:
            while (await asyncio.to_thread(queue.backlog)).count > 0:  # noqa: ASYNC110 - a file
                await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for queue, _, _ in sides:
            queue.close()


def _lanes_process(host: str, port: int, backlogs: list[tuple[str, Path]], ready: Event) -> None:
    asyncio.run(forward(host, port, backlogs, ready))


async def drain(tmp: Path, store: IngestStore, n: int, lanes: int, pipelined: bool) -> float:
    """Records/s from a backlog of `n` records over `lanes` lanes (forwarded by a process of
    their own, as lanes are other machines) into one ingest worker, until all are stored."""
    backlogs = [(f"bench/d{i:02d}", tmp / f"backlog-{uuid.uuid4().hex[:6]}.sqlite")
                for i in range(lanes)]  # fmt: skip
    for lane, path in backlogs:
        fill_backlog(path, lane, n // lanes)
    total = (n // lanes) * lanes
    with running_mosquitto() as broker:
        ingest = Ingest(store, group=f"bench{uuid.uuid4().hex[:6]}")
        ilink = ingest.make_link(broker.host, broker.port, f"bench-ingest-{uuid.uuid4().hex[:6]}")
        if not pipelined:  # each batch decoded, stored and acked before the next is read
            ilink.handler = ingest.handle
        task = asyncio.create_task(ilink.run())
        await ilink.wait_connected(5)
        ctx = mp.get_context("fork")
        ready = ctx.Event()
        child = ctx.Process(target=_lanes_process, args=(broker.host, broker.port, backlogs, ready))
        child.start()
        try:
            await asyncio.to_thread(ready.wait, 30)
            t0 = time.perf_counter()
            stored = lambda: sum(store.count(ln) for ln, _ in backlogs)  # noqa: E731
            while await asyncio.to_thread(stored) < total:  # noqa: ASYNC110 - polls the store
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - t0
            await asyncio.to_thread(child.join, 60)
        finally:
            if child.is_alive():
                child.kill()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ingest.close()
        for lane, _ in backlogs:
            assert store.count(lane) == n // lanes and store.gaps(lane) == [], "reconciliation"
        return total / elapsed


def bench_drain(
    tmp: Path, label: str, make: Callable[[], IngestStore], n: int, *, lanes: int, own: float
) -> None:
    """The pipelined worker and, in turn, one batch at a time (`Ingest.handle`)."""
    rates = {}
    for pipelined in (False, True):
        store = make()
        try:
            rates[pipelined] = asyncio.run(drain(tmp, store, n, lanes, pipelined))
        finally:
            if isinstance(store, PostgresIngestStore):
                store.drop()
            store.close()
    print(
        f"drain {n:,} backlog of {lanes} lane(s) -> mosquitto -> 1 ingest worker ({label}):"
        f" {rates[True]:,.0f} records/s -> {rates[True] / own:.2f}x its store_batch;"
        f" one batch at a time {rates[False]:,.0f}/s -> pipelined {rates[True] / rates[False]:.2f}x"
    )


def main() -> None:
    ap = bench_args.parser(__doc__)
    ap.add_argument("--backlog", type=int, default=50_000, help="records of the drains")
    ap.add_argument("--appends", type=int, default=2_000, help="durable appends timed")
    ap.add_argument("--drain-lanes", type=int, default=4, help="lanes of the second drain")
    add_arguments(ap)
    args = ap.parse_args()
    dsn = None if args.no_pg else reachable(args.dsn)
    with tempfile.TemporaryDirectory(prefix="lane-bench-uplink-") as t:
        tmp = Path(t)
        bench_enqueue(tmp, args.appends)
        bench_decode()
        own = bench_store(dsn, t, args.ingest, args.rounds, args.singles)
        for lanes in (1, args.drain_lanes):
            bench_drain(
                tmp, "SQLite", lambda: SqliteIngestStore(tmp / f"drain-{uuid.uuid4().hex}.sqlite"),
                args.backlog, lanes=lanes, own=own["sqlite"],
            )  # fmt: skip
            if dsn is not None:
                bench_drain(
                    tmp, "PostgreSQL",
                    lambda: PostgresIngestStore(dsn, schema=f"bench_{uuid.uuid4().hex[:8]}"),
                    args.backlog, lanes=lanes, own=own["postgres"],
                )  # fmt: skip
        if dsn is not None:
            bench_workers(dsn, args.worker_records, args.lanes, args.rounds)


if __name__ == "__main__":
    main()
