"""The `covered` fallback pass: a code zxing-cpp found but could not read because part of it is
hidden (a thumb over a corner, a glare spot washed out to white), read by telling
Reed-Solomon which modules were not seen.

zxing-cpp reports where such a code is (its outline: the symbol's corners as its own detector
placed the grid). For each outline the pass samples the module grid for each size a version 1-6
symbol can have, keeps the size whose finder and timing patterns match best, and sorts each
module into dark, light or not seen: a module is not seen when the modules around it show no
contrast (skin, a saturated glare spot) or when its own level sits between the dark and the
light around it (the edge of a thumb). `scanner.qr_symbol.repaired` corrects the symbol with
the unseen modules as erasures and zxing-cpp reads the repaired matrix as a pure symbol.

A wrong read cannot come out of it: every block must decode with `qr_symbol.SPARE` check
codewords to spare and then pass all its checks, and zxing-cpp checks the drawn symbol's
codewords and segments once more. The pass works only on outlines zxing-cpp reports, so an
empty frame costs it nothing; a spot where it read nothing waits `retry_after` frames (a phone
held still under a thumb: the same modules hidden frame after frame), unless the lane has
learned a new pattern since.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp

from scanner.common_words import RECENT, CommonWords
from scanner.detection import Detection, GrayImage, Polygon
from scanner.qr_symbol import (
    VERSIONS,
    Matrix,
    data_stream,
    function_agreement,
    repaired,
    size_of,
)

FloatImage = npt.NDArray[np.float32]

PX = 5  # pixels per module in the sampled grid; the level is read from its central 3x3
# A grid whose visible finder and timing modules agree less than this sits wrongly.
MIN_AGREEMENT = 0.85
# Contrast below this share of the symbol's own (dark to light) is no contrast: nothing seen.
FLAT = 0.35
MIN_PATCH = 9  # modules: a smaller flat patch is the code's own (a run of one colour)
WINDOW = 5  # modules across the neighbourhood the local levels come from
# The symbol is drawn here as Model 2; zxing-cpp 3.1 reads a pure image restricted to
# QRCodeModel2 as nothing at all, so the pure read asks for the QR family.
_QR = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)


def sample_grid(gray: GrayImage, polygon: Polygon, size: int) -> FloatImage:
    """The mean level of each module's centre, the outline's corners taken as the symbol's."""
    side = size * PX
    target = np.array([[0, 0], [side, 0], [side, side], [0, side]], np.float32)
    homography = cv2.getPerspectiveTransform(np.array(polygon, np.float32), target)
    flat = cv2.warpPerspective(gray, homography, (side, side), flags=cv2.INTER_LINEAR)
    cells = flat.reshape(size, PX, size, PX).astype(np.float32)
    centre = cells[:, PX // 2 - 1 : PX // 2 + 2, :, PX // 2 - 1 : PX // 2 + 2]
    return centre.mean(axis=(1, 3))  # type: ignore[no-any-return]


def modules_seen(levels: FloatImage) -> tuple[Matrix, Matrix]:
    """(dark, not seen) for each module. Not seen: a patch without the code's texture (a
    thumb, a saturated glare spot), the modules at its edge included (partly covered)."""
    square = np.ones((3, 3), np.uint8)
    lo = cv2.erode(levels, square)
    hi = cv2.dilate(levels, square)
    symbol = float(np.percentile(levels, 90) - np.percentile(levels, 10))
    flat = ((hi - lo) < FLAT * symbol).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=4)
    # Nine code modules in a row of one colour happen; a patch that size of no texture is
    # what covers the code.
    big = np.isin(labels, [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= MIN_PATCH])
    patch = cv2.dilate(cv2.morphologyEx(big.astype(np.uint8), cv2.MORPH_CLOSE, square), square)
    window = np.ones((WINDOW, WINDOW), np.uint8)
    middle = (cv2.erode(levels, window) + cv2.dilate(levels, window)) / 2
    return levels < middle, patch.astype(bool)


