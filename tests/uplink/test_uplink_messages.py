from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.wire.codec import PayloadError, pack
from uplink.messages import (
    MAX_BATCH_RECORDS,
    MAX_RECORD_BYTES,
    Ack,
    Held,
    QueueIdentity,
    decode_ack,
    decode_batch,
    digest,
    encode_ack,
    encode_batch,
    lane_of,
)

Q = QueueIdentity("ep-1", 4)
DIG = digest(b"x")


def test_batch_roundtrip_keeps_record_bytes_and_queue_identity() -> None:
    rows = [(5, b"\x81\xa1v\x01"), (6, b"raw-6"), (7, b"")]
    b = decode_batch(encode_batch("p1/l2", Q, "bid", rows))
    assert (b.lane, b.queue, b.batch_id, b.first_seq, b.last_seq) == ("p1/l2", Q, "bid", 5, 7)
    assert b.records == (b"\x81\xa1v\x01", b"raw-6", b"")


def test_ack_roundtrip_names_records_by_id_and_digest() -> None:
    ack = Ack("p1/l2", "ep-1", "b", (Held(5, "r5", DIG),), (Held(9, "r9", digest(b"y")),))
    assert decode_ack(encode_ack(ack)) == ack
    assert decode_ack(encode_ack(Ack("p1/l2", "ep-1", "b", ()))).stored == ()


BATCH = {"lane": "x", "epoch": "e", "base": 0, "batch_id": "b"}


@pytest.mark.parametrize(
    "body",
    [
        {**BATCH, "first_seq": 1, "last_seq": 2, "records": [b"a"]},
        {**BATCH, "first_seq": 0, "last_seq": 0, "records": [b"a"]},
        {**BATCH, "first_seq": 1, "last_seq": 1, "records": ["text"]},
        {**BATCH, "first_seq": 1, "last_seq": 0, "records": []},
        {**BATCH, "batch_id": None, "first_seq": 1, "last_seq": 1, "records": [b"a"]},
        {**BATCH, "epoch": "", "first_seq": 1, "last_seq": 1, "records": [b"a"]},
        {**BATCH, "base": 1, "first_seq": 1, "last_seq": 1, "records": [b"a"]},  # seq <= base
        {**BATCH, "base": -1, "first_seq": 1, "last_seq": 1, "records": [b"a"]},
        {"lane": "x", "batch_id": "b", "first_seq": 1, "last_seq": 1, "records": [b"a"]},
    ],
)
def test_inconsistent_batches_are_payload_errors(body: dict[str, object]) -> None:
    with pytest.raises(PayloadError):
        decode_batch(pack(body, v=2))


def test_a_version_1_batch_or_ack_is_refused_with_a_reason() -> None:
    old = {"lane": "x", "batch_id": "b", "first_seq": 1, "last_seq": 1, "records": [b"a"]}
    with pytest.raises(PayloadError, match="version 1"):
        decode_batch(pack(old, v=1))
    with pytest.raises(PayloadError, match="version 1"):
        decode_ack(pack({"lane": "x", "upto": 5}, v=1))


def test_batches_are_bounded_in_records_and_record_size() -> None:
    big = [(1, b"r" * (MAX_RECORD_BYTES + 1))]
    with pytest.raises(PayloadError, match="exceeds"):
        decode_batch(encode_batch("x", QueueIdentity("e"), "b", big))
    many = [(seq, b"r") for seq in range(1, MAX_BATCH_RECORDS + 2)]
    with pytest.raises(PayloadError, match="exceed"):
        decode_batch(encode_batch("x", QueueIdentity("e"), "b", many))
    at_limit = [(1, b"r" * MAX_RECORD_BYTES)]
    assert decode_batch(encode_batch("x", QueueIdentity("e"), "b", at_limit)).records


@pytest.mark.parametrize(
    "entry",
    [[0, "r", DIG], [True, "r", DIG], [1, "", DIG], [1, "r", DIG[:16]], [1, "r"], "r", [1, 2, DIG]],
)
def test_bad_ack_entries_are_refused(entry: object) -> None:
    with pytest.raises(PayloadError):
        decode_ack(
            pack(
                {"lane": "x", "epoch": "e", "batch_id": "b", "stored": [entry], "refused": []}, v=2
            )
        )
    with pytest.raises(PayloadError):
        decode_ack(
            pack(
                {"lane": "x", "epoch": "e", "batch_id": "b", "stored": [], "refused": [entry]}, v=2
            )
        )


@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    for decode in (decode_batch, decode_ack):
        with contextlib.suppress(PayloadError):
            decode(data)


@given(
    st.lists(
        st.tuples(st.integers(1, 2**40), st.text(min_size=1, max_size=40), st.binary(max_size=64)),
        max_size=20,
    )
)
def test_any_ack_roundtrips(entries: list[tuple[int, str, bytes]]) -> None:
    ack = Ack("p/l", "e", "b", tuple(Held(s, r, digest(d)) for s, r, d in entries))
    assert decode_ack(encode_ack(ack)) == ack


def test_lane_of_topic() -> None:
    assert lane_of("uplink/p07/l03/records", "records") == "p07/l03"
    assert lane_of("uplink/l1/records", "records") == "l1"
    assert lane_of("uplink//records", "records") is None
    assert lane_of("lane/p07/l03/records", "records") is None
    assert lane_of("uplink/p07/l03/acks", "records") is None
