"""Two real processes opening the same store files at the same moment: each waits on a shared
barrier before each file, so both open it together, and reports how each opening ended.

The openers are named (`OPENERS`), so a spawned process finds them by importing this module."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from lane.auth.replay import ReplayStore
from lane.auth.resolution_store import ResolutionStore
from lane.tap_store import TapStore
from uplink.queue import RecordQueue
from uplink.sqlite_store import SqliteIngestStore

QUEUE_LANE = "fx01/l01"  # the lane the fixture queue belongs to

OPENERS: dict[str, Callable[[Path], Any]] = {
    "queue": lambda path: RecordQueue(path, QUEUE_LANE, 10**8),
    "replay": ReplayStore,
    "payments": ResolutionStore,
    "taps": TapStore,
    "ingest": SqliteIngestStore,
}
# Bounds a process's wait for the other at the barrier, and the test's for both to end.
WAIT_S = 60.0


def _open_each(store: str, paths: Sequence[Path], barrier: Barrier, out: Any) -> None:
    for path in paths:
        barrier.wait(WAIT_S)
        try:
            OPENERS[store](path).close()
        except Exception as exc:
            out.put(f"{path.name}: {type(exc).__name__}: {exc}")
        else:
            out.put(None)


def open_together(store: str, paths: Sequence[Path]) -> list[str]:
    """Open each of `paths` as a `store` in two processes at once, one file after the other;
    the failures (none when every opening succeeded)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_each, args=(store, paths, barrier, out)) for _ in "ab"]
    for p in procs:
        p.start()
    results = [out.get(timeout=WAIT_S) for _ in range(2 * len(paths))]
    for p in procs:
        p.join(WAIT_S)
        assert p.exitcode == 0, f"an opener of {store} ended with {p.exitcode}"
    return [r for r in results if r is not None]
