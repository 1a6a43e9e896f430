"""The replay store: ids of offline tokens already used, kept until they expire (rule 4).

SQLite in WAL mode with synchronous=FULL, so a use is on disk before the lane acts on it and
survives a power cut or restart. `check_and_mark` is one INSERT ... ON CONFLICT DO NOTHING: the
database decides atomically who was first, whether the callers are two threads or two
processes. Ids learned from the other lanes of the plaza go in with `mark_remote`.

The calls block (fsync); the asyncio shell runs them with `asyncio.to_thread`. The schema is
versioned with PRAGMA user_version; `MIGRATIONS[i]` takes a file from version i to i + 1.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

Migration = Callable[[sqlite3.Connection], None]


class ReplayStoreError(RuntimeError):
    """The replay store cannot be opened or written: the lane must refuse offline tokens."""


@dataclass(frozen=True)
class UsedToken:
    token_id: str
    exp: int
    lane: str
    seen_at: float | None
    remote: bool


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE used_tokens ("
        " token_id TEXT PRIMARY KEY,"
        " exp INTEGER NOT NULL,"
        " lane TEXT NOT NULL,"
        " seen_at REAL,"
        " remote INTEGER NOT NULL"
        ") WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX used_tokens_exp ON used_tokens (exp)")


MIGRATIONS: tuple[Migration, ...] = (_create_v1,)


def refuse_newer(conn: sqlite3.Connection, target: int, source: str) -> int:
    """The file's schema version; a newer one than this software knows is refused."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > target:
        raise ReplayStoreError(
            f"{source}: schema version {version} is newer than this lane knows ({target})"
        )
    return int(version)


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], source: str) -> int:
    """Bring the file to `len(migrations)`; each step commits with its new version number."""
    target = len(migrations)
    version = refuse_newer(conn, target, source)
    for step in range(version, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[step](conn)
            conn.execute(f"PRAGMA user_version = {step + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return target


class ReplayStore:
    def __init__(
        self,
        path: str | Path,
        *,
        keep_after_exp_s: float = 600.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        """`keep_after_exp_s` must cover the verifier's clock skew: an entry is only purged
        once no lane could still accept its token."""
        self.path = str(path)
        self.keep_after_exp_s = keep_after_exp_s
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"{self.path}: cannot open: {exc}") from exc
        try:
            refuse_newer(self._conn, len(migrations), self.path)  # before WAL changes the file
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self.schema_version = migrate(self._conn, migrations, self.path)
        except sqlite3.Error as exc:
            self._conn.close()
            raise ReplayStoreError(f"{self.path}: cannot open: {exc}") from exc
        except ReplayStoreError:
            self._conn.close()
            raise

    def check_and_mark(self, token_id: str, exp: int, lane: str, now: float) -> bool:
        """Record a local use; True when this is the first use anywhere we know of."""
        return self._insert(token_id, exp, lane, now, remote=False)

    def mark_remote(self, token_id: str, exp: int, lane: str, seen_at: float | None = None) -> bool:
        """Record a use reported by another lane; True when it was new to us."""
        return self._insert(token_id, exp, lane, seen_at, remote=True)

    def get(self, token_id: str) -> UsedToken | None:
        rows = self._query(
            "SELECT token_id, exp, lane, seen_at, remote FROM used_tokens WHERE token_id = ?",
            (token_id,),
        )
        if not rows:
            return None
        row = rows[0]
        return UsedToken(row[0], row[1], row[2], row[3], bool(row[4]))

    def purge(self, now: float) -> int:
        """Forget uses whose tokens no lane can accept any more; returns how many."""
        cutoff = now - self.keep_after_exp_s
        return self._execute("DELETE FROM used_tokens WHERE exp < ?", (cutoff,))

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM used_tokens", ())[0][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _insert(
        self, token_id: str, exp: int, lane: str, seen_at: float | None, *, remote: bool
    ) -> bool:
        changed = self._execute(
            "INSERT INTO used_tokens (token_id, exp, lane, seen_at, remote)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (token_id) DO NOTHING",
            (token_id, exp, lane, seen_at, int(remote)),
        )
        return changed == 1

    def _execute(self, sql: str, params: tuple[object, ...]) -> int:
        with self._lock:
            try:
                rowcount: int = self._conn.execute(sql, params).rowcount
                return rowcount
            except sqlite3.Error as exc:
                raise ReplayStoreError(f"{self.path}: {exc}") from exc

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise ReplayStoreError(f"{self.path}: {exc}") from exc
