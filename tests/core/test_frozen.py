"""A frozen picture is judged by the vehicles the camera must see (lane.core.frozen): the same
picture of an idle lane is no fault (a long group of pictures with strong noise reduction on a
static night scene gives just that); the same picture across a vehicle's arrival, or for
`after_s` while it is there, is. Frames are looked at once a second; times are parameters."""

from __future__ import annotations

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from lane.core.frozen import ARRIVAL_CHANGE_S, frozen_picture

AFTER_S = 12.0
SAME = "camera frozen: the same picture for over 12 s"
PRESENT = f"{SAME} with a vehicle at the pay point"
ARRIVAL = "camera frozen: the picture did not change as a vehicle arrived (3 s)"


@pytest.mark.parametrize(
    ("changed_at", "looked_at", "arrived_at", "loop", "said"),
    [
        (None, None, 100.0, True, None),  # nothing looked at yet: no frame is the stall's
        (0.0, 3600.0, None, True, None),  # an idle lane's picture, the same for an hour
        # A vehicle arrives and the picture stays what it was before it.
        (50.0, 102.9, 100.0, True, None),  # its first seconds: it may not be in view yet
        (50.0, 103.0, 100.0, True, ARRIVAL),
        (99.9, 110.0, 100.0, True, ARRIVAL),  # a change just before it is not one across it
        (50.0, 103.0, None, True, None),  # ... gone again: nobody must be seen any more
        # The picture changed as it arrived, then stood still while it is there.
        (100.0, 111.9, 100.0, True, None),
        (100.0, 112.0, 100.0, True, PRESENT),
        (105.0, 116.9, 100.0, True, None),  # changed later: counted from that change
        (105.0, 117.0, 100.0, True, PRESENT),
        # A lane with no entry loop (a metro gate): never told when a change is due.
        (0.0, 11.9, None, False, None),
        (0.0, 12.0, None, False, SAME),
        (0.0, 12.0, 11.0, False, SAME),
    ],
)
def test_a_picture_is_frozen_by_the_vehicles_it_must_show(
    changed_at: float | None,
    looked_at: float | None,
    arrived_at: float | None,
    loop: bool,
    said: str | None,
) -> None:
    assert frozen_picture(changed_at, looked_at, arrived_at, AFTER_S, loop=loop) == said


def test_a_short_threshold_bounds_the_wait_after_an_arrival() -> None:
    text = "camera frozen: the picture did not change as a vehicle arrived (2 s)"
    assert frozen_picture(0.0, 11.9, 10.0, 2.0) is None
    assert frozen_picture(0.0, 12.0, 10.0, 2.0) == text


STEP = st.tuples(
    st.floats(0.05, 1.5),  # time to the next look
    st.booleans(),  # whether that look saw a change
    st.sampled_from(["stay", "stay", "stay", "arrive", "leave"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=80), st.sampled_from([3.0, 12.0]))
def test_only_a_vehicle_makes_an_unchanged_picture_frozen(
    steps: list[tuple[float, bool, str]], after_s: float
) -> None:
    """Looks one after another, vehicles coming and going: never frozen while nobody is
    there; with a vehicle there, frozen exactly when no look since its arrival saw a change
    for the wait an arrival is given, or none for `after_s`; and a camera whose every look
    sees a change is never frozen."""
    now, changed_at, arrived_at = 0.0, 0.0, None
    looks: list[tuple[float, bool]] = [(0.0, True)]
    always_changes = True
    for dt, changed, move in steps:
        now += dt
        looks.append((now, changed))
        always_changes &= changed
        if changed:
            changed_at = now
        if move == "arrive" and arrived_at is None:
            arrived_at = now - dt / 2  # between two looks
        elif move == "leave":
            arrived_at = None
        said = frozen_picture(changed_at, now, arrived_at, after_s)
        note(f"{now:.2f} changed={changed} arrived={arrived_at} said={said}")
        if arrived_at is None:
            assert said is None
            continue
        seen_since = [t for t, c in looks if c and t >= arrived_at]
        if not seen_since:
            assert (said is not None) == (now - arrived_at >= min(ARRIVAL_CHANGE_S, after_s))
        else:
            assert (said is not None) == (now - max(seen_since) >= after_s)
        if always_changes:
            assert said is None


def test_a_frozen_picture_stands_until_the_picture_changes_whoever_comes_or_goes() -> None:
    """The vehicle that found it leaving removes no cause: a lane reopened under a camera
    still frozen would invite the next driver to show a code nobody reads."""
    found = frozen_picture(50.0, 103.0, 100.0, AFTER_S)
    assert found == ARRIVAL
    told = (50.0, found)
    assert frozen_picture(50.0, 104.0, None, AFTER_S, told=told) == ARRIVAL  # it backed away
    assert frozen_picture(50.0, 900.0, None, AFTER_S, told=told) == ARRIVAL  # idle, still frozen
    assert frozen_picture(50.0, 901.0, 900.5, AFTER_S, told=told) == ARRIVAL  # the next one
    # A picture that differs: the cause is gone, whoever is there.
    assert frozen_picture(901.5, 902.0, 900.5, AFTER_S, told=told) is None
    assert frozen_picture(901.5, 902.0, None, AFTER_S, told=told) is None
    # Found with a vehicle there, it stands after it leaves too, until a change.
    present = (100.0, PRESENT)
    assert frozen_picture(100.0, 130.0, None, AFTER_S, told=present) == PRESENT
    assert frozen_picture(131.0, 131.0, None, AFTER_S, told=present) is None
