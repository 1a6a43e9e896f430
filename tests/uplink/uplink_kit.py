"""Helpers for the uplink tests: drafts, a lane (queue + link + forwarder), an ingest worker,
polling without fixed sleeps, and the end-of-test reconciliation."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psycopg
from polling import eventually

from lane.transport.mqtt import Incoming, MqttLink
from uplink.forwarder import Forwarder, UplinkStatus
from uplink.ingest import Ingest
from uplink.messages import Held, QueueIdentity, digest
from uplink.pg import PostgresIngestStore
from uplink.queue import RecordQueue
from uplink.queue_thread import QueueThread
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.sql_store import COLUMN_COUNT, RECORD_COLUMNS, refund_columns, trip_columns
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore

# A lane process appending in a loop; it prints "seq record_id" after each append returned.
APPENDER = """
import sys
from pathlib import Path
from uplink.queue import RecordQueue
from uplink.records import AuthInfo, RecordDraft
d = RecordDraft(kind="toll", vehicle_id="v", vehicle_class=1, amount_minor=700, currency="CNY",
                method="token", account_ref="a", auth=AuthInfo("approved"))
q = RecordQueue(Path(sys.argv[1]), sys.argv[2], 10**9)
n = int(sys.argv[3]) if len(sys.argv) > 3 else -1
while n != 0:
    n -= 1
    r = q.append(d)
    print(r.seq, r.record_id, flush=True)
"""


FAST_LINK = {"backoff_min": 0.02, "backoff_max": 0.2}


def draft(i: int = 0, amount: int = 500) -> RecordDraft:
    return RecordDraft(
        kind="toll",
        vehicle_id=f"veh-{i}",
        vehicle_class=1,
        amount_minor=amount,
        currency="CNY",
        method="token",
        account_ref=f"acct-{i % 7}",
        auth=AuthInfo("approved", acquirer_ref=None, latency_ms=12, offline=True),
        payment_id=f"pay-{i}",
    )


# The queue identity of the records `recs` makes (a test of epochs makes its own).
Q = QueueIdentity("epoch-1")


def recs(
    first: int, last: int, lane: str = "p09/l04", tag: str = "", amount: int = 500
) -> list[IngestRecord]:
    out = []
    for seq in range(first, last + 1):
        rec = Record(
            f"rid-{tag}{lane}-{seq}", lane, seq, 1_700_000_000_000_000 + seq, draft(seq, amount)
        )
        out.append(IngestRecord.of(rec, rec.encode()))
    return out


def held(records: list[IngestRecord]) -> tuple[Held, ...]:
    """What an ack names for records held exactly as given."""
    return tuple(Held(r.seq, r.record_id, digest(r.data)) for r in records)


def beside(store: IngestStore, statement: str, rows: Sequence[tuple[object, ...]]) -> None:
    """Run `statement` over `rows` on the store's database from a connection of its own and
    commit, as an operator or another process would; `{t}` comes before each table name and
    `?` marks a parameter."""
    if isinstance(store, SqliteIngestStore):
        db = sqlite3.connect(store.path)
        try:
            with db:
                db.executemany(statement.format(t=""), rows)
        finally:
            db.close()
    else:
        assert isinstance(store, PostgresIngestStore)
        with psycopg.connect(store.dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.executemany(statement.format(t=f"{store.schema}.").replace("?", "%s"), rows)


def committed_behind(store: IngestStore, records: list[IngestRecord], epoch: str) -> None:
    """The records of a batch that filled a hole, committed by a worker that stopped before it
    walked the prefix on: the rows are there, the epoch's row is as the batch's commit left
    it (its prefix stops below the batch and its highest seq is above it already)."""
    rows = [
        (r.record_id, r.lane, epoch, r.seq, r.ts_us, r.kind, r.amount_minor, r.currency,
         r.data, 1, *trip_columns(r.trip), *refund_columns(r.refund))
        for r in records
    ]  # fmt: skip
    marks = ", ".join("?" * COLUMN_COUNT)
    beside(store, f"INSERT INTO {{t}}records ({RECORD_COLUMNS}) VALUES ({marks})", rows)


def queued(q: RecordQueue, upto: int = 1 << 62) -> list[Held]:
    """An exact ack of the lane's own records with seq <= upto (what a back office holding
    them byte for byte names)."""
    return [
        Held(seq, Record.decode(data).record_id, digest(data))
        for seq, data in q.batch(0, 1 << 30)
        if seq <= upto
    ]


async def until_status(
    fw: Forwarder, pred: Callable[[UplinkStatus], bool], within: float = 10.0, what: str = ""
) -> UplinkStatus:
    """Poll the forwarder's status until `pred` holds (bounded)."""

    async def matching() -> UplinkStatus | None:
        status = await fw.status()
        return status if pred(status) else None

    found: UplinkStatus = await eventually(matching, within=within, what=what or str(pred))
    return found


