"""Frame sources: a V4L2 camera, an RTSP/HTTP stream, a video file, an image folder, or frames
pushed by the simulator's synthetic camera.

Every source is a blocking iterator of `Frame | SourceEvent`, meant to run on the scanner's
capture thread. Live sources reconnect with backoff when the stream dies; every source reports
a blackout (no usable frame for a while) and the recovery after it. Clock and sleep are
injected so tests step time by hand.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from lane.core.backoff import Backoff
from scanner.camera_net import reachable, redact
from scanner.diagnose import why_not_open
from scanner.health import (
    BlackoutMonitor,
    CaptureSettings,
    EventKind,
    SourceEvent,
    is_black,
)

log = logging.getLogger("lane.scanner")

Image = npt.NDArray[np.uint8]
Clock = Callable[[], float]
Sleep = Callable[[float], object]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass(frozen=True, slots=True)
class Frame:
    id: int  # 1, 2, 3 ... per source, never reused (not even across reconnects)
    ts: float  # from the source's clock when the frame was taken
    image: Image


Item = Frame | SourceEvent


class FrameSource(Protocol):
    name: str
    # A finite source (an image folder or a video file read once) runs out of frames; once it
    # has, `exhausted` is True. A live camera is never finite.
    finite: bool
    exhausted: bool
    # No usable frame for this long is a blackout the source reports itself (while its thread
    # runs: the lane's stall watch counts from it).
    blackout_after_s: float

    def stream(self) -> Iterator[Item]:
        """Frames and events until the source ends or close() is called. Blocks; one caller."""
        ...

    def close(self) -> None:
        """Ask stream() to end soon; safe from any thread."""
        ...


class CaptureLike(Protocol):
    """The part of cv2.VideoCapture we use (a fake in tests plays a dying camera)."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)

    def read(self) -> tuple[bool, Any]: ...

    def release(self) -> None: ...


# OpenCV's FFmpeg backend reads its demuxer options from this variable at each open.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
DEFAULT_SETTINGS = CaptureSettings()


def opencv_capture(target: int | str, settings: CaptureSettings = DEFAULT_SETTINGS) -> CaptureLike:
    """Open a device (V4L2), a stream (FFmpeg, with timeouts so a dead link fails instead of
    blocking the capture thread for good) or a file."""
    if isinstance(target, int):
        return cv2.VideoCapture(target, cv2.CAP_V4L2)
    if target.startswith(STREAM_SCHEMES):
        # Without it OpenCV asks every RTSP camera for TCP; a UDP-only one never opens.
        os.environ[FFMPEG_OPTIONS_ENV] = f"rtsp_transport;{settings.rtsp_transport}"
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(settings.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(500, int(settings.blackout_s * 1000)),
        ]
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(target)


class _SourceBase:
    finite = False

    def __init__(self, name: str, clock: Clock, sleep: Sleep | None, blackout_after_s: float):
        self.name = name
        self.exhausted = False
        self.failure: str | None = None  # why the last open failed, until one succeeds
        self._clock = clock
        self._closed = threading.Event()
        # Waiting on the close event means close() cuts a backoff or a pacing pause short.
        self._sleep: Sleep = sleep if sleep is not None else self._closed.wait
        self.blackout_after_s = blackout_after_s
        self._monitor = BlackoutMonitor(name, clock(), blackout_after_s)
        self._next_id = 1

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _start_watch(self) -> None:
        """Blackout time counts from when someone starts reading, not from construction."""
        self._monitor = BlackoutMonitor(self.name, self._clock(), self.blackout_after_s)

    def _event(self, kind: EventKind, detail: str = "") -> SourceEvent:
        if kind in ("lost", "error"):
            self._monitor.said_dark()
        event = SourceEvent(kind, self.name, self._clock(), detail)
        level = logging.INFO if kind in ("opened", "recovered", "ended") else logging.WARNING
        log.log(level, "camera %s: %s", kind, detail, extra={"source": self.name, "event": kind})
        return event

    def _frame(self, image: Image, ts: float | None = None) -> Iterator[Item]:
        now = self._clock() if ts is None else ts
        frame = Frame(self._next_id, now, image)
        self._next_id += 1
        change = self._monitor.on_frame(now, is_black(image))
        if change is not None:
            yield self._event(change.kind, change.detail)
        yield frame

    def _tick(self) -> Iterator[Item]:
        change = self._monitor.tick(self._clock())
        if change is not None:
            # The blackout is what raises the lane's alarm: it carries why, when known.
            why = f" ({self.failure})" if self.failure else ""
            yield self._event(change.kind, change.detail + why)


