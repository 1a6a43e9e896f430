from hypothesis import given
from hypothesis import strategies as st

from scanner.dedup import Deduplicator


def test_clear_reports_the_same_code_again_at_once() -> None:
    d = Deduplicator(window_s=3.0)
    assert d.first_sighting("code", 0.0)
    assert not d.first_sighting("code", 0.1)
    d.clear()
    assert d.first_sighting("code", 0.2)


def test_clear_keeps_the_sightings_it_is_told_to_keep() -> None:
    d = Deduplicator(window_s=3.0)
    assert d.first_sighting("sticker", 0.0) and d.first_sighting("code", 0.0)
    d.clear(keep=lambda text: text == "sticker")
    assert not d.first_sighting("sticker", 0.2)
    assert d.first_sighting("code", 0.2)


def test_a_sighting_in_a_frame_taken_by_the_clear_is_neither_reported_nor_kept() -> None:
    # Decoded late (a loaded machine): the person before's frame. Kept, it would make the next
    # person's own frames of the same code repeats.
    d = Deduplicator(window_s=3.0)
    assert d.first_sighting("code", 1.0)
    d.clear(since=2.0)
    assert not d.first_sighting("code", 1.9)
    assert not d.first_sighting("code", 2.0)
    assert d.first_sighting("code", 2.1)
    assert not d.first_sighting("code", 2.2)


@given(
    before=st.lists(st.floats(0.0, 10.0), max_size=5),
    cut=st.floats(0.0, 10.0),
    after=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=8),
)
def test_after_a_cut_the_first_frame_taken_after_it_is_reported_and_none_before(
    before: list[float], cut: float, after: list[float]
) -> None:
    # Liveness of the cut, workers finishing in any order: the late frames of the person
    # before never reach the lane, and a code held up after it is read at its first frame.
    d = Deduplicator(window_s=3.0)
    for ts in before:
        d.first_sighting("code", ts)
    d.clear(since=cut)
    reported = [ts for ts in after if d.first_sighting("code", ts)]
    assert all(ts > cut for ts in reported)
    later = [ts for ts in after if ts > cut]
    assert reported[:1] == later[:1]
