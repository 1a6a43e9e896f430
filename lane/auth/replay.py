"""The replay store: ids of offline tokens already used, kept until they expire (rule 4).

SQLite in WAL mode with synchronous=FULL, so a use is on disk before the lane acts on it and
survives a power cut or restart. `check_and_mark` is one INSERT ... ON CONFLICT DO NOTHING: the
database decides atomically who was first, whether the callers are two threads or two
processes. Ids learned from the other lanes of the plaza go in with `mark_remote`.

A remote id is kept no longer than this lane could accept what it names: a token whose exp is
beyond now + skew + the token lifetime cap (lane.auth.tokens), or a pass (`pass:` ids) valid
beyond an entry at now + skew plus the pass lifetime (lane.auth.passes), is refused here, so a
later exp (a lane with a bigger cap, a bad peer) is clamped to that bound (`RemoteBounds`)
instead of keeping the id for as long as the peer says.

Purging must survive wall-clock steps (issue #11 item 7): a clock that jumps forward and is
then corrected would otherwise purge ids whose tokens become acceptable again. So each id also
carries `keep_until` on the store's own *ledger*, the seconds this store has been open summed
over every run (monotonic time, persisted): an id goes only when the wall clock says its
`exp + keep_after_exp_s` has passed AND the ledger has run that long since the id came in.
The ledger stands still while the lane is off and cannot be stepped, so a correct wall clock
at the time of use is enough; a wrong one can only keep ids longer.

A metro gate keeps here too the refunded tap-ins its tap store could not drop (lane.tap_desk:
held until dropped; `undropped`, schema 3), as that store keeps the exits this one could not
mark: each store keeps what the other owes, so a restart while one fails still knows it.

A metro tap-in's mark keeps every exit that used it and every exit refunded (`exits`, schema
6, by record id; `exit_id`, schema 5, names the latest stamped standing one): the mark stands
while one of them is not refunded (lane.core.exit_marks), so a refund gives back its own
exit's mark whichever gate made it or refunds it, never another exit's, in any order the
line's messages come in.

A toll-exit lane keeps here too the signed time of the latest plate binding it took per plate,
and whether it was emptied since (lane.trip_desk; `plate_times`, schema 4), while a trip may
last: a lane that restarts still refuses a plate's older binding replayed, or the emptied one.

The calls block (fsync); the asyncio shell runs them with `asyncio.to_thread`. The schema is
versioned with PRAGMA user_version; `MIGRATIONS[i]` takes a file from version i to i + 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from lane import sqlite_schema
from lane.auth.passes import DEFAULT_PASS_LIFETIME_S, USED_PASS_PREFIX, pass_valid_until
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S, DEFAULT_SKEW_S
from lane.core.exit_marks import (
    ExitMark,
    Exits,
    exits_of,
    gives_back,
    mark_of,
    refunded_by,
    used_by,
)
from lane.sqlite_schema import Migration, Newer, chain

log = logging.getLogger(__name__)


class ReplayStoreError(RuntimeError):
    """The replay store cannot be opened or written: the lane must refuse offline tokens."""


@dataclass(frozen=True)
class UsedToken:
    token_id: str
    exp: int
    lane: str
    seen_at: float | None
    remote: bool
    exit_id: str | None = None  # the exit that made the mark last (None: not known)


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


# The id `probe` writes and removes again: no token or pass id has this form.
PROBE_ID = "probe:replay-store"
# Ids stored before the ledger existed: kept this many ledger seconds after the upgrade.
MIGRATED_KEEP_S = 3600.0


def _add_ledger_v2(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"ALTER TABLE used_tokens ADD COLUMN keep_until REAL NOT NULL DEFAULT {MIGRATED_KEEP_S}"
    )
    conn.execute("CREATE TABLE ledger (name TEXT PRIMARY KEY, value REAL NOT NULL)")
    conn.execute("INSERT INTO ledger VALUES ('elapsed', 0)")


def _add_undropped_v3(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE undropped ("
        " trip TEXT PRIMARY KEY,"  # a refunded tap-in's trip id (hex)
        " lane TEXT NOT NULL,"  # the gate that refunded it (and wrote it)
        " expires REAL NOT NULL"  # when it would have expired anyway (unix s)
        ") WITHOUT ROWID"
    )


def _add_plate_times_v4(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE plate_times ("
        " plate TEXT PRIMARY KEY,"  # normalised (lane.auth.trip_rules.normalise_plate)
        " ts REAL NOT NULL,"  # the signed time of the latest binding of it taken (unix s)
        " emptied INTEGER NOT NULL"  # 1: that binding's pass has exited (its tombstone)
        ") WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX plate_times_ts ON plate_times (ts)")


def _add_exit_id_v5(conn: sqlite3.Connection) -> None:
    # The record id of the exit that made the mark last. NULL: a mark of an older release (or
    # a use of another kind), which a refund gives back by its time alone, as that release did.
    conn.execute("ALTER TABLE used_tokens ADD COLUMN exit_id TEXT")


def _add_exits_v6(conn: sqlite3.Connection) -> None:
    # Every exit that used a pass (`used`, at `seen_at` by its gate's clock) and every exit
    # refunded (`refunded`: a refund heard before its exit is kept too), each until `exp` and
    # `keep_until` as a use is. A schema 5 mark's exit is its one exit.
    conn.execute(
        "CREATE TABLE exits ("
        " token_id TEXT NOT NULL,"
        " exit_id TEXT NOT NULL,"
        " used INTEGER NOT NULL,"
        " refunded INTEGER NOT NULL,"
        " seen_at REAL,"
        " exp INTEGER NOT NULL,"
        " keep_until REAL NOT NULL,"
        " PRIMARY KEY (token_id, exit_id)"
        ") WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX exits_exp ON exits (exp)")
    conn.execute(
        "INSERT INTO exits SELECT token_id, exit_id, 1, 0, seen_at, exp, keep_until"
        " FROM used_tokens WHERE exit_id IS NOT NULL"
    )


# A use stored unless its id is kept already: one naming no exit leaves exit_id to the
# column's NULL (bound, a replayed token's check costs a seventh more), one naming its exit.
_INSERT_USE = (
    "INSERT INTO used_tokens (token_id, exp, lane, seen_at, remote, keep_until{})"
    " VALUES (?, ?, ?, ?, ?, ?{}) ON CONFLICT (token_id) DO NOTHING"
)
_INSERT_UNNAMED = _INSERT_USE.format("", "")
_INSERT_NAMED = _INSERT_USE.format(", exit_id", ", ?")

MIGRATIONS: tuple[Migration, ...] = (
    _create_v1,
    _add_ledger_v2,
    _add_undropped_v3,
    _add_plate_times_v4,
    _add_exit_id_v5,
    _add_exits_v6,
)


class PlateTime(NamedTuple):
    """The signed time of a plate's latest binding a toll exit lane took, and whether that
    binding was emptied since (its pass exited); a later one is the greater."""

    ts: float
    emptied: bool


@dataclass(frozen=True)
class RemoteBounds:
    """This lane's verifiers' bounds (auth.skew_s, auth.max_token_lifetime_s, and the pass
    lifetime: road.pass_lifetime_days, or a metro line's tap-in retention), which bound how
    long a remote id is worth keeping."""

    skew_s: float = DEFAULT_SKEW_S
    max_token_lifetime_s: float = DEFAULT_MAX_LIFETIME_S
    pass_lifetime_s: float = DEFAULT_PASS_LIFETIME_S

    def latest_exp(self, used_id: str, now: float) -> int:
        """The latest exp of a use this lane could accept at `now`: a token issued, or a pass
        entered, at now + skew (later is not yet valid), valid as long as this lane allows."""
        issued = now + self.skew_s
        if used_id.startswith(USED_PASS_PREFIX):
            return math.ceil(pass_valid_until(issued, self.skew_s, self.pass_lifetime_s))
        return math.ceil(issued + self.max_token_lifetime_s)

    def kept_exp(self, used_id: str, exp: int, now: float) -> int:
        """The exp a remote id is kept by: its own, or `latest_exp` when it is beyond that
        (a use this lane refuses anyway)."""
        return min(exp, self.latest_exp(used_id, now))


def too_new(source: str, known: int) -> Newer:
    """The lane stores' refusal of a file of a newer schema, naming the file."""
    return lambda version: ReplayStoreError(
        f"{source}: schema version {version} is newer than this lane knows ({known})"
    )


def refuse_newer(conn: sqlite3.Connection, target: int, source: str) -> int:
    """The file's schema version; a newer one than this software knows is refused."""
    return sqlite_schema.refuse_newer(conn, target, too_new(source, target))


@contextlib.contextmanager
def immediate(
    conn: sqlite3.Connection, lock: threading.Lock, fail: Callable[[sqlite3.Error], Exception]
) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT under `lock`; ROLLBACK when the body raises. A SQLite error
    leaves as `fail(error)`: each store's own exception, naming its file."""
    with lock:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise fail(exc) from exc


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], source: str) -> int:
    """Bring the file to `len(migrations)`; each step commits with its new version number,
    one opener at a time (lane.sqlite_schema)."""
    target = len(migrations)
    sqlite_schema.migrate(conn, target, chain(migrations), too_new(source, target))
    return target


