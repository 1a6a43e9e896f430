"""A true hole (a seq still missing after `hole_after_s`) versus routine reordering: the pure
HoleWatch (table and properties), then the ingest's log lines against a real broker and store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from uplink_kit import Client, Q, committed_behind, fast_link, recs

from lane.transport.mqtt import Incoming, MqttLink
from lane.wire.topics import uplink_records
from sim.broker import Mosquitto
from uplink.holes import HoleEvent, HoleState, HoleWatch
from uplink.ingest import Ingest
from uplink.messages import encode_batch
from uplink.sqlite_store import SqliteIngestStore

R, H, F = HoleState.REORDERED, HoleState.HOLE, HoleState.FILLED


def states(events: list[HoleEvent]) -> list[tuple[HoleState, int, int]]:
    return [(e.state, e.missing_from, e.held_upto) for e in events]


# (contiguous, max_seq, now) observed in order -> the events each observation returns
TABLE = [
    # in order: nothing to say
    ([(10, 10, 0.0), (20, 20, 1.0)], [[], []]),
    # routine reordering: 11..20 arrives 2 s after 21..30, well inside after_s
    ([(10, 30, 0.0), (30, 30, 2.0)], [[(R, 11, 30)], []]),
    # a true hole: still missing at 60 s, reported once, then filled
    (
        [(10, 30, 0.0), (10, 40, 59.9), (10, 50, 60.0), (10, 60, 90.0), (60, 60, 95.0)],
        [[(R, 11, 30)], [], [(H, 11, 50)], [], [(F, 11, 60)]],
    ),
    # the prefix moves up to a new, later hole: timed from when that one appeared
    ([(10, 30, 0.0), (30, 50, 50.0), (30, 50, 100.0)], [[(R, 11, 30)], [(R, 31, 50)], []]),
]


@pytest.mark.parametrize(("seen", "expected"), TABLE)
def test_hole_watch_table(
    seen: list[tuple[int, int, float]], expected: list[list[tuple[HoleState, int, int]]]
) -> None:
    watch = HoleWatch(after_s=60.0)
    got = [states(watch.observe("p/l", "e", c, m, now)) for c, m, now in seen]
    assert got == expected


def test_a_hole_is_reported_by_the_periodic_check_without_new_batches() -> None:
    watch = HoleWatch(after_s=5.0)
    watch.observe("p/l", "e", 3, 9, 100.0)
    assert watch.due(104.9) == []
    [event] = watch.due(105.0)
    assert (event.state, event.missing_from, event.held_upto, event.missing_for_s) == (H, 4, 9, 5.0)
    assert watch.due(200.0) == []  # once


def test_epochs_and_lanes_are_watched_apart() -> None:
    watch = HoleWatch(after_s=1.0)
    watch.observe("p/l", "e1", 1, 5, 0.0)
    watch.observe("p/l", "e2", 5, 5, 0.0)
    watch.observe("p/m", "e1", 5, 5, 0.0)
    assert [(e.lane, e.epoch) for e in watch.due(1.0)] == [("p/l", "e1")]


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 50), st.floats(0, 10)), min_size=1, max_size=40
    ),
    st.floats(0.1, 30),
)
def test_hole_watch_properties(steps: list[tuple[int, int, float]], after: float) -> None:
    """The store's prefix of an epoch never goes back (rows are never deleted), so each step's
    first number moves it on by that much; the highest seq held is anywhere past it."""
    watch = HoleWatch(after_s=after)
    now = 0.0
    reported: set[int] = set()
    contiguous = 0
    for step, extra, dt in steps:
        contiguous += step
        now += dt
        for e in watch.observe("p/l", "e", contiguous, contiguous + extra, now):
            if e.state is H:
                assert e.missing_for_s >= after - 5e-4  # never before after_s (rounded to ms)
                assert e.missing_from not in reported  # reported once
                reported.add(e.missing_from)
            if e.state is F:
                assert e.missing_from in reported  # only a reported hole is "filled"
                assert contiguous >= e.missing_from
            assert e.missing_from <= e.held_upto


@dataclass
class Rig:
    """Ingest workers sharing one store and one connected link, on a clock the test moves."""

    store: SqliteIngestStore
    link: MqttLink
    lane: str
    now: list[float]

    def worker(self) -> Ingest:
        ingest = Ingest(self.store, hole_after_s=30.0, clock=lambda: self.now[0])
        ingest.attach(self.link)
        return ingest

    def batch(self, first: int, last: int) -> Incoming:
        rows = [(r.seq, r.data) for r in recs(first, last, lane=self.lane)]
        return Incoming(uplink_records(self.lane), encode_batch(self.lane, Q, "b", rows))


@pytest.fixture
async def rig(mosquitto: Mosquitto, lane_id: str, tmp_path: Path) -> AsyncIterator[Rig]:
    store = SqliteIngestStore(tmp_path / "bo.sqlite")
    client = await Client(fast_link(mosquitto.host, mosquitto.port, f"holes-{lane_id}")).start()
    try:
        yield Rig(store, client.link, lane_id, [1000.0])
    finally:
        await client.stop()
        store.close()


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == event]


async def test_ingest_logs_reordering_at_debug_and_a_true_hole_as_a_warning(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lane.uplink.ingest")
    ingest = rig.worker()
    await ingest.handle(rig.batch(3, 4))  # two workers: 3..4 commits before 1..2
    rig.now[0] += 0.5
    await ingest.handle(rig.batch(1, 2))
    assert [r.levelno for r in logged(caplog, "uplink batch out of order")] == [logging.DEBUG]
    assert logged(caplog, "uplink sequence hole") == []
    await ingest.handle(rig.batch(7, 8))  # 5..6 is lost somewhere
    rig.now[0] += 29.0
    await ingest.check_holes()
    assert logged(caplog, "uplink sequence hole") == []
    rig.now[0] += 1.0
    await ingest.check_holes()
    [hole] = logged(caplog, "uplink sequence hole")
    assert hole.levelno == logging.WARNING
    fields = hole.__dict__
    assert (fields["lane"], fields["epoch"]) == (rig.lane, Q.epoch)
    assert (fields["missing_from"], fields["held_upto"], fields["missing_for_s"]) == (5, 8, 30.0)
    assert ingest.stats.holes == 1 and ingest.stats.reorders == 2
    assert ingest.holes.open_holes() == 1  # the alarm gauge
    await ingest.handle(rig.batch(5, 6))
    assert ingest.holes.open_holes() == 0  # clears by itself
    filled = logged(caplog, "uplink sequence hole filled")
    assert [r.__dict__["missing_from"] for r in filled] == [5]


async def test_a_hole_filled_by_another_worker_is_not_reported(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lane.uplink.ingest")
    a, b = rig.worker(), rig.worker()
    await a.handle(rig.batch(3, 4))  # worker a sees 1..2 missing
    await b.handle(rig.batch(1, 2))  # worker b commits them
    rig.now[0] += 60.0
    await a.check_holes()
    assert logged(caplog, "uplink sequence hole") == []
    assert a.holes.open_holes() == 0 and a.holes.open_keys() == []


async def test_a_worker_stopped_before_its_prefix_walk_leaves_no_false_hole(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker committed the batch that fills the hole and stopped before it walked
    the epoch's prefix on: the stored prefix is short, the records are all held. The hole
    check reads the epoch afresh, which walks the prefix on: nothing is reported."""
    caplog.set_level(logging.INFO, logger="lane.uplink.ingest")
    a = rig.worker()
    await a.handle(rig.batch(1, 2))
    await a.handle(rig.batch(5, 6))  # 3..4 missing for now
    committed_behind(rig.store, recs(3, 4, lane=rig.lane), Q.epoch)
    rig.now[0] += 60.0
    await a.check_holes()
    assert logged(caplog, "uplink sequence hole") == []
    assert a.holes.open_keys() == [] and a.stats.holes == 0
    assert rig.store.gaps(rig.lane) == [] and rig.store.count(rig.lane) == 6
