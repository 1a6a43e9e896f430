"""A small durable write into the data directory now and then, on a thread of its own, so a
disk that hangs is seen even when nothing else writes, or when another store hangs first (the
payments or replay store, before a record is due).

A lane whose record queue wrote to the disk within the probe's period (`wrote_at`: a busy
lane's records, the back office's acks) has its answer already: the probe skips its write,
saving an SD card's wear, and probes again once the queue goes quiet. A disk that hangs right
after such a write is then seen one period later at most.

One write at a time: while one hangs the probe waits for it and starts no other, so a hung
disk holds one thread here and no more. `waiting_since()` says, without waiting, since when
(on the lane's clock) the write in progress waits; lane.disk_answer judges it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lane.durable import write_atomically

log = logging.getLogger("lane.disk_probe")

PROBE_EVERY_S = 5.0
PROBE_FILE = "disk-probe"


class DiskProbe:
    def __init__(
        self,
        lane: str,
        data_dir: Path,
        clock: Callable[[], float],
        wrote_at: Callable[[], float | None],
    ) -> None:
        self.lane = lane
        self.path = data_dir / PROBE_FILE
        self.writes = 0  # probe writes made (the disk's wear)
        self._clock = clock
        self._wrote_at = wrote_at  # when a write of the queue's last went through, on `clock`
        self._since: float | None = None  # when the write in progress started
        self._failing: str | None = None  # the last failure, logged once until a write works

    def waiting_since(self) -> float | None:
        return self._since

    async def run(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Until cancelled: one probe write every PROBE_EVERY_S, unless the queue wrote within
        it. A write that fails (a full or read-only disk, which the stores' own alarms name) is
        logged, once, and tried again."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lane-disk-probe")
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._queue_wrote_lately():
                    await sleep(PROBE_EVERY_S)
                    continue
                self._since = self._clock()
                self.writes += 1
                try:
                    await loop.run_in_executor(executor, write_atomically, self.path, b"")
                except OSError as exc:
                    self._says(str(exc))
                else:
                    self._says(None)
                finally:
                    self._since = None
                await sleep(PROBE_EVERY_S)
        finally:
            # A write stuck in a hung disk keeps its thread until the disk answers: not waited.
            executor.shutdown(wait=False, cancel_futures=True)

    def _queue_wrote_lately(self) -> bool:
        wrote = self._wrote_at()
        return wrote is not None and self._clock() - wrote < PROBE_EVERY_S

    def _says(self, error: str | None) -> None:
        if error == self._failing:
            return
        self._failing = error
        extra = {"lane": self.lane, "path": str(self.path), "error": error or ""}
        log.log(
            logging.WARNING if error else logging.INFO,
            "disk probe failed" if error else "disk probe writes again",
            extra=extra,
        )
