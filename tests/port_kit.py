"""Each pytest-xdist worker's own block of ports (sim.broker.free_port hands out its servers'
ports from it), so two workers starting servers at the same moment never pick one port.

The blocks split 20000-32767, below Linux's ephemeral ports (32768-60999 by default): no port 0
bind nor outgoing connection anywhere on the machine lands in them.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

from sim.broker import PORTS_ENV

FIRST = 20000
LAST = 32767


def worker_block(worker: str | None, workers: int) -> str:
    """The `FIRST-LAST` block of xdist worker `worker` ("gw0", "gw1" ...; None: the one
    process of a run without workers) out of `workers`."""
    index = int(worker.removeprefix("gw")) if worker and worker.startswith("gw") else 0
    count = max(workers, index + 1)
    span = (LAST - FIRST + 1) // count
    first = FIRST + index * span
    return f"{first}-{first + span - 1}"


def claim_worker_block() -> None:
    """This process hands out ports from its worker's block from now on. Set in every process
    of the session (the workers inherit the controller's environment, so never kept from it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ[PORTS_ENV] = worker_block(worker, workers)


async def refuses_connections(url: str) -> bool:
    """The listener of the server at `url` is closed: a connection to it is refused (the
    simulated acquirer's supervisor acts on a `refuse` outage, or its end, in a turn of its
    own, so a test polls for it)."""
    where = urlsplit(url)
    try:
        _, writer = await asyncio.open_connection(where.hostname, where.port)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # the listener closing as it was reached
    writer.close()
    await writer.wait_closed()
    return False
