"""Faults that leave the process alive: the lane must not stay stuck behind them, nor look
healthy while it is (docs/operations.md, "Alarms"). Against the real things: mosquitto, the
device emulator, SQLite, the simulator's acquirer, the daemon in this process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
from disk_kit import fill, frozen, small_tmpfs
from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show
from test_lane_heal import back_and_paying, lane_processes, pays, quiet

from barrier.messages import LaneStatus
from lane.config import parse_config
from lane.daemon import build_saying_why, wait_for_data_dir
from lane.runner import Clocks
from lane.sd_notify import SystemdNotifier
from scanner.health import CaptureSettings
from scanner.sources import CaptureSource, Item, PushSource
from sim.broker import Mosquitto, free_port
from sim.camera import frame_for
from sim.codes import CodeFactory

DARK = "camera reads no codes: "  # camera_blackout's text, before what the camera does


def camera_ready(lane: Lane) -> bool:
    return next(c for c in lane.daemon.ops.readiness() if c.name == "camera").ok


class CrashingCamera(PushSource):
    """The push camera, whose driver raises once when told to: what OpenCV, FFmpeg or a vendor
    SDK may do beyond the errors the source's own reconnect handles."""

    def __init__(self) -> None:
        super().__init__()
        self.crash = threading.Event()

    def stream(self) -> Iterator[Item]:
        for item in super().stream():
            if self.crash.is_set():
                self.crash.clear()
                raise RuntimeError("camera driver crashed")
            yield item


