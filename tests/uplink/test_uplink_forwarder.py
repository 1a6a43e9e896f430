"""Forwarder behaviour against a small fake link (the broker is tested in test_uplink_delivery)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from polling import eventually
from uplink_kit import draft, queued

from lane.metrics import LaneMetrics, Snapshot
from lane.transport.mqtt import LinkDown
from uplink.forwarder import Forwarder, UplinkStatus
from uplink.messages import Ack, decode_batch, encode_ack
from uplink.queue import RecordQueue
from uplink.queue_thread import QueueThread


class FakeLink:
    """Connected or not; records what was published; can refuse publishes (broker gone)."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.reconnects = 0
        self.refuse = False
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        if self.refuse:
            raise LinkDown("fake broker gone")
        self.sent.append((topic, payload))


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def test_publish_failures_back_off_exponentially_with_jitter(tmp_path: Path) -> None:
    link, sleeps = FakeLink(), Sleeps()
    with RecordQueue(tmp_path / "q.sqlite", "p1/l1", 10**8) as q:
        q.append(draft(1))
        link.refuse = True
        fw = Forwarder(
            QueueThread(q),
            link,
            "p1/l1",
            backoff_min=0.1,
            backoff_max=1.0,
            sleep=sleeps,
            rand=lambda: 0.5,
        )
        task = asyncio.create_task(fw.run())
        try:
            await eventually(lambda: len(sleeps.delays) >= 6, what="six retries")
            assert sleeps.delays[:6] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
            link.refuse = False
            await eventually(lambda: len(link.sent) == 1, what="the send after recovery")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert decode_batch(link.sent[0][1]).first_seq == 1


async def test_unacked_batch_is_resent_with_growing_timeouts(tmp_path: Path) -> None:
    link = FakeLink()
    now = [100.0]
    with RecordQueue(tmp_path / "q.sqlite", "p1/l1", 10**8) as q:
        q.append(draft(1))
        fw = Forwarder(
            QueueThread(q),
            link,
            "p1/l1",
            ack_timeout=0.05,
            backoff_max=10.0,
            poll_interval=0.01,
            clock=lambda: now[0],
            rand=lambda: 0.5,
        )
        task = asyncio.create_task(fw.run())
        try:
            await eventually(lambda: len(link.sent) == 1, what="first send")
            now[0] += 0.049
            await asyncio.sleep(0.05)
            assert len(link.sent) == 1  # not yet due
            now[0] += 0.002
            await eventually(lambda: len(link.sent) == 2, what="first resend")
            now[0] += 0.05  # the second wait is twice as long
            await asyncio.sleep(0.05)
            assert len(link.sent) == 2
            now[0] += 0.051
            await eventually(lambda: len(link.sent) == 3, what="second resend")
            assert fw.resent_batches == 2
            fw.handle_ack(encode_ack(Ack("p1/l1", q.identity.epoch, "b", tuple(queued(q)))))
            await eventually(lambda: q.backlog().count == 0, what="ack")
            now[0] += 100
            await asyncio.sleep(0.05)
            assert len(link.sent) == 3  # acked: never resent again
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_reconnect_resends_unacked_at_once(tmp_path: Path) -> None:
    link = FakeLink()
    with RecordQueue(tmp_path / "q.sqlite", "p1/l1", 10**8) as q:
        for i in range(3):
            q.append(draft(i))
        fw = Forwarder(QueueThread(q), link, "p1/l1", ack_timeout=60.0, poll_interval=0.01)
        task = asyncio.create_task(fw.run())
        try:
            await eventually(lambda: len(link.sent) == 1, what="first send")
            link.connected.clear()
            await asyncio.sleep(0.02)
            link.reconnects += 1
            link.connected.set()
            await eventually(lambda: len(link.sent) == 2, what="resend after reconnect")
            assert link.sent[0] == link.sent[1]
            status = await fw.status()
            assert status.backlog == 3 and status.inflight_batches == 1 and status.link_up
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_refused_records_leave_the_window_stay_queued_and_are_offered_again(
    tmp_path: Path,
) -> None:
    link = FakeLink()
    now = [100.0]
    with RecordQueue(tmp_path / "q.sqlite", "p1/l1", 10**8) as q:
        for i in range(3):
            q.append(draft(i))
        fw = Forwarder(
            QueueThread(q),
            link,
            "p1/l1",
            window=1,
            ack_timeout=1000.0,
            backoff_max=30.0,
            poll_interval=0.01,
            clock=lambda: now[0],
        )
        task = asyncio.create_task(fw.run())
        try:
            await eventually(lambda: len(link.sent) == 1, what="the only batch of the window")
            assert decode_batch(link.sent[0][1]).last_seq == 3
            q.append(draft(9))  # waits behind the full window
            epoch = q.identity.epoch
            [one, two, three] = queued(q, 3)
            # Seq 2 is held with other content in the back office: refused, never deleted.
            fw.handle_ack(encode_ack(Ack("p1/l1", epoch, "b", (one, three), (two,))))
            await eventually(lambda: len(link.sent) == 2, what="the window is free again")
            assert decode_batch(link.sent[1][1]).first_seq == 4
            assert [s for s, _ in q.batch(0, 9)] == [2, 4]
            status = await fw.status()
            assert (status.refused, status.backlog) == (1, 2)
            now[0] += 29.0
            await asyncio.sleep(0.05)
            assert len(link.sent) == 2  # not offered again before backoff_max
            fw.handle_ack(encode_ack(Ack("p1/l1", epoch, "c", tuple(queued(q)[1:]))))
            await eventually(lambda: [s for s, _ in q.batch(0, 9)] == [2], what="seq 4 acked")
            now[0] += 1.5
            await eventually(lambda: len(link.sent) == 3, what="the refused record again")
            assert decode_batch(link.sent[2][1]).first_seq == 2
            # The cause is resolved in the back office: this time it is stored and acked.
            fw.handle_ack(encode_ack(Ack("p1/l1", epoch, "d", (two,))))
            await eventually(lambda: q.backlog().count == 0, what="drained")
            assert (await fw.status()).refused == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_the_lane_metrics_show_refused_records() -> None:
    m = LaneMetrics("p1/l1", "toll")
    status = UplinkStatus(5, 1.0, 4096, False, True, None, 1, 3, 0, refused=2)
    m.update(Snapshot(uplink=status))
    assert b"lane_uplink_refused_records 2.0" in m.render()
    m.update(Snapshot(uplink=UplinkStatus(0, None, 4096, False, True, None, 0, 3, 0)))
    assert b"lane_uplink_refused_records 0.0" in m.render()  # clears with its cause
