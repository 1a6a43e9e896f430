"""A decoder behind the change gate (`scanner.change_gate`): frames that are, within sensor
noise, the last frame in which nothing at all was found are let pass without a decode.

The gate works in two halves, on two threads: `judge` (the capture thread: gray frame in,
verdict out) and `decode` (a decode worker, only for the frames judged worth decoding). A frame
let pass therefore never wakes a worker: an idle lane's workers sleep through 29 frames in 30.

"Nothing at all" is judged strictly, because a frame taken as the reference stops the frames
like it from being decoded: no code read, no code seen but not read (zxing-cpp's checksum
failures, which the cascade reports), and no code-like texture (the deblur pass's texture map
below its threshold: a code blurred beyond being located still scores above it). One kind of
code read may be in it: codes that are no payment code and have stayed at the same place for
`change_gate.STEADY_AFTER` decoded frames (a QR sticker on the booth), their own texture left
out of the texture map. A view
cluttered enough to score above it is therefore never a reference and is decoded as before;
its texture is measured again only once per `every_frames` decoded frames (`texture_due`).

A decoder that samples frames (the deblur pass looks at one in four) is told of each frame let
pass, so it looks at the same frames of a phone as it would without the gate.
"""

from __future__ import annotations

import logging
import threading

from scanner.change_gate import (
    FORGET_AFTER_S,
    KNOWN_MAX,
    GateSettings,
    GateState,
    KnownCode,
    Sighting,
    Thumbnail,
    Verdict,
    decide,
    known_changes,
    nothing_found,
    printed_here,
    steady,
    texture_due,
    textured,
    thumbnail,
    watched,
)
from scanner.deblur import MIN_TEXTURE, texture_peak
from scanner.detection import Decoder, Detection, FrameSampler, GrayImage, locate
from scanner.payload import is_payment

log = logging.getLogger("lane.scanner")


class FrameGate:
    """Thread-safe: the scanner's capture thread judges, its decode workers decode."""

    def __init__(self, decoder: Decoder, settings: GateSettings | None = None) -> None:
        self.decoder = decoder
        self.settings = settings or GateSettings()
        self._sampler = decoder if isinstance(decoder, FrameSampler) else None
        self._lock = threading.Lock()
        self._state = GateState()

    def judge(self, gray: GrayImage, ts: float) -> tuple[Verdict, Thumbnail | None]:
        """Decode the frame taken at `ts`, or let it pass? Also its thumbnail, when one was
        made (there was a reference to compare it with), for `decode` to reuse."""
        with self._lock:
            compare = self._state.reference is not None
        thumb = thumbnail(gray, self.settings.block_px) if compare else None
        with self._lock:
            verdict, self._state = decide(self._state, thumb, ts, self.settings)
        if not verdict.decode and self._sampler is not None:
            self._sampler.frame_passed()
        return verdict, thumb

    def in_view(self) -> tuple[Sighting, ...]:
        """The steady codes in the reference: in view in a frame `judge` let pass."""
        with self._lock:
            reference = self._state.reference
        return () if reference is None else reference.codes

    def printed_here(self, sighting: Sighting) -> bool:
        """Is this code (no payment code) one that stayed put in this view before (a sticker),
        by its text or its place? `change_gate.printed_here`."""
        with self._lock:
            known = self._state.known
        return printed_here(known, sighting)

    def known_texts(self) -> frozenset[str]:
        """The codes it knows as printed at the booth now (`ScanStats.static_known`)."""
        with self._lock:
            return frozenset(k.text for k in self._state.known)

    def decode(
        self, gray: GrayImage, frame_id: int, ts: float, thumb: Thumbnail | None
    ) -> list[Detection]:
        """The codes read in frame `frame_id` (taken at `ts`), which `judge` let through
        (`thumb`: what it made). A frame with nothing at all in it becomes the reference."""
        found, unread = locate(self.decoder, gray)
        codes = () if unread else sightings(found)
        with self._lock:
            before = self._state.known
            codes_stay, self._state = steady(self._state, codes, ts)
            after = self._state.known
        tell(
            before,
            after,
            frame_id,
            f"replaced (moved, another code over it, or over {KNOWN_MAX} known)",
        )
        if after:
            # Every decoded frame is evidence of whether the known codes are still in view (one
            # judged with no reference has no thumbnail, and there is no home view to compare).
            read = tuple((d.text, d.polygon) for d in found if not is_payment(d.text))
            with self._lock:
                before = self._state.known
                self._state = watched(self._state, read, thumb, ts, self.settings.block_px)
                after = self._state.known
            tell(before, after, frame_id, f"missing from its place for {FORGET_AFTER_S:.0f} s")
        if unread or (found and not codes_stay):
            return found
        with self._lock:
            measure, self._state = texture_due(self._state)
        if not measure:
            return found
        # The steady codes' own texture left out: only what else is in view counts.
        if texture_peak(gray, [d.polygon for d in found])[0] >= MIN_TEXTURE:
            with self._lock:
                self._state = textured(self._state, self.settings)
            return found
        thumb = thumbnail(gray, self.settings.block_px) if thumb is None else thumb
        with self._lock:
            self._state = nothing_found(self._state, frame_id, thumb, codes)
        return found


def tell(
    before: tuple[KnownCode, ...], after: tuple[KnownCode, ...], frame_id: int, gone: str
) -> None:
    """One log line per code learned or forgotten (`gone`: why): the operator's way to know
    which code the lane ignores (its place in the picture; the text is never logged, as no
    code is)."""
    learned, forgotten = known_changes(before, after)
    for k in learned:
        said(
            k, "learned", "stayed put: read there, or with its text, it is ignored", after, frame_id
        )
    for k in forgotten:
        said(k, "forgotten", gone, after, frame_id)


def said(k: KnownCode, what: str, why: str, known: tuple[KnownCode, ...], frame_id: int) -> None:
    x, y = min(p[0] for p in k.place), min(p[1] for p in k.place)
    log.info(
        "static code %s at %d,%d: %s; %d known",
        what,
        x,
        y,
        why,
        len(known),
        extra={
            "event": f"static_{what}",
            "frame_id": frame_id,
            "place": [x, y],
            "known": len(known),
        },
    )


def sightings(found: list[Detection]) -> tuple[Sighting, ...]:
    """The codes read, sorted, when none is a payment code of any kind (`()` otherwise): only
    such codes may be in the reference. A driver's phone held still is never let pass, so it
    is read on every frame as without the gate (the lane hears of it again for the next person
    at once)."""
    if any(is_payment(d.text) for d in found):
        return ()
    return tuple(sorted((d.text, d.polygon) for d in found))
