from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lane.transport.mqtt import Incoming, LinkDown, MqttLink, PublishProperties, WillSpec
from sim.broker import Mosquitto

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


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


@given(
    st.none() | st.integers(0, 2**32 - 1),
    st.none() | st.text(max_size=300),
    st.none() | st.binary(max_size=300),
)
def test_publish_properties_pack_as_paho_packs_them(
    expiry_s: int | None, response_topic: str | None, correlation: bytes | None
) -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    packed = PublishProperties(expiry_s, response_topic, correlation).pack()
    assert packed == bytes(props.pack())  # type: ignore[no-untyped-call]


def test_a_publish_property_too_long_for_mqtt_is_refused() -> None:
    with pytest.raises(ValueError, match="65535"):
        PublishProperties(None, None, b"x" * 65536)


async def test_publish_while_disconnected_raises() -> None:
    link = MqttLink("127.0.0.1", 1, "nobody")
    with pytest.raises(LinkDown):
        await link.publish("a/b", b"x")


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_packet_is_written_in_the_call_on_a_nodelay_socket(
    mosquitto: Mosquitto, lane_id: str, loop: str
) -> None:
    """On the loop's thread paho's packet goes to the socket at once, not a loop turn later
    (docs/barrier.md, "Benchmark"); the socket has Nagle off under either loop."""
    topic = f"lane/{lane_id}/events"

    async def scenario() -> None:
        got: asyncio.Queue[Incoming] = asyncio.Queue()
        rx = MqttLink(mosquitto.host, mosquitto.port, f"rx-{lane_id}", [(topic, 1)], got.put)
        tx = MqttLink(mosquitto.host, mosquitto.port, f"tx-{lane_id}")
        tasks = [asyncio.create_task(rx.run()), asyncio.create_task(tx.run())]
        try:
            await rx.wait_connected(5)
            await tx.wait_connected(5)
            assert tx._client is not None
            paho = tx._client._client
            sock = paho.socket()
            assert isinstance(sock, socket.socket)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            paho.publish(topic, b"now", qos=1)
            assert not paho.want_write()  # written before this coroutine yields
            assert (await asyncio.wait_for(got.get(), 5)).payload == b"now"
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario())


async def test_a_publish_inside_a_receive_callback_is_written_after_it(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """paho holds its callback lock around `receive`, and writing a QoS 0 publish takes that
    lock again: such a packet waits for the loop instead of writing (and deadlocking) at once."""
    ping, pong = f"lane/{lane_id}/ping", f"lane/{lane_id}/pong"
    got: asyncio.Queue[Incoming] = asyncio.Queue()

    def answer(msg: Incoming) -> None:
        assert echo._client is not None
        echo._client._client.publish(pong, msg.payload, qos=0)

    echo = MqttLink(mosquitto.host, mosquitto.port, f"echo-{lane_id}", [(ping, 1)], receive=answer)
    rx = MqttLink(mosquitto.host, mosquitto.port, f"rx-{lane_id}", [(pong, 1)], got.put)
    tx = MqttLink(mosquitto.host, mosquitto.port, f"tx-{lane_id}")
    tasks = [asyncio.create_task(link.run()) for link in (echo, rx, tx)]
    try:
        for link in (echo, rx, tx):
            await link.wait_connected(5)
        await tx.publish(ping, b"ping")
        assert (await asyncio.wait_for(got.get(), 5)).payload == b"ping"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_write_that_raises_is_left_to_the_loop_not_the_publisher(
    mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception out of paho's write path (here its on_publish callback) does not reach
    whoever queued the packet: it is logged and the deferred writer takes over."""
    topic = f"lane/{lane_id}/events"
    got: asyncio.Queue[Incoming] = asyncio.Queue()
    rx = MqttLink(mosquitto.host, mosquitto.port, f"rx-{lane_id}", [(topic, 1)], got.put)
    tx = MqttLink(mosquitto.host, mosquitto.port, f"tx-{lane_id}")
    tasks = [asyncio.create_task(rx.run()), asyncio.create_task(tx.run())]

    def on_publish(*args: object) -> None:
        raise RuntimeError("on_publish broke")

    try:
        await rx.wait_connected(5)
        await tx.wait_connected(5)
        assert tx._client is not None
        paho = tx._client._client
        paho.on_publish = on_publish
        paho.suppress_exceptions = False
        paho.publish(topic, b"anyway", qos=0)  # raises here without the fallback
        assert (await asyncio.wait_for(got.get(), 5)).payload == b"anyway"
        assert "mqtt write failed, left to the loop" in caplog.text
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
