"""The simulator's lane camera: holds what is in front of it and renders frames at a fixed rate.

The traffic generator changes the scene (`show`, `hide`, `blackout`) from the event loop; a
render thread turns the current scene into frames and pushes each one to a sink
(`sink(frame, ts)`, e.g. the scanner's `PushSource.put`). Rendering stays off the event loop,
and it is cheap (see bench/camera.py), so 30 fps costs a small fraction of a core.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace

import cv2
import numpy as np

from sim.render import DEFAULT_SIZE, Size, render_frame
from sim.scene import Conditions, Rng, Scene, as_generator

__all__ = [
    "CameraReader",
    "CameraStats",
    "Conditions",
    "FrameSink",
    "Scene",
    "SyntheticCamera",
    "frame_for",
    "render_frame",
]

log = logging.getLogger("lane.sim.camera")

FrameSink = Callable[[np.ndarray, float], None]
Clock = Callable[[], float]


def as_conditions(conditions: Conditions | str) -> Conditions:
    return conditions if isinstance(conditions, Conditions) else Conditions.preset(conditions)


def frame_for(
    code_text: str | None,
    conditions: Conditions | str = "realistic",
    rng: Rng = None,
    size: Size = DEFAULT_SIZE,
) -> np.ndarray:
    """One frame of `code_text` under a scene drawn from `conditions` (a preset name or a
    `Conditions`). The same seed gives the same bytes."""
    g = as_generator(rng)
    scene = as_conditions(conditions).sample(code_text, g)
    return render_frame(scene, g, size)


@dataclass
class CameraStats:
    frames: int = 0
    dropped: int = 0  # frame slots skipped because rendering or the sink fell behind
    sink_errors: int = 0
    last_render_ms: float = 0.0


class SyntheticCamera:
    """A lane camera in front of a scene, rendering `fps` frames a second into a sink.

    `rng` seeds both the scenes `show` draws and the per-frame noise (two independent streams,
    so frames stay reproducible however calls interleave between threads). `clock` stamps the
    frames (default `time.monotonic`); `sleep` paces the loop (default: an interruptible wait,
    so `stop` is prompt). The sink is called from the camera thread: it must be thread-safe
    and quick (hand the frame over, do not decode in it).
    """

    def __init__(
        self,
        fps: float = 30.0,
        size: Size = DEFAULT_SIZE,
        rng: Rng = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not 0 < fps <= 240:
            raise ValueError(f"fps {fps} outside 0..240")
        if size[0] < 160 or size[1] < 120:
            raise ValueError(f"frame size {size} is too small (min 160x120)")
        self.fps = fps
        self.size = size
        self._clock = clock
        self._scene_rng, self._frame_rng = as_generator(rng).spawn(2)
        self._scene = Scene(code_text=None)
        self._blackout = False
        self._render_lock = threading.Lock()  # one numpy Generator: one renderer at a time
        self._latest: tuple[np.ndarray, float] | None = None
        self._stopping = threading.Event()
        self._sleep = sleep if sleep is not None else self._interruptible_sleep
        self._thread: threading.Thread | None = None
        self.stats = CameraStats()
        self.error: BaseException | None = None

    # -- what the camera sees (the traffic generator; any thread, one at a time) -----------

    @property
    def scene(self) -> Scene:
        """The scene the next frame renders (blackout included)."""
        scene = self._scene
        return replace(scene, blackout=True) if self._blackout else scene

    def show(self, code_text: str, conditions: Conditions | str = "realistic") -> Scene:
        """A phone with `code_text` appears, posed as drawn from `conditions`. Returns the scene."""
        scene = as_conditions(conditions).sample(code_text, self._scene_rng)
        self.show_scene(scene)
        return scene

    def show_scene(self, scene: Scene) -> None:
        """Show an exact scene (tests, scripted scenarios, a phone that steadies over time)."""
        self._scene = scene  # one reference assignment: atomic for the render thread
        log.debug(
            "camera scene",
            extra={
                "code_shown": scene.code_text is not None,
                "distance_m": round(scene.distance, 2),
            },
        )

    def hide(self) -> None:
        """The phone goes away: the window is empty."""
        self.show_scene(self._scene.without_code())

    def blackout(self, on: bool = True) -> None:
        """Camera fault: frames go (near) black until switched off; the scene is kept."""
        if on != self._blackout:
            log.info("camera blackout", extra={"blackout": on})
        self._blackout = on

    # -- frames -----------------------------------------------------------------------------

    def capture(self) -> tuple[np.ndarray, float]:
        """Render one frame of the current scene now: (frame, ts). Safe from any thread."""
        scene = self.scene
        with self._render_lock:
            ts = self._clock()
            started = time.perf_counter()
            frame = render_frame(scene, self._frame_rng, self.size)
            self.stats.last_render_ms = (time.perf_counter() - started) * 1e3
            self._latest = (frame, ts)
        return frame, ts

    def latest(self) -> tuple[np.ndarray, float] | None:
        """The last frame rendered and its timestamp (for the dashboard), or None."""
        return self._latest

    # -- the frame loop ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, sink: FrameSink) -> None:
        """Start rendering into `sink` at `fps` in a daemon thread."""
        if self.running:
            raise RuntimeError("camera already running")
        self._stopping.clear()
        self.error = None
        self._thread = threading.Thread(
            target=self._run, args=(sink,), name="sim-camera", daemon=True
        )
        self._thread.start()
        size = f"{self.size[0]}x{self.size[1]}"
        log.info("camera started", extra={"fps": self.fps, "size": size})

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop and wait for the thread (at most one frame's work). From asyncio, use
        `await asyncio.to_thread(camera.stop)`."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is threading.current_thread():
            return  # called from the sink: the loop ends after this frame
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("camera thread did not stop", extra={"timeout_s": timeout})
            else:
                log.info(
                    "camera stopped",
                    extra={"frames": self.stats.frames, "dropped": self.stats.dropped},
                )

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def reader(self) -> CameraReader:
        """The camera as a capture device the scanner reads (`scanner.sources.CaptureSource`):
        each read renders the next frame on the reading thread, when its slot is due."""
        return CameraReader(self)

    def frames(self) -> Generator[tuple[np.ndarray, float], None, None]:
        """Frames of the current scene and their stamps, one per 1/fps slot, rendered on the
        caller's thread, until `stop`. Slots missed because rendering or the consumer fell
        behind are skipped (counted in `stats.dropped`), not rendered in a burst to catch up."""
        period = 1.0 / self.fps
        next_due = self._clock()
        while not self._stopping.is_set():
            frame, ts = self.capture()
            self.stats.frames += 1
            yield frame, ts
            next_due += period
            now = self._clock()
            behind = now - next_due
            if behind > period:
                missed = int(behind // period)
                self.stats.dropped += missed
                next_due += missed * period
            if next_due > now and not self._stopping.is_set():
                self._sleep(next_due - now)

    def _run(self, sink: FrameSink) -> None:
        try:
            for frame, ts in self.frames():
                try:
                    sink(frame, ts)
                except Exception:
                    # A broken consumer must not kill the camera; every failure is logged.
                    self.stats.sink_errors += 1
                    log.exception("camera sink failed", extra={"ts": ts})
        except Exception as exc:
            self.error = exc
            log.exception("camera loop failed", extra={"frames": self.stats.frames})


class CameraReader:
    """A `SyntheticCamera` read as a camera device is (`scanner.sources.CaptureLike`): `read`
    blocks until the next frame's slot and returns it, rendered on the reading thread. So in a
    booth the scanner's capture thread is the camera, as with a real one, and no camera thread
    has to wake it for each frame (one thread and one wake-up fewer on a code's path)."""

    def __init__(self, camera: SyntheticCamera) -> None:
        self._frames = camera.frames()

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        # Stamped by the reader when read, as a camera driver stamps at capture: the camera's
        # own stamp is taken before it renders, a cost of the simulator, not of the lane.
        frame, _rendered = next(self._frames, (None, None))
        return frame is not None, frame

    def release(self) -> None:
        self._frames.close()


def main(argv: list[str] | None = None) -> int:
    """Write one rendered frame to a PNG: `python -m sim.camera TEXT -o frame.png`."""
    parser = argparse.ArgumentParser(prog="python -m sim.camera", description=main.__doc__)
    parser.add_argument("text", help="text of the QR code the phone shows")
    parser.add_argument("-c", "--conditions", default="realistic", help="clear|realistic|hard")
    parser.add_argument("-s", "--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="frame.png")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        g = as_generator(args.seed)
        scene = as_conditions(args.conditions).sample(args.text, g)
        frame = render_frame(scene, g, (w, h))
    except ValueError as exc:
        parser.error(str(exc))
    if not cv2.imwrite(args.output, frame):
        parser.error(f"could not write {args.output}")
    print(f"{args.output}: {scene}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
