from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from uplink_kit import append_then_kill, draft, queued

from lane.wire.codec import pack, unpack
from uplink.messages import Held, digest
from uplink.queue import (
    MIGRATIONS,
    QueueCorrupt,
    QueueDiskFull,
    QueueError,
    QueueFull,
    RecordQueue,
)
from uplink.records import Record

LANE = "p01/l01"


class FakeWall:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_append_stamps_id_seq_and_utc_microseconds(tmp_path: Path) -> None:
    wall = FakeWall()
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10_000_000, wall=wall) as q:
        a = q.append(draft(1))
        b = q.append(draft(2))
    assert (a.seq, b.seq) == (1, 2)
    assert a.ts_us == 1_700_000_000_001_000
    assert a.lane == LANE and a.draft == draft(1)
    assert uuid.UUID(a.record_id).version == 7
    assert uuid.UUID(a.record_id).int >> 80 == a.ts_us // 1000  # id time = record time
    assert a.record_id != b.record_id


def test_batch_returns_stored_bytes_in_seq_order(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10_000_000) as q:
        recs = [q.append(draft(i)) for i in range(10)]
        rows = q.batch(3, 4)
        assert [s for s, _ in rows] == [4, 5, 6, 7]
        assert [Record.decode(d) for _, d in rows] == recs[3:7]
        assert q.batch(10, 5) == []


def test_ack_deletes_only_acknowledged_and_backlog_follows(tmp_path: Path) -> None:
    wall = FakeWall()
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10_000_000, wall=wall) as q:
        recs = [q.append(draft(i)) for i in range(5)]
        assert q.backlog().count == 5
        assert q.backlog().oldest_ts_us == recs[0].ts_us
        first3 = queued(q, 3)
        assert q.ack(first3) == [1, 2, 3]
        assert q.ack(first3) == []  # repeated ack is harmless
        b = q.backlog()
        assert (b.count, b.oldest_ts_us) == (2, recs[3].ts_us)
        assert [s for s, _ in q.batch(0, 10)] == [4, 5]
        q.ack(queued(q))
        assert q.backlog().count == 0 and q.backlog().oldest_ts_us is None


