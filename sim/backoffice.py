"""The simulated back office: one ingest (SQLite store) shared by every lane of the plaza.

`cut()` is a real outage of the back office: the ingest leaves the broker, so no batch is
committed and no ack comes back; each lane's forwarder keeps its records in the lane's durable
queue (the backlog climbs) and resends them with backoff. `restore()` brings the ingest back
on the same persistent session; the lanes' resends (and whatever the broker held for the
session) are stored idempotently and acknowledged, and the queues drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from lane.transport.mqtt import MqttLink
from uplink.ingest import Ingest, IngestStats
from uplink.sqlite_store import SqliteIngestStore

log = logging.getLogger("lane.sim.backoffice")


class BackOffice:
    def __init__(self, path: Path, host: str, port: int, client_id: str = "ingest-sim") -> None:
        self.store = SqliteIngestStore(path)
        self.ingest = Ingest(self.store)
        self.link: MqttLink = self.ingest.make_link(host, port, client_id)
        self._task: asyncio.Task[None] | None = None

    @property
    def online(self) -> bool:
        """The back office is reachable (not cut), whether or not it has connected yet."""
        return self._task is not None

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    @property
    def stats(self) -> IngestStats:
        return self.ingest.stats

    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        self._task = asyncio.create_task(self.link.run(), name="ingest")
        await self.link.wait_connected(timeout)

    async def cut(self) -> None:
        if await self._leave():
            log.warning("back office cut off")

    async def _leave(self) -> bool:
        if self._task is None:
            return False
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True

    async def restore(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.create_task(self.link.run(), name="ingest")
        log.warning("back office restored")

    def ingested_ids(self, lane: str) -> set[str]:
        return {r.record_id for r in self.store.records(lane)}

    async def stop(self) -> None:
        await self._leave()
        await self.ingest.close()
        self.store.close()
