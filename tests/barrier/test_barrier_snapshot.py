"""The device's whole truth (issue #11 item 2) over a real broker: a snapshot on every connect
and in answer to every query, ordered against the barrier state stream by seq."""

from __future__ import annotations

import asyncio
import time

from test_barrier_protocol import FAST, WAIT, Recorder, command, tasks, until

from barrier.device import DeviceEmulator
from barrier.link import BarrierLink
from barrier.messages import DeviceQuery, DeviceSnapshot
from lane.transport.mqtt import MqttLink
from lane.wire import topics
from lane.wire.codec import pack
from sim.broker import Mosquitto


def watching(
    mosquitto: Mosquitto, lane_id: str
) -> tuple[Recorder, asyncio.Queue[DeviceSnapshot], BarrierLink]:
    """A controller's link that queues every device snapshot it passes on."""
    rec = Recorder()
    snapshots: asyncio.Queue[DeviceSnapshot] = asyncio.Queue()
    return rec, snapshots, rec.link(mosquitto, lane_id, on_snapshot=snapshots.put_nowait)


async def test_the_device_says_its_whole_truth_on_connect_and_on_every_query(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    rec, snapshots, link = watching(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(link.run()):
        await link.wait_connected(WAIT)
        async with tasks(device.run()):
            hello = await until(snapshots, lambda s: True)
            assert hello.query_id is None
            assert hello.barrier == "closed"
            assert hello.sensors == dict.fromkeys(
                ("entry_loop", "exit_loop", "light_curtain", "safety_loop"), False
            )
            await device.set_sensor("safety_loop", True)
            await link.send(command(lane_id, "open", "c1"), expiry_s=3)
            await rec.state("open")
            await link.query(DeviceQuery("q-1", lane_id, int(time.time() * 1e6)))
            answer = await until(snapshots, lambda s: s.query_id == "q-1")
            assert answer.barrier == "open" and answer.sensors["safety_loop"] is True
            assert answer.session == hello.session and answer.seq > hello.seq
            # Under a fault that drops commands the device still answers queries.
            device.set_fault("no_ack")
            await link.query(DeviceQuery("q-2", lane_id, int(time.time() * 1e6)))
            assert (await until(snapshots, lambda s: s.query_id == "q-2")).barrier == "open"


async def test_a_query_for_another_lane_or_garbage_gets_no_answer(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    _, snapshots, link = watching(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    async with tasks(link.run(), raw.run()):
        await link.wait_connected(WAIT)
        await raw.wait_connected(WAIT)
        async with tasks(device.run()):
            await until(snapshots, lambda s: s.query_id is None)
            await asks(raw, lane_id, snapshots)


async def asks(raw: MqttLink, lane_id: str, snapshots: asyncio.Queue[DeviceSnapshot]) -> None:
    """Bad queries first, then a good one: the first answer is the good one's."""
    topic = topics.device_query(lane_id)
    await raw.publish(topic, DeviceQuery("q-x", "other/l9", 1).encode())
    await raw.publish(topic, b"\x00 not msgpack")
    await raw.publish(topic, pack({"query_id": "", "lane": lane_id, "ts": 1}))
    await raw.publish(topic, DeviceQuery("q-ok", lane_id, 1).encode())
    # Answers go out in order: the first one seen is the one for the good query.
    assert (await until(snapshots, lambda s: True)).query_id == "q-ok"


async def test_a_snapshot_older_than_a_state_already_seen_is_dropped(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    _, snapshots, link = watching(mosquitto, lane_id)
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    topic = topics.device_snapshot(lane_id)
    async with tasks(link.run(), raw.run()):
        await link.wait_connected(WAIT)
        await raw.wait_connected(WAIT)
        await raw.publish(topic, DeviceSnapshot("open", {}, "s1", 5, 1, "new").encode())
        assert (await until(snapshots, lambda s: True)).query_id == "new"
        await raw.publish(topic, DeviceSnapshot("closed", {}, "s1", 4, 2, "old").encode())
        await raw.publish(topic, DeviceSnapshot("open", {}, "s2", 1, 3, "other").encode())
        # The old one of session s1 is dropped; a new session starts its own order.
        assert (await until(snapshots, lambda s: True)).query_id == "other"