class CaptureSource(_SourceBase):
    """OpenCV capture: camera index, stream URL (live: reconnects) or video file (ends/loops).

    `probe` says cheaply whether the camera can be reached (None: no cheap test); while waiting
    to reopen, it is asked every `probe_s` and a camera that comes back is reopened at once.
    `diagnose` says why an open failed (OpenCV only says that it did).
    """

    def __init__(
        self,
        target: int | str,
        *,
        live: bool,
        loop: bool = False,
        fps: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        open_capture: Callable[[int | str], CaptureLike] | None = None,
        settings: CaptureSettings = DEFAULT_SETTINGS,
        probe: Callable[[], bool | None] | None = None,
        diagnose: Callable[[], str] | None = None,
        blackout_after_s: float | None = None,
        backoff_base_s: float = 0.5,
    ) -> None:
        blackout = settings.blackout_s if blackout_after_s is None else blackout_after_s
        # Shown everywhere (events, logs, doctor); the password stays in `target` only.
        super().__init__(redact(target), clock, sleep, blackout)
        self.target = target
        self.live = live
        self.loop = loop
        self.fps = fps
        self.finite = not live and not loop
        self.settings = settings
        self._open_capture = open_capture or (lambda t: opencv_capture(t, settings))
        self._probe = probe
        self._diagnose = diagnose
        self._backoff = Backoff(backoff_base_s, settings.retry_max_s)
        self.reconnects = 0

    def stream(self) -> Iterator[Item]:
        self._start_watch()
        failures = 0  # consecutive failed opens, for the backoff
        opened_before = False
        while not self.closed:
            cap = self._open_capture(self.target)
            if not cap.isOpened():
                cap.release()
                why = "cannot open"
                if self._diagnose is not None:
                    why = f"cannot open: {self._diagnose()}"
                self.failure = why
                if not self.live:
                    yield self._event("error", f"{why} {self.name}")
                    yield self._event("ended")
                    return
                yield from self._wait_to_reconnect(failures, why)
                failures += 1
                continue
            if opened_before:
                self.reconnects += 1
            opened_before, failures, self.failure = True, 0, None
            self._monitor.opened(self._clock())
            yield self._event("opened", self.name)
            try:
                yield from self._read_all(cap)
            finally:
                cap.release()
            if self.closed:
                break
            if not self.live:
                if self.loop:
                    continue
                self.exhausted = True
                yield self._event("ended", "end of file")
                return
            yield self._event("lost", "stream stopped delivering frames")
            yield from self._wait_to_reconnect(0, "stream lost")
            failures = 1
        yield self._event("ended", "closed")

    def _read_all(self, cap: CaptureLike) -> Iterator[Item]:
        while not self.closed:
            try:
                ok, image = cap.read()
            except cv2.error as exc:  # FFmpeg/V4L2 errors surface as exceptions sometimes
                log.warning("camera read failed: %s", exc, extra={"source": self.name})
                return
            if not ok or image is None:
                return
            yield from self._frame(image)
            if self.fps:
                self._sleep(1.0 / self.fps)

    def _wait_to_reconnect(self, attempt: int, why: str) -> Iterator[Item]:
        delay = self._backoff.delay(attempt + 1)
        # Down now? Only a camera that was unreachable and answers again cuts the wait short:
        # one that answers but will not stream keeps its backoff.
        was_down = self._probe is not None and self._probe() is False
        yield from self._tick()
        yield self._event("reconnecting", f"{why}; retry {attempt + 1} in {delay:.1f} s")
        if self._probe is None:
            self._sleep(delay)
            yield from self._tick()
            return
        # Wait out the backoff, but look (cheaply) whether the camera is back meanwhile: a
        # full open every probe_s would hammer a dead camera, a full backoff recover late.
        waited = 0.0
        while waited < delay and not self.closed:
            step = min(self.settings.probe_s, delay - waited)
            self._sleep(step)
            waited += step
            yield from self._tick()
            up = self._probe()
            if up is False:
                was_down = True
            elif up and was_down:
                log.info("camera answers again: reopening", extra={"source": self.name})
                return


