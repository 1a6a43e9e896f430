"""One booth of `lane sim --lane-processes`: a lane daemon and its camera in a process of their own.

    python -m sim.booth --config lane.json [--fps 30] [--size 1280x720] [--seed 1]

Started and restarted by the simulator's supervisor (sim/supervisor.py), one per lane, as real
booths run their controllers. The lane daemon is the real one (`lane.daemon.build` from the JSON
form of the lane's configuration), and its scanner pipeline decodes, here, the frames of the
booth's camera: a `SyntheticCamera` running beside it, as a booth's camera is wired to its
controller. What is in front of the camera is the simulator's world, set over the control topic
(sim/booth_wire.py) as the loops are set over the barrier device; the camera renders each
frame here. All the rest goes over the lane's own topics (events, display, status, health).

The lane serves its HTTP ops endpoints (/metrics, /healthz, /readyz: lane/ops.py) as `lane run`
does, where its configuration's `[metrics]` section says (the simulator gives each booth a free
port). Prints "ops http://HOST:PORT" (or "ops -" when not served) and then "ready" on stdout once
the lane is connected and the camera runs. On SIGTERM or SIGINT the lane stops as `lane run`
does and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from lane.config import ConfigError, LaneConfig, parse_config
from lane.daemon import LaneDaemon, build, run_with_uvloop
from lane.log import setup_logging
from lane.signals import install_signal_handlers
from lane.transport.mqtt import Incoming, LinkDown, MqttLink
from scanner.sources import CaptureSource
from sim.booth_wire import (
    READY,
    Control,
    ControlError,
    ControlOp,
    control_topic,
    encode_frame,
    frame_topic,
    ops_line,
)
from sim.camera import SyntheticCamera
from sim.lane import STOP_GRACE_S, squeeze_queue

log = logging.getLogger("lane.sim.booth")

CONNECT_S = 30.0


class Booth:
    """The daemon, its camera, and what the control topic asks of them."""

    def __init__(self, daemon: LaneDaemon, camera: SyntheticCamera) -> None:
        self.daemon = daemon
        self.camera = camera
        self.lane = daemon.lane
        self.control = MqttLink(
            daemon.config.broker.host,
            daemon.config.broker.port,
            client_id=f"sim-booth-{daemon.lane}-{os.getpid()}",
            subscriptions=[(control_topic(daemon.lane), 1)],
            receive=self.receive,
        )
        self._quota: int | None = None
        self._quota_lock = asyncio.Lock()  # one squeeze or release at a time, in order
        self._tasks: set[asyncio.Task[None]] = set()

    def receive(self, msg: Incoming) -> None:
        try:
            control = Control.decode(msg.payload)
        except ControlError as exc:
            log.warning("bad control message", extra={"lane": self.lane, "error": str(exc)})
            return
        match control.op:
            case ControlOp.SHOW:
                self.camera.show(control.text, control.conditions)
            case ControlOp.HIDE:
                self.camera.hide()
            case ControlOp.BLACKOUT:
                self.camera.blackout(control.on)
            case ControlOp.QUOTA:
                self._spawn(self._quota_to(control.on))
            case ControlOp.FRAME:
                self._spawn(self._send_frame(control.quality, control.hold_s))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # asyncio keeps only weak references to running tasks
        task.add_done_callback(self._tasks.discard)

    async def _send_frame(self, quality: int, hold_s: float) -> None:
        pipeline = self.daemon.pipeline
        latest = await asyncio.to_thread(pipeline.latest_frame, True, quality, hold_s)
        if latest is None:
            return  # no frame yet: the viewer asks again
        try:
            await self.control.publish(frame_topic(self.lane), encode_frame(latest), qos=0)
        except LinkDown as exc:
            log.warning("frame not sent", extra={"lane": self.lane, "error": str(exc)})

    async def _quota_to(self, on: bool) -> None:
        async with self._quota_lock:
            self._quota = await squeeze_queue(self.daemon, on, self._quota)
        log.info("queue quota", extra={"lane": self.lane, "squeezed": on})


async def booth(config: LaneConfig, fps: float, size: tuple[int, int], seed: int) -> int:
    camera = SyntheticCamera(fps=fps, size=size, rng=seed)
    # The scanner reads the camera as a device: its capture thread renders each frame (see
    # `sim.camera.CameraReader`), stamped when read, as a camera driver stamps at capture.
    source = CaptureSource(
        "synthetic-camera",
        live=True,
        open_capture=lambda _target: camera.reader(),
        blackout_after_s=config.camera.blackout_s,
    )
    # A simulator stopping needs no long grace for the vehicle in progress.
    daemon = await build(config, source=source, shutdown_grace_s=STOP_GRACE_S)
    control = Booth(daemon, camera).control
    stop = asyncio.Event()
    install_signal_handlers(stop)
    lane_task = asyncio.create_task(daemon.run(stop), name="lane")
    control_task = asyncio.create_task(control.run(), name="control")
    try:
        async with asyncio.timeout(CONNECT_S):
            await daemon.link.wait_connected()
            await daemon.uplink.wait_connected()
            await control.wait_connected()
            await daemon.ops.http_settled.wait()
        print(ops_line(daemon.ops.address), READY, sep="\n", flush=True)
        await lane_task
    finally:
        await asyncio.to_thread(camera.stop)
        control_task.cancel()
        lane_task.cancel()
        await asyncio.gather(control_task, lane_task, return_exceptions=True)
    return 0


def command(config: Path, *, fps: float, size: tuple[int, int], seed: int) -> list[str]:
    """The argv that runs a booth in a process of its own."""
    width, height = size
    return [
        sys.executable, "-m", "sim.booth", "--config", str(config), "--fps", str(fps),
        "--size", f"{width}x{height}", "--seed", str(seed),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sim.booth", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="the lane configuration, as JSON")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", default="1280x720", help="camera frame size WxH")
    p.add_argument("--seed", type=int, default=1, help="camera scenes and noise")
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args(argv)
    width, _, height = a.size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        p.error(f"--size must be WxH, got {a.size!r}")
    setup_logging(a.log_level, stream=sys.stderr)
    try:
        config = parse_config(json.loads(a.config.read_text()), str(a.config))
    except (OSError, ValueError, ConfigError) as exc:
        print(f"sim.booth: cannot read {a.config}: {exc}", file=sys.stderr)
        return 2
    size = (int(width), int(height))
    return int(run_with_uvloop(lambda: booth(config, a.fps, size, a.seed)))


if __name__ == "__main__":
    sys.exit(main())
