"""The motion-blur pass: locating a code without a finder pattern, estimating the streak,
deconvolving, and keeping its cost off frames without a code."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from scanner_testkit import BLURRED, TOKEN, frame_with

from scanner.deblur import STACK, Deblur, motion_estimate, stacked, texture_peak
from scanner.decoders import DEFAULT_PASSES, CascadeDecoder, ZxingDecoder, make_decoder, make_pass
from scanner.detection import Detection, GrayImage, as_gray
from sim.codes import CodeFactory
from sim.render import code_corners, render_frame
from sim.scene import Scene


class CountingDecoder:
    """The real zxing decoder, counting how often the pass calls it."""

    def __init__(self) -> None:
        self.name = "zxing"
        self.calls = 0
        self._inner = ZxingDecoder()

    def decode(self, gray: GrayImage) -> list[Detection]:
        self.calls += 1
        return self._inner.decode(gray)


def blurred_frame(seed: int = 1) -> GrayImage:
    return as_gray(render_frame(BLURRED, seed))


def test_a_blurred_code_without_finder_patterns_is_read_only_by_deblurring() -> None:
    gray = blurred_frame()
    assert ZxingDecoder().locate(gray) == ([], []), "zxing sees no symbol at all"
    without = CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in ("roi-global", "half")])
    assert without.decode(gray) == []
    found = make_decoder("cascade").decode(gray)
    assert [(d.text, d.decoder) for d in found] == [(TOKEN, "zxing+deblur")]
    # The outline maps back into the frame: inside the code's corners, give or take the shake.
    corners = code_corners(BLURRED)
    xs, ys = [p[0] for p in found[0].polygon], [p[1] for p in found[0].polygon]
    assert corners[:, 0].min() - 8 <= min(xs) and max(xs) <= corners[:, 0].max() + 8
    assert corners[:, 1].min() - 8 <= min(ys) and max(ys) <= corners[:, 1].max() + 8
    assert "deblur" in DEFAULT_PASSES


def test_texture_peak_finds_the_code_and_scores_an_empty_view_low() -> None:
    score, (x, y) = texture_peak(blurred_frame())
    corners = code_corners(BLURRED)
    assert score >= 170
    assert corners[:, 0].min() - 32 <= x <= corners[:, 0].max() + 32
    assert corners[:, 1].min() - 32 <= y <= corners[:, 1].max() + 32
    for low_light in (0.0, 0.5, 1.0):
        empty, _ = texture_peak(as_gray(render_frame(Scene(None, low_light=low_light), 1)))
        assert empty < 160


# Streaks of 5 px and more (shorter ones mostly read without this pass; their estimate is
# pulled to 0 degrees by the module grid).
@pytest.mark.parametrize(("length", "angle"), [(5.0, -24.0), (5.0, 0.0), (6.0, -12.0), (6.0, 20.0)])
def test_motion_estimate_recovers_the_streak(length: float, angle: float) -> None:
    scene = replace(BLURRED, blur_px=length, blur_dir_deg=angle)
    corners = code_corners(scene)
    x0, y0 = (int(v) - 24 for v in corners.min(axis=0))
    x1, y1 = (int(v) + 24 for v in corners.max(axis=0))
    roi = np.ascontiguousarray(as_gray(render_frame(scene, 3))[y0:y1, x0:x1])
    est_length, est_angle = motion_estimate(roi)
    # The module grid pulls the estimate towards the axes: the pass tries +-8 degrees too.
    assert abs(est_length - length) <= 1.5
    assert abs(est_angle - angle) <= 12.0


def test_an_empty_view_costs_only_the_texture_map() -> None:
    decoder = CountingDecoder()
    deblur = Deblur("deblur", decoder, every=1)
    empty = as_gray(render_frame(Scene(None, low_light=0.6), 2))
    assert [deblur.run(empty, []) for _ in range(5)] == [[]] * 5
    assert decoder.calls == 0


def test_one_frame_in_every_is_examined() -> None:
    decoder = CountingDecoder()
    deblur = Deblur("deblur", decoder, every=4, retry_after=0)
    gray = blurred_frame()
    results = [deblur.run(gray, []) for _ in range(8)]
    assert [bool(r) for r in results] == [True, False, False, False, True, False, False, False]


def clutter_frame(seed: int) -> GrayImage:
    """A dense patch of small marks, like a grille or a sign: code-like texture, no code."""
    rng = np.random.default_rng(seed)
    clutter = frame_with(None)
    for _ in range(300):
        x, y = int(rng.integers(500, 700)), int(rng.integers(250, 450))
        cv2.rectangle(clutter, (x, y), (x + 5, y + 5), int(rng.integers(0, 255)), -1)
    return clutter


def test_the_same_fruitless_view_waits_forget_after_frames() -> None:
    """A fixed textured background in front of a fixed camera costs one attempt per
    `forget_after` frames, not one per frame."""
    clutter = clutter_frame(4)
    decoder = CountingDecoder()
    # stack=1: each attempt the same calls (a stack of the same view would add its own).
    deblur = Deblur("deblur", decoder, every=1, retry_after=2, forget_after=10, stack=1)
    for _ in range(10):
        assert deblur.run(clutter, []) == []
    per_attempt = decoder.calls
    assert per_attempt > 0, "the clutter looks code-like: one attempt was made"
    assert deblur.run(clutter, []) == []  # frame 10: forgotten, tried again
    assert decoder.calls == 2 * per_attempt


def test_a_changed_view_near_a_fruitless_spot_waits_only_retry_after_frames() -> None:
    """A phone's texture peak wanders and its score changes: it gets another try sooner."""
    decoder = CountingDecoder()
    deblur = Deblur("deblur", decoder, every=1, retry_after=3, forget_after=100)
    views = [clutter_frame(seed) for seed in range(5, 10)]
    assert deblur.run(views[0], []) == []
    per_attempt = decoder.calls
    for view in views[1:3]:  # frames 1, 2: near the failure, too soon
        assert deblur.run(view, []) == []
    assert decoder.calls == per_attempt
    assert deblur.run(views[3], []) == []  # frame 3: another view, retry_after has passed
    assert decoder.calls > per_attempt


