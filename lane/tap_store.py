"""A metro gate's store of the line's tap-ins, by account (docs/closed-road.md#metro).

Every approved `tap_in` record the line's entry gates share (lane.tap_desk) is kept here whole
(its station, time and what it charged, which the exit takes off the trip's fare) with the
passenger's account reference, so an exit gate finds the open tap-in of the account whose
code is shown without asking anyone. A tap-in is kept until `expires` (its time + the line's
retention, twice the trip time limit: an exit after the limit is still known as over time),
then purged, or dropped once its entry gate refunds it (the passenger was never let in); the
store is bounded by the traffic of that window. Whether a tap-in has exited
is not kept here: it is the replay store's `pass:` key (lane.auth.replay), like a road pass.
The exits the replay store did not take while it failed (lane.tap_desk: held until marked) are
kept here too (`held`, schema 2; who made each, schema 3), and so are the refunded exits whose
marks it did not give back (`unreleased`, schema 4: held until reopened), each naming its exit
record (schema 5), so a restart before the replay store heals still knows them.

SQLite in WAL mode (synchronous NORMAL: a tap-in lost in a power cut is heard again from no
one, but costs only a maximum fare, never a free ride). The calls block; the asyncio shell
runs them with `asyncio.to_thread`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from lane.auth.replay import ReplayStoreError, immediate, migrate, refuse_newer
from lane.sqlite_schema import Migration, use_wal
from uplink.records import Record


class TapStoreError(RuntimeError):
    """The tap store cannot be opened or written."""


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE taps ("
        " trip TEXT PRIMARY KEY,"  # the tap-in's trip id (hex), as the tap_out record names it
        " account TEXT NOT NULL,"
        " ts_us INTEGER NOT NULL,"
        " expires REAL NOT NULL,"
        " record BLOB NOT NULL"  # the encoded tap_in record (uplink.records.Record)
        ") WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX taps_account ON taps (account, ts_us)")
    conn.execute("CREATE INDEX taps_expires ON taps (expires)")


def _add_held_v2(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE held ("
        " key TEXT PRIMARY KEY,"  # the replay store's key of an exited tap-in (`pass:<trip>`)
        " exp INTEGER NOT NULL"  # the mark's expiry (unix s), as the replay store keeps it
        ") WITHOUT ROWID"
    )


def _add_held_lane_v3(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE held ADD COLUMN lane TEXT")  # NULL: this gate's own exit
    conn.execute("ALTER TABLE held ADD COLUMN seen_at REAL")  # a heard exit's time, its clock


def _add_unreleased_v4(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE unreleased ("
        " key TEXT PRIMARY KEY,"  # the replay store's key of a reopened tap-in (`pass:<trip>`)
        " exp INTEGER NOT NULL,"  # kept until then (unix s): no mark it gives back outlives it
        " lane TEXT,"  # whose mark it gives back: NULL this gate's, else heard from that gate
        " seen_at REAL"  # the refunded exit's time (that gate's clock): no newer mark goes
        ") WITHOUT ROWID"
    )


def _add_exit_id_v5(conn: sqlite3.Connection) -> None:
    # The exit record whose mark is held, or whose refund is: NULL in a row of an older release
    # (its mark named by no exit, its refund judged by time alone, lane.core.exit_marks).
    for table in ("held", "unreleased"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN exit_id TEXT")


MIGRATIONS: tuple[Migration, ...] = (
    _create_v1,
    _add_held_v2,
    _add_held_lane_v3,
    _add_unreleased_v4,
    _add_exit_id_v5,
)


class Held(NamedTuple):
    """An exit held until the replay store marks it: the mark's expiry (unix s) and who made
    it: this gate (`lane` None), or another gate of the line, heard at `seen_at` by its clock
    (marked as heard, `ReplayStore.mark_remote`, so that gate's refund gives it back). A
    refund held until the replay store gives the mark back has the same fields: kept until
    `exp`, whose mark (`lane`) and the refunded exit's time (`seen_at`: a newer mark stays).
    `exit_id` is the exit record (its own, or the refunded one): a refund gives back only
    that exit's use (lane.core.exit_marks)."""

    exp: int
    lane: str | None = None
    seen_at: float | None = None
    exit_id: str | None = None


# The trip `probe` keeps and removes again: no trip id (hex) has this form.
PROBE_TRIP = "probe:taps-store"


class TapStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise TapStoreError(f"{self.path}: cannot open: {exc}") from exc
        try:
            refuse_newer(self._conn, len(MIGRATIONS), self.path)  # before WAL changes the file
            use_wal(self._conn)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            migrate(self._conn, MIGRATIONS, self.path)
        except sqlite3.Error as exc:
            self._conn.close()
            raise TapStoreError(f"{self.path}: cannot open: {exc}") from exc
        except ReplayStoreError as exc:  # a newer schema: the check's own text names the file
            self._conn.close()
            raise TapStoreError(str(exc)) from exc

    def add(  # noqa: PLR0917 - one row's columns
        self, trip: str, account: str, ts_us: int, expires: float, record: bytes, now: float
    ) -> bool:
        """Keep a tap-in (and forget the expired ones); True when it was new."""
        with immediate(self._conn, self._lock, self._error):
            self._conn.execute("DELETE FROM taps WHERE expires < ?", (now,))
            new = self._conn.execute(
                "INSERT INTO taps VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (trip, account, ts_us, expires, record),
            ).rowcount
        return new == 1

    def drop(self, trip: str, lane: str) -> bool:
        """Forget a tap-in refunded at its entry gate `lane` (the passenger was never let in):
        it prices no exit and takes nothing off one. True when it was kept here; a tap-in of
        another gate stays (only the gate that wrote a tap-in refunds it)."""
        with immediate(self._conn, self._lock, self._error):
            rows = self._conn.execute("SELECT record FROM taps WHERE trip = ?", (trip,))
            if not any(_lane_of(bytes(row[0])) == lane for row in rows.fetchall()):
                return False
            self._conn.execute("DELETE FROM taps WHERE trip = ?", (trip,))
        return True

    def hold(self, held: Mapping[str, Held], unreleased: Mapping[str, Held], now: float) -> None:
        """Keep exactly these exits held until the replay store marks them, and these refunds
        held until it gives their marks back (by pass key), in place of those kept before; an
        expired one is not kept."""
        with immediate(self._conn, self._lock, self._error):
            for table, rows in (("held", held), ("unreleased", unreleased)):
                self._conn.execute(f"DELETE FROM {table}")
                self._conn.executemany(
                    f"INSERT INTO {table} (key, exp, lane, seen_at, exit_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(key, *h) for key, h in rows.items() if h.exp >= now],
                )

    def held(self, now: float) -> dict[str, Held]:
        """The exits kept held (by pass key), but the expired ones."""
        return self._kept("held", now)

    def unreleased(self, now: float) -> dict[str, Held]:
        """The refunds kept held (by pass key), but the expired ones."""
        return self._kept("unreleased", now)

    def _kept(self, table: str, now: float) -> dict[str, Held]:
        with self._lock:
            try:
                rows = self._conn.execute(
                    f"SELECT key, exp, lane, seen_at, exit_id FROM {table} WHERE exp >= ?",
                    (now,),
                )
                return {
                    str(key): Held(int(exp), lane, seen_at, exit_id)
                    for key, exp, lane, seen_at, exit_id in rows.fetchall()
                }
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def probe(self) -> None:
        """Keep a tap-in and take it back in one transaction: the write `add` makes, in the
        pages it makes it in. Raises TapStoreError while the store could not keep a tap-in
        (locked past the wait, corrupt, an I/O error); leaves nothing behind."""
        with immediate(self._conn, self._lock, self._error):
            self._conn.execute(
                "INSERT OR REPLACE INTO taps VALUES (?, '', 0, 0, x'')", (PROBE_TRIP,)
            )
            self._conn.execute("DELETE FROM taps WHERE trip = ?", (PROBE_TRIP,))

    def _error(self, exc: sqlite3.Error) -> TapStoreError:
        return TapStoreError(f"{self.path}: {exc}")

    def latest(
        self, account: str, now: float, skip: Mapping[str, str] | None = None
    ) -> bytes | None:
        """The account's latest tap-in not yet expired (encoded record), but those `skip` names
        (trip: the gate that refunded it, not dropped yet: lane.tap_desk) and that gate wrote
        (as `drop` would drop), or None."""
        skip = skip or {}
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT trip, record FROM taps WHERE account = ? AND expires >= ?"
                    " ORDER BY ts_us DESC",
                    (account, now),
                )
                return next(
                    (
                        bytes(record)
                        for trip, record in rows
                        if trip not in skip or _lane_of(bytes(record)) != skip[trip]
                    ),
                    None,
                )
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM taps").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _lane_of(encoded: bytes) -> str | None:
    """The gate that wrote a kept tap-in (None for a row that no longer decodes)."""
    record = Record.readable(encoded)
    return None if record is None else record.lane
