"""Adversarial uplink checks: forged, misrouted and over-reaching acks; conflicting batches.

A record is deleted from the lane only when the back office provably holds it; nothing the
network or a confused back office says may make the lane delete more than that.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from uplink_kit import draft, eventually, recs

from barrier.wire import PayloadError, pack
from uplink.forwarder import Forwarder
from uplink.ingest import parse_batch
from uplink.messages import Ack, decode_ack, decode_batch, encode_ack, encode_batch
from uplink.queue import RecordQueue
from uplink.store import SeqConflictError, SqliteIngestStore

LANE = "p1/l1"


class FakeLink:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.reconnects = 0
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        self.sent.append((topic, payload))


def seqs(q: RecordQueue) -> list[int]:
    return [s for s, _ in q.batch(0, 1000)]


async def test_ack_beyond_what_was_sent_deletes_only_what_was_sent(tmp_path: Path) -> None:
    link = FakeLink()
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10**8) as q:
        q.append(draft(1))
        fw = Forwarder(q, link, LANE, poll_interval=1000.0, ack_timeout=1000.0)
        task = asyncio.create_task(fw.run())
        try:
            await eventually(lambda: len(link.sent) == 1, what="first batch")
            q.append(draft(2))  # committed, not announced: not sent yet
            q.append(draft(3))
            fw.handle_ack(encode_ack(Ack(LANE, 1 << 62)))  # "I hold everything"
            await eventually(lambda: 1 not in seqs(q), what="the ack of seq 1")
            await eventually(lambda: len(link.sent) == 2, what="second batch")
            assert seqs(q) == [2, 3]
            assert decode_batch(link.sent[1][1]).first_seq == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_ack_for_another_lane_or_garbage_deletes_nothing(tmp_path: Path) -> None:
    link = FakeLink()
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10**8) as q:
        for i in range(3):
            q.append(draft(i))
        fw = Forwarder(q, link, LANE, poll_interval=0.01, ack_timeout=1000.0)
        task = asyncio.create_task(fw.run())
        try:
            await eventually(lambda: len(link.sent) == 1, what="first batch")
            for other in ("p1/l2", "p1/l1/", "P1/L1", "p1", ""):
                fw.handle_ack(encode_ack(Ack(other, 3)))
            fw.handle_ack(pack({"lane": LANE, "upto": True}))  # a bool is not a seq
            fw.handle_ack(pack({"lane": LANE, "upto": 3.0}))
            fw.handle_ack(pack({"lane": LANE, "upto": -1}))
            fw.handle_ack(pack({"lane": LANE, "upto": "3"}))
            fw.handle_ack(b"\x93\x01\x02\x03")
            await asyncio.sleep(0.05)
            assert seqs(q) == [1, 2, 3]
            assert fw.acks.empty()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_stale_ack_after_restart_deletes_nothing_unsent(tmp_path: Path) -> None:
    """A back office ack from before a lane restart arrives before anything was resent."""
    link = FakeLink()
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10**8) as q:
        for i in range(5):
            q.append(draft(i))
        link.connected.clear()  # not connected: nothing is sent
        fw = Forwarder(q, link, LANE, poll_interval=0.01)
        task = asyncio.create_task(fw.run())
        try:
            fw.handle_ack(encode_ack(Ack(LANE, 5)))
            await asyncio.sleep(0.05)
            assert seqs(q) == [1, 2, 3, 4, 5]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_ack_with_a_bool_or_negative_upto_is_refused() -> None:
    for bad in (True, -1, 1.5, None):
        with pytest.raises(PayloadError):
            decode_ack(pack({"lane": LANE, "upto": bad}))


def test_a_record_id_reused_under_another_lane_is_a_conflict(tmp_path: Path) -> None:
    store = SqliteIngestStore(tmp_path / "bo.sqlite")
    try:
        a = recs(1, 1, lane="p1/l1")
        store.store_batch("p1/l1", a, 1)
        # Lane l2's seq 1 arrives carrying l1's record id: it is not held, never acked.
        stolen = [r.__class__(**{**r.__dict__, "lane": "p1/l2"}) for r in a]
        with pytest.raises(SeqConflictError):
            store.store_batch("p1/l2", stolen, 2)
        assert store.contiguous("p1/l2") == 0
    finally:
        store.close()


def test_a_batch_repeating_one_record_twice_is_a_conflict(tmp_path: Path) -> None:
    store = SqliteIngestStore(tmp_path / "bo.sqlite")
    try:
        one = recs(1, 2, lane=LANE)
        twice = [one[0], one[0].__class__(**{**one[0].__dict__, "seq": 2})]
        with pytest.raises(SeqConflictError):
            store.store_batch(LANE, twice, 1)
        assert store.contiguous(LANE) == 0
        assert store.count(LANE) == 0  # the whole batch rolled back
    finally:
        store.close()


def test_a_batch_whose_records_disagree_with_its_header_is_refused() -> None:
    good = recs(1, 2, lane=LANE)
    rows = [(r.seq, r.data) for r in good]
    # The header says seq 5..6 but the records are 1..2.
    body = decode_batch(encode_batch(LANE, "b1", rows))
    forged = pack(
        {
            "lane": LANE,
            "batch_id": "b1",
            "first_seq": 5,
            "last_seq": 6,
            "records": list(body.records),
        }
    )
    with pytest.raises(PayloadError):
        parse_batch(f"uplink/{LANE}/records", forged)
    # Right records, right lane field, but published on another lane's topic.
    with pytest.raises(PayloadError):
        parse_batch("uplink/p1/l2/records", encode_batch(LANE, "b2", rows))
    # Swapped order inside the batch.
    with pytest.raises(PayloadError):
        parse_batch(f"uplink/{LANE}/records", encode_batch(LANE, "b3", rows[::-1]))
