"""A SQLite store file's schema version (`PRAGMA user_version`) and its migration, for every
store of the project: the lane's queue, replay, payments and taps stores and the back office's
SQLite ingest store.

Two processes may open an old file at the same moment (`lane run` beside `lane refunds`, a
lane restarted while that CLI still has its file, two ingest workers, `lane trips` beside a
worker). Each migration step reads the version only once it holds the file's write lock
(BEGIN IMMEDIATE), and writes the new one in the same transaction: the second opener waits
for the first's step and then finds it made, where reading the version before the lock had
both run it ("table exists" for the loser).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

# One step of a chain: takes a file from version n to n + 1 (in the transaction `migrate` holds).
Migration = Callable[[sqlite3.Connection], None]
# How a file goes forward from the version it is given to the version it returns.
Upgrade = Callable[[sqlite3.Connection, int], int]
# Between two tries of a WAL switch another opener's switch held off (`use_wal`).
WAL_RETRY_S = 0.01
# The store's own exception for a file of a newer version than it knows (the version found).
Newer = Callable[[int], Exception]


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(conn: sqlite3.Connection, known: int, newer: Newer) -> int:
    """The file's version; `newer(version)` is raised when it is beyond `known`. Read-only:
    a store calls it before anything changes the file (not even WAL), so a refused file keeps
    its bytes."""
    version = schema_version(conn)
    if version > known:
        raise newer(version)
    return version


def busy(exc: sqlite3.Error) -> bool:
    """SQLite gave up waiting for a lock another connection holds (SQLITE_BUSY, by its code)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def use_wal(conn: sqlite3.Connection) -> str:
    """Switch the file to WAL; the journal mode it is in then. Two openers switching a new
    file (still in rollback mode) at once would each upgrade a read lock, which SQLite refuses
    one of them at once (SQLITE_BUSY) rather than deadlock, never waiting in the busy handler:
    that one tries again, within the connection's busy timeout, and finds the switch made."""
    timeout_s = int(conn.execute("PRAGMA busy_timeout").fetchone()[0]) / 1000
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if not busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(WAL_RETRY_S)


def chain(steps: Sequence[Migration] | Mapping[int, Migration]) -> Upgrade:
    """An upgrade a step at a time: `steps[n]` takes a file from version n to n + 1."""

    def one(conn: sqlite3.Connection, version: int) -> int:
        steps[version](conn)
        return version + 1

    return one


def migrate(
    conn: sqlite3.Connection, known: int, upgrade: Upgrade, newer: Newer
) -> list[tuple[int, int]]:
    """Bring the file to version `known` (`conn` in autocommit: isolation_level None), each
    call of `upgrade` in a transaction of its own that reads the version again under the write
    lock and writes the one reached. The steps this call made, (from, to) each: none when the file
    was current, or another opener made them first."""
    made: list[tuple[int, int]] = []
    # A current file needs no write lock, which another process may hold for a while (a lane
    # restarted beside a writer): only a file behind is read again under the lock.
    if refuse_newer(conn, known, newer) == known:
        return made
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = refuse_newer(conn, known, newer)
            reached = version if version == known else upgrade(conn, version)
            if reached != version:
                conn.execute(f"PRAGMA user_version = {reached}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if reached == version:
            return made
        made.append((version, reached))
