"""`lane/{id}/health` (retained): what an operator's console needs that the status does not say.

The lane's phase and since when, its alarms with severity and since when (and the last ones
cleared, with when), who acknowledged each, the readiness checks exactly as `/readyz` reports
them, the camera's frame rate, the uplink backlog, counters, and the acquirer's health.
Published by `lane.health_publisher`; read by `lane.console`. Same encoding rules as every
message of the protocol (`barrier.messages`): strict decoding, unknown fields ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from barrier.messages import MAX_ID, _compact, _count, _Message, _one_of, _seconds, _text
from lane.wire.codec import PayloadError, field, optional

SEVERITIES = frozenset({"critical", "major", "minor"})
ACQUIRER_STATES = frozenset({"idle", "ok", "degraded", "down"})
MAX_ALARMS = 64
# A health message's MQTT expiry: the lane publishes one each second, so the broker drops a
# retained copy this old, and a console (re)started while a lane's health is stuck sees that
# lane silent at once, not its last "all fine" copy.
HEALTH_LIFE_S = 10


def health_topic(lane: str) -> str:
    return f"lane/{lane}/health"


def _list_of(body: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    items = field(body, name, list)
    if len(items) > MAX_ALARMS * 2:
        raise PayloadError(f"field {name!r} holds more than {MAX_ALARMS * 2} entries")
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError(f"field {name!r} must hold maps")
    return list(items)


@dataclass(frozen=True)
class AlarmEntry:
    """One occurrence of an alarm: raised at `since_us`, cleared at `cleared_us` (None: active)."""

    code: str
    message: str
    severity: str
    since_us: int
    cleared_us: int | None = None
    acked_by: str | None = None
    acked_us: int | None = None

    def __post_init__(self) -> None:
        _text(self.code, "code", limit=MAX_ID)
        _text(self.message, "message", empty=True)
        _one_of(self.severity, "severity", SEVERITIES)
        _count(self.since_us, "since")
        if self.cleared_us is not None:
            _count(self.cleared_us, "cleared")
        if self.acked_by is not None:
            _text(self.acked_by, "acked_by", limit=MAX_ID)
        if self.acked_us is not None:
            _count(self.acked_us, "acked")

    @property
    def active(self) -> bool:
        return self.cleared_us is None

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "code": self.code,
                "message": self.message,
                "severity": self.severity,
                "since": self.since_us,
                "cleared": self.cleared_us,
                "acked_by": self.acked_by,
                "acked": self.acked_us,
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(
            code=field(body, "code", str),
            message=field(body, "message", str),
            severity=field(body, "severity", str),
            since_us=field(body, "since", int),
            cleared_us=optional(body, "cleared", int),
            acked_by=optional(body, "acked_by", str),
            acked_us=optional(body, "acked", int),
        )


@dataclass(frozen=True)
class CheckEntry:
    """One readiness check (`lane.health.Check` on the wire)."""

    name: str
    ok: bool
    detail: str

    def __post_init__(self) -> None:
        _text(self.name, "name", limit=MAX_ID)
        if not isinstance(self.ok, bool):
            raise PayloadError("field 'ok' must be bool")
        _text(self.detail, "detail", empty=True)

    def to_map(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        return cls(field(body, "name", str), field(body, "ok", bool), field(body, "detail", str))


@dataclass(frozen=True)
class AcquirerHealth:
    """The online payments of the last window: shares are 0..1, latencies in ms."""

    state: str
    samples: int
    availability: float | None = None
    error_rate: float | None = None
    decline_rate: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None

    def __post_init__(self) -> None:
        _one_of(self.state, "state", ACQUIRER_STATES)
        _count(self.samples, "samples")
        for name in ("availability", "error_rate", "decline_rate"):
            value = getattr(self, name)
            if value is not None and _seconds(value, name) > 1.0:
                raise PayloadError(f"field {name!r} must be within 0..1, got {value}")
        for name in ("p50_ms", "p95_ms"):
            value = getattr(self, name)
            if value is not None:
                _seconds(value, name)

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "state": self.state,
                "samples": self.samples,
                "availability": self.availability,
                "error_rate": self.error_rate,
                "decline_rate": self.decline_rate,
                "p50_ms": self.p50_ms,
                "p95_ms": self.p95_ms,
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        number = (int, float)
        return cls(
            state=field(body, "state", str),
            samples=field(body, "samples", int),
            availability=optional(body, "availability", number),
            error_rate=optional(body, "error_rate", number),
            decline_rate=optional(body, "decline_rate", number),
            p50_ms=optional(body, "p50_ms", number),
            p95_ms=optional(body, "p95_ms", number),
        )


@dataclass(frozen=True)
class LaneHealth(_Message):
    """Controller → operators (retained), about once a second while something changes."""

    phase: str
    phase_since_us: int
    alarms: list[AlarmEntry]  # active ones first, then the last cleared ones, newest first
    checks: list[CheckEntry]
    counters: dict[str, int]
    acquirer: AcquirerHealth
    ts_us: int
    camera_fps: float | None = None
    uplink_backlog: int | None = None
    oldest_unsent_s: float | None = None
    # The metro partial refunds: how many owed stand where (owed, failing, processing,
    # unpaid) and how many were made since the lane started (made). None: not said.
    refunds: dict[str, int] | None = None

    def __post_init__(self) -> None:
        _text(self.phase, "phase", limit=MAX_ID)
        _count(self.phase_since_us, "phase_since")
        if len(self.alarms) > MAX_ALARMS * 2:
            raise PayloadError(f"field 'alarms' holds more than {MAX_ALARMS * 2} entries")
        _counts(self.counters, "counters")
        if self.refunds is not None:
            _counts(self.refunds, "refunds")
        _count(self.ts_us, "ts")
        if self.camera_fps is not None:
            _seconds(self.camera_fps, "camera_fps")
        if self.uplink_backlog is not None:
            _count(self.uplink_backlog, "uplink_backlog")
        if self.oldest_unsent_s is not None:
            _seconds(self.oldest_unsent_s, "oldest_unsent_s")

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "phase": self.phase,
                "phase_since": self.phase_since_us,
                "alarms": [a.to_map() for a in self.alarms],
                "checks": [c.to_map() for c in self.checks],
                "counters": dict(self.counters),
                "acquirer": self.acquirer.to_map(),
                "ts": self.ts_us,
                "camera_fps": self.camera_fps,
                "uplink_backlog": self.uplink_backlog,
                "oldest_unsent_s": self.oldest_unsent_s,
                "refunds": None if self.refunds is None else dict(self.refunds),
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        number = (int, float)
        return cls(
            phase=field(body, "phase", str),
            phase_since_us=field(body, "phase_since", int),
            alarms=[AlarmEntry.from_map(a) for a in _list_of(body, "alarms")],
            checks=[CheckEntry.from_map(c) for c in _list_of(body, "checks")],
            counters=dict(field(body, "counters", dict)),
            acquirer=AcquirerHealth.from_map(field(body, "acquirer", dict)),
            ts_us=field(body, "ts", int),
            camera_fps=optional(body, "camera_fps", number),
            uplink_backlog=optional(body, "uplink_backlog", int),
            oldest_unsent_s=optional(body, "oldest_unsent_s", number),
            refunds=optional(body, "refunds", dict),
        )


def _counts(value: object, name: str) -> None:
    """A map of names to counts (`counters`, `refunds`), or PayloadError naming what is bad."""
    if not isinstance(value, dict):
        raise PayloadError(f"field {name!r} must be a map")
    for key, count in value.items():
        _text(key, name, limit=MAX_ID)
        _count(count, f"{name}.{key}")
