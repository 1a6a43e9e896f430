"""The messages of the barrier and lane I/O protocol: frozen dataclasses, pure codecs.

Every message maps to a versioned msgpack map (see `lane.wire.codec`) and back. Decoding is
strict: a wrong type, a missing field, an unknown enum value or an out-of-range number raises
`PayloadError` naming the field; nothing else ever escapes a decoder. Unknown extra fields are
ignored, so a newer sender can add optional fields without breaking an older receiver.

Wire keys follow the design table (`ts`, `deadline`, `ttl`, `class`); times on the wire are
integers of UTC Unix microseconds, durations are seconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from lane.wire.codec import PayloadError, field, optional, pack, unpack

BARRIER_STATES = frozenset({"closed", "opening", "open", "closing", "fault", "offline"})
# A device that answers a command is by definition online.
ACK_STATES = BARRIER_STATES - {"offline"}
BARRIER_OPS = frozenset({"open", "close"})
# ack_alarm: the alarm code is the command's `reason` (docs/console.md).
# no_pass / confirm_fare: a closed road's exit lane (docs/closed-road.md).
ATTENDANT_OPS = frozenset(
    {"open", "close_lane", "reopen_lane", "ack_alarm", "no_pass", "confirm_fare"}
)
CLASSIFIER = "classifier"
# The seq of a device's will message: the will is the last word of its session by definition.
WILL_SEQ = 2**31 - 1

MAX_ID = 128
MAX_TEXT = 256
MAX_LINES = 16
MAX_SENSORS = 16
MAX_EXPIRY_S = 2**32 - 1  # MQTT 5 Message Expiry Interval: a four-byte integer
_NAME = re.compile(r"[a-z0-9_]{1,32}\Z")


def _text(value: str, name: str, *, empty: bool = False, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"field {name!r} must be str, got {type(value).__name__}")
    if not value and not empty:
        raise PayloadError(f"field {name!r} must not be empty")
    if len(value) > limit:
        raise PayloadError(f"field {name!r} is longer than {limit} characters")
    return value


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"field {name!r} must be int, got {type(value).__name__}")
    if value < 0:
        raise PayloadError(f"field {name!r} must not be negative, got {value}")
    return value


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"field {name!r} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise PayloadError(f"field {name!r} must be a finite number >= 0, got {value}")
    return float(value)


def _one_of(value: str, name: str, allowed: frozenset[str]) -> str:
    if value not in allowed:
        raise PayloadError(f"field {name!r} must be one of {sorted(allowed)}, got {value!r}")
    return value


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    """Optional fields that are None are left out of the map."""
    return {k: v for k, v in body.items() if v is not None}


class _Message:
    """Shared encode/decode on top of each class's to_map/from_map."""

    def to_map(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        return pack(self.to_map())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        if not isinstance(data, bytes | bytearray):
            raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
        return cls.from_map(unpack(bytes(data)))


@dataclass(frozen=True)
class BarrierCommand(_Message):
    """Controller → barrier: move. `deadline_us`: UTC Unix µs after which it must not act."""

    op: str
    cmd_id: str
    deadline_us: int
    lane: str

    def __post_init__(self) -> None:
        _one_of(self.op, "op", BARRIER_OPS)
        _text(self.cmd_id, "cmd_id", limit=MAX_ID)
        _count(self.deadline_us, "deadline")
        _text(self.lane, "lane", limit=MAX_ID)

    def to_map(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "cmd_id": self.cmd_id,
            "deadline": self.deadline_us,
            "lane": self.lane,
        }

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            op=field(body, "op", str),
            cmd_id=field(body, "cmd_id", str),
            deadline_us=field(body, "deadline", int),
            lane=field(body, "lane", str),
        )


@dataclass(frozen=True)
class BarrierAck(_Message):
    """Barrier → controller: the answer to one command, with the state right after it."""

    cmd_id: str
    ok: bool
    state: str
    error: str | None = None

    def __post_init__(self) -> None:
        _text(self.cmd_id, "cmd_id", limit=MAX_ID)
        if not isinstance(self.ok, bool):
            raise PayloadError("field 'ok' must be bool")
        _one_of(self.state, "state", ACK_STATES)
        if self.error is not None:
            _text(self.error, "error")

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {"cmd_id": self.cmd_id, "ok": self.ok, "state": self.state, "error": self.error}
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            cmd_id=field(body, "cmd_id", str),
            ok=field(body, "ok", bool),
            state=field(body, "state", str),
            error=optional(body, "error", str),
        )


