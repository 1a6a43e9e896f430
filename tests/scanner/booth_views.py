"""The simulator's booth as the change gate sees it (thumbnails of block means), and the same
booth with the sticker taken away, at night, behind a vehicle or a person, the camera turned,
blacked out; and a booth whose sticker is on a bare panel."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
from scanner_testkit import STICKER

from scanner.change_gate import Thumbnail, thumbnail
from scanner.detection import Polygon, as_gray
from sim.render import DEFAULT_SIZE, STICKER_AT, STICKER_PX, background

BLOCK_PX = 16
WIDTH, HEIGHT = DEFAULT_SIZE
_X, _Y = round(STICKER_AT[0] * WIDTH), round(STICKER_AT[1] * HEIGHT)
# The sticker's printed square, its quiet zone included (zxing-cpp's outline lies inside it).
STICKER_PLACE: Polygon = ((_X, _Y), (_X + STICKER_PX, _Y), (_X + STICKER_PX, _Y + STICKER_PX),
                          (_X, _Y + STICKER_PX))  # fmt: skip
Image = np.ndarray


def turned(image: Image, dx: int, dy: int) -> Image:
    """The camera turned: the view moved by (dx, dy), the edge it uncovers repeated."""
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(image, shift, size, borderMode=cv2.BORDER_REPLICATE)


def sticker_moved(frame: Image, dx: int, dy: int) -> Image:
    """A frame of the booth with its sticker moved by (dx, dy), the panel bare where it was."""
    bare = background(DEFAULT_SIZE, 0.0, None)
    side = STICKER_PX
    image = frame.copy()
    image[_Y : _Y + side, _X : _X + side] = bare[_Y : _Y + side, _X : _X + side]
    return sticker_of(frame, image, dx, dy)


def sticker_of(frame: Image, into: Image, dx: int = 0, dy: int = 0) -> Image:
    """`into` with the sticker of `frame` (a frame of the booth) put in, moved by (dx, dy)."""
    image = into.copy()
    x, y, side = _X + dx, _Y + dy, STICKER_PX
    image[y : y + side, x : x + side] = frame[_Y : _Y + side, _X : _X + side]
    return image


def behind_truck(image: Image, width: float = 0.6) -> Image:
    """A truck's plain side in front of the booth's left part, the sticker behind it."""
    covered = image.copy()
    covered[round(0.3 * image.shape[0]) :, : round(width * image.shape[1])] = (60, 70, 80)
    return covered


def person_before(image: Image, width: int = 200) -> Image:
    """A person (a plain shape `width` px wide) standing before the sticker, head above it: the
    rest of the view as it was."""
    covered = image.copy()
    middle = _X + STICKER_PX // 2
    covered[_Y - 100 :, max(0, middle - width // 2) : middle + width // 2] = (90, 80, 70)
    return covered


def bare_panel(image: Image) -> Image:
    """The booth with the panel around its sticker's place bare (plain gray, 80 px on every
    side), the sticker taken away."""
    bare = image.copy()
    bare[_Y - 80 : _Y + STICKER_PX + 80, : _X + STICKER_PX + 80] = (150, 150, 150)
    return bare


@cache
def views() -> dict[str, Thumbnail]:
    booth = background(DEFAULT_SIZE, 0.0, STICKER)
    images = {
        "home": booth,
        "taken away": background(DEFAULT_SIZE, 0.0, None),
        "night": background(DEFAULT_SIZE, 1.0, STICKER),
        "truck": behind_truck(booth),
        "truck edge to edge": behind_truck(booth, 1.0),
        "turned": turned(booth, -200, -150),
        "turned down": turned(booth, 0, 100),
        "blackout": np.full_like(booth, 3),
        "person": person_before(booth),
        "person narrow": person_before(booth, 100),
        "bare panel": sticker_of(booth, bare_panel(booth)),
        "bare panel, taken away": bare_panel(booth),
        "bare panel, person": person_before(sticker_of(booth, bare_panel(booth))),
    }
    return {name: thumbnail(as_gray(image), BLOCK_PX) for name, image in images.items()}
