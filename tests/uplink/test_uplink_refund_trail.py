"""The back office links each refund record to the metro `tap_out` that owed the refund (by
its payment) and lists the refunds owed and not made, and those ended unpaid, on SQLite and on
PostgreSQL, whatever order the lanes' batches arrive in; a store of the previous schema gets
its `tap_out` rows marked by its upgrade (PostgreSQL: a chunk per transaction, resumed)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from lane.auth.refund_ends import RefundEnd, RefundEndKind, refund_draft, refund_record_id
from lane.core.records import AuthInfo, RecordDraft
from uplink.messages import QueueIdentity
from uplink.pg import PostgresIngestStore
from uplink.records import Record
from uplink.refund_trail_cli import main as trail_main
from uplink.refunds import open_refunds
from uplink.sql_store import SCHEMA_VERSION, UpgradeJob
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore
from uplink.trips import open_trips

LANE = "m01/x03"
Q = QueueIdentity("epoch-r")
T0 = 1_780_000_000_000_000


class CrashError(Exception):
    pass


def tap_out(seq: int, payment_id: str, refunded: int) -> Record:
    money = (f"charged:{refunded + 300}", f"refunded:{refunded}") if refunded else ()
    draft = RecordDraft("tap_out", f"v-{seq}", 1, 300, "CNY", "payment_code", "alipay:acct",
                        AuthInfo("approved", "ref"), payment_id, "S07",
                        ("same_line", *money), pass_id=f"{seq:032x}")  # fmt: skip
    return Record(f"tap-{seq:03d}", LANE, seq, T0 + seq, draft)


def ended(seq: int, payment_id: str, kind: RefundEndKind, word: str) -> Record:
    end = RefundEnd(payment_id, f"{payment_id}-r1", kind, word, 150, "CNY", "payment_code",
                    "wechatpay")  # fmt: skip
    return Record(refund_record_id(end.refund_id, end.key), LANE, seq, T0 + seq, refund_draft(end))


def rows(records: list[Record]) -> list[IngestRecord]:
    return [IngestRecord.of(r, r.encode()) for r in records]


def trail_records() -> list[Record]:
    """pay_a owed, nothing heard; pay_b ended unpaid; pay_c unpaid, then made; pay_d made by
    hand; pay_e owed nothing; pay_f made. Seqs 1..9 in the lane's order."""
    return [
        tap_out(1, "pay_a", 150),
        tap_out(2, "pay_b", 150),
        tap_out(3, "pay_c", 150),
        tap_out(4, "pay_d", 150),
        tap_out(5, "pay_e", 0),
        ended(6, "pay_b", RefundEndKind.UNPAID, "ABNORMAL"),
        ended(7, "pay_c", RefundEndKind.UNPAID, "ABNORMAL"),
        ended(8, "pay_c", RefundEndKind.MADE, "SUCCESS"),
        ended(9, "pay_d", RefundEndKind.MADE_BY_HAND, "by_hand"),
        tap_out(10, "pay_f", 90),
        ended(11, "pay_f", RefundEndKind.MADE, "SUCCESS"),
    ]


def assert_trail(store: IngestStore) -> None:
    trail = open_refunds(store)
    assert [(r.payment_id, r.state, r.word, r.owed_minor) for r in trail.owed] == [
        ("pay_a", "owed", None, 150)
    ]
    assert [(r.payment_id, r.state, r.word, r.refund_id) for r in trail.unpaid] == [
        ("pay_b", "unpaid", "ABNORMAL", "pay_b-r1")
    ]
    assert trail.unpaid[0].record_id == "tap-002" and trail.unpaid[0].ended_us == T0 + 6
    assert not trail.upgrading


@pytest.mark.parametrize("order", ["in order", "ends first"])
def test_refunds_owed_and_not_made_are_listed_whatever_order_the_batches_come_in(
    store_factory: Callable[[], IngestStore], order: str
) -> None:
    store = store_factory()
    batch = rows(trail_records())
    batches = [batch[:5], batch[5:]] if order == "in order" else [batch[5:], batch[:5]]
    for part in batches:
        store.store_batch(LANE, Q, part, 1)
    assert_trail(store)
    again = store.store_batch(LANE, Q, batch[5:], 2)  # a resend: held, nothing changes
    assert again.duplicates == len(batch[5:]) and again.conflicts == ()
    assert_trail(store)


