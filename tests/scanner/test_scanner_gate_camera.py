"""The change gate on the lane's real path: the simulator's camera pushing frames into a
ScanPipeline (capture thread, slot, decode worker, default cascade). Frames are pushed one at a
time on a stepped clock and each is waited for, so every run sees the same frames and verdicts.

What must hold: most empty frames are let pass; the first frame showing a phone is decoded,
for every camera condition; a phone whose code is seen but not read is decoded on every frame
however still it is held; the safety valve decodes the same view every K frames or T seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import pytest
from booth_views import behind_truck, person_before, sticker_moved, sticker_of, turned
from polling import eventually
from scanner_testkit import BLURRED, STICKER, THUMB, TOKEN, frame_with, qr_image

from scanner.change_gate import (
    CLUTTERED_AFTER,
    FORGET_AFTER_S,
    KNOWN_AFTER_S,
    MOVED_AFTER_S,
    STEADY_AFTER,
    GateSettings,
)
from scanner.deblur import MIN_TEXTURE, texture_peak
from scanner.decoders import ZxingDecoder, make_decoder
from scanner.detection import as_gray
from scanner.pipeline import ScanPipeline, ScanResult, ScanStats
from scanner.sources import PushSource
from sim.camera import SyntheticCamera
from sim.codes import CodeFactory
from sim.scene import Conditions, Scene

Image = np.ndarray


@dataclass
class Scanner:
    """One pipeline fed by hand; `results` arrive on the test's event loop."""

    pipeline: ScanPipeline
    source: PushSource
    results: list[ScanResult] = field(default_factory=list)
    pushed: int = 0

    def stats(self) -> ScanStats:
        return self.pipeline.stats()


@asynccontextmanager
async def scanners(*gates: GateSettings | None) -> AsyncIterator[list[Scanner]]:
    made = []
    for gate in gates:
        source = PushSource()
        results: list[ScanResult] = []
        pipeline = ScanPipeline(source, make_decoder(), results.append, workers=1, gate=gate)
        made.append(Scanner(pipeline, source, results))
        pipeline.start()
    try:
        yield made
    finally:
        for s in made:
            await s.pipeline.aclose()


async def push(scanners: list[Scanner], image: Image, ts: float) -> list[bool]:
    """Hand one frame to every scanner and wait until each is done with it: was it decoded?"""
    before = [s.stats().decoded for s in scanners]
    for s in scanners:
        s.source.put(image, ts)
        s.pushed += 1

    def settled() -> bool:
        return all(
            (st := s.stats()).decoded + st.skipped + st.errors == s.pushed and st.pending == 0
            for s in scanners
        )

    await eventually(settled, every=0.001, what="the frame decoded or let pass")
    # Done with it means its results were handed to the loop: one turn of the loop delivers them.
    await asyncio.sleep(0)
    return [s.stats().decoded > b for s, b in zip(scanners, before, strict=True)]


class Camera:
    """The simulator's lane camera on a stepped clock: `frames(scene, n)` renders n frames."""

    def __init__(self, seed: int, fps: float = 30.0) -> None:
        self.now = 0.0
        self.period = 1.0 / fps
        self.cam = SyntheticCamera(fps=fps, rng=seed, clock=lambda: self.now)

    def frames(self, scene: Scene, n: int) -> Iterator[tuple[Image, float]]:
        self.cam.show_scene(scene)
        for _ in range(n):
            self.now += self.period
            yield self.cam.capture()


def with_noise(image: Image, rng: np.random.Generator, sigma: float) -> Image:
    """More sensor noise than the simulator's, different in every frame (on the gray frame the
    scanner would make of it: a third of the work)."""
    if not sigma:
        return image
    gray = as_gray(image).astype(np.float32)
    gray += sigma * rng.standard_normal(gray.shape, dtype=np.float32)
    return np.clip(gray, 0, 255).astype(np.uint8)


HARD = Conditions.preset("hard")
# The presets, and the hard preset's worst cases each made certain: night, glare, and the
# farthest (smallest) phone.
CONDITIONS = {
    "clear": Conditions.preset("clear"),
    "realistic": Conditions.preset("realistic"),
    "hard": HARD,
    "night": replace(HARD, name="night", low_light_p=1.0, low_light=(0.9, 1.0)),
    "glare": replace(HARD, name="glare", glare_p=1.0, glare=(0.9, 1.0)),
    "far": replace(HARD, name="far", distance=(2.1, 2.2)),
}
POSES = 8
EMPTY_FRAMES = 6


