"""A decoder behind the change gate (`scanner.change_gate`): frames that are, within sensor
noise, the last frame in which nothing at all was found are let pass without a decode.

"Nothing at all" is judged strictly, because a frame taken as the reference stops the frames
like it from being decoded: no code read, no code seen but not read (zxing-cpp's checksum
failures, which the cascade reports), and no code-like texture (the deblur pass's texture map
below its threshold: a code blurred beyond being located still scores above it). A view
cluttered enough to score above it is therefore never a reference and is decoded as before;
its texture is measured again only once per `every_frames` decoded frames (`texture_due`).

A decoder that samples frames (the deblur pass looks at one in four) is told of each frame let
pass, so it looks at the same frames of a phone as it would without the gate.
"""

from __future__ import annotations

import threading

from scanner.change_gate import (
    GateSettings,
    GateState,
    Verdict,
    decide,
    nothing_found,
    texture_due,
    textured,
    thumbnail,
)
from scanner.deblur import MIN_TEXTURE, texture_peak
from scanner.detection import Decoder, Detection, FrameSampler, GrayImage, locate


class FrameGate:
    """Thread-safe: the scanner's decode workers share one."""

    def __init__(self, decoder: Decoder, settings: GateSettings | None = None) -> None:
        self.decoder = decoder
        self.settings = settings or GateSettings()
        self._sampler = decoder if isinstance(decoder, FrameSampler) else None
        self._lock = threading.Lock()
        self._state = GateState()

    def scan(self, gray: GrayImage, frame_id: int, ts: float) -> tuple[Verdict, list[Detection]]:
        """The gate's verdict on frame `frame_id` (taken at `ts`) and the codes read in it
        (none when the verdict is SKIP: the frame was not decoded)."""
        block = self.settings.block_px
        with self._lock:
            compare = self._state.reference is not None
        thumb = thumbnail(gray, block) if compare else None
        with self._lock:
            verdict, self._state = decide(self._state, thumb, ts, self.settings)
        if not verdict.decode:
            if self._sampler is not None:
                self._sampler.frame_passed()
            return verdict, []
        found, unread = locate(self.decoder, gray)
        if found or unread:
            return verdict, found
        with self._lock:
            measure, self._state = texture_due(self._state)
        if not measure:
            return verdict, found
        if texture_peak(gray)[0] >= MIN_TEXTURE:
            with self._lock:
                self._state = textured(self._state, self.settings)
            return verdict, found
        thumb = thumbnail(gray, block) if thumb is None else thumb
        with self._lock:
            self._state = nothing_found(self._state, frame_id, thumb)
        return verdict, found
