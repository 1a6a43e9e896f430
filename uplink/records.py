"""The uplink record: what the lane decided about one passage, as a versioned msgpack map.

A `RecordDraft` (lane.core.records) is what the pure lane core asks to persist; the queue
stamps it with a record id (UUIDv7), the lane id, a gap-free lane sequence number and a UTC
timestamp in microseconds.
The raw payment code never appears here: only an account reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from barrier.wire import PayloadError, optional, pack, unpack
from barrier.wire import field as required
from lane.core.names import AuthResult, Method, RecordKind
from lane.core.records import AuthInfo, RecordDraft

__all__ = ["KINDS", "METHODS", "RECORD_VERSION", "AuthInfo", "Record", "RecordDraft"]

RECORD_VERSION = 1
KINDS = frozenset(RecordKind)
METHODS = frozenset(Method)


def auth_from_map(body: Mapping[str, Any]) -> AuthInfo:
    return AuthInfo(
        result=AuthResult(required(body, "result", str)),
        acquirer_ref=optional(body, "acquirer_ref", str),
        latency_ms=required(body, "latency_ms", int),
        offline=required(body, "offline", bool),
    )


@dataclass(frozen=True)
class Record:
    record_id: str
    lane: str
    seq: int
    ts_us: int
    draft: RecordDraft
    v: int = RECORD_VERSION

    def to_map(self) -> dict[str, Any]:
        d = self.draft
        return {
            "record_id": self.record_id,
            "lane": self.lane,
            "seq": self.seq,
            "ts": self.ts_us,
            "kind": str(d.kind),
            "vehicle_id": d.vehicle_id,
            "vehicle_class": d.vehicle_class,
            "amount_minor": d.amount_minor,
            "currency": d.currency,
            "method": str(d.method),
            "account_ref": d.account_ref,
            "payment_id": d.payment_id,
            "entry_plaza": d.entry_plaza,
            "auth": d.auth.to_map(),
            "flags": list(d.flags),
        }

    def encode(self) -> bytes:
        return pack(self.to_map(), v=self.v)

    @classmethod
    def decode(cls, data: bytes) -> Record:
        return cls.from_map(unpack(data, max_version=RECORD_VERSION))

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Record:
        auth = required(body, "auth", dict)
        flags = required(body, "flags", list)
        try:
            draft = RecordDraft(
                kind=RecordKind(required(body, "kind", str)),
                vehicle_id=required(body, "vehicle_id", str),
                vehicle_class=required(body, "vehicle_class", int),
                amount_minor=required(body, "amount_minor", int),
                currency=required(body, "currency", str),
                method=Method(required(body, "method", str)),
                account_ref=optional(body, "account_ref", str),
                auth=auth_from_map(auth),
                payment_id=optional(body, "payment_id", str),
                entry_plaza=optional(body, "entry_plaza", str),
                flags=tuple(str(f) for f in flags),
            )
        except ValueError as exc:
            if isinstance(exc, PayloadError):
                raise
            raise PayloadError(str(exc)) from exc
        return cls(
            record_id=required(body, "record_id", str),
            lane=required(body, "lane", str),
            seq=required(body, "seq", int),
            ts_us=required(body, "ts", int),
            draft=draft,
            v=required(body, "v", int),
        )
