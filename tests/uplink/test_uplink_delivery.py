"""End to end: queue -> forwarder -> mosquitto -> ingest -> store -> ack -> delete, with faults.

Every test ends with a reconciliation: each record the lane wrote is in the back office exactly
once (same seq, same record id), no gaps, and the lane's queue is empty.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from polling import eventually
from uplink_kit import (
    Q,
    Worker,
    append_then_kill,
    draft,
    drained,
    fast_link,
    lane_side,
    queued,
    reconcile,
    start_lane,
    worker,
)

from lane.transport.mqtt import Incoming, MqttLink
from lane.wire.codec import pack
from lane.wire.topics import uplink_acks, uplink_records
from sim.broker import Mosquitto, running_mosquitto
from uplink.ingest import Ingest
from uplink.messages import Ack, encode_ack, encode_batch
from uplink.queue import QueueDiskFull, QueueFull, RecordQueue
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestStore

Factory = Callable[[], IngestStore]


def group() -> str:
    return f"g{uuid.uuid4().hex[:8]}"  # a share group per test: no stale sessions between tests


async def test_records_flow_in_batches_and_are_deleted_after_the_ack(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", group()).start()
    side = await start_lane(
        lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q.sqlite", batch_size=40)
    )
    try:
        await side.link.wait_connected(5)
        await side.append(250)
        await drained(side, store, lane_id)
        reconcile(side, store, lane_id)
        status = await side.forwarder.status()
        assert status.backlog == 0 and status.link_up and status.oldest_age_s is None
        assert status.last_ack_wall is not None and status.sent_batches >= 7
        assert w.ingest.stats.records == 250
    finally:
        await side.stop()
        await w.stop()
        store.close()


async def test_broker_down_for_a_while_then_back(lane_id: str, tmp_path: Path) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    with running_mosquitto() as broker:
        w = await worker(broker.host, broker.port, store, f"in-{lane_id}", group()).start()
        side = await start_lane(
            lane_side(broker.host, broker.port, lane_id, tmp_path / "q.sqlite", batch_size=25)
        )
        try:
            await side.link.wait_connected(5)
            await side.append(60)
            await drained(side, store, lane_id)
            await asyncio.to_thread(broker.stop)
            await eventually(lambda: not side.link.connected.is_set(), what="link down")
            await side.append(140, start=60)  # the lane keeps working: records wait on disk
            status = await side.forwarder.status()
            assert not status.link_up and status.backlog == 140
            assert status.oldest_age_s is not None
            await asyncio.to_thread(broker.start)
            await drained(side, store, lane_id)
            reconcile(side, store, lane_id)
            assert side.link.reconnects >= 1
        finally:
            await side.stop()
            await w.stop()
            store.close()


async def test_ingest_down_then_up(mosquitto: Mosquitto, lane_id: str, tmp_path: Path) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    g = group()
    w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", g).start()
    side = await start_lane(
        lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q.sqlite", batch_size=20)
    )
    try:
        await side.link.wait_connected(5)
        await side.append(30)
        await drained(side, store, lane_id)
        await w.stop()
        await side.append(170, start=30)
        await eventually(lambda: side.forwarder.resent_batches >= 2, what="resends while down")
        assert side.queue.backlog().count == 170  # nothing deleted without the back office
        w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", g).start()
        await drained(side, store, lane_id)
        reconcile(side, store, lane_id)
    finally:
        await side.stop()
        await w.stop()
        store.close()


async def test_ingest_killed_between_commit_and_ack(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    captured: asyncio.Queue[Incoming] = asyncio.Queue()

    async def capture(msg: Incoming) -> None:
        await captured.put(msg)

    tap = fast_link(
        mosquitto.host,
        mosquitto.port,
        f"tap-{lane_id}",
        subscriptions=[(uplink_records(lane_id), 1)],
        handler=capture,
    )
    tap_task = asyncio.create_task(tap.run())
    # The dying ingest commits, then "dies" before its ack: its link never reaches a broker.
    dying = Ingest(store)
    dying.attach(MqttLink("127.0.0.1", 1, "never-connected"))
    side = lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q.sqlite", batch_size=30)
    await side.append(90)  # before the forwarder starts: three full batches, one window
    w: Worker | None = None
    try:
        await tap.wait_connected(5)
        await start_lane(side)
        for _ in range(3):
            await dying.handle(await asyncio.wait_for(captured.get(), 5))
        assert store.count(lane_id) == 90
        assert dying.stats.ack_failures >= 3 and dying.stats.acks_sent == 0
        assert side.queue.backlog().count == 90  # committed in the back office, not yet acked
        w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", group()).start()
        await drained(side, store, lane_id)
        reconcile(side, store, lane_id)
        assert w.ingest.stats.duplicates >= 30  # the resends collapsed onto the stored records
        assert w.ingest.stats.records == 0
    finally:
        await side.stop()
        tap_task.cancel()
        await asyncio.gather(tap_task, return_exceptions=True)
        if w is not None:
            await w.stop()
        store.close()


async def test_two_workers_share_the_subscription(
    mosquitto: Mosquitto, tmp_path: Path, store_factory: Factory
) -> None:
    g = group()
    lanes = [f"t{uuid.uuid4().hex[:6]}/l0{i}" for i in range(2)]
    stores = [store_factory(), store_factory()]
    workers = [
        await worker(mosquitto.host, mosquitto.port, stores[i], f"in-{lanes[0]}-{i}", g).start()
        for i in range(2)
    ]
    sides = [
        await start_lane(
            lane_side(
                mosquitto.host, mosquitto.port, lane, tmp_path / f"q{i}.sqlite", batch_size=10
            )
        )
        for i, lane in enumerate(lanes)
    ]
    try:
        for s in sides:
            await s.link.wait_connected(5)
        await asyncio.gather(*(s.append(200) for s in sides))
        for s, lane in zip(sides, lanes, strict=True):
            await drained(s, stores[0], lane, within=30)
            reconcile(s, stores[0], lane)
        assert all(w.ingest.stats.batches > 0 for w in workers)  # the load was shared
        assert sum(w.ingest.stats.records for w in workers) == 400
    finally:
        for s in sides:
            await s.stop()
        for w in workers:
            await w.stop()


async def test_forwarder_restart_resumes_from_disk(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    path = tmp_path / "q.sqlite"
    side = await start_lane(lane_side(mosquitto.host, mosquitto.port, lane_id, path))
    await side.link.wait_connected(5)
    await side.append(120)  # no ingest yet: all of it waits
    await side.stop()
    side.queue.close()
    w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", group()).start()
    again = await start_lane(lane_side(mosquitto.host, mosquitto.port, lane_id, path))
    again.written = side.written
    try:
        await again.append(30, start=120)
        await drained(again, store, lane_id)
        reconcile(again, store, lane_id)
    finally:
        await again.stop()
        await w.stop()
        store.close()


async def test_garbage_batches_are_counted_not_acked_and_the_worker_survives(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", group()).start()
    acks: asyncio.Queue[Incoming] = asyncio.Queue()

    async def on_ack(msg: Incoming) -> None:
        await acks.put(msg)

    spy = fast_link(
        mosquitto.host,
        mosquitto.port,
        f"spy-{lane_id}",
        subscriptions=[(uplink_acks(lane_id), 1)],
        handler=on_ack,
    )
    spy_task = asyncio.create_task(spy.run())
    side = await start_lane(
        lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q.sqlite")
    )
    try:
        await spy.wait_connected(5)
        topic = uplink_records(lane_id)
        bad = [
            b"\xff\x00garbage",
            pack({"lane": lane_id}),
            encode_batch(lane_id, Q, "b1", [(1, b"not a record")]),
            encode_batch("other/lane", Q, "b2", [(1, b"x")]),
            encode_batch(lane_id, Q, "b3", [(1, b"x" * 10_000_000)]),  # a 10 MB record
        ]
        for payload in bad:
            await spy.publish(topic, payload)
        await eventually(lambda: w.ingest.stats.rejected == len(bad), what="rejections")
        assert acks.empty() and store.count(lane_id) == 0
        await side.link.wait_connected(5)
        await side.append(20)
        await drained(side, store, lane_id)
        reconcile(side, store, lane_id)
    finally:
        await side.stop()
        spy_task.cancel()
        await asyncio.gather(spy_task, return_exceptions=True)
        await w.stop()
        store.close()


async def test_window_bounds_unacked_batches_and_bad_acks_are_ignored(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    seen: list[Incoming] = []

    async def tap_handler(msg: Incoming) -> None:
        seen.append(msg)

    tap = fast_link(
        mosquitto.host,
        mosquitto.port,
        f"tap-{lane_id}",
        subscriptions=[(uplink_records(lane_id), 1)],
        handler=tap_handler,
    )
    tap_task = asyncio.create_task(tap.run())
    side = lane_side(
        mosquitto.host,
        mosquitto.port,
        lane_id,
        tmp_path / "q.sqlite",
        batch_size=10,
        window=3,
        ack_timeout=30.0,
    )
    await side.append(100)
    try:
        await tap.wait_connected(5)
        await start_lane(side)
        await eventually(lambda: len(seen) == 3, what="a full window")
        await asyncio.sleep(0.1)
        assert len(seen) == 3  # no ack: nothing more goes out
        side.forwarder.handle_ack(b"garbage")
        epoch = side.queue.identity.epoch
        sent = tuple(queued(side.queue, 30))
        side.forwarder.handle_ack(encode_ack(Ack("other/lane", epoch, "x", sent)))
        side.forwarder.handle_ack(encode_ack(Ack(lane_id, "another-epoch", "x", sent)))
        side.forwarder.handle_ack(pack({"lane": lane_id, "upto": 100}))  # a bare seq: refused
        await asyncio.sleep(0.05)
        assert side.queue.backlog().count == 100
        side.forwarder.handle_ack(encode_ack(Ack(lane_id, epoch, "x", sent)))
        await eventually(lambda: side.queue.backlog().count == 70, what="ack of the window")
        await eventually(lambda: len(seen) == 6, what="the next window")
        assert side.queue.last_seq() == 100
    finally:
        await side.stop()
        tap_task.cancel()
        await asyncio.gather(tap_task, return_exceptions=True)


async def test_queue_bound_refuses_then_recovers_after_drain(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    side = await start_lane(
        lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q.sqlite", max_bytes=60_000)
    )
    w: Worker | None = None
    try:
        await side.link.wait_connected(5)
        with pytest.raises(QueueFull):
            await side.append(10_000)  # no back office: the bound is reached
        assert (await side.forwarder.status()).high_water_reached
        w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", group()).start()
        await drained(side, store, lane_id)
        n = len(side.written)
        await side.append(5, start=n)  # room again after the acks
        await drained(side, store, lane_id)
        reconcile(side, store, lane_id)
    finally:
        await side.stop()
        if w is not None:
            await w.stop()
        store.close()


async def test_disk_full_loses_nothing(mosquitto: Mosquitto, lane_id: str, tmp_path: Path) -> None:
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    path = tmp_path / "q.sqlite"
    RecordQueue(path, lane_id, 10**9).close()
    full = RecordQueue(path, lane_id, 10**9, sqlite_pragmas={"max_page_count": 14})
    written: dict[int, str] = {}
    with pytest.raises(QueueDiskFull):
        for i in range(10_000):
            rec = full.append(draft(i))
            written[rec.seq] = rec.record_id
    full.close()
    side = await start_lane(lane_side(mosquitto.host, mosquitto.port, lane_id, path))
    side.written = written
    w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", group()).start()
    try:
        await side.append(5, start=len(written))
        await drained(side, store, lane_id)
        reconcile(side, store, lane_id)
    finally:
        await side.stop()
        await w.stop()
        store.close()


async def test_lane_process_killed_during_traffic_then_restarted(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    """A separate lane process appends while this one forwards; SIGKILL it twice."""
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    path = tmp_path / "q.sqlite"
    side = await start_lane(
        lane_side(mosquitto.host, mosquitto.port, lane_id, path, poll_interval=0.02)
    )
    w = await worker(mosquitto.host, mosquitto.port, store, f"in-{lane_id}", group()).start()
    confirmed: dict[int, str] = {}
    try:
        await side.link.wait_connected(5)
        for _ in range(2):  # kill, restart, kill again
            await asyncio.to_thread(append_then_kill, path, lane_id, 120, confirmed)
        last = side.queue.last_seq()
        # A record committed just before the kill may never have been printed: confirmed can
        # have holes, the queue cannot.
        assert last >= max(confirmed)
        await eventually(
            lambda: side.queue.backlog().count == 0 and store.count(lane_id) == last,
            within=15,
            what="drain after the kills",
        )
        held = {r.seq: r.record_id for r in store.records(lane_id)}
        assert sorted(held) == list(range(1, last + 1))  # every appended record, once, no gap
        assert all(held[seq] == rid for seq, rid in confirmed.items())
        assert side.queue.record_count_total() == last
        assert store.gaps(lane_id) == []
    finally:
        await side.stop()
        await w.stop()
        store.close()
