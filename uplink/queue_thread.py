"""The record queue for asyncio: ONE executor thread owns the SQLite connection.

`RecordQueue` (uplink/queue.py) is synchronous. In the lane every call to it goes through
`QueueThread`, which runs it on its own single worker thread, in the order the calls were made:
the connection is opened there, used only there and closed there, so an fsynced append never
waits on a lock held by a status read from another thread, and no caller does `to_thread` on
the queue itself. The runner (records), the forwarder (batches, acks, backlog), the health
publisher (action records) and the daemon's health loop (backlog, `writable()` probe) share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from uplink.messages import Held, QueueIdentity
from uplink.queue import Backlog, OwedPassage, QueueError, RecordQueue
from uplink.records import Record, RecordDraft

T = TypeVar("T")


class QueueThread:
    """Async facade over one `RecordQueue`; `open` makes it, `aclose` ends it.

    `QueueThread(queue)` adopts a queue opened elsewhere (tools, tests, benchmarks): from then
    on only the new thread uses it."""

    def __init__(self, queue: RecordQueue, executor: ThreadPoolExecutor | None = None) -> None:
        self.sync = queue  # for tools and tests that inspect the file; the lane never calls it
        self._executor: ThreadPoolExecutor | None = executor or _one_thread()

    @classmethod
    async def open(cls, opener: Callable[[], RecordQueue]) -> QueueThread:
        """Open the queue on a new worker thread (`opener` runs there) and keep that thread."""
        executor = _one_thread()
        loop = asyncio.get_running_loop()
        try:
            queue = await loop.run_in_executor(executor, opener)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(queue, executor)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise QueueError(self.sync.path, "queue closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- what the queue holds, for the lane --------------------------------------------------

    @property
    def path(self) -> Path:
        return self.sync.path

    @property
    def max_bytes(self) -> int:
        return self.sync.max_bytes

    @property
    def identity(self) -> QueueIdentity:
        return self.sync.identity

    @property
    def write_error(self) -> str | None:
        return self.sync.write_error

    async def append(
        self,
        draft: RecordDraft,
        owes: str | None = None,
        ends_owed: str | None = None,
        owed_pass: str | None = None,
    ) -> Record:
        return await self._call(self.sync.append, draft, owes, ends_owed, owed_pass)

    async def append_once(self, draft: RecordDraft, record_id: str) -> Record | None:
        return await self._call(self.sync.append_once, draft, record_id)

    async def owed(self) -> list[OwedPassage]:
        return await self._call(self.sync.owed)

    async def served(self, record_id: str) -> None:
        await self._call(self.sync.served, record_id)

    async def writable(self) -> bool:
        return await self._call(self.sync.writable)

    async def recorded_paid(self, payment_id: str) -> bool:
        return await self._call(self.sync.recorded_paid, payment_id)

    async def batch(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        return await self._call(self.sync.batch, after_seq, limit)

    async def ack(self, held: Sequence[Held]) -> list[int]:
        return await self._call(self.sync.ack, held)

    async def backlog(self) -> Backlog:
        return await self._call(self.sync.backlog)

    async def aclose(self) -> None:
        """Close the connection on its thread, then end the thread. Safe twice."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self.sync.close)
        finally:
            executor.shutdown(wait=True)


def _one_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lane-queue")
