"""How a partial refund ended, as a record the back office ingests (pure).

A metro exit's `tap_out` record says what was owed back (`refunded:M`) when it was written;
the refund itself ends later, in the resolver: made by the network, made by hand by an
operator (`lane refunds --made`), or ended unpaid by the network (WeChat Pay's ABNORMAL or
CLOSED). Each end is a `refund` record in the lane's queue, forwarded like every other, naming
the payment (the back office links it to the `tap_out` that names the same payment), the
refund number, the amount and the network's word in its flags.

Exactly once: the payments store keeps each end until its record is in the queue
(`refund_end` / `refund_recorded`), and the record's id is derived from the refund number and
the end (`refund_record_id`), so the queue appends it once however often a restart asks
(`uplink.queue.RecordQueue.append_once`) and the back office holds it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lane.core.names import AuthResult, Method, RecordKind, RefundEndKind
from lane.core.records import (
    FLAG_NETWORK,
    FLAG_REFUND_END,
    FLAG_REFUND_ID,
    FLAG_WORD,
    AuthInfo,
    RecordDraft,
)

__all__ = [
    "BY_HAND",
    "RecordRefundEnd",
    "RefundEnd",
    "RefundEndKind",
    "RefundNotRecorded",
    "end_key",
    "parse_end_key",
    "refund_draft",
    "refund_record_id",
]

# The namespace of the refund records' ids (UUIDv5 of the refund number and the end).
REFUND_RECORDS = uuid.UUID("6f0c2a4e-1d57-5b8e-9a3c-7e2f4b1d9c60")
BY_HAND = "by_hand"  # the word of a refund an operator made


@dataclass(frozen=True)
class RefundEnd:
    """One end of the refund owed on a settled payment, as the payments store holds it."""

    payment_id: str
    refund_id: str  # the refund number the network knows it by
    kind: RefundEndKind
    word: str  # the network's word (`SUCCESS`, `ABNORMAL` ...); BY_HAND for an operator's
    refund_minor: int
    currency: str
    method: str
    network: str | None

    @property
    def key(self) -> str:
        """What the payments store writes for this end (`refund_end`, `refund_recorded`)."""
        return end_key(self.kind, self.word)


class RefundNotRecorded(Exception):  # noqa: N818 - names what did not happen
    """The queue did not take a refund's record (full, disk error): the end is kept and
    asked again."""


# Appends the end's record to the uplink queue, once (the shell's); RefundNotRecorded when the
# queue does not take it.
RecordRefundEnd = Callable[[RefundEnd], Awaitable[None]]


def end_key(kind: RefundEndKind, word: str) -> str:
    return f"{kind.value}:{word}"


def parse_end_key(key: str) -> tuple[RefundEndKind, str]:
    """ValueError for a key no release wrote."""
    kind, _, word = key.partition(":")
    return RefundEndKind(kind), word


def refund_record_id(refund_id: str, key: str) -> str:
    """The record id of one end of one refund: the same whenever and however often it is
    asked, a different one for each end (unpaid, then made, are two records)."""
    return str(uuid.uuid5(REFUND_RECORDS, f"{refund_id}/{key}"))


def refund_draft(end: RefundEnd) -> RecordDraft:
    """The record of `end`: no vehicle (empty id, class 0), the refund's amount, the payment's
    id and method; result `none`, so the queue never takes it for a payment made."""
    try:
        method = Method(end.method)
    except ValueError:
        method = Method.PAYMENT_CODE  # every refund owed is of a wallet code's payment
    flags = (
        f"{FLAG_REFUND_END}{end.kind.value}",
        f"{FLAG_REFUND_ID}{end.refund_id}",
        f"{FLAG_NETWORK}{end.network or '?'}",
        f"{FLAG_WORD}{end.word}",
    )
    return RecordDraft(RecordKind.REFUND, "", 0, end.refund_minor, end.currency, method, None,
                       AuthInfo(AuthResult.NONE), end.payment_id, None, flags)  # fmt: skip
