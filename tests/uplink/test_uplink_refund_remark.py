"""Refunds an earlier release marked, marked again when the store is upgraded (`remark`).

A release before the refund of an entry closed its trip marked every refund as none (no part
in a trip), and one before that as the record it refunds (an entry refund opened a trip, an
exit refund closed one). A store those releases filled, opened by this one, gives each such
refund today's `trip_mark` as if its batch came now: the trip ledger is then `trip_ledger`'s
over every stored record, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_uplink_trip_index import T0, arrivals, kept_strays, open_table, stored_records
from uplink_kit import beside

from lane.core.names import RecordKind
from lane.core.records import REFUND_FLAG
from uplink.messages import QueueIdentity
from uplink.pg import PostgresIngestStore
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore
from uplink.trips import (
    END_OF_TIME_US,
    TripLedger,
    TripMark,
    open_trips,
    trip_ledger,
    trip_mark,
)

# How an earlier release marked a refund: as none, or as the record it refunds.
OLD_MARKS = ("none", "as_refunded")


def old_mark(record: Record, how: str) -> TripMark | None:
    """A refund's mark as the release `how` names gave it."""
    if how == "none":
        return None
    flags = tuple(f for f in record.draft.flags if f != REFUND_FLAG)
    return trip_mark(replace(record, draft=replace(record.draft, flags=flags)))


def as_stored_before(rows: list[IngestRecord], draw: st.DrawFn) -> list[IngestRecord]:
    """`rows` as an earlier release ingested them: each refund with a drawn old mark."""
    out = []
    for row in rows:
        record = Record.readable(row.data)
        if record is not None and REFUND_FLAG in record.draft.flags:
            row = replace(row, trip=old_mark(record, draw(st.sampled_from(OLD_MARKS))))  # noqa: PLW2901
        out.append(row)
    return out


def made_old(store: IngestStore) -> None:
    """Tag the store's schema as an earlier release's (version 7) left it."""
    if isinstance(store, SqliteIngestStore):
        with sqlite3.connect(store.path) as db:
            db.execute("PRAGMA user_version = 7")
        return
    assert isinstance(store, PostgresIngestStore)
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute(
            f"COMMENT ON SCHEMA {store.schema} IS 'lane ingest schema v7 0123456789abcdef'"
        )


def reopened(store: IngestStore) -> IngestStore:
    """The store opened again by this release, as the next worker after an upgrade does."""
    if isinstance(store, SqliteIngestStore):
        return SqliteIngestStore(store.path)
    assert isinstance(store, PostgresIngestStore)
    return PostgresIngestStore(store.dsn, upgrade_chunk=4)


def test_refunds_an_earlier_release_marked_are_marked_again_on_upgrade(
    store_factory: Callable[[], IngestStore],
) -> None:
    """Drawn records (refunds of entries, tap-ins, exits and tap-outs among them) ingested in
    drawn orders with the refunds marked as an earlier release did; the store is then opened
    by this release: its open trips, closed count and unmatched exits are the pure ledger's
    over every record, its strays the unmatched exits, one open-trips row per open trip."""
    store = store_factory()

    @settings(max_examples=40, deadline=None, database=None)
    @given(data=st.data(), rows=stored_records())
    def check(data: st.DataObject, rows: list[IngestRecord]) -> None:
        for table in ("records", "open_trips", "stray_exits", "epochs"):
            beside(store, f"DELETE FROM {{t}}{table}", [()])
        beside(store, "UPDATE {t}trip_counts SET closed = 0", [()])
        epoch = QueueIdentity(uuid.uuid4().hex)
        for batch in data.draw(arrivals(as_stored_before(rows, data.draw))):
            store.store_batch(batch[0].lane, epoch, batch, 1)
        made_old(store)
        upgraded = reopened(store)
        try:
            pure = trip_ledger(upgraded.records_between(0, END_OF_TIME_US))
            assert open_trips(upgraded) == pure
            assert kept_strays(upgraded) == sorted(pure.unmatched_exits)
            assert open_table(upgraded) == len(pure.open_trips)
        finally:
            upgraded.close()

    check()


def test_the_upgrade_log_counts_the_refunds_marked_again_and_those_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two entries refunded, marked as none by version 7: the refund naming its pass closes
    its trip; the one a lane of an earlier release wrote names none and is left, its trip
    open. The upgrade's log line counts one of each."""
    records = []
    for i, named in enumerate(("p1", None)):
        entry = RecordDraft("entry", "veh", 1, 0, "CNY", "token", None, AuthInfo("none"),
                            pass_id=f"p{i + 1}")  # fmt: skip
        refund = replace(entry, flags=(REFUND_FLAG, f"record:e-{i}"), pass_id=named)
        records += [Record(f"e-{i}", "P01/e1", 2 * i + 1, T0, entry),
                    Record(f"f-{i}", "P01/e1", 2 * i + 2, T0, refund)]  # fmt: skip
    rows = [IngestRecord.of(r, r.encode()) for r in records]
    old = [replace(r, trip=None) if r.record_id.startswith("f-") else r for r in rows]
    ledger, counted = upgraded_from(tmp_path, caplog, old)
    pure = trip_ledger(r.encode() for r in records)
    assert [t.pass_id for t in pure.open_trips] == ["p2"] and pure.closed == 1
    assert ledger == pure
    assert counted == (1, 1)


def test_a_refund_undone_by_a_refund_of_its_own_is_left_as_today_marked_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 7's last release marked refunds as today: an entry refunded, and that refund
    undone by a refund naming it, is `refunded` (a role no mark gives). The upgrade leaves it
    so, and counts no refund marked again (it marked it an exit again, undid it again, and
    counted it in its log line)."""
    entry = RecordDraft("entry", "veh", 1, 0, "CNY", "token", None, AuthInfo("none"),
                        pass_id="p9")  # fmt: skip
    records = [
        Record("e-9", "P01/e1", 1, T0, entry),
        Record("f-9", "P01/e1", 2, T0, replace(entry, flags=(REFUND_FLAG, "record:e-9"))),
        Record("u-9", "P01/e1", 3, T0, replace(entry, kind=RecordKind.EXIT, pass_id=None,
                                               flags=(REFUND_FLAG, "record:f-9"))),
    ]  # fmt: skip
    ledger, counted = upgraded_from(
        tmp_path, caplog, [IngestRecord.of(r, r.encode()) for r in records]
    )
    pure = trip_ledger(r.encode() for r in records)
    assert [t.pass_id for t in pure.open_trips] == ["p9"] and pure.closed == 0
    assert ledger == pure
    assert counted == (0, 0)


def upgraded_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, rows: list[IngestRecord]
) -> tuple[TripLedger, tuple[int, int]]:
    """`rows` (one lane's, in order) stored by version 7 in a SQLite file, which this release
    then opens: its ledger, and the refunds its upgrade's log line says it marked again and
    left with no part in a trip."""
    store = SqliteIngestStore(tmp_path / "ingest.sqlite")
    store.store_batch(rows[0].lane, QueueIdentity("old"), rows, 1)
    made_old(store)
    store.close()
    caplog.set_level(logging.INFO, logger="lane.uplink.sqlite_store")
    upgraded = reopened(store)
    try:
        ledger = open_trips(upgraded)
    finally:
        upgraded.close()
    (line,) = [r for r in caplog.records if r.getMessage() == "ingest store upgraded"]
    return ledger, (line.refunds_remarked, line.refunds_unmarked)  # type: ignore[attr-defined]