@pytest.mark.parametrize("noise", [0.0, 6.0], ids=["sim-noise", "sim+gauss6"])
@pytest.mark.parametrize("condition", list(CONDITIONS))
async def test_the_first_frame_with_a_phone_is_decoded(condition: str, noise: float) -> None:
    conditions = CONDITIONS[condition]
    codes = CodeFactory(11)
    rng = np.random.default_rng(5)
    camera = Camera(seed=3)
    async with scanners(GateSettings(), None) as (gated, plain):
        empties = skipped = 0
        for pose in range(POSES):
            text = codes.make("token", 1_800_000_000 + pose).text
            scene = conditions.sample(text, np.random.default_rng([pose, len(condition)]))
            # The car is there, the phone not yet (the same light): then the phone comes up.
            for image, ts in camera.frames(scene.without_code(), EMPTY_FRAMES):
                decoded, _ = await push([gated, plain], with_noise(image, rng, noise), ts)
                empties += 1
                skipped += not decoded
            image, ts = next(camera.frames(scene, 1))
            decoded, _ = await push([gated, plain], with_noise(image, rng, noise), ts)
            assert decoded, f"{condition} pose {pose}: the gate let the phone's first frame pass"
        # What each read, and on which frame, is the same with the gate as without.
        assert [(r.text, r.frame_id) for r in gated.results] == [
            (r.text, r.frame_id) for r in plain.results
        ]
        assert gated.stats().skipped == skipped and plain.stats().skipped == 0
    # The gate was at work: at most the first empty frame after a change of light decoded.
    assert skipped >= empties - POSES


async def test_a_phone_at_the_edge_of_the_window_far_away_at_night_is_decoded() -> None:
    camera = Camera(seed=4)
    text = CodeFactory(12).make("token", 1_800_000_000).text
    async with scanners(GateSettings()) as (gated,):
        for x in (0.0, 1.0):
            for y in (0.0, 1.0):
                for dark_mode in (False, True):
                    scene = Scene(
                        text, distance=2.2, angle_deg=50.0, low_light=1.0, dark_mode=dark_mode,
                        position=(x, y), pitch_deg=25.0,
                    )  # fmt: skip
                    verdicts = [
                        (await push([gated], image, ts))[0]
                        for image, ts in camera.frames(scene.without_code(), 3)
                    ]
                    assert verdicts[1:] == [False, False]
                    image, ts = next(camera.frames(scene, 1))
                    assert (await push([gated], image, ts)) == [True], scene


async def test_a_phone_held_still_with_an_unread_code_is_decoded_on_every_frame() -> None:
    camera = Camera(seed=6)
    thumb = Scene(TOKEN, distance=1.0, occlusion=0.3)  # a thumb over 30% of the code
    async with scanners(GateSettings()) as (gated,):
        for image, ts in camera.frames(thumb.without_code(), 5):
            await push([gated], image, ts)
        assert gated.stats().skipped == 4
        held, _ = next(camera.frames(thumb, 1))
        gray = as_gray(held)
        # zxing-cpp sees the code (its finder patterns) but cannot read it.
        assert ZxingDecoder().locate(gray)[1] and not make_decoder().decode(gray)
        for ts in np.arange(1.0, 3.0, 1 / 30):  # the very same frame for two seconds
            assert await push([gated], held, float(ts)) == [True]
        assert gated.stats().skipped == 4 and gated.results == []


