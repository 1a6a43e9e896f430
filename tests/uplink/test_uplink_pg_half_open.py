"""`lane ingest` against a PostgreSQL that goes silent without closing (its host down, a cut
link): the real server on the session's port, reached through a small TCP proxy of the test
behind a veth pair into a network namespace of its own. Freezing sets the namespace's end of
the link down: nothing is forwarded and nothing is answered, not even by the kernel, and the
proxy keeps both sockets open. (A proxy that only stopped reading would not do: its kernel
would still acknowledge every packet and keepalive, and the connection would look alive.)

Creating a namespace needs root (CI runs `make test` as root); elsewhere the test is skipped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import random
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from polling import eventually
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from uplink_kit import Q, recs

from lane.transport.mqtt import Incoming, MqttLink
from lane.wire.topics import uplink_records
from uplink.ingest import Ingest
from uplink.messages import encode_batch
from uplink.pg import PostgresIngestStore

CLONE_NEWNET = 0x40000000
LANE = "p09/l07"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """This thread in network namespace `namespace` while the block runs (sockets made in it
    stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    here, there = "/proc/thread-self/ns/net", f"/run/netns/{namespace}"
    with open(here, "rb") as home, open(there, "rb") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


@dataclass
class Link:
    """A veth pair: `host` here, its peer `address` in namespace `namespace`."""

    namespace: str
    peer: str
    address: str

    def cut(self, down: bool) -> None:
        ip("-n", self.namespace, "link", "set", self.peer, "down" if down else "up")

    def drop_connections(self) -> None:
        """Destroy this side's connections to the peer: one still waiting (the keepalives
        missing: the test failed) would hold its worker thread, and the loop's end, for the
        kernel's ~15 min."""
        subprocess.run(
            ["ss", "-K", "dst", self.address], check=False, capture_output=True, timeout=30
        )


@contextlib.contextmanager
def veth_namespace() -> Iterator[Link]:
    tag = uuid.uuid4().hex[:6]
    namespace, host, peer = f"pgho-{tag}", f"pgh{tag}", f"pgn{tag}"
    net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
    try:
        ip("netns", "add", namespace)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        pytest.skip(f"cannot make a network namespace here (needs root): {detail.strip()}")
    try:
        ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", namespace)
        ip("addr", "add", f"{net}.1/30", "dev", host)
        ip("link", "set", host, "up")
        ip("-n", namespace, "addr", "add", f"{net}.2/30", "dev", peer)
        ip("-n", namespace, "link", "set", peer, "up")
        yield Link(namespace, peer, f"{net}.2")
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            ip("link", "del", host)
        ip("netns", "del", namespace)


@contextlib.asynccontextmanager
async def proxy(link: Link, upstream: tuple[str, int]) -> AsyncIterator[int]:
    """Forward connections to `link.address`:port (the port yielded) to `upstream`."""
    with entered(link.namespace):
        listener = socket.create_server((link.address, 0))
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            pipes.add(asyncio.create_task(task))

    server = await asyncio.start_server(serve, sock=listener)
    try:
        yield listener.getsockname()[1]
    finally:
        server.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


def batch(first: int, last: int) -> Incoming:
    rows = [(r.seq, r.data) for r in recs(first, last, lane=LANE)]
    return Incoming(uplink_records(LANE), encode_batch(LANE, Q, f"b{first}", rows))


async def test_a_silent_server_is_noticed_in_seconds_and_the_next_batch_reconnects(
    pg_dsn: str,
) -> None:
    """Without keepalives a worker whose server went silent waited in its read for as long as
    the kernel keeps a half-open connection (hours): no batch stored, none refused, no word."""
    given = conninfo_to_dict(pg_dsn)
    upstream = (str(given.get("host", "127.0.0.1")), int(given.get("port", 5432)))
    with veth_namespace() as link:
        async with proxy(link, upstream) as port:
            # The store's calls in threads: the proxy runs on this loop.
            dsn = make_conninfo(pg_dsn, host=link.address, port=port)
            store = await asyncio.to_thread(PostgresIngestStore, dsn)
            ingest = Ingest(store)
            ingest.attach(MqttLink("127.0.0.1", 1, "pg-half-open", [], ingest.receive))
            try:
                await ingest.handle(batch(1, 5))
                assert ingest.stats.store_errors == 0
                assert await asyncio.to_thread(store.count, LANE) == 5

                link.cut(down=True)
                began = time.monotonic()
                # Bounded well above what the keepalives take (the kernel alone: ~15 min).
                await asyncio.wait_for(ingest.handle(batch(6, 10)), 90)
                # Seen: the batch is not stored (not acknowledged: the lane resends it), counted
                # on `lane_ingest_store_errors_total`, `lane_ingest_store_failing` is 1, within
                # the keepalives' 30 s.
                assert (ingest.stats.store_errors, ingest.store_failing) == (1, True)
                assert time.monotonic() - began < 60
            finally:
                link.cut(down=False)
                link.drop_connections()
            # Back: the batch, sent again as the lane does, opens a new connection and is stored.

            async def resent() -> bool:
                await ingest.handle(batch(6, 10))
                return ingest.stats.batches == 2

            await eventually(resent, within=30, every=0.5, what="the batch stored once back")
            assert not ingest.store_failing
            assert await asyncio.to_thread(store.count, LANE) == 10
            await asyncio.to_thread(store.close)


def test_a_dsn_keeps_its_own_keepalive_settings(pg_dsn: str) -> None:
    store = PostgresIngestStore(f"{pg_dsn} keepalives_idle=7")
    try:
        with store._connected() as conn:
            params = conn.info.get_parameters()
        assert (params["keepalives_idle"], params["keepalives_count"]) == ("7", "3")
    finally:
        store.close()
