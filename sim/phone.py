"""The phone a driver holds up, drawn face-on in its own pixel space ("sprite space").

The renderer warps a `PhoneSprite` into the road frame. Everything here is deterministic in its
arguments (no rng), so sprites can be cached per scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import zxingcpp

from lane.auth.tokens import qr_ec_level

# Screen layout, as fractions of the screen width: payment apps show the code at ~3/4 width,
# a little above the middle of a ~9:19.5 screen.
CODE_OF_SCREEN = 0.76
SCREEN_ASPECT = 2.05
CODE_CENTRE_Y = 0.47
BEZEL = 0.045
# The thumb can reach past the phone's right edge: keep that much room in the sprite.
THUMB_ROOM = 0.45

SKIN_BGR = (105, 140, 190)
BODY_BGR = (38, 36, 34)


class QrEncodeError(ValueError):
    """The text cannot be put in a QR code (too long for any version at its level)."""


@lru_cache(maxsize=256)
def qr_modules(text: str) -> np.ndarray:
    """QR matrix with its 4-module quiet zone: True where a module is dark. The level is the
    one a wallet app uses for the text: L for a compact token, M for everything else.

    Cached per text and returned read-only, so callers cannot corrupt the cache.
    """
    level = qr_ec_level(text)
    try:
        barcode = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level=level)
    except Exception as exc:  # zxing raises plain ValueError/RuntimeError variants
        raise QrEncodeError(f"cannot encode {len(text)} chars as a QR code: {exc}") from exc
    image = np.asarray(zxingcpp.write_barcode_to_image(barcode, scale=1))
    dark = image < 128
    dark.setflags(write=False)
    return dark


@dataclass(frozen=True)
class PhoneSprite:
    """A face-on phone: BGR image, alpha (phone body and thumb, 0..255), and where the code is.

    code_box is (x0, y0, x1, y1) of the code symbol with its quiet zone, in sprite pixels.
    """

    image: np.ndarray
    alpha: np.ndarray
    code_box: tuple[int, int, int, int]

    @property
    def code_centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.code_box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    @property
    def code_width(self) -> int:
        return self.code_box[2] - self.code_box[0]


def draw_phone(
    text: str,
    module_px: int,
    *,
    dark_mode: bool,
    glare: float,
    glare_at: tuple[float, float],
    occlusion: float,
    screen_gain: float,
    ambient: float,
) -> PhoneSprite:
    """Draw the phone with the code at `module_px` pixels per module.

    screen_gain dims the emissive screen (auto-brightness at night); ambient dims what is lit
    by daylight (body, thumb).
    """
    modules = qr_modules(text)
    code_w = modules.shape[1] * module_px
    screen_w = round(code_w / CODE_OF_SCREEN)
    screen_h = round(screen_w * SCREEN_ASPECT)
    bezel = max(2, round(screen_w * BEZEL))
    body_w, body_h = screen_w + 2 * bezel, screen_h + 2 * bezel
    room = round(body_w * THUMB_ROOM)
    h, w = body_h, body_w + room

    image = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    radius = round(body_w * 0.11)
    _rounded_rect(alpha, (0, 0, body_w, body_h), radius, 255)
    image[:] = _scaled(BODY_BGR, ambient)  # outside the alpha mask colour never shows

    sx, sy = bezel, bezel
    screen = _draw_screen(screen_w, screen_h, dark_mode)
    cx0 = (screen_w - code_w) // 2
    cy0 = round(screen_h * CODE_CENTRE_Y - code_w / 2)
    code = _code_image(modules, module_px, dark_mode)
    screen[cy0 : cy0 + code_w, cx0 : cx0 + code_w] = code
    if screen_gain < 1.0:
        screen = cv2.convertScaleAbs(screen, alpha=screen_gain)
    screen_mask = np.zeros((screen_h, screen_w), np.uint8)
    _rounded_rect(screen_mask, (0, 0, screen_w, screen_h), round(radius * 0.8), 255)
    view = image[sy : sy + screen_h, sx : sx + screen_w]
    cv2.copyTo(screen, screen_mask, view)

    code_box = (sx + cx0, sy + cy0, sx + cx0 + code_w, sy + cy0 + code_w)
    if glare > 0:
        _add_glare(image, (body_w, body_h), glare, glare_at)
    if occlusion > 0:
        quiet = 4 * module_px  # the thumb is aimed at the symbol, not its quiet zone
        x0, y0, x1, y1 = code_box
        symbol = (x0 + quiet, y0 + quiet, x1 - quiet, y1 - quiet)
        _draw_thumb(image, alpha, symbol, occlusion, ambient)
    image.setflags(write=False)
    alpha.setflags(write=False)
    return PhoneSprite(image=image, alpha=alpha, code_box=code_box)


def _scaled(bgr: tuple[int, int, int], gain: float) -> tuple[int, int, int]:
    b, g, r = (min(255, round(c * gain)) for c in bgr)
    return b, g, r


def _rounded_rect(mask: np.ndarray, box: tuple[int, int, int, int], r: int, value: int) -> None:
    x0, y0, x1, y1 = box
    x1, y1 = x1 - 1, y1 - 1
    cv2.rectangle(mask, (x0 + r, y0), (x1 - r, y1), value, -1)
    cv2.rectangle(mask, (x0, y0 + r), (x1, y1 - r), value, -1)
    for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        cv2.circle(mask, (cx, cy), r, value, -1, lineType=cv2.LINE_AA)


def _draw_screen(w: int, h: int, dark_mode: bool) -> np.ndarray:
    """A wallet app's payment page: header band, amount line, code area, text, button."""
    bg, ink, muted = (
        ((30, 30, 30), (225, 225, 225), (110, 110, 110))
        if dark_mode
        else (
            (246, 246, 246),
            (25, 25, 25),
            (160, 160, 160),
        )
    )
    screen = np.full((h, w, 3), bg, np.uint8)
    accent = (190, 120, 20) if not dark_mode else (120, 80, 20)
    cv2.rectangle(screen, (0, 0), (w, round(h * 0.11)), accent, -1)
    cv2.rectangle(
        screen,
        (round(w * 0.08), round(h * 0.04)),
        (round(w * 0.5), round(h * 0.07)),
        (240, 240, 240),
        -1,
    )
    cv2.rectangle(
        screen, (round(w * 0.2), round(h * 0.16)), (round(w * 0.8), round(h * 0.19)), ink, -1
    )
    for i, frac in enumerate((0.55, 0.4)):
        y = round(h * (0.80 + 0.04 * i))
        cv2.rectangle(
            screen,
            (round(w * (0.5 - frac / 2)), y),
            (round(w * (0.5 + frac / 2)), y + max(1, round(h * 0.015))),
            muted,
            -1,
        )
    cv2.rectangle(
        screen, (round(w * 0.1), round(h * 0.9)), (round(w * 0.9), round(h * 0.96)), accent, -1
    )
    return screen


