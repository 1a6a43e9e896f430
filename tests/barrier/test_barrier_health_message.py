"""LaneHealth (`lane/{id}/health`): round trips, and every malformed payload refused naming
the field, like every message of the protocol."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from barrier.health_message import AcquirerHealth, AlarmEntry, CheckEntry, LaneHealth
from lane.wire.codec import PayloadError, pack

ids = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=20)
times = st.integers(0, 2**62)
alarms = st.builds(
    AlarmEntry,
    code=ids,
    message=st.text(max_size=50),
    severity=st.sampled_from(["critical", "major", "minor"]),
    since_us=times,
    cleared_us=st.none() | times,
    acked_by=st.none() | ids,
    acked_us=st.none() | times,
)
healths = st.builds(
    LaneHealth,
    phase=ids,
    phase_since_us=times,
    alarms=st.lists(alarms, max_size=5),
    checks=st.lists(st.builds(CheckEntry, ids, st.booleans(), st.text(max_size=30)), max_size=4),
    counters=st.dictionaries(ids, st.integers(0, 10**9), max_size=4),
    acquirer=st.builds(
        AcquirerHealth,
        state=st.sampled_from(["idle", "ok", "degraded", "down"]),
        samples=st.integers(0, 100),
        availability=st.none() | st.floats(0, 1),
        p95_ms=st.none() | st.floats(0, 10_000),
    ),
    ts_us=times,
    camera_fps=st.none() | st.floats(0, 120),
    uplink_backlog=st.none() | st.integers(0, 10**6),
    oldest_unsent_s=st.none() | st.floats(0, 10**6),
    refunds=st.none() | st.dictionaries(ids, st.integers(0, 10**9), max_size=5),
)


@given(healths)
def test_health_round_trips(health: LaneHealth) -> None:
    assert LaneHealth.decode(health.encode()) == health


def _valid() -> dict[str, object]:
    health = LaneHealth(
        "idle",
        1,
        [AlarmEntry("camera_blackout", "dark", "major", 5)],
        [CheckEntry("camera", False, "dark")],
        {"passed": 3},
        AcquirerHealth("ok", 5, 1.0, 0.0, 0.0, 10.0, 20.0),
        9,
    )
    return health.to_map()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": 3}, "field 'phase' must be str"),
        ({"alarms": "x"}, "field 'alarms' must be list"),
        ({"alarms": ["x"]}, "must hold maps"),
        ({"alarms": [{"code": "a", "message": "", "severity": "fatal", "since": 1}]}, "severity"),
        ({"alarms": [{"code": "a", "message": "", "severity": "minor", "since": -1}]}, "negative"),
        ({"counters": {"passed": -1}}, "must not be negative"),
        ({"acquirer": {"state": "ok", "samples": 1, "availability": 1.5}}, "within 0..1"),
        ({"acquirer": {"state": "sleepy", "samples": 1}}, "field 'state'"),
        ({"checks": [{"name": "camera", "ok": "yes", "detail": ""}]}, "field 'ok'"),
        ({"camera_fps": True}, "camera_fps"),
        ({"refunds": {"failing": -1}}, "refunds.failing"),
        ({"refunds": [1]}, "field 'refunds' must be dict"),
    ],
)
def test_malformed_health_is_refused_naming_the_field(
    change: dict[str, object], message: str
) -> None:
    body = {**_valid(), **change}
    with pytest.raises(PayloadError, match=message):
        LaneHealth.decode(pack(body))


def test_not_a_map_is_refused() -> None:
    with pytest.raises(PayloadError):
        LaneHealth.decode(msgpack.packb([1, 2]))
