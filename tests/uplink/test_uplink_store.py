from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from uplink_kit import recs

from uplink.store import IngestStore, SeqConflictError

LANE = "p09/l04"


Factory = Callable[[], IngestStore]


def test_batch_is_stored_once_and_duplicates_collapse(store_factory: Factory) -> None:
    s = store_factory()
    r1 = s.store_batch(LANE, recs(1, 10), 1)
    assert (r1.inserted, r1.duplicates, r1.contiguous, r1.max_seq) == (10, 0, 10, 10)
    r2 = s.store_batch(LANE, recs(1, 10), 2)
    assert (r2.inserted, r2.duplicates, r2.contiguous) == (0, 10, 10)
    r3 = s.store_batch(LANE, recs(5, 15), 3)  # overlapping resend
    assert (r3.inserted, r3.duplicates, r3.contiguous) == (5, 6, 15)
    assert s.count(LANE) == 15
    held = s.records(LANE)
    assert [r.seq for r in held] == list(range(1, 16))
    assert held[0].data == recs(1, 1)[0].data
    assert s.lanes() == [LANE]


def test_contiguous_prefix_stops_at_a_gap_and_gaps_are_reported(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch(LANE, recs(1, 10), 1)
    r = s.store_batch(LANE, recs(21, 30), 1)  # 11..20 still missing
    assert (r.contiguous, r.max_seq) == (10, 30)
    s.store_batch(LANE, recs(41, 45), 1)
    assert s.gaps(LANE) == [(11, 20), (31, 40)]
    r = s.store_batch(LANE, recs(11, 20), 1)  # the hole fills: prefix jumps to the next gap
    assert r.contiguous == 30
    assert s.gaps(LANE) == [(31, 40)]
    assert s.store_batch(LANE, recs(31, 40), 1).contiguous == 45
    assert s.gaps(LANE) == []


def test_gap_before_the_first_batch(store_factory: Factory) -> None:
    s = store_factory()
    assert s.store_batch(LANE, recs(5, 9), 1).contiguous == 0
    assert s.gaps(LANE) == [(1, 4)]
    assert s.contiguous("nobody") == 0 and s.gaps("nobody") == [] and s.count("nobody") == 0


def test_seq_held_by_another_record_is_a_conflict_not_a_silent_drop(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch(LANE, recs(1, 5), 1)
    with pytest.raises(SeqConflictError):
        s.store_batch(LANE, recs(4, 8, tag="other-"), 1)
    # The whole batch rolled back: 6..8 were not stored either.
    assert s.count(LANE) == 5 and s.contiguous(LANE) == 5
    assert s.store_batch(LANE, recs(6, 8), 1).contiguous == 8


def test_lanes_are_independent(store_factory: Factory) -> None:
    s = store_factory()
    s.store_batch("a/1", recs(1, 3, "a/1"), 1)
    s.store_batch("b/1", recs(1, 2, "b/1"), 1)
    assert (s.count("a/1"), s.count("b/1")) == (3, 2)
    assert (s.contiguous("a/1"), s.contiguous("b/1")) == (3, 2)


def test_two_workers_committing_out_of_order_converge(store_factory: Factory) -> None:
    """Concurrent batches of one lane: the prefix never covers a seq that is not held."""
    stores = [store_factory() for _ in range(4)]
    batches = [recs(i * 20 + 1, i * 20 + 20) for i in range(20)]
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        try:
            for b in batches[k::4][::-1]:  # each worker goes backwards: maximal disorder
                r = stores[k].store_batch(LANE, b, 1)
                held = {x.seq for x in stores[k].records(LANE)}
                assert set(range(1, r.contiguous + 1)) <= held
                with lock:
                    results.append(r.contiguous)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 20
    assert max(results) == 400
    assert stores[0].gaps(LANE) == [] and stores[0].count(LANE) == 400