def _code_image(modules: np.ndarray, module_px: int, dark_mode: bool) -> np.ndarray:
    # Dark mode apps invert the code (light modules on a dark ground), quiet zone included.
    dark_v, light_v = (232, 30) if dark_mode else (22, 250)
    grey = np.where(modules, dark_v, light_v).astype(np.uint8)
    big = cv2.resize(grey, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def _add_glare(
    image: np.ndarray,
    body: tuple[int, int],
    strength: float,
    at: tuple[float, float],
) -> None:
    """A reflection on the glass: an additive, tilted Gaussian ellipse. Strength 1 saturates
    its centre, washing the modules out completely there."""
    bw, bh = body
    # Computed at quarter resolution and upscaled: the highlight is smooth.
    q = 4
    ys, xs = np.mgrid[0:bh:q, 0:bw:q].astype(np.float32)
    cx, cy = at[0] * bw, at[1] * bh
    ax, ay = 0.40 * bw, 0.16 * bw
    t = math.radians(-30.0)
    dx, dy = xs - cx, ys - cy
    u = (dx * math.cos(t) - dy * math.sin(t)) / ax
    v = (dx * math.sin(t) + dy * math.cos(t)) / ay
    light = (strength * 265.0) * np.exp(-(u * u + v * v))
    light = cv2.resize(light, (bw, bh), interpolation=cv2.INTER_LINEAR)
    light_u8 = np.clip(light + 0.5, 0, 255).astype(np.uint8)
    body_view = image[:bh, :bw]
    cv2.add(body_view, cv2.merge([light_u8, light_u8, light_u8]), dst=body_view)


def _draw_thumb(
    image: np.ndarray,
    alpha: np.ndarray,
    symbol: tuple[int, int, int, int],
    occlusion: float,
    ambient: float,
) -> None:
    """A thumb reaching up-left over the symbol's bottom-right corner, covering `occlusion` of
    the symbol's area (solved by bisection on how far the tip reaches in)."""
    x0, y0, x1, y1 = symbol
    side = x1 - x0
    axes = (round(side * 0.75), round(side * 0.27))  # ~2 cm wide on a ~4 cm code
    direction = np.array([1.0, 1.0]) / math.sqrt(2.0)  # from the tip towards the palm
    corner = np.array([float(x1), float(y1)])

    def ellipse_at(depth: float) -> tuple[tuple[int, int], tuple[int, int], float]:
        tip = corner - direction * depth * side
        centre = tip + direction * axes[0]
        return (round(centre[0]), round(centre[1])), axes, 45.0

    def coverage(depth: float) -> float:
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        c, a, ang = ellipse_at(depth)
        cv2.ellipse(mask, (c[0] - x0, c[1] - y0), a, ang, 0, 360, 1, -1)
        return float(mask.mean())

    lo, hi = 0.0, 1.4
    for _ in range(18):
        mid = (lo + hi) / 2
        if coverage(mid) < occlusion:
            lo = mid
        else:
            hi = mid
    centre, ax, ang = ellipse_at(hi)
    cv2.ellipse(alpha, centre, ax, ang, 0, 360, 255, -1, lineType=cv2.LINE_AA)
    cv2.ellipse(image, centre, ax, ang, 0, 360, _scaled(SKIN_BGR, ambient), -1, cv2.LINE_AA)
    # A lighter ridge and the nail near the tip, so it reads as a thumb and not a blot.
    inner = (round(ax[0] * 0.8), round(ax[1] * 0.55))
    cv2.ellipse(
        image, centre, inner, ang, 0, 360, _scaled((125, 160, 210), ambient), -1, cv2.LINE_AA
    )
    tip = np.array(centre, float) - direction * ax[0] * 0.72
    cv2.ellipse(
        image,
        (round(tip[0]), round(tip[1])),
        (round(ax[1] * 0.55), round(ax[1] * 0.42)),
        ang,
        0,
        360,
        _scaled((170, 190, 225), ambient),
        -1,
        cv2.LINE_AA,
    )
