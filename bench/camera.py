"""Render cost of the synthetic lane camera (prints figures; asserts nothing).

    .venv/bin/python -m bench.camera [--frames 200] [--new-scenes 30] [--loop-seconds 2]
        [--scanner-seconds 15]

Per preset: a steady scene (the phone patch cached, what the 30 fps loop pays per frame),
a new scene every frame (the cache-miss cost paid once per show()), and the first-ever frame
(background and noise fields drawn). Also how much of one core a 30 fps loop takes, and what an
idle booth's camera and scanner cost at 10 fps (the change gate on) with the frames pushed from
the camera's thread to a `PushSource` against the camera read as a device (`CameraReader`
under a `CaptureSource`, as `sim.booth` does): CPU and the threads' context switches per frame,
each a thread put to sleep and woken again (Linux: /proc).
"""

from __future__ import annotations

import asyncio
import os
import time
from functools import partial

import numpy as np

from bench import args as bench_args
from bench.proc import context_switches
from scanner.change_gate import GateSettings
from scanner.decoders import make_decoder
from scanner.pipeline import ScanPipeline
from scanner.sources import CaptureSource, FrameSource, PushSource
from sim.camera import CameraReader, Conditions, Scene, SyntheticCamera, render_frame

PAY = "283015967744120934"
TOKEN = "LT1:" + "RRQT9P60GO0PQE4DNF6TF68CK.C7380PQE4DKWECECPQE/TE*PDIPC-UE646746QF6" * 3
SIZE = (1280, 720)


def _percentiles(ms: list[float]) -> str:
    p50, p95 = np.percentile(ms, [50, 95])
    return f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"


def bench_camera(frames: int = 200, new_scenes: int = 30, loop_seconds: float = 2.0) -> None:
    g = np.random.default_rng(0)
    started = time.perf_counter()
    render_frame(Scene(PAY), g, SIZE)
    first_ms = (time.perf_counter() - started) * 1e3
    print(f"first frame (background, noise fields, phone): {first_ms:.0f} ms")

    for preset in ("clear", "realistic", "hard"):
        conditions = Conditions.preset(preset)
        steady: list[float] = []
        scene = conditions.sample(TOKEN, g)
        render_frame(scene, g, SIZE)  # warm the per-scene cache
        for _ in range(frames):
            t0 = time.perf_counter()
            render_frame(scene, g, SIZE)
            steady.append((time.perf_counter() - t0) * 1e3)
        fresh: list[float] = []
        for i in range(new_scenes):
            s = conditions.sample(TOKEN if i % 2 else PAY, g)
            t0 = time.perf_counter()
            render_frame(s, g, SIZE)
            fresh.append((time.perf_counter() - t0) * 1e3)
        print(f"{preset:9s} steady     {_percentiles(steady)}")
        print(f"{preset:9s} new scene  {_percentiles(fresh)}")

    for label, scene in (("empty", Scene(None)), ("blackout", Scene(PAY, blackout=True))):
        times: list[float] = []
        for _ in range(frames):
            t0 = time.perf_counter()
            render_frame(scene, g, SIZE)
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"{label:9s} steady     {_percentiles(times)}")

    _bench_loop(loop_seconds)


def _bench_loop(seconds: float) -> None:
    """CPU time of the real 30 fps thread over a couple of seconds, as a share of one core."""
    count = 0

    def sink(frame: np.ndarray, ts: float) -> None:
        nonlocal count
        count += 1

    cam = SyntheticCamera(fps=30, size=SIZE, rng=1)
    cam.show(TOKEN, "realistic")
    cam.capture()  # the scene's patch is drawn before we time the loop
    cpu0, wall0 = time.process_time(), time.perf_counter()
    cam.start(sink)
    time.sleep(seconds)
    cam.stop()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(
        f"30 fps loop: {count} frames in {wall:.2f} s, dropped {cam.stats.dropped}, "
        f"CPU {cpu / wall * 100:.1f}% of one core"
    )


def _reader(camera: SyntheticCamera, _target: int | str) -> CameraReader:
    return camera.reader()


def _push(source: PushSource, frame: np.ndarray, _ts: float) -> None:
    source.put(frame, time.monotonic())  # stamped when handed over, as sim.lane does


def _bench_scanner(seconds: float, fps: float = 10.0) -> None:
    """An idle booth's camera and scanner: pushed frames against the camera read as a device."""
    for how in ("pushed", "read"):
        cam = SyntheticCamera(fps=fps, size=SIZE, rng=1)
        source: FrameSource
        if how == "pushed":
            source = push = PushSource()
        else:
            source = CaptureSource("camera", live=True, open_capture=partial(_reader, cam))
        pipeline = ScanPipeline(source, make_decoder(), lambda _r: None, gate=GateSettings())
        loop = asyncio.new_event_loop()  # never run: an empty window reports no code
        pipeline.start(loop)
        if how == "pushed":
            cam.start(partial(_push, push))
        time.sleep(min(1.0, seconds))  # the gate takes its reference
        frames0, switches0, cpu0 = (
            cam.stats.frames,
            context_switches(os.getpid()),
            time.process_time(),
        )
        wall0 = time.perf_counter()
        time.sleep(seconds)
        frames, switches = cam.stats.frames - frames0, context_switches(os.getpid())
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        cam.stop()
        pipeline.stop()
        loop.close()
        voluntary, involuntary = (b - a for a, b in zip(switches0, switches, strict=True))
        n = max(frames, 1)
        print(
            f"idle booth, {how:6s}: {frames} frames at {fps:g} fps, CPU {cpu / wall * 100:.1f}% "
            f"of one core, {cpu * 1e3 / n:.2f} ms, {voluntary / n:.2f} voluntary and "
            f"{involuntary / n:.2f} involuntary context switches a frame"
        )


def main() -> None:
    parser = bench_args.parser(__doc__)
    parser.add_argument("--frames", type=int, default=200, help="steady frames timed per scene")
    parser.add_argument("--new-scenes", type=int, default=30, help="new scenes timed per preset")
    parser.add_argument(
        "--loop-seconds", type=float, default=2.0, help="the 30 fps loop's CPU measurement"
    )
    parser.add_argument(
        "--scanner-seconds", type=float, default=15.0, help="each idle booth scanner measured"
    )
    args = parser.parse_args()
    bench_camera(args.frames, args.new_scenes, args.loop_seconds)
    _bench_scanner(args.scanner_seconds)


if __name__ == "__main__":
    main()
