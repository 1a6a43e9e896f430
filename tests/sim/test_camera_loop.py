"""SyntheticCamera: scene changes, pacing with an injected clock, the render thread's life."""

from __future__ import annotations

import asyncio
import logging
import threading
from itertools import islice

import cv2
import numpy as np
import pytest
import zxingcpp

from scanner.health import SourceEvent
from scanner.sources import CaptureSource, Frame
from sim.camera import Scene, SyntheticCamera

PAY = "283015967744120934"
QR_ONLY = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
WAIT_S = 5.0  # upper bound for a thread to report back; tests finish in milliseconds


class FakeClock:
    """Time that moves only when the camera sleeps (or a test pushes it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Collector:
    """A sink that keeps timestamps and signals after `want` frames."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.frames: list[np.ndarray] = []
        self.stamps: list[float] = []
        self.enough = threading.Event()

    def __call__(self, frame: np.ndarray, ts: float) -> None:
        self.frames.append(frame)
        self.stamps.append(ts)
        if len(self.stamps) >= self.want:
            self.enough.set()


def decode(frame: np.ndarray) -> list[str]:
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return [b.text for b in zxingcpp.read_barcodes(gray, formats=QR_ONLY)]


def small_camera(clock: FakeClock | None = None, seed: int = 1) -> SyntheticCamera:
    if clock is None:
        return SyntheticCamera(fps=30, size=(640, 360), rng=seed)
    return SyntheticCamera(fps=30, size=(640, 360), rng=seed, clock=clock, sleep=clock.sleep)


def test_show_hide_blackout_change_what_frames_show() -> None:
    cam = small_camera()
    assert decode(cam.capture()[0]) == []  # an empty window to begin with
    cam.show(PAY, "clear")
    assert decode(cam.capture()[0]) == [PAY]
    cam.blackout(True)
    frame, _ = cam.capture()
    assert cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).mean() < 8
    assert decode(frame) == []
    cam.blackout(False)  # the scene behind the fault is kept
    assert decode(cam.capture()[0]) == [PAY]
    cam.hide()
    assert cam.scene.code_text is None
    assert decode(cam.capture()[0]) == []


def test_show_scene_sets_an_exact_scene_and_latest_tracks_frames() -> None:
    cam = small_camera()
    assert cam.latest() is None
    scene = Scene(PAY, distance=0.9, dark_mode=True)
    cam.show_scene(scene)
    assert cam.scene == scene
    frame, ts = cam.capture()
    latest = cam.latest()
    assert latest is not None and latest[0] is frame and latest[1] == ts


def test_same_seed_cameras_render_identical_frames() -> None:
    a, b = small_camera(seed=11), small_camera(seed=11)
    assert a.show(PAY) == b.show(PAY)
    assert a.capture()[0].tobytes() == b.capture()[0].tobytes()
    assert a.capture()[0].tobytes() == b.capture()[0].tobytes()


def test_loop_paces_frames_at_fps_on_the_injected_clock() -> None:
    clock = FakeClock()
    cam = small_camera(clock)
    sink = Collector(want=6)
    cam.start(sink)
    try:
        assert sink.enough.wait(WAIT_S)
    finally:
        cam.stop()
    assert not cam.running
    assert sink.stamps[:6] == pytest.approx([i / 30 for i in range(6)])
    assert cam.stats.dropped == 0
    assert cam.stats.frames >= 6


def test_loop_skips_missed_slots_instead_of_bursting() -> None:
    clock = FakeClock()
    cam = small_camera(clock)
    period = 1 / 30
    stamps: list[float] = []
    done = threading.Event()

    def slow_sink(frame: np.ndarray, ts: float) -> None:
        stamps.append(ts)
        if len(stamps) == 2:
            clock.now += 3.5 * period  # this frame's hand-off stalled
        if len(stamps) == 5:
            done.set()

    cam.start(slow_sink)
    try:
        assert done.wait(WAIT_S)
    finally:
        cam.stop()
    # The stalled slots 2p and 3p are dropped; the next frame goes out at once (4.5p) and the
    # loop is back on its grid at 5p: one frame per slot, never a catch-up burst.
    assert cam.stats.dropped == 2
    assert stamps[:5] == pytest.approx([0, period, 4.5 * period, 5 * period, 6 * period])


