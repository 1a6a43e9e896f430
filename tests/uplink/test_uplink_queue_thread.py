"""One disk story: the lane's queue calls all run on one thread that owns the connection, and
SQLite errors are classified by their result code, not by the words of the message."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from disk_kit import frozen
from polling import eventually
from uplink_kit import draft

from uplink.messages import Held, digest
from uplink.queue import QueueCorrupt, QueueDiskFull, QueueError, RecordQueue, _classify
from uplink.queue_thread import QueueThread
from uplink.records import Record, RecordDraft

LANE = "p1/l1"


class ThreadSpy(RecordQueue):
    """The real queue, noting the thread of every call made to it."""

    threads: set[int]

    def append(
        self,
        draft: RecordDraft,
        owes: str | None = None,
        ends_owed: str | None = None,
        owed_pass: str | None = None,
    ) -> Record:
        self.threads.add(threading.get_ident())
        return super().append(draft, owes, ends_owed, owed_pass)

    def backlog(self):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        return super().backlog()

    def batch(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        self.threads.add(threading.get_ident())
        return super().batch(after_seq, limit)

    def ack(self, held):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        return super().ack(held)

    def writable(self) -> bool:
        self.threads.add(threading.get_ident())
        return super().writable()

    def close(self) -> None:
        self.threads.add(threading.get_ident())
        super().close()


async def test_one_thread_opens_uses_and_closes_the_connection(tmp_path: Path) -> None:
    opened_on: list[int] = []

    def opener() -> RecordQueue:
        opened_on.append(threading.get_ident())
        spy = ThreadSpy(tmp_path / "q.sqlite", LANE, 10**8)
        spy.threads = set()
        return spy

    queue = await QueueThread.open(opener)
    spy = queue.sync
    assert isinstance(spy, ThreadSpy)
    # Many calls at once, as the runner, the forwarder and the health loop make them.
    records = await asyncio.gather(*(queue.append(draft(i)) for i in range(20)))
    await asyncio.gather(queue.backlog(), queue.batch(0, 5), queue.writable(), queue.backlog())
    rows = await queue.batch(0, 3)
    held = [
        Held(seq, r.record_id, digest(data))
        for (seq, data), r in zip(rows, records[:3], strict=True)
    ]
    assert await queue.ack(held) == [1, 2, 3]
    await queue.aclose()
    assert spy.threads == set(opened_on)
    assert threading.get_ident() not in spy.threads
    with pytest.raises(QueueError, match="queue closed"):
        await queue.backlog()
    await queue.aclose()  # twice is harmless


def raised_by(db: sqlite3.Connection, sql: str) -> sqlite3.Error:
    try:
        db.execute(sql)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"{sql} did not fail")


def test_errors_are_classified_by_sqlite_result_code(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    db = sqlite3.connect(tmp_path / "full.sqlite", isolation_level=None)
    db.execute("CREATE TABLE t (b BLOB)")
    db.execute("PRAGMA max_page_count = 2")
    full = raised_by(db, "INSERT INTO t VALUES (zeroblob(100000))")
    assert isinstance(_classify(path, full), QueueDiskFull)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all, " * 100)
    junk = sqlite3.connect(tmp_path / "junk.sqlite")
    assert isinstance(_classify(path, raised_by(junk, "SELECT * FROM t")), QueueCorrupt)
    missing = raised_by(db, "SELECT * FROM missing")
    classified = _classify(path, missing)
    assert type(classified) is QueueError
    assert "SQLITE_ERROR" in str(classified)


def test_the_message_text_alone_classifies_nothing(tmp_path: Path) -> None:
    """An error that merely says 'disk is full' or 'malformed', with no SQLite code (raised by
    a wrapper, reworded by a driver), is a plain QueueError: no guess from words."""
    path = tmp_path / "q.sqlite"
    for text in ("database or disk is full", "database disk image is malformed"):
        classified = _classify(path, sqlite3.OperationalError(text))
        assert type(classified) is QueueError, text


async def test_a_call_on_a_hung_disk_waits_until_it_answers_even_when_its_caller_gave_up(
    ext4_fs: Path,
) -> None:
    """On a frozen file system (a hung disk) an append waits; `waiting_since` says since when,
    on the clock given, also after its caller stopped waiting (the thread is still stuck in it,
    and every later call in line behind it), and is None once the thawed disk answered."""
    now = [100.0]
    queue = await QueueThread.open(
        lambda: RecordQueue(ext4_fs / "queue.sqlite3", LANE, 10**8), lambda: now[0]
    )
    try:
        assert queue.waiting_since() is None
        with frozen(ext4_fs):
            append = asyncio.ensure_future(queue.append(draft()))
            await eventually(lambda: queue.waiting_since() == 100.0)  # handed to the thread
            now[0] = 101.0
            backlog = asyncio.ensure_future(queue.backlog())  # in line behind the append
            append.cancel()
            with pytest.raises(asyncio.CancelledError):
                await append
            assert queue.waiting_since() == 100.0
            assert not backlog.done()
        assert (await backlog).count == 1  # the append went through once the disk answered
        await eventually(lambda: queue.waiting_since() is None)
    finally:
        await queue.aclose()


async def test_only_a_commit_that_wrote_says_the_disk_answers(ext4_fs: Path) -> None:
    """`wrote_at` stands for the disk probe's write (lane.disk_probe): an append or an ack
    that deleted a record moves it. An ack that deletes nothing (a back office's ack heard
    twice) or a keyed append found already commits nothing, and returns on a frozen disk: it
    used to move `wrote_at` too, and the probe skipped its write on a disk that did not answer."""
    now = [100.0]
    queue = await QueueThread.open(
        lambda: RecordQueue(ext4_fs / "queue.sqlite3", LANE, 10**8), lambda: now[0]
    )
    try:
        record = await queue.append(draft())
        await queue.append_once(draft(1), "refund-1")
        assert queue.wrote_at() == 100.0
        now[0] = 101.0
        held = Held(record.seq, record.record_id, digest(record.encode()))
        # A read since the last commit (the lane's queue loop reads every second): SQLite's
        # read mark for it is set already, so nothing that follows writes to the disk.
        await queue.backlog()
        with frozen(ext4_fs):
            assert await asyncio.wait_for(queue.append_once(draft(1), "refund-1"), 5) is None
            assert await asyncio.wait_for(queue.ack([Held(999, "gone", b"x")]), 5) == []
            assert queue.wrote_at() == 100.0
        now[0] = 102.0
        assert await queue.ack([held]) == [record.seq]
        assert queue.wrote_at() == 102.0
    finally:
        await queue.aclose()
