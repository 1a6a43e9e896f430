"""The transport's reach past the public API of aiomqtt and paho
(`lane/transport/paho_internals.py`, docs/architecture.md "The MQTT client's internals"), each
internal held to what the transport takes it to mean, against a real mosquitto: a release that
moves one fails here by name instead of costing a lane its link."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable
from importlib.metadata import requires, version
from typing import Any

import aiomqtt
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from polling import eventually

from lane.transport.mqtt import Incoming, MqttLink
from lane.transport.paho_internals import (
    InternalsChangedError,
    PublishProperties,
    in_callback,
    paho_client,
)
from sim.broker import Mosquitto

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def paho_of(link: MqttLink) -> mqtt.Client:
    assert link._conn is not None, "the link is connected"
    return link._conn.paho


async def test_aiomqtt_drives_the_paho_client_the_transport_reaches(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """`Client._client` is the paho client that carries aiomqtt's connection: a message handed
    to it goes out on that connection, and comes back through aiomqtt's own iterator."""
    topic = f"lane/{lane_id}/events"
    client = aiomqtt.Client(
        mosquitto.host,
        mosquitto.port,
        identifier=f"internals-{lane_id}",
        protocol=aiomqtt.ProtocolVersion.V5,
    )
    paho = paho_client(client)
    assert not paho.is_connected()
    async with client:
        assert paho.is_connected()
        await client.subscribe(topic, qos=1)
        assert paho.publish(topic, b"through paho", qos=1).rc == mqtt.MQTT_ERR_SUCCESS
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
        assert message.payload == b"through paho"


async def test_paho_holds_its_callback_lock_while_a_callback_runs(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """`in_callback` is true inside paho's on_message (where `receive` runs) and inside the
    on_publish its QoS 0 write path calls: the lock that write takes again, which is why a
    packet queued inside a callback must not be written at once. Outside, it is false."""
    topic = f"lane/{lane_id}/events"
    inside: list[bool] = []
    rx = MqttLink(
        mosquitto.host,
        mosquitto.port,
        f"rx-{lane_id}",
        [(topic, 1)],
        receive=lambda msg: inside.append(in_callback(paho_of(rx))),
    )
    tx = MqttLink(mosquitto.host, mosquitto.port, f"tx-{lane_id}")
    tasks = [asyncio.create_task(rx.run()), asyncio.create_task(tx.run())]
    try:
        await rx.wait_connected(5)
        await tx.wait_connected(5)
        paho = paho_of(tx)
        assert not in_callback(paho)
        chained = paho.on_publish
        writing: list[bool] = []

        def on_publish(*args: Any) -> None:
            writing.append(in_callback(paho))
            assert chained is not None
            chained(*args)

        paho.on_publish = on_publish
        paho.publish(topic, b"qos 0", qos=0)  # written at once, on_publish called in the write
        assert writing == [True]
        await eventually(lambda: inside, 5, what="the message received")
        assert inside == [True]
        assert not in_callback(paho_of(rx))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    ("library", "breaks"),
    [
        ("aiomqtt", lambda client: setattr(client, "_client", None)),
        ("paho-mqtt", lambda client: setattr(client._client, "_in_callback_mutex", None)),
        (
            "paho-mqtt",
            lambda client: setattr(client._client, "_in_callback_mutex", threading.RLock()),
        ),
    ],
)
async def test_a_release_without_the_internals_is_refused_by_name(
    library: str, breaks: Callable[[aiomqtt.Client], None]
) -> None:
    """Stands in for an upgrade past the pins: `paho_client`, which every connection of a link
    goes through, refuses by library, version and pin (the requirement lane was installed
    with) rather than let a link run on an internal that means something else."""
    client = aiomqtt.Client("127.0.0.1", 1, identifier="upgraded")
    breaks(client)
    pin = next(req for req in requires("lane") or [] if req.startswith(f"{library}~="))
    refusal = rf"^{library} {re.escape(version(library))}: .*tested with {re.escape(pin)} "
    with pytest.raises(InternalsChangedError, match=refusal):
        paho_client(client)


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
            paho = paho_of(tx)
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
        paho_of(echo).publish(pong, msg.payload, qos=0)

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
        paho = paho_of(tx)
        paho.on_publish = on_publish
        paho.suppress_exceptions = False
        paho.publish(topic, b"anyway", qos=0)  # raises here without the fallback
        assert (await asyncio.wait_for(got.get(), 5)).payload == b"anyway"
        assert "mqtt write failed, left to the loop" in caplog.text
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
