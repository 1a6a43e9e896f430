"""The queue keeps the passages the lane owes paid vehicles (lane.core.carried).

A paid record's owed passage is written in the record's own commit, so no crash can leave the
record without it; a `paid_not_passed` record ends it in its own commit, so no crash can leave
both or neither; `served` forgets it once the vehicle is through. The lane reads what is left
at its next start, whatever the back office has acknowledged and deleted meanwhile.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from uplink_kit import queued

from uplink.queue import OwedPassage, QueueFull, RecordQueue
from uplink.records import AuthInfo, RecordDraft

LANE = "p1/l1"
CODE = "3f1c0aa1b2c3d4e5f60718293a4b5c6d"  # a code's digest (lane.core.records.credential_of)


def paid(vehicle_id: str = "v1") -> RecordDraft:
    return RecordDraft(
        kind="toll",
        vehicle_id=vehicle_id,
        vehicle_class=2,
        amount_minor=480,
        currency="EUR",
        method="token",
        account_ref="acct:x",
        auth=AuthInfo(result="approved"),
        payment_id=f"pay-{vehicle_id}",
    )


def refund(record_id: str) -> RecordDraft:
    return RecordDraft(
        kind="toll",
        vehicle_id="v1",
        vehicle_class=2,
        amount_minor=0,
        currency="",
        method="none",
        account_ref=None,
        auth=AuthInfo(result="none"),
        flags=("paid_not_passed", f"record:{record_id}"),
    )


def test_a_paid_record_owes_its_passage_over_a_reopen_and_an_ack(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with RecordQueue(path, LANE, 10**8, wall=lambda: 1_700_000_000.25) as q:
        record = q.append(paid(), owes=CODE)
        q.append(paid("v2"))  # nothing owed for it: the lane did not ask
        q.ack(queued(q))  # forwarded and deleted: the owed passage stays
    with RecordQueue(path, LANE, 10**8) as q:
        assert q.owed() == [OwedPassage(record.record_id, "v1", 2, CODE, 1_700_000_000_250_000)]


def test_a_refund_record_ends_it_in_its_own_commit_and_served_forgets_it(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite3", LANE, 10**8) as q:
        first = q.append(paid("v1"), owes=CODE)
        second = q.append(paid("v2"), owes="other")
        assert [o.record_id for o in q.owed()] == [first.record_id, second.record_id]
        q.append(refund(first.record_id), ends_owed=first.record_id)
        assert [o.record_id for o in q.owed()] == [second.record_id]
        q.served([second.record_id])
        q.served([second.record_id])  # twice: nothing left to forget
        assert q.owed() == []


def test_a_record_not_written_owes_nothing(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite3", LANE, max_bytes=200) as q:
        try:
            q.append(paid(), owes=CODE)
        except QueueFull:
            pass
        else:
            raise AssertionError("a 200-byte queue took a record")
        assert q.owed() == []


def test_a_v3_queue_gets_the_owed_table_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with RecordQueue(path, LANE, 10**8) as q:
        q.append(paid())
    db = sqlite3.connect(path)  # back to the v3 layout
    db.execute("DROP TABLE owed")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with RecordQueue(path, LANE, 10**8) as q:
        assert q.owed() == []
        record = q.append(paid("v2"), owes=CODE)
        assert [o.record_id for o in q.owed()] == [record.record_id]
