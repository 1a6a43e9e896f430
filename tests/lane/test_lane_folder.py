"""A demo camera (an image folder, a video file: a bench or first-hour set-up): no code is lost
to a lane not yet connected; once the source is read to its end the lane has nothing to read
and is closed to payments, saying why, until the lane is started again; a looped source never
ends and never closes it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cv2
from polling import eventually

from barrier.device import DeviceEmulator, Timings
from lane.config import LaneConfig, parse_config
from lane.daemon import LaneDaemon, build
from lane.health import all_ok
from scanner.sources import CaptureSource
from sim.broker import Mosquitto
from sim.camera import frame_for
from sim.codes import CodeFactory

ENDED = "camera reads no codes: camera source ended: end of folder: nothing more to read"


def camera_check(daemon: LaneDaemon) -> tuple[bool, str]:
    [check] = [c for c in daemon.ops.readiness() if c.name == "camera"]
    return check.ok, check.detail


def lane_config(
    tmp_path: Path, codes: CodeFactory, port: int, lane_id: str, source: str
) -> LaneConfig:
    keyset = codes.write_keyset(tmp_path / "keyset.json", int(time.time()), [lane_id])
    return parse_config(
        {
            "lane": {"id": lane_id, "data_dir": str(tmp_path / "lane")},
            "broker": {"port": port},
            "camera": {"source": source},
            "auth": {"keyset": str(keyset), **codes.lane_auth(tmp_path, lane_id)},
        }
    )


async def test_a_folder_read_before_the_device_is_up_pays_then_its_end_closes_the_lane(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    codes = CodeFactory(11)
    folder = tmp_path / "camera"
    folder.mkdir()
    token = codes.make("token", int(time.time())).text
    cv2.imwrite(str(folder / "phone.png"), frame_for(token, "clear", rng=1))
    config = lane_config(tmp_path, codes, mosquitto.port, lane_id, f"{folder}/")
    daemon = await build(config, shutdown_grace_s=2.0)
    assert daemon.source.finite
    notes: list[str] = []
    daemon.runner.observers.append(lambda note: notes.append(str(note.name)))
    stop = asyncio.Event()
    lane_task = asyncio.create_task(daemon.run(stop))
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, Timings().scaled(20))
    device_task: asyncio.Task[None] | None = None
    try:
        # The lane is connected but there is no barrier yet: the folder must wait for it ...
        await daemon.link.wait_connected(5)
        assert daemon.pipeline is not None
        device_task = asyncio.create_task(device.run())
        await eventually(lambda: daemon.runner.state.barrier == "closed")
        # ... and, in a toll lane, for a vehicle at the pay point to pay with the code.
        assert daemon.pipeline.stats().frames_in == 0 and not daemon.source.exhausted
        held = camera_check(daemon)
        assert held[0] and "held until the lane can take a code" in held[1], held
        await device.vehicle_enters(1)
        await eventually(lambda: "barrier_opened" in notes)  # paid: its code was read
        assert daemon.pipeline.stats().frames_in == 1
        # The folder is read to its end: nothing more to read, the lane closed to payments.
        alarms = daemon.runner.alarms
        await eventually(lambda: alarms.get("camera_blackout", "").startswith(ENDED))
        assert not daemon.runner.state.accepting_payments
        assert camera_check(daemon) == (False, alarms["camera_blackout"])  # /readyz, status
        await device.vehicle_passes()  # the vehicle that paid goes through
        await eventually(lambda: daemon.runner.state.passage is None)
        await device.vehicle_enters(2)  # the next one is not asked for a code
        await eventually(lambda: daemon.runner.state.vehicle is not None)
        assert not daemon.runner.state.accepting_payments
        await device.vehicle_backs_away()
    finally:
        stop.set()
        await asyncio.wait_for(lane_task, 15)
    # Started again (a new token in the folder): the lane reads it and is open once more.
    try:
        token = codes.make("token", int(time.time())).text
        cv2.imwrite(str(folder / "phone.png"), frame_for(token, "clear", rng=2))
        daemon = await build(config, shutdown_grace_s=2.0)
        notes.clear()
        daemon.runner.observers.append(lambda note: notes.append(str(note.name)))
        stop = asyncio.Event()
        lane_task = asyncio.create_task(daemon.run(stop))
        await eventually(lambda: all_ok(daemon.ops.readiness()))
        assert daemon.runner.state.accepting_payments
        assert "camera_blackout" not in daemon.runner.alarms
        await device.vehicle_enters(1)
        await eventually(lambda: "barrier_opened" in notes)
    finally:
        stop.set()
        await asyncio.wait_for(lane_task, 15)
        await device.stop()
        if device_task is not None:
            await asyncio.gather(device_task, return_exceptions=True)


async def test_a_looped_video_file_never_ends_and_never_closes_the_lane(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    codes = CodeFactory(11)
    video = tmp_path / "lane.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10, (640, 360))
    for seed in range(4):  # the empty lane, its noise differing frame to frame
        writer.write(frame_for(None, "clear", rng=seed, size=(640, 360)))
    writer.release()
    config = lane_config(tmp_path, codes, mosquitto.port, lane_id, str(video))
    source = CaptureSource(str(video), live=False, loop=True, fps=20)
    daemon = await build(config, source=source, shutdown_grace_s=2.0)
    assert not daemon.source.finite
    stop = asyncio.Event()
    lane_task = asyncio.create_task(daemon.run(stop))
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, Timings().scaled(20))
    device_task = asyncio.create_task(device.run())
    try:
        await eventually(lambda: all_ok(daemon.ops.readiness()))
        # Read to its end and from its start again, three times over: never an end.
        await eventually(lambda: daemon.pipeline.stats().frames_in > 3 * 4, within=15)
        assert "camera_blackout" not in daemon.runner.alarms
        assert not daemon.pipeline.stats().source_ended and not source.exhausted
        assert daemon.runner.state.accepting_payments and all_ok(daemon.ops.readiness())
    finally:
        stop.set()
        await asyncio.wait_for(lane_task, 15)
        await device.stop()
        await asyncio.gather(device_task, return_exceptions=True)
