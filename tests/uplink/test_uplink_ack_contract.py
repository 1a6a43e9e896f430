"""The ack contract end to end (real mosquitto, SQLite and a real PostgreSQL database of the
test's own): a lane deletes a record only when the back office holds that very record, byte for
byte. Replays after a queue-file replacement, forged batches for a live lane, a same-id
different-content record and a held table lock must never make the lane delete anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from polling import eventually
from uplink_kit import (
    Client,
    Worker,
    draft,
    drained,
    fast_link,
    lane_side,
    start_lane,
    until_status,
    worker,
)

from lane.transport.mqtt import Incoming
from lane.wire.topics import uplink_acks, uplink_records
from sim.broker import Mosquitto
from uplink.cli import report
from uplink.ingest import Ingest
from uplink.messages import Ack, decode_ack, decode_batch, digest, encode_ack, encode_batch
from uplink.pg import PostgresIngestStore
from uplink.records import Record
from uplink.store import IngestStore

Factory = Callable[[], IngestStore]


class Wire(Client):
    """A client that sees every batch and ack of a lane, and can publish like anyone."""

    def __init__(self, mosquitto: Mosquitto, lane: str) -> None:
        self.batches: list[bytes] = []
        self.acks: list[bytes] = []
        super().__init__(
            fast_link(
                mosquitto.host,
                mosquitto.port,
                f"wire-{lane}",
                subscriptions=[(uplink_records(lane), 1), (uplink_acks(lane), 1)],
                handler=self._on,
            )
        )

    async def _on(self, msg: Incoming) -> None:
        (self.acks if msg.topic.endswith("/acks") else self.batches).append(msg.payload)


@dataclass
class Office:
    """The back office of a test: its store, a worker, and a wire tap on the lane's topics."""

    store: IngestStore
    worker: Worker
    wire: Wire
    mosquitto: Mosquitto


@pytest.fixture
async def office(
    store_factory: Factory, mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Office]:
    caplog.set_level(logging.INFO)
    store = store_factory()
    wire = await Wire(mosquitto, lane_id).start()
    w = worker(mosquitto.host, mosquitto.port, store, f"ingest-{lane_id}", group(lane_id))
    try:
        yield Office(store, await w.start(), wire, mosquitto)
    finally:
        await w.stop()
        await wire.stop()


def group(lane: str) -> str:
    return "g-" + lane.replace("/", "-")  # a share group name has no '/'


def stored_bytes(store: IngestStore, lane: str, epoch: str) -> dict[int, bytes]:
    return {r.seq: r.data for r in store.records(lane) if r.epoch == epoch}


