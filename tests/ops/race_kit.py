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
from lane.durable import write_atomically
from lane.tap_store import TapStore
from uplink.queue import RecordQueue, place_new
from uplink.records import AuthInfo, RecordDraft
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


def _append_one(queue: RecordQueue) -> str:
    """One record appended to the queue: its id."""
    auth = AuthInfo("approved", acquirer_ref=None, latency_ms=1, offline=True)
    draft = RecordDraft("toll", "veh-1", 1, 500, "CNY", "token", "acct-1", auth)
    return queue.append(draft).record_id


# What an opener writes into a store it opened (`written_together`): the id of what it wrote.
WRITERS: dict[str, Callable[[Any], str]] = {"queue": _append_one}


def _open_each(store: str, paths: Sequence[Path], barrier: Barrier, out: Any, write: bool) -> None:
    for path in paths:
        barrier.wait(WAIT_S)
        try:
            opened = OPENERS[store](path)
            try:
                written = WRITERS[store](opened) if write else None
            finally:
                opened.close()
        except Exception as exc:
            out.put((f"{path.name}: {type(exc).__name__}: {exc}", None))
        else:
            out.put((None, written))


def _together(
    store: str, paths: Sequence[Path], write: bool
) -> list[tuple[str | None, str | None]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_each, args=(store, paths, barrier, out, write)) for _ in "ab"]
    for p in procs:
        p.start()
    results = [out.get(timeout=WAIT_S) for _ in range(2 * len(paths))]
    for p in procs:
        p.join(WAIT_S)
        assert p.exitcode == 0, f"an opener of {store} ended with {p.exitcode}"
    return results


def _write_each(path: Path, data: bytes, times: int, barrier: Barrier) -> None:
    barrier.wait(WAIT_S)
    for _ in range(times):
        write_atomically(path, data)


def write_atomically_together(path: Path, times: int) -> list[int | None]:
    """Two processes at once each writing `path` whole `times` times (lane.durable), each its
    own bytes: their exit codes."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_write_each, args=(path, name.encode() * 4096, times, barrier))
        for name in "ab"
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT_S)
    return [p.exitcode for p in procs]


def open_together(store: str, paths: Sequence[Path]) -> list[str]:
    """Open each of `paths` as a `store` in two processes at once, one file after the other;
    the failures (none when every opening succeeded)."""
    return [failed for failed, _ in _together(store, paths, write=False) if failed is not None]


def written_together(store: str, paths: Sequence[Path]) -> tuple[list[str], list[str]]:
    """`open_together`, each process writing one record (`WRITERS`) into each store once it
    is open: the failures, and the ids of the records written."""
    results = _together(store, paths, write=True)
    failures = [failed for failed, _ in results if failed is not None]
    return failures, [written for _, written in results if written is not None]


def _place_each(directory: Path, name: str, rounds: int, barrier: Barrier, out: Any) -> None:
    for n in range(rounds):
        tmp = directory / f"q{n}.init.{name}"
        tmp.write_bytes(name.encode())
        barrier.wait(WAIT_S)
        try:
            place_new(tmp, directory / f"q{n}")
        except FileExistsError:
            out.put((n, None))
        else:
            out.put((n, name))
        tmp.unlink(missing_ok=True)


def placed_together(directory: Path, rounds: int) -> dict[int, list[str]]:
    """Two processes at once each putting a file of its own in place as `q<n>` in `directory`
    (uplink.queue.place_new), `rounds` times: who says it put its file there, each round."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_place_each, args=(directory, name, rounds, barrier, out))
        for name in "ab"
    ]
    for p in procs:
        p.start()
    won: dict[int, list[str]] = {n: [] for n in range(rounds)}
    for _ in range(2 * rounds):
        n, name = out.get(timeout=WAIT_S)
        if name is not None:
            won[n].append(name)
    for p in procs:
        p.join(WAIT_S)
        assert p.exitcode == 0, f"a placer ended with {p.exitcode}"
    return won
