"""Disk full, then space freed (issue #11): on a real size-limited file system (tmpfs size=)
holding the lane's data directory, with the real lane, device emulator, mosquitto and acquirer.

Safe while it lasts (no vehicle through without its record, nothing written is lost), visible
(the `disk_error` alarm, on /metrics too), and it clears by itself once space is freed: the
next paying vehicle is served. Mounting needs root (CI runs `make test` as root)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from disk_kit import fill
from ops_kit import OpsLane, running_lane
from polling import eventually

from barrier.messages import LaneStatus
from sim.broker import Mosquitto
from sim.camera import frame_for


def stored_record_ids(queue: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{queue}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT record_id FROM records")}


def noted_record_ids(lane: OpsLane) -> set[str]:
    return {str(fields["record"]["record_id"]) for fields in lane.named("record")}


async def metric_alarm(lane: OpsLane, code: str) -> float:
    return (await lane.scrape())[("lane_alarm_active", (("alarm", code),))]


async def test_disk_full_is_safe_visible_and_clears_once_space_is_freed(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    small_fs: Path,
    lane_statuses: list[LaneStatus],
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        daemon = lane.daemon
        queue = daemon.config.lane.data_dir / "queue.sqlite3"
        assert await lane.serve("token") == "barrier_opened"
        opened = len(lane.named("barrier_opened"))

        filler = fill(small_fs)
        # A driver pays with a wallet code: approved, but its record cannot be written.
        await lane.device.vehicle_enters(2)
        await eventually(lambda: len(lane.named("vehicle_arrived")) == 2)
        frame = frame_for(lane.codes.make("alipay", int(time.time())).text, "clear", rng=1)
        await eventually(
            lambda: "disk_error" in daemon.runner.alarms,
            every=0.03,
            what=f"disk_error; notes: {lane.notes[-5:]}",
            between=lambda: lane.source.put(frame, time.monotonic()),
        )
        # Safe: no barrier opened without a record; every record the lane wrote is on disk.
        assert len(lane.named("barrier_opened")) == opened
        assert [c.op for c in lane.device.received].count("open") == opened
        assert noted_record_ids(lane) == stored_record_ids(queue)
        # Visible: the alarm, on /metrics and in the retained status; /readyz says why.
        assert await metric_alarm(lane, "disk_error") == 1
        await eventually(lambda: any("disk_error" in s.faults for s in lane_statuses))
        status, body = await lane.get("/readyz")
        assert status == 503 and "disk" in body
        # It lasts while the disk is full: the health loop's probe fails and clears nothing.
        await lane.device.vehicle_backs_away()
        await eventually(lambda: daemon.runner.state.vehicle is None)
        await eventually(lambda: daemon.queue.write_error is not None)
        assert "disk_error" in daemon.runner.alarms

        filler.unlink()  # space freed: the lane comes back by itself, no restart
        await eventually(lambda: "disk_error" not in daemon.runner.alarms, within=10)
        assert await lane.serve("token") == "barrier_opened"
        assert await metric_alarm(lane, "disk_error") == 0
        assert noted_record_ids(lane) == stored_record_ids(queue)
        assert len(noted_record_ids(lane)) == 2  # the first vehicle and the last one