async def test_a_faint_code_seen_but_not_read_is_decoded_on_every_frame() -> None:
    # A washed-out code (30 levels of contrast) with a corner gone: far below the texture a
    # code usually has, but zxing-cpp locates it; only that keeps it from being the reference.
    code = (70 + 30 * (qr_image("281234567890123456", scale=4) // 255)).astype(np.uint8)
    h, w = code.shape
    code[int(0.6 * h) : int(0.9 * h), int(0.6 * w) : int(0.9 * w)] = 100
    faint = frame_with(code)
    assert ZxingDecoder().locate(faint)[1] and texture_peak(faint)[0] < MIN_TEXTURE
    async with scanners(GateSettings()) as (gated,):
        for i in range(5):
            await push([gated], frame_with(None), i / 30)
        assert gated.stats().skipped == 4
        for i in range(5, 25):
            assert await push([gated], faint, i / 30) == [True]
        assert gated.stats().skipped == 4 and gated.results == []


async def test_a_still_blurred_phone_nobody_locates_is_read_on_the_same_frame_as_ungated() -> None:
    camera = Camera(seed=7)
    async with scanners(GateSettings(), None) as (gated, plain):
        for image, ts in camera.frames(BLURRED.without_code(), 6):
            await push([gated, plain], image, ts)
        assert gated.stats().skipped == 5
        held, ts = next(camera.frames(BLURRED, 1))
        gray = as_gray(held)
        # zxing-cpp does not even locate it; only the deblur pass, one frame in four, reads it.
        assert ZxingDecoder().locate(gray) == ([], [])
        assert texture_peak(gray)[0] >= MIN_TEXTURE
        for i in range(8):  # the very same frame: decoded each time, never the reference
            assert await push([gated, plain], held, ts + i / 30) == [True, True]
        assert gated.stats().skipped == 5
    # The deblur pass counts the frames the gate let pass: it looks at the same frames.
    assert [(r.frame_id, r.decoder) for r in gated.results] == [(9, "zxing+deblur")]
    assert [r.frame_id for r in plain.results] == [9]


@pytest.mark.parametrize(
    ("fps", "every"),
    [(100.0, 30), (4.0, 4)],  # a fast camera: every 30 frames; a slow one: every 1 s (4 frames)
)
async def test_the_same_view_is_decoded_every_k_frames_or_t_seconds(fps: float, every: int) -> None:
    camera = Camera(seed=8, fps=fps)
    async with scanners(GateSettings(every_frames=30, every_s=1.0)) as (gated,):
        decoded = [
            (await push([gated], image, ts))[0]
            for image, ts in camera.frames(Scene(None, low_light=0.5), 3 * every + 1)
        ]
    assert [i for i, d in enumerate(decoded) if d] == [0, every, 2 * every, 3 * every]
    stats = gated.stats()
    assert (stats.frames_in, stats.decoded, stats.skipped) == (3 * every + 1, 4, 3 * every - 3)


async def test_lighting_drift_beyond_noise_is_decoded_and_becomes_the_reference() -> None:
    camera = Camera(seed=9)
    async with scanners(GateSettings()) as (gated,):
        decoded = []
        for light in (0.0, 0.0, 0.0, 0.5, 0.5, 0.5):  # dusk falls between frames 3 and 4
            image, ts = next(camera.frames(Scene(None, low_light=light), 1))
            decoded += await push([gated], image, ts)
    assert decoded == [True, False, False, True, False, False]


async def test_without_the_gate_every_frame_is_decoded() -> None:
    camera = Camera(seed=10)
    async with scanners(None) as (plain,):
        for image, ts in camera.frames(Scene(None), 10):
            assert await push([plain], image, ts) == [True]
    assert (plain.stats().decoded, plain.stats().skipped) == (10, 0)


def cluttered_view(image: Image) -> Image:
    """The camera's frame with a code-like pattern over it (8-pixel black and white blocks, no
    finder patterns): nothing is located in it, but its texture is a code's."""
    gray = as_gray(image).copy()
    rng = np.random.default_rng(11)
    blocks = rng.integers(0, 2, size=(24, 40), dtype=np.uint8) * 255
    gray[200:392, 400:720] = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))
    return gray


async def test_a_cluttered_view_pays_for_its_texture_once_per_valve_period() -> None:
    camera = Camera(seed=12)
    every = 30
    async with scanners(GateSettings(every_frames=every)) as (gated,):
        empty = [image for image, _ in camera.frames(Scene(None), every + 2)]
        clutter = cluttered_view(empty[0])
        assert ZxingDecoder().locate(clutter) == ([], [])
        assert texture_peak(clutter)[0] >= MIN_TEXTURE
        decoded = []
        for i in range(CLUTTERED_AFTER):  # the view stays cluttered: it is "cluttered" now
            decoded += await push([gated], clutter, (i - CLUTTERED_AFTER) / 30)
        # The view clears: the frames after the cluttered ones are decoded without their
        # texture being measured (so none is the reference) until the wait is over; the next
        # frame is the reference, and the one after it is let pass.
        for i, image in enumerate(empty[1:], start=1):
            decoded += await push([gated], image, i / 30)
    assert decoded == [True] * (CLUTTERED_AFTER - 1) + [True] * every + [True, False]


