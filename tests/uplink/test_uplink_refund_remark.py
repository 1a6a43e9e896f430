"""Refunds an earlier release marked, marked again when the store is upgraded (`remark`).

A release before the refund of an entry closed its trip marked every refund as none (no part
in a trip), and one before that as the record it refunds (an entry refund opened a trip, an
exit refund closed one). A store those releases filled, opened by this one, gives each such
refund today's `trip_mark` as if its batch came now: the trip ledger is then `trip_ledger`'s
over every stored record, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import replace

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st
from test_uplink_trip_index import arrivals, kept_strays, open_table, stored_records
from uplink_kit import beside

from lane.core.records import REFUND_FLAG
from uplink.messages import QueueIdentity
from uplink.pg import PostgresIngestStore
from uplink.records import Record
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore
from uplink.trips import END_OF_TIME_US, TripMark, open_trips, trip_ledger, trip_mark

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

    @settings(max_examples=300, deadline=None, database=None)
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
