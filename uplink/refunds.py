"""Which partial refunds owed to passengers the back office has not seen made: a query over
ingested records.

A metro exit's `tap_out` that kept less than it charged owes the rest back: its flag
`refunded:M` and its `payment_id`. The lane writes a `refund` record each time that refund
reaches an end (lane.auth.refund_ends): `refund:made` (by the network), `refund:made_by_hand`
(by an operator, `lane refunds --made`) or `refund:unpaid` (the network ended it without
paying: WeChat Pay's ABNORMAL or CLOSED), naming the same payment. A refund owed is open while
no `made` or `made_by_hand` record of its payment is held: `unpaid` when the last end the back
office holds says so, else `owed` (still in the lane's and the network's hands, or its record
has not arrived yet).

`refund_mark` says what one record is to this trail, pure; the store keeps it in two columns
filled at ingest (`refund_of`: the payment id, `refund_role`, indexed where set) and answers
`refund_rows` in SQL, decoding only the open refunds' records (`refund_trail`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from lane.core.names import AuthResult, RecordKind, RefundEndKind
from lane.core.records import FLAG_REFUND_END, FLAG_REFUND_ID, FLAG_REFUNDED, FLAG_WORD, flag_value
from lane.wire.codec import PayloadError
from uplink.records import Record


class RefundRole(StrEnum):
    """What a stored record is to the trail (the store's `refund_role` column)."""

    OWED = "owed"  # a tap_out that owes part of its charge back
    MADE = RefundEndKind.MADE.value
    MADE_BY_HAND = RefundEndKind.MADE_BY_HAND.value
    UNPAID = RefundEndKind.UNPAID.value


MADE_ROLES = (RefundRole.MADE, RefundRole.MADE_BY_HAND)


@dataclass(frozen=True)
class RefundMark:
    payment_id: str
    role: RefundRole


def refund_mark(record: Record) -> RefundMark | None:
    """Pure: the record's part in a refund's trail; None when it takes none."""
    d = record.draft
    if d.payment_id is None:
        return None
    if d.kind == RecordKind.TAP_OUT and d.auth.result in (AuthResult.APPROVED, AuthResult.DEFERRED):
        owed = flag_value(d.flags, FLAG_REFUNDED)
        return RefundMark(d.payment_id, RefundRole.OWED) if owed not in (None, "0") else None
    if d.kind == RecordKind.REFUND:
        try:
            return RefundMark(d.payment_id, RefundRole(flag_value(d.flags, FLAG_REFUND_END) or ""))
        except ValueError:  # an end no release wrote: not part of the trail
            return None
    return None


def stored_refund_mark(data: bytes) -> RefundMark | None:
    """Pure: the mark of a record's stored bytes (what a store upgrade fills old rows with);
    None for bytes that do not decode too (the trip ledger counts those)."""
    record = Record.readable(data)
    return None if record is None else refund_mark(record)


@dataclass(frozen=True)
class OpenRefund:
    payment_id: str
    lane: str
    record_id: str  # the tap_out that owes it
    ts_us: int  # when the passenger exited
    owed_minor: int
    currency: str
    state: str  # `owed`, or `unpaid` (the network's word in `word`)
    word: str | None
    ended_us: int | None  # when the lane recorded it unpaid
    refund_id: str | None  # the refund number, once an end of it is held


@dataclass(frozen=True)
class RefundTrail:
    owed: tuple[OpenRefund, ...]  # open, no end held; oldest first
    unpaid: tuple[OpenRefund, ...]  # open, ended unpaid by the network; oldest first
    # The store's upgrade has not yet reached every record (PostgreSQL, docs/uplink.md):
    # refunds owed by the records it has not reached are missing.
    upgrading: bool = False


@dataclass(frozen=True)
class RefundRows:
    """What the store answers (`RefundIndex.refund_rows`): each open refund's `tap_out` and
    the latest `unpaid` record of its payment (None: none held)."""

    open: list[tuple[bytes, bytes | None]]
    upgrading: bool


class RefundIndex(Protocol):
    def refund_rows(self) -> RefundRows: ...


def refund_trail(rows: RefundRows) -> RefundTrail:
    """Pure: the open refunds of what the store answered (rows that no longer decode, changed
    by hand since their ingest, are left out: the trip ledger counts them)."""
    owed: list[OpenRefund] = []
    unpaid: list[OpenRefund] = []
    for tap_out, end in rows.open:
        try:
            record = Record.decode(tap_out)
            ended = None if end is None else Record.decode(end)
        except PayloadError:
            continue
        d = record.draft
        amount = flag_value(d.flags, FLAG_REFUNDED) or "0"
        if d.payment_id is None or not amount.isdigit():
            continue
        word = None if ended is None else flag_value(ended.draft.flags, FLAG_WORD)
        number = None if ended is None else flag_value(ended.draft.flags, FLAG_REFUND_ID)
        refund = OpenRefund(d.payment_id, record.lane, record.record_id, record.ts_us,
                            int(amount), d.currency, "owed" if ended is None else "unpaid", word,
                            None if ended is None else ended.ts_us, number)  # fmt: skip
        (owed if ended is None else unpaid).append(refund)
    key = lambda r: (r.ts_us, r.payment_id)  # noqa: E731 - one ordering for both lists
    return RefundTrail(tuple(sorted(owed, key=key)), tuple(sorted(unpaid, key=key)), rows.upgrading)


def open_refunds(store: RefundIndex) -> RefundTrail:
    """The refunds owed and not made, over every ingested record."""
    return refund_trail(store.refund_rows())