class ImageFolderSource(_SourceBase):
    """Every image file of a folder in name order, once or in a loop."""

    def __init__(
        self,
        folder: str | Path,
        *,
        loop: bool = False,
        fps: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        blackout_after_s: float = 2.0,
    ) -> None:
        super().__init__(str(folder), clock, sleep, blackout_after_s)
        self.folder = Path(folder)
        self.loop = loop
        self.fps = fps
        self.finite = not loop

    def stream(self) -> Iterator[Item]:
        self._start_watch()
        if not self.folder.is_dir():
            yield self._event("error", f"not a folder: {self.folder}")
            yield self._event("ended")
            return
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        yield self._event("opened", f"{len(files)} images")
        while not self.closed:
            delivered = 0
            for path in files:
                if self.closed:
                    break
                image = read_image(path)
                if image is None:
                    yield self._event("error", f"unreadable image {path.name}")
                    continue
                delivered += 1
                yield from self._frame(image)
                if self.fps:
                    self._sleep(1.0 / self.fps)
            if not self.loop or delivered == 0:
                break
        self.exhausted = not self.closed
        yield self._event("ended", "closed" if self.closed else "end of folder")


class PushSource(_SourceBase):
    """Frames handed over by the simulator's synthetic camera: `put(image, ts)`.

    A one-frame slot: a frame not yet taken when the next one arrives is replaced (counted in
    `dropped`), so a slow consumer never builds a backlog of stale frames.
    """

    def __init__(
        self,
        name: str = "push",
        *,
        clock: Clock = time.monotonic,
        blackout_after_s: float = 2.0,
        poll_s: float = 0.1,
    ) -> None:
        super().__init__(name, clock, None, blackout_after_s)
        self._slot: tuple[Image, float | None] | None = None
        self._cond = threading.Condition()
        self._poll_s = poll_s
        self.dropped = 0

    def put(self, image: Image, ts: float | None = None) -> None:
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = (image, ts)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            super().close()
            self._cond.notify_all()

    def stream(self) -> Iterator[Item]:
        self._start_watch()
        yield self._event("opened", "waiting for pushed frames")
        while True:
            with self._cond:
                if self._slot is None and not self.closed:
                    self._cond.wait(self._poll_s)
                taken, self._slot = self._slot, None
            if self.closed:
                break
            if taken is None:
                yield from self._tick()
                continue
            yield from self._frame(taken[0], taken[1])
        yield self._event("ended", "closed")


def read_image(path: Path) -> Image | None:
    """Decode an image file; None when it is missing or not an image (never raises)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc, extra={"path": str(path)})
        return None
    if data.size == 0:
        return None
    image: Image | None = cv2.imdecode(data, cv2.IMREAD_COLOR)  # type: ignore[assignment]
    return image


def open_source(
    spec: str,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleep | None = None,
    loop: bool = False,
    fps: float | None = None,
    settings: CaptureSettings = DEFAULT_SETTINGS,
) -> FrameSource:
    """Pick a source by spec: "push", "0" (V4L2 device), "rtsp://..." (or http, rtmp ...),
    "dir/" (image folder), anything else a video file."""
    blackout = settings.blackout_s
    if spec == "push":
        return PushSource(clock=clock, blackout_after_s=blackout)
    if spec.isdigit() or spec.startswith(STREAM_SCHEMES):
        target: int | str = int(spec) if spec.isdigit() else spec
        diagnose = None  # a V4L2 device has nobody to ask
        if isinstance(target, str):
            transport, timeout = settings.rtsp_transport, settings.open_timeout_s
            diagnose = partial(why_not_open, target, transport, timeout)
        return CaptureSource(
            target,
            live=True,
            clock=clock,
            sleep=sleep,
            settings=settings,
            probe=lambda: reachable(target),
            diagnose=diagnose,
        )
    if spec.endswith("/") or Path(spec).is_dir():
        return ImageFolderSource(
            spec, loop=loop, fps=fps, clock=clock, sleep=sleep, blackout_after_s=blackout
        )
    return CaptureSource(
        spec,
        live=False,
        loop=loop,
        fps=fps,
        clock=clock,
        sleep=sleep,
        settings=settings,
        diagnose=lambda: "no such file" if not Path(spec).exists() else "not a readable video",
    )