def fast_link(host: str, port: int, client_id: str, **kw: object) -> MqttLink:
    link = MqttLink(host, port, client_id, **kw)  # type: ignore[arg-type]
    link.backoff_min = FAST_LINK["backoff_min"]
    link.backoff_max = FAST_LINK["backoff_max"]
    return link


@dataclass
class LaneSide:
    """One lane's uplink: its queue, its MqttLink (acks routed to the forwarder), the forwarder."""

    queue: RecordQueue
    link: MqttLink
    forwarder: Forwarder
    written: dict[int, str] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def append(self, n: int, start: int = 0) -> list[Record]:
        out = []
        for i in range(start, start + n):
            rec = await asyncio.to_thread(self.queue.append, draft(i))
            self.written[rec.seq] = rec.record_id
            self.forwarder.wake()
            out.append(rec)
        return out

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


def lane_side(
    host: str, port: int, lane: str, path: Path, *, max_bytes: int = 50_000_000, **fw: object
) -> LaneSide:
    queue = RecordQueue(path, lane, max_bytes)
    box: list[Forwarder] = []

    async def handler(msg: Incoming) -> None:
        box[0].handle_ack(msg.payload)

    link = fast_link(host, port, f"lane-{lane}")
    forwarder = Forwarder(
        QueueThread(queue),
        link,
        lane,
        **{"ack_timeout": 0.2, "backoff_min": 0.02, "backoff_max": 0.5, **fw},  # type: ignore[arg-type]
    )
    box.append(forwarder)
    link.subscriptions = forwarder.subscriptions()
    link.handler = handler
    return LaneSide(queue, link, forwarder)


async def start_lane(side: LaneSide) -> LaneSide:
    side.tasks += [asyncio.create_task(side.link.run()), asyncio.create_task(side.forwarder.run())]
    return side


@dataclass
class Client:
    """An MqttLink run as a task: started connected, stopped cleanly."""

    link: MqttLink
    task: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        self.task = asyncio.create_task(self.link.run())
        await self.link.wait_connected(5)
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


@dataclass
class Worker(Client):
    ingest: Ingest = field(kw_only=True)

    async def stop(self) -> None:
        await super().stop()
        await self.ingest.close()


def worker(host: str, port: int, store: IngestStore, client_id: str, group: str) -> Worker:
    ingest = Ingest(store, group=group)
    link = ingest.make_link(host, port, client_id)
    link.backoff_min = FAST_LINK["backoff_min"]
    link.backoff_max = FAST_LINK["backoff_max"]
    return Worker(link, ingest=ingest)


async def drained(side: LaneSide, store: IngestStore, lane: str, within: float = 15.0) -> None:
    """Wait until the lane's queue is empty and the store holds every written record."""

    def done() -> bool:
        return side.queue.backlog().count == 0 and store.count(lane) >= len(side.written)

    await eventually(done, within, what="uplink drained")


def reconcile(side: LaneSide, store: IngestStore, lane: str) -> None:
    """Every record the lane wrote is in the back office exactly once, with its own seq."""
    held = store.records(lane)
    assert side.queue.record_count_total() == len(side.written)
    assert len(held) == len(side.written), (len(held), len(side.written))
    assert len({r.record_id for r in held}) == len(held)
    assert {r.seq: r.record_id for r in held} == side.written
    assert store.gaps(lane) == []
    assert store.contiguous(lane, side.queue.identity.epoch) == max(side.written)
    assert side.queue.backlog().count == 0


def append_then_kill(path: Path, lane: str, at_least: int, confirmed: dict[int, str]) -> None:
    """Run APPENDER in a child, SIGKILL it once `at_least` more appends were confirmed."""
    child = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(path), lane],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    target = len(confirmed) + at_least
    while len(confirmed) < target:
        raw = child.stdout.readline()
        assert raw, child.stderr.read() if child.stderr else b""
        seq_text, rid = raw.decode().split()
        confirmed[int(seq_text)] = rid
    child.kill()  # SIGKILL in the middle of the append loop
    rest, _ = child.communicate()
    for text in rest.decode().splitlines():
        parts = text.split()
        if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 36:
            confirmed[int(parts[0])] = parts[1]