class CoveredRetry:
    """Fallback pass: each unreadable candidate read again with its unseen modules erased,
    then with the codewords the lane's last codes shared (`scanner.common_words`) in place of
    the erased ones they cover."""

    def __init__(self, name: str = "covered", retry_after: int = 3) -> None:
        if retry_after < 0:
            raise ValueError(f"need retry_after >= 0, got {retry_after}")
        self.name = name
        self._retry_after = retry_after
        self._common = CommonWords()
        # Texts learned lately: a code read again (the same phone on the next frame, or a
        # sticker in view beside each driver's phone) is no new code.
        self._recent: deque[str] = deque(maxlen=RECENT)
        # Thread-safe: pipeline workers share the pass.
        self._lock = threading.Lock()
        self._calls = 0
        # Where it read nothing: (outline, call, patterns learned by then).
        self._failed: list[tuple[Polygon, int, int]] = []

    def learn(self, found: list[Detection]) -> None:
        for detection in found:
            with self._lock:
                if detection.text in self._recent:
                    continue
                self._recent.append(detection.text)
            stream = encoded_stream(detection.text)
            if stream is not None:
                self._common.learn(stream)

    def run(
        self, gray: GrayImage, candidates: list[Polygon], read: Sequence[Polygon] = ()
    ) -> list[Detection]:
        with self._lock:
            self._calls += 1
            call, learned = self._calls, self._common.learned
            self._failed = [f for f in self._failed if call - f[1] <= self._retry_after]
            fresh = [
                p
                for p in candidates
                if not any(f[2] == learned and near(f[0], p) for f in self._failed)
            ]
        for polygon in fresh:
            found = self._read(gray, polygon)
            if found:
                return found
            with self._lock:
                self._failed.append((polygon, call, learned))
        return []

    def _read(self, gray: GrayImage, polygon: Polygon) -> list[Detection]:
        best: tuple[float, Matrix, Matrix] | None = None
        for version in VERSIONS:
            dark, erased = modules_seen(sample_grid(gray, polygon, size_of(version)))
            for polarity in (dark, ~dark):  # dark mode: light modules on a dark ground
                score = function_agreement(polarity, erased)
                if best is None or score > best[0]:
                    best = (score, polarity, erased)
        if best is None or best[0] < MIN_AGREEMENT:
            return []
        for known in ({}, *self._common.patterns()):
            matrix = repaired(best[1], best[2], known=known)
            if matrix is not None:
                return self._pure_read(matrix, polygon)
        return []

    def _pure_read(self, matrix: Matrix, polygon: Polygon) -> list[Detection]:
        barcodes = zxingcpp.read_barcodes(
            pure_image(matrix), formats=_QR, is_pure=True, text_mode=zxingcpp.TextMode.Plain
        )
        name = f"zxing+{self.name}"
        return [Detection(b.text, bytes(b.bytes), polygon, name) for b in barcodes if b.valid]


def near(a: Polygon, b: Polygon) -> bool:
    """The same spot: no corner moved by more than an eighth of the symbol's side (a hand's
    shake moves a held phone's outline by a few pixels)."""
    side = float(np.hypot(*np.subtract(a[1], a[0])))
    moved = max(float(np.hypot(*np.subtract(p, q))) for p, q in zip(a, b, strict=False))
    return len(a) == len(b) and moved <= side / 8


def encoded_stream(text: str) -> tuple[int, ...] | None:
    """The data codewords an encoder writes for `text` (zxing-cpp's, at level L: the smallest
    symbol; the data stream is the same at every level of versions 1-9), None when it takes a
    version above 6."""
    try:
        code = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level="L")
    except ValueError:  # too long for any QR symbol: nothing to learn from it
        return None
    image = np.asarray(zxingcpp.write_barcode_to_image(code, scale=1, add_quiet_zones=False))
    return data_stream(image < 128)


def pure_image(matrix: Matrix, scale: int = 3) -> GrayImage:
    """The matrix as a black-on-white image with its 4-module quiet zone."""
    light = np.pad(~matrix, 4, constant_values=True)
    return (np.kron(light, np.ones((scale, scale), np.uint8)) * 255).astype(np.uint8)