async def test_a_replayed_batch_after_a_queue_replacement_deletes_nothing(
    office: Office, lane_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = office.mosquitto.host, office.mosquitto.port
    store, w, wire = office.store, office.worker, office.wire
    old = await start_lane(lane_side(host, port, lane_id, tmp_path / "old.sqlite", batch_size=10))
    new = lane_side(host, port, lane_id, tmp_path / "new.sqlite", batch_size=10)
    try:
        await old.link.wait_connected(5)
        await old.append(20)
        await drained(old, store, lane_id)
        old_epoch = old.queue.identity.epoch
        await old.stop()
        old.queue.close()
        await w.stop()  # the back office is away while the lane is restored
        replay = max(wire.batches, key=lambda b: len(decode_batch(b).records))
        replayed = decode_batch(replay)

        # The queue file is replaced by a new one: seq restarts at 1 under a new epoch.
        assert new.queue.identity.epoch != old_epoch
        await new.append(10)
        before = new.queue.batch(0, 100)
        await start_lane(new)
        await new.link.wait_connected(5)

        # The old batch is replayed and a real ingest (the same code, the real store) takes
        # it: it holds those records, so it acks them, through the broker, to the lane.
        replayer = Ingest(store)
        rlink = fast_link(host, port, f"replayer-{lane_id}")
        replayer.attach(rlink)
        rtask = asyncio.create_task(rlink.run())
        try:
            await rlink.wait_connected(5)
            seen = len(wire.acks)
            await replayer.handle(Incoming(uplink_records(lane_id), replay))
            await eventually(lambda: len(wire.acks) > seen, what="the replay's ack")
            ack = decode_ack(wire.acks[seen])
            assert ack.epoch == old_epoch
            assert [h.seq for h in ack.stored] == list(
                range(replayed.first_seq, replayed.last_seq + 1)
            )
            # The same ack relabelled with the new epoch, as a forger would send it.
            await wire.link.publish(
                uplink_acks(lane_id),
                encode_ack(Ack(lane_id, new.queue.identity.epoch, ack.batch_id, ack.stored)),
            )
            await until_status(new.forwarder, lambda st: st.last_ack_wall is not None)
        finally:
            rtask.cancel()
            await asyncio.gather(rtask, return_exceptions=True)
        assert new.queue.batch(0, 100) == before  # nothing deleted, byte for byte
        assert any(r.getMessage() == "uplink ack for another queue epoch" for r in caplog.records)

        # The back office returns: the new records are stored beside the old ones.
        await w.start()
        await drained(new, store, lane_id, within=20)
        assert stored_bytes(store, lane_id, new.queue.identity.epoch) == dict(before)
        assert len(stored_bytes(store, lane_id, old_epoch)) == 20
        assert w.ingest.stats.conflicts == 0 and w.ingest.stats.epoch_changes == 1
        change = [r for r in caplog.records if r.getMessage() == "uplink lane queue epoch changed"]
        assert change and change[0].previous_epochs == [old_epoch]  # type: ignore[attr-defined]
    finally:
        await new.stop()


async def test_forged_batches_for_a_live_lane_never_delete_its_records(
    office: Office, lane_id: str, tmp_path: Path
) -> None:
    host, port = office.mosquitto.host, office.mosquitto.port
    store, wire = office.store, office.wire
    side = await start_lane(lane_side(host, port, lane_id, tmp_path / "q.sqlite", batch_size=10))
    try:
        await side.link.wait_connected(5)
        await side.append(10)
        await drained(side, store, lane_id)
        identity = decode_batch(wire.batches[0]).queue  # sniffed from the wire
        # Window after window, a forger publishes valid-looking records for the seqs the lane
        # will use next, under the lane's own epoch.
        forged = []
        for first in (11, 21):
            rows = [
                (seq, Record(f"forged-{seq}", lane_id, seq, 1, draft(seq, amount=1)).encode())
                for seq in range(first, first + 10)
            ]
            forged.append(encode_batch(lane_id, identity, f"f{first}", rows))
            await wire.link.publish(uplink_records(lane_id), forged[-1])
        await eventually(lambda: store.count(lane_id) == 30, what="the forgeries stored")
        await side.append(20, start=10)  # the lane's own seqs 11..30
        mine = side.queue.batch(0, 100)
        assert [s for s, _ in mine] == list(range(11, 31))
        await eventually(lambda: len(store.conflicts()) == 20, what="every seq in conflict")
        await eventually(lambda: len(wire.acks) >= 3, what="acks of the forged batches")
        # Again, now that the lane holds its own records at those seqs: the store holds the
        # forgeries byte for byte, so each is acked (by seq) while the lane's records wait.
        acks = len(wire.acks)
        for payload in forged:
            await wire.link.publish(uplink_records(lane_id), payload)

        def reforged() -> bool:
            named = {h.seq for a in wire.acks[acks:] for h in decode_ack(a).stored}
            return named >= set(range(11, 31))

        await eventually(reforged, what="acks of the re-forgeries, naming seqs 11..30")
        before = (await side.forwarder.status()).last_ack_wall
        await side.link.publish(uplink_records(lane_id), wire.batches[0])  # a replay too
        # Acks are applied in order: once the replay's is, so are the forgeries'.
        await until_status(side.forwarder, lambda st: st.last_ack_wall != before, what="replay")
        assert side.queue.batch(0, 100) == mine  # still all there, byte for byte
        held = {row.conflict.seq: row.conflict for row in store.conflicts()}
        assert sorted(held) == list(range(11, 31))
        assert held[11].offered_digest == digest(mine[0][1]).hex()
        assert held[11].held_record_id == "forged-11"
    finally:
        await side.stop()


async def test_same_record_id_with_other_content_is_never_acked(
    office: Office, lane_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = office.mosquitto.host, office.mosquitto.port
    store, wire = office.store, office.wire
    side = lane_side(host, port, lane_id, tmp_path / "q.sqlite")
    try:
        await side.append(5)
        mine = side.queue.batch(0, 100)
        # Another version of the same records (same ids and seqs, another amount) got into
        # the back office first.
        other = [(seq, _reamount(Record.decode(data), 1).encode()) for seq, data in mine]
        await wire.link.publish(
            uplink_records(lane_id), encode_batch(lane_id, side.queue.identity, "x", other)
        )
        await eventually(lambda: store.count(lane_id) == 5, what="the other version stored")
        await start_lane(side)
        await eventually(lambda: len(store.conflicts()) == 5, what="conflicts", within=15)
        assert side.queue.batch(0, 100) == mine  # nothing deleted, byte for byte
        assert stored_bytes(store, lane_id, side.queue.identity.epoch) == dict(other)
        # Only the other version's own batch was acknowledged; the lane's is refused, by name.
        await eventually(lambda: len(wire.acks) >= 2, what="the refusal")
        later = [decode_ack(a) for a in wire.acks[1:]]
        assert later and all(a.stored == () for a in later)
        assert {h.seq: h.digest for a in later for h in a.refused} == {
            seq: digest(data) for seq, data in mine
        }
        status = await until_status(side.forwarder, lambda st: st.refused == 5, what="refused")
        assert status.backlog == 5 and status.inflight_batches == 0  # kept, out of the window
        logged = [r for r in caplog.records if r.getMessage() == "uplink record conflict"]
        assert logged and logged[0].levelno == logging.ERROR
        first = logged[0].__dict__
        assert first["lane"] == lane_id and first["seq"] == 1
        assert first["stored_digest"] == digest(other[0][1]).hex()
        assert first["offered_digest"] == digest(mine[0][1]).hex()
        with contextlib.redirect_stdout(io.StringIO()) as text:
            report(store)
        out = text.getvalue()
        assert "conflicts=5" in out and digest(mine[0][1]).hex() in out
    finally:
        await side.stop()


def _reamount(rec: Record, amount: int) -> Record:
    return replace(rec, draft=replace(rec.draft, amount_minor=amount))


async def test_a_held_table_lock_times_out_with_a_clear_line_and_is_retried(
    pg_dsn: str,
    mosquitto: Mosquitto,
    lane_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    host, port = mosquitto.host, mosquitto.port
    store = PostgresIngestStore(pg_dsn, lock_timeout_s=0.2)
    w: Worker = worker(host, port, store, f"ingest-{lane_id}", group(lane_id))
    w.ingest.busy_backoff_s = 0.05
    await w.start()
    side = lane_side(host, port, lane_id, tmp_path / "q.sqlite")
    locker = psycopg.connect(pg_dsn)
    try:
        locker.execute("LOCK TABLE lane_ingest.records IN ACCESS EXCLUSIVE MODE")
        await side.append(10)
        before = side.queue.batch(0, 100)
        await start_lane(side)
        await eventually(lambda: w.ingest.stats.store_errors >= 1, what="a batch given up")
        busy = [r for r in caplog.records if r.getMessage() == "uplink store busy"]
        assert busy and "lock timeout" in busy[0].__dict__["error"]
        assert busy[0].__dict__["lane"] == lane_id and busy[0].__dict__["attempt"] == 1
        assert w.ingest.stats.busy_retries >= w.ingest.busy_retries
        # Each try of a batch waits twice the last before the next; the last waits for no try.
        waits = {(r.__dict__["attempt"], r.__dict__["retry_s"]) for r in busy}
        assert waits == {(1, 0.05), (2, 0.1), (3, 0.2), (4, None)}
        assert side.queue.batch(0, 100) == before  # nothing acked, nothing deleted
        locker.rollback()  # the lock is released: the lane's resend goes through
        await drained(side, store, lane_id, within=20)
        assert stored_bytes(store, lane_id, side.queue.identity.epoch) == dict(before)
    finally:
        locker.close()
        await side.stop()
        await w.stop()
        store.close()
