from __future__ import annotations

import asyncio

import pytest

from lane.transport.mqtt import Incoming, LinkDown, MqttLink
from sim.broker import Mosquitto


async def test_publish_and_receive_roundtrip(mosquitto: Mosquitto, lane_id: str) -> None:
    got: asyncio.Queue[Incoming] = asyncio.Queue()

    async def handler(msg: Incoming) -> None:
        await got.put(msg)

    topic = f"lane/{lane_id}/events"
    rx = MqttLink(mosquitto.host, mosquitto.port, f"rx-{lane_id}", [(topic, 1)], handler)
    tx = MqttLink(mosquitto.host, mosquitto.port, f"tx-{lane_id}")
    tasks = [asyncio.create_task(rx.run()), asyncio.create_task(tx.run())]
    try:
        await rx.wait_connected(5)
        await tx.wait_connected(5)
        await tx.publish(topic, b"hello", correlation=b"c1", response_topic="x/y", expiry_s=5)
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg.payload == b"hello"
        assert msg.correlation == b"c1"
        assert msg.response_topic == "x/y"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_publish_while_disconnected_raises() -> None:
    link = MqttLink("127.0.0.1", 1, "nobody")
    with pytest.raises(LinkDown):
        await link.publish("a/b", b"x")
