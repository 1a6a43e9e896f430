"""A lane's uplink road to the plaza's broker that the simulator can cut (the `uplink_down`
fault): a TCP relay on a port of its own, which the lane's `[uplink] port` names, so the
uplink's connection can go down while the barrier link's, straight to the broker, stays up.

Cut, it stops listening (the lane's reconnects are refused) and drops the connections it
carries; restored, it listens on the same port again.
"""

from __future__ import annotations

import asyncio
import logging

from sim.broker import free_port

log = logging.getLogger("sim.link_relay")
CHUNK = 64 * 1024


class LinkRelay:
    """Relays every connection made to `port` to `upstream` (host, port)."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self._upstream = upstream
        self.host = host
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._carried: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._carry, self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and drop every connection carried: the link is down."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._carried):
            writer.transport.abort()
        self._carried.clear()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Carried from the accept: a cut while the broker is still being dialled drops it too.
        self._carried.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError as exc:  # the broker itself is down: so is this road to it
            log.info("link relay: broker unreachable", extra={"error": str(exc)})
            self._carried.discard(writer)
            writer.transport.abort()
            return
        if writer.transport.is_closing():  # cut (or left) while the broker was dialled
            self._carried.discard(writer)
            up_writer.transport.abort()
            return
        self._carried.add(up_writer)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._carried.discard(end)
                end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one way until its sender is done: its EOF is passed on (the other way goes on
    until its own), a reset drops the other end at once (`_carry` closes both after)."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:  # a reset (the lane or broker gone): no use waiting for the rest
        writer.transport.abort()
        return
    if writer.can_write_eof():
        writer.write_eof()
