"""Test images: generated QR codes, road-like frames and the real-photo corpus."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import zxingcpp

from scanner.detection import Polygon
from sim.codes import CodeFactory
from sim.scene import Scene

Gray = npt.NDArray[np.uint8]

# A compact token as the simulator's phones show it, and a pose that failed the first look
# without the deblur pass: 1.75 m away, night-ish, a 5.2 px streak 12 degrees off the lane axis.
TOKEN = CodeFactory(7).make("token", 1_800_000_000).text
BLURRED = Scene(
    TOKEN, distance=1.75, angle_deg=24.0, blur_px=5.2, blur_dir_deg=-12.0, low_light=0.41,
    roll_deg=-6.0, pitch_deg=9.0, position=(0.6, 0.5),
)  # fmt: skip
# A compact token held by daylight with a thumb over a tenth of its symbol: zxing-cpp finds
# the symbol and fails its checksum; the covered pass reads it.
THUMB = Scene(TOKEN, distance=1.4, angle_deg=20.0, roll_deg=-8.0, pitch_deg=6.0, occlusion=0.09)
# A QR sticker on the booth (`Scene.sticker`): read in every frame of the simulator's camera.
STICKER = "https://example.org/help/booth-7"

# The example of EMV QRCPS v1.1 (consumer presented mode), as reproduced by independent CPM
# libraries; decoded by hand: 85 "CPV01", two 61 templates (A0000000555555 "Product1",
# A0000000666666 "Product2"), 62 with PAN 1234567890123458, name, language "ruesdeen" and a
# 64 template holding 9F10, cryptogram 584FD385FA234BCC, ATC 0001 and 9F37.
EMVCO_SAMPLE = (
    "hQVDUFYwMWETTwegAAAAVVVVUAhQcm9kdWN0MWETTwegAAAAZmZmUAhQcm9kdWN0MmJJWggSNFZ4kBI0WF8gDkNB"
    "UkRIT0xERVIvRU1WXy0IcnVlc2RlZW5kIZ8QBwYBCgMAAACfJghYT9OF+iNLzJ82AgABnzcEbVjvEw=="
)


def corpus_dir() -> Path | None:
    """The shared corpus: beside the repo in CI (../shared), or at /work/shared on a dev box."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "qr-corpus"
        if candidate.is_dir():
            return candidate
    return None


def corpus_image(name: str) -> tuple[Path, str]:
    root = corpus_dir()
    if root is None:
        pytest.skip("QR corpus (shared/qr-corpus) not present")
    path = root / name
    return path, path.with_suffix(".txt").read_bytes().decode("utf-8")


def qr_image(content: str | bytes, scale: int = 4) -> Gray:
    code = zxingcpp.create_barcode(content, zxingcpp.BarcodeFormat.QRCode)
    return np.asarray(zxingcpp.write_barcode_to_image(code, scale=scale))


def frame_with(
    code: Gray | None, width: int = 1280, height: int = 720, at: tuple[int, int] = (400, 200)
) -> Gray:
    """A dim, noisy road-like frame, optionally with `code` pasted at `at` (x, y)."""
    rng = np.random.default_rng(3)
    frame = (60 + rng.normal(0, 8, (height, width))).clip(0, 255).astype(np.uint8)
    if code is not None:
        x, y = at
        frame[y : y + code.shape[0], x : x + code.shape[1]] = code
    return frame


def thumb_over(gray: Gray, polygon: Polygon, radius: float) -> Gray:
    """A skin-grey disc (a thumb tip) over the symbol's bottom-right corner, `radius` in
    symbol widths."""
    out = gray.copy()
    x, y = polygon[2]
    width = float(np.hypot(*np.subtract(polygon[1], polygon[0])))
    cv2.circle(out, (x, y), round(radius * width), 150, -1, cv2.LINE_AA)
    return out


def load_gray(path: Path) -> Gray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image  # type: ignore[return-value]


class FakeClock:
    """Time that moves only when a test (or an injected sleep) moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
