"""The simulator's cuttable uplink road (`sim/link_relay.py`, the `uplink_down` fault), against
real sockets: it carries both ways whole, a cut drops every connection it carries and refuses
new ones, and the road comes back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest
from polling import eventually

from sim.link_relay import LinkRelay


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    """A server that sends back all it gets (the broker's place)."""

    async def back(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(back, "127.0.0.1", 0)
    yield ("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()


async def test_it_carries_both_ways_whole_and_a_cut_drops_and_refuses(
    echo: tuple[str, int],
) -> None:
    relay = LinkRelay(echo)
    await relay.start()
    try:
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        sent = os.urandom(8 * 1024 * 1024)  # far more than the sockets' buffers: back-pressure
        got = bytearray()

        async def receive() -> None:
            while len(got) < len(sent):
                got.extend(await reader.read(1 << 20))

        writer.write(sent)
        await asyncio.gather(writer.drain(), receive())
        assert bytes(got) == sent
        await relay.stop()
        assert await reader.read(1) == b""  # dropped by the cut
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(relay.host, relay.port)
        await relay.start()  # back, on the same port
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        writer.write(b"again")
        assert await reader.readexactly(5) == b"again"
        writer.close()
    finally:
        await relay.stop()


async def test_a_connection_caught_dialling_the_broker_by_the_cut_is_dropped_too() -> None:
    """A cut while the relay is still connecting a lane's connection to the broker dropped
    nothing: that connection, once the broker took it, went on through the cut road."""
    broker = socket.socket()
    broker.bind(("127.0.0.1", 0))
    broker.listen(0)  # one connection waiting fills its queue: a second one's SYN is dropped
    broker.setblocking(False)
    filler = socket.create_connection(broker.getsockname())
    relay = LinkRelay(broker.getsockname())
    taken: list[socket.socket] = []
    await relay.start()
    try:
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        await relay.stop()  # the relay's own connection to the broker still under way

        def take(n: int) -> bool:  # the broker frees its queue: the relay's retried SYN gets in
            with contextlib.suppress(BlockingIOError):
                taken.append(broker.accept()[0])
            return len(taken) >= n

        await eventually(lambda: take(1), within=5.0, what="the filler taken")
        await eventually(reader.at_eof, within=5.0, what="the lane's connection cut")
        await eventually(lambda: take(2), within=10.0, what="the relay's dial taken at last")
        taken[1].setblocking(False)

        def closed() -> bool:  # and closed at once: nothing goes through the cut road
            with contextlib.suppress(BlockingIOError):
                return taken[1].recv(1) == b""
            return False

        await eventually(closed, within=5.0, what="the relay's late dial closed")
        writer.close()
    finally:
        await relay.stop()
        for end in (filler, broker, *taken):
            end.close()


async def test_a_half_close_is_passed_on_and_the_answer_still_comes_back() -> None:
    """One end done sending (EOF) is not the connection done: the other way goes on."""

    async def answer_at_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked = await reader.read()  # all of it, up to the EOF passed on
        writer.write(b"answer to " + asked)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_at_eof, "127.0.0.1", 0)
    relay = LinkRelay(("127.0.0.1", server.sockets[0].getsockname()[1]))
    await relay.start()
    try:
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        writer.write(b"question")
        writer.write_eof()
        assert await reader.read() == b"answer to question"
        writer.close()
    finally:
        await relay.stop()
        server.close()
