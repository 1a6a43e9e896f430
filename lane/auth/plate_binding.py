"""A closed road's plate binding: the entry lane tells the exit lanes which pass a plate holds.

Published retained on `road/plates/{plate}` (lane.ticket_desk), signed with the entry lane's
key (lane.auth.peer_messages); an exit lane prices a ticketless vehicle from it
(lane.trip_desk). The msgpack payload (`v` 1) names the plate (as normalised in the topic),
the pass text, the entry lane and the time it was bound (unix seconds UTC, the entry lane's
clock): of two bindings of a plate the later one stands, so a replayed older binding never
replaces the plate's current trip.

Once the pass has exited, its exit lane publishes in its place, retained and signed with its
own key, the binding's tombstone (`kind` "exited", `v` 2): the plate, the pass text and the
time of the binding it empties, and the exit lane. It empties that binding, or an older one,
never a later one (the plate's next trip); the broker drops it after `road.max_trip_s` (its
message expiry). An MQTT delete (the empty retained message an older exit lane sends) is not
signed: taken only while `auth.accept_unsigned_peers` is on.

An older lane sent the bare pass text, unsigned: still read while
`auth.accept_unsigned_peers` is on, as a binding of an unknown lane made at time 0.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from lane.auth.passes import MAX_TEXT_LEN, PREFIX
from lane.wire.codec import PayloadError, field, optional, pack, unpack

BINDING_VERSION = 2  # 2: a tombstone (`kind`); a binding is still sent as 1
MAX_PLATE_LEN = 32
UNKNOWN_LANE = "unknown"


class BindingKind(enum.StrEnum):
    BOUND = "bound"  # the entry lane bound the pass to the plate
    EXITED = "exited"  # a tombstone: that binding's pass has exited


@dataclass(frozen=True)
class PlateBinding:
    plate: str  # normalised (lane.auth.trip_rules.normalise_plate)
    pass_text: str
    lane: str  # the entry lane that bound it (a tombstone: the exit lane that emptied it)
    ts: float  # when it was bound, unix seconds UTC (the entry lane's clock)
    kind: BindingKind = BindingKind.BOUND


def encode_binding(binding: PlateBinding) -> bytes:
    body = {"plate": binding.plate, "pass": binding.pass_text, "lane": binding.lane,
            "ts": binding.ts}  # fmt: skip
    if binding.kind is BindingKind.BOUND:
        return pack(body, v=1)
    return pack({**body, "kind": binding.kind.value}, v=BINDING_VERSION)


def decode_binding(payload: bytes) -> PlateBinding:
    """Raises PayloadError naming what is wrong."""
    if payload.startswith(PREFIX.encode()):
        return PlateBinding("", _pass_text(payload), UNKNOWN_LANE, 0.0)
    body = unpack(payload, max_version=BINDING_VERSION)
    plate = field(body, "plate", str)
    text = field(body, "pass", str)
    lane = field(body, "lane", str)
    ts = field(body, "ts", (int, float))
    kind = optional(body, "kind", str) or BindingKind.BOUND
    if kind not in set(BindingKind):
        raise PayloadError(f"field 'kind' must be {' or '.join(BindingKind)}, got {kind!r}")
    if not 0 < len(plate) <= MAX_PLATE_LEN:
        raise PayloadError(f"field 'plate' must be 1..{MAX_PLATE_LEN} characters")
    if not lane:
        raise PayloadError("field 'lane' must not be empty")
    if not math.isfinite(ts) or ts < 0:
        raise PayloadError("field 'ts' must be a finite time")
    return PlateBinding(plate, _pass_text(text.encode("utf-8")), lane, float(ts), BindingKind(kind))


def _pass_text(data: bytes) -> str:
    if len(data) > MAX_TEXT_LEN:
        raise PayloadError(f"pass of {len(data)} bytes, a pass is at most {MAX_TEXT_LEN}")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"pass text not ASCII: {exc}") from None
