"""The change gate's pure decisions: table tests and properties (liveness: a decode at least
every `every_frames` frames and every `every_s` seconds; no change ever let pass)."""

from __future__ import annotations

import numpy as np
import pytest
from booth_views import BLOCK_PX, STICKER_PLACE, views
from hypothesis import given
from hypothesis import strategies as st
from scanner_testkit import STICKER

from scanner.change_gate import (
    CLUTTERED_AFTER,
    FORGET_AFTER_S,
    GAP_S,
    KNOWN_AFTER_S,
    KNOWN_MAX,
    MOVED_AFTER_S,
    STEADY_AFTER,
    STEADY_PX,
    GateSettings,
    GateState,
    Sighting,
    Thumbnail,
    Verdict,
    changed,
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
from sim.render import SHAKE_PX

SETTINGS = GateSettings(threshold=12.0, every_frames=5, every_s=1.0)
EMPTY = np.full((4, 6), 100, np.uint8)


def moved(by: int, at: tuple[int, int] = (1, 2)) -> Thumbnail:
    thumb = EMPTY.copy()
    thumb[at] = 100 + by
    return thumb


def run(thumbs: list[Thumbnail], every: float = 1 / 30) -> list[Verdict]:
    """Frames 1, 2, ... taken every `every` s; every decoded frame found nothing."""
    state, verdicts = GateState(), []
    for i, thumb in enumerate(thumbs, start=1):
        verdict, state = decide(state, thumb, i * every, SETTINGS)
        if verdict.decode:
            state = nothing_found(state, i, thumb)
        verdicts.append(verdict)
    return verdicts


F, C, D, S = Verdict.FIRST, Verdict.CHANGED, Verdict.DUE, Verdict.SKIP


@pytest.mark.parametrize(
    ("thumbs", "every", "expected"),
    [
        # The same view: decoded once, then every 5th frame (every_frames).
        ([EMPTY] * 11, 1 / 30, [F, S, S, S, S, D, S, S, S, S, D]),
        # A slow camera: every_s comes first (frames 0.45 s apart: a decode every 3rd).
        ([EMPTY] * 7, 0.45, [F, S, S, D, S, S, D]),
        # Noise within the threshold passes; one block beyond it is decoded and is the new
        # reference, so a view that stays changed is skipped from then on.
        (
            [EMPTY, moved(12), moved(-12), moved(13), moved(13), moved(13)],
            1 / 30,
            [F, S, S, C, S, S],
        ),
        # Slow lighting drift: compared with the reference, not the previous frame.
        ([EMPTY + np.uint8(k) for k in range(0, 30, 5)], 1 / 30, [F, S, S, C, S, S]),
        # A different frame size (a camera reopened at another resolution) is a change.
        (
            [EMPTY, np.full((5, 6), 100, np.uint8), np.full((5, 6), 100, np.uint8)],
            1 / 30,
            [F, C, S],
        ),
    ],
)
def test_verdicts(thumbs: list[Thumbnail], every: float, expected: list[Verdict]) -> None:
    assert run(thumbs, every) == expected


def test_a_frame_with_something_in_it_is_decoded_against_the_empty_reference() -> None:
    state = nothing_found(GateState(), 1, EMPTY)
    phone = moved(80)
    for frame_id in range(2, 12):  # a phone held still whose code is seen but not read
        verdict, state = decide(state, phone, frame_id / 30, SETTINGS)
        assert verdict is Verdict.CHANGED
    verdict, state = decide(state, EMPTY, 12 / 30, SETTINGS)  # it goes away
    assert verdict is Verdict.SKIP


def test_without_a_reference_no_thumbnail_is_needed_and_a_missing_one_is_decoded() -> None:
    verdict, state = decide(GateState(), None, 0.0, SETTINGS)
    assert verdict is Verdict.FIRST
    state = nothing_found(state, 1, EMPTY)
    # Another worker set the reference after this one looked: not comparable, so decoded.
    assert decide(state, None, 0.1, SETTINGS)[0] is Verdict.CHANGED


def test_an_older_frame_finishing_late_does_not_replace_a_newer_reference() -> None:
    state = nothing_found(GateState(), 7, moved(30))
    state = nothing_found(state, 6, EMPTY)  # the other worker was slower
    assert state.reference is not None and state.reference.frame_id == 7


def test_a_cluttered_view_has_its_texture_measured_once_per_valve_period() -> None:
    state = GateState()
    for _ in range(CLUTTERED_AFTER - 1):  # a phone frame or two nobody located: no wait
        due, state = texture_due(state)
        assert due
        state = textured(state, SETTINGS)
    state = nothing_found(state, 1, EMPTY)  # a plain frame between: the run starts again
    for _ in range(CLUTTERED_AFTER - 1):
        due, state = texture_due(state)
        assert due
        state = textured(state, SETTINGS)
    due, state = texture_due(state)
    assert due
    state = textured(state, SETTINGS)  # the third in a row: the view is cluttered
    dues = []
    for _ in range(2 * SETTINGS.every_frames):
        due, state = texture_due(state)
        dues.append(due)
        if due:
            state = textured(state, SETTINGS)  # still cluttered
    wait = SETTINGS.every_frames - 1
    assert dues == ([False] * wait + [True]) * 2


def test_thumbnail_is_block_means() -> None:
    gray = np.zeros((720, 1280), np.uint8)
    gray[16:32, 32:48] = 160  # one 16x16 block
    thumb = thumbnail(gray, 16)
    assert thumb.shape == (45, 80)
    assert thumb[1, 2] == 160 and int(thumb.sum()) == 160
    gray[40, 40] = 255  # one pixel moves a block mean by 255/256 of a level
    assert not changed(thumb, thumbnail(gray, 16), 12.0)


def test_bad_settings_are_refused() -> None:
    for bad in ({"block_px": 0}, {"threshold": -1.0}, {"every_frames": 0}, {"every_s": 0.0}):
        with pytest.raises(ValueError, match="need block_px"):
            GateSettings(**bad)  # type: ignore[arg-type]


# A frame: (block that moves, by how much, seconds since the previous frame, what the decode
# found: True = nothing at all).
frames = st.lists(
    st.tuples(
        st.integers(0, EMPTY.size - 1), st.integers(-60, 60), st.floats(0.0, 0.7),
        st.booleans(),
    ),
    min_size=1, max_size=120,
)  # fmt: skip


@given(frames)
def test_properties(script: list[tuple[int, int, float, bool]]) -> None:
    state, ts = GateState(), 0.0
    last_decode: tuple[int, float] | None = None
    skipped_in_row = 0
    for frame_id, (block, delta, gap, empty) in enumerate(script, start=1):
        ts += gap
        thumb = EMPTY.copy()
        thumb.flat[block] = 100 + delta
        reference = state.reference
        verdict, state = decide(state, thumb, ts, SETTINGS)
        if verdict is Verdict.SKIP:
            # Only ever a frame within the threshold of a reference, in which nothing was found.
            assert reference is not None
            assert int(np.abs(thumb.astype(int) - reference.thumb.astype(int)).max()) <= 12
            skipped_in_row += 1
            # Liveness: the valve bounds the frames and the time let pass in a row.
            assert last_decode is not None
            assert frame_id - last_decode[0] < SETTINGS.every_frames
            assert ts - last_decode[1] < SETTINGS.every_s
        else:
            skipped_in_row = 0
            last_decode = (frame_id, ts)
            if empty:
                state = nothing_found(state, frame_id, thumb)
        assert skipped_in_row < SETTINGS.every_frames


STICKER_AT = ((10, 10), (60, 10), (60, 60), (10, 60))


def shifted(by: int) -> tuple[tuple[str, tuple[tuple[int, int], ...]], ...]:
    return (("https://example.org/help", tuple((x + by, y) for x, y in STICKER_AT)),)


def test_codes_are_steady_after_staying_put_for_steady_after_decoded_frames() -> None:
    state, verdicts = GateState(), []
    # Still (sensor noise moves the outline a pixel or so), then moved, then another text,
    # then a frame with something else in it (`()`): each of the last three starts again.
    frames = [shifted(0), shifted(1), shifted(STEADY_PX), shifted(0), shifted(STEADY_PX + 1)]
    frames += [shifted(STEADY_PX + 1), shifted(STEADY_PX + 1), (("another", STICKER_AT),), ()]
    frames += [shifted(0)] * STEADY_AFTER
    for codes in frames:
        verdict, state = steady(state, codes, 0.0)
        verdicts.append(verdict)
    assert STEADY_AFTER == 3
    assert verdicts == [False, False, True, True, False, False, True, False, False,
                        False, False, True]  # fmt: skip


def stayed(state: GateState, codes: tuple[Sighting, ...]) -> GateState:
    """`codes` in view, still, for KNOWN_AFTER_S (frame time), decoded once a second."""
    for ts in range(int(KNOWN_AFTER_S) + 1):
        _, state = steady(state, codes, float(ts))
    return state


def test_codes_that_stayed_put_are_known_for_the_session_by_text_and_place() -> None:
    # Steady for STEADY_AFTER frames but in view for less than KNOWN_AFTER_S: not known. Once
    # still for that long: known after frames with something else in view (`()`, a truck in
    # front of it) and other codes.
    state = GateState()
    for ts in range(int(KNOWN_AFTER_S)):
        _, state = steady(state, shifted(ts % 2), float(ts))
    assert state.codes_in_row >= STEADY_AFTER and state.known == ()
    _, state = steady(state, shifted(0), KNOWN_AFTER_S)
    for ts, codes in enumerate(
        [(), (("another", ((500, 500), (540, 500), (540, 540), (500, 540))),), ()]
    ):
        _, state = steady(state, codes, KNOWN_AFTER_S + ts)
    sticker, place = shifted(0)[0]
    far = tuple((x + 200, y) for x, y in place)
    table = [
        # text, outline, printed here?
        (sticker, place, True),
        (sticker, far, True),  # the same text anywhere: the lane's own sticker
        ("a new sticker", shifted(STEADY_PX)[0][1], True),  # at its very place
        ("a driver's QR", shifted(STEADY_PX + 1)[0][1], False),  # a corner 1 px further
        ("a driver's QR", far, False),
        ("another", far, False),  # seen once, never steady
    ]
    assert [printed_here(state.known, (t, p)) for t, p, _ in table] == [e for _, _, e in table]


def test_a_phone_held_by_hand_is_never_known_however_steady() -> None:
    # A hand moves a phone's code by up to the simulator's SHAKE_PX from one frame to the next:
    # steady from frame to frame (STEADY_PX), but it wanders, and nobody holds it for
    # KNOWN_AFTER_S. Known, its text and any code at its place would be ignored for every
    # driver after: no "Payment refused", no reason, a driver left waiting.
    assert SHAKE_PX <= STEADY_PX
    held, state = GateState(), GateState()
    for frame in range(30 * 5):  # 5 s at 30 frames a second, within SHAKE_PX of the start
        _, held = steady(held, shifted(frame % (SHAKE_PX + 1)), frame / 30)
    assert held.codes_in_row == 30 * 5 and held.known == ()
    wander = int(KNOWN_AFTER_S) * 30 + 30  # longer than KNOWN_AFTER_S, a pixel further a second
    for frame in range(wander):
        _, state = steady(state, shifted(frame // 30), frame / 30)
    assert state.codes_in_row == wander and state.known == ()


def test_a_code_steady_again_replaces_what_it_was_known_as_and_the_latest_are_kept() -> None:
    state = stayed(GateState(), shifted(0))
    state = stayed(state, shifted(40))  # moved: the same text known at its new place only
    assert known(state) == shifted(40)
    replaced = (("new text", shifted(40)[0][1]),)
    assert known(stayed(state, replaced)) == replaced  # a new sticker over the old one
    for i in range(KNOWN_MAX + 2):
        state = stayed(state, ((f"ad {i}", tuple((x + 100 * i, y) for x, y in STICKER_AT)),))
    assert len(state.known) == KNOWN_MAX and state.known[-1].text == f"ad {KNOWN_MAX + 1}"


def known(state: GateState) -> tuple[Sighting, ...]:
    return tuple((k.text, k.place) for k in state.known)


def test_a_moved_sticker_is_known_at_its_new_place_after_moved_after_s() -> None:
    # Its text is the lane's own sticker's: steady at another place for MOVED_AFTER_S (not
    # KNOWN_AFTER_S), it is known there and no longer at the old place, where a driver's QR is
    # then anybody's. A phone held up with the sticker's text for less is not.
    state = stayed(GateState(), shifted(0))
    for ts in range(int(MOVED_AFTER_S)):
        _, state = steady(state, shifted(40), 100.0 + ts)
    assert known(state) == shifted(0)
    _, state = steady(state, shifted(40), 100.0 + MOVED_AFTER_S)
    assert known(state) == shifted(40) and MOVED_AFTER_S < KNOWN_AFTER_S
    assert not printed_here(state.known, ("a driver's QR", shifted(0)[0][1]))
    assert printed_here(state.known, ("a new sticker", shifted(40)[0][1]))


def test_a_moved_code_is_told_as_forgotten_at_its_old_place_and_learned_at_the_new() -> None:
    before = stayed(GateState(), shifted(0)).known
    after = stayed(stayed(GateState(), shifted(0)), shifted(40)).known
    assert known_changes(before, after) == (after, before)
    assert known_changes(after, after) == ((), ())
    # Read again a pixel or two off, as each decoded frame reads it: nothing to tell.
    jitter = stayed(stayed(GateState(), shifted(0)), shifted(STEADY_PX)).known
    assert known_changes(before, jitter) == ((), ())


def booth_known() -> GateState:
    """The booth's sticker known, its view the home (a reference with the sticker at its place)."""
    state = stayed(GateState(), ((STICKER, STICKER_PLACE),))
    return nothing_found(state, 1, views()["home"], ((STICKER, STICKER_PLACE),))


def watch(
    state: GateState, frames: list[tuple[str, bool]], start: float, every: float
) -> GateState:
    """Decoded frames of the named views (`booth_views`), the sticker read at its place or not."""
    for i, (name, read) in enumerate(frames):
        codes = ((STICKER, STICKER_PLACE),) if read else ()
        state = watched(state, codes, views()[name], start + i * every, BLOCK_PX)
    return state


MINUTES = int(FORGET_AFTER_S)  # decoded frames a second, for FORGET_AFTER_S and a few more


@pytest.mark.parametrize(
    ("frames", "forgotten"),
    [
        # Taken away: the view the same without it, for FORGET_AFTER_S.
        ([("taken away", False)] * (MINUTES + 2), True),
        ([("taken away", False)] * (MINUTES - 2), False),
        # The camera turned away from it.
        ([("turned", False)] * (MINUTES + 2), True),
        # A truck in front of it, for twice as long: never, whatever comes after.
        ([("truck", False)] * 2 * MINUTES + [("home", True)], False),
        ([("truck", False)] * 2 * MINUTES + [("taken away", False)] * 3, False),
        # Night: seen at its place, or unread for a while.
        ([("night", True)] * 2 * MINUTES, False),
        # A blackout (a covered lens, no evidence) for longer.
        ([("blackout", False)] * 2 * MINUTES, False),
        # A person standing before it for longer, the rest of the view as it was: it is there
        # when they go (forgotten, its next sighting would be nobody's: a driver's try spent).
        ([("person", False)] * 2 * MINUTES + [("taken away", False)] * 3, False),
        ([("person narrow", False)] * 2 * MINUTES, False),
        # Missing, then read again: the count starts over.
        ([("taken away", False)] * (MINUTES - 2) + [("home", True)]
         + [("taken away", False)] * (MINUTES - 2), False),
        # Vehicles in between stop the count (from the frame after them on), do not reset it:
        # a busy lane forgets it too.
        (([("taken away", False)] * 10 + [("truck", False)] * 5) * (MINUTES // 9 + 1), True),
    ],
)  # fmt: skip
def test_a_known_sticker_missing_from_an_unobstructed_view_is_forgotten(
    frames: list[tuple[str, bool]], forgotten: bool
) -> None:
    state = watch(booth_known(), frames, 100.0, 1.0)
    assert (state.known == ()) is forgotten
    assert printed_here(state.known, ("a driver's QR", STICKER_PLACE)) is not forgotten
    assert printed_here(state.known, (STICKER, ((500, 300),) * 4)) is not forgotten


@pytest.mark.parametrize(
    ("frames", "forgotten"),
    [
        ([("bare panel, taken away", False)] * (MINUTES + 2), True),
        ([("bare panel, person", False)] * 2 * MINUTES, False),
    ],
)
def test_a_sticker_on_a_bare_panel_is_forgotten_taken_away_not_hidden(
    frames: list[tuple[str, bool]], forgotten: bool
) -> None:
    # Plain around it, the panel is compared by its level: a person before it changes that.
    state = stayed(GateState(), ((STICKER, STICKER_PLACE),))
    state = nothing_found(state, 1, views()["bare panel"], ((STICKER, STICKER_PLACE),))
    assert (watch(state, frames, 100.0, 1.0).known == ()) is forgotten


def test_a_gap_without_frames_is_no_evidence_that_the_sticker_went() -> None:
    # The camera gave nothing for an hour (a blackout, a restart): at most GAP_S of it counts.
    state = watch(booth_known(), [("taken away", False)] * 2, 100.0, 3600.0)
    assert state.known[0].missing_s == GAP_S


def test_frames_watched_out_of_order_count_their_time_once() -> None:
    # Two decode workers: frames a second apart finished in pairs, the later of each first.
    state = booth_known()
    for ts in [101.0, 100.0, 103.0, 102.0, 105.0, 104.0, 107.0, 106.0]:
        state = watched(state, (), views()["taken away"], ts, BLOCK_PX)
    assert state.known[0].missing_s == 6.0  # from 101 to 107


def test_a_frame_judged_without_a_reference_is_no_evidence() -> None:
    # No thumbnail made (no reference when judged, so the gate made none): none is made for
    # this either, and the count stops as for a vehicle in front; read there, it starts over.
    state = watch(booth_known(), [("taken away", False)] * 3, 100.0, 1.0)
    missing = state.known[0].missing_s
    state = watched(state, (), None, 110.0, BLOCK_PX)
    assert state.known[0].missing_s == missing and state.watched_ts is None
    state = watched(state, ((STICKER, STICKER_PLACE),), None, 111.0, BLOCK_PX)
    assert state.known[0].missing_s == 0.0


VIEW_NAMES = (
    "home",
    "taken away",
    "night",
    "truck",
    "truck edge to edge",
    "turned",
    "blackout",
    "person",
)


@given(
    st.lists(
        st.tuples(st.sampled_from(VIEW_NAMES), st.booleans(), st.floats(0.0, 60.0)), max_size=80
    )
)
def test_a_sticker_is_forgotten_only_after_forget_after_s_missing_from_a_clear_view(
    frames: list[tuple[str, bool, float]],
) -> None:
    # Frames of any views, the sticker read or not, any time apart: it is never forgotten
    # within FORGET_AFTER_S of frame time since it was last read at its place, nor ever while
    # every frame since then showed it, or something in front of it, or nothing to go by.
    state, ts, seen_ts, clear_miss = booth_known(), 0.0, 0.0, False
    for name, shown, dt in frames:
        ts += dt
        read = shown and name not in ("taken away", "turned")  # not there, not in view
        codes = ((STICKER, STICKER_PLACE),) if read else ()
        state = watched(state, codes, views()[name], ts, BLOCK_PX)
        if read:
            seen_ts, clear_miss = ts, False
        elif name in ("home", "taken away", "night", "turned"):
            clear_miss = True
        if not state.known:
            assert ts - seen_ts >= FORGET_AFTER_S and clear_miss
            return
