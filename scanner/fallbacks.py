"""Fallback passes for the cascade: extra attempts at what the primary decoder did not read.

Each pass states its own cost: ROI passes work on the few candidate regions where the primary
saw a code but failed its checksum, so on an empty road frame they cost nothing; whole-frame
passes pay on every empty frame, which is the common case for a lane camera. A whole-frame pass
does not run on a frame where a code was already read (`read`): with a sticker in view that is
every frame, and there it cost +11-44% and read nothing more (docs/scanner.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import cv2
import numpy as np

from scanner.detection import Decoder, Detection, GrayImage, Polygon, bounding_box

Transform = Callable[[GrayImage], GrayImage]


class FallbackPass(Protocol):
    name: str

    def run(
        self, gray: GrayImage, candidates: list[Polygon], read: Sequence[Polygon] = ()
    ) -> list[Detection]:
        """Try again; `candidates` are regions where the primary saw an unreadable code,
        `read` the outlines of the codes already read in this frame (a sticker in view)."""
        ...


class RoiRetry:
    """Decode each candidate region again, cropped with a margin and optionally enlarged."""

    def __init__(self, name: str, decoder: Decoder, *, margin: float = 0.15, scale: float = 1.0):
        self.name = name
        self._decoder = decoder
        self._margin = margin
        self._scale = scale

    def run(
        self, gray: GrayImage, candidates: list[Polygon], read: Sequence[Polygon] = ()
    ) -> list[Detection]:
        height, width = gray.shape
        for polygon in candidates:
            x0, y0, x1, y1 = bounding_box(polygon)
            pad = int(self._margin * max(x1 - x0, y1 - y0)) + 4
            x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
            x1, y1 = min(width, x1 + pad), min(height, y1 + pad)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            roi = np.ascontiguousarray(gray[y0:y1, x0:x1])
            if self._scale != 1.0:
                roi = resize(roi, self._scale)
            found = self._decoder.decode(roi)
            if found:
                return [moved(d, self.name, 1.0 / self._scale, (x0, y0)) for d in found]
        return []


class WholeFrame:
    """Decode the whole frame again after a transform (resize, contrast, inversion)."""

    def __init__(
        self, name: str, decoder: Decoder, transform: Transform | None = None, *, scale: float = 1.0
    ):
        self.name = name
        self._decoder = decoder
        self._transform = transform
        self._scale = scale

    def run(
        self, gray: GrayImage, candidates: list[Polygon], read: Sequence[Polygon] = ()
    ) -> list[Detection]:
        if read:
            return []
        image = gray
        if self._scale != 1.0:
            image = resize(image, self._scale)
        if self._transform is not None:
            image = self._transform(image)
        found = self._decoder.decode(image)
        return [moved(d, self.name, 1.0 / self._scale, (0, 0)) for d in found]


def resize(gray: GrayImage, scale: float) -> GrayImage:
    # Area averaging when shrinking: it smooths print texture and screen moire away.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(gray, None, fx=scale, fy=scale, interpolation=interpolation)  # type: ignore[return-value]


def clahe(gray: GrayImage) -> GrayImage:
    """Local contrast equalisation: lifts codes out of glare and low light."""
    equaliser = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    return equaliser.apply(gray)  # type: ignore[return-value]


def invert(gray: GrayImage) -> GrayImage:
    """Light-on-dark codes (phones in dark mode) for decoders that do not try it themselves."""
    return cv2.bitwise_not(gray)  # type: ignore[return-value]


def moved(d: Detection, pass_name: str, factor: float, offset: tuple[int, int]) -> Detection:
    polygon = tuple(
        (round(x * factor) + offset[0], round(y * factor) + offset[1]) for x, y in d.polygon
    )
    return replace(d, polygon=polygon, decoder=f"{d.decoder}+{pass_name}")
