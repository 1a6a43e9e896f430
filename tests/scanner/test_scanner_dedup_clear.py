from scanner.dedup import Deduplicator


def test_clear_reports_the_same_code_again_at_once() -> None:
    d = Deduplicator(window_s=3.0)
    assert d.first_sighting("code", 0.0)
    assert not d.first_sighting("code", 0.1)
    d.clear()
    assert d.first_sighting("code", 0.2)
