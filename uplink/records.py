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

from lane.core.names import AuthResult, Method, RecordKind
from lane.core.records import AuthInfo, RecordDraft
from lane.wire.codec import PayloadError, optional, pack, unpack
from lane.wire.codec import field as required

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
        } | _closed_road(d)

    def encode(self) -> bytes:
        return pack(self.to_map(), v=self.v)

    @classmethod
    def decode(cls, data: bytes) -> Record:
        return cls.from_map(unpack(data, max_version=RECORD_VERSION))

    @classmethod
    def readable(cls, data: bytes) -> Record | None:
        """The record of stored bytes, None when they do not decode (a store's upgrade reads
        old rows: one it cannot read is counted, never fatal)."""
        try:
            return cls.decode(data)
        except PayloadError:
            return None

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Record:
        # The back office decodes every record it ingests: a well-formed map (msgpack gives
        # exact types, so `type(v) is int` also refuses a bool) is built in one pass; anything
        # else takes the field-by-field path, which names what is wrong.
        auth = body.get("auth")
        if (
            _well_typed(body, _RECORD_FIELDS)
            and type(auth) is dict
            and _well_typed(auth, _AUTH_FIELDS)
            and all(type(f) is str for f in body["flags"])
        ):
            return cls._build(body, auth)
        return cls._checked(body)

    @classmethod
    def _build(cls, body: Mapping[str, Any], auth: Mapping[str, Any]) -> Record:
        try:
            draft = RecordDraft(
                body["kind"],
                body["vehicle_id"],
                body["vehicle_class"],
                body["amount_minor"],
                body["currency"],
                body["method"],
                body.get("account_ref"),
                AuthInfo(
                    auth["result"], auth.get("acquirer_ref"), auth["latency_ms"], auth["offline"]
                ),
                body.get("payment_id"),
                body.get("entry_plaza"),
                tuple(body["flags"]),
                body.get("pass_id"),
                body.get("plate"),
            )
        except ValueError as exc:
            raise PayloadError(str(exc)) from exc
        return cls(body["record_id"], body["lane"], body["seq"], body["ts"], draft, body["v"])

    @classmethod
    def _checked(cls, body: Mapping[str, Any]) -> Record:
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
                pass_id=optional(body, "pass_id", str),
                plate=optional(body, "plate", str),
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


def _closed_road(draft: RecordDraft) -> dict[str, Any]:
    """The closed-road fields, only when set: every other record keeps its bytes as before."""
    extra: dict[str, Any] = {}
    if draft.pass_id is not None:
        extra["pass_id"] = draft.pass_id
    if draft.plate is not None:
        extra["plate"] = draft.plate
    return extra


# (name, exact type, optional) of a record map and of its `auth` map, for the fast path.
_RECORD_FIELDS: tuple[tuple[str, type, bool], ...] = (
    ("v", int, False),
    ("record_id", str, False),
    ("lane", str, False),
    ("seq", int, False),
    ("ts", int, False),
    ("kind", str, False),
    ("vehicle_id", str, False),
    ("vehicle_class", int, False),
    ("amount_minor", int, False),
    ("currency", str, False),
    ("method", str, False),
    ("account_ref", str, True),
    ("payment_id", str, True),
    ("entry_plaza", str, True),
    ("pass_id", str, True),
    ("plate", str, True),
    ("flags", list, False),
)
_AUTH_FIELDS: tuple[tuple[str, type, bool], ...] = (
    ("result", str, False),
    ("acquirer_ref", str, True),
    ("latency_ms", int, False),
    ("offline", bool, False),
)


def _well_typed(body: Mapping[str, Any], fields: tuple[tuple[str, type, bool], ...]) -> bool:
    for name, kind, opt in fields:
        value = body.get(name)
        if type(value) is not kind and not (opt and value is None):
            return False
    return True
