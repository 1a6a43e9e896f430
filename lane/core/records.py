"""What the lane core asks to persist: a `RecordDraft`, pure data.

The queue (uplink) stamps a draft with a record id, the lane id, a gap-free sequence number and
a UTC timestamp, and owns the wire form (`uplink.records.Record`). The raw payment code never
appears here: only an account reference.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from lane.core.names import AuthResult, Method, RecordKind

# The flags that carry money a record owes or settles back (`name:value`): a metro `tap_out`'s
# `refunded:M` is what was owed back when it was written; a `refund` record's `refund:<end>`
# (lane.core.names.RefundEndKind), `refund_id:`, `network:` and `word:` (the network's) say
# how that refund ended.
FLAG_CHARGED = "charged:"
FLAG_REFUNDED = "refunded:"
FLAG_REFUND_END = "refund:"
FLAG_REFUND_ID = "refund_id:"
FLAG_NETWORK = "network:"
FLAG_WORD = "word:"
# A refund of a vehicle not let through (lane.core.recovery.not_passed) and the record it undoes.
REFUND_FLAG = "paid_not_passed"
FLAG_RECORD = "record:"


@dataclass(frozen=True)
class AuthInfo:
    result: AuthResult
    acquirer_ref: str | None = None
    latency_ms: int = 0
    offline: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "result", AuthResult(self.result))
        except ValueError:
            raise ValueError(f"unknown auth result {self.result!r}") from None

    def to_map(self) -> dict[str, Any]:
        return {
            "result": str(self.result),
            "acquirer_ref": self.acquirer_ref,
            "latency_ms": self.latency_ms,
            "offline": self.offline,
        }


@dataclass(frozen=True)
class RecordDraft:
    kind: RecordKind
    vehicle_id: str
    vehicle_class: int
    amount_minor: int
    currency: str
    method: Method
    account_ref: str | None
    auth: AuthInfo
    payment_id: str | None = None
    entry_plaza: str | None = None
    flags: tuple[str, ...] = field(default=())
    pass_id: str | None = None  # hex id of the entry pass (entry and exit records)
    plate: str | None = None  # plate read by ANPR, when the lane has a camera for it

    def __post_init__(self) -> None:
        # Coerced here so a draft built from a decoded map (or a test's literal) holds the enums;
        # an unknown name is a ValueError the decoder turns into a PayloadError.
        try:
            object.__setattr__(self, "kind", RecordKind(self.kind))
        except ValueError:
            raise ValueError(f"unknown record kind {self.kind!r}") from None
        try:
            object.__setattr__(self, "method", Method(self.method))
        except ValueError:
            raise ValueError(f"unknown payment method {self.method!r}") from None
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise ValueError("amount_minor must be an integer of minor units")


def tap_in_trip_id(record_id: str, draft: RecordDraft) -> bytes:
    """A metro tap-in's trip id, the id a `transit-exit` gate's tap-out names in its `pass_id`:
    the tap-in's own `pass_id` when it has one, else its record id (a UUID). ValueError when
    that is not of the form."""
    try:
        return bytes.fromhex(draft.pass_id) if draft.pass_id else uuid.UUID(record_id).bytes
    except ValueError:
        raise ValueError(f"record {record_id}: no usable trip id") from None


def credential_of(text: str) -> str:
    """What recognises a payment code after a restart (lane.core.carried) without keeping
    the code itself: a digest of its text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def flag_value(flags: tuple[str, ...], prefix: str) -> str | None:
    """The value of the first flag `prefix...`, None when there is none."""
    return next((f.removeprefix(prefix) for f in flags if f.startswith(prefix)), None)