def test_a_frame_too_small_for_a_region_is_left_alone() -> None:
    decoder = CountingDecoder()
    tiny = np.full((48, 64), 128, np.uint8)
    candidate = ((10, 10), (30, 10), (30, 30), (10, 30))
    assert Deblur("deblur", decoder, every=1).run(tiny, [candidate]) == []
    assert decoder.calls == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="every >= 1"):
        Deblur("deblur", ZxingDecoder(), every=0)
    with pytest.raises(ValueError, match="stack >= 1"):
        Deblur("deblur", ZxingDecoder(), stack=0)
    with pytest.raises(ValueError, match="0 <= retry_after <= forget_after"):
        Deblur("deblur", ZxingDecoder(), retry_after=-1)
    with pytest.raises(ValueError, match="0 <= retry_after <= forget_after"):
        Deblur("deblur", ZxingDecoder(), retry_after=10, forget_after=5)


# Hard poses the single-frame pass does not read in 16 frames: at night (noise sigma 12 at
# that gain) with a 6.5 px streak, deconvolving one frame amplifies the noise beyond reading;
# in glare, the washed-out modules are within a few grey levels of each other.
NIGHT = Scene(
    TOKEN, distance=1.85, angle_deg=36.0, blur_px=6.5, blur_dir_deg=0.7, low_light=0.95,
    roll_deg=13.6, pitch_deg=10.3, position=(0.56, 0.49),
)  # fmt: skip
GLARE = Scene(
    TOKEN, distance=2.08, angle_deg=-19.3, glare=0.77, glare_at=(0.67, 0.51), roll_deg=-17.2,
    pitch_deg=24.4, position=(0.61, 0.55),
)  # fmt: skip


