from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest
from mqtt_kit import broker_proxy
from polling import eventually

from lane.transport.mqtt import Incoming, LinkDown, LinkStopped, MqttLink, PublishRefused, WillSpec
from sim.broker import Mosquitto, free_port


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
        assert msg.expiry_s is not None and 0 < msg.expiry_s <= 5
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_publish_while_disconnected_raises() -> None:
    link = MqttLink("127.0.0.1", 1, "nobody")
    with pytest.raises(LinkDown):
        await link.publish("a/b", b"x")


async def test_waiting_for_a_link_that_stopped_names_what_stopped_it(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """A link whose `run` ends (here on a filter paho refuses) will never connect: whoever
    waited for it (`lane doctor`, `lane device --send`) waited out its timeout and then blamed
    the broker. It hears what stopped the link instead; run again, the link is not stopped."""
    link = MqttLink(mosquitto.host, mosquitto.port, f"bad-{lane_id}", [("a/#/b", 1)])
    task = asyncio.create_task(link.run())
    try:
        with pytest.raises(LinkStopped) as stopped:
            await link.wait_connected(10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert str(stopped.value) == (
        "the MQTT client stopped: ValueError: Invalid subscription filter."
    )
    assert isinstance(stopped.value.__cause__, ValueError) and link.stopped is stopped.value
    link.subscriptions = [(f"lane/{lane_id}/status", 1)]
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(10)
        assert link.stopped is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_publish_the_broker_refuses_is_not_taken_as_delivered(tmp_path: Path) -> None:
    """mosquitto answers a publish its ACL denies with a PUBACK all the same, its reason
    "Not authorized": the publisher must hear it was not taken (an Outbox keeps it and says
    so), not go on as if it had been delivered. The link stays up for what is granted."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite granted/#\n")
    # Started as root, mosquitto drops to user "mosquitto", which cannot read pytest's tmp_path.
    as_root = "user root\n" if os.geteuid() == 0 else ""
    broker = Mosquitto(free_port(), tmp_path, f"acl_file {acl}\n{as_root}")
    broker.start()
    link = MqttLink(broker.host, broker.port, "acl-publisher")
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(5)
        with pytest.raises(PublishRefused, match="denied/x refused by the broker: Not authorized"):
            await link.publish("denied/x", b"lost unseen")
        await link.publish("granted/x", b"taken")
        assert link.reconnects == 0 and link.connected.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        broker.stop()


async def test_a_link_ended_by_a_bug_leaves_its_will(mosquitto: Mosquitto, lane_id: str) -> None:
    """A link whose task fails (a callback's bug) used to disconnect cleanly on its way out:
    the broker discarded its will, and a lane that ended so went on looking up (the barrier
    link's will is the lane's `offline`; with its client gone, nothing else could say it)."""
    got: asyncio.Queue[Incoming] = asyncio.Queue()

    async def handler(msg: Incoming) -> None:
        await got.put(msg)

    topic = f"lane/{lane_id}/status"
    watch = MqttLink(mosquitto.host, mosquitto.port, f"watch-{lane_id}", [(topic, 1)], handler)

    async def on_connect() -> None:
        raise RuntimeError("a bug in a callback")

    link = MqttLink(
        mosquitto.host,
        mosquitto.port,
        f"dying-{lane_id}",
        on_connect=on_connect,
        will=WillSpec(topic, b"offline", qos=1, retain=False),
    )
    watching = asyncio.create_task(watch.run())
    try:
        await watch.wait_connected(5)
        with pytest.raises(RuntimeError, match="a bug in a callback"):
            await asyncio.wait_for(link.run(), 5)
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg.payload == b"offline"
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_a_topic_that_is_not_utf8_is_logged_by_its_bytes_and_the_link_goes_on(
    mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT forbids such a topic and mosquitto refuses it, so the proxy slips one in as if from
    the broker: the receiver is not called, the log names the topic as far as it decodes, and
    the next message arrives on the same connection."""
    topic = f"lane/{lane_id}/events"
    got: list[Incoming] = []
    async with broker_proxy(mosquitto) as proxy:
        rx = MqttLink(mosquitto.host, proxy.port, f"rx-{lane_id}", [(topic, 1)], receive=got.append)
        tx = MqttLink(mosquitto.host, mosquitto.port, f"tx-{lane_id}")
        tasks = [asyncio.create_task(rx.run()), asyncio.create_task(tx.run())]
        try:
            await rx.wait_connected(5)
            await tx.wait_connected(5)
            bad = f"lane/{lane_id}/".encode() + b"\xff\xfe"
            # PUBLISH, QoS 0: the topic, no MQTT 5 properties, the payload.
            body = struct.pack("!H", len(bad)) + bad + b"\x00" + b"garbled"
            assert len(body) < 128  # a remaining length of one byte
            proxy.send_client(bytes([0x30, len(body)]) + body)
            await tx.publish(topic, b"after")
            await eventually(lambda: got, 5, what="the message after the bad one")
            assert [m.payload for m in got] == [b"after"]
            failed = [r for r in caplog.records if r.getMessage() == "mqtt handler failed"]
            assert [getattr(r, "topic", None) for r in failed] == [f"lane/{lane_id}/\ufffd\ufffd"]
            assert rx.reconnects == 0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
