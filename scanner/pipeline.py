"""The scanner shell: capture thread -> one-frame slot -> decode workers -> the asyncio loop.

Capture runs on its own thread and only ever keeps the newest frame; a frame that was not
picked up before the next one arrived is dropped and counted, so decoding never falls behind
the camera. The change gate (`scanner.frame_gate`) judges each frame on the capture thread and
lets pass, counted, the frames that are the same view as the last one in which nothing was
found: those never wake a decode worker, nor replace a frame waiting for one. Decoding runs on
a few worker threads (the decoders release the GIL); results are classified, deduplicated and
handed to the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, TypeVar

import cv2
import numpy as np

from lane.core.backoff import Backoff
from scanner.change_gate import GateSettings, Sighting, Thumbnail
from scanner.decoders import Decoder
from scanner.dedup import Deduplicator
from scanner.detection import Detection, GrayImage, Polygon, as_gray
from scanner.frame_gate import FrameGate
from scanner.health import EventKind, SourceEvent, same_picture
from scanner.payload import Payload, UnknownPayload, classify, is_payment
from scanner.sources import Clock, Frame, FrameSource, Image

log = logging.getLogger("lane.scanner")
DEFAULT_GATE = GateSettings()
# A live source that raised is read again after 0.5 s, doubling to 10 s.
RESTART_BACKOFF = Backoff(0.5, 10.0)
# A frame is compared with the one looked at before (a frozen camera repeats its picture) once
# this long after that look: about 0.1 ms a second at any frame rate, every frame of a slow one.
FRESH_CHECK_S = 1.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ScanResult:
    text: str
    payload: Payload
    frame_id: int
    frame_ts: float
    decoder: str
    decode_ms: float
    polygon: Polygon
    # Printed at the booth (a sticker: `ScanPipeline.printed_here`), not shown by a driver.
    static: bool = False


@dataclass(frozen=True, slots=True)
class ScanStats:
    frames_in: int  # frames the source delivered
    # Frames seen to differ from the one looked at before: the first, then of one frame a
    # FRESH_CHECK_S (a frozen camera's never do: lane.core.frozen).
    fresh: int
    decoded: int  # frames a worker decoded
    skipped: int  # frames the change gate let pass undecoded (the same view, nothing in it)
    dropped: int  # frames replaced by a newer one before any worker took them
    results: int  # codes reported (after deduplication)
    duplicates: int  # codes suppressed as repeats
    errors: int  # decoder failures (logged)
    pending: int  # frames waiting in the slot or being decoded
    source_ended: bool
    decode_ms_p50: float | None  # over the last 500 decoded frames
    decode_ms_p95: float | None
    # Codes known as printed at the booth now: listed (`static_codes`) and learned by the
    # change gate. Read, they are ignored (nobody's try): the operator's to see.
    static_known: int = 0
    # When (the source's clock) the newest frame looked at was taken, and the newest one seen
    # to differ from the look before it (None: none yet): lane.core.frozen judges them.
    looked_ts: float | None = None
    changed_ts: float | None = None


class LatestFrame(NamedTuple):
    frame_id: int
    image: bytes | Image  # JPEG bytes, or the frame itself
    polygons: tuple[Polygon, ...]


class _Job(NamedTuple):
    """A frame handed to the decode workers, with what the capture thread made of it."""

    frame: Frame
    gray: GrayImage | None  # made by the change gate (None: no gate, the worker makes it)
    thumb: Thumbnail | None  # the gate's thumbnail, when it made one
    gate_ms: float  # the gate's work on the capture thread, part of the frame's decode_ms


class _NewestFrameSlot:
    """Holds at most one frame; put() replaces, take() waits. Shared by capture and workers."""

    def __init__(self) -> None:
        self._job: _Job | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._in_flight = 0  # taken and not yet done()

    def put(self, job: _Job) -> bool:
        """Store `job`; True when it replaced one nobody had taken (a drop)."""
        with self._cond:
            replaced = self._job is not None
            self._job = job
            self._cond.notify()
            return replaced

    def take(self) -> _Job | None:
        """The newest frame, waiting for one; None once closed. No timeout: an idle worker
        sleeps until a frame or close() wakes it, not several times a second to look."""
        with self._cond:
            while self._job is None and not self._closed:
                self._cond.wait()
            job, self._job = self._job, None
            if job is not None:
                self._in_flight += 1
            return job

    def done(self) -> None:
        with self._cond:
            self._in_flight -= 1

    @property
    def pending(self) -> int:
        """Frames waiting or being decoded (counted atomically with the hand-over)."""
        with self._cond:
            return self._in_flight + (self._job is not None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._job = None
            self._cond.notify_all()


class _FreshLooks:
    """Whether the picture changed since the last look, looked at once a FRESH_CHECK_S (a frame
    not looked at is not counted fresh). Against the last look's frame, not the frame before:
    a live camera may send a picture more than once (a slow shutter at night, a still scene's
    stream between keyframes). The capture thread's own."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._looked: tuple[float, Image] | None = None  # when, and the frame looked at

    def fresh(self, image: Image) -> bool | None:
        """None: not looked at (the last look is too recent); else whether it changed."""
        now = self._clock()
        if self._looked is not None and 0.0 <= now - self._looked[0] < FRESH_CHECK_S:
            return None
        before, self._looked = self._looked, (now, image)
        return before is None or not same_picture(before[1], image)


