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
