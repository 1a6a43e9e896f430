"""A closed road's plate binding: the entry lane tells the exit lanes which pass a plate holds.

Published retained on `road/plates/{plate}` (lane.ticket_desk), signed with the entry lane's
key (lane.auth.peer_messages); an exit lane prices a ticketless vehicle from it
(lane.trip_desk). The msgpack payload (`v` 1) names the plate (as normalised in the topic),
the pass text, the entry lane and the time it was bound (unix seconds UTC, the entry lane's
clock): of two bindings of a plate the later one stands, so a replayed older binding never
replaces the plate's current trip.

An older lane sent the bare pass text, unsigned: still read while
`auth.accept_unsigned_peers` is on, as a binding of an unknown lane made at time 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lane.auth.passes import MAX_TEXT_LEN, PREFIX
from lane.wire.codec import PayloadError, field, pack, unpack

BINDING_VERSION = 1
MAX_PLATE_LEN = 32
UNKNOWN_LANE = "unknown"


@dataclass(frozen=True)
class PlateBinding:
    plate: str  # normalised (lane.auth.trip_rules.normalise_plate)
    pass_text: str
    lane: str  # the entry lane that bound it
    ts: float  # when, unix seconds UTC


def encode_binding(binding: PlateBinding) -> bytes:
    body = {"plate": binding.plate, "pass": binding.pass_text, "lane": binding.lane,
            "ts": binding.ts}  # fmt: skip
    return pack(body, v=BINDING_VERSION)


def decode_binding(payload: bytes) -> PlateBinding:
    """Raises PayloadError naming what is wrong."""
    if payload.startswith(PREFIX.encode()):
        return PlateBinding("", _pass_text(payload), UNKNOWN_LANE, 0.0)
    body = unpack(payload, max_version=BINDING_VERSION)
    plate = field(body, "plate", str)
    text = field(body, "pass", str)
    lane = field(body, "lane", str)
    ts = field(body, "ts", (int, float))
    if not 0 < len(plate) <= MAX_PLATE_LEN:
        raise PayloadError(f"field 'plate' must be 1..{MAX_PLATE_LEN} characters")
    if not lane:
        raise PayloadError("field 'lane' must not be empty")
    if not math.isfinite(ts) or ts < 0:
        raise PayloadError("field 'ts' must be a finite time")
    return PlateBinding(plate, _pass_text(text.encode("utf-8")), lane, float(ts))


def _pass_text(data: bytes) -> str:
    if len(data) > MAX_TEXT_LEN:
        raise PayloadError(f"pass of {len(data)} bytes, a pass is at most {MAX_TEXT_LEN}")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"pass text not ASCII: {exc}") from None
