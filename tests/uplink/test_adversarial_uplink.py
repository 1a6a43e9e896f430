"""Adversarial uplink checks at the forwarder and the parser: forged, misrouted and confused
acks; inconsistent batches.

A record is deleted from the lane only when an ack names its own seq, id and content digest;
nothing else the network or a confused back office says may make the lane delete anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from polling import eventually
from uplink_kit import Client, draft, fast_link, lane_side, queued, recs, start_lane

from lane.refusal_log import REFUSAL_LOG_EVERY_S
from lane.wire.codec import PayloadError, pack
from lane.wire.topics import uplink_acks
from sim.broker import Mosquitto
from uplink.forwarder import Forwarder
from uplink.ingest import parse_batch
from uplink.messages import Ack, Held, QueueIdentity, decode_batch, digest, encode_ack, encode_batch
from uplink.queue import RecordQueue
from uplink.queue_thread import QueueThread
from uplink.records import Record

LANE = "p1/l1"
Q = QueueIdentity("e1")


class FakeLink:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.reconnects = 0
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        self.sent.append((topic, payload))


def rows(q: RecordQueue) -> list[tuple[int, bytes]]:
    return q.batch(0, 1000)


async def test_acks_that_do_not_name_our_records_delete_nothing(tmp_path: Path) -> None:
    link = FakeLink()
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10**8) as q:
        for i in range(3):
            q.append(draft(i))
        before = rows(q)
        epoch = q.identity.epoch
        mine = queued(q)
        fw = Forwarder(QueueThread(q), link, LANE, poll_interval=0.01, ack_timeout=1000.0)
        task = asyncio.create_task(fw.run())
        try:
            await eventually(lambda: len(link.sent) == 1, what="first batch")
            for other in ("p1/l2", "p1/l1/", "P1/L1", "p1", ""):
                fw.handle_ack(encode_ack(Ack(other, epoch, "b", tuple(mine))))
            fw.handle_ack(encode_ack(Ack(LANE, "old-epoch", "b", tuple(mine))))
            # Right seqs, other ids (a replayed batch of an older queue file, a forgery).
            fw.handle_ack(
                encode_ack(Ack(LANE, epoch, "b", tuple(Held(h.seq, "x", h.digest) for h in mine)))
            )
            # Right ids, other content (the store holds another version).
            other = tuple(Held(h.seq, h.record_id, digest(b"other")) for h in mine)
            fw.handle_ack(encode_ack(Ack(LANE, epoch, "b", other)))
            fw.handle_ack(pack({"lane": LANE, "upto": 3}))  # the old bare-seq ack
            fw.handle_ack(pack({"lane": LANE, "upto": 3}, v=2))
            fw.handle_ack(b"\x93\x01\x02\x03")
            await asyncio.sleep(0.05)
            assert rows(q) == before  # byte for byte
            fw.handle_ack(encode_ack(Ack(LANE, epoch, "b", tuple(mine[1:2]))))
            await eventually(lambda: len(rows(q)) == 2, what="the exact ack")
            assert rows(q) == [before[0], before[2]]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_an_exact_ack_of_a_record_not_sent_yet_is_honoured(tmp_path: Path) -> None:
    """After a restart the store may already hold what the lane has not resent: naming the
    exact record proves the store holds it, so deleting it loses nothing."""
    link = FakeLink()
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10**8) as q:
        for i in range(5):
            q.append(draft(i))
        link.connected.clear()  # not connected: nothing is sent
        fw = Forwarder(QueueThread(q), link, LANE, poll_interval=0.01)
        task = asyncio.create_task(fw.run())
        try:
            fw.handle_ack(encode_ack(Ack(LANE, q.identity.epoch, "b", tuple(queued(q, 2)))))
            await eventually(lambda: [s for s, _ in rows(q)] == [3, 4, 5], what="exact ack")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_a_batch_whose_records_disagree_with_its_header_is_refused() -> None:
    good = recs(1, 2, lane=LANE)
    pairs = [(r.seq, r.data) for r in good]
    body = decode_batch(encode_batch(LANE, Q, "b1", pairs))
    forged = pack(
        {
            "lane": LANE,
            "epoch": "e1",
            "base": 0,
            "batch_id": "b1",
            "first_seq": 5,
            "last_seq": 6,
            "records": list(body.records),
        },
        v=2,
    )
    with pytest.raises(PayloadError):
        parse_batch(f"uplink/{LANE}/records", forged)
    # Right records, right lane field, but published on another lane's topic.
    with pytest.raises(PayloadError):
        parse_batch("uplink/p1/l2/records", encode_batch(LANE, Q, "b2", pairs))
    # Swapped order inside the batch.
    with pytest.raises(PayloadError):
        parse_batch(f"uplink/{LANE}/records", encode_batch(LANE, Q, "b3", pairs[::-1]))


def test_records_of_another_lane_inside_a_lane_batch_are_refused() -> None:
    theirs = recs(1, 1, lane="p1/l2")
    with pytest.raises(PayloadError, match="p1/l2"):
        parse_batch(f"uplink/{LANE}/records", encode_batch(LANE, Q, "b", [(1, theirs[0].data)]))


@pytest.mark.parametrize(
    "topic",
    ["uplink/l1/records", "uplink/a/b/c/records", "uplink/records", "uplink/p1/l1\n/records"],
)
def test_only_plaza_lane_topics_are_lanes(topic: str) -> None:
    """The batch and its records name the lane of the topic: only the topic's lane id is
    wrong (a trailing newline passed the `$` of the ingest's own copy of the pattern)."""
    lane = topic.removeprefix("uplink/").removesuffix("records").removesuffix("/")
    rec = Record("r", lane, 1, 1, draft(1)).encode()
    with pytest.raises(PayloadError):
        parse_batch(topic, encode_batch(lane, Q, "b", [(1, rec)]))


@pytest.mark.parametrize("lane", ["ด่าน/l01", "स्टेशन/l1", "cafe\u0301/l01"])
def test_a_lane_whose_id_has_combining_marks_has_its_records_taken(lane: str) -> None:
    """`[lane] id` always took these (pydantic's Rust regex); the ingest's Python pattern
    refused every batch of such a lane, which then piled up in its queue for good."""
    rec = Record("r", lane, 1, 1, draft(1)).encode()
    batch, stored = parse_batch(f"uplink/{lane}/records", encode_batch(lane, Q, "b", [(1, rec)]))
    assert (batch.lane, len(stored)) == (lane, 1)


async def test_a_flood_of_acks_not_taken_writes_a_line_a_kind_a_window_the_rest_counted(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, or acks of another lane or queue epoch, faster than anyone reads (somebody with
    the broker password): a line per kind a window, the rest counted and said in one line once
    the window passed, not a line a message."""
    now = [1_000.0]
    side = lane_side(
        mosquitto.host, mosquitto.port, lane_id, tmp_path / "q.sqlite", wall=lambda: now[0]
    )
    epoch = side.queue.identity.epoch
    flood = [
        b"\xc1",
        encode_ack(Ack(f"{lane_id}x", epoch, "b", ())),
        encode_ack(Ack(lane_id, "old-epoch", "b", ())),
    ] * 20
    raw = await Client(fast_link(mosquitto.host, mosquitto.port, f"raw-{lane_id}")).start()
    await start_lane(side)
    try:
        await side.link.wait_connected(5)
        for payload in flood:
            await raw.link.publish(uplink_acks(lane_id), payload)
        log = side.forwarder.refusal_log
        await eventually(lambda: sum(n for _, n in log.windows.values()) == len(flood) - 3)
        side.forwarder.say_counted()  # the window has not passed: nothing to say yet
        now[0] += REFUSAL_LOG_EVERY_S
        side.forwarder.say_counted()
    finally:
        await side.stop()
        await raw.stop()
        side.queue.close()
    lines = [r for r in caplog.records if r.__dict__.get("topic") == uplink_acks(lane_id)]
    assert [(r.getMessage(), r.__dict__.get("refused")) for r in lines] == [
        ("uplink bad ack", None),
        ("uplink ack for another lane", None),
        ("uplink ack for another queue epoch", None),
        ("uplink bad ack, more counted", 19),
        ("uplink ack for another lane, more counted", 19),
        ("uplink ack for another queue epoch, more counted", 19),
    ]
