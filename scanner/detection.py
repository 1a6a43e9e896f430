"""What a decoder reports: the decoded text, its raw bytes and where it sat in the frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import numpy.typing as npt

Point = tuple[int, int]
Polygon = tuple[Point, ...]
GrayImage = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Detection:
    text: str
    raw: bytes
    polygon: Polygon  # corners in frame pixels, clockwise from the code's top left
    decoder: str  # which decoder (and fallback pass) read it, e.g. "zxing" or "zxing+half"


class Decoder(Protocol):
    name: str

    def decode(self, gray: GrayImage) -> list[Detection]:
        """Every QR code read in an 8-bit single-channel image. Releases the GIL while busy."""
        ...


@runtime_checkable
class Locator(Protocol):
    """A decoder that can also say where it saw a code it could not read (a checksum failure)."""

    def locate(self, gray: GrayImage) -> tuple[list[Detection], list[Polygon]]: ...


@runtime_checkable
class FrameSampler(Protocol):
    """A decoder (or pass) that works on one frame in n: told of each frame it is not given, its
    sampling stays on the camera's frames, so the change gate does not shift which of a phone's
    frames it looks at."""

    def frame_passed(self) -> None: ...


@runtime_checkable
class Learner(Protocol):
    """A pass that learns from the codes the cascade reads, whichever pass read them."""

    def learn(self, found: list[Detection]) -> None: ...


def locate(decoder: Decoder, gray: GrayImage) -> tuple[list[Detection], list[Polygon]]:
    """Codes read, and where codes were seen but not read (none from a plain decoder)."""
    if isinstance(decoder, Locator):
        return decoder.locate(gray)
    return decoder.decode(gray), []


def text_from_bytes(raw: bytes) -> str:
    """QR byte mode is ISO-8859-1 by default, but phones write UTF-8: try that first."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def as_gray(image: npt.NDArray[np.uint8]) -> GrayImage:
    """An 8-bit single-channel view of a camera frame (BGR, BGRA or already gray)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)  # type: ignore[return-value]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)  # type: ignore[return-value]
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    raise ValueError(f"expected a gray or BGR image, got shape {image.shape}")


def check_gray(gray: GrayImage) -> None:
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} {gray.shape}")


def bounding_box(polygon: Polygon) -> tuple[int, int, int, int]:
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    return min(xs), min(ys), max(xs), max(ys)