async def test_a_booth_with_a_sticker_in_view_reads_the_phones_beside_it() -> None:
    # A QR sticker on the booth is read in every frame; the phones held up beside it need the
    # fallback passes (a thumb: the covered pass; a streak nobody locates: the deblur pass).
    camera = Camera(seed=13)
    other = CodeFactory(14).make("token", 1_800_000_000).text
    thumb = replace(THUMB, sticker=STICKER)
    blurred = replace(BLURRED, code_text=other, sticker=STICKER)
    async with scanners(GateSettings()) as (gated,):
        for scene in (thumb, blurred):
            for image, ts in [*camera.frames(scene.without_code(), 4), *camera.frames(scene, 8)]:
                await push([gated], image, ts)
    # The sticker once (deduplicated over the frames it stays in), each phone once.
    assert [(r.text, r.decoder) for r in gated.results] == [
        (STICKER, "zxing"),
        (TOKEN, "zxing+covered"),
        (other, "zxing+deblur"),
    ]


async def test_a_sticker_is_not_reported_again_for_each_new_vehicle() -> None:
    # Reported again after `forget_seen` (a vehicle arrived), the sticker, no payment code,
    # would be refused to each driver as the car pulls up: a try spent, "Payment refused".
    # The driver's token, still in view, is reported again (the replay check must see it).
    camera = Camera(seed=15)
    booth = Scene(None, sticker=STICKER)
    phone = replace(THUMB, sticker=STICKER)
    async with scanners(GateSettings()) as (gated,):
        for scene, n in ((booth, 4), (booth, 4), (phone, 6), (phone, 3)):
            gated.pipeline.forget_seen()
            for image, ts in camera.frames(scene, n):
                await push([gated], image, ts)
    assert [r.text for r in gated.results] == [STICKER, TOKEN, TOKEN]


@pytest.mark.parametrize("low_light", [0.0, 0.8])
async def test_an_idle_booth_with_a_sticker_is_let_pass_and_a_phone_beside_it_read_at_once(
    low_light: float,
) -> None:
    # The sticker, read in every frame at the same place and no payment code, is part of the
    # reference once it has stayed STEADY_AFTER decoded frames: the booth costs what an empty
    # one does. A phone held up beside it is decoded and read on its first frame.
    camera = Camera(seed=16)
    other = CodeFactory(17).make("token", 1_800_000_000).text
    booth = Scene(None, low_light=low_light, sticker=STICKER)
    async with scanners(GateSettings()) as (gated,):
        idle = [await push([gated], image, ts) for image, ts in camera.frames(booth, 60)]
        phones = []
        for text in (TOKEN, other):
            scene = Scene(text, distance=1.6, angle_deg=15.0, low_light=low_light, sticker=STICKER)
            first = [await push([gated], image, ts) for image, ts in camera.frames(scene, 1)]
            phones.append((first, [r.text for r in gated.results][-1]))
            for image, ts in camera.frames(booth, 30):
                await push([gated], image, ts)
    assert idle[:STEADY_AFTER] == [[True]] * STEADY_AFTER
    assert sum(d == [False] for d in idle) >= 60 - STEADY_AFTER - 2  # the valve: every 30
    assert phones == [([[True]], TOKEN), ([[True]], other)]
    # The sticker once: the valve's decodes keep it within the deduplication window.
    assert [r.text for r in gated.results] == [STICKER, TOKEN, other]


async def test_a_phone_held_still_is_never_the_reference() -> None:
    # A code the lane pays with, read frame after frame at the same place, is decoded on every
    # frame as without the gate: only codes that are no payment code become part of it.
    # A printed token on a plain wall: nothing but the code in view, no hand shake, only the
    # sensor's noise from frame to frame.
    still = frame_with(qr_image(TOKEN, scale=3))
    rng = np.random.default_rng(18)
    async with scanners(GateSettings()) as (gated,):
        decoded = [await push([gated], with_noise(still, rng, 3.0), i / 30) for i in range(12)]
    assert decoded == [[True]] * 12
    assert [r.text for r in gated.results] == [TOKEN]