@dataclass(frozen=True)
class BarrierStatus(_Message):
    """Barrier → all (retained): the barrier's state.

    `seq` increases by one with every state a device publishes within one `session` (a token
    the device draws afresh for each connection to the broker); the will message of that
    connection carries the same session and seq = WILL_SEQ. `error` says why the device is in
    a state nobody commanded (a fault reason, "safety_reversal").
    """

    state: str
    seq: int
    ts_us: int
    error: str | None = None
    session: str = ""

    def __post_init__(self) -> None:
        _one_of(self.state, "state", BARRIER_STATES)
        _count(self.seq, "seq")
        _count(self.ts_us, "ts")
        if self.error is not None:
            _text(self.error, "error")
        _text(self.session, "session", empty=True, limit=MAX_ID)

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "state": self.state,
                "seq": self.seq,
                "ts": self.ts_us,
                "error": self.error,
                "session": self.session,
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            state=field(body, "state", str),
            seq=field(body, "seq", int),
            ts_us=field(body, "ts", int),
            error=optional(body, "error", str),
            session=optional(body, "session", str) or "",
        )


@dataclass(frozen=True)
class SensorReading(_Message):
    """Lane I/O → controller: a loop/light curtain changed ({occupied}) or a class was read."""

    sensor: str
    occupied: bool | None
    vehicle_class: int | None
    ts_us: int
    seq: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sensor, str) or not _NAME.match(self.sensor):
            raise PayloadError(f"field 'sensor' must match [a-z0-9_]{{1,32}}, got {self.sensor!r}")
        if self.sensor == CLASSIFIER:
            if self.vehicle_class is None or self.occupied is not None:
                raise PayloadError("a classifier reading carries 'class' and no 'occupied'")
            _count(self.vehicle_class, "class")
        else:
            if self.occupied is None or self.vehicle_class is not None:
                raise PayloadError(f"a {self.sensor} reading carries 'occupied' and no 'class'")
            if not isinstance(self.occupied, bool):
                raise PayloadError("field 'occupied' must be bool")
        _count(self.ts_us, "ts")
        if self.seq is not None:
            _count(self.seq, "seq")

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "sensor": self.sensor,
                "occupied": self.occupied,
                "class": self.vehicle_class,
                "ts": self.ts_us,
                "seq": self.seq,
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            sensor=field(body, "sensor", str),
            occupied=optional(body, "occupied", bool),
            vehicle_class=optional(body, "class", int),
            ts_us=field(body, "ts", int),
            seq=optional(body, "seq", int),
        )


@dataclass(frozen=True)
class DisplayMessage(_Message):
    """Controller → display: lines to show for `ttl_s` seconds (then the display blanks)."""

    lines: list[str]
    ttl_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.lines, list):
            raise PayloadError("field 'lines' must be a list")
        if len(self.lines) > MAX_LINES:
            raise PayloadError(f"field 'lines' holds more than {MAX_LINES} lines")
        for line in self.lines:
            _text(line, "lines", empty=True)
        _seconds(self.ttl_s, "ttl")

    @property
    def expiry_s(self) -> int:
        """Its MQTT 5 message expiry: the whole seconds of its ttl, rounded down so the broker
        drops its retained copy before the ttl ends, never after (a display that connects gets
        no text the lane has stopped showing); at least 1 (mosquitto takes 0 for
        never expiring), and at most the property's 32 bits."""
        return min(max(1, math.floor(self.ttl_s)), MAX_EXPIRY_S)

    @classmethod
    def none(cls) -> DisplayMessage:
        """No text: what the lane says on connecting, before its status, so that a text a
        killed process (or the lane before an outage) left retained is not handed to a display
        over a lane that no longer shows it."""
        return cls([], 0.0)

    def to_map(self) -> dict[str, Any]:
        return {"lines": list(self.lines), "ttl": self.ttl_s}

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(lines=list(field(body, "lines", list)), ttl_s=field(body, "ttl", (int, float)))


