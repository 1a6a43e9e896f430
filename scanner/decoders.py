"""QR decoders behind one small interface, and the cascade the lane uses by default.

- `ZxingDecoder`: zxing-cpp restricted to QR Model 2 (the wider QR family occasionally reports
  bogus extra symbols); fastest and best reader on our corpus.
- `PyzbarDecoder`: ZBar via pyzbar, QR only, bytes decoded by us (see `scanner.zbar`).
- `CascadeDecoder`: the primary decoder, then fallback passes for what it did not read: the
  codes it saw but could not read, even beside a code it read (a sticker in view). The default
  passes are the ones `bench/scan.py` shows to pay for their cost (docs/scanner.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import zxingcpp

from scanner import fallbacks, zbar
from scanner.covered import CoveredRetry
from scanner.deblur import Deblur
from scanner.detection import (
    Decoder,
    Detection,
    FrameSampler,
    GrayImage,
    Learner,
    Polygon,
    check_gray,
    locate,
    text_from_bytes,
)
from scanner.fallbacks import FallbackPass

__all__ = [
    "DECODER_NAMES",
    "DEFAULT_PASSES",
    "CascadeDecoder",
    "Decoder",
    "Detection",
    "PyzbarDecoder",
    "ZxingDecoder",
    "make_decoder",
    "make_pass",
]

DECODER_NAMES = ("zxing", "pyzbar", "cascade")
_QR_MODEL_2 = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCodeModel2)
# Chosen from the measurements in docs/scanner.md: re-read unreadable candidates with a
# global-histogram binariser (curved, unevenly lit codes), retry the frame at half size (print
# texture and moire average out), and undo the motion blur of a phone held out of a rolling
# car (the simulator's first-look misses); read a code partly covered by a thumb with the
# modules it hides as erasures. None costs much on empty frames.
DEFAULT_PASSES = ("roi-global", "covered", "half", "deblur")


class ZxingDecoder:
    def __init__(
        self,
        *,
        try_rotate: bool = True,
        try_invert: bool = True,
        try_downscale: bool = True,
        binarizer: Literal["local", "global"] = "local",
        name: str = "zxing",
    ) -> None:
        self.name = name
        self.try_rotate = try_rotate
        self.try_invert = try_invert
        self.try_downscale = try_downscale
        self._binarizer = (
            zxingcpp.Binarizer.LocalAverage
            if binarizer == "local"
            else zxingcpp.Binarizer.GlobalHistogram
        )

    def decode(self, gray: GrayImage) -> list[Detection]:
        return self.locate(gray)[0]

    def locate(self, gray: GrayImage) -> tuple[list[Detection], list[Polygon]]:
        """Codes read, and the outlines of codes found but not read (checksum failures)."""
        check_gray(gray)
        found: list[Detection] = []
        unreadable: list[Polygon] = []
        barcodes = zxingcpp.read_barcodes(
            gray,
            formats=_QR_MODEL_2,
            try_rotate=self.try_rotate,
            try_invert=self.try_invert,
            try_downscale=self.try_downscale,
            # Plain: control characters come through as themselves, not as "<SOH>" markers.
            text_mode=zxingcpp.TextMode.Plain,
            binarizer=self._binarizer,
            return_errors=True,
        )
        for barcode in barcodes:
            p = barcode.position
            polygon = tuple(
                (int(q.x), int(q.y))
                for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
            )
            if barcode.valid:
                found.append(Detection(barcode.text, bytes(barcode.bytes), polygon, self.name))
            elif len(set(polygon)) > 1:
                # Beside a code it reads, zxing-cpp can report a format error with no outline
                # (every corner at 0,0): nothing was seen there to retry.
                unreadable.append(polygon)
        return found, unreadable


class PyzbarDecoder:
    def __init__(self, *, name: str = "pyzbar") -> None:
        self.name = name

    def decode(self, gray: GrayImage) -> list[Detection]:
        return [
            Detection(text_from_bytes(raw), raw, polygon, self.name)
            for raw, polygon in zbar.scan_qr(gray)
        ]


class CascadeDecoder:
    def __init__(self, primary: Decoder, passes: Sequence[FallbackPass], *, name: str = "cascade"):
        self.name = name
        self.primary = primary
        self.passes = tuple(passes)
        self._samplers = tuple(p for p in (primary, *passes) if isinstance(p, FrameSampler))
        self._learners = tuple(p for p in passes if isinstance(p, Learner))

    def frame_passed(self) -> None:
        for sampler in self._samplers:
            sampler.frame_passed()

    def decode(self, gray: GrayImage) -> list[Detection]:
        return self.locate(gray)[0]

    def locate(self, gray: GrayImage) -> tuple[list[Detection], list[Polygon]]:
        """Codes read, and the primary's outlines of codes it saw but could not read (the
        change gate never takes a frame with one as "nothing here").

        The passes run in turn until one reads a code not read yet, whether or not the primary
        read one: a sticker or a second phone read in every frame must not keep them from the
        driver's code beside it. Each pass is told what was read (whole-frame passes then
        stand aside; the deblur pass looks past it)."""
        found, candidates = locate(self.primary, gray)
        read = tuple(d.polygon for d in found)
        texts = {d.text for d in found}
        for fallback in self.passes:
            more = [d for d in fallback.run(gray, candidates, read) if d.text not in texts]
            if more:
                found = [*found, *more]
                break
        for learner in self._learners:
            if found:
                learner.learn(found)
        return found, candidates


def make_pass(name: str) -> FallbackPass:
    """Fallback passes by name, as the benchmark compares them."""
    if name == "roi-global":
        return fallbacks.RoiRetry(name, ZxingDecoder(binarizer="global"))
    if name == "roi-x2":
        return fallbacks.RoiRetry(name, ZxingDecoder(), scale=2.0)
    if name == "roi-pyzbar":
        return fallbacks.RoiRetry(name, PyzbarDecoder())
    if name == "half":
        return fallbacks.WholeFrame(name, ZxingDecoder(), scale=0.5)
    if name == "clahe":
        return fallbacks.WholeFrame(name, ZxingDecoder(), fallbacks.clahe)
    if name == "pyzbar":
        return fallbacks.WholeFrame(name, PyzbarDecoder())
    if name == "pyzbar-invert":
        return fallbacks.WholeFrame(name, PyzbarDecoder(), fallbacks.invert)
    if name == "covered":
        return CoveredRetry(name)
    if name == "deblur":
        return Deblur(name, ZxingDecoder())
    raise ValueError(f"unknown fallback pass {name!r}")


PASS_NAMES = (
    "roi-global", "roi-x2", "roi-pyzbar", "covered", "half", "clahe", "pyzbar", "pyzbar-invert",
    "deblur",
)  # fmt: skip


def make_decoder(name: str = "cascade") -> Decoder:
    """ "zxing", "pyzbar" or "cascade" (zxing-cpp plus the measured fallbacks; the default)."""
    if name == "zxing":
        return ZxingDecoder()
    if name == "pyzbar":
        return PyzbarDecoder()
    if name == "cascade":
        return CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in DEFAULT_PASSES])
    raise ValueError(f"unknown decoder {name!r}; expected one of {', '.join(DECODER_NAMES)}")
