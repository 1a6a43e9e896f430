"""The uplink wire format: record batches (lane -> back office) and acks (back office -> lane).

Pure encode/decode on top of barrier.wire; every decode error is a PayloadError naming the
problem. Records travel as the exact bytes the lane stored, never re-encoded.

    batch: {v: 1, lane, batch_id, first_seq, last_seq, records: [bin, ...]}
    ack:   {v: 1, lane, upto, batch_id?}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from barrier.wire import PayloadError, field, optional, pack, unpack

BATCH_VERSION = 1
ACK_VERSION = 1


@dataclass(frozen=True)
class Batch:
    lane: str
    batch_id: str
    first_seq: int
    last_seq: int
    records: tuple[bytes, ...]


@dataclass(frozen=True)
class Ack:
    lane: str
    upto: int
    batch_id: str | None = None


def encode_batch(lane: str, batch_id: str, rows: Sequence[tuple[int, bytes]]) -> bytes:
    if not rows:
        raise ValueError("a batch holds at least one record")
    return pack(
        {
            "lane": lane,
            "batch_id": batch_id,
            "first_seq": rows[0][0],
            "last_seq": rows[-1][0],
            "records": [data for _, data in rows],
        },
        v=BATCH_VERSION,
    )


def decode_batch(payload: bytes) -> Batch:
    body = unpack(payload, max_version=BATCH_VERSION)
    records = field(body, "records", list)
    if not records:
        raise PayloadError("empty batch")
    if not all(isinstance(r, bytes) for r in records):
        raise PayloadError("batch records must be binary")
    first = field(body, "first_seq", int)
    last = field(body, "last_seq", int)
    if first < 1 or last - first + 1 != len(records):
        raise PayloadError(f"seq range {first}..{last} does not match {len(records)} records")
    return Batch(
        lane=field(body, "lane", str),
        batch_id=field(body, "batch_id", str),
        first_seq=first,
        last_seq=last,
        records=tuple(records),
    )


def encode_ack(ack: Ack) -> bytes:
    body: dict[str, object] = {"lane": ack.lane, "upto": ack.upto}
    if ack.batch_id is not None:
        body["batch_id"] = ack.batch_id
    return pack(body, v=ACK_VERSION)


def decode_ack(payload: bytes) -> Ack:
    body = unpack(payload, max_version=ACK_VERSION)
    upto = field(body, "upto", int)
    if upto < 0:
        raise PayloadError(f"negative upto {upto}")
    return Ack(
        lane=field(body, "lane", str),
        upto=upto,
        batch_id=optional(body, "batch_id", str),
    )


def lane_of(topic: str, suffix: str) -> str | None:
    """The lane id inside `uplink/{lane}/{suffix}` (lane ids contain '/'), or None."""
    head, tail = "uplink/", "/" + suffix
    if not topic.startswith(head) or not topic.endswith(tail):
        return None
    lane = topic[len(head) : -len(tail)]
    return lane or None