def test_ack_deletes_a_record_only_for_its_own_id_and_content(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite", LANE, 10_000_000) as q:
        recs = [q.append(draft(i)) for i in range(4)]
        exact = {h.seq: h for h in queued(q)}
        other_id = Held(1, "some-other-record", exact[1].digest)
        other_content = Held(2, recs[1].record_id, digest(b"another version"))
        wrong_seq = Held(4, recs[2].record_id, exact[3].digest)
        assert q.ack([other_id, other_content, wrong_seq]) == []
        assert q.backlog().count == 4
        # Out of order, with holes: each named record goes, nothing else.
        assert q.ack([exact[3]]) == [3]
        assert [s for s, _ in q.batch(0, 10)] == [1, 2, 4]
        b = q.backlog()
        assert (b.count, b.oldest_ts_us) == (3, recs[0].ts_us)


def test_a_new_queue_has_its_own_epoch_kept_across_reopening(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "a.sqlite", LANE, 10_000_000) as q:
        a = q.identity
    with RecordQueue(tmp_path / "a.sqlite", LANE, 10_000_000) as q:
        assert q.identity == a
    with RecordQueue(tmp_path / "b.sqlite", LANE, 10_000_000) as q:
        assert q.identity.epoch != a.epoch  # a replacement file is a new epoch
        assert q.identity.base == 0 == a.base


def test_seq_never_goes_back_after_everything_is_acked_and_reopened(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with RecordQueue(path, LANE, 10_000_000) as q:
        for i in range(3):
            q.append(draft(i))
        q.ack(queued(q))
    with RecordQueue(path, LANE, 10_000_000) as q:
        assert q.last_seq() == 3
        assert q.append(draft(9)).seq == 4
        assert q.record_count_total() == 4


def test_queue_full_refuses_and_keeps_everything(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite", LANE, 48_000) as q:
        written = []
        with pytest.raises(QueueFull) as err:
            for i in range(10_000):
                written.append(q.append(draft(i)))
        assert str(tmp_path / "q.sqlite") in str(err.value)
        assert isinstance(err.value, QueueError)
        assert len(written) > 10
        assert q.backlog().high_water_reached
        assert [Record.decode(d) for _, d in q.batch(0, 100_000)] == written
        assert q.last_seq() == len(written)  # the refused append used no seq
        q.ack(queued(q))  # the back office caught up: room again
        assert not q.backlog().high_water_reached
        assert q.append(draft(0)).seq == len(written) + 1


def test_high_water_flag_before_full(tmp_path: Path) -> None:
    with RecordQueue(tmp_path / "q.sqlite", LANE, 100_000, high_water=0.5) as q:
        while not q.backlog().high_water_reached:
            q.append(draft(0))
        assert q.backlog().bytes_used < 100_000


def test_sqlite_disk_full_is_a_queue_error_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    written = []
    # max_page_count makes SQLite answer exactly as on ENOSPC: "database or disk is full".
    with RecordQueue(path, LANE, 10**9, sqlite_pragmas={"max_page_count": 12}) as q:
        with pytest.raises(QueueDiskFull) as err:
            for i in range(10_000):
                written.append(q.append(draft(i)))
        assert "disk is full" in str(err.value) and str(path) in str(err.value)
        assert q.last_seq() == len(written)
    with RecordQueue(path, LANE, 10**9) as q:  # space again (disk cleaned up)
        assert [Record.decode(d) for _, d in q.batch(0, 100_000)] == written
        assert q.append(draft(1)).seq == len(written) + 1


def test_garbage_file_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"this is not a database" * 500)
    before = sha(path)
    with pytest.raises(QueueCorrupt) as err:
        RecordQueue(path, LANE, 10_000_000)
    assert str(path) in str(err.value)
    assert sha(path) == before


def test_corrupted_page_is_detected_and_file_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with RecordQueue(path, LANE, 10_000_000) as q:
        for i in range(200):
            q.append(draft(i))
    raw = bytearray(path.read_bytes())
    raw[4096 * 2 : 4096 * 2 + 2000] = b"\xa5" * 2000  # scribble over a b-tree page
    path.write_bytes(bytes(raw))
    before = sha(path)
    with pytest.raises(QueueCorrupt) as err:
        RecordQueue(path, LANE, 10_000_000)
    assert str(path) in str(err.value)
    assert sha(path) == before
    assert list(tmp_path.glob("*.init.*")) == []


def test_a_creation_cut_short_by_its_process_s_death_is_cleared_and_a_live_one_s_left(
    tmp_path: Path,
) -> None:
    """The temporary files of a creation whose process died (a crash, a power cut) go at the
    next creation; another process's, still building its own, stays for it to finish."""
    path = tmp_path / "q.sqlite"
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = path.with_name(f"{path.name}.init.{ended.pid}.0a1b2c3d")
    live = path.with_name(f"{path.name}.init.{os.getpid()}.0a1b2c3d")
    for leftover in (dead, live, dead.with_name(dead.name + "-wal")):
        leftover.write_bytes(b"half-built")
    with RecordQueue(path, LANE, 10_000_000) as q:
        q.append(draft(1))
    assert sorted(tmp_path.glob("*.init.*")) == [live]


def test_a_creator_that_looked_before_another_linked_its_queue_in_takes_that_queue(
    tmp_path: Path,
) -> None:
    """A creator found no file, and another creator linked its queue in and wrote a record
    before the first came to create its own: the WAL it finds is that queue's, not a stray one
    beside a missing file. It takes that queue (its creation gives way), record and all; it
    used to refuse the start ("queue file missing but ...-wal exists")."""
    path = tmp_path / "q.sqlite"
    with RecordQueue(path, LANE, 10_000_000) as first:
        record = first.append(draft(1))
        assert path.with_name(path.name + "-wal").stat().st_size > 0
        with RecordQueue(path, LANE, 10_000_000) as late:
            late._create(MIGRATIONS)  # the creation the late one was on its way to
            assert [Record.decode(data).record_id for _, data in late.batch(0, 10)] == [
                record.record_id
            ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_empty_file_is_not_silently_initialised(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    path.touch()
    with pytest.raises(QueueCorrupt):
        RecordQueue(path, LANE, 10_000_000)
    assert path.stat().st_size == 0


def test_foreign_sqlite_file_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    before = sha(path)
    with pytest.raises(QueueCorrupt):
        RecordQueue(path, LANE, 10_000_000)
    assert sha(path) == before


def test_queue_of_another_lane_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    RecordQueue(path, LANE, 10_000_000).close()
    with pytest.raises(QueueError, match="belongs to lane"):
        RecordQueue(path, "p01/l02", 10_000_000)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    RecordQueue(path, LANE, 10_000_000).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.close()
    with pytest.raises(QueueError, match="newer"):
        RecordQueue(path, LANE, 10_000_000)


def test_migration_upgrades_in_place_and_keeps_old_record_bytes(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with RecordQueue(path, LANE, 10_000_000) as q:
        q.append(draft(1))
        # A record in an older encoding (different key order, an extra legacy field): whatever
        # it is, it must leave the queue byte for byte as it was written.
        body = unpack(q.batch(0, 1)[0][1])
        body.pop("v")
        legacy = pack({"legacy_note": "x", **dict(reversed(list(body.items())))}, v=1)
        legacy_db = sqlite3.connect(path)
        legacy_db.execute("UPDATE records SET data=? WHERE seq=1", (legacy,))
        legacy_db.commit()
        legacy_db.close()

    def add_note_column(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE records ADD COLUMN note TEXT")

    steps = {**MIGRATIONS, len(MIGRATIONS): add_note_column}
    with RecordQueue(path, LANE, 10_000_000, migrations=steps) as q:
        assert q.batch(0, 1) == [(1, legacy)]
        assert q.append(draft(2)).seq == 2
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
    db.close()


def test_kill_9_while_appending_loses_no_returned_record(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    RecordQueue(path, LANE, 10**9).close()
    confirmed: dict[int, str] = {}
    for _round in range(2):
        append_then_kill(path, LANE, 150, confirmed)
    with RecordQueue(path, LANE, 10**9) as q:
        rows = q.batch(0, 10**6)
        seqs = [s for s, _ in rows]
        assert seqs == list(range(1, q.last_seq() + 1))  # gap-free
        held = {s: Record.decode(d).record_id for s, d in rows}
        for seq, rid in confirmed.items():
            assert held[seq] == rid
        assert q.record_count_total() == q.last_seq()


def test_unwritable_directory_is_a_queue_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(QueueError) as err:
        RecordQueue(blocker / "q.sqlite", LANE, 10_000_000)
    assert "q.sqlite" in str(err.value)


def test_a_v2_queue_gets_an_epoch_beginning_at_its_oldest_queued_record(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with RecordQueue(path, LANE, 10_000_000) as q:
        for i in range(6):
            q.append(draft(i))
        q.ack(queued(q, 3))  # 1..3 acknowledged under the old contract: the back office has them
        before = q.batch(0, 10)
    db = sqlite3.connect(path)  # back to the v2 layout: no queue identity, nothing owed
    db.execute("DELETE FROM meta WHERE key IN ('epoch', 'base')")
    db.execute("DROP TABLE owed")
    db.execute("DROP TABLE keyed")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    with RecordQueue(path, LANE, 10_000_000) as q:
        assert q.identity.base == 3 and q.identity.epoch
        assert q.batch(0, 10) == before  # never re-encoded
        assert q.append(draft(7)).seq == 7
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == max(MIGRATIONS) + 1