async def test_a_sticker_let_pass_stays_sighted_whatever_the_valve_period() -> None:
    # The valve 10 s apart, the dedup window 2 s: the sticker in the frames let pass is still
    # in view, so the phone's frame, decoded 3 s later, does not report it again.
    camera = Camera(seed=19)
    booth = Scene(None, sticker=STICKER)
    phone = Scene(TOKEN, distance=1.6, angle_deg=15.0, sticker=STICKER)
    async with scanners(GateSettings(every_frames=300, every_s=10.0)) as (gated,):
        for image, ts in camera.frames(booth, 90):
            await push([gated], image, ts)
        # The dashboard's frame, let pass: the sticker's outline, as in the frame it matched.
        shown = gated.pipeline.latest_frame(jpeg=False)
        for image, ts in camera.frames(phone, 2):
            await push([gated], image, ts)
    assert gated.stats().skipped >= 90 - STEADY_AFTER
    assert shown is not None and shown.frame_id == 90 and len(shown.polygons) == 1
    assert [r.text for r in gated.results] == [STICKER, TOKEN]


PERSONAL = "https://example.org/card/alice"  # a driver's own QR: no payment code
DRIVER = "https://example.org/card/bob"


async def test_a_sticker_hidden_longer_than_the_dedup_window_comes_back_printed_at_the_booth() -> (
    None
):
    # A sticker in view for KNOWN_AFTER_S, then a truck in front of it for 4 s (the dedup
    # window 2 s): the sticker is reported again when it comes back, marked as printed at the
    # booth (it stayed put in this view before), so the lane spends nobody's try on it. A
    # driver's own QR, no payment code either, held up beside it by hand (the simulator's
    # shake) is not, nor when it is shown again after the dedup window: the lane refuses it
    # with the reason each time.
    fps = 5
    camera = Camera(seed=20, fps=fps)
    booth = Scene(None, sticker=STICKER)
    truck = Scene(None)
    personal = Scene(PERSONAL, distance=1.6, angle_deg=15.0, sticker=STICKER)
    still = int(KNOWN_AFTER_S) * fps + fps
    scenes = [(booth, still), (truck, 4 * fps), (booth, 10), (personal, 3 * fps)]
    scenes += [(booth, 4 * fps), (personal, fps), (booth, 10)]
    async with scanners(GateSettings()) as (gated,):
        for scene, n in scenes:
            for image, ts in camera.frames(scene, n):
                await push([gated], image, ts)
    assert [(r.text, r.static) for r in gated.results] == [
        (STICKER, False),  # its first sighting: not yet seen to stay put
        (STICKER, True),
        (PERSONAL, False),
        (PERSONAL, False),
    ]


async def test_a_code_the_operator_listed_is_printed_at_the_booth_from_its_first_sighting() -> None:
    # camera.static_codes: known before the gate has seen it stay put, and without the gate.
    camera = Camera(seed=21)
    booth = Scene(None, sticker=STICKER)
    personal = Scene(PERSONAL, distance=1.6, angle_deg=15.0, sticker=STICKER)
    source = PushSource()
    results: list[ScanResult] = []
    pipeline = ScanPipeline(
        source,
        make_decoder(),
        results.append,
        workers=1,
        gate=None,
        static_codes=frozenset({STICKER}),
    )
    listed = Scanner(pipeline, source, results)
    pipeline.start()
    try:
        for scene, n in ((booth, 2), (personal, 2)):
            for image, ts in camera.frames(scene, n):
                await push([listed], image, ts)
    finally:
        await pipeline.aclose()
    assert [(r.text, r.static) for r in results] == [(STICKER, True), (PERSONAL, False)]


Change = Callable[[Image], Image]


def as_is(image: Image) -> Image:
    return image


async def show(camera: Camera, gated: Scanner, *scenes: tuple[Scene, Change, int]) -> None:
    """Each scene's n frames, each changed as given (the camera turned, a truck in front)."""
    for scene, change, n in scenes:
        for image, ts in camera.frames(scene, n):
            await push([gated], change(image), ts)


BOOTH = Scene(None, sticker=STICKER)
AWAY = partial(turned, dx=-200, dy=-150)  # the camera turned, the sticker out of view


