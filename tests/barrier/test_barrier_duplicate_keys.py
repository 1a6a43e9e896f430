"""A msgpack map that names a key twice is refused wherever we decode (issue #11 item 8)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barrier.messages import BarrierCommand
from lane.auth.deny import DenyList, DenyListError, decode_deny_list, encode_deny_list
from lane.auth.plaza import decode_used_token
from lane.wire.codec import DuplicateKey, PayloadError, unpack


def raw_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written pair by pair: msgpack.packb cannot repeat a key, a sender can."""
    out = bytearray()
    n = len(pairs)
    out += bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    for key, value in pairs:
        out += msgpack.packb(key, use_bin_type=True) + msgpack.packb(value, use_bin_type=True)
    return bytes(out)


CLOSE_THEN_OPEN = raw_map(
    [("v", 1), ("op", "close"), ("cmd_id", "c1"), ("deadline", 5), ("lane", "p/l"), ("op", "open")]
)


def test_a_command_saying_close_then_open_is_refused_not_read_as_open() -> None:
    assert msgpack.unpackb(CLOSE_THEN_OPEN)["op"] == "open"  # what msgpack alone would do
    with pytest.raises(DuplicateKey, match="'op'"):
        BarrierCommand.decode(CLOSE_THEN_OPEN)


def test_a_repeated_version_is_refused() -> None:
    with pytest.raises(DuplicateKey, match="'v'"):
        unpack(raw_map([("v", 1), ("v", 1)]))


def test_a_duplicate_inside_a_nested_map_is_refused() -> None:
    inner = bytes([0x82]) + msgpack.packb("broker") + b"\xc3" + msgpack.packb("broker") + b"\xc2"
    payload = bytes([0x82]) + msgpack.packb("v") + b"\x01" + msgpack.packb("link") + inner
    with pytest.raises(DuplicateKey, match="'broker'"):
        unpack(payload)


def test_trust_updates_with_a_repeated_key_are_refused() -> None:
    good = encode_deny_list(DenyList.of(3, ["acct-1"]))
    assert decode_deny_list(good).generation == 3
    twice = raw_map([("v", 1), ("generation", 1), ("accounts", []), ("generation", 2**62)])
    with pytest.raises(DenyListError, match="duplicate key 'generation'"):
        decode_deny_list(twice)
    used = raw_map([("v", 1), ("token_id", "a"), ("exp", 1), ("lane", "x"), ("ts", 1.0)] * 2)
    with pytest.raises(PayloadError, match="duplicate"):
        decode_used_token(used)


keys = st.text(min_size=1, max_size=8)
scalars = st.one_of(st.integers(-(2**31), 2**31), st.text(max_size=8), st.booleans(), st.none())


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(keys, scalars), min_size=1, max_size=12),
    pick=st.integers(min_value=0),
    value=scalars,
)
def test_any_map_with_a_repeated_key_is_refused(
    pairs: list[tuple[str, Any]], pick: int, value: Any
) -> None:
    key = pairs[pick % len(pairs)][0]
    with pytest.raises(DuplicateKey):
        unpack(raw_map([("v", 1), *pairs, (key, value)]))


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(keys.filter(lambda k: k != "v"), scalars, max_size=12))
def test_maps_without_repeats_decode_as_before(body: dict[str, Any]) -> None:
    assert unpack(raw_map([("v", 1), *body.items()])) == {"v": 1, **body}
