"""ScanPipeline end to end: newest-frame-only decoding, deduplication, results on the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
from polling import eventually
from scanner_testkit import frame_with, qr_image

from scanner.decoders import ZxingDecoder, make_decoder
from scanner.dedup import Deduplicator
from scanner.detection import Detection, GrayImage
from scanner.health import SourceEvent
from scanner.pipeline import FRESH_CHECK_S, ScanPipeline, ScanResult, ScanStats
from scanner.sources import Frame, Image, ImageFolderSource, Item, PushSource

CODE_A = "281234567890123456"
CODE_B = "134567890123456789"


class GatedDecoder:
    """The real zxing decoder, held at a gate so a test can keep a worker busy."""

    name = "zxing"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.frames: list[int] = []
        self._inner = ZxingDecoder()

    def decode(self, gray: GrayImage) -> list[Detection]:
        self.entered.set()
        self.gate.wait(5.0)
        self.frames.append(int(gray[0, 0]))  # each test frame carries its number in a pixel
        return self._inner.decode(gray)


class AfterFirstFrame:
    """A real folder source that holds frame 2 back until a worker is busy with frame 1."""

    def __init__(self, inner: ImageFolderSource, busy: threading.Event) -> None:
        self.name = inner.name
        self.finite = inner.finite
        self._inner = inner
        self._busy = busy

    @property
    def exhausted(self) -> bool:
        return self._inner.exhausted

    def stream(self) -> Iterator[Item]:
        for item in self._inner.stream():
            yield item
            if isinstance(item, Frame) and item.id == 1:
                self._busy.wait(5.0)

    def close(self) -> None:
        self._inner.close()


def numbered_frame(n: int, code: str | None) -> np.ndarray:
    frame = frame_with(qr_image(code) if code else None)
    frame[0, 0] = n
    return frame


async def test_decodes_only_the_newest_frame(tmp_path: Path) -> None:
    for n in range(1, 7):
        cv2.imwrite(str(tmp_path / f"{n}.png"), numbered_frame(n, CODE_A))
    decoder = GatedDecoder()
    results: list[ScanResult] = []
    events: list[SourceEvent] = []
    source = AfterFirstFrame(ImageFolderSource(tmp_path), decoder.entered)
    pipeline = ScanPipeline(source, decoder, results.append, events.append, workers=1)
    async with pipeline:
        await asyncio.to_thread(decoder.entered.wait, 5.0)  # frame 1 is being decoded
        await eventually(lambda: pipeline.stats().source_ended)
        decoder.gate.set()
        await eventually(lambda: pipeline.stats().pending == 0)
        stats = pipeline.stats()
    # Frames 2..5 were each replaced by a newer one while the worker was busy: no backlog.
    assert decoder.frames == [1, 6]
    assert (stats.frames_in, stats.decoded, stats.dropped) == (6, 2, 4)
    # Same code in frames 1 and 6 (taken within the dedup window): reported once.
    assert [(r.text, r.frame_id, r.payload.kind) for r in results] == [(CODE_A, 1, "payment_code")]
    assert (stats.results, stats.duplicates) == (1, 1)
    assert [e.kind for e in events][:1] == ["opened"] and events[-1].kind == "ended"


async def test_an_unchanged_frame_never_replaces_a_phone_waiting_for_a_worker() -> None:
    """The change gate judges frames on the capture thread: the empty view coming back while
    the worker is busy is let pass there, and the phone's frame waiting in the slot is decoded.
    (Judged by the worker, the empty frame replaced the phone's as the newest and was let pass:
    the phone was never decoded.)"""
    decoder = GatedDecoder()
    decoder.gate.set()
    results: list[ScanResult] = []
    source = PushSource()
    pipeline = ScanPipeline(source, decoder, results.append, workers=1)
    async with pipeline:
        source.put(numbered_frame(1, None), ts=0.0)
        await eventually(lambda: pipeline.stats().decoded == 1)  # nothing in it: the reference
        decoder.gate.clear()
        decoder.entered.clear()
        source.put(numbered_frame(2, CODE_A), ts=0.1)  # a phone: held in decode
        await asyncio.to_thread(decoder.entered.wait, 5.0)
        source.put(numbered_frame(3, CODE_B), ts=0.2)  # another phone: waits
        source.put(numbered_frame(4, None), ts=0.3)  # the empty view again
        await eventually(lambda: pipeline.stats().frames_in == 4)
        decoder.gate.set()
        await eventually(lambda: pipeline.stats().pending == 0)
        stats = pipeline.stats()
    assert decoder.frames == [1, 2, 3]
    assert [r.text for r in results] == [CODE_A, CODE_B]
    assert (stats.decoded, stats.skipped, stats.dropped) == (3, 1, 0)


async def test_results_reach_the_loop_deduplicated() -> None:
    loop_thread = threading.get_ident()
    results: list[tuple[ScanResult, int]] = []
    source = PushSource()
    pipeline = ScanPipeline(
        source,
        make_decoder("cascade"),
        lambda r: results.append((r, threading.get_ident())),
        workers=2,
        dedup_window_s=2.0,
    )
    shots = [(CODE_A, 10.0), (CODE_A, 10.1), (CODE_A, 10.2), (CODE_B, 10.3), (None, 10.4),
             (CODE_A, 13.0)]  # fmt: skip
    async with pipeline:
        for i, (code, ts) in enumerate(shots, start=1):
            image = frame_with(qr_image(code) if code else None)
            bgr = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
            source.put(bgr, ts=ts)  # cameras give BGR

            def settled(i: int = i) -> bool:
                stats = pipeline.stats()
                return stats.decoded == i and stats.pending == 0

            await eventually(settled)
        await eventually(lambda: len(results) == 3)
        stats = pipeline.stats()
        latest = pipeline.latest_frame()
        raw = pipeline.latest_frame(jpeg=False)
    assert [(r.text, r.frame_ts, r.frame_id) for r, _ in results] == [
        (CODE_A, 10.0, 1),
        (CODE_B, 10.3, 4),
        (CODE_A, 13.0, 6),  # out of view for more than the window: a new presentation
    ]
    assert all(thread == loop_thread for _, thread in results)
    first = results[0][0]
    assert first.payload.kind == "payment_code" and first.decoder == "zxing"
    assert len(first.polygon) == 4 and first.decode_ms >= 0
    assert (stats.frames_in, stats.decoded, stats.dropped, stats.duplicates) == (6, 6, 0, 2)
    assert stats.decode_ms_p50 is not None and stats.decode_ms_p95 is not None
    assert latest is not None and raw is not None
    assert latest.frame_id == 6 and isinstance(latest.image, bytes)
    assert latest.image[:2] == b"\xff\xd8"  # JPEG
    assert isinstance(raw.image, np.ndarray) and raw.image.shape == (720, 1280, 3)
    assert len(latest.polygons) == 1


async def test_the_frame_that_held_a_code_is_shown_for_a_while() -> None:
    now = [100.0]
    source = PushSource()
    pipeline = ScanPipeline(source, make_decoder("zxing"), lambda r: None, clock=lambda: now[0])
    async with pipeline:
        for i, code in enumerate((CODE_A, None), start=1):
            image = frame_with(qr_image(code) if code else None)
            source.put(np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8))
            await eventually(lambda i=i: pipeline.stats().decoded == i)  # type: ignore[misc]
        now[0] += 2.9
        held = pipeline.latest_frame(hold_read_s=3.0)
        newest = pipeline.latest_frame()
        now[0] += 0.2
        later = pipeline.latest_frame(hold_read_s=3.0)
    assert held is not None and (held.frame_id, len(held.polygons)) == (1, 1)
    assert newest is not None and (newest.frame_id, newest.polygons) == (2, ())
    assert later is not None and (later.frame_id, later.polygons) == (2, ())


async def test_stop_joins_threads_and_blackout_reaches_status() -> None:
    events: list[SourceEvent] = []
    source = PushSource(blackout_after_s=0.05, poll_s=0.01)
    pipeline = ScanPipeline(source, make_decoder("zxing"), lambda r: None, events.append)
    before = set(threading.enumerate())
    cv2.setNumThreads(4)
    pipeline.start()
    ours = [t for t in threading.enumerate() if t not in before and t.name.startswith("scan-")]
    assert len(ours) == 3  # capture + 2 decode workers
    assert cv2.getNumThreads() == 1  # the workers are the parallelism, not OpenCV's own pool
    await eventually(lambda: any(e.kind == "blackout" for e in events))
    await pipeline.aclose()
    assert not any(t.is_alive() for t in ours)
    assert events[-1].kind == "ended"
    assert pipeline.latest_frame() is None


class ExplodingDecoder:
    name = "boom"

    def decode(self, gray: GrayImage) -> list[Detection]:
        raise RuntimeError("decoder crashed")


async def test_decoder_failure_is_counted_not_fatal() -> None:
    events: list[SourceEvent] = []
    source = PushSource()
    async with ScanPipeline(source, ExplodingDecoder(), lambda r: None, events.append) as pipeline:
        source.put(frame_with(None))
        await eventually(lambda: pipeline.stats().errors == 1)
        source.put(frame_with(None))
        await eventually(lambda: pipeline.stats().errors == 2)
        source.put(np.zeros((720, 1280, 2), np.uint8))  # no gray view of it: the gate fails
        await eventually(lambda: pipeline.stats().errors == 3)
        stats: ScanStats = pipeline.stats()
    assert stats.decoded == 0 and stats.frames_in == 3
    assert [e.kind for e in events if e.kind == "error"] == []  # the capture went on


async def test_frames_that_repeat_the_one_before_are_not_fresh() -> None:
    """A frozen camera's frames come at full rate, each the picture before; a live one's differ
    (sensor noise). A frame is compared with the one before once a FRESH_CHECK_S."""
    source = PushSource()
    rng = np.random.default_rng(3)
    frozen = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    clock = [0.0]

    async def frames(make: Callable[[], Image], n: int, every_s: float) -> None:
        for _ in range(n):
            taken = p.stats().frames_in
            clock[0] += every_s
            source.put(make(), clock[0])
            await eventually(lambda taken=taken: p.stats().frames_in > taken)

    def noisy() -> Image:
        return np.clip(frozen + rng.integers(-2, 3, frozen.shape), 0, 255).astype(np.uint8)

    pipeline = ScanPipeline(
        source, make_decoder("zxing"), lambda r: None, gate=None, clock=lambda: clock[0]
    )
    async with pipeline as p:
        await frames(frozen.copy, 6, FRESH_CHECK_S)
        assert p.stats().fresh == 1  # the first frame only: the others repeat it
        # When the newest frame looked at was taken, and the newest one that differed.
        assert (p.stats().looked_ts, p.stats().changed_ts) == (6.0, 1.0)
        await frames(noisy, 5, FRESH_CHECK_S)
        assert p.stats().fresh == 1 + 5  # each looked at, each a new picture
        await frames(noisy, 6, FRESH_CHECK_S / 4)
        assert p.stats().fresh == 1 + 5 + 1  # one look in that second and a half
        assert (p.stats().looked_ts, p.stats().changed_ts) == (12.0, 12.0)  # not 12.5's frame


async def test_a_live_camera_that_repeats_frames_between_changes_stays_fresh() -> None:
    """A live camera may send each picture more than once: at night a slow shutter gives the
    sensor's 6 pictures a second in a 24 fps stream, and a still scene's stream repeats its
    picture between keyframes. Its picture still changes each second: fresh, never frozen,
    whichever frames the looks land on."""
    source = PushSource()
    rng = np.random.default_rng(4)
    clock = [0.0]
    every_s = 1 / 32  # exact in binary: the looks land on the same frames each second

    def picture() -> Image:
        return rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)

    pipeline = ScanPipeline(
        source, make_decoder("zxing"), lambda r: None, gate=None, clock=lambda: clock[0]
    )
    async with pipeline as p:
        shown = picture()
        for n in range(12 * 32):
            if n % 8 == 4:  # a new picture 4 times a second, never on a look's frame
                shown = picture()
            taken = p.stats().frames_in
            clock[0] = n * every_s
            source.put(shown)
            await eventually(lambda taken=taken: p.stats().frames_in > taken)
        assert p.stats().fresh == 12  # the first frame, then each second's look


class FailingSource(PushSource):
    """A push camera that raises on each of its first `failures` frames (a driver's bug)."""

    def __init__(self, failures: int, *, finite: bool = False) -> None:
        super().__init__()
        self.failures = failures
        self.finite = finite

    def stream(self) -> Iterator[Item]:
        for item in super().stream():
            if isinstance(item, Frame) and self.failures > 0:
                self.failures -= 1
                raise RuntimeError("driver crashed")
            yield item


async def test_a_live_source_that_raises_is_read_again_with_backoff() -> None:
    events: list[SourceEvent] = []
    source = FailingSource(2)
    async with ScanPipeline(source, make_decoder("zxing"), lambda r: None, events.append) as p:
        await eventually(
            lambda: p.stats().frames_in > 0, between=lambda: source.put(frame_with(None))
        )
        stats = p.stats()
    kinds = [(e.kind, e.detail) for e in events if e.kind in ("error", "recovered")]
    assert kinds == [
        ("error", "capture failed: driver crashed; restarting in 0.5 s"),
        ("error", "capture failed: driver crashed; restarting in 1.0 s"),
        ("recovered", "capture restarted"),
    ]
    assert not stats.source_ended


async def test_a_finite_source_that_raises_ends() -> None:
    events: list[SourceEvent] = []
    source = FailingSource(1, finite=True)
    async with ScanPipeline(source, make_decoder("zxing"), lambda r: None, events.append) as p:
        source.put(frame_with(None))
        await eventually(lambda: p.stats().source_ended)
        source.put(frame_with(None))
        stats = p.stats()
    assert [(e.kind, e.detail) for e in events if e.kind == "error"] == [
        ("error", "source failed: driver crashed")
    ]
    assert stats.frames_in == 0


def test_dedup_is_pure_and_windowed() -> None:
    d = Deduplicator(window_s=2.0)
    assert d.first_sighting("a", 0.0)
    assert not d.first_sighting("a", 1.5)
    assert not d.first_sighting("a", 3.0)  # each sighting renews the window
    assert d.first_sighting("b", 3.1)
    assert d.first_sighting("a", 5.5)  # 2.5 s since last seen
    assert not d.first_sighting("a", 5.0)  # a late worker's older frame is still a repeat
    small = Deduplicator(window_s=60.0, max_entries=2)
    for text in ("x", "y", "z"):
        assert small.first_sighting(text, 1.0)
    assert small.first_sighting("x", 2.0)  # evicted by the bound, so reported again