async def test_a_camera_turned_away_forgets_the_sticker_it_knew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The sticker known (still for KNOWN_AFTER_S), then the camera turned away from it for
    # FORGET_AFTER_S, a frame a second: its text and place are forgotten. A driver then
    # holding up a QR with that text at that place is anybody's (refused with its reason by
    # the lane), not ignored as printed at the booth. The operator sees each step: a log line
    # with its place, and the count of codes the lane ignores.
    caplog.set_level(logging.INFO, logger="lane.scanner")
    camera = Camera(seed=22, fps=5)
    async with scanners(GateSettings()) as (gated,):
        await show(camera, gated, (BOOTH, as_is, int(KNOWN_AFTER_S) * 5 + 5))
        assert gated.stats().static_known == 1
        camera.period = 1.0
        await show(camera, gated, (BOOTH, AWAY, int(FORGET_AFTER_S) + 10))
        assert gated.stats().static_known == 0
        camera.period = 0.2
        held = Scene(None, sticker=STICKER)  # its frames' sticker, put into the turned view
        await show(camera, gated, (held, lambda image: sticker_of(image, AWAY(image)), 5))
    assert [(r.text, r.static) for r in gated.results] == [(STICKER, False), (STICKER, False)]
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("static code")]
    assert told == [
        "static code learned at 32,513: stayed put: read there, or with its text, it is ignored;"
        " 1 known",
        f"static code forgotten at 32,513: missing from its place for {FORGET_AFTER_S:.0f} s;"
        " 0 known",
    ]


async def test_a_truck_in_front_of_the_sticker_for_minutes_leaves_it_known() -> None:
    # A truck parked in front of the sticker for longer than FORGET_AFTER_S: the rest of the
    # view still shows, so the lane keeps knowing the sticker, and it comes back printed at
    # the booth (nobody's try).
    camera = Camera(seed=23, fps=5)
    async with scanners(GateSettings()) as (gated,):
        await show(camera, gated, (BOOTH, as_is, int(KNOWN_AFTER_S) * 5 + 5))
        camera.period = 1.0
        await show(camera, gated, (BOOTH, behind_truck, 2 * int(FORGET_AFTER_S)), (BOOTH, as_is, 3))
    assert [(r.text, r.static) for r in gated.results] == [(STICKER, False), (STICKER, True)]


async def test_a_person_before_the_sticker_for_minutes_leaves_it_known() -> None:
    # Someone standing before the sticker (the rest of the view as it was) for longer than
    # FORGET_AFTER_S: it is still there when they go, printed at the booth (nobody's try).
    camera = Camera(seed=25, fps=5)
    async with scanners(GateSettings()) as (gated,):
        await show(camera, gated, (BOOTH, as_is, int(KNOWN_AFTER_S) * 5 + 5))
        camera.period = 1.0
        await show(
            camera, gated, (BOOTH, person_before, 2 * int(FORGET_AFTER_S)), (BOOTH, as_is, 3)
        )
    assert [(r.text, r.static) for r in gated.results] == [(STICKER, False), (STICKER, True)]


async def test_a_sticker_moved_is_known_at_its_new_place_and_forgotten_at_the_old() -> None:
    # The sticker known, then moved (its text is the lane's sticker's) and still there for
    # MOVED_AFTER_S: known at its new place, so a new sticker pasted over it there after a
    # truck hid it is printed at the booth; a driver's QR held at the very old place is not.
    camera = Camera(seed=24, fps=5)
    move = partial(sticker_moved, dx=150, dy=-200)
    new_sticker = Scene(None, sticker=PERSONAL)  # drawn where the sticker first was: moved too
    driver = Scene(None, sticker=DRIVER)  # at the very place the sticker first was
    async with scanners(GateSettings()) as (gated,):
        await show(camera, gated, (BOOTH, as_is, int(KNOWN_AFTER_S) * 5 + 5))
        await show(camera, gated, (BOOTH, move, int(MOVED_AFTER_S) * 5 + 10))
        hidden = (BOOTH, lambda image: behind_truck(move(image)), 4 * 5)
        await show(camera, gated, hidden, (new_sticker, move, 5), hidden, (driver, as_is, 5))
    assert [(r.text, r.static) for r in gated.results] == [
        (STICKER, False),
        (PERSONAL, True),
        (DRIVER, False),
    ]
