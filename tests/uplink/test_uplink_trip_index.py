"""`lane trips` from the store's trip index: the same ledger as decoding every record.

Each stored record's part in a trip (`trip_role`, `trip_id`) is filled at ingest by the pure
`uplink.trips.trip_mark`; the store finds open trips, the closed count and unmatched exits in
SQL over an index. Hypothesis draws closed-road and metro records (entries, exits, tap-ins
under their own record id or a pass id, tap-outs naming either, declines, tolls, a pass
entered twice, equal times, bytes that do not decode) into real SQLite and PostgreSQL stores,
and the indexed answer must be the pure ledger's over every stored record.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from uplink_kit import beside

from uplink.messages import QueueIdentity
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.sql_store import CLOSED_TRIPS, OPEN_ENTRIES, ROLE_COUNT, UNMATCHED_EXITS
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore
from uplink.trips import END_OF_TIME_US, open_trips, overdue, stored_mark, trip_ledger

T0 = 1_800_000_000_000_000
LANES = ("P01/e1", "P02/x1", "S01/g1")
KINDS = ("entry", "exit", "tap_in", "tap_out", "toll")


def gate_record_id(i: int) -> str:
    """A record id of the UUID form, whose hex a tap-out names for a tap-in without pass id."""
    return f"0194f9a0-0000-7000-8000-{i:012x}"


@st.composite
def stored_records(draw: st.DrawFn) -> list[IngestRecord]:
    """Rows as the ingest makes them (`IngestRecord.of`), and now and then one whose bytes do
    not decode, marked as the store upgrade marks such a row."""
    n = draw(st.integers(0, 24))
    trip_ids = st.one_of(
        st.none(),
        st.sampled_from(("p1", "p2", "p3", "")),
        st.integers(0, max(n - 1, 0)).map(lambda j: uuid.UUID(gate_record_id(j)).hex),
    )
    seqs = dict.fromkeys(LANES, 0)
    rows: list[IngestRecord] = []
    for i in range(n):
        lane = draw(st.sampled_from(LANES))
        seqs[lane] += 1
        seq, ts_us = seqs[lane], T0 + draw(st.integers(0, 4))
        if draw(st.integers(0, 11)) == 0:
            junk = b"\x00junk-%d" % i
            rows.append(IngestRecord(f"g-{i}", lane, seq, ts_us, "toll", 0, "CNY", junk,
                                     stored_mark(junk)))  # fmt: skip
            continue
        draft = RecordDraft(
            draw(st.sampled_from(KINDS)),
            f"v-{i}",
            draw(st.integers(1, 3)),
            0,
            "CNY",
            "token",
            None,
            AuthInfo(draw(st.sampled_from(("approved", "declined", "none")))),
            entry_plaza=draw(st.sampled_from((None, "P09"))),
            pass_id=draw(trip_ids),
            plate=draw(st.sampled_from((None, "ZJA1"))),
        )
        record_id = gate_record_id(i) if draw(st.booleans()) else f"r-{i}"
        record = Record(record_id, lane, seq, ts_us, draft)
        rows.append(IngestRecord.of(record, record.encode()))
    return rows


def test_the_indexed_ledger_is_the_pure_ledger_over_every_record(
    store_factory: Callable[[], IngestStore],
) -> None:
    store = store_factory()

    @settings(max_examples=60, deadline=None, database=None)
    @given(rows=stored_records(), cutoff=st.integers(0, 5))
    def check(rows: list[IngestRecord], cutoff: int) -> None:
        beside(store, "DELETE FROM {t}records", [()])
        epoch = QueueIdentity(uuid.uuid4().hex)
        for lane in LANES:
            batch = [r for r in rows if r.lane == lane]
            if batch:
                store.store_batch(lane, epoch, batch, 1)
        blobs = store.records_between(0, END_OF_TIME_US)
        assert len(blobs) == len(rows)
        pure = trip_ledger(blobs)
        assert trip_ledger(reversed(blobs)) == pure  # the order records are read in is no matter
        for before in (END_OF_TIME_US, T0 + cutoff):
            assert open_trips(store, before) == overdue(pure, before)

    check()


def test_the_ledgers_queries_walk_the_trip_index(tmp_path: Path) -> None:
    """Not one of them reads the whole table: each searches the index for one role and probes
    it for the trip's other end."""
    SqliteIngestStore(tmp_path / "ingest.sqlite").close()
    db = sqlite3.connect(tmp_path / "ingest.sqlite")
    try:
        for sql, params in (
            (OPEN_ENTRIES, ("entry", T0, "exit")),
            (CLOSED_TRIPS, ("entry", "exit")),
            (UNMATCHED_EXITS, ("exit", "entry")),
            (ROLE_COUNT, ("unreadable",)),
        ):
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql.replace(
                "{records}", "records"), params)]  # fmt: skip
            reads = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
            assert reads and all("USING" in s and "INDEX records_trip" in s for s in reads), plan
    finally:
        db.close()