class ScanPipeline:
    def __init__(
        self,
        source: FrameSource,
        decoder: Decoder,
        on_result: Callable[[ScanResult], object],
        on_status: Callable[[SourceEvent], object] | None = None,
        *,
        workers: int = 2,
        clock: Clock = time.monotonic,
        dedup_window_s: float = 2.0,
        gate: GateSettings | None = DEFAULT_GATE,
        static_codes: frozenset[str] = frozenset(),
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.source = source
        self.decoder = decoder
        self.gate = gate
        self.static_codes = static_codes  # texts the operator knows are printed at the booth
        self._frame_gate = FrameGate(decoder, gate) if gate is not None else None
        self._on_result = on_result
        self._on_status = on_status
        self._workers = workers
        self._clock = clock
        self._slot = _NewestFrameSlot()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards everything below
        self._dedup = Deduplicator(dedup_window_s)
        self._counts = dict.fromkeys(
            (
                "frames_in",
                "fresh",
                "decoded",
                "skipped",
                "dropped",
                "results",
                "duplicates",
                "errors",
            ),
            0,
        )
        self._decode_ms: deque[float] = deque(maxlen=500)
        self._source_ended = False
        self._newest_ts = -math.inf  # the newest frame the source gave (forget_seen)
        self._looked_ts: float | None = None
        self._changed_ts: float | None = None
        self._latest: tuple[Frame, tuple[Polygon, ...]] | None = None
        # The last frame a code was found in, and when (self._clock) it was decoded.
        self._last_read: tuple[Frame, tuple[Polygon, ...], float] | None = None
        self._latest_jpeg: tuple[int, bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start capture and decode threads; results go to `loop` (default: the running one)."""
        if self._threads:
            raise RuntimeError("pipeline already started")
        self._loop = loop or asyncio.get_running_loop()
        # Frames are decoded side by side by `workers` threads; OpenCV's own pool inside each
        # call would put more threads on the same cores (in a plaza, one pool per booth
        # process) and cost CPU spinning: bench/plaza.py measured ~15% more per lane with it.
        cv2.setNumThreads(1)
        self._threads = [
            threading.Thread(target=self._capture, name="scan-capture", daemon=True),
            *(
                threading.Thread(target=self._work, name=f"scan-decode-{i}", daemon=True)
                for i in range(self._workers)
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capture, let in-flight decodes finish, join every thread. Idempotent."""
        self._stop.set()
        self.source.close()
        self._slot.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                # A capture blocked inside a camera read ends when the read times out.
                log.warning("thread %s did not stop in time", thread.name)

    def forget_seen(self, taken_by: float | None = None) -> None:
        """A new vehicle is at the lane: codes still in view count as new sightings, but for
        codes that are no payment code of any kind. Those (a QR sticker on the booth, an ad)
        are read on every frame; reported again, each driver would be refused for them, a try
        spent and "Payment refused" shown as the car pulls up, while nothing a lane checks
        (a replay) is at stake.

        A frame the source gave before now, or taken by `taken_by` (the source's clock: the
        lane's), decoded late on a loaded machine, showed the pay point before: its codes are
        not reported again, nor kept as sightings (docs/scanner.md, "Deduplication")."""
        with self._lock:
            since = self._newest_ts if taken_by is None else max(self._newest_ts, taken_by)
            self._dedup.clear(keep=lambda text: not is_payment(text), since=since)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.stop)

    async def __aenter__(self) -> ScanPipeline:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- observation ------------------------------------------------------------------------

    def stats(self) -> ScanStats:
        with self._lock:
            c = dict(self._counts)
            samples = sorted(self._decode_ms)
            ended = self._source_ended
            looked, changed = self._looked_ts, self._changed_ts
        learned = frozenset() if self._frame_gate is None else self._frame_gate.known_texts()
        return ScanStats(
            frames_in=c["frames_in"],
            fresh=c["fresh"],
            decoded=c["decoded"],
            skipped=c["skipped"],
            dropped=c["dropped"],
            results=c["results"],
            duplicates=c["duplicates"],
            errors=c["errors"],
            pending=self._slot.pending,
            source_ended=ended,
            decode_ms_p50=_percentile(samples, 0.50),
            decode_ms_p95=_percentile(samples, 0.95),
            static_known=len(self.static_codes | learned),
            looked_ts=looked,
            changed_ts=changed,
        )

    def latest_frame(
        self, jpeg: bool = True, quality: int = 80, hold_read_s: float = 0.0
    ) -> LatestFrame | None:
        """The last frame decoded (or let pass by the change gate) and the outlines of the codes
        read in it (for the dashboard).

        With `hold_read_s`, the last frame a code was read in is shown instead for that long
        after it was decoded: a code is in view for a few frames only, and a viewer that looks
        now and then would otherwise almost never see the frame that held it.
        """
        with self._lock:
            latest, read, cached = self._latest, self._last_read, self._latest_jpeg
        if read is not None and self._clock() - read[2] < hold_read_s:
            latest = read[:2]
        if latest is None:
            return None
        frame, polygons = latest
        if not jpeg:
            return LatestFrame(frame.id, frame.image, polygons)
        if cached is not None and cached[0] == frame.id:
            return LatestFrame(frame.id, cached[1], polygons)
        ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"cannot encode frame {frame.id} as JPEG")
        data = np.asarray(buf).tobytes()
        with self._lock:
            self._latest_jpeg = (frame.id, data)
        return LatestFrame(frame.id, data, polygons)

    # -- threads ----------------------------------------------------------------------------

    def _capture(self) -> None:
        """Read the source; a live one that fails (a driver or library raising what its own
        reconnect does not handle) is read again after a backoff, never left dead: the lane
        would stay blind, alive and unrestarted. A finite source is read once, as ever."""
        failures = 0
        looks = _FreshLooks(self._clock)
        try:
            while not self._stop.is_set():
                try:
                    for item in self.source.stream():
                        if isinstance(item, SourceEvent):
                            self._deliver_status(item)  # even while stopping: "ended" is news
                            continue
                        if self._stop.is_set():
                            continue  # the source is closed and winds down by itself
                        if failures:
                            failures = 0
                            self._deliver_status(self._event("recovered", "capture restarted"))
                        self._hand_over(item, looks.fresh(item.image))
                    return
                except Exception as exc:
                    log.exception("camera source %s failed", self.source.name)
                    if self.source.finite:
                        self._deliver_status(self._event("error", f"source failed: {exc}"))
                        return
                    failures += 1
                    delay = RESTART_BACKOFF.delay(failures)
                    why = f"capture failed: {exc}; restarting in {delay:.1f} s"
                    self._deliver_status(self._event("error", why))
                    self._stop.wait(delay)
        finally:
            with self._lock:
                self._source_ended = True

    def _event(self, kind: EventKind, detail: str) -> SourceEvent:
        return SourceEvent(kind, self.source.name, self._clock(), detail)

    def _hand_over(self, frame: Frame, fresh: bool | None) -> None:
        """On the capture thread: the change gate's verdict, then the frame to the workers
        unless the gate lets it pass (the same view as its reference). A frame let pass wakes
        no worker and never replaces a frame waiting for one (a phone's, say). `fresh`: not the
        picture the camera's last look saw (a frozen camera repeats it); None: not looked at."""
        with self._lock:  # before any worker may have it: forget_seen's cut includes it
            self._newest_ts = max(self._newest_ts, frame.ts)
        job = _Job(frame, None, None, 0.0)
        skipped = error = replaced = False
        steady: tuple[Sighting, ...] = ()
        if self._frame_gate is not None:
            started = self._clock()
            try:
                gray = as_gray(frame.image)
                verdict, thumb = self._frame_gate.judge(gray, frame.ts)
            except Exception:  # a frame the gate cannot read counts as a failed decode
                error = True
                log.exception("judging frame %d failed", frame.id, extra={"frame_id": frame.id})
            else:
                skipped = not verdict.decode
                steady = self._frame_gate.in_view() if skipped else ()
                job = _Job(frame, gray, thumb, (self._clock() - started) * 1000.0)
        if not (skipped or error):
            replaced = self._slot.put(job)
        with self._lock:
            self._counts["frames_in"] += 1
            if fresh is not None:
                self._looked_ts = frame.ts
                if fresh:
                    self._counts["fresh"] += 1
                    self._changed_ts = frame.ts
            self._counts["dropped"] += int(replaced)
            self._counts["skipped"] += int(skipped)
            self._counts["errors"] += int(error)
            if skipped:
                # Nothing new in it: the frame it matched, with the steady codes in that one
                # (a sticker), still in view: sighted, so they stay within the dedup window
                # however long the safety valve's period is.
                self._show(frame, tuple(polygon for _, polygon in steady))
                for text, _ in steady:
                    self._dedup.first_sighting(text, frame.ts)

    def _work(self) -> None:
        while (job := self._slot.take()) is not None:
            try:
                self._decode(job)
            except Exception:
                frame_id = job.frame.id
                log.exception("decoding frame %d failed", frame_id, extra={"frame_id": frame_id})
                with self._lock:
                    self._counts["errors"] += 1
            finally:
                self._slot.done()

    def _decode(self, job: _Job) -> None:
        frame = job.frame
        started = self._clock()
        if self._frame_gate is None or job.gray is None:
            detections = self.decoder.decode(as_gray(frame.image))
        else:
            detections = self._frame_gate.decode(job.gray, frame.id, frame.ts, job.thumb)
        ms = (self._clock() - started) * 1000.0 + job.gate_ms
        fresh = []
        with self._lock:
            self._counts["decoded"] += 1
            self._decode_ms.append(ms)
            polygons = tuple(d.polygon for d in detections)
            self._show(frame, polygons)
            if polygons and (self._last_read is None or frame.id >= self._last_read[0].id):
                self._last_read = (frame, polygons, started)
            for d in detections:
                if self._dedup.first_sighting(d.text, frame.ts):
                    fresh.append(d)
                else:
                    self._counts["duplicates"] += 1
            self._counts["results"] += len(fresh)
        for d in fresh:
            payload = classify(d.text)
            result = ScanResult(
                text=d.text,
                payload=payload,
                frame_id=frame.id,
                frame_ts=frame.ts,
                decoder=d.decoder,
                decode_ms=ms,
                polygon=d.polygon,
                static=isinstance(payload, UnknownPayload) and self.printed_here(d),
            )
            log.info(
                "code read: %s%s by %s in %.1f ms",
                payload.kind,
                " (printed at the booth)" if result.static else "",
                d.decoder,
                ms,
                extra={"frame_id": frame.id, "kind": payload.kind, "static": result.static},
            )
            self._call_soon(self._on_result, result)

    def printed_here(self, d: Detection) -> bool:
        """Is this code printed at the booth? One the operator listed (`static_codes`), or one
        the change gate saw stay put in this view since the start, by its text or its place (a
        sticker a truck hid for longer than the dedup window, reported again as it comes back).
        Without the gate only the listed ones."""
        if d.text in self.static_codes:
            return True
        return self._frame_gate is not None and self._frame_gate.printed_here((d.text, d.polygon))

    def _show(self, frame: Frame, polygons: tuple[Polygon, ...]) -> None:
        """The frame latest_frame() returns, unless a newer one is already there (hold _lock)."""
        if self._latest is None or frame.id >= self._latest[0].id:
            self._latest = (frame, polygons)

    def _deliver_status(self, event: SourceEvent) -> None:
        if event.kind == "ended":
            with self._lock:
                self._source_ended = True
        if self._on_status is not None:
            self._call_soon(self._on_status, event)

    def _call_soon(self, callback: Callable[[T], object], arg: T) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, arg)
        except RuntimeError:  # the loop is closed: we are shutting down
            log.warning("event loop closed; dropped %s", type(arg).__name__)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]