async def test_a_capture_that_crashes_is_seen_and_restarted_and_the_lane_serves_again(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    camera = CrashingCamera()
    async with running_lane(tmp_path, mosquitto, lane_id, source=camera) as lane:
        daemon = lane.daemon
        camera.crash.set()
        blank = frame_for(None, "clear", rng=1)
        # Seen: the alarm says what happened and that the lane is on it; not ready.
        await eventually(
            lambda: daemon.runner.alarms.get("camera_blackout", "").startswith(
                f"{DARK}camera error"
            ),
            between=lambda: camera.put(blank, time.monotonic()),
            what="the capture's failure raised",
        )
        message = daemon.runner.alarms["camera_blackout"]
        assert "capture failed: camera driver crashed; restarting in" in message
        assert not camera_ready(lane)
        # Clears by itself: the capture is read again, frames come back, the alarm goes.
        await eventually(
            lambda: "camera_blackout" not in daemon.runner.alarms,
            between=lambda: camera.put(blank, time.monotonic()),
            what="the capture restarted",
        )
        assert camera_ready(lane)
        # And the lane takes payments again: the next vehicle pays and passes.
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


class HangingCamera(PushSource):
    """The push camera, whose driver call hangs when told (a USB camera gone wrong, a read
    with no timeout) until released: nothing at all comes out of it, not even a blackout."""

    def __init__(self) -> None:
        super().__init__(blackout_after_s=1.0)
        self.hang = threading.Event()
        self.release = threading.Event()

    def stream(self) -> Iterator[Item]:
        for item in super().stream():
            if self.hang.is_set():
                self.release.wait()
                self.hang.clear()
            yield item

    def close(self) -> None:
        self.release.set()
        super().close()


async def test_a_capture_stuck_in_its_driver_is_seen_and_clears_when_frames_return(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    camera = HangingCamera()
    # A working capture may go open_timeout_s + its blackout time without a frame or a word.
    settings = {"open_timeout_s": 2.0}
    async with running_lane(tmp_path, mosquitto, lane_id, source=camera, camera=settings) as lane:
        alarms = lane.daemon.runner.alarms
        frames = live_pictures(camera)
        await eventually(lambda: "camera_blackout" not in alarms, between=frames)
        camera.hang.set()
        # Seen: the source itself says nothing (its thread is stuck), the lane's watch does.
        stalled = DARK + "capture stalled: no frame for over 3 s"
        await eventually(
            lambda: alarms.get("camera_blackout") == stalled, between=frames, what="the stall seen"
        )
        assert not camera_ready(lane)
        assert not lane.daemon.runner.state.accepting_payments
        # Clears by itself once the driver returns and frames are decoded again.
        camera.release.set()
        await eventually(lambda: "camera_blackout" not in alarms, between=frames)
        assert camera_ready(lane)
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


def live_pictures(camera: PushSource) -> Callable[[], None]:
    """A live camera's frames of the empty lane: each differs from the one before (sensor
    noise), as no frozen camera's do."""
    pictures = itertools.cycle([frame_for(None, "clear", rng=seed) for seed in range(3)])
    return lambda: camera.put(next(pictures), time.monotonic())


async def frozen_only_once_a_vehicle_arrives(lane: Lane, still: Callable[[], None]) -> str:
    """The idle lane's picture unchanged (`still` puts it) for twice the frozen threshold: no
    fault, the lane open. Then a vehicle arrives and the picture stays what it was: the camera
    is seen frozen. Returns the alarm's text."""
    daemon = lane.daemon

    def unchanged_s() -> float:
        stats = daemon.pipeline.stats()
        if stats.looked_ts is None or stats.changed_ts is None:
            return 0.0  # no frame looked at yet
        return stats.looked_ts - stats.changed_ts

    await eventually(lambda: unchanged_s() >= 6.0, between=still, within=15)
    assert "camera_blackout" not in daemon.runner.alarms and camera_ready(lane)
    assert daemon.runner.state.accepting_payments
    await lane.device.vehicle_enters(1)
    text = DARK + "camera frozen: the picture did not change as a vehicle arrived (3 s)"
    await eventually(
        lambda: daemon.runner.alarms.get("camera_blackout") == text,
        between=still,
        what="the frozen camera",
    )
    return text


async def test_a_camera_that_repeats_one_picture_is_seen_by_the_vehicle_it_does_not_show(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """An encoder or a driver that froze delivers its last picture over and over at full rate:
    frames arrive, the change gate lets each pass as the empty view, and the blind lane looked
    ready. But a working camera's picture of an idle lane may stay the same too (a long group
    of pictures, strong noise reduction, a static night scene): only a vehicle that arrives and
    is not seen says the camera froze."""
    camera = PushSource()
    # The same picture while a vehicle is there is frozen after open_timeout_s + blackout_s.
    settings = {"open_timeout_s": 1.0}
    async with running_lane(tmp_path, mosquitto, lane_id, source=camera, camera=settings) as lane:
        daemon = lane.daemon
        alarms = daemon.runner.alarms
        live = live_pictures(camera)
        await eventually(lambda: camera_ready(lane), between=live)
        frozen = frame_for(None, "clear", rng=7)

        def still() -> None:
            camera.put(frozen, time.monotonic())

        text = await frozen_only_once_a_vehicle_arrives(lane, still)
        assert not camera_ready(lane)
        assert not daemon.runner.state.accepting_payments  # a frozen picture reads no code
        checks = daemon.health.message().checks
        assert [(c.ok, c.detail) for c in checks if c.name == "camera"] == [(False, text)]
        # The vehicle backs away, the camera still frozen: its cause is still there, so the
        # lane stays closed, for the next driver too (not invited to show a code nobody reads).
        await lane.device.vehicle_backs_away()
        await eventually(lambda: daemon.runner.state.vehicle is None, between=still)
        left = time.monotonic()
        await eventually(
            lambda: (daemon.pipeline.stats().looked_ts or 0.0) >= left + 3.0, between=still
        )
        assert alarms.get("camera_blackout") == text and not camera_ready(lane)
        await lane.device.vehicle_enters(1)
        await eventually(lambda: daemon.runner.state.vehicle is not None, between=still)
        arrived = time.monotonic()
        await eventually(
            lambda: (daemon.pipeline.stats().looked_ts or 0.0) >= arrived + 2.0, between=still
        )
        assert alarms.get("camera_blackout") == text
        assert not daemon.runner.state.accepting_payments
        # Clears by itself once the pictures move again; the vehicle waiting pays and passes.
        await eventually(lambda: "camera_blackout" not in alarms, between=live)
        assert camera_ready(lane)
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


async def test_a_vehicle_gone_while_its_device_was_away_leaves_an_idle_picture_unfrozen(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """The lane controller restarts while a vehicle is on the loop, which leaves meanwhile: its
    snapshot says the loop is clear. The idle lane's picture may then stay the same (a still
    night scene): no vehicle is there for it to show, no fault."""
    camera = PushSource()
    settings = {"open_timeout_s": 1.0}
    async with running_lane(tmp_path, mosquitto, lane_id, source=camera, camera=settings) as lane:
        daemon = lane.daemon
        alarms = daemon.runner.alarms
        live = live_pictures(camera)
        await eventually(lambda: camera_ready(lane), between=live)
        await lane.device.vehicle_enters(1)
        await eventually(lambda: daemon.runner.state.vehicle is not None, between=live)
        await lane.device.stop()
        lane.device.sensors["entry_loop"] = False  # gone while its controller was down
        device_task = asyncio.create_task(lane.device.run())
        try:
            await eventually(lambda: daemon.runner.state.vehicle is None, between=live)
            await eventually(lambda: camera_ready(lane) and quiet(lane), between=live)
            still = frame_for(None, "clear", rng=7)
            stats = daemon.pipeline.stats
            await eventually(
                lambda: (stats().looked_ts or 0.0) - (stats().changed_ts or 0.0) >= 6.0,
                between=lambda: camera.put(still, time.monotonic()),
                within=15,
            )
            assert "camera_blackout" not in alarms and camera_ready(lane)
            assert daemon.runner.state.accepting_payments
        finally:
            await lane.device.stop()
            await asyncio.gather(device_task, return_exceptions=True)


async def test_a_vehicle_gone_with_its_loop_clear_lost_leaves_no_arrival_for_the_frozen_rule(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """The entry loop's clear of a paid vehicle never heard (a dropped message): the core takes
    the vehicle seen through the exit as the loop clear (lane.core.before_arrival). The frozen
    rule must go by the same truth: by the loop's edges alone the vehicle was still there, and
    an idle lane whose picture stays the same was taken for a frozen camera and closed."""
    camera = PushSource()
    settings = {"open_timeout_s": 1.0}
    async with running_lane(tmp_path, mosquitto, lane_id, source=camera, camera=settings) as lane:
        daemon = lane.daemon
        live = live_pictures(camera)
        await eventually(lambda: camera_ready(lane), between=live)
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: lane.device.state == "open", between=live)
        await lane.device.vehicle_passes(lost={"entry_loop"})
        await eventually(daemon.runner.idle, between=live)
        assert not daemon.runner.state.entry_held  # the vehicle seen through proved it clear
        idle = frame_for(None, "clear", rng=7)

        def still() -> None:
            camera.put(idle, time.monotonic())

        await frozen_only_once_a_vehicle_arrives(lane, still)


async def test_a_lane_started_while_its_broker_is_down_says_so_and_serves_once_it_is_up(
    tmp_path: Path, private_broker: Mosquitto, lane_id: str
) -> None:
    """A lane (re)started with its broker down never had a link to lose: it must still raise
    `broker_down`, not sit closed with no alarm, and clear it when the broker comes up."""
    await asyncio.to_thread(private_broker.stop)
    async with running_lane(tmp_path, private_broker, lane_id, ready=False) as lane:
        runner = lane.daemon.runner
        await eventually(lambda: "broker_down" in runner.alarms, what="broker_down raised")
        assert runner.alarms["broker_down"] == "controller lost the MQTT broker"
        assert "broker_down" in runner.state.faults  # closed to payments while it lasts
        broker = next(c for c in lane.daemon.ops.readiness() if c.name == "broker")
        assert (broker.ok, broker.detail) == (False, "not connected")
        await asyncio.to_thread(private_broker.start)
        await eventually(lambda: "broker_down" not in runner.alarms, within=15)
        await eventually(lambda: runner.state.barrier == "closed")
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


async def test_a_broker_that_stops_answering_is_seen_within_the_keepalive_and_left_behind(
    tmp_path: Path, private_broker: Mosquitto, lane_id: str
) -> None:
    """mosquitto frozen (SIGSTOP: its sockets stay open, nothing answers), a half-open link:
    seen within 1.5 keepalives (`broker.keepalive_s`, which the links once ignored for a
    fixed 10 s), reconnected once it answers again."""
    async with running_lane(tmp_path, private_broker, lane_id, broker={"keepalive_s": 2}) as lane:
        runner = lane.daemon.runner
        process = private_broker.process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            await eventually(lambda: "broker_down" in runner.alarms, within=6)
        finally:
            process.send_signal(signal.SIGCONT)
        await eventually(lambda: "broker_down" not in runner.alarms, within=30)
        await eventually(lambda: quiet(lane), within=15)
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


def refused(caplog: pytest.LogCaptureFixture, client: str) -> bool:
    """The broker refused `client`'s CONNECT for its user (CONNACK "not authorized")."""
    return any(
        getattr(r, "client", None) == client and "Not authorized" in str(getattr(r, "error", ""))
        for r in caplog.records
    )


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
async def test_a_broker_killed_and_back_refusing_the_lane_s_user_is_retried_until_it_takes_it(
    tmp_path: Path, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto killed under a lane that logs in, and back with a password file that does
    not hold the lane's user yet (a restart racing the file's update): each CONNECT refused,
    "not authorized". That is the broker's answer of the moment, not what reconnecting cannot
    mend: the lane says broker_down while it lasts, neither link stops, and the lane serves
    again by itself once the broker takes the user (the file reloaded on SIGHUP)."""
    caplog.set_level(logging.WARNING, logger="lane.mqtt")
    passwd = tmp_path / "broker.passwd"
    passwd.touch()

    def password_file(*users: str) -> None:
        passwd.write_text("")
        for user in users:
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, "pw"], check=True)

    password_file(lane_id)
    work = tmp_path / "broker"
    work.mkdir()
    # Anonymous clients (the device emulator) stay allowed; a user must be in the file.
    as_root = "user root\n" if os.geteuid() == 0 else ""
    broker = Mosquitto(free_port(), work, f"password_file {passwd}\n{as_root}")
    await asyncio.to_thread(broker.start)
    try:
        creds = {"username": lane_id, "password": "pw"}
        async with running_lane(tmp_path, broker, lane_id, broker=creds) as lane:
            daemon, runner = lane.daemon, lane.daemon.runner
            password_file("backoffice")
            assert broker.process is not None
            broker.process.kill()
            await asyncio.to_thread(broker.process.wait)
            await asyncio.to_thread(broker.start)
            await eventually(lambda: "broker_down" in runner.alarms, what="broker_down raised")
            for client in (f"controller-{lane_id}", f"uplink-{lane_id}"):
                await eventually(lambda c=client: refused(caplog, c), within=15, what=client)
            assert (daemon.link.mqtt.stopped, daemon.uplink.stopped) == (None, None)
            assert "broker_down" in runner.alarms and "broker_down" in runner.state.faults
            password_file(lane_id)
            os.kill(broker.process.pid, signal.SIGHUP)
            await back_and_paying(lane)
    finally:
        await asyncio.to_thread(broker.stop)


async def test_a_lane_back_from_a_lost_link_says_so_over_the_will_s_offline(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """A link lost uncleanly (a network cut, a broker that froze) leaves the broker to publish
    the lane's will: `offline`, retained, on every console. Reconnected, the lane must say it
    is back even when nothing else changed meanwhile, or it stays `offline` while it serves,
    until its next vehicle."""
    statuses = lane_statuses
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        await eventually(lambda: statuses and statuses[-1].state == "idle", what="settled")
        await lane.daemon.link.mqtt.drop()  # leaves as a crash would: the will is published
        await eventually(lambda: statuses[-1].state == "offline", what="the will published")
        # Seen and cleared by itself: once reconnected, the status says the lane is back.
        await eventually(
            lambda: statuses[-1].state == "idle", within=5, what="the lane saying it is back"
        )
        assert statuses[-1].link["broker"] and statuses[-1].faults == []
        await eventually(lambda: quiet(lane))
        await pays(lane, lambda: named(lane, "barrier_opened"))


async def test_a_lane_started_on_a_full_disk_waits_says_why_and_starts_once_space_is_freed(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
) -> None:
    """`lane run` on a full data directory used to exit 2 at once, systemd gave up after 10
    quick restarts, and the lane stayed down once the space was freed."""
    with small_tmpfs(tmp_path / "lane", "24m") as data:  # freed, above the lane's 16 MB floor
        filler = fill(data)
        async with lane_processes(tmp_path, mosquitto, lane_id, data) as rig:
            proc = await rig.start()
            output = tmp_path / "lane.log"
            # Seen: it says why, and that it tries again; safe: nothing opened, nothing commanded.
            await eventually(
                lambda: "lane: cannot start yet:" in output.read_text(errors="replace"),
                within=30,
                what="the lane saying why it waits",
            )
            said = output.read_text(errors="replace")
            assert f"{data}: disk almost full (" in said and "trying again every 5 s" in said
            assert proc.returncode is None  # waiting, not exited for systemd to give up on
            assert lane_statuses == [] and rig.device.received == []
            # Clears by itself: space freed, the lane starts and takes the next vehicle's payment.
            filler.unlink()
            await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
            token = CodeFactory(3).make("token", int(time.time())).text  # the rig's issuer
            cv2.imwrite(str(tmp_path / "frames" / "token.png"), frame_for(token, "clear", rng=1))
            await rig.device.vehicle_enters(1)
            await eventually(lambda: rig.device.state == "open", within=15)
            assert [c.op for c in rig.device.received] == ["open"]
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0


async def test_a_lane_started_on_a_hung_disk_says_so_and_starts_once_it_answers(
    ext4_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lane run` on a data directory that does not answer (a real ext4 file system frozen
    with fsfreeze: its check's mkdir waits) used to wait in that check, or in opening its
    stores, saying nothing anywhere; now it says so past `disk_answer_s` on stderr, in the log
    and in systemd's status, and goes on once the disk answers."""
    config = parse_config({"lane": {"id": "p01/l01", "data_dir": str(ext4_fs), "disk_answer_s": 1}})
    systemd = SystemdNotifier({})
    stop = asyncio.Event()
    with frozen(ext4_fs):
        waiting = asyncio.create_task(wait_for_data_dir(config, stop, systemd))
        await eventually(lambda: "does not answer" in systemd.status(), within=10)
        assert systemd.status().startswith(f"cannot start yet: {ext4_fs}: does not answer")
        assert f"lane: cannot start yet: {ext4_fs}: does not answer" in capsys.readouterr().err
        assert not waiting.done()  # safe: nothing opened on it
    assert await asyncio.wait_for(waiting, 30) is True
    assert (ext4_fs / "disk-probe").exists()  # the check's own write went through


async def test_a_disk_that_hangs_as_the_stores_open_is_said_as_the_start_s_check_says_it(
    ext4_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data directory answered the start's check, then hangs as the stores open: that wait
    said only systemd's "opening the stores"; now it says the check's line past
    `disk_answer_s`, and the lane goes on once the disk answers."""
    lane = {"id": "p01/l01", "data_dir": str(ext4_fs), "disk_answer_s": 1}
    config = parse_config({"lane": lane, "auth": {"accept_unsigned_peers": True}})
    systemd = SystemdNotifier({})
    stop = asyncio.Event()
    assert await wait_for_data_dir(config, stop, systemd) is True  # the check answers
    with frozen(ext4_fs):
        building = asyncio.create_task(build_saying_why(config, stop, systemd))
        await eventually(lambda: "does not answer" in systemd.status(), within=10)
        said = f"cannot start yet: {ext4_fs}: does not answer: nothing back from it for 1 s"
        assert systemd.status().startswith(said)
        assert f"lane: {said} (a hung disk?); waiting for it" in capsys.readouterr().err
        assert not building.done()
    daemon = await asyncio.wait_for(building, 30)
    assert daemon is not None
    await daemon.aclose()


async def test_a_lane_stopped_as_its_stores_open_closes_them_and_serves_nothing(
    tmp_path: Path,
) -> None:
    """A stop while the stores open on a disk that answers: the opening ends, and what it
    opened is closed again (every SQLite file's WAL checkpointed away), no lane built."""
    data = tmp_path / "data"
    lane = {"id": "p01/l01", "data_dir": str(data)}
    config = parse_config({"lane": lane, "auth": {"accept_unsigned_peers": True}})
    stop = asyncio.Event()
    stop.set()
    assert await build_saying_why(config, stop) is None
    stores = sorted(p.name for p in data.glob("*.sqlite3*"))
    assert stores == ["payments.sqlite3", "queue.sqlite3", "replay.sqlite3"], stores


def process_state(pid: int) -> str:
    """R, S, D, Z ... of a process's main thread (Z: it exited, its other threads live on)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return status.split("State:")[1].split()[0]


async def test_a_lane_stopped_on_a_hung_disk_says_what_it_waits_for_and_ends_within_a_bound(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    ext4_fs: Path,
    lane_statuses: list[LaneStatus],
) -> None:
    """SIGTERM at a lane whose data directory does not answer (a real ext4 file system frozen
    with fsfreeze) used to wait on the stores' closing, and Python's exit on the threads stuck
    in the disk, for as long as it hung, saying nothing; systemd killed it after
    TimeoutStopSec. Now it says on the log what it waits for, gives up after its bound with a
    clear line on stderr and exits 3; what was written before the disk hung is on disk. The
    threads stuck in the disk hold the exited process until it answers (the kernel's, not the
    lane's: no signal ends them either)."""
    data = ext4_fs / "lane"
    async with lane_processes(tmp_path, mosquitto, lane_id, data) as rig:
        rig.conf.write_text(rig.conf.read_text().replace("[lane]\n", "[lane]\ndisk_answer_s = 1\n"))
        proc = await rig.start()
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=30)
        token = CodeFactory(3).make("token", int(time.time())).text  # the rig's issuer
        cv2.imwrite(str(tmp_path / "frames" / "token.png"), frame_for(token, "clear", rng=1))
        await rig.device.vehicle_enters(1)
        await eventually(lambda: rig.device.state == "open", within=15)  # its record on disk
        await rig.device.vehicle_passes()
        await eventually(lambda: lane_statuses[-1].state == "idle", within=15)
        output = tmp_path / "lane.log"
        with frozen(ext4_fs):
            await eventually(lambda: "disk_not_answering" in lane_statuses[-1].faults, within=20)
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            said = f"lane: {data} does not answer: stopped without closing the stores after 5 s"
            await eventually(
                lambda: said in output.read_text(errors="replace"),
                within=30,
                what="the lane's last word",
            )
            await eventually(lambda: process_state(proc.pid) == "Z", what="its main thread gone")
            assert time.monotonic() - stopped_at < 20  # systemd's TimeoutStopSec
            log = output.read_text(errors="replace")
            assert "lane stopping: waiting for the data directory" in log
            assert "waiting for the record queue's close" in log
            assert "every record written before it hung is on disk" in log
        assert await asyncio.wait_for(proc.wait(), 30) == 3
    with contextlib.closing(
        sqlite3.connect(f"file:{data / 'queue.sqlite3'}?mode=ro", uri=True)
    ) as db:
        results = [row[0] for row in db.execute("SELECT count(*) FROM records")]
    assert results == [1]  # the vehicle's record, written before the disk hung


@pytest.mark.parametrize("hangs", ["check", "opening"])
async def test_a_lane_stopped_while_starting_on_a_hung_disk_ends_within_a_bound(
    hangs: str, tmp_path: Path, mosquitto: Mosquitto, lane_id: str, ext4_fs: Path
) -> None:
    """SIGTERM at a lane whose start waits on a data directory that does not answer (a real
    ext4 file system frozen with fsfreeze): its check of the data directory (the directory
    on it), or its stores' opening (the check answered: the directory elsewhere, the replay
    store's file a link into the frozen one, where the disk hangs between the check and the
    opening). The stop used to be seen only once the disk answered (the opening), or the exit
    to wait for the check's thread as long (the check); now it waits 5 s, says on the log what
    it waits for, gives up with a clear line on stderr and exits 3."""
    if hangs == "check":
        data, waiting = ext4_fs / "lane", "the start's check of the data directory"
    else:
        data = tmp_path / "data"
        data.mkdir()
        (data / "replay.sqlite3").symlink_to(ext4_fs / "replay.sqlite3")
        waiting = "the lane's files and its replay, payments and taps stores' opening"
    async with lane_processes(tmp_path, mosquitto, lane_id, data) as rig:
        rig.conf.write_text(rig.conf.read_text().replace("[lane]\n", "[lane]\ndisk_answer_s = 1\n"))
        output = tmp_path / "lane.log"
        with frozen(ext4_fs):
            proc = await rig.start()
            await eventually(
                lambda: f"lane: cannot start yet: {data}: does not answer" in output.read_text(),
                within=30,
                what="the lane saying the data directory does not answer",
            )
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            said = f"lane: {data} does not answer: stopped while starting after 5 s, waiting for "
            await eventually(
                lambda: said + waiting in output.read_text(errors="replace"),
                within=30,
                what="the lane's last word",
            )
            await eventually(lambda: process_state(proc.pid) == "Z", what="its main thread gone")
            assert time.monotonic() - stopped_at < 20  # systemd's TimeoutStopSec
            log = output.read_text(errors="replace")
            assert "lane stopping: waiting for the data directory" in log
            assert "lane stopped while starting" in log
        assert await asyncio.wait_for(proc.wait(), 30) == 3


async def test_the_uplink_down_with_nothing_queued_is_said_after_its_grace_and_cleared_on_reconnect(
    tmp_path: Path, private_broker: Mosquitto, lane_id: str
) -> None:
    """The lane's uplink (its road to the back office) down at a lane with nothing queued:
    `uplink_stalled` needs a record waiting, so without `uplink_down` nobody would know the
    back office is out of reach until records pile up. Said after 1.5 keepalives (3 s here),
    cleared once the uplink is connected again. Raised once: the wall clock stepped an hour
    on meanwhile (NTP) used to raise it again with a new "since"."""
    step = [0.0]
    clocks = Clocks(wall=lambda: time.time() + step[0])
    async with running_lane(
        tmp_path, private_broker, lane_id, broker={"keepalive_s": 2}, clocks=clocks
    ) as lane:
        daemon, runner = lane.daemon, lane.daemon.runner
        await eventually(lambda: daemon.uplink_status is not None)
        assert daemon.uplink_status is not None and daemon.uplink_status.backlog == 0
        assert "uplink_down" not in runner.alarms
        await asyncio.to_thread(private_broker.stop)
        await eventually(lambda: "uplink_down" in runner.alarms, within=15)
        text = runner.alarms["uplink_down"]
        where = f"127.0.0.1:{private_broker.port}"
        assert text.startswith(f"back-office link down: no uplink connection to the broker {where}")
        assert "uplink_stalled" not in runner.alarms
        # The wall clock steps an hour on; a broken key set file, read by the same health
        # tick after the uplink's look, shows that tick has run.
        step[0] = 3600.0
        keyset = daemon.config.auth.keyset
        assert keyset is not None
        good = keyset.read_bytes()
        keyset.write_text("{broken")
        await eventually(lambda: "trust_update_refused" in runner.alarms, within=10)
        assert runner.alarms["uplink_down"] == text
        raised = [a for a in named(lane, "alarm") if a["code"] == "uplink_down"]
        assert len(raised) == 1, raised
        keyset.write_bytes(good)
        assert daemon.uplink_status is not None and daemon.uplink_status.backlog == 0
        await asyncio.to_thread(private_broker.start)
        await eventually(lambda: "uplink_down" not in runner.alarms, within=20)
        await eventually(lambda: quiet(lane), within=15)


class DroppingStream:
    """An RTSP stream as OpenCV reads it, which the camera's server ends when told (an NVR or
    an encoder restarting its session) and which opens again at once: live pictures
    otherwise, paced as a camera's."""

    def __init__(self, drop: threading.Event) -> None:
        self.drop = drop
        self.pictures = itertools.cycle([frame_for(None, "clear", rng=seed) for seed in range(3)])

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def read(self) -> tuple[bool, object]:
        if self.drop.is_set():
            self.drop.clear()
            return False, None
        self.drop.wait(0.05)  # a camera's frame rate
        return True, next(self.pictures)

    def release(self) -> None:
        pass


async def test_a_stream_lost_and_reopened_at_once_reopens_the_lane(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """A lost stream closes the lane to payments; reopened before any blackout is declared,
    its frames say the camera sees again and the lane takes payments again (it stayed
    closed for ever: nothing said the loss was over)."""
    drop = threading.Event()
    source = CaptureSource(
        "rtsp://camera.invalid/lane",
        live=True,
        open_capture=lambda _target: DroppingStream(drop),
        settings=CaptureSettings(blackout_s=30.0),
    )
    async with running_lane(tmp_path, mosquitto, lane_id, source=source) as lane:
        runner = lane.daemon.runner
        await eventually(lambda: camera_ready(lane) and runner.state.accepting_payments)
        drop.set()
        await eventually(
            lambda: runner.alarms.get("camera_blackout", "").startswith(f"{DARK}camera lost"),
            what="the loss seen",
        )
        await eventually(
            lambda: "camera_blackout" not in runner.alarms, what="the lane told the camera sees"
        )
        assert runner.state.accepting_payments
