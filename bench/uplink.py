"""Uplink benchmark: durable enqueue latency, backlog drain rate, ingest rate (prints figures).

    .venv/bin/python -m bench.uplink [--backlog 50000] [--appends 2000] [--no-pg]

1. enqueue: `RecordQueue.append` with durable commits (WAL, synchronous=FULL), p50/p99/max.
2. drain: a backlog (default 50,000 records, as after an outage) forwarded over a private
   mosquitto to one ingest worker (SQLite, and PostgreSQL when reachable), end-to-end acked
   and deleted: records/s until the lane's queue is empty.
3. ingest: `store_batch` of 100-record batches straight into SQLite and PostgreSQL.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/uplink.py`, this file would shadow the `uplink` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402

import psycopg  # noqa: E402

from lane.transport.mqtt import Incoming, MqttLink  # noqa: E402
from sim.broker import running_mosquitto  # noqa: E402
from uplink.forwarder import Forwarder  # noqa: E402
from uplink.ingest import Ingest, parse_batch  # noqa: E402
from uplink.messages import QueueIdentity, encode_batch  # noqa: E402
from uplink.pg import PostgresIngestStore  # noqa: E402
from uplink.queue import RecordQueue  # noqa: E402
from uplink.queue_thread import QueueThread  # noqa: E402
from uplink.records import AuthInfo, Record, RecordDraft  # noqa: E402
from uplink.sqlite_store import SqliteIngestStore  # noqa: E402
from uplink.store import IngestStore  # noqa: E402

PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=2"
LANE = "bench/l01"


def draft(i: int) -> RecordDraft:
    return RecordDraft(
        kind="toll",
        vehicle_id=f"veh-{i}",
        vehicle_class=1 + i % 4,
        amount_minor=1500,
        currency="CNY",
        method="token",
        account_ref=f"acct-{i % 1000}",
        auth=AuthInfo("approved", acquirer_ref=None, latency_ms=3, offline=True),
        payment_id=str(uuid.uuid4()),
    )


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


def fill_backlog(path: Path, n: int) -> None:
    # Filling without fsync keeps the benchmark short; draining uses the durable settings.
    with RecordQueue(path, LANE, 10**10, sqlite_pragmas={"synchronous": "OFF"}) as q:
        for i in range(n):
            q.append(draft(i))


async def drain(path: Path, store: IngestStore, n: int) -> float:
    with running_mosquitto() as broker:
        ingest = Ingest(store, group=f"bench{uuid.uuid4().hex[:6]}")
        ilink = ingest.make_link(broker.host, broker.port, f"bench-ingest-{uuid.uuid4().hex[:6]}")
        queue = RecordQueue(path, LANE, 10**10)
        box: list[Forwarder] = []

        async def on_ack(msg: Incoming) -> None:
            box[0].handle_ack(msg.payload)

        llink = MqttLink(broker.host, broker.port, f"bench-lane-{uuid.uuid4().hex[:6]}")
        fw = Forwarder(QueueThread(queue), llink, LANE, batch_size=100, window=4, ack_timeout=10.0)
        box.append(fw)
        llink.subscriptions = fw.subscriptions()
        llink.handler = on_ack
        tasks = [asyncio.create_task(ilink.run()), asyncio.create_task(llink.run())]
        await ilink.wait_connected(5)
        await llink.wait_connected(5)
        t0 = time.perf_counter()
        tasks.append(asyncio.create_task(fw.run()))
        try:
            while (await asyncio.to_thread(queue.backlog)).count > 0:  # noqa: ASYNC110 - polls a file
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            queue.close()
        assert store.count(LANE) == n and store.gaps(LANE) == [], "reconciliation failed"
        return n / elapsed


def bench_ingest(store: IngestStore, n: int, label: str) -> None:
    queue = QueueIdentity(str(uuid.uuid4()))
    batches = []
    for start in range(1, n + 1, 100):
        rows = [
            (seq, Record(str(uuid.uuid4()), LANE, seq, seq, draft(seq)).encode())
            for seq in range(start, min(n, start + 99) + 1)
        ]
        payload = encode_batch(LANE, queue, "b", rows)
        batches.append(parse_batch(f"uplink/{LANE}/records", payload)[1])
    t0 = time.perf_counter()
    for b in batches:
        store.store_batch(LANE, queue, b, 0)
    rate = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in batches[: len(batches) // 4]:
        store.store_batch(LANE, queue, b, 0)  # resends: all duplicates
    dup = (len(batches) // 4) * 100 / (time.perf_counter() - t0)
    print(
        f"ingest {label} (100-record batches, one commit each): {rate:,.0f} records/s new,"
        f" {dup:,.0f} records/s duplicates"
    )


def with_pg(use: bool, fn: Callable[[IngestStore], None]) -> None:
    if not use:
        return
    try:
        with psycopg.connect(PG_DSN) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        print(f"postgres: skipped ({exc.__class__.__name__})")
        return
    store = PostgresIngestStore(PG_DSN, schema=f"bench_{uuid.uuid4().hex[:8]}")
    try:
        fn(store)
    finally:
        store.drop()
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlog", type=int, default=50_000)
    ap.add_argument("--appends", type=int, default=2_000)
    ap.add_argument("--ingest", type=int, default=20_000)
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lane-bench-uplink-") as t:
        tmp = Path(t)
        bench_enqueue(tmp, args.appends)

        for label in ("sqlite", "postgres"):
            path = tmp / f"backlog-{label}.sqlite"
            fill_backlog(path, args.backlog)
            if label == "sqlite":
                store = SqliteIngestStore(tmp / "drain-ingest.sqlite")
                rate = asyncio.run(drain(path, store, args.backlog))
                store.close()
                print(
                    f"drain {args.backlog:,} backlog -> mosquitto -> ingest (SQLite):"
                    f" {rate:,.0f} records/s"
                )
            else:

                def run_pg(store: IngestStore, path: Path = path) -> None:
                    rate = asyncio.run(drain(path, store, args.backlog))
                    print(
                        f"drain {args.backlog:,} backlog -> mosquitto -> ingest (PostgreSQL):"
                        f" {rate:,.0f} records/s"
                    )

                with_pg(not args.no_pg, run_pg)

        sq = SqliteIngestStore(tmp / "ingest.sqlite")
        bench_ingest(sq, args.ingest, "SQLite")
        sq.close()
        with_pg(not args.no_pg, lambda s: bench_ingest(s, args.ingest, "PostgreSQL"))


if __name__ == "__main__":
    main()
