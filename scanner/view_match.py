"""Is the camera still looking at the view in which it learned its stickers? Pure: two of the
change gate's thumbnails (block means) compared, the stickers' own blocks left out.

The block means' detail (each less its neighbourhood's mean) is compared, not the levels: dusk
scales the detail and keeps its pattern, while a camera turned elsewhere moves the pattern
away, and a vehicle in front covers part of it. On the simulator's booth (docs/scanner.md,
"Forgetting a sticker"): the same view 0.99-1.0 by day, 0.96 and more at night; the sticker
taken away 0.996 (its blocks left out); a vehicle covering 30-100% of the width 0.84-0.53, a
phone in the window 0.62-0.65; the camera turned by 100-150 px up or down -0.2-0.0. A turn
along the simulator's long horizontal lines only (60-200 px sideways) keeps 0.6-0.64: taken
for something in front, it pauses the forgetting instead of driving it. Something before the
sticker alone (a person) leaves the view the same (0.91-0.98): a code's own surroundings tell
(`clear_before`).
"""

from __future__ import annotations

import enum

import cv2
import numpy as np
import numpy.typing as npt

from scanner.detection import Polygon

Thumbnail = npt.NDArray[np.uint8]

SAME_VIEW = 0.9  # correlation of the detail at and above which it is the same view
OTHER_VIEW = 0.3  # below which the camera looks at another view (turned, or wholly covered)
# A view whose detail is this small a part of the home's is no evidence either way: a
# blackout, a covered lens, glare washing everything out.
FLAT = 0.25
DETAIL_SIGMA = 2.0  # blocks: the neighbourhood a block's detail is measured against
# Blocks around a code (beyond its own and the one left out) that show whether something stands
# before it: a person or a cone hiding the sticker covers them too, while a sticker taken away
# leaves them as they were. On the simulator's booth a plain shape standing before the sticker
# (60-300 px wide; the whole view still the same by `view_of`) leaves their block means
# correlated 0.74 down to 0.0 with the home's, the sticker taken away 1.0, the night 0.997 but
# with a fifth of the day's spread (`FLAT`: no evidence against a day's home).
AROUND = 2
# Gray levels of spread under which a code's surroundings are plain (a bare panel): compared by
# their level, within the change gate's threshold (block means of one view differ by 3 at most).
PLAIN = 4.0
PLAIN_LEVEL = 12.0


class View(enum.Enum):
    SAME = "same"  # the home view, nothing in front of it
    OTHER = "other"  # another view: the camera turned, or the home covered from edge to edge
    PART = "part"  # partly the home view (a vehicle, a person in front), or no evidence


def view_of(home: Thumbnail, thumb: Thumbnail, places: tuple[Polygon, ...], block_px: int) -> View:
    """How `thumb` compares with `home`, the blocks under `places` (the stickers, which may be
    gone) and one block around them left out."""
    if home.shape != thumb.shape:
        return View.OTHER  # another frame size: another camera, or the same one set up anew
    keep = np.ones(home.shape, bool)
    for place in places:
        keep[around(place, block_px, 1)] = False
    a, b = detail(home)[keep], detail(thumb)[keep]
    a, b = a - a.mean(), b - b.mean()
    norm_a, norm_b = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if norm_a == 0.0 or norm_b < FLAT * norm_a:
        return View.PART
    score = float((a * b).sum()) / (norm_a * norm_b)
    if score >= SAME_VIEW:
        return View.SAME
    return View.OTHER if score < OTHER_VIEW else View.PART


def detail(thumb: Thumbnail) -> npt.NDArray[np.float32]:
    t = thumb.astype(np.float32)
    smooth: npt.NDArray[np.float32] = cv2.GaussianBlur(t, (0, 0), DETAIL_SIGMA)  # type: ignore[assignment]
    return t - smooth


def clear_before(home: Thumbnail, thumb: Thumbnail, place: Polygon, block_px: int) -> bool:
    """Do the AROUND blocks around the code at `place` show in `thumb` (the same view as `home`)
    what they showed in `home`: their pattern (the light may scale it), or, plain there, their
    level? Then nothing stands before the code: not read, it has gone. A shape before it that
    leaves the rest of the view as it was (a person, a cone) changes them: no evidence."""
    ring = np.zeros(home.shape, bool)
    ring[around(place, block_px, 1 + AROUND)] = True
    ring[around(place, block_px, 1)] = False
    if not ring.any():
        return True  # the code fills the view: the whole view's verdict stands
    a, b = home[ring].astype(np.float64), thumb[ring].astype(np.float64)
    spread_a, spread_b = float(a.std()), float(b.std())
    if spread_a < PLAIN:
        return spread_b < PLAIN and abs(float(a.mean()) - float(b.mean())) <= PLAIN_LEVEL
    if spread_b < FLAT * spread_a:
        return False
    score = float(((a - a.mean()) * (b - b.mean())).mean()) / (spread_a * spread_b)
    return score >= SAME_VIEW


def around(place: Polygon, block_px: int, margin: int) -> tuple[slice, slice]:
    """The blocks under `place` and `margin` more on each side (rows, columns)."""
    xs = [x // block_px for x, _ in place]
    ys = [y // block_px for _, y in place]
    return (
        slice(max(0, min(ys) - margin), max(0, max(ys) + 1 + margin)),
        slice(max(0, min(xs) - margin), max(0, max(xs) + 1 + margin)),
    )
