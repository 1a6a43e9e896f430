from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barrier.messages import (
    AttendantCommand,
    BarrierAck,
    BarrierCommand,
    BarrierStatus,
    DeviceQuery,
    DeviceSnapshot,
    DisplayMessage,
    LaneStatus,
    SensorReading,
)
from lane.wire import topics
from lane.wire.codec import PayloadError, pack, unpack

MESSAGES: list[Any] = [
    BarrierCommand,
    BarrierAck,
    BarrierStatus,
    SensorReading,
    DisplayMessage,
    LaneStatus,
    AttendantCommand,
    DeviceQuery,
    DeviceSnapshot,
]

EXAMPLES: list[Any] = [
    BarrierCommand("open", "v1/open", 1_700_000_000_000_000, "p07/l03"),
    BarrierAck("v1/open", True, "opening"),
    BarrierAck("v1/close", False, "open", "safety_loop_occupied"),
    BarrierStatus("closing", 7, 1_700_000_000_000_001, None, "a1b2c3"),
    BarrierStatus("open", 8, 1_700_000_000_000_002, "safety_reversal", "a1b2c3"),
    SensorReading("entry_loop", True, None, 1_700_000_000_000_003, 4),
    SensorReading("classifier", None, 2, 1_700_000_000_000_004),
    DisplayMessage(["Class 2", "EUR 3.40"], 10.0),
    LaneStatus("idle", 3, 1.5, {"broker": True, "backoffice": False}, ["queue_high"], 17),
    LaneStatus.offline(18),
    LaneStatus("fault", 0, None, {"broker": True}, ["barrier_unreadable"], 23, accepting=False),
    AttendantCommand("open", "att-1", "broken phone", "alice", 19),
    DeviceQuery("q-1", "p07/l03", 20),
    DeviceSnapshot("open", {"entry_loop": False, "safety_loop": True}, "a1b2c3", 9, 21),
    DeviceSnapshot("fault", {}, "a1b2c3", 10, 22, "q-1", "motor_overcurrent"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_roundtrip(message: Any) -> None:
    data = message.encode()
    assert type(message).decode(data) == message
    assert unpack(data)["v"] == 1


def test_wire_keys_follow_the_design_table() -> None:
    body = unpack(BarrierCommand("close", "c1", 5, "p07/l03").encode())
    assert body == {"v": 1, "op": "close", "cmd_id": "c1", "deadline": 5, "lane": "p07/l03"}
    assert unpack(SensorReading("classifier", None, 3, 9).encode()) == {
        "v": 1,
        "sensor": "classifier",
        "class": 3,
        "ts": 9,
    }
    assert unpack(DisplayMessage(["a"], 2.5).encode()) == {"v": 1, "lines": ["a"], "ttl": 2.5}
    assert unpack(LaneStatus("idle", 0, None, {}, [], 1, accepting=True).encode())["accepting"]
    assert "accepting" not in unpack(LaneStatus.offline(1).encode())  # the will: unknown


@pytest.mark.parametrize(
    ("ttl", "expiry"), [(10.0, 10), (3.0, 3), (2.9, 2), (0.4, 1), (0.0, 1), (1e12, 2**32 - 1)]
)
def test_a_display_text_expires_on_the_broker_within_its_ttl(ttl: float, expiry: int) -> None:
    """Its MQTT 5 expiry: the ttl's whole seconds, never more (a display that connects is
    never handed a text past its ttl) but at least 1 (mosquitto takes 0 for never)."""
    assert DisplayMessage(["a"], ttl).expiry_s == expiry


def test_device_messages_follow_the_contract() -> None:
    assert unpack(DeviceQuery("q-1", "p07/l03", 5).encode()) == {
        "v": 1,
        "query_id": "q-1",
        "lane": "p07/l03",
        "ts": 5,
    }
    snap = DeviceSnapshot("closed", {"exit_loop": True}, "s1", 4, 6, "q-1", "stuck")
    assert unpack(snap.encode()) == {
        "v": 1,
        "barrier": "closed",
        "sensors": {"exit_loop": True},
        "session": "s1",
        "seq": 4,
        "ts": 6,
        "query_id": "q-1",
        "error": "stuck",
    }
    # A snapshot published on connect answers no query: the key is left out, not nil.
    assert "query_id" not in unpack(DeviceSnapshot("open", {}, "s1", 1, 1).encode())
    assert topics.device_query("p07/l03") == "lane/p07/l03/device/query"
    assert topics.device_snapshot("p07/l03") == "lane/p07/l03/device/snapshot"


def test_unknown_fields_are_ignored() -> None:
    data = pack({"cmd_id": "c1", "ok": True, "state": "open", "future": [1, 2]})
    assert BarrierAck.decode(data) == BarrierAck("c1", True, "open")


_SNAP: dict[str, Any] = {"sensors": {"entry_loop": False}, "session": "s", "seq": 1, "ts": 1}


@pytest.mark.parametrize(
    ("cls", "body", "needle"),
    [
        (BarrierCommand, {"op": "lift", "cmd_id": "c", "deadline": 1, "lane": "x"}, "'op'"),
        (BarrierCommand, {"op": "open", "cmd_id": "", "deadline": 1, "lane": "x"}, "'cmd_id'"),
        (BarrierCommand, {"op": "open", "cmd_id": "c", "deadline": -1, "lane": "x"}, "deadline"),
        (BarrierCommand, {"op": "open", "cmd_id": "c", "deadline": 1.0, "lane": "x"}, "deadline"),
        (BarrierCommand, {"op": "open", "cmd_id": "c", "deadline": 1}, "'lane'"),
        (BarrierAck, {"cmd_id": "c", "ok": 1, "state": "open"}, "'ok'"),
        (BarrierAck, {"cmd_id": "c", "ok": True, "state": "offline"}, "'state'"),
        (BarrierStatus, {"state": "ajar", "seq": 1, "ts": 1}, "'state'"),
        (BarrierStatus, {"state": "open", "seq": True, "ts": 1}, "'seq'"),
        (SensorReading, {"sensor": "entry_loop", "ts": 1}, "occupied"),
        (SensorReading, {"sensor": "classifier", "occupied": True, "ts": 1}, "class"),
        (SensorReading, {"sensor": "../x", "occupied": True, "ts": 1}, "'sensor'"),
        (DisplayMessage, {"lines": ["a", 3], "ttl": 1}, "'lines'"),
        (DisplayMessage, {"lines": ["a"], "ttl": float("nan")}, "'ttl'"),
        (DisplayMessage, {"lines": ["a"] * 17, "ttl": 1}, "'lines'"),
        (LaneStatus, {"state": "idle", "link": {"a": 1}, "faults": [], "ts": 1}, "'link'"),
        (LaneStatus, {"state": "idle", "link": {}, "faults": [None], "ts": 1}, "'faults'"),
        (
            LaneStatus,
            {"state": "idle", "link": {}, "faults": [], "ts": 1, "accepting": 1},
            "'accepting'",
        ),
        (AttendantCommand, {"op": "open", "cmd_id": "c", "reason": "", "ts": 1}, "'attendant'"),
        (DeviceQuery, {"query_id": "", "lane": "x", "ts": 1}, "'query_id'"),
        (DeviceQuery, {"query_id": "q", "ts": 1}, "'lane'"),
        (DeviceSnapshot, {"barrier": "ajar", **_SNAP}, "'barrier'"),
        (DeviceSnapshot, {"barrier": "open", **_SNAP, "sensors": {"exit_loop": 1}}, "'sensors'"),
        (DeviceSnapshot, {"barrier": "open", **_SNAP, "sensors": {"../x": True}}, "'sensors'"),
        (DeviceSnapshot, {"barrier": "open", **_SNAP, "sensors": {"classifier": True}}, "sensors"),
        (DeviceSnapshot, {"barrier": "open", **_SNAP, "sensors": [True]}, "'sensors'"),
        (
            DeviceSnapshot,
            {"barrier": "open", **_SNAP, "sensors": {f"s{i}": True for i in range(17)}},
            "'sensors'",
        ),
        (DeviceSnapshot, {"barrier": "open", **_SNAP, "seq": -1}, "'seq'"),
        (DeviceSnapshot, {"barrier": "open", **_SNAP, "query_id": ""}, "'query_id'"),
    ],
)
def test_malformed_fields_are_named(cls: Any, body: dict[str, Any], needle: str) -> None:
    with pytest.raises(PayloadError, match=needle):
        cls.decode(pack(body))


def test_constructing_a_bad_message_in_code_fails_too() -> None:
    with pytest.raises(PayloadError, match="'op'"):
        BarrierCommand("raise", "c1", 1, "p07/l03")


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x93\x01\x02\x03", msgpack.packb({"v": 2}), msgpack.packb({"v": "1"})],
)
def test_not_a_message(cls: Any, data: bytes) -> None:
    with pytest.raises(PayloadError):
        cls.decode(data)


def test_a_reserved_byte_is_named_in_the_error() -> None:
    # msgpack's own FormatError says nothing; the console shows this text to the operator.
    with pytest.raises(PayloadError, match="FormatError: byte 0xc1 starts no msgpack value"):
        unpack(b"\xc1 not msgpack")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 2**31 - 1, 2**63, 2**64 - 1, -(2**63)]),
    st.integers(min_value=-5, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "open", "close", "closed", "classifier", "entry_loop", "x" * 300]),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(["a"])), scalars, max_size=3),
)
KEYS = [
    "v", "op", "cmd_id", "deadline", "lane", "ok", "state", "error", "seq", "ts", "session",
    "sensor", "occupied", "class", "lines", "ttl", "uplink_backlog", "oldest_unsent_s", "link",
    "faults", "reason", "attendant", "query_id", "barrier", "sensors",
]  # fmt: skip
maps = st.dictionaries(st.sampled_from(KEYS), values).map(
    lambda d: msgpack.packb({"v": 1, **d} if d.get("v") is None else d, use_bin_type=True)
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_bytes_only_raise_payload_error(data: bytes) -> None:
    for cls in MESSAGES:
        with contextlib.suppress(PayloadError):
            cls.decode(data)


@settings(max_examples=400, deadline=None)
@given(data=maps)
def test_plausible_maps_only_raise_payload_error(data: bytes) -> None:
    for cls in MESSAGES:
        try:
            decoded = cls.decode(data)
        except PayloadError:
            continue
        # Whatever decodes is a valid message: it encodes and decodes to itself.
        assert cls.decode(decoded.encode()) == decoded


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.text(max_size=40), max_size=5),
    ttl=st.floats(min_value=0, max_value=1e6),
    seq=st.integers(min_value=0, max_value=2**40),
    cls_=st.integers(min_value=0, max_value=20),
)
def test_roundtrip_property(lines: list[str], ttl: float, seq: int, cls_: int) -> None:
    for message in (
        DisplayMessage(lines, ttl),
        BarrierStatus("open", seq, seq, None, "s"),
        SensorReading("classifier", None, cls_, seq, seq),
    ):
        assert type(message).decode(message.encode()) == message


@settings(max_examples=400, deadline=None)
@given(
    example=st.sampled_from(EXAMPLES),
    key=st.sampled_from(KEYS),
    value=values,
    delete=st.booleans(),
)
def test_valid_message_with_one_field_broken(
    example: Any, key: str, value: Any, delete: bool
) -> None:
    body = example.to_map()
    if delete:
        body.pop(key, None)
    else:
        body[key] = value
    cls = type(example)
    try:
        decoded = cls.decode(pack(body))
    except PayloadError:
        return
    assert cls.decode(decoded.encode()) == decoded
