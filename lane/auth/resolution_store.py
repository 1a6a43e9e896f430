"""Durable book of online payments whose outcome the lane must be able to resolve.

The intent to pay is committed (WAL, synchronous=FULL) BEFORE the pay request leaves, so no
crash can leave a payment charged at the acquirer and unknown to the lane. States and the only
allowed moves between them live in `TRANSITIONS`; an illegal move raises and changes nothing.

    intent --pay SUCCEEDED--> charged --record on disk--> settled        (final, never reversed)
    intent --pay DECLINED---> declined                                    (final)
    intent | charged --lane gave up / crashed--> given_up --resolver--> reversed | declined

A settled payment may owe part of it back (`refund_minor`, schema v3: a metro exit charged the
maximum fare, then priced by the passenger's tap-in): written on the charged payment before
its record (`owe_refund`) and with `settled`, due from the settle until the network takes the
refund (`refunded_ms`); the resolver retries it until then, and `prune` keeps the row. Schema v4:
a refund the network took without finishing it is `refund_sent_ms` (asked about by its number
until it ends), one it ended unpaid is `refund_failed` (its word: an operator's case).
Schema v5: how the refund ended (`refund_end`: made, made by hand, unpaid, with the network's
word; lane.auth.refund_ends) and which end is in the uplink queue as a record
(`refund_recorded`): an end not recorded yet is kept (`prune`) and recorded by the resolver.

Each payment carries the network that was asked to take it, written with the intent (the same
transaction), so the lane never has a payment in doubt without knowing whom to ask about it.
Rows from before schema v2 have none (NULL): they are looked for on every network.

Synchronous on purpose: the resolver calls it from one worker thread, tests call it directly.
The schema is versioned with PRAGMA user_version; `MIGRATIONS[i]` takes a file from version i
to i + 1, and a file of a newer version is refused before anything is written to it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import get_args

from lane.auth.network_config import Network
from lane.auth.refund_ends import BY_HAND, RefundEndKind, end_key
from lane.auth.replay import ReplayStoreError, immediate, migrate, refuse_newer
from lane.sqlite_schema import Migration, use_wal


class PaymentState(StrEnum):
    INTENT = "intent"
    CHARGED = "charged"
    GIVEN_UP = "given_up"
    REVERSED = "reversed"
    DECLINED = "declined"
    SETTLED = "settled"


S = PaymentState
TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    S.INTENT: frozenset({S.CHARGED, S.DECLINED, S.GIVEN_UP}),
    S.CHARGED: frozenset({S.CHARGED, S.SETTLED, S.GIVEN_UP}),
    S.GIVEN_UP: frozenset({S.GIVEN_UP, S.REVERSED, S.DECLINED}),
    S.SETTLED: frozenset({S.SETTLED}),
    S.REVERSED: frozenset({S.REVERSED}),
    S.DECLINED: frozenset({S.DECLINED}),
}
FINAL = frozenset({S.SETTLED, S.REVERSED, S.DECLINED})
OPEN = frozenset({S.INTENT, S.CHARGED})  # the lane may still record or abandon these


# Each step is spelled out as its release wrote it: a later state or network is a new step
# (a file's CHECKs are those of the steps it went through).
def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE payments ("
        " payment_id   TEXT PRIMARY KEY,"
        " auth_id      TEXT NOT NULL,"
        " lane         TEXT NOT NULL,"
        " amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0),"
        " currency     TEXT NOT NULL,"
        " method       TEXT NOT NULL,"
        " state        TEXT NOT NULL CHECK (state IN ('intent', 'charged', 'given_up',"
        " 'reversed', 'declined', 'settled')),"
        " acquirer_ref TEXT,"
        " reason       TEXT,"
        " attempts     INTEGER NOT NULL DEFAULT 0,"
        " created_ms   INTEGER NOT NULL,"
        " updated_ms   INTEGER NOT NULL"
        ")"
    )
    conn.execute("CREATE INDEX payments_by_state ON payments (state)")


def _add_network_v2(conn: sqlite3.Connection) -> None:
    # The rows already there get NULL: network unknown, each is asked (as v1 lanes did).
    conn.execute(
        "ALTER TABLE payments ADD COLUMN network TEXT"
        " CHECK (network IN ('acquirer', 'alipay', 'wechatpay'))"
    )


def _add_refund_v3(conn: sqlite3.Connection) -> None:
    # A settled payment may owe its payer part of it back (a metro exit charged the maximum
    # fare, then priced by the tap-in): written with `settled`, in the same transaction, and
    # kept until the network took the refund (`refunded_ms`).
    conn.execute(
        "ALTER TABLE payments ADD COLUMN refund_minor INTEGER NOT NULL DEFAULT 0"
        " CHECK (refund_minor >= 0)"
    )
    conn.execute("ALTER TABLE payments ADD COLUMN refunded_ms INTEGER")
    conn.execute(
        "CREATE INDEX payments_refunds_owed ON payments (created_ms)"
        " WHERE refund_minor > 0 AND refunded_ms IS NULL"
    )


def _add_refund_progress_v4(conn: sqlite3.Connection) -> None:
    # A refund the network took without finishing it (WeChat Pay's PROCESSING, Alipay's
    # fund_change N) is asked about by its number, not asked anew; one it ended unpaid
    # (ABNORMAL, CLOSED) waits for an operator. Rows already there: neither.
    conn.execute("ALTER TABLE payments ADD COLUMN refund_sent_ms INTEGER")
    conn.execute("ALTER TABLE payments ADD COLUMN refund_failed TEXT")


def _add_refund_end_v5(conn: sqlite3.Connection) -> None:
    # How a refund ended, and which end the uplink queue has as a record. The ends reached
    # before this step are recorded after it: the network's word was not kept (made: empty),
    # nor whether an operator made it by hand (then `made` too).
    conn.execute("ALTER TABLE payments ADD COLUMN refund_end TEXT")
    conn.execute("ALTER TABLE payments ADD COLUMN refund_recorded TEXT")
    conn.execute(
        "UPDATE payments SET refund_end = CASE WHEN refunded_ms IS NOT NULL THEN 'made:'"
        " ELSE 'unpaid:' || refund_failed END"
        " WHERE state = 'settled' AND refund_minor > 0"
        " AND (refunded_ms IS NOT NULL OR refund_failed IS NOT NULL)"
    )
    conn.execute(
        "CREATE INDEX payments_refund_ends ON payments (created_ms)"
        " WHERE refund_end IS NOT refund_recorded"
    )


MIGRATIONS: tuple[Migration, ...] = (
    _create_v1,
    _add_network_v2,
    _add_refund_v3,
    _add_refund_progress_v4,
    _add_refund_end_v5,
)
SCHEMA_VERSION = len(MIGRATIONS)
NETWORKS: tuple[Network, ...] = get_args(Network)


# The payment `probe` begins and removes again: no payment id has this form.
PROBE_ID = "probe:payments-store"


class StoreError(Exception):
    """The resolution store cannot be opened or written."""


class IllegalTransition(StoreError):  # noqa: N818 - names the refused move, not a failure
    def __init__(self, payment_id: str, current: PaymentState, wanted: PaymentState) -> None:
        super().__init__(f"payment {payment_id}: {current} -> {wanted} is not allowed")
        self.payment_id = payment_id
        self.current = current
        self.wanted = wanted


class UnknownPayment(StoreError):  # noqa: N818 - a lookup miss, named for what is missing
    pass


@dataclass(frozen=True)
class PaymentRow:
    payment_id: str
    auth_id: str
    lane: str
    amount_minor: int
    currency: str
    method: str
    state: PaymentState
    acquirer_ref: str | None
    reason: str | None
    attempts: int
    created_ms: int
    updated_ms: int
    network: Network | None  # None: written before the lane recorded it (schema v1)
    refund_minor: int = 0  # owed back to the payer once settled (a partial refund)
    refunded_ms: int | None = None  # when the network made that refund; None: still owed
    refund_sent_ms: int | None = None  # the network took it, not finished: ask about it
    refund_failed: str | None = None  # the network ended it unpaid (ABNORMAL ...): an operator's
    refund_end: str | None = None  # how it ended (lane.auth.refund_ends.end_key); None: not yet
    refund_recorded: str | None = None  # the end the uplink queue has a record of

    @property
    def refund_owed(self) -> bool:
        return (
            self.state is PaymentState.SETTLED
            and self.refund_minor > 0
            and (self.refunded_ms is None)
        )

    @property
    def refund_stage(self) -> str:
        """Where its refund stands: made, unpaid (the network ended it unpaid), processing
        (taken, not ended), failing (not taken: asked again, `refund_failing`), owed (not
        asked yet)."""
        if self.refunded_ms is not None:
            return "made"
        if self.refund_failed:
            return "unpaid"
        if self.refund_sent_ms is not None:
            return "processing"
        return "failing" if self.attempts else "owed"

    @property
    def refund_state(self) -> str:
        """The stage as `lane refunds` and the simulator say it, an unpaid one with the
        network's word: `unpaid (ABNORMAL)`."""
        stage = self.refund_stage
        return f"{stage} ({self.refund_failed})" if stage == "unpaid" else stage

    @property
    def refund_processing(self) -> bool:
        """Owed, taken by the network, not ended yet: asked about, never asked anew."""
        return self.refund_owed and self.refund_sent_ms is not None and not self.refund_failed


class ResolutionStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open resolution store {self.path}: {exc}") from exc
        try:
            refuse_newer(self._db, SCHEMA_VERSION, str(self.path))  # before WAL changes the file
            self._db.row_factory = sqlite3.Row
            use_wal(self._db)
            self._db.execute("PRAGMA synchronous=FULL")
            migrate(self._db, MIGRATIONS, str(self.path))
        except (sqlite3.Error, ReplayStoreError) as exc:
            self._db.close()
            raise StoreError(f"cannot open resolution store {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def begin(
        self,
        payment_id: str,
        *,
        auth_id: str,
        lane: str,
        amount_minor: int,
        currency: str,
        method: str,
        network: Network,
        now_ms: int,
    ) -> tuple[PaymentRow, bool]:
        """Commit the intent to pay on `network`; (row, True) when new, (existing row, False)
        when not."""
        with self._tx():
            row = self._get(payment_id)
            if row is not None:
                return row, False
            self._db.execute(
                "INSERT INTO payments (payment_id, auth_id, lane, amount_minor, currency, method,"
                " network, state, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    payment_id,
                    auth_id,
                    lane,
                    amount_minor,
                    currency,
                    method,
                    network,
                    S.INTENT,
                    now_ms,
                    now_ms,
                ),
            )
            created = self._get(payment_id)
        assert created is not None
        return created, True

    def move(
        self,
        payment_id: str,
        to: PaymentState,
        now_ms: int,
        *,
        acquirer_ref: str | None = None,
        reason: str | None = None,
        refund_minor: int = 0,
    ) -> PaymentRow:
        """Move a payment to `to` if the table allows it, else raise IllegalTransition.
        `refund_minor`: settled, owing that much back to the payer (at most what it charged)."""
        with self._tx():
            row = self._get(payment_id)
            if row is None:
                raise UnknownPayment(f"no payment {payment_id} in {self.path}")
            if to not in TRANSITIONS[row.state]:
                raise IllegalTransition(payment_id, row.state, to)
            if refund_minor and (to is not S.SETTLED or not 0 < refund_minor <= row.amount_minor):
                raise ValueError(f"payment {payment_id}: no refund of {refund_minor} when {to}")
            self._db.execute(
                "UPDATE payments SET state = ?, updated_ms = ?,"
                " acquirer_ref = COALESCE(?, acquirer_ref), reason = COALESCE(?, reason),"
                " refund_minor = MAX(refund_minor, ?)"
                " WHERE payment_id = ?",
                (to, now_ms, acquirer_ref, reason, refund_minor, payment_id),
            )
            moved = self._get(payment_id)
        assert moved is not None
        return moved

    def note_attempt(self, payment_id: str, now_ms: int, reason: str) -> None:
        """Count a failed resolution attempt (for operators: why is this still open?)."""
        with self._tx():
            self._db.execute(
                "UPDATE payments SET attempts = attempts + 1, reason = ?, updated_ms = ?"
                " WHERE payment_id = ?",
                (reason, now_ms, payment_id),
            )

    def owe_refund(self, payment_id: str, refund_minor: int, now_ms: int) -> PaymentRow | None:
        """Write that `refund_minor` of a charged (or settled) payment is owed back, before its
        record is durable: a crash then settles it with the refund (recovery's `is_recorded`),
        or gives it up and reverses it whole (a refund is only ever made of a settled payment).
        None: the payment is being given up or is final otherwise, nothing is owed."""
        with self._tx():
            row = self._get(payment_id)
            if row is None:
                raise UnknownPayment(f"no payment {payment_id} in {self.path}")
            if not 0 < refund_minor <= row.amount_minor:
                raise ValueError(f"payment {payment_id}: no refund of {refund_minor}")
            if row.state not in (S.CHARGED, S.SETTLED):
                return None
            self._db.execute(
                "UPDATE payments SET refund_minor = MAX(refund_minor, ?), updated_ms = ?"
                " WHERE payment_id = ?",
                (refund_minor, now_ms, payment_id),
            )
            return self._get(payment_id)

    def refunds_owed(self) -> list[PaymentRow]:
        """Settled payments whose refund the network has not taken yet, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT * FROM payments WHERE refund_minor > 0 AND refunded_ms IS NULL"
                " AND state = ? ORDER BY created_ms",
                (S.SETTLED.value,),
            )
            return [_row(r) for r in cur.fetchall()]

    def refunded(self, payment_id: str, now_ms: int, word: str) -> None:
        """The network made the refund owed on this payment, saying `word` (`refund_failed`,
        if the network had ended it unpaid before, stays as its trail)."""
        with self._tx():
            self._db.execute(
                "UPDATE payments SET refunded_ms = ?, updated_ms = ?, refund_end = ?"
                " WHERE payment_id = ? AND refunded_ms IS NULL",
                (now_ms, now_ms, end_key(RefundEndKind.MADE, word), payment_id),
            )

    def refund_sent(self, payment_id: str, now_ms: int) -> PaymentRow | None:
        """The network took the refund without finishing it: from now on it is asked about by
        its number, over restarts too. The row as it now stands; None: made meanwhile."""
        return self._changed(
            "UPDATE payments SET refund_sent_ms = COALESCE(refund_sent_ms, ?), updated_ms = ?"
            " WHERE payment_id = ? AND refunded_ms IS NULL RETURNING *",
            (now_ms, now_ms, payment_id),
        )

    def refund_unsent(self, payment_id: str, now_ms: int) -> PaymentRow | None:
        """The network has no refund under its number after all: ask it again (same number).
        The row as it now stands; None: made meanwhile."""
        return self._changed(
            "UPDATE payments SET refund_sent_ms = NULL, updated_ms = ?"
            " WHERE payment_id = ? AND refunded_ms IS NULL RETURNING *",
            (now_ms, payment_id),
        )

    def refund_ended_unpaid(self, payment_id: str, detail: str, now_ms: int) -> PaymentRow | None:
        """The network ended the refund without paying it (WeChat Pay's ABNORMAL, CLOSED): it
        stays owed, never asked anew under another number without an operator. The row as it
        now stands; None: made meanwhile."""
        return self._changed(
            "UPDATE payments SET refund_failed = ?, updated_ms = ?, refund_end = ?,"
            " refund_sent_ms = COALESCE(refund_sent_ms, ?)"
            " WHERE payment_id = ? AND refunded_ms IS NULL RETURNING *",
            (detail, now_ms, end_key(RefundEndKind.UNPAID, detail), now_ms, payment_id),
        )

    def refund_made_by_hand(self, payment_id: str, now_ms: int) -> PaymentRow:
        """An operator made a refund the network ended unpaid (outside the lane): owed no
        more. Refused for any other (one still in the network's hands could be paid twice)."""
        with self._tx():
            row = self._get(payment_id)
            if row is None:
                raise UnknownPayment(f"no payment {payment_id} in {self.path}")
            if not (row.refund_owed and row.refund_failed):
                raise StoreError(f"payment {payment_id}: no refund ended unpaid is owed")
            self._db.execute(
                "UPDATE payments SET refunded_ms = ?, updated_ms = ?, refund_end = ?"
                " WHERE payment_id = ?",
                (now_ms, now_ms, end_key(RefundEndKind.MADE_BY_HAND, BY_HAND), payment_id),
            )
            made = self._get(payment_id)
        assert made is not None
        return made

    def ends_unrecorded(self) -> list[PaymentRow]:
        """Payments whose refund reached an end the uplink queue has no record of yet, oldest
        first (the resolver records each: lane.auth.refund_ends)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT * FROM payments WHERE refund_end IS NOT refund_recorded ORDER BY created_ms"
            )
            return [_row(r) for r in cur.fetchall()]

    def end_recorded(self, payment_id: str, key: str) -> None:
        """The end `key` of this payment's refund is in the uplink queue. A later end written
        meanwhile (made after unpaid) stays to be recorded."""
        with self._tx():
            self._db.execute(
                "UPDATE payments SET refund_recorded = ? WHERE payment_id = ? AND refund_end = ?",
                (key, payment_id, key),
            )

    def get(self, payment_id: str) -> PaymentRow | None:
        with self._lock:
            return self._get(payment_id)

    def in_states(self, states: Iterable[PaymentState]) -> list[PaymentRow]:
        wanted = [PaymentState(s).value for s in states]
        marks = ", ".join("?" * len(wanted))
        with self._lock:
            cur = self._db.execute(
                f"SELECT * FROM payments WHERE state IN ({marks}) ORDER BY created_ms", wanted
            )
            return [_row(r) for r in cur.fetchall()]

    def prune(self, before_ms: int) -> int:
        """Delete final rows last touched before `before_ms`, except a settled one whose refund
        is still owed (processing or ended unpaid too: `refund_owed`) or whose refund's end the
        uplink queue has no record of yet (`ends_unrecorded`); return how many. A
        payment given up after `owe_refund` keeps its `refund_minor` but was reversed whole:
        nothing is owed on it, it goes."""
        finals = [s.value for s in FINAL]
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM payments WHERE updated_ms < ? AND state IN (?, ?, ?)"
                " AND NOT (state = ? AND refund_minor > 0 AND refunded_ms IS NULL)"
                " AND refund_end IS refund_recorded",
                (before_ms, *finals, S.SETTLED.value),
            )
            return cur.rowcount

    def _get(self, payment_id: str) -> PaymentRow | None:
        cur = self._db.execute("SELECT * FROM payments WHERE payment_id = ?", (payment_id,))
        found = cur.fetchone()
        return None if found is None else _row(found)

    def _changed(self, update: str, params: tuple[object, ...]) -> PaymentRow | None:
        """One UPDATE ... RETURNING * in its own transaction: the row as it now stands, None
        when it matched none (read to the end: the statement is done before the commit)."""
        with self._tx():
            found = self._db.execute(update, params).fetchall()
        return _row(found[0]) if found else None

    def probe(self) -> None:
        """Begin a payment and take it back in one transaction: the write `begin` makes, in the
        pages it makes it in (a prune may commit where payments cannot begin). Raises
        StoreError while no payment could begin; leaves nothing behind."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO payments (payment_id, auth_id, lane, amount_minor,"
                " currency, method, state, created_ms, updated_ms)"
                " VALUES (?, '', '', 0, '', '', 'intent', 0, 0)",
                (PROBE_ID,),
            )
            self._db.execute("DELETE FROM payments WHERE payment_id = ?", (PROBE_ID,))

    def _tx(self) -> contextlib.AbstractContextManager[None]:
        return immediate(self._db, self._lock, lambda exc: StoreError(f"{self.path}: {exc}"))


def _row(r: sqlite3.Row) -> PaymentRow:
    return PaymentRow(
        payment_id=r["payment_id"],
        auth_id=r["auth_id"],
        lane=r["lane"],
        amount_minor=r["amount_minor"],
        currency=r["currency"],
        method=r["method"],
        state=PaymentState(r["state"]),
        acquirer_ref=r["acquirer_ref"],
        reason=r["reason"],
        attempts=r["attempts"],
        created_ms=r["created_ms"],
        updated_ms=r["updated_ms"],
        network=_network(r["network"]),
        refund_minor=r["refund_minor"],
        refunded_ms=r["refunded_ms"],
        refund_sent_ms=r["refund_sent_ms"],
        refund_failed=r["refund_failed"],
        refund_end=r["refund_end"],
        refund_recorded=r["refund_recorded"],
    )


def _network(stored: str | None) -> Network | None:
    for name in NETWORKS:  # the schema's CHECK admits only these: the match is the typed name
        if stored == name:
            return name
    return None