class ReplayStore:
    def __init__(
        self,
        path: str | Path,
        *,
        keep_after_exp_s: float = 600.0,
        bounds: RemoteBounds = RemoteBounds(),
        migrations: Sequence[Migration] = MIGRATIONS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`keep_after_exp_s` must cover the verifier's clock skew: an entry is only purged
        once no lane could still accept its token. `bounds` are this lane's verifiers': they
        bound how long a remote id is kept. `monotonic` drives the ledger."""
        self.path = str(path)
        self.keep_after_exp_s = keep_after_exp_s
        self.bounds = bounds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ReplayStoreError(f"{self.path}: cannot open: {exc}") from exc
        try:
            refuse_newer(self._conn, len(migrations), self.path)  # before WAL changes the file
            sqlite_schema.use_wal(self._conn)
            self._conn.execute("PRAGMA synchronous=FULL")
            self.schema_version = migrate(self._conn, migrations, self.path)
            (elapsed,) = self._conn.execute(
                "SELECT value FROM ledger WHERE name = 'elapsed'"
            ).fetchone()
        except sqlite3.Error as exc:
            self._conn.close()
            raise ReplayStoreError(f"{self.path}: cannot open: {exc}") from exc
        except ReplayStoreError:
            self._conn.close()
            raise
        self._ledger_base = float(elapsed)
        self._opened_at = monotonic()

    def check_and_mark(
        self,
        token_id: str,
        exp: int,
        lane: str,
        now: float,
        seen_at: float | None = None,
        *,
        exit_id: str | None = None,
    ) -> bool:
        """Record a local use, made at `seen_at` (None: `now`; a metro exit is marked by its
        record's time, lane.tap_desk) by the exit record `exit_id` (kept with the mark's other
        exits, even when it was there already: the refund of another exit no longer gives it
        back); True when this is the first use anywhere we know of."""
        return self._insert(token_id, exp, lane, now if seen_at is None else seen_at, now,
                            remote=False, exit_id=exit_id)  # fmt: skip

    def mark_remote(
        self,
        token_id: str,
        exp: int,
        lane: str,
        seen_at: float | None = None,
        *,
        now: float,
        exit_id: str | None = None,
    ) -> bool:
        """Record a use reported by another lane (`seen_at`: its clock, for the record; `now`:
        ours, which times the purge); True when it was new to us. An id is kept by at most the
        exp of a use this lane would accept now (`RemoteBounds.kept_exp`).

        An id marked already keeps its mark, but a later use makes it `seen_at` that late: a
        release made before then (a refund of the first exit, heard after the pass or tap-in
        exited again, anywhere) frees nothing. The mark's lane stays: a lane never frees a
        mark another lane made by claiming a use of it; and a use stamped past our clock
        counts from `now + skew_s`, so a lane's bad clock holds no release off for long. A use
        by an exit (`exit_id`, a metro gate's tap-out) is kept with the mark's other exits:
        the mark stands until each is refunded (lane.core.exit_marks), whatever the gates'
        clocks stamped and the order they are heard in."""
        kept = self.bounds.kept_exp(token_id, exp, now)
        later = None if seen_at is None else min(seen_at, now + self.bounds.skew_s)
        new = self._insert(token_id, kept, lane, seen_at, now, remote=True, exit_id=exit_id,
                           later=later)  # fmt: skip
        if new and kept < exp:
            log.warning(
                "remote used id kept only to this lane's lifetime cap",
                extra={"from_lane": lane, "token_id": token_id, "exp": exp, "kept_exp": kept},
            )
        return new

    def release(
        self,
        token_id: str,
        lane: str,
        *,
        remote: bool = False,
        made_by: float | None = None,
        exit_id: str | None = None,
        exp: int | None = None,
        now: float | None = None,
    ) -> int | None:
        """Forget a use `lane` recorded here itself (a pass whose exit was refunded: not spent),
        or, `remote`, one heard from `lane` (it shares its release); the exp of the mark
        given back, None when there was none or it stays. Any other mark of the id stays:
        another lane's use, or one heard from it. `made_by`: the release's own time on
        `lane`'s clock (one shared by another lane), or a metro gate's refunded exit's
        (lane.tap_desk): only a use seen by then (`seen_at`, the time `lane` gave it) goes,
        never a newer one (a release replayed or written late after the pass was used again).

        `exit_id`: the refunded exit's record. When the mark keeps its exits (a metro tap-in's,
        schema 6) that exit's use goes, whichever lane made or heard it, and the mark with it
        unless another exit's stands (lane.core.exit_marks); the refund is kept until `exp`
        (by the ledger from `now`), so its exit heard later marks nothing. A mark that keeps no
        exit (stored by an older release, or a use of another kind) is judged by `lane` and
        `made_by` alone, as before."""
        with immediate(self._conn, self._lock, self._error):
            exits = self._exits(token_id)
            row = self._conn.execute(
                "SELECT exp, seen_at, exit_id, lane, remote FROM used_tokens WHERE token_id = ?",
                (token_id,),
            ).fetchone()
            if exit_id is not None:
                kept_exp = exp if exp is not None or row is None else int(row[0])
                if kept_exp is not None:
                    self._conn.execute(
                        "INSERT INTO exits VALUES (?, ?, 0, 1, NULL, ?, ?)"
                        " ON CONFLICT (token_id, exit_id) DO UPDATE SET refunded = 1",
                        (token_id, exit_id, kept_exp, self._keep_until(kept_exp, now)),
                    )
                if exits.made:
                    after = refunded_by(exits, exit_id)
                    self._settle(token_id, after, None)
                    gone = row is not None and mark_of(after) is None
                    return int(row[0]) if gone else None
            if (
                row is None
                or (row[3], bool(row[4])) != (lane, remote)
                or not gives_back(ExitMark(row[1], row[2]), exit_id, made_by)
            ):
                return None
            self._conn.execute("DELETE FROM used_tokens WHERE token_id = ?", (token_id,))
            # A release naming no exit gives back every exit of the mark (a road pass has none).
            self._conn.execute("UPDATE exits SET refunded = 1 WHERE token_id = ?", (token_id,))
        return int(row[0])

    def keep_undropped(self, undropped: Mapping[str, tuple[float, str]], now: float) -> None:
        """Keep exactly these refunded tap-ins held until dropped (trip: when it expires anyway,
        the gate that refunded it), in place of those kept before; an expired one is not."""
        rows = [(trip, lane, expires) for trip, (expires, lane) in undropped.items()]
        with immediate(self._conn, self._lock, self._error):
            self._conn.execute("DELETE FROM undropped")
            self._conn.executemany(
                "INSERT INTO undropped (trip, lane, expires) VALUES (?, ?, ?)",
                [row for row in rows if row[2] >= now],
            )

    def undropped(self, now: float) -> dict[str, tuple[float, str]]:
        """The refunded tap-ins kept held until dropped, but the expired ones."""
        rows = self._query("SELECT trip, lane, expires FROM undropped WHERE expires >= ?", (now,))
        return {str(trip): (float(expires), str(lane)) for trip, lane, expires in rows}

    def keep_plate_times(self, times: Mapping[str, PlateTime], forget_before: float) -> None:
        """Keep, per plate, the later of this time and the one kept before (of one binding,
        emptied is the later: the order they come in does not matter), and forget the plates
        whose time is before `forget_before`."""
        with immediate(self._conn, self._lock, self._error):
            self._conn.executemany(
                "INSERT INTO plate_times (plate, ts, emptied) VALUES (?, ?, ?)"
                " ON CONFLICT (plate) DO UPDATE SET ts = excluded.ts, emptied = excluded.emptied"
                " WHERE (excluded.ts, excluded.emptied) > (ts, emptied)",
                [(plate, at.ts, int(at.emptied)) for plate, at in times.items()],
            )
            self._conn.execute("DELETE FROM plate_times WHERE ts < ?", (forget_before,))

    def plate_times(self, since: float) -> dict[str, PlateTime]:
        """The plates' times kept, `since` or later, the oldest first."""
        rows = self._query(
            "SELECT plate, ts, emptied FROM plate_times WHERE ts >= ? ORDER BY ts", (since,)
        )
        return {str(plate): PlateTime(float(ts), bool(emptied)) for plate, ts, emptied in rows}

    def ledger(self) -> float:
        """Seconds this store has been open, over every run: the clock the purge trusts."""
        return self._ledger_base + max(0.0, self._monotonic() - self._opened_at)

    def get(self, token_id: str) -> UsedToken | None:
        rows = self._query(
            "SELECT token_id, exp, lane, seen_at, remote, exit_id FROM used_tokens"
            " WHERE token_id = ?",
            (token_id,),
        )
        if not rows:
            return None
        row = rows[0]
        return UsedToken(row[0], row[1], row[2], row[3], bool(row[4]), row[5])

    def exits(self, token_id: str) -> Exits:
        """The exits kept for a mark, and those refunded (none: a mark that keeps no exit)."""
        return _exits_of(self._query(_EXITS, (token_id,)))

    def purge(self, now: float) -> int:
        """Forget uses whose tokens no lane can accept any more; returns how many.

        `now` (the wall clock) alone is not trusted: each id must also have outlived its
        `keep_until` on the ledger, which a wall-clock step cannot move."""
        cutoff = now - self.keep_after_exp_s
        ledger = self.ledger()
        with immediate(self._conn, self._lock, self._error):
            # max(): two processes may share the file, each with its own run time.
            self._conn.execute(
                "UPDATE ledger SET value = max(value, ?) WHERE name = 'elapsed'", (ledger,)
            )
            purged: int = self._conn.execute(
                "DELETE FROM used_tokens WHERE exp < ? AND keep_until <= ?", (cutoff, ledger)
            ).rowcount
            self._conn.execute(
                "DELETE FROM exits WHERE exp < ? AND keep_until <= ?", (cutoff, ledger)
            )
        return purged

    def probe(self) -> None:
        """Store an id and take it back in one transaction: the write a token's mark makes, in
        the pages it makes it in. Raises ReplayStoreError while the store could not take a
        mark (locked past the wait, corrupt, an I/O error); leaves nothing behind."""
        with immediate(self._conn, self._lock, self._error):
            self._conn.execute(
                "INSERT OR REPLACE INTO used_tokens (token_id, exp, lane, seen_at, remote,"
                " keep_until) VALUES (?, 0, '', NULL, 0, 0)",
                (PROBE_ID,),
            )
            self._conn.execute("DELETE FROM used_tokens WHERE token_id = ?", (PROBE_ID,))

    def _error(self, exc: sqlite3.Error) -> ReplayStoreError:
        return ReplayStoreError(f"{self.path}: {exc}")

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
        self,
        token_id: str,
        exp: int,
        lane: str,
        seen_at: float | None,
        now: float,
        *,
        remote: bool,
        exit_id: str | None,
        later: float | None = None,
    ) -> bool:
        """Store a use; one by an exit (`exit_id`) is kept with the mark's other exits and
        refunds, and the mark stands, named by the latest stamped exit, unless each is refunded
        (lane.core.exit_marks). Of an id kept already, an unnamed use makes the mark seen that
        `later` (when given and later than the mark)."""
        # The ledger seconds until no lane can accept the token, judged by the wall clock now.
        keep_until = self.ledger() + max(0.0, exp + self.keep_after_exp_s - now)
        use = (token_id, exp, lane, seen_at, int(remote), keep_until)
        if exit_id is None and later is None:
            # Nothing to change in a kept id (a token's use): the one statement, as before,
            # not a transaction around it (a replayed id's check costs a third more so).
            return self._execute(_INSERT_UNNAMED, use) == 1
        with immediate(self._conn, self._lock, self._error):
            if exit_id is None:
                if self._conn.execute(_INSERT_UNNAMED, use).rowcount == 1:
                    return True
                self._conn.execute(
                    "UPDATE used_tokens SET seen_at = max(coalesce(seen_at, ?), ?)"
                    " WHERE token_id = ?",
                    (later, later, token_id),
                )
                return False
            mark = ExitMark(seen_at if later is None else later, exit_id)
            exits = used_by(self._exits(token_id), mark)
            (kept,) = (m for m in exits.made if m.exit_id == exit_id)
            self._conn.execute(
                "INSERT INTO exits VALUES (?, ?, 1, 0, ?, ?, ?) ON CONFLICT (token_id, exit_id)"
                " DO UPDATE SET used = 1, seen_at = excluded.seen_at,"
                " exp = max(exp, excluded.exp), keep_until = max(keep_until, excluded.keep_until)",
                (token_id, exit_id, kept.seen_at, exp, keep_until),
            )
            return self._settle(token_id, exits, use)

    def _exits(self, token_id: str) -> Exits:
        return _exits_of(self._conn.execute(_EXITS, (token_id,)).fetchall())

    def _settle(self, token_id: str, exits: Exits, use: tuple[object, ...] | None) -> bool:
        """Make the mark of `token_id` what its exits say: gone when each is refunded, else
        named by the latest stamped one (inserted as `use` when there was none); True when
        it was inserted."""
        mark = mark_of(exits)
        if mark is None:
            # Not a mark naming no exit (an older release's): its exits do not make it.
            self._conn.execute(
                "DELETE FROM used_tokens WHERE token_id = ? AND exit_id IS NOT NULL", (token_id,)
            )
            return False
        if (
            use is not None
            and self._conn.execute(
                _INSERT_NAMED, (*use[:3], mark.seen_at, *use[4:], mark.exit_id)
            ).rowcount
            == 1
        ):
            return True
        self._conn.execute(
            "UPDATE used_tokens SET exit_id = ?, seen_at = ? WHERE token_id = ?",
            (mark.exit_id, mark.seen_at, token_id),
        )
        return False

    def _keep_until(self, exp: int, now: float | None) -> float:
        """The ledger seconds until no lane can accept the use, judged by the wall clock `now`
        (None: not known, kept as long as an id of before the ledger)."""
        if now is None:
            return self.ledger() + MIGRATED_KEEP_S
        return self.ledger() + max(0.0, exp + self.keep_after_exp_s - now)

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


_EXITS = "SELECT exit_id, used, refunded, seen_at FROM exits WHERE token_id = ?"


def _exits_of(rows: Sequence[tuple[Any, ...]]) -> Exits:
    """The exits of a mark from its `_EXITS` rows."""
    return exits_of(
        (ExitMark(seen_at, exit_id) for exit_id, used, _, seen_at in rows if used),
        (exit_id for exit_id, _, refunded, _ in rows if refunded),
    )
