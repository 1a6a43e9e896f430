"""The change gate's decisions: decode a camera frame, or let it pass undecoded because it is,
within sensor noise, the frame in which the decoder last found nothing at all.

A lane camera looks at an empty window most of the time, and zxing-cpp searching those frames
was two thirds of an idle lane's CPU (issue #16). A frame is compared with the reference (the
last fully decoded frame with nothing in it: no code read, none seen unread, no code-like
texture; or nothing but steady codes, `steady`) on a thumbnail of block means; it is decoded
if any block moved by more than the threshold, if no reference is known yet, or if the safety
valve is due (a decode at least every `every_frames` frames and every `every_s` seconds,
whatever the comparison says).

Pure: time and frame ids come from the caller; no I/O, no threads (`scanner.frame_gate` holds the
lock and does the decoding).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import cv2
import numpy as np
import numpy.typing as npt

from scanner.detection import GrayImage, Polygon
from scanner.view_match import View, clear_before, view_of

Thumbnail = npt.NDArray[np.uint8]

# Measured on the simulator's empty cab window (docs/scanner.md): block means of two frames
# differ by at most 3 levels with its sensor noise (night gain included) and by at most 8 with
# Gaussian noise of sigma 20 added to both; a phone entering, even the farthest and darkest
# pose of the "hard" preset, moves some block by 85 or more.
THRESHOLD = 12.0
# Texture measurements in a row too textured for a reference that make a view "cluttered": not
# one (a phone frame nobody located), but a view that stays so.
CLUTTERED_AFTER = 3
# Decoded frames in a row that must show the same codes, none a payment code, at the same place
# before a frame with nothing else in it may be the reference: a QR sticker on the booth, an ad.
STEADY_AFTER = 3
# Pixels a steady code's corners may move between frames: zxing-cpp's outline of a printed code
# in a fixed view moves by a pixel or so with sensor noise; a hand's shake moves a phone's more.
STEADY_PX = 3

# Steady codes kept for the session (`GateState.known`), the latest: a booth shows a few.
KNOWN_MAX = 16
# Seconds of frame time codes must stay within STEADY_PX of where they were first seen before
# they are known for the session: a sticker stays for hours. STEADY_AFTER frames in a row are no
# sign of one: a phone held by hand (sim.render.SHAKE_PX) is that still within 0.1 s, and known
# its text and place would be ignored for every driver after (no "Payment refused", no reason).
KNOWN_AFTER_S = 30.0
# Seconds a code already known by its text (a sticker) must stay put at another place before it
# is known there instead: a sticker moved, or the camera turned with it still in view. Shorter
# than KNOWN_AFTER_S (the text is the lane's own), longer than a phone is held still.
MOVED_AFTER_S = 10.0
# Seconds of frame time a known code may be missing from its place, while the camera sees
# its home view with nothing in front of it or another view altogether (the camera turned),
# before it is forgotten. A vehicle in front of it (part of the home view still showing:
# `view_match.View.PART`) or a person before it alone (`view_match.clear_before`) stops the
# count, however long they stay.
FORGET_AFTER_S = 300.0
# A gap between two decoded frames counts as at most this much missing time: the camera gave
# no frames (a blackout, a restart), which is no evidence that the sticker went.
GAP_S = 5.0

# A code read in a frame: its text and outline.
Sighting = tuple[str, Polygon]


@dataclass(frozen=True, slots=True)
class KnownCode:
    """A code that stayed put in this view (a sticker): printed at the booth, by text or place."""

    text: str
    place: Polygon
    # Frame time it has been missing from its place while the view said it should be seen
    # (`watched`); reset whenever it is read there.
    missing_s: float = 0.0


@dataclass(frozen=True, slots=True)
class GateSettings:
    block_px: int = 16  # side of the blocks averaged (1280x720 -> 80x45 block means)
    threshold: float = THRESHOLD  # gray levels a block mean may move and still be "the same"
    every_frames: int = 30  # a decode at least every this many frames ...
    every_s: float = 1.0  # ... and every this many seconds (frame timestamps)

    def __post_init__(self) -> None:
        if self.block_px < 1 or self.threshold < 0 or self.every_frames < 1 or self.every_s <= 0:
            raise ValueError(
                "need block_px >= 1, threshold >= 0, every_frames >= 1 and every_s > 0, got "
                f"{self.block_px}, {self.threshold}, {self.every_frames}, {self.every_s}"
            )


class Verdict(enum.Enum):
    FIRST = "first"  # decode: no reference yet
    CHANGED = "changed"  # decode: some block differs from the reference beyond noise
    DUE = "due"  # decode: the safety valve (every_frames / every_s)
    SKIP = "skip"  # let pass: the same view as the reference

    @property
    def decode(self) -> bool:
        return self is not Verdict.SKIP


@dataclass(frozen=True, slots=True)
class Reference:
    frame_id: int
    thumb: Thumbnail
    # Steady codes in it (`steady`): in view in every frame let pass as its same view.
    codes: tuple[Sighting, ...] = ()


@dataclass(frozen=True, slots=True)
class GateState:
    reference: Reference | None = None
    last_decode_ts: float | None = None  # when the last frame let through to decode was taken
    skipped_in_row: int = 0  # frames let pass since then
    # Decoded frames with nothing located whose texture is not measured, once the view is
    # cluttered (CLUTTERED_AFTER measurements in a row too textured for a reference): such a
    # view would otherwise pay for the texture map on every frame and never yield a reference.
    texture_wait: int = 0
    textured_in_row: int = 0
    # The codes of the last decoded frame that showed only codes that are no payment code, and
    # in how many decoded frames in a row they stayed (`steady`).
    codes: tuple[Sighting, ...] = ()
    codes_in_row: int = 0
    # The codes that stayed put in this view for KNOWN_AFTER_S, text and place (a sticker the
    # lane keeps knowing while a truck hides it: `printed_here`), until forgotten (`watched`).
    known: tuple[KnownCode, ...] = ()
    # The view they were last seen in (a reference's thumbnail with one of them at its place),
    # and when a decoded frame last compared with it showed no vehicle in front (`watched`).
    home: Thumbnail | None = None
    watched_ts: float | None = None
    # The codes in view where they were first seen (frame time `still_since`), while every
    # decoded frame since showed them within STEADY_PX of there: known after KNOWN_AFTER_S.
    still: tuple[Sighting, ...] = ()
    still_since: float = 0.0


def thumbnail(gray: GrayImage, block_px: int) -> Thumbnail:
    """Block means of a gray frame: area averaging takes the sensor noise out."""
    height, width = gray.shape
    size = (max(1, width // block_px), max(1, height // block_px))
    if block_px % 2 == 0 and width % 2 == 0 and height % 2 == 0:
        # Halved first (OpenCV's own 2x2 path), then averaged: the same block means within a
        # level of rounding in under half the time, which the capture thread pays on every
        # frame (bench/first_look.py --parts empty, "default + gate").
        half = (width // 2, height // 2)
        gray = cv2.resize(gray, half, interpolation=cv2.INTER_AREA)  # type: ignore[assignment]
    small: Thumbnail = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)  # type: ignore[assignment]
    return small


def changed(reference: Thumbnail, thumb: Thumbnail, threshold: float) -> bool:
    """True when any block mean moved by more than `threshold` (or the frame size changed)."""
    if reference.shape != thumb.shape:
        return True
    return float(cv2.norm(reference, thumb, cv2.NORM_INF)) > threshold


def decide(
    state: GateState, thumb: Thumbnail | None, ts: float, settings: GateSettings
) -> tuple[Verdict, GateState]:
    """Decode the frame taken at `ts` with thumbnail `thumb`, or let it pass? `thumb` None: not
    made, as there was no reference to compare it with (a view that never yields one, such as
    code-like clutter, then costs no thumbnails); such a frame is always decoded."""
    if state.reference is None:
        verdict = Verdict.FIRST
    elif thumb is None or changed(state.reference.thumb, thumb, settings.threshold):
        verdict = Verdict.CHANGED
    elif (
        state.skipped_in_row + 1 >= settings.every_frames
        or state.last_decode_ts is None
        or ts - state.last_decode_ts >= settings.every_s
    ):
        verdict = Verdict.DUE
    else:
        return Verdict.SKIP, replace(state, skipped_in_row=state.skipped_in_row + 1)
    return verdict, replace(state, last_decode_ts=ts, skipped_in_row=0)


def texture_due(state: GateState) -> tuple[bool, GateState]:
    """Measure the texture of a decoded frame in which nothing was located (to see whether it
    may be the reference)? Not while waiting after a textured one. Not measuring only keeps
    a frame from becoming the reference, so it can cost the gate savings, never a read."""
    if state.texture_wait > 0:
        return False, replace(state, texture_wait=state.texture_wait - 1)
    return True, state


def textured(state: GateState, settings: GateSettings) -> GateState:
    """A decoded frame with nothing located was too textured to be the reference. The
    CLUTTERED_AFTER-th in a row makes the texture be measured again only after
    `every_frames` - 1 such frames: a view that stays cluttered pays for it once per valve
    period (the run is kept, so one more textured measurement after the wait starts the next),
    and one that clears yields a reference within it."""
    n = state.textured_in_row + 1
    if n < CLUTTERED_AFTER:
        return replace(state, textured_in_row=n)
    return replace(state, textured_in_row=n - 1, texture_wait=settings.every_frames - 1)


def nothing_found(
    state: GateState, frame_id: int, thumb: Thumbnail, codes: tuple[Sighting, ...] = ()
) -> GateState:
    """Frame `frame_id` was decoded and nothing at all was found in it (no code read, none seen
    unread, no code-like texture): it becomes the reference. Only such a frame may, so a phone
    whose code is seen but not read is decoded again on every frame it stays in view."""
    state = replace(state, textured_in_row=0)
    if state.reference is not None and state.reference.frame_id > frame_id:
        return state  # another worker already took a newer frame as the reference
    if any(at_place(k, codes) for k in state.known):
        state = replace(state, home=thumb)  # follows the light, and a view turned and relearned
    return replace(state, reference=Reference(frame_id, thumb, codes))


def steady(state: GateState, codes: tuple[Sighting, ...], ts: float) -> tuple[bool, GateState]:
    """A decoded frame taken at `ts` showed `codes` (sorted), all no payment code, and no code
    seen unread (`()`: anything else, which ends the run). Have they stayed, the same texts at
    the same place, for STEADY_AFTER decoded frames in a row, this one included? Then the frame
    may be the reference if nothing else is in it: the codes are in the reference's thumbnail,
    so a phone coming up beside them or over them still moves its blocks (`changed`), and the
    safety valve still decodes them once a period (the lane's deduplication stays fed). Codes
    still where they were first seen KNOWN_AFTER_S ago are known (`learned`); codes all known
    by their text already (a sticker moved) after MOVED_AFTER_S, at their new place."""
    if not codes:
        return False, replace(state, codes=(), codes_in_row=0, still=())
    n = state.codes_in_row + 1 if same_codes(state.codes, codes) else 1
    if not same_codes(state.still, codes):
        state = replace(state, still=codes, still_since=ts)
    known = state.known
    texts = {k.text for k in known}
    wait = MOVED_AFTER_S if all(text in texts for text, _ in codes) else KNOWN_AFTER_S
    if ts - state.still_since >= wait:
        known = learned(known, codes)
    return n >= STEADY_AFTER, replace(state, codes=codes, codes_in_row=n, known=known)


def learned(known: tuple[KnownCode, ...], codes: tuple[Sighting, ...]) -> tuple[KnownCode, ...]:
    """`known` with the codes that stayed put in it: each replaces what it was seen as before (its
    text, or its place), the latest KNOWN_MAX kept."""
    kept = tuple(
        k for k in known if not any(k.text == t or same_place(k.place, p) for t, p in codes)
    )
    return (*kept, *(KnownCode(t, p) for t, p in codes))[-KNOWN_MAX:]


def printed_here(known: tuple[KnownCode, ...], sighting: Sighting) -> bool:
    """A code read now (no payment code: the caller's to check) that is one of the steady codes
    seen before: the same text, or read at the very place of one (every corner within
    STEADY_PX, which a phone held by hand is not): a sticker seen again after something hid it,
    or a sticker replaced by another."""
    text, place = sighting
    return any(text == k.text or same_place(place, k.place) for k in known)


def watched(
    state: GateState, read: tuple[Sighting, ...], thumb: Thumbnail | None, ts: float, block_px: int
) -> GateState:
    """A decoded frame taken at `ts` (thumbnail `thumb`; None: not made, as there was no
    reference, so no home to compare it with either) in which `read` were read (the codes that
    are no payment code): which known codes have gone? One read at its place is there. One
    missing while the frame shows the home view with nothing in front, its surroundings too (a
    sticker taken away), or another view altogether (the camera turned) counts the time since
    the last such frame; a frame with part of the home in view (a vehicle), or with something
    before the code alone (a person: `clear_before`), or no evidence, stops its count without
    resetting it. Missing FORGET_AFTER_S: forgotten, its text and its place (the lane then
    treats a code there as anybody's)."""
    if not state.known:
        return state
    home = state.home
    view = (
        View.PART
        if home is None or thumb is None
        else view_of(home, thumb, tuple(k.place for k in state.known), block_px)
    )
    if home is None or thumb is None or view is View.PART:
        known = tuple(replace(k, missing_s=0.0) if at_place(k, read) else k for k in state.known)
        return replace(state, known=known, watched_ts=None)
    # Two workers may finish their frames out of order: an older frame's evidence counts, but
    # the time since the newest frame watched only once.
    last = ts if state.watched_ts is None else state.watched_ts
    step = min(max(ts - last, 0.0), GAP_S)

    def missing(k: KnownCode) -> KnownCode:
        if at_place(k, read):
            return replace(k, missing_s=0.0)
        if view is View.SAME and not clear_before(home, thumb, k.place, block_px):
            return k  # hidden by something the rest of the view does not show (a person)
        return replace(k, missing_s=k.missing_s + step)

    counted = (missing(k) for k in state.known)
    known = tuple(k for k in counted if k.missing_s < FORGET_AFTER_S)
    return replace(
        state,
        known=known,
        home=home if known else None,
        watched_ts=max(ts, last) if known else None,
    )


def known_changes(
    before: tuple[KnownCode, ...], after: tuple[KnownCode, ...]
) -> tuple[tuple[KnownCode, ...], tuple[KnownCode, ...]]:
    """The codes learned and the codes forgotten from `before` to `after` (a code moved is both:
    forgotten at its old place, learned at the new one), for the operator's log. A code learned
    again where it was (its outline a pixel off, as each decoded frame reads it) is neither."""

    def among(k: KnownCode, others: tuple[KnownCode, ...]) -> bool:
        return any(k.text == o.text and same_place(k.place, o.place) for o in others)

    return (
        tuple(k for k in after if not among(k, before)),
        tuple(k for k in before if not among(k, after)),
    )


def at_place(known: KnownCode, read: tuple[Sighting, ...]) -> bool:
    return any(text == known.text and same_place(place, known.place) for text, place in read)


def same_codes(a: tuple[Sighting, ...], b: tuple[Sighting, ...]) -> bool:
    return len(a) == len(b) and all(
        ta == tb and same_place(pa, pb) for (ta, pa), (tb, pb) in zip(a, b, strict=True)
    )


def same_place(a: Polygon, b: Polygon) -> bool:
    return len(a) == len(b) and all(
        abs(x - u) <= STEADY_PX and abs(y - v) <= STEADY_PX
        for (x, y), (u, v) in zip(a, b, strict=True)
    )
