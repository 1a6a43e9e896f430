"""Is the camera still looking at its stickers' home view? `view_match.view_of` on the
simulator's booth: the same view by day and night, the sticker taken away; part of it behind a
vehicle; another view once the camera turned."""

from __future__ import annotations

import pytest
from booth_views import BLOCK_PX, STICKER_PLACE, views

from scanner.view_match import View, clear_before, view_of


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("home", View.SAME),
        ("night", View.SAME),  # the light scales the detail, not its pattern
        ("taken away", View.SAME),  # the sticker's own blocks are left out
        ("truck", View.PART),
        ("truck edge to edge", View.PART),  # the canopy above it still in view
        ("turned", View.OTHER),
        ("turned down", View.OTHER),
        ("blackout", View.PART),  # no evidence either way
        ("person", View.SAME),  # the rest of the view as it was: `clear_before` tells
    ],
)
def test_views_of_the_booth(name: str, expected: View) -> None:
    assert view_of(views()["home"], views()[name], (STICKER_PLACE,), BLOCK_PX) is expected


def test_another_frame_size_is_another_view() -> None:
    home = views()["home"]
    assert view_of(home, home[:-1], (STICKER_PLACE,), BLOCK_PX) is View.OTHER


@pytest.mark.parametrize(
    ("home", "name", "clear"),
    [
        ("home", "home", True),
        ("home", "taken away", True),  # its surroundings as they were
        ("home", "person", False),  # a person before it: no evidence that it went
        ("home", "person narrow", False),
        ("home", "night", False),  # too dark to tell against a day's home: no evidence
        ("bare panel", "bare panel, taken away", True),  # plain: compared by level
        ("bare panel", "bare panel, person", False),
    ],
)
def test_what_stands_before_the_sticker(home: str, name: str, clear: bool) -> None:
    assert clear_before(views()[home], views()[name], STICKER_PLACE, BLOCK_PX) is clear
