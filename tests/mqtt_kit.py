"""A test's own MQTT watcher on the session broker (what a lane publishes on one topic), a
client with the lanes' broker account (anybody who has the password), and a TCP proxy to it
that holds back PUBACKs or slips in a packet of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from lane.transport.mqtt import Incoming, MqttLink
from sim.broker import Mosquitto

T = TypeVar("T")


@asynccontextmanager
async def collected(
    mosquitto: Mosquitto, client_id: str, topic: str, decode: Callable[[bytes], T]
) -> AsyncIterator[list[T]]:
    """Every message on `topic` while the block runs, decoded, in the order they came (the
    block starts once the watcher is connected)."""
    got: list[T] = []

    async def on_message(msg: Incoming) -> None:
        got.append(decode(msg.payload))

    async with running(MqttLink(mosquitto.host, mosquitto.port, client_id, [(topic, 1)],
                                on_message)):  # fmt: skip
        yield got


async def handed_at_once(mosquitto: Mosquitto, client_id: str, *topics: str) -> list[Incoming]:
    """What the broker hands a client that subscribes to `topics` now: their retained copies,
    nothing else. After its subscriptions the client publishes a marker on a topic of its own:
    the broker sends a subscription's retained copies before it takes the client's next
    packet, so what came before the marker is all there is (a proof of absence, no waiting)."""
    marker = f"test/{client_id}/marker"
    got: list[Incoming] = []
    seen = asyncio.Event()

    def receive(msg: Incoming) -> None:
        if msg.topic == marker:
            seen.set()
        elif not seen.is_set():
            got.append(msg)

    subscriptions = [(topic, 1) for topic in (*topics, marker)]
    link = MqttLink(
        mosquitto.host, mosquitto.port, client_id, subscriptions, receive=receive, session_expiry=0
    )
    async with running(link):
        await link.publish(marker, b"", qos=1)
        async with asyncio.timeout(5):
            await seen.wait()
    return got


@asynccontextmanager
async def running(link: MqttLink) -> AsyncIterator[MqttLink]:
    """`link` running, connected, while the block runs."""
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(5)
        yield link
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def sender(broker: Mosquitto, client_id: str) -> AsyncIterator[MqttLink]:
    """A client with the lanes' broker account, connected: anybody who has the password."""
    async with running(MqttLink(broker.host, broker.port, client_id)) as link:
        yield link


PUBACK = 0x40  # MQTT fixed header: packet type 4, no flags


class BrokerProxy:
    """A TCP proxy to the broker that can hold back the PUBACKs the broker sends the client,
    and send the client a packet the broker never would."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.holding = False
        self.held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._to_clients: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def send_client(self, packet: bytes) -> None:
        """Write `packet` to every client connected through the proxy, as if from the broker."""
        for writer in self._to_clients:
            writer.write(packet)

    def release(self) -> None:
        self.holding = False
        for writer, packet in self.held:
            writer.write(packet)
        self.held.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        self._to_clients.append(writer)
        for pipe in (self._copy(reader, up_writer), self._packets(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
        writer.close()

    async def _packets(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                packet = await _read_packet(reader)
                if packet[0] == PUBACK and self.holding:
                    self.held.append((writer, packet))
                else:
                    writer.write(packet)
        writer.close()


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    """One MQTT control packet: the fixed header byte, the remaining length, the rest."""
    header = await reader.readexactly(1)
    length_bytes, length, shift = b"", 0, 0
    while True:
        byte = await reader.readexactly(1)
        length_bytes += byte
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    return header + length_bytes + await reader.readexactly(length)


@asynccontextmanager
async def broker_proxy(broker: Mosquitto) -> AsyncIterator[BrokerProxy]:
    proxy = BrokerProxy(broker)
    await proxy.start()
    try:
        yield proxy
    finally:
        proxy.release()
        await proxy.stop()
