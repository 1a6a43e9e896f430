from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from barrier.wire import PayloadError, pack
from uplink.messages import Ack, decode_ack, decode_batch, encode_ack, encode_batch, lane_of


def test_batch_roundtrip_keeps_record_bytes() -> None:
    rows = [(5, b"\x81\xa1v\x01"), (6, b"raw-6"), (7, b"")]
    b = decode_batch(encode_batch("p1/l2", "bid", rows))
    assert (b.lane, b.batch_id, b.first_seq, b.last_seq) == ("p1/l2", "bid", 5, 7)
    assert b.records == (b"\x81\xa1v\x01", b"raw-6", b"")


def test_ack_roundtrip() -> None:
    assert decode_ack(encode_ack(Ack("p1/l2", 42, "b"))) == Ack("p1/l2", 42, "b")
    assert decode_ack(encode_ack(Ack("p1/l2", 0))) == Ack("p1/l2", 0, None)


@pytest.mark.parametrize(
    "body",
    [
        {"lane": "x", "batch_id": "b", "first_seq": 1, "last_seq": 2, "records": [b"a"]},
        {"lane": "x", "batch_id": "b", "first_seq": 0, "last_seq": 0, "records": [b"a"]},
        {"lane": "x", "batch_id": "b", "first_seq": 1, "last_seq": 1, "records": ["text"]},
        {"lane": "x", "batch_id": "b", "first_seq": 1, "last_seq": 0, "records": []},
        {"lane": "x", "first_seq": 1, "last_seq": 1, "records": [b"a"]},
    ],
)
def test_inconsistent_batches_are_payload_errors(body: dict[str, object]) -> None:
    with pytest.raises(PayloadError):
        decode_batch(pack(body))


def test_negative_ack_is_refused() -> None:
    with pytest.raises(PayloadError):
        decode_ack(pack({"lane": "x", "upto": -1}))


@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    for decode in (decode_batch, decode_ack):
        with contextlib.suppress(PayloadError):
            decode(data)


def test_lane_of_topic() -> None:
    assert lane_of("uplink/p07/l03/records", "records") == "p07/l03"
    assert lane_of("uplink/l1/records", "records") == "l1"
    assert lane_of("uplink//records", "records") is None
    assert lane_of("lane/p07/l03/records", "records") is None
    assert lane_of("uplink/p07/l03/acks", "records") is None
