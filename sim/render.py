"""Render lane-camera frames: a static road/vehicle background, the phone warped into the cab
window, sensor noise.

Cost model: everything that depends only on the frame size or the scene is computed once and
cached (background per light level, noise fields, the warped and blurred phone per scene);
a frame is then one copy of the background, a masked copy of the opaque phone, an alpha blend
of its soft rim only, and two saturating adds of noise: about a millisecond at 1280x720.
Randomness per frame (hand shake, noise offset) comes from the injected generator only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from scanner.deblur import motion_kernel
from sim.phone import draw_phone, qr_modules
from sim.scene import CODE_PX_AT_1M, REFERENCE_WIDTH, Rng, Scene, as_generator

Size = tuple[int, int]  # (width, height)
DEFAULT_SIZE: Size = (1280, 720)

# The cab's side window, where a phone can appear, as fractions of the frame.
WINDOW = (0.22, 0.10, 0.80, 0.64)
SHAKE_PX = 3  # hand shake, per frame, each axis
NOISE_PAD = 16  # noise fields are larger than the frame; a random crop varies per frame
NOISE_LEVELS = (2, 4, 6, 8, 10, 12)
CODE_MARGIN_PX = 8
CODE_PHYSICAL_M = 0.04  # a phone's code is ~4 cm across
# A QR sticker in view (`Scene.sticker`): its side (quiet zone included) at 1280 px wide, and
# its top-left corner as fractions of the frame: the body panel below the wheel arch.
STICKER_PX = 116
STICKER_AT = (0.015, 0.695)
OPAQUE, TRANSPARENT = 254.5 / 255, 0.5 / 255  # coverage that rounds to all or nothing


def render_frame(scene: Scene, rng: Rng, size: Size = DEFAULT_SIZE) -> np.ndarray:
    """One BGR uint8 frame (height, width, 3) of the lane camera looking at `scene`.

    Draws exactly four integers from `rng` per frame, whatever the scene, so a seeded
    generator reproduces a sequence of frames byte for byte. The returned array is the
    caller's to keep.
    """
    g = as_generator(rng)
    r = g.integers(0, 1 << 16, 4)
    dx = int(r[0]) % (2 * SHAKE_PX + 1) - SHAKE_PX
    dy = int(r[1]) % (2 * SHAKE_PX + 1) - SHAKE_PX
    ox, oy = int(r[2]) % (NOISE_PAD + 1), int(r[3]) % (NOISE_PAD + 1)
    w, h = size
    if scene.blackout:
        return _add_noise(np.full((h, w, 3), 3, np.uint8), 2, ox, oy, in_place=True)
    level = _light_level(scene.low_light)
    view = background(size, level, scene.sticker)
    if scene.code_text is None:
        # The empty view, most frames: the noise is added into a new frame, no copy first.
        return _add_noise(view, _noise_sigma(level), ox, oy, in_place=False)
    frame = view.copy()
    _composite(frame, phone_patch(scene, size), dx, dy)
    return _add_noise(frame, _noise_sigma(level), ox, oy, in_place=True)


def code_corners(scene: Scene, size: Size = DEFAULT_SIZE) -> np.ndarray:
    """Frame coordinates (4x2, clockwise from top-left) of the code, quiet zone included,
    before the per-frame hand shake."""
    return phone_patch(scene, size).code_quad.copy()


@dataclass(frozen=True)
class PhonePatch:
    """The warped, blurred phone ready to composite at frame offset (x, y).

    Most of a phone is opaque and is copied through `opaque`; only its soft rim (anti-aliased
    and motion-blurred edges, a few thousand pixels) is alpha-blended, from the edge_* arrays.
    """

    x: int
    y: int
    image: np.ndarray  # uint8 BGR
    opaque: np.ndarray  # uint8 mask: pixels the phone covers completely
    edge_rows: np.ndarray  # int32 patch coordinates of partially covered pixels
    edge_cols: np.ndarray
    edge_colour: np.ndarray  # float32 Nx3, colour premultiplied by coverage
    edge_keep: np.ndarray  # float32 Nx1, 1 - coverage: how much background shows through
    code_quad: np.ndarray  # float32 4x2, frame coordinates

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.opaque.shape
        return h, w


@lru_cache(maxsize=16)
def phone_patch(scene: Scene, size: Size) -> PhonePatch:
    if scene.code_text is None:
        raise ValueError("scene shows no code")
    w, h = size
    code_px = scene.code_px(w)
    n = qr_modules(scene.code_text).shape[1]
    # Draw at >= the target resolution so the warp only ever shrinks (no blocky upscaling).
    module_px = max(2, math.ceil(code_px / n))
    sprite = draw_phone(
        scene.code_text,
        module_px,
        dark_mode=scene.dark_mode,
        glare=scene.glare,
        glare_at=scene.glare_at,
        occlusion=scene.occlusion,
        screen_gain=1.0 - 0.45 * scene.low_light,
        ambient=1.0 - 0.8 * scene.low_light,
    )
    sh, sw = sprite.alpha.shape
    k = code_px / sprite.code_width
    focal = CODE_PX_AT_1M * w / REFERENCE_WIDTH / CODE_PHYSICAL_M
    rot = _rotation(scene.roll_deg, scene.angle_deg, scene.pitch_deg)
    ccx, ccy = sprite.code_centre

    def project(pts: np.ndarray) -> np.ndarray:
        obj = np.zeros((len(pts), 3))
        obj[:, 0] = (pts[:, 0] - ccx) * k
        obj[:, 1] = (pts[:, 1] - ccy) * k
        cam = obj @ rot.T
        depth = focal + cam[:, 2]
        return np.stack([focal * cam[:, 0] / depth, focal * cam[:, 1] / depth], axis=1)

    x0, y0, x1, y1 = sprite.code_box
    code = project(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float))
    body = project(np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], float))
    centre = _place(code, scene.position, size)
    code += centre
    body += centre

    # Patch = the phone's bounding box plus room for the blur, clipped to the frame plus the
    # shake margin (what falls outside can never be seen).
    pad = math.ceil(scene.blur_px) + 4
    bx0 = max(-SHAKE_PX, math.floor(body[:, 0].min()) - pad)
    by0 = max(-SHAKE_PX, math.floor(body[:, 1].min()) - pad)
    bx1 = min(w + SHAKE_PX, math.ceil(body[:, 0].max()) + pad)
    by1 = min(h + SHAKE_PX, math.ceil(body[:, 1].max()) + pad)
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], np.float32)
    dst = (body - [bx0, by0]).astype(np.float32)
    hom = cv2.getPerspectiveTransform(src, dst)
    out = (bx1 - bx0, by1 - by0)
    premul = cv2.multiply(sprite.image, cv2.merge([sprite.alpha] * 3), scale=1.0 / 255)
    colour = cv2.warpPerspective(premul, hom, out, flags=cv2.INTER_LINEAR).astype(np.float32)
    cover = cv2.warpPerspective(sprite.alpha, hom, out, flags=cv2.INTER_LINEAR)
    cover_f = cover.astype(np.float32) / 255.0

    colour, cover_f = _blur(colour, cover_f, scene)
    image = colour / np.maximum(cover_f, 1e-3)[..., None]
    image_u8 = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    opaque = (cover_f >= OPAQUE).astype(np.uint8)
    found = np.nonzero((cover_f > TRANSPARENT) & (cover_f < OPAQUE))
    rows, cols = found[0].astype(np.int32), found[1].astype(np.int32)
    edge_colour = colour[rows, cols]
    edge_keep = (1.0 - cover_f[rows, cols])[:, None]
    quad = code.astype(np.float32)
    for arr in (image_u8, opaque, rows, cols, edge_colour, edge_keep, quad):
        arr.setflags(write=False)
    return PhonePatch(bx0, by0, image_u8, opaque, rows, cols, edge_colour, edge_keep, quad)


def _rotation(roll: float, yaw: float, pitch: float) -> np.ndarray:
    r, y, p = (math.radians(a) for a in (roll, yaw, pitch))
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rot: np.ndarray = rz @ ry @ rx
    return rot


def _place(code: np.ndarray, position: tuple[float, float], size: Size) -> np.ndarray:
    """Where the code centre goes: its spot in the window, shifted so the whole code (and the
    shake) stays in the frame."""
    w, h = size
    wx0, wy0, wx1, wy1 = WINDOW
    cx = (wx0 + (wx1 - wx0) * position[0]) * w
    cy = (wy0 + (wy1 - wy0) * position[1]) * h
    m = CODE_MARGIN_PX + SHAKE_PX
    lo_x, hi_x = m - code[:, 0].min(), w - m - code[:, 0].max()
    lo_y, hi_y = m - code[:, 1].min(), h - m - code[:, 1].max()
    cx = min(max(cx, lo_x), hi_x) if lo_x <= hi_x else w / 2
    cy = min(max(cy, lo_y), hi_y) if lo_y <= hi_y else h / 2
    return np.array([cx, cy])


def _blur(colour: np.ndarray, cover: np.ndarray, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Lens softness always; a motion streak when the scene moves. Applied to premultiplied
    colour and coverage alike, so the phone's edges smear into the background as they should."""
    colour = cv2.GaussianBlur(colour, (0, 0), 0.6)
    cover = cv2.GaussianBlur(cover, (0, 0), 0.6)
    if scene.blur_px >= 1.0:
        kernel = motion_kernel(scene.blur_px, scene.blur_dir_deg)
        colour = cv2.filter2D(colour, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        cover = cv2.filter2D(cover, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return colour, cover


def _composite(frame: np.ndarray, patch: PhonePatch, dx: int, dy: int) -> None:
    h, w = frame.shape[:2]
    ph, pw = patch.shape
    x0, y0 = patch.x + dx, patch.y + dy
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(w, x0 + pw), min(h, y0 + ph)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sx, sy = fx0 - x0, fy0 - y0
    ex, ey = sx + (fx1 - fx0), sy + (fy1 - fy0)
    roi = frame[fy0:fy1, fx0:fx1]
    cv2.copyTo(patch.image[sy:ey, sx:ex], patch.opaque[sy:ey, sx:ex], roi)
    rows, cols = patch.edge_rows, patch.edge_cols
    colour, keep = patch.edge_colour, patch.edge_keep
    if (sx, sy, ex, ey) != (0, 0, pw, ph):  # clipped by the frame border
        inside = (rows >= sy) & (rows < ey) & (cols >= sx) & (cols < ex)
        rows, cols, colour, keep = rows[inside], cols[inside], colour[inside], keep[inside]
    r, c = rows - sy, cols - sx
    under = roi[r, c].astype(np.float32)
    roi[r, c] = (colour + under * keep + 0.5).astype(np.uint8)


def _light_level(low_light: float) -> float:
    return round(low_light * 20) / 20  # backgrounds are cached per 0.05 step


def _noise_sigma(level: float) -> int:
    # Night means high sensor gain: more noise.
    want = 1.5 + 10.0 * level
    return min(NOISE_LEVELS, key=lambda s: abs(s - want))


def _add_noise(image: np.ndarray, sigma: int, ox: int, oy: int, *, in_place: bool) -> np.ndarray:
    """`image` with sensor noise: written over it, or into a new frame (`image` is kept)."""
    plus, minus = _noise_fields((image.shape[1], image.shape[0]), sigma)
    h, w = image.shape[:2]
    frame: np.ndarray = cv2.add(
        image, plus[oy : oy + h, ox : ox + w], dst=image if in_place else None
    )
    cv2.subtract(frame, minus[oy : oy + h, ox : ox + w], dst=frame)
    return frame


@lru_cache(maxsize=8)
def _noise_fields(size: Size, sigma: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian sensor noise split into its positive and negative parts (saturating uint8 adds
    are much cheaper than signed arithmetic on the whole frame). Fixed seed: static data."""
    w, h = size
    g = np.random.default_rng(7919 + sigma)
    noise = g.normal(0.0, sigma, (h + NOISE_PAD, w + NOISE_PAD, 3)).astype(np.float32)
    plus = np.clip(noise, 0, 255).astype(np.uint8)
    minus = np.clip(-noise, 0, 255).astype(np.uint8)
    plus.setflags(write=False)
    minus.setflags(write=False)
    return plus, minus


@lru_cache(maxsize=8)
def background(size: Size, light_level: float = 0.0, sticker: str | None = None) -> np.ndarray:
    """The static view for a light level (and a QR sticker in view): daylight drawn once,
    darkened through a LUT.

    Night keeps a floor (lane lighting), so a dark frame still differs from a blackout.
    """
    base = _daylight_background(size) if sticker is None else _with_sticker(size, sticker)
    if light_level <= 0:
        return base
    v = np.arange(256, dtype=np.float64) / 255.0
    lut = 255.0 * v ** (1.0 + 0.8 * light_level) * (1.0 - 0.6 * light_level) + 8.0 * light_level
    dark = cv2.LUT(base, np.clip(lut, 0, 255).astype(np.uint8))
    dark.setflags(write=False)
    return dark


@lru_cache(maxsize=2)
def _with_sticker(size: Size, text: str) -> np.ndarray:
    """The daylight view with a printed QR sticker on the body panel left of the cab window
    (outside it: the phone is never held over it), softened as the lens softens the phone."""
    w, h = size
    side = round(STICKER_PX * w / REFERENCE_WIDTH)
    modules = qr_modules(text)
    module_px = max(2, math.ceil(side / modules.shape[0]))
    printed = np.where(np.kron(modules, np.ones((module_px, module_px), bool)), 30, 235)
    code = cv2.resize(printed.astype(np.uint8), (side, side), interpolation=cv2.INTER_AREA)
    code = cv2.GaussianBlur(code, (0, 0), 0.6)
    img = _daylight_background(size).copy()
    x, y = round(STICKER_AT[0] * w), round(STICKER_AT[1] * h)
    img[y : y + side, x : x + side] = code[:, :, None]
    img.setflags(write=False)
    return img


@lru_cache(maxsize=2)
def _daylight_background(size: Size) -> np.ndarray:
    """A lane camera's view of a car's driver side: canopy, body panel, the cab window with a
    dim interior and the driver's silhouette, asphalt with a lane marking."""
    w, h = size
    g = np.random.default_rng(20240601)

    def pt(x: float, y: float) -> tuple[int, int]:
        return round(x * w), round(y * h)

    img = np.zeros((h, w, 3), np.uint8)
    # Canopy over the lane, lit from above.
    rows = np.linspace(185, 150, h, dtype=np.float32)
    img[:] = np.stack([rows, rows * 0.97, rows * 0.92], axis=1)[:, None, :].astype(np.uint8)
    # Asphalt: grain plus a few darker patches, blurred a little.
    road_top = round(0.86 * h)
    grain = g.normal(78, 14, (h - road_top, w)).astype(np.float32)
    patches = cv2.GaussianBlur(g.normal(0, 25, (h - road_top, w)).astype(np.float32), (0, 0), 9)
    road = np.clip(cv2.GaussianBlur(grain, (0, 0), 0.8) + patches, 0, 255).astype(np.uint8)
    img[road_top:] = cv2.merge([road, road, road])
    for i in range(0, 10, 2):  # dashed lane line along the bottom
        cv2.rectangle(img, pt(0.1 * i, 0.95), pt(0.1 * i + 0.12, 0.975), (205, 220, 225), -1)
    # Vehicle body panel with a vertical shading gradient.
    body = np.array([pt(0.0, 0.05), pt(1.0, 0.05), pt(1.0, 0.87), pt(0.0, 0.87)], np.int32)
    cv2.fillPoly(img, [body], (128, 112, 92))
    shade = np.linspace(1.15, 0.7, round(0.82 * h), dtype=np.float32)[:, None, None]
    y0 = round(0.05 * h)
    panel = img[y0 : y0 + len(shade)].astype(np.float32) * shade
    img[y0 : y0 + len(shade)] = np.clip(panel, 0, 255).astype(np.uint8)
    cv2.line(img, pt(0.0, 0.70), pt(1.0, 0.70), (70, 62, 52), 2, cv2.LINE_AA)
    cv2.line(img, pt(0.90, 0.05), pt(0.90, 0.87), (60, 54, 46), 3, cv2.LINE_AA)
    cv2.rectangle(img, pt(0.70, 0.74), pt(0.78, 0.765), (90, 84, 76), -1)
    cv2.ellipse(
        img,
        pt(0.08, 0.60),
        (round(0.07 * w), round(0.07 * h)),
        0,
        0,
        360,
        (40, 38, 36),
        -1,
        cv2.LINE_AA,
    )
    # The window: seal, dim interior, headrest and driver, a faint reflection on the glass.
    win = np.array([pt(0.24, 0.08), pt(0.86, 0.08), pt(0.86, 0.66), pt(0.16, 0.66)], np.int32)
    cv2.fillPoly(img, [win], (22, 22, 24), cv2.LINE_AA)
    inner = np.array(
        [pt(0.245, 0.095), pt(0.85, 0.095), pt(0.85, 0.645), pt(0.175, 0.645)], np.int32
    )
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [inner], 255)
    cabin = np.linspace(58, 34, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
    cabin += g.normal(0, 3, (h, w)).astype(np.float32)
    cabin_u8 = np.clip(cabin, 0, 255).astype(np.uint8)
    np.copyto(img, cv2.merge([cabin_u8, cabin_u8, cabin_u8]), where=mask[..., None] > 0)
    cv2.ellipse(
        img,
        pt(0.70, 0.30),
        (round(0.05 * w), round(0.12 * h)),
        0,
        0,
        360,
        (30, 30, 32),
        -1,
        cv2.LINE_AA,
    )
    cv2.ellipse(
        img,
        pt(0.70, 0.62),
        (round(0.14 * w), round(0.20 * h)),
        0,
        180,
        360,
        (26, 27, 30),
        -1,
        cv2.LINE_AA,
    )
    glass = np.zeros((h, w), np.float32)
    cv2.line(glass, pt(0.30, 0.645), pt(0.55, 0.095), 14.0, round(0.05 * w), cv2.LINE_AA)
    shine = cv2.GaussianBlur(glass, (0, 0), 0.02 * w) * (mask > 0)
    final: np.ndarray = np.clip(img.astype(np.float32) + shine[..., None], 0, 255).astype(np.uint8)
    final.setflags(write=False)
    return final
