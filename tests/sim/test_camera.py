"""The synthetic camera's frames, judged by a real decoder (zxing-cpp, as the scanner uses it)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import zxingcpp

from sim.camera import Conditions, Scene, frame_for, render_frame
from sim.camera import main as camera_main
from sim.phone import QrEncodeError
from sim.render import code_corners

# A wallet payment code (QR version 2) and a real signed offline token (217 chars, version 10):
# the two ends of what drivers show.
PAY = "283015967744120934"
TOKEN = (
    "LT1:RRQT 9P60GO0PQE4 DNF6TF68CK.C7380PQE4 DKWECECPQE/TE*PDIPC-UE646746QF6FN0J CGMUWY0J C1LU"
    "R-0746QF60R6J%6%470ECJPC% C27B3XC8+7WBPT3DJW0$-VE30ZNB+8NG 28GVDFMLUA%9B4JM7:VI$E75E GF.CEN"
    "$A1ZCFDP$R4W+LFW8Y2S/PK$RH:XGY:D9G9"
)
QR_ONLY = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
SCENES_PER_PRESET = 30


def decode(frame: np.ndarray, try_invert: bool = True) -> list[str]:
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    found = zxingcpp.read_barcodes(gray, formats=QR_ONLY, try_invert=try_invert)
    return [b.text for b in found]


def read_count(preset: str) -> int:
    """Seeded scenes alternating the two kinds of code; how many decode to exactly their text."""
    conditions = Conditions.preset(preset)
    ok = 0
    for seed in range(SCENES_PER_PRESET):
        text = PAY if seed % 2 else TOKEN
        g = np.random.default_rng(seed)
        frame = render_frame(conditions.sample(text, g), g)
        ok += decode(frame) == [text]
    return ok


def test_clear_frames_always_read() -> None:
    assert read_count("clear") == SCENES_PER_PRESET


def test_realistic_frames_mostly_read() -> None:
    ok = read_count("realistic")
    assert ok >= 0.8 * SCENES_PER_PRESET, ok


def test_hard_frames_sometimes_fail() -> None:
    ok = read_count("hard")
    assert 1 <= ok <= SCENES_PER_PRESET - 5, ok


def test_default_frame_is_720p_bgr() -> None:
    frame = frame_for(PAY, "clear", 1)
    assert frame.shape == (720, 1280, 3)
    assert frame.dtype == np.uint8


def test_smaller_frames_render_and_read() -> None:
    frame = render_frame(Scene(PAY, distance=0.8), np.random.default_rng(3), size=(640, 360))
    assert frame.shape == (360, 640, 3)
    assert decode(frame) == [PAY]


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = frame_for(TOKEN, "realistic", np.random.default_rng(42))
    b = frame_for(TOKEN, "realistic", np.random.default_rng(42))
    c = frame_for(TOKEN, "realistic", np.random.default_rng(43))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_random_random_and_int_seeds_are_accepted_and_reproducible() -> None:
    a = frame_for(PAY, "clear", random.Random(5))
    b = frame_for(PAY, "clear", random.Random(5))
    assert a.tobytes() == b.tobytes()
    assert frame_for(PAY, "clear", 9).tobytes() == frame_for(PAY, "clear", 9).tobytes()


def test_consecutive_frames_of_one_scene_differ_but_all_read() -> None:
    scene = Scene(PAY, distance=1.0)
    g = np.random.default_rng(0)
    frames = [render_frame(scene, g) for _ in range(3)]
    assert frames[0].tobytes() != frames[1].tobytes()  # sensor noise and hand shake
    assert all(decode(f) == [PAY] for f in frames)


@pytest.mark.parametrize("text", [PAY, TOKEN])
def test_dark_mode_code_is_inverted_and_reads_with_invert(text: str) -> None:
    frame = render_frame(Scene(text, distance=0.9, dark_mode=True), np.random.default_rng(1))
    assert decode(frame) == [text]
    assert decode(frame, try_invert=False) == []  # it really is light-on-dark


def test_blackout_frame_is_dark_and_unreadable() -> None:
    frame = render_frame(Scene(PAY, blackout=True), np.random.default_rng(1))
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert gray.mean() < 8
    assert decode(frame) == []


def test_night_frame_is_not_mistaken_for_a_blackout() -> None:
    frame = render_frame(Scene(None, low_light=1.0), np.random.default_rng(1))
    assert cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).mean() > 12


def test_night_code_still_reads() -> None:
    frame = render_frame(Scene(TOKEN, distance=1.2, low_light=1.0), np.random.default_rng(2))
    assert decode(frame) == [TOKEN]


def test_empty_window_reads_nothing() -> None:
    assert decode(render_frame(Scene(None), np.random.default_rng(1))) == []


@pytest.mark.parametrize("text", [PAY, TOKEN])
def test_thumb_within_error_correction_reads_beyond_it_does_not(text: str) -> None:
    base = Scene(text, distance=0.8)
    light = render_frame(replace(base, occlusion=0.05), np.random.default_rng(1))
    heavy = render_frame(replace(base, occlusion=0.3), np.random.default_rng(1))
    assert decode(light) == [text]
    assert decode(heavy) == []


def test_heavy_motion_blur_defeats_a_dense_code() -> None:
    scene = Scene(TOKEN, distance=1.2, blur_px=12.0)
    assert decode(render_frame(scene, np.random.default_rng(1))) == []
    sharp = replace(scene, blur_px=0.0)
    assert decode(render_frame(sharp, np.random.default_rng(1))) == [TOKEN]


def test_glare_brightens_the_code() -> None:
    plain = Scene(PAY, distance=0.8, glare_at=(0.5, 0.47))
    shiny = replace(plain, glare=1.0)
    quad = code_corners(plain).astype(int)
    (x0, y0), (x1, y1) = quad.min(axis=0), quad.max(axis=0)
    a = render_frame(plain, np.random.default_rng(1))[y0:y1, x0:x1]
    b = render_frame(shiny, np.random.default_rng(1))[y0:y1, x0:x1]
    assert b.mean() > a.mean() + 20


@pytest.mark.parametrize(("distance", "expected_px"), [(0.6, 400), (1.0, 240), (2.0, 120)])
def test_code_size_follows_distance(distance: float, expected_px: float) -> None:
    quad = code_corners(Scene(PAY, distance=distance))
    width = float(quad[:, 0].max() - quad[:, 0].min())
    assert width == pytest.approx(expected_px, rel=0.05)


def test_angle_foreshortens_and_code_stays_in_frame() -> None:
    for x in (0.0, 1.0):
        scene = Scene(TOKEN, distance=0.6, angle_deg=45, position=(x, 0.0))
        quad = code_corners(scene)
        width = float(quad[:, 0].max() - quad[:, 0].min())
        assert width < 0.8 * 400
        assert quad[:, 0].min() >= 0 and quad[:, 0].max() <= 1280
        assert quad[:, 1].min() >= 0 and quad[:, 1].max() <= 720


def test_scene_sampling_is_seeded() -> None:
    conditions = Conditions.preset("realistic")
    assert conditions.sample(PAY, 7) == conditions.sample(PAY, 7)
    assert conditions.sample(PAY, 7) != conditions.sample(PAY, 8)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown conditions preset"):
        Conditions.preset("foggy")
    with pytest.raises(ValueError, match="glare"):
        Scene(PAY, glare=2.0)
    with pytest.raises(ValueError, match="distance"):
        Scene(PAY, distance=0.0)
    with pytest.raises(QrEncodeError):
        render_frame(Scene("x" * 5000), np.random.default_rng(1))


def test_cli_writes_a_readable_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "frame.png"
    assert camera_main([PAY, "-c", "clear", "-s", "4", "-o", str(out), "--size", "640x360"]) == 0
    frame = cv2.imread(str(out))
    assert frame is not None and frame.shape == (360, 640, 3)
    assert decode(frame) == [PAY]
    assert "distance=" in capsys.readouterr().out


def test_cli_refuses_a_bad_size_with_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        camera_main([PAY, "--size", "wide"])
    assert exc.value.code == 2
