"""An aiohttp site on a listening socket of our own, so the simulator knows the port it got.

Asked for port 0 (tests, several simulators on one machine), a `web.TCPSite` binds a free port
and keeps the server that holds it private; aiohttp's public `web.SockSite` serves a socket we
bound, whose port is ours to read.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web


async def start_site(runner: web.BaseRunner, host: str, port: int) -> tuple[web.SockSite, int]:
    """Serve `runner` on `host:port` (the first address `host` resolves to); the bound port."""
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = found[0]
    # SO_REUSEADDR, as TCPSite sets it: the acquirer's outages reopen its port at once.
    sock = socket.create_server(address, family=family)
    site = web.SockSite(runner, sock)
    try:
        await site.start()
    except BaseException:
        sock.close()  # the site never took it over
        raise
    bound: int = sock.getsockname()[1]
    return site, bound
