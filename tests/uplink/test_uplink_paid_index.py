"""The queue remembers which payments a record said were taken, after the record is gone.

Crash recovery settles exactly these: a declined or timed-out payment that a record mentions
must still be resolved (reversed if it went through), and a paid one must never be reversed,
even when the back office has acknowledged and the queue deleted its record.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from uplink_kit import queued

from uplink.queue import MIGRATIONS, QueueError, RecordQueue
from uplink.records import AuthInfo, RecordDraft

LANE = "p1/l1"


def draft(payment_id: str, result: str) -> RecordDraft:
    return RecordDraft(
        kind="toll",
        vehicle_id="v-" + payment_id,
        vehicle_class=1,
        amount_minor=250,
        currency="EUR",
        method="payment_code",
        account_ref="wallet:x",
        auth=AuthInfo(result=result),
        payment_id=payment_id,
    )


def test_paid_payments_are_remembered_after_the_ack(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite3", LANE, 10**8) as q:
        q.append(draft("pay_ok", "approved"))
        q.append(draft("pay_deferred", "deferred"))
        q.append(draft("pay_declined", "declined"))
        q.ack(queued(q))  # the back office has them all: the records are deleted
        assert q.backlog().count == 0
        assert q.recorded_paid("pay_ok")
        assert q.recorded_paid("pay_deferred")
        assert not q.recorded_paid("pay_declined")
        assert not q.recorded_paid("pay_never_seen")


def test_a_v1_queue_learns_its_paid_records_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with RecordQueue(path, LANE, 10**8) as q:
        q.append(draft("pay_old", "approved"))
        q.append(draft("pay_refused", "declined"))
    db = sqlite3.connect(path)  # back to the v1 layout: records and meta only
    db.execute("DROP TABLE paid")
    db.execute("DROP TABLE owed")
    db.execute("DROP TABLE keyed")
    db.execute("DELETE FROM meta WHERE key IN ('epoch', 'base')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    assert len(MIGRATIONS) == 6
    with RecordQueue(path, LANE, 10**8) as q:
        assert q.recorded_paid("pay_old")
        assert not q.recorded_paid("pay_refused")


def test_a_closed_queue_raises_its_own_error(tmp_path: Path) -> None:
    q = RecordQueue(tmp_path / "q.sqlite3", LANE, 10**8)
    q.close()
    with pytest.raises(QueueError):
        q.batch(0, 10)
