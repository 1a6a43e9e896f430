"""Motion-blur rescue: find where a code probably is, estimate the streak, undo it, decode.

A phone held out of a car that is still rolling, at 1.5-2 m, smears each module over one or
two of its neighbours. zxing-cpp then finds no finder pattern at all, so there is no
"found but unreadable" candidate to retry; what fails the first look under the simulator's
realistic camera is almost only this (bench/first_look.py). Three cheap-to-expensive steps:

1. `texture_peak`: gradient density on a 1/4 subsample of the frame. A code is the densest
   texture a lane camera sees; an empty road scores well below it. ~0.2 ms at 1280x720.
2. `motion_estimate`: the cepstrum of the region around the peak has its deepest minimum at
   the streak's length and direction (the blur's spectrum has zeros spaced 1/length apart).
3. `wiener`: deconvolve the region with that streak (and a few neighbours of it) and decode.
4. `stacked`: when that read nothing, the region averaged over the last frames (each shifted
   onto this one; a held phone shows the same code in all of them), decoded as it is, then
   deconvolved, then after CLAHE: night noise and glare one frame cannot beat.

Pure functions of their inputs; `Deblur` is the cascade pass that strings them together.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from scanner.detection import Decoder, Detection, GrayImage, Polygon, bounding_box
from scanner.fallbacks import clahe, moved, resize

STEP = 4  # subsample step of the texture map
WINDOW = 9  # box filter of the texture map, in subsampled pixels (~ a third of a code)
# Texture score (mean |Sobel x| + |Sobel y| over the window) of a blurred code: 180-250 in
# the simulator's frames, an empty road view 135-155 (measured; docs/scanner.md).
MIN_TEXTURE = 170.0
ROI = 256  # side of the square region deconvolved (a code at 1.2-2.2 m is 110-200 px)
MIN_ROI = 64  # in a smaller frame there is no room for a code blurred beyond reading
LENGTHS = np.arange(3.0, 9.01, 0.5, dtype=np.float32)  # streak lengths looked for, px
ANGLES = np.arange(-40.0, 40.01, 2.0, dtype=np.float32)  # mostly along the lane: +-40 deg
# Tried in order around the estimate: the cepstrum is pulled towards the module grid's axes.
NUDGES = ((0.0, 0.0), (0.0, -8.0), (0.0, 8.0))
NOISE_TO_SIGNAL = 0.005
# Texture scores of one fixed view vary by ~0.2% with sensor noise; a held phone's by ~3%.
SAME_VIEW = 0.01
# Stacking: the region in the last STACK frames, each shifted onto the current one (hand shake
# moves a held phone a few pixels a frame) and averaged; a frame whose region matches the
# current one worse than MIN_MATCH (another view, another pose, another code held at the same
# pose: matched by their detail at a module's scale, `_modules`) is left out (docs/scanner.md).
STACK = 8
MIN_MATCH = 0.82
MAX_SHIFT = 12

FloatImage = npt.NDArray[np.float32]


def texture_peak(gray: GrayImage, hidden: Sequence[Polygon] = ()) -> tuple[float, tuple[int, int]]:
    """The densest texture in the frame, outside the `hidden` outlines (codes already read):
    (score, centre in frame pixels)."""
    small = np.ascontiguousarray(gray[::STEP, ::STEP])
    gx = cv2.convertScaleAbs(cv2.Sobel(small, cv2.CV_16S, 1, 0))
    gy = cv2.convertScaleAbs(cv2.Sobel(small, cv2.CV_16S, 0, 1))
    density = cv2.boxFilter(cv2.add(gx, gy), cv2.CV_32F, (WINDOW, WINDOW))
    for polygon in hidden:
        # The box filter spreads a code's texture half a window beyond its outline.
        x0, y0, x1, y1 = bounding_box(polygon)
        pad = WINDOW // 2 + 1
        density[
            max(0, y0 // STEP - pad) : y1 // STEP + pad + 1,
            max(0, x0 // STEP - pad) : x1 // STEP + pad + 1,
        ] = 0
    _, score, _, (x, y) = cv2.minMaxLoc(density)
    return float(score), (x * STEP, y * STEP)


def motion_kernel(length: float, direction_deg: float) -> FloatImage:
    """A normalised anti-aliased line of `length` px: the streak of a linear motion."""
    size = 2 * math.ceil(length / 2) + 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    t = math.radians(direction_deg)
    ex, ey = (length - 1) / 2 * math.cos(t), (length - 1) / 2 * math.sin(t)
    shift = 4  # sub-pixel endpoints
    scale = 1 << shift
    p0 = (round((c - ex) * scale), round((c - ey) * scale))
    p1 = (round((c + ex) * scale), round((c + ey) * scale))
    cv2.line(kernel, p0, p1, 1.0, 1, cv2.LINE_AA, shift)
    normalised: FloatImage = kernel / kernel.sum()
    return normalised


def motion_estimate(roi: GrayImage) -> tuple[float, float]:
    """(length px, direction deg) of the linear motion blur in `roi`, from its cepstrum."""
    h, w = roi.shape
    signal = roi.astype(np.float32)
    signal -= float(signal.mean())
    window = cv2.createHanningWindow((w, h), cv2.CV_32F)
    spectrum = cv2.dft(signal * window, flags=cv2.DFT_COMPLEX_OUTPUT)
    log_mag = np.log(cv2.magnitude(spectrum[..., 0], spectrum[..., 1]) + 1e-3)
    # The log spectrum is real and even, so its forward transform is the (scaled) cepstrum.
    cepstrum = cv2.dft(log_mag.astype(np.float32), flags=cv2.DFT_COMPLEX_OUTPUT)[..., 0]
    centred = np.fft.fftshift(cepstrum).astype(np.float32)
    radians = np.radians(ANGLES)[None, :]
    xs = (w // 2 + LENGTHS[:, None] * np.cos(radians)).astype(np.float32)
    ys = (h // 2 + LENGTHS[:, None] * np.sin(radians)).astype(np.float32)
    samples = cv2.remap(centred, xs, ys, cv2.INTER_LINEAR)
    i, j = np.unravel_index(int(np.argmin(samples)), samples.shape)
    return float(LENGTHS[i]), float(ANGLES[j])


def wiener(roi: GrayImage, kernel: FloatImage, noise_to_signal: float) -> GrayImage:
    """`roi` deconvolved by `kernel` (a Wiener filter with a flat noise-to-signal ratio)."""
    h, w = roi.shape
    kh, kw = kernel.shape
    psf = np.zeros((h, w), np.float32)
    psf[:kh, :kw] = kernel
    psf = np.roll(psf, (-(kh // 2), -(kw // 2)), (0, 1))
    image = cv2.dft(roi.astype(np.float32), flags=cv2.DFT_COMPLEX_OUTPUT)
    blur = cv2.dft(psf, flags=cv2.DFT_COMPLEX_OUTPUT)
    product = cv2.mulSpectrums(image, blur, 0, conjB=True)
    power = blur[..., 0] ** 2 + blur[..., 1] ** 2 + noise_to_signal
    restored = np.asarray(product, np.float32) / power[..., None]
    out = cv2.idft(restored, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    sharp: GrayImage = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return sharp


class Deblur:
    """Cascade pass: deconvolve the region around an unreadable candidate, or else around the
    frame's densest texture outside the codes already read in it, and decode it.

    Evidence is spread over frames, since a phone stays in view for seconds: the pass looks
    at one frame in `every` (~0.2 ms for the texture map; nothing more on a frame without a
    code-like texture). Where an attempt (~5-15 ms) read nothing, the pass waits
    `retry_after` frames before trying near there again (short: the next frames may be
    sharper, and the next driver's phone may be held where this one was); the very same view
    (the peak on the same pixel with the same score: a fixed sign or grille in front of a
    fixed camera, where a code's peak wanders with the hand) waits `forget_after` frames.
    An attempt that reads nothing in one frame stacks the region over the last `stack` frames
    given to the pass (1: no stacking); a frame the change gate let pass empties the stack.
    """

    def __init__(
        self,
        name: str,
        decoder: Decoder,
        *,
        every: int = 4,
        retry_after: int = 8,
        forget_after: int = 900,
        min_texture: float = MIN_TEXTURE,
        stack: int = STACK,
    ) -> None:
        if every < 1 or stack < 1 or not 0 <= retry_after <= forget_after:
            raise ValueError(
                "need every >= 1, stack >= 1 and 0 <= retry_after <= forget_after, got "
                f"{every}, {stack}, {retry_after}, {forget_after}"
            )
        self.name = name
        self._decoder = decoder
        self._every = every
        self._retry_after = retry_after
        self._forget_after = forget_after
        self._min_texture = min_texture
        self._frames = itertools.count()  # next() is atomic: workers may share the pass
        self._lock = threading.Lock()
        self._failed: list[_Failure] = []
        # The frames given to the pass before this one (references, no copies), for stacking.
        self._recent: deque[GrayImage] = deque(maxlen=stack - 1)

    def frame_passed(self) -> None:
        """A camera frame that was not decoded (the change gate): one in `every` still counts.
        The frames before it showed an empty view: nothing there to stack."""
        next(self._frames)
        with self._lock:
            self._recent.clear()

    def run(
        self, gray: GrayImage, candidates: list[Polygon], read: Sequence[Polygon] = ()
    ) -> list[Detection]:
        frame = next(self._frames)
        with self._lock:
            earlier = list(self._recent)
            self._recent.append(gray)
        if frame % self._every:
            return []
        score = None
        if candidates:
            x0, y0, x1, y1 = bounding_box(candidates[0])
            centre = ((x0 + x1) // 2, (y0 + y1) // 2)
        else:
            score, centre = texture_peak(gray, read)
            if score < self._min_texture:
                return []
        here = _Failure(centre[0], centre[1], score, frame)
        if self._waiting(here):
            return []
        found = self._attempt(gray, earlier, centre, read)
        if not found:
            with self._lock:
                self._failed.append(here)
        return found

    def _waiting(self, here: _Failure) -> bool:
        with self._lock:
            self._failed = [f for f in self._failed if here.frame - f.frame < self._forget_after]
            return any(
                f.same_view(here) or (f.near(here) and here.frame - f.frame < self._retry_after)
                for f in self._failed
            )

    def _attempt(
        self,
        gray: GrayImage,
        earlier: list[GrayImage],
        centre: tuple[int, int],
        read: Sequence[Polygon],
    ) -> list[Detection]:
        height, width = gray.shape
        side = min(ROI, height, width)
        if side < MIN_ROI:
            return []
        x0 = min(max(0, centre[0] - side // 2), width - side)
        y0 = min(max(0, centre[1] - side // 2), height - side)
        # A code already read in the region (a sticker beside the phone) is blanked out: read
        # again, it would pass for this attempt's success, so a spot that never reads anything
        # new would never wait, and it would end the attempt before the stacked frames.
        roi = hidden(gray[y0 : y0 + side, x0 : x0 + side], read, (x0, y0))
        found = self._deconvolved(roi, self.name, (x0, y0))
        if found:
            return found
        # Night noise the streak's undoing amplified beyond reading, or glare: the same region
        # over the last frames, averaged (a held phone shows the same code in each of them).
        regions = [
            hidden(f[y0 : y0 + side, x0 : x0 + side], read, (x0, y0))
            for f in earlier
            if f.shape == gray.shape
        ]
        average, count = stacked(roi, regions)
        if count < 2:
            return []
        name = f"{self.name}-stack"
        return (
            self._read(average, name, (x0, y0))
            or self._deconvolved(average, name, (x0, y0))
            or self._read(clahe(average), name, (x0, y0))
        )

    def _deconvolved(self, roi: GrayImage, name: str, at: tuple[int, int]) -> list[Detection]:
        """`roi` deconvolved with its estimated streak and its neighbours, decoded."""
        length, angle = motion_estimate(roi)
        for d_length, d_angle in NUDGES:
            kernel = motion_kernel(max(2.0, length + d_length), angle + d_angle)
            found = self._read(wiener(roi, kernel, NOISE_TO_SIGNAL), name, at)
            if found:
                return found
        return []

    def _read(self, region: GrayImage, name: str, at: tuple[int, int]) -> list[Detection]:
        """Decode `region` (at `at` in the frame) as it is, else enlarged 2x."""
        found = self._decoder.decode(region)
        if found:
            return [moved(d, name, 1.0, at) for d in found]
        found = self._decoder.decode(resize(region, 2.0))
        return [moved(d, name, 0.5, at) for d in found]


@dataclass(frozen=True, slots=True)
class _Failure:
    """Where (and on which frame, with which texture score) an attempt read nothing."""

    x: int
    y: int
    score: float | None  # None: the spot came from a candidate, not the texture map
    frame: int

    def near(self, other: _Failure) -> bool:
        return abs(self.x - other.x) < ROI // 2 and abs(self.y - other.y) < ROI // 2

    def same_view(self, other: _Failure) -> bool:
        if self.score is None or other.score is None:
            return False
        same_spot = abs(self.x - other.x) <= STEP and abs(self.y - other.y) <= STEP
        return same_spot and abs(self.score - other.score) <= SAME_VIEW * self.score


def hidden(region: GrayImage, read: Sequence[Polygon], at: tuple[int, int]) -> GrayImage:
    """A copy of `region` (at `at` in the frame) with the codes `read` (frame outlines) painted
    over with its mean level, their quiet zone included."""
    if not read:
        return np.ascontiguousarray(region)
    out = region.copy()
    h, w = out.shape
    level = int(out.mean())
    for polygon in read:
        x0, y0, x1, y1 = bounding_box(polygon)
        pad = max(x1 - x0, y1 - y0) // 8 + 2
        out[
            max(0, y0 - at[1] - pad) : max(0, min(h, y1 - at[1] + pad + 1)),
            max(0, x0 - at[0] - pad) : max(0, min(w, x1 - at[0] + pad + 1)),
        ] = level
    return out


def stacked(current: GrayImage, earlier: list[GrayImage]) -> tuple[GrayImage, int]:
    """`current` averaged with those of the `earlier` regions (same size) that show the same
    view, each shifted onto it; and how many frames went into it. Sensor noise averages out
    over n frames (its sigma by sqrt(n)); a held code's modules do not.

    The shift is where the region's middle best matches the other frame's (normalised cross-
    correlation of the images' detail at a module's scale, whole pixels, up to MAX_SHIFT each
    way: a hand's shake); a frame matching worse than MIN_MATCH shows something else (another
    code too, held where this one is) and is left out."""
    h, w = current.shape
    if min(h, w) < 4 * MAX_SHIFT:
        return current, 1
    # The middle half (where the code is) is matched, within MAX_SHIFT around its place.
    m = MAX_SHIFT
    top, left = h // 4, w // 4
    middle = _modules(current[top : h - top, left : w - left])
    total = current.astype(np.float32)
    count = 1
    for region in earlier:
        around = region[top - m : h - top + m, left - m : w - left + m]
        scores = cv2.matchTemplate(_modules(around), middle, cv2.TM_CCOEFF_NORMED)
        _, match, _, (u, v) = cv2.minMaxLoc(scores)
        if match < MIN_MATCH:
            continue
        shift = np.array([[1, 0, m - u], [0, 1, m - v]], np.float32)  # whole pixels: exact
        total += cv2.warpAffine(region, shift, (w, h), borderMode=cv2.BORDER_REPLICATE)
        count += 1
    average: GrayImage = np.clip(total / count + 0.5, 0, 255).astype(np.uint8)
    return average, count


def _modules(gray: GrayImage) -> FloatImage:
    """The detail at a code module's scale (a band: smoothed by 1.5 px, less the image smoothed
    by 4 px), where two codes differ; the phone, the hand and the light, which two phones held
    at the same pose share, are taken off."""
    image = gray.astype(np.float32)
    fine = cv2.GaussianBlur(image, (0, 0), 1.5)
    return np.asarray(fine - cv2.GaussianBlur(image, (0, 0), 4.0), np.float32)