def test_the_cli_lists_them_from_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ingest.sqlite"
    store = SqliteIngestStore(path)
    store.store_batch(LANE, Q, rows(trail_records()), 1)
    store.close()
    assert trail_main(["--db", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pay_a\towed\t150 CNY\texited=")
    assert lines[1].startswith("pay_b\tunpaid(ABNORMAL)\t150 CNY\texited=")
    assert "record=tap-002" in lines[1]
    assert lines[2] == "owed=1\tunpaid=1"
    assert trail_main(["--db", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["payment_id"] for r in got["owed"]] == ["pay_a"] and got["upgrading"] is False
    assert trail_main(["--db", str(tmp_path / "none.sqlite")]) == 1


def test_the_cli_lists_them_from_postgres(pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = PostgresIngestStore(pg_dsn)
    store.store_batch(LANE, Q, rows(trail_records()), 1)
    store.close()
    assert trail_main(["--dsn", pg_dsn]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "owed=1\tunpaid=1"


def test_a_version_6_sqlite_store_gets_its_tap_outs_marked(tmp_path: Path) -> None:
    path = tmp_path / "ingest.sqlite"
    store = SqliteIngestStore(path)
    store.store_batch(LANE, Q, rows(trail_records()[:5]), 1)  # tap_outs of release 6
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP INDEX records_refund")
    db.execute("ALTER TABLE records DROP COLUMN refund_of")
    db.execute("ALTER TABLE records DROP COLUMN refund_role")
    db.execute("PRAGMA user_version = 6")
    db.close()
    store = SqliteIngestStore(path)
    try:
        store.store_batch(LANE, Q, rows(trail_records()[5:]), 1)  # the ends, after it
        assert_trail(store)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8


def test_a_version_6_postgres_schema_is_marked_a_chunk_at_a_time_and_resumes(
    pg_dsn: str,
) -> None:
    store = PostgresIngestStore(pg_dsn)
    store.store_batch(LANE, Q, rows(trail_records()[:5]), 1)
    store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # back to release 6's schema
        conn.execute("DROP INDEX lane_ingest.records_refund")
        conn.execute("ALTER TABLE lane_ingest.records DROP COLUMN refund_of")
        conn.execute("ALTER TABLE lane_ingest.records DROP COLUMN refund_role")
        conn.execute("COMMENT ON SCHEMA lane_ingest IS 'lane ingest schema v6 0000000000000000'")
    chunks: list[tuple[UpgradeJob, str | None]] = []

    def crash_after_the_first(job: UpgradeJob, after: str | None) -> None:
        chunks.append((job, after))
        raise CrashError

    with pytest.raises(CrashError):
        PostgresIngestStore(pg_dsn, upgrade_chunk=2, after_chunk=crash_after_the_first)
    assert chunks == [(UpgradeJob.REFUNDS, "tap-002")]
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute("SELECT job, after FROM lane_ingest.upgrade").fetchall()
    assert sorted(left) == [(UpgradeJob.REFUNDS.value, "tap-002"), (UpgradeJob.REMARK.value, None)]
    resumed: list[tuple[UpgradeJob, str | None]] = []
    store = PostgresIngestStore(
        pg_dsn, upgrade_chunk=2, after_chunk=lambda job, at: resumed.append((job, at))
    )
    try:
        assert resumed[:2] == [(UpgradeJob.REFUNDS, "tap-004"), (UpgradeJob.REFUNDS, None)]
        assert [job for job, _ in resumed[2:]] == [UpgradeJob.REMARK] * 3  # 5 rows, 2 a chunk
        store.store_batch(LANE, Q, rows(trail_records()[5:]), 1)
        assert_trail(store)
        assert not store.upgrade_pending()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a job left, as a worker sees it
            conn.execute("INSERT INTO lane_ingest.upgrade VALUES ('refunds', 'tap-004')")
        assert open_refunds(store).upgrading  # the answer says it is not whole yet
        assert not open_trips(store).upgrading  # the trips' answer is: no trip column waits
        assert store.upgrade_pending()  # and a worker's /metrics say so (upgrade_pending 1)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the prune alone left
            conn.execute("UPDATE lane_ingest.upgrade SET job = 'prune', after = NULL")
        assert not open_refunds(store).upgrading and not open_trips(store).upgrading
        assert not store.upgrade_pending()  # both answers whole: nothing to say
    finally:
        store.close()
