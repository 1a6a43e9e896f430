"""The queue keeps the passages the lane owes paid vehicles (lane.core.carried).

A paid record's owed passage is written in the record's own commit, so no crash can leave the
record without it; a `paid_not_passed` record ends it in its own commit, so no crash can leave
both or neither; `served` forgets it once the vehicle is through, in a commit of its own that is
not fsynced (synchronous=NORMAL for it alone: it survives a kill -9, and every other commit stays
FULL). The lane reads what is left at its next start, whatever the back office has acknowledged
and deleted meanwhile.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from uplink_kit import queued

from uplink.queue import MIGRATIONS, OwedPassage, QueueError, QueueFull, RecordQueue
from uplink.records import AuthInfo, RecordDraft

LANE = "p1/l1"
CODE = "3f1c0aa1b2c3d4e5f60718293a4b5c6d"  # a code's digest (lane.core.records.credential_of)


# A lane process: two paid records owe their passages, the second vehicle goes through; it
# prints both record ids once `served` returned, then waits to be killed (nothing is closed).
SERVED_THEN_KILLED = """
import sys
from pathlib import Path
from uplink.queue import RecordQueue
from uplink.records import AuthInfo, RecordDraft
d = RecordDraft(kind="toll", vehicle_id="v", vehicle_class=2, amount_minor=480, currency="EUR",
                method="token", account_ref="a", auth=AuthInfo("approved"))
q = RecordQueue(Path(sys.argv[1]), sys.argv[2], 10**8)
kept, gone = q.append(d, owes="kept"), q.append(d, owes="gone")
q.served(gone.record_id)
print(kept.record_id, gone.record_id, flush=True)
sys.stdin.readline()
"""


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
        q.served(second.record_id)
        q.served(second.record_id)  # twice: nothing left to forget
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
    db.execute("DROP TABLE keyed")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    with RecordQueue(path, LANE, 10**8) as q:
        assert q.owed() == []
        record = q.append(paid("v2"), owes=CODE)
        assert [o.record_id for o in q.owed()] == [record.record_id]


def test_an_exit_keeps_the_pass_it_marked_with_its_owed_passage(tmp_path: Path) -> None:
    """A paid exit's refund after a restart releases the pass (a metro tap-in) it marked: the
    owed row keeps it, over a reopen and an ack."""
    path = tmp_path / "q.sqlite3"
    with RecordQueue(path, LANE, 10**8) as q:
        exit_record = q.append(paid("v1"), owes=CODE, owed_pass="9f2c")
        toll = q.append(paid("v2"), owes="other")
        q.ack(queued(q))
    with RecordQueue(path, LANE, 10**8) as q:
        assert [(o.record_id, o.pass_id) for o in q.owed()] == [
            (exit_record.record_id, "9f2c"),
            (toll.record_id, None),
        ]


def v5_file(path: Path) -> str:
    """A queue of schema v5 (its owed table without a pass) owing one passage: its record id."""
    with RecordQueue(path, LANE, 10**8) as q:
        record = q.append(paid(), owes=CODE)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE owed DROP COLUMN pass_id")
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()
    return record.record_id


def test_a_v5_queue_keeps_its_owed_passage_and_keeps_passes_once_migrated(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    before = v5_file(path)
    with RecordQueue(path, LANE, 10**8) as q:
        # Owed across the upgrade: its pass was never kept, so its refund releases none.
        assert [(o.record_id, o.pass_id) for o in q.owed()] == [(before, None)]
        after = q.append(paid("v2"), owes="other", owed_pass="9f2c")
        assert [o.pass_id for o in q.owed() if o.record_id == after.record_id] == ["9f2c"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 6 == max(MIGRATIONS) + 1


def test_an_upgrade_cut_short_leaves_the_v5_file_and_resumes_at_the_next_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.sqlite3"
    before = v5_file(path)

    def cut_short(db: sqlite3.Connection) -> None:
        MIGRATIONS[5](db)
        raise sqlite3.OperationalError("disk I/O error")  # the lane died within the step

    with pytest.raises(QueueError):
        RecordQueue(path, LANE, 10**8, migrations={**MIGRATIONS, 5: cut_short})
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        columns = [r[1] for r in db.execute("PRAGMA table_info(owed)")]
        assert "pass_id" not in columns  # rolled back whole
    with RecordQueue(path, LANE, 10**8) as q:
        assert [(o.record_id, o.pass_id) for o in q.owed()] == [(before, None)]


def test_a_served_delete_survives_a_kill_9_right_after_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", SERVED_THEN_KILLED, str(path), LANE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else b""
        kept, gone = line.decode().split()
    finally:
        child.kill()  # SIGKILL: no close, no checkpoint; the WAL is as `served` left it
        child.communicate()
    with RecordQueue(path, LANE, 10**8) as q:
        assert [o.record_id for o in q.owed()] == [kept]
        assert gone != kept


def commit_levels(statements: list[str]) -> list[str]:
    """The synchronous level each COMMIT in `statements` ran at (the queue opens at FULL)."""
    level, levels = "FULL", []
    for statement in statements:
        if m := re.fullmatch(r"PRAGMA synchronous=(\w+)", statement.strip()):
            level = m.group(1)
        elif statement.strip() == "COMMIT":
            levels.append(level)
    return levels


def synchronous(q: RecordQueue) -> int:
    return int(q._db.execute("PRAGMA synchronous").fetchone()[0])


def test_only_the_served_delete_commits_without_an_fsync(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite3", LANE, 10**8) as q:
        statements: list[str] = []
        q._db.set_trace_callback(statements.append)
        first = q.append(paid("v1"), owes=CODE)
        q.served(first.record_id)
        q.append(paid("v2"), owes=CODE)  # the next vehicle's paid record: fsynced
        q.ack(queued(q))
        q._db.set_trace_callback(None)
        assert commit_levels(statements) == ["FULL", "NORMAL", "FULL", "FULL"]
        assert synchronous(q) == 2  # FULL


def test_a_served_delete_that_fails_leaves_every_other_commit_fsynced(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with RecordQueue(path, LANE, 10**8, sqlite_pragmas={"busy_timeout": 50}) as q:
        record = q.append(paid(), owes=CODE)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the file: the delete cannot begin
        with pytest.raises(QueueError, match="SQLITE_BUSY"):
            q.served(record.record_id)
        other.execute("ROLLBACK")
        other.close()
        assert synchronous(q) == 2  # FULL, for the next paid record
        q.served(record.record_id)
        assert q.owed() == []


def test_a_served_delete_puts_back_the_level_the_queue_was_opened_with(tmp_path: Path) -> None:
    # `sqlite_pragmas` may set another level (the benchmark's backlog runs at OFF): after the
    # delete's own NORMAL commit it is that level again, not FULL.
    with RecordQueue(
        tmp_path / "q.sqlite3", LANE, 10**8, sqlite_pragmas={"synchronous": "OFF"}
    ) as q:
        q.served(q.append(paid(), owes=CODE).record_id)
        assert synchronous(q) == 0  # OFF
