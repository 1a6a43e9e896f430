"""The lane's own SQLite stores failing while it runs (locked by another process, corrupt, an
I/O error): the lane must refuse what it cannot track, say so, and clear once the store works
(docs/operations.md, "Alarms"). Against the real things: mosquitto, the device emulator, the
SQLite files, the simulator's acquirer, the daemon in this process."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show
from test_lane_heal import quiet

from sim.broker import Mosquitto


async def shows(lane: Lane, kind: str, until: Callable[[], Any], within: float = 5.0) -> None:
    """A vehicle drives onto the pay point and shows a fresh code of `kind` until `until()`."""
    mark = len(named(lane, "vehicle_arrived"))
    await lane.device.vehicle_enters(1)
    await eventually(lambda: len(named(lane, "vehicle_arrived")) > mark)
    await show(lane, lane.codes.make(kind, int(time.time())).text, until, within=within)


@pytest.mark.parametrize(
    ("store", "alarm", "refused", "kind"),
    [
        # Used offline tokens: a token is never taken without its replay mark.
        ("replay.sqlite3", "replay_store_error", "offline tokens refused: replay store", "token"),
        # Online payments: no network is asked before the payment's intent is committed.
        ("payments.sqlite3", "payments_store_error", "online payments refused: payments store",
         "alipay"),
    ],
)  # fmt: skip
async def test_a_locked_store_refuses_its_codes_says_so_and_clears_when_released(  # noqa: PLR0917
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    store: str,
    alarm: str,
    refused: str,
    kind: str,
) -> None:
    """A store that cannot be written used to decline every code it serves (tokens as
    `verifier_error` or `timeout`, wallet codes as `internal_error`), one driver at a time,
    with no alarm: a lane refusing them all looked healthy."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        alarms = lane.daemon.runner.alarms
        path = lane.config.lane.data_dir / store
        # Another process takes the write lock and keeps it (a stuck backup, a sqlite3 shell).
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            # Seen: SQLite's own wait runs out and the alarm names the file and why.
            await shows(lane, kind, lambda: alarm in alarms, within=30)
            assert alarms[alarm].startswith(f"{refused} {path}: database is locked")
            # Safe: nobody was let through on a code the lane could not track.
            assert named(lane, "barrier_opened") == []
            assert lane.device.received == []
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Clears by itself: the lane writes to the store every second while it fails.
        await eventually(lambda: alarm not in alarms, within=15)
        await lane.device.vehicle_backs_away()
        await eventually(lambda: quiet(lane), within=15)
        # And takes the next driver's code.
        await shows(lane, kind, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


async def test_a_locked_queue_says_locked_and_clears_when_released(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """`disk_error` said "cannot write to disk" of a queue file that was only locked: an
    operator sent to free space or replace a disk."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        alarms = lane.daemon.runner.alarms
        holder = sqlite3.connect(lane.config.lane.data_dir / "queue.sqlite3", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            await shows(lane, "token", lambda: "disk_error" in alarms, within=30)
            assert alarms["disk_error"] == (
                "record queue cannot write: queue file locked by another process"
            )
            assert named(lane, "barrier_opened") == []  # safe: no open without its record
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await eventually(lambda: "disk_error" not in alarms, within=30)
