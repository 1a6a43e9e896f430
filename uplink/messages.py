"""The uplink wire format: record batches (lane -> back office) and acks (back office -> lane).

Pure encode/decode on top of lane.wire.codec; every decode error is a PayloadError naming the
problem. Records travel as the exact bytes the lane stored, never re-encoded.

    batch: {v: 2, lane, epoch, base, batch_id, first_seq, last_seq, records: [bin, ...]}
    ack:   {v: 2, lane, epoch, batch_id, stored: [[seq, record_id, sha256(record)], ...],
            refused: [[seq, record_id, sha256(record)], ...]}

An ack never names a bare seq: it lists each record the store holds byte for byte, by id and
content digest, and the lane deletes a record only when its own id and digest are listed
(see docs/uplink.md, "The ack contract"). `refused` names the batch's records the store will
not take (their id or seq is held with other content): the lane keeps them and stops waiting
for them. Version 1 (an ack of `upto`, a batch without the queue's epoch) is refused: it is
exactly what let a replayed batch delete unstored records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from lane.wire.codec import PayloadError, field, pack, unpack

BATCH_VERSION = 2
ACK_VERSION = 2
# Bounds of what a back office accepts. The lane's own records are a few hundred bytes and its
# batch_size is at most 5,000 (lane/config.py); anything beyond is refused before it is parsed.
MAX_BATCH_RECORDS = 5000
MAX_RECORD_BYTES = 8192
MAX_BATCH_BYTES = MAX_BATCH_RECORDS * (MAX_RECORD_BYTES + 8) + 4096
DIGEST_BYTES = 32


def digest(record: bytes) -> bytes:
    """The content digest an ack carries for a record: SHA-256 of its stored bytes."""
    return hashlib.sha256(record).digest()


@dataclass(frozen=True)
class QueueIdentity:
    """Which queue file a record comes from: `epoch` is made with the file; `base` is the last
    seq the lane had used before this epoch began (0 for a new lane, the old file's last seq
    for a queue migrated from a release without epochs)."""

    epoch: str
    base: int = 0


@dataclass(frozen=True)
class Batch:
    lane: str
    queue: QueueIdentity
    batch_id: str
    first_seq: int
    last_seq: int
    records: tuple[bytes, ...]


@dataclass(frozen=True)
class Held:
    """One record the back office holds exactly as the lane sent it."""

    seq: int
    record_id: str
    digest: bytes


@dataclass(frozen=True)
class Ack:
    lane: str
    epoch: str
    batch_id: str
    stored: tuple[Held, ...]
    refused: tuple[Held, ...] = ()


def encode_batch(
    lane: str, queue: QueueIdentity, batch_id: str, rows: Sequence[tuple[int, bytes]]
) -> bytes:
    if not rows:
        raise ValueError("a batch holds at least one record")
    return pack(
        {
            "lane": lane,
            "epoch": queue.epoch,
            "base": queue.base,
            "batch_id": batch_id,
            "first_seq": rows[0][0],
            "last_seq": rows[-1][0],
            "records": [data for _, data in rows],
        },
        v=BATCH_VERSION,
    )


def _version(body: dict[str, object], want: int, what: str) -> None:
    if body["v"] != want:
        raise PayloadError(f"{what} version {body['v']} is not {want}: upgrade the sender")


def decode_batch(payload: bytes) -> Batch:
    if len(payload) > MAX_BATCH_BYTES:
        raise PayloadError(f"batch of {len(payload)} bytes exceeds {MAX_BATCH_BYTES}")
    body = unpack(payload, max_version=BATCH_VERSION)
    _version(body, BATCH_VERSION, "batch")
    records = field(body, "records", list)
    if not records:
        raise PayloadError("empty batch")
    if len(records) > MAX_BATCH_RECORDS:
        raise PayloadError(f"{len(records)} records in one batch exceed {MAX_BATCH_RECORDS}")
    if not all(isinstance(r, bytes) for r in records):
        raise PayloadError("batch records must be binary")
    big = max(len(r) for r in records)
    if big > MAX_RECORD_BYTES:
        raise PayloadError(f"a record of {big} bytes exceeds {MAX_RECORD_BYTES}")
    first = field(body, "first_seq", int)
    last = field(body, "last_seq", int)
    if first < 1 or last - first + 1 != len(records):
        raise PayloadError(f"seq range {first}..{last} does not match {len(records)} records")
    epoch = field(body, "epoch", str)
    base = field(body, "base", int)
    if not epoch or base < 0 or base >= first:
        raise PayloadError(f"queue epoch {epoch!r} base {base} does not precede seq {first}")
    return Batch(
        lane=field(body, "lane", str),
        queue=QueueIdentity(epoch, base),
        batch_id=field(body, "batch_id", str),
        first_seq=first,
        last_seq=last,
        records=tuple(records),
    )


def encode_ack(ack: Ack) -> bytes:
    return pack(
        {
            "lane": ack.lane,
            "epoch": ack.epoch,
            "batch_id": ack.batch_id,
            "stored": [[h.seq, h.record_id, h.digest] for h in ack.stored],
            "refused": [[h.seq, h.record_id, h.digest] for h in ack.refused],
        },
        v=ACK_VERSION,
    )


def decode_ack(payload: bytes) -> Ack:
    body = unpack(payload, max_version=ACK_VERSION)
    _version(body, ACK_VERSION, "ack")
    entries = field(body, "stored", list)
    refused = field(body, "refused", list)
    if len(entries) + len(refused) > MAX_BATCH_RECORDS:
        raise PayloadError(
            f"ack of {len(entries) + len(refused)} records exceeds {MAX_BATCH_RECORDS}"
        )
    return Ack(
        lane=field(body, "lane", str),
        epoch=field(body, "epoch", str),
        batch_id=field(body, "batch_id", str),
        stored=tuple(_held(e) for e in entries),
        refused=tuple(_held(e) for e in refused),
    )


def _held(entry: object) -> Held:
    if not isinstance(entry, list) or len(entry) != 3:
        raise PayloadError("an ack entry is [seq, record_id, digest]")
    seq, record_id, dig = entry
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise PayloadError(f"ack entry seq {seq!r} is not a positive integer")
    if not isinstance(record_id, str) or not record_id:
        raise PayloadError(f"ack entry record id {record_id!r} is not a string")
    if not isinstance(dig, bytes) or len(dig) != DIGEST_BYTES:
        raise PayloadError(f"ack entry digest of record {record_id} is not {DIGEST_BYTES} bytes")
    return Held(seq, record_id, dig)


def lane_of(topic: str, suffix: str) -> str | None:
    """The lane id inside `uplink/{lane}/{suffix}` (lane ids contain '/'), or None."""
    head, tail = "uplink/", "/" + suffix
    if not topic.startswith(head) or not topic.endswith(tail):
        return None
    lane = topic[len(head) : -len(tail)]
    return lane or None
