"""An image-folder camera (a bench or first-hour set-up): no code is lost to a lane not yet
connected, and the lane stays ready once the folder has been read."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cv2
from polling import eventually

from barrier.device import DeviceEmulator, Timings
from lane.config import parse_config
from lane.daemon import build
from lane.health import all_ok
from sim.broker import Mosquitto
from sim.camera import frame_for
from sim.codes import CodeFactory


async def test_a_folder_read_before_the_device_is_up_still_pays(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    codes = CodeFactory(11)
    keyset = codes.write_keyset(tmp_path / "keyset.json", int(time.time()), [lane_id])
    folder = tmp_path / "camera"
    folder.mkdir()
    token = codes.make("token", int(time.time())).text
    cv2.imwrite(str(folder / "phone.png"), frame_for(token, "clear", rng=1))
    config = parse_config(
        {
            "lane": {"id": lane_id, "data_dir": str(tmp_path / "lane")},
            "broker": {"port": mosquitto.port},
            "camera": {"source": f"{folder}/"},
            "auth": {"keyset": str(keyset), **codes.lane_auth(tmp_path, lane_id)},
        }
    )
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
        held = {c.name: c for c in daemon.ops.readiness()}["camera"]
        assert held.ok and "held until the lane can take a code" in held.detail, held
        await device.vehicle_enters(1)
        await eventually(lambda: "barrier_opened" in notes)
        assert daemon.pipeline.stats().frames_in == 1
        # The folder is read to its end: the lane is still ready (HTTP /readyz, MQTT status).
        await eventually(lambda: daemon.source.exhausted)
        checks = {c.name: c for c in daemon.ops.readiness()}
        assert checks["camera"].ok and "read to its end" in checks["camera"].detail
        await eventually(lambda: all_ok(daemon.ops.readiness()))
    finally:
        stop.set()
        await asyncio.wait_for(lane_task, 15)
        await device.stop()
        if device_task is not None:
            await asyncio.gather(device_task, return_exceptions=True)