@dataclass(frozen=True)
class LaneStatus(_Message):
    """Controller → operators and the display (retained): lane health. None means unknown (the
    will, or a lane of an earlier release)."""

    state: str
    uplink_backlog: int | None
    oldest_unsent_s: float | None
    link: dict[str, bool]
    faults: list[str]
    ts_us: int
    # Whether the lane takes payments (false: a fault or an attendant closed it). A display
    # shows "Lane closed" while it is false and no text of the lane's is left to show.
    accepting: bool | None = None

    OFFLINE: ClassVar[str] = "offline"

    def __post_init__(self) -> None:
        _text(self.state, "state", limit=MAX_ID)
        if self.uplink_backlog is not None:
            _count(self.uplink_backlog, "uplink_backlog")
        if self.oldest_unsent_s is not None:
            _seconds(self.oldest_unsent_s, "oldest_unsent_s")
        if not isinstance(self.link, dict):
            raise PayloadError("field 'link' must be a map")
        for name, up in self.link.items():
            _text(name, "link", limit=MAX_ID)
            if not isinstance(up, bool):
                raise PayloadError(f"field 'link' entry {name!r} must be bool")
        if not isinstance(self.faults, list):
            raise PayloadError("field 'faults' must be a list")
        for fault in self.faults:
            _text(fault, "faults", limit=MAX_ID)
        _count(self.ts_us, "ts")
        if self.accepting is not None and not isinstance(self.accepting, bool):
            raise PayloadError("field 'accepting' must be bool")

    @classmethod
    def offline(cls, ts_us: int) -> LaneStatus:
        """The controller's will: the lane is offline, nothing else is known."""
        return cls(cls.OFFLINE, None, None, {}, [], ts_us)

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "state": self.state,
                "uplink_backlog": self.uplink_backlog,
                "oldest_unsent_s": self.oldest_unsent_s,
                "link": dict(self.link),
                "faults": list(self.faults),
                "ts": self.ts_us,
                "accepting": self.accepting,
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        oldest = optional(body, "oldest_unsent_s", (int, float))
        return cls(
            state=field(body, "state", str),
            uplink_backlog=optional(body, "uplink_backlog", int),
            oldest_unsent_s=None if oldest is None else _seconds(oldest, "oldest_unsent_s"),
            link=dict(field(body, "link", dict)),
            faults=list(field(body, "faults", list)),
            ts_us=field(body, "ts", int),
            accepting=optional(body, "accepting", bool),
        )


@dataclass(frozen=True)
class AttendantCommand(_Message):
    """Attendant console → controller: a manual open, or closing/reopening the lane."""

    op: str
    cmd_id: str
    reason: str
    attendant: str
    ts_us: int

    def __post_init__(self) -> None:
        _one_of(self.op, "op", ATTENDANT_OPS)
        _text(self.cmd_id, "cmd_id", limit=MAX_ID)
        _text(self.reason, "reason", empty=True)
        _text(self.attendant, "attendant", limit=MAX_ID)
        _count(self.ts_us, "ts")

    def to_map(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "cmd_id": self.cmd_id,
            "reason": self.reason,
            "attendant": self.attendant,
            "ts": self.ts_us,
        }

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            op=field(body, "op", str),
            cmd_id=field(body, "cmd_id", str),
            reason=field(body, "reason", str),
            attendant=field(body, "attendant", str),
            ts_us=field(body, "ts", int),
        )


@dataclass(frozen=True)
class DeviceQuery(_Message):
    """Controller → device: publish your whole truth now (answered by a DeviceSnapshot)."""

    query_id: str
    lane: str
    ts_us: int

    def __post_init__(self) -> None:
        _text(self.query_id, "query_id", limit=MAX_ID)
        _text(self.lane, "lane", limit=MAX_ID)
        _count(self.ts_us, "ts")

    def to_map(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "lane": self.lane, "ts": self.ts_us}

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            query_id=field(body, "query_id", str),
            lane=field(body, "lane", str),
            ts_us=field(body, "ts", int),
        )


@dataclass(frozen=True)
class DeviceSnapshot(_Message):
    """Device → controller: the barrier position and every sensor it knows, at one `seq`.

    Published when the device (re)connects (no `query_id`) and in answer to a DeviceQuery (its
    `query_id` echoed). `seq` and `session` are those of the device's `barrier/state` stream, so
    the controller can order a snapshot against state messages; `sensors` maps each loop or
    curtain to occupied.
    """

    barrier: str
    sensors: dict[str, bool]
    session: str
    seq: int
    ts_us: int
    query_id: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        _one_of(self.barrier, "barrier", BARRIER_STATES)
        if not isinstance(self.sensors, dict):
            raise PayloadError("field 'sensors' must be a map")
        if len(self.sensors) > MAX_SENSORS:
            raise PayloadError(f"field 'sensors' holds more than {MAX_SENSORS} entries")
        for name, occupied in self.sensors.items():
            if not isinstance(name, str) or not _NAME.match(name) or name == CLASSIFIER:
                raise PayloadError(f"field 'sensors' has a bad sensor name {name!r}")
            if not isinstance(occupied, bool):
                raise PayloadError(f"field 'sensors' entry {name!r} must be bool")
        _text(self.session, "session", empty=True, limit=MAX_ID)
        _count(self.seq, "seq")
        _count(self.ts_us, "ts")
        if self.query_id is not None:
            _text(self.query_id, "query_id", limit=MAX_ID)
        if self.error is not None:
            _text(self.error, "error")

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "barrier": self.barrier,
                "sensors": dict(self.sensors),
                "session": self.session,
                "seq": self.seq,
                "ts": self.ts_us,
                "query_id": self.query_id,
                "error": self.error,
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            barrier=field(body, "barrier", str),
            sensors=dict(field(body, "sensors", dict)),
            session=field(body, "session", str),
            seq=field(body, "seq", int),
            ts_us=field(body, "ts", int),
            query_id=optional(body, "query_id", str),
            error=optional(body, "error", str),
        )