def unstacked_cascade() -> CascadeDecoder:
    deblur = Deblur("deblur", ZxingDecoder(), stack=1)
    return CascadeDecoder(ZxingDecoder(), [make_pass("roi-global"), make_pass("half"), deblur])


@pytest.mark.parametrize("scene", [NIGHT, GLARE], ids=["night", "glare"])
def test_a_held_code_no_single_frame_shows_is_read_from_the_frames_stacked(scene: Scene) -> None:
    frames = [as_gray(render_frame(scene, seed)) for seed in range(16)]
    unstacked = unstacked_cascade()
    assert [d for gray in frames for d in unstacked.decode(gray)] == []
    cascade = make_decoder("cascade")
    found = [d for gray in frames for d in cascade.decode(gray)]
    assert found, "read within 16 frames (about half a second)"
    assert {(d.text, d.decoder) for d in found} == {(TOKEN, "zxing+deblur-stack")}
    corners = code_corners(scene)
    for d in found:
        xs, ys = [p[0] for p in d.polygon], [p[1] for p in d.polygon]
        assert corners[:, 0].min() - 8 <= min(xs) and max(xs) <= corners[:, 0].max() + 8
        assert corners[:, 1].min() - 8 <= min(ys) and max(ys) <= corners[:, 1].max() + 8


def region(scene: Scene, seed: int, at: tuple[int, int]) -> GrayImage:
    return as_gray(render_frame(scene, seed))[at[1] : at[1] + 256, at[0] : at[0] + 256]


def test_only_frames_of_the_same_view_are_stacked() -> None:
    corners = code_corners(NIGHT)
    at = (int(corners[:, 0].mean()) - 128, int(corners[:, 1].mean()) - 128)
    current = region(NIGHT, 0, at)
    held = [region(NIGHT, seed, at) for seed in (1, 2)]
    empty = region(NIGHT.without_code(), 3, at)
    moved_on = region(GLARE, 4, at)
    _, count = stacked(current, [empty, held[0], moved_on, held[1]])
    assert count == 3, "the current frame and the two of the same held phone"
    average, count = stacked(current, [empty, moved_on])
    assert count == 1
    assert np.array_equal(average, current)


def test_a_frame_let_pass_empties_the_stack() -> None:
    """The change gate lets a frame pass only when it shows the empty view: the frames before
    it are no evidence of a code shown after it."""
    frames = [as_gray(render_frame(NIGHT, seed)) for seed in range(2 * STACK)]
    kept = Deblur("deblur", ZxingDecoder(), every=1, retry_after=0)
    read = [kept.run(gray, []) != [] for gray in frames]
    assert True in read[1:], "read once a few frames were stacked"
    k = read.index(True)
    emptied = Deblur("deblur", ZxingDecoder(), every=1, retry_after=0)
    for gray in frames[:k]:
        assert emptied.run(gray, []) == []
    emptied.frame_passed()
    assert emptied.run(frames[k], []) == [], "one frame alone does not read"


def test_a_code_read_is_not_read_again_from_its_frames_for_the_next_phone() -> None:
    """The stack kept the frames of a code once it was read, and at night another code held at
    the same pose matches them at 0.94 (the streak and the smoothing leave the phone, not its
    modules): the next phone's first frames, stacked with them, read the previous code again
    (a stale code charged for the next driver)."""
    other = CodeFactory(8).make("token", 1_800_000_000).text
    assert other != TOKEN
    cascade = make_decoder("cascade")
    first = [cascade.decode(as_gray(render_frame(NIGHT, seed))) for seed in range(2 * STACK)]
    assert any(first), "the first phone's code is read (and the phone held on)"
    nxt = replace(NIGHT, code_text=other)  # the next phone, held where the first one was
    read = {d.text for seed in range(16, 16 + STACK) for d in cascade.decode(
        as_gray(render_frame(nxt, seed)))}  # fmt: skip
    assert TOKEN not in read
