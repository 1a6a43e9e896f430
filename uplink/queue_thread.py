"""The record queue for asyncio: ONE executor thread owns the SQLite connection.

`RecordQueue` (uplink/queue.py) is synchronous. In the lane every call to it goes through
`QueueThread`, which runs it on its own single worker thread, in the order the calls were made:
the connection is opened there, used only there and closed there, so an fsynced append never
waits on a lock held by a status read from another thread, and no caller does `to_thread` on
the queue itself. The runner (records), the forwarder (batches, acks, backlog), the health
publisher (action records) and the daemon's queue loop (backlog, `writable()` probe) share it.

A disk that stops answering (a frozen file system, a dead NFS server, an SD card that hangs)
blocks the one thread in a write or fsync: every call after it waits in line, no new thread is
made, nothing is lost. `waiting_since()` says, without waiting, since when (on the clock given)
the oldest call not yet answered was made: the lane's health loop raises `disk_not_answering`
from it. `wrote_at()` says when a write last went through: on a busy lane that is the disk
answering already, and the lane's disk probe (lane.disk_probe) skips its own write.
"""

from __future__ import annotations

import asyncio
import itertools
import time
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

    def __init__(
        self,
        queue: RecordQueue,
        executor: ThreadPoolExecutor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sync = queue  # for tools and tests that inspect the file; the lane never calls it
        self._executor: ThreadPoolExecutor | None = executor or _one_thread()
        self._clock = clock
        self._numbers = itertools.count()
        self._made: dict[int, float] = {}  # calls not answered yet: when each was made
        self._wrote_at: float | None = None

    @classmethod
    async def open(
        cls, opener: Callable[[], RecordQueue], clock: Callable[[], float] = time.monotonic
    ) -> QueueThread:
        """Open the queue on a new worker thread (`opener` runs there) and keep that thread."""
        executor = _one_thread()
        loop = asyncio.get_running_loop()
        try:
            queue = await loop.run_in_executor(executor, opener)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(queue, executor, clock)

    def waiting_since(self) -> float | None:
        """When the oldest call not answered yet was made, or None when none waits."""
        return min(self._made.values(), default=None)

    def wrote_at(self) -> float | None:
        """When (on the clock given) a write last went through to the disk, or None before
        the first: an fsynced commit (a record, an ack), not `served`'s, which may end in the
        page cache of a disk that no longer answers."""
        return self._wrote_at

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        """A call that commits with an fsync: its return is the disk's answer, unless it
        changed nothing (an empty result: a key found already, an ack that deleted nothing),
        whose commit SQLite makes without a write and which returns on a frozen disk."""
        result = await self._call(fn, *args)
        if result:
            self._wrote_at = self._clock()
        return result

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise QueueError(self.sync.path, "queue closed")
        loop = asyncio.get_running_loop()
        number = next(self._numbers)
        self._made[number] = self._clock()
        # Answered when the thread is done with the call, not when its caller stops waiting: a
        # cancelled caller leaves the thread as stuck as before.
        done = self._executor.submit(fn, *args)
        done.add_done_callback(lambda _: _on_loop(loop, self._made.pop, number))
        return await asyncio.wrap_future(done)

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
        return await self._write(self.sync.append, draft, owes, ends_owed, owed_pass)

    async def append_once(self, draft: RecordDraft, record_id: str) -> Record | None:
        return await self._write(self.sync.append_once, draft, record_id)

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
        return await self._write(self.sync.ack, held)

    async def backlog(self) -> Backlog:
        return await self._call(self.sync.backlog)

    async def aclose(self) -> None:
        """Close the connection on its thread, then end the thread. Safe twice."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self.sync.close)
        except BaseException:
            # Cancelled behind a call stuck in a hung disk: its thread is left to the disk.
            executor.shutdown(wait=False)
            raise
        executor.shutdown(wait=True)


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[int], object], arg: int) -> None:
    """Run `fn(arg)` on `loop` from the queue's thread; nothing once the loop is closed (the
    lane is gone, and nobody asks what is waiting)."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(fn, arg)


def _one_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lane-queue")
