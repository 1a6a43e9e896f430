"""The lane's own SQLite stores failing while it runs (locked by another process, corrupt, an
I/O error): the lane must refuse what it cannot check, say so, and clear once the store works
(docs/operations.md, "Alarms"). Against the real things: mosquitto, the device emulator, the
SQLite files, the simulator's acquirer, the daemon in this process."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from polling import eventually
from test_lane_daemon import named, running_lane, show
from test_lane_heal import pays, quiet

from sim.broker import Mosquitto


async def test_a_locked_replay_store_refuses_tokens_says_so_and_clears_when_released(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """A replay store that cannot be written used to decline every token as `verifier_error`
    or `timeout`, one driver at a time, with no alarm: a lane refusing all tokens looked
    healthy."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        alarms = lane.daemon.runner.alarms
        path = lane.config.lane.data_dir / "replay.sqlite3"
        # Another process takes the write lock and keeps it (a stuck backup, a sqlite3 shell).
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            # Seen: the store's own wait (10 s) runs out and the alarm names the file and why.
            await pays(lane, lambda: "replay_store_error" in alarms, within=30)
            text = alarms["replay_store_error"]
            assert f"replay store {path}" in text and "database is locked" in text
            assert "offline tokens refused" in text
            # Safe: no token was taken without its replay mark.
            assert named(lane, "barrier_opened") == []
            assert lane.device.received == []
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Clears by itself: the lane tries the store again every second while it fails.
        await eventually(lambda: "replay_store_error" not in alarms, within=15)
        await lane.device.vehicle_backs_away()
        await eventually(lambda: quiet(lane), within=15)
        # And takes the next driver's token.
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


async def test_a_locked_payments_store_refuses_wallet_codes_says_so_and_clears_when_released(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """The payments store takes each online payment's intent before the network is asked: one
    that cannot be written used to decline every wallet code as `internal_error`, with no
    alarm."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        alarms = lane.daemon.runner.alarms
        path = lane.config.lane.data_dir / "payments.sqlite3"
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            await lane.device.vehicle_enters(1)
            await eventually(lambda: named(lane, "vehicle_arrived"))
            code = lane.codes.make("alipay", int(time.time())).text
            # Seen: the store's own wait (5 s) runs out and the alarm names the file and why.
            await show(lane, code, lambda: "payments_store_error" in alarms, within=30)
            text = alarms["payments_store_error"]
            assert f"payments store {path}" in text and "database is locked" in text
            assert "online payments refused" in text
            # Safe: nobody was let through on a payment the lane could not track.
            assert named(lane, "barrier_opened") == []
            assert lane.device.received == []
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Clears by itself: the lane tries a write every second while the store fails.
        await eventually(lambda: "payments_store_error" not in alarms, within=15)
        await lane.device.vehicle_backs_away()
        await eventually(lambda: quiet(lane), within=15)
        # And takes the next driver's wallet code.
        await lane.device.vehicle_enters(1)
        await eventually(lambda: len(named(lane, "vehicle_arrived")) == 2)
        code = lane.codes.make("alipay", int(time.time())).text
        await show(lane, code, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))
