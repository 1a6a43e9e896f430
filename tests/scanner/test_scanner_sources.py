"""Frame sources: image folder, video file, pushed frames, reconnects and blackouts."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from scanner_testkit import FakeClock

from scanner.health import (
    BlackoutMonitor,
    SourceEvent,
    StallWatch,
    is_black,
    same_picture,
)
from scanner.sources import (
    CaptureSource,
    Frame,
    ImageFolderSource,
    Item,
    PushSource,
    open_source,
)


def grey(value: int, shape: tuple[int, ...] = (48, 64, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def textured(seed: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)


def kinds(items: list[Item]) -> list[str]:
    return [i.kind if isinstance(i, SourceEvent) else f"frame{i.id}" for i in items]


def test_image_folder_in_name_order(tmp_path: Path) -> None:
    for name, value in [("b.png", 120), ("a.png", 60), ("c.jpg", 200)]:
        assert cv2.imwrite(str(tmp_path / name), grey(value))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    clock = FakeClock()
    items = list(ImageFolderSource(tmp_path, clock=clock).stream())
    # The image after the broken one says the source sees again (the lane reopens on it).
    assert kinds(items) == ["opened", "frame1", "frame2", "error", "recovered", "frame3", "ended"]
    frames = [i for i in items if isinstance(i, Frame)]
    assert [int(f.image.mean()) for f in frames] == [60, 120, 200]  # a, b, (broken), c
    assert all(f.ts == clock.now for f in frames)
    error = items[3]
    assert isinstance(error, SourceEvent) and error.detail == "unreadable image broken.png"


def test_image_folder_loops_with_pacing(tmp_path: Path) -> None:
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), textured(i))
    clock = FakeClock()
    source = ImageFolderSource(tmp_path, loop=True, fps=10, clock=clock, sleep=clock.sleep)
    frames = [i for i in itertools.islice(source.stream(), 7) if isinstance(i, Frame)]
    source.close()
    assert [f.id for f in frames] == [1, 2, 3, 4, 5, 6]
    assert np.array_equal(frames[0].image, frames[2].image)
    assert clock.sleeps[:5] == [0.1] * 5


def test_missing_folder_reports_error(tmp_path: Path) -> None:
    items = list(ImageFolderSource(tmp_path / "nope").stream())
    assert kinds(items) == ["error", "ended"]


def test_video_file(tmp_path: Path) -> None:
    path = tmp_path / "lane.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(5):
        writer.write(textured(i))
    writer.release()
    source = open_source(str(path))
    assert isinstance(source, CaptureSource) and not source.live
    items = list(source.stream())
    assert kinds(items) == ["opened", *(f"frame{i}" for i in range(1, 6)), "ended"]
    assert all(isinstance(i, Frame) and i.image.shape == (48, 64, 3) for i in items[1:-1])


def test_unopenable_video_file_ends_with_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    assert kinds(list(open_source(str(bad)).stream())) == ["error", "ended"]


def test_push_source_keeps_only_the_newest_frame() -> None:
    clock = FakeClock()
    source = PushSource(clock=clock)
    stream = source.stream()
    assert kinds([next(stream)]) == ["opened"]
    source.put(textured(1), ts=5.0)
    source.put(textured(2), ts=6.0)  # replaces the untaken one
    frame = next(stream)
    assert isinstance(frame, Frame)
    assert (frame.id, frame.ts) == (1, 6.0)
    assert np.array_equal(frame.image, textured(2))
    assert source.dropped == 1
    source.put(textured(3))  # no ts: the source's clock
    frame = next(stream)
    assert isinstance(frame, Frame) and (frame.id, frame.ts) == (2, clock.now)
    source.close()
    assert kinds(list(stream)) == ["ended"]


def test_push_source_blackout_and_recovery() -> None:
    clock = FakeClock()
    source = PushSource(clock=clock, blackout_after_s=2.0, poll_s=0.001)
    stream = source.stream()
    next(stream)
    source.put(textured(1))
    assert isinstance(next(stream), Frame)
    clock.now += 2.5  # the simulator stops pushing: the next idle poll reports it
    event = next(stream)
    assert isinstance(event, SourceEvent)
    assert (event.kind, event.detail) == ("blackout", "no frames for 2.5 s")
    source.put(textured(2))
    assert kinds([next(stream), next(stream)]) == ["recovered", "frame2"]
    # A covered lens: frames keep coming but they are black.
    for _ in range(3):
        clock.now += 1.0
        source.put(grey(3))
        item = next(stream)
        if isinstance(item, SourceEvent):
            break
    assert isinstance(item, SourceEvent)
    assert (item.kind, item.detail) == ("blackout", "black frames for 2.0 s")
    source.close()


class ScriptedCapture:
    """A camera that opens or not, delivers some frames, then dies (outside our part: OpenCV)."""

    def __init__(self, opens: bool, frames: int) -> None:
        self.opens = opens
        self.left = frames
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802
        return self.opens

    def read(self) -> tuple[bool, Any]:
        if self.left == 0:
            return False, None
        self.left -= 1
        return True, textured(self.left)

    def release(self) -> None:
        self.released = True


def test_live_stream_reconnects_with_backoff_and_reports_blackout() -> None:
    clock = FakeClock()
    script = iter([(False, 0), (True, 2), (False, 0), (True, 1)])
    opened: list[ScriptedCapture] = []

    def open_capture(target: int | str) -> ScriptedCapture:
        cap = ScriptedCapture(*next(script))
        opened.append(cap)
        return cap

    source = CaptureSource(
        "rtsp://camera.invalid/lane",
        live=True,
        clock=clock,
        sleep=clock.sleep,
        open_capture=open_capture,
        blackout_after_s=1.0,
    )
    items = list(itertools.islice(source.stream(), 13))
    source.close()
    assert kinds(items) == [
        "reconnecting",  # first open fails
        "opened", "frame1", "frame2",
        "lost", "reconnecting",  # the stream dies
        "reconnecting",  # the reopen fails: longer wait
        "blackout",  # 1.5 s without a frame
        "opened", "recovered", "frame3",
        "lost", "reconnecting",
    ]  # fmt: skip
    assert clock.sleeps[:3] == [0.5, 0.5, 1.0]
    assert source.reconnects == 1
    assert all(c.released for c in opened)
    blackout = items[7]
    assert (
        isinstance(blackout, SourceEvent) and blackout.detail == "no frames for 1.5 s (cannot open)"
    )


def test_a_stream_reopened_at_once_says_it_sees_again() -> None:
    """A stream dropped and reopened within the blackout time (an NVR or encoder restarting
    the session) declares no blackout, but it said it was lost: its first usable frame says
    the recovery, or the lane (closed to payments by the loss) would stay closed for ever."""
    clock = FakeClock()
    script = iter([(True, 1), (True, 1), (True, 1)])
    source = CaptureSource(
        "rtsp://camera.invalid/lane",
        live=True,
        clock=clock,
        sleep=clock.sleep,
        open_capture=lambda _t: ScriptedCapture(*next(script)),
        blackout_after_s=2.0,
    )
    items = list(itertools.islice(source.stream(), 7))
    source.close()
    assert kinds(items) == [
        "opened", "frame1",
        "lost", "reconnecting",  # 0.5 s: within the blackout time, no blackout
        "opened", "recovered", "frame2",
    ]  # fmt: skip


def test_refused_rtsp_stream_keeps_retrying() -> None:
    clock = FakeClock()
    source = open_source("rtsp://127.0.0.1:9/none", clock=clock, sleep=clock.sleep)
    items: Iterator[Item] = source.stream()
    first = list(itertools.islice(items, 3))
    source.close()
    assert kinds(first) == ["reconnecting", "reconnecting", "reconnecting"]
    # The backoff (0.5, then 1.0 s) is waited out in probe steps of 0.5 s; the third wait
    # starts after its event.
    assert clock.sleeps == [0.5, 0.5, 0.5]
    # The real reason, not OpenCV's bare "cannot open".
    detail = first[0].detail  # type: ignore[union-attr]
    assert detail.startswith("cannot open: 127.0.0.1:9: connection refused")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("push", PushSource), ("0", CaptureSource), ("rtsp://cam/1", CaptureSource),
     ("http://cam/mjpg", CaptureSource), ("clips/", ImageFolderSource),
     ("lane.mp4", CaptureSource)],
)  # fmt: skip
def test_open_source_picks_by_spec(spec: str, expected: type) -> None:
    source = open_source(spec)
    assert isinstance(source, expected)
    if isinstance(source, CaptureSource):
        assert source.live == (spec != "lane.mp4")
        assert source.target == (0 if spec == "0" else spec)


def test_black_detection_and_monitor() -> None:
    assert is_black(grey(5))
    assert not is_black(grey(128))
    assert not is_black(textured(1))
    m = BlackoutMonitor("cam", now=0.0, after_s=2.0)
    assert m.tick(1.9) is None
    event = m.tick(2.0)
    assert event is not None and event.kind == "blackout"
    assert m.tick(5.0) is None  # reported once
    recovered = m.on_frame(5.5, black=False)
    assert recovered is not None and recovered.kind == "recovered"
    assert m.on_frame(5.6, black=False) is None


def test_the_stall_watch_sees_a_silent_capture_and_stuck_decoders() -> None:
    capture = "capture stalled: no frame for over 4 s"
    decoding = "decoding stalled: frames arrive, none decoded for over 4 s"
    w = StallWatch(4.0, now=0.0)
    assert w.observe(0.0, 0, 0) is None
    assert w.observe(3.9, 0, 0) is None
    assert w.observe(4.0, 0, 0) == capture  # not one frame since the start
    assert w.observe(5.0, 30, 30) is None  # frames back, each decoded
    assert w.observe(6.0, 60, 59) is None  # one frame in flight at the look: fine
    assert w.observe(7.0, 90, 90) is None
    # Frames keep coming, nothing is decoded any more (stuck or failing decoders).
    assert w.observe(8.0, 120, 90) is None
    assert w.observe(11.9, 240, 90) is None
    assert w.observe(12.0, 270, 90) == decoding
    assert w.observe(13.0, 300, 300) is None  # the workers caught up
    # The first frame after a quiet spell is not a stall, though nothing was decoded for long.
    assert w.observe(16.9, 300, 300) is None
    assert w.observe(17.0, 301, 300) is None
    assert w.observe(17.5, 301, 301) is None
    assert w.observe(21.5, 301, 301) == capture


def test_a_picture_is_the_same_only_when_its_pixels_are() -> None:
    rng = np.random.default_rng(5)
    scene = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert same_picture(scene, scene.copy())
    # Sensor noise of a static scene (sigma 2): the next frame is never the same picture.
    noisy = np.clip(scene + rng.normal(0, 2, scene.shape), 0, 255).astype(np.uint8)
    assert not same_picture(scene, noisy)
    assert not same_picture(scene, scene[:, :, 0].copy())  # another size or format
    gray = scene[:, :, 1].copy()
    assert same_picture(gray, gray.copy())


def test_the_time_an_open_takes_is_not_blindness() -> None:
    monitor = BlackoutMonitor("cam", 0.0, after_s=2.0)
    monitor.opened(5.0)  # a slow open (a long keyframe interval): the clock starts again here
    assert monitor.tick(6.0) is None
    assert monitor.tick(7.5) is not None  # 2.5 s after the open, still nothing: a blackout
    monitor.opened(9.0)  # a blackout already declared stays until a usable frame
    assert monitor.out
    recovered = monitor.on_frame(9.1, black=False)
    assert recovered is not None and recovered.kind == "recovered"