def test_a_failing_sink_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    cam = small_camera(clock)
    calls = threading.Event()
    seen: list[float] = []

    def flaky(frame: np.ndarray, ts: float) -> None:
        seen.append(ts)
        if len(seen) >= 3:
            calls.set()
        raise RuntimeError("consumer broke")

    with caplog.at_level(logging.ERROR, logger="lane.sim.camera"):
        cam.start(flaky)
        try:
            assert calls.wait(WAIT_S)
        finally:
            cam.stop()
    assert cam.stats.sink_errors >= 3
    assert cam.error is None
    assert any("camera sink failed" in r.getMessage() for r in caplog.records)


def test_start_twice_is_refused_and_stop_is_idempotent() -> None:
    clock = FakeClock()
    cam = small_camera(clock)
    cam.start(Collector(want=1))
    try:
        with pytest.raises(RuntimeError, match="already running"):
            cam.start(Collector(want=1))
    finally:
        cam.stop()
    cam.stop()
    assert not cam.running


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fps"):
        SyntheticCamera(fps=0)
    with pytest.raises(ValueError, match="too small"):
        SyntheticCamera(size=(100, 50))


async def test_real_time_loop_feeds_an_asyncio_consumer_without_blocking_it() -> None:
    """The sink hops frames onto the event loop as the scanner's PushSource would; the loop
    keeps ticking while the camera renders in its thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[np.ndarray, float]] = asyncio.Queue()

    def sink(frame: np.ndarray, ts: float) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (frame, ts))

    cam = SyntheticCamera(fps=30, size=(640, 360), rng=3)
    cam.show(PAY, "clear")
    cam.start(sink)
    try:
        ticks = 0
        received: list[tuple[np.ndarray, float]] = []
        while len(received) < 3:
            try:
                received.append(await asyncio.wait_for(queue.get(), 0.01))
            except TimeoutError:
                ticks += 1  # the event loop ran a timeout while frames were rendered
            assert ticks < WAIT_S / 0.01
    finally:
        await asyncio.to_thread(cam.stop)
    assert not cam.running
    stamps = [ts for _, ts in received]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert decode(received[-1][0]) == [PAY]


def test_a_sink_may_stop_the_camera_itself() -> None:
    clock = FakeClock()
    cam = small_camera(clock)
    stamps: list[float] = []
    stopped = threading.Event()
    threads: list[threading.Thread] = []

    def sink(frame: np.ndarray, ts: float) -> None:
        stamps.append(ts)
        if len(stamps) == 2:
            threads.append(threading.current_thread())
            cam.stop()
            stopped.set()

    cam.start(sink)
    assert stopped.wait(WAIT_S)
    threads[0].join(WAIT_S)
    assert not threads[0].is_alive()
    assert not cam.running
    assert len(stamps) == 2
    assert cam.error is None


def test_a_reader_renders_paced_frames_on_the_reading_thread() -> None:
    """A booth's scanner reads the camera as a device (CameraSource over `reader()`): each read
    waits for its frame's slot and renders it on the reading thread; no camera thread runs."""
    clock = FakeClock()
    cam = small_camera(clock)
    cam.show(PAY, "clear")
    reader = cam.reader()
    assert reader.isOpened()
    reads = [reader.read() for _ in range(4)]
    assert all(ok for ok, _ in reads)
    last = reads[-1][1]
    assert last is not None and decode(last) == [PAY]
    assert clock.now == pytest.approx(3 / 30)  # paced: three slots waited for
    assert cam.stats.frames == 4 and not cam.running
    cam.stop()  # a stopped camera ends the reads, as a device that is gone
    assert reader.read() == (False, None)
    reader.release()


def test_a_booth_source_reads_the_camera_and_reports_its_blackout() -> None:
    """The scanner's source over the reader: frames, then a blackout the source sees in them."""
    clock = FakeClock()
    cam = small_camera(clock)
    source = CaptureSource(
        "synthetic-camera",
        live=True,
        clock=clock,
        sleep=clock.sleep,
        open_capture=lambda _target: cam.reader(),
        blackout_after_s=0.1,
    )
    items = source.stream()
    assert next(items) == SourceEvent("opened", "synthetic-camera", 0.0, "synthetic-camera")
    assert isinstance(next(items), Frame)
    cam.blackout(True)
    kinds = [item.kind for item in islice(items, 8) if isinstance(item, SourceEvent)]
    assert kinds == ["blackout"]
    source.close()
    cam.stop()
