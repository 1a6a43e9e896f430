"""The console's plaza model: what it makes of each lane message (pure, times as parameters)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from barrier.health_message import (
    HEALTH_LIFE_S,
    AcquirerHealth,
    AlarmEntry,
    CheckEntry,
    LaneHealth,
)
from barrier.messages import BarrierStatus, DisplayMessage, LaneStatus, SensorReading
from lane.console.feed import lane_filter
from lane.console.model import SILENT_AFTER_S, STUCK_AFTER_S, Plaza, split_topic
from lane.wire.codec import pack

LANE = "p07/l03"
T0 = 1_700_000_000.0


def health(phase: str = "idle", since: float = T0, alarms: list[AlarmEntry] | None = None) -> bytes:
    return LaneHealth(
        phase,
        int(since * 1e6),
        alarms or [],
        [CheckEntry("camera", True, "scanner running")],
        {"passed": 4},
        AcquirerHealth("ok", 5),
        int(T0 * 1e6),
        camera_fps=29.5,
        uplink_backlog=0,
    ).encode()


def alarm(code: str, severity: str, since: float = T0, cleared: float | None = None) -> AlarmEntry:
    return AlarmEntry(
        code,
        f"{code}!",
        severity,
        int(since * 1e6),
        None if cleared is None else int(cleared * 1e6),
    )


def test_a_lane_tile_takes_the_colour_of_its_worst_active_alarm() -> None:
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/health", health(), T0, T0)
    assert plaza.lanes[LANE].tile(T0 + 1) == "ok"
    worst = [
        alarm("keyset_stale", "minor"),
        alarm("barrier_offline", "critical"),
        alarm("camera_blackout", "major", cleared=T0),
    ]
    plaza.apply(f"lane/{LANE}/health", health(alarms=worst), T0 + 1, T0 + 1)
    snap = plaza.snapshot(T0 + 2, T0 + 2)
    (lane,) = snap["lanes"]
    assert lane["tile"] == "critical"
    assert {a["code"] for a in lane["alarms"]} == {"keyset_stale", "barrier_offline"}
    # The plaza list keeps cleared ones too, active first.
    assert [a["cleared"] is None for a in snap["alarms"]] == [True, True, False]


@pytest.mark.parametrize(
    ("status", "health_age", "tile"),
    [("idle", 1.0, "ok"), ("offline", 1.0, "offline"), ("idle", SILENT_AFTER_S + 1, "silent")],
)
def test_an_offline_or_silent_lane_is_not_shown_green(
    status: str, health_age: float, tile: str
) -> None:
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/health", health(), T0, T0)
    plaza.apply(f"lane/{LANE}/status", LaneStatus(status, 0, None, {}, [], 1).encode(), T0, T0)
    assert plaza.lanes[LANE].tile(T0 + health_age) == tile
    phase = plaza.snapshot(T0 + health_age, T0 + health_age)["lanes"][0]["phase"]
    assert phase == ("offline" if status == "offline" else "idle")


def test_a_lane_that_stopped_publishing_is_silent_whatever_the_wall_clock_does() -> None:
    """The age of the last health message was read on the wall clock: stepped back (NTP, an
    operator) by more than the age, a lane that had stopped publishing looked freshly heard."""
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/health", health(), T0, 500.0)
    later = 500.0 + SILENT_AFTER_S + 1
    lane = plaza.snapshot(T0 - 3600, later)["lanes"][0]  # the wall clock went back an hour
    assert (lane["tile"], lane["health_age_s"]) == ("silent", SILENT_AFTER_S + 1)
    # Stepped forward instead, a lane still publishing is not silent either.
    lane = plaza.snapshot(T0 + 3600, 501.0)["lanes"][0]
    assert (lane["tile"], lane["health_age_s"]) == ("ok", 1.0)


def test_a_lane_too_long_in_a_busy_phase_is_flagged_stuck() -> None:
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/health", health("opening", since=T0), T0, T0)
    assert not plaza.snapshot(T0 + STUCK_AFTER_S - 1, T0 + STUCK_AFTER_S - 1)["lanes"][0]["stuck"]
    assert plaza.snapshot(T0 + STUCK_AFTER_S + 1, T0 + STUCK_AFTER_S + 1)["lanes"][0]["stuck"]
    plaza.apply(f"lane/{LANE}/health", health("idle", since=T0), T0, T0)
    assert not plaza.snapshot(T0 + 3600, T0 + 3600)["lanes"][0]["stuck"]  # resting is not stuck


@pytest.mark.parametrize("lane_ahead_s", [3600.0, -3600.0, 0.0])
def test_a_lane_too_long_in_a_busy_phase_is_flagged_stuck_whatever_its_clock_says(
    lane_ahead_s: float,
) -> None:
    """The time in a phase was the console's wall clock less the lane's phase start: a lane
    whose clock runs ahead of the console's (no NTP, or stepped back after the phase began)
    showed 0 s in it and never STUCK?, one behind it STUCK? at once. Measured on the lane's
    own clock (its message's `ts` less the phase start), then on the console's monotonic."""
    plaza = Plaza(T0)
    lane_now = T0 + lane_ahead_s
    message = LaneHealth.decode(health("opening", since=lane_now - 5))
    message = replace(message, ts_us=int(lane_now * 1e6))
    plaza.apply(f"lane/{LANE}/health", message.encode(), T0, 100.0)
    lane = plaza.snapshot(T0, 100.0)["lanes"][0]
    assert (lane["phase_for_s"], lane["stuck"]) == (5.0, False)
    lane = plaza.snapshot(T0 - 7200, 100.0 + STUCK_AFTER_S)["lanes"][0]  # console clock stepped
    assert (lane["phase_for_s"], lane["stuck"]) == (5.0 + STUCK_AFTER_S, True)


def test_the_display_blanks_when_its_ttl_runs_out() -> None:
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/display", DisplayMessage(["Thank you"], 3.0).encode(), T0, T0)
    assert plaza.snapshot(T0 + 2, T0 + 2)["lanes"][0]["display"] == ["Thank you"]
    assert plaza.snapshot(T0 + 4, T0 + 4)["lanes"][0]["display"] == []


def test_a_retained_health_handed_over_late_is_as_old_as_its_expiry_says() -> None:
    """A console that starts is handed each lane's retained health with what is left of its
    life: a lane whose health stopped 7 s ago is silent 4 s later, not 10 s after the console
    started (shown green meanwhile); a fresh message (its whole life left) is heard now."""
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/health", health(), T0, T0, expiry_s=HEALTH_LIFE_S - 7)
    lane = plaza.snapshot(T0, T0)["lanes"][0]
    assert (lane["tile"], lane["health_age_s"]) == ("ok", 7.0)
    assert plaza.lanes[LANE].tile(T0 + 4) == "silent"
    plaza.apply(f"lane/{LANE}/health", health(), T0 + 4, T0 + 4, expiry_s=HEALTH_LIFE_S)
    assert plaza.lanes[LANE].tile(T0 + 4) == "ok"  # fresh health: it clears by itself


def test_a_retained_display_text_handed_over_late_lives_only_what_its_expiry_left() -> None:
    """A console (or display) that starts is handed the lane's retained text with what is left
    of its life as the MQTT 5 expiry: it shows it that long, not its whole ttl again."""
    plaza = Plaza(T0)
    text = DisplayMessage(["Class 1", "2.50 EUR"], 10.0).encode()
    plaza.apply(f"lane/{LANE}/display", text, T0, T0, expiry_s=4)
    assert plaza.snapshot(T0 + 3, T0 + 3)["lanes"][0]["display"] == ["Class 1", "2.50 EUR"]
    assert plaza.snapshot(T0 + 5, T0 + 5)["lanes"][0]["display"] == []


def test_the_display_of_an_offline_lane_says_lane_closed_until_the_lane_speaks_again() -> None:
    """The lane's will (`offline`) wins over the text it left, which does not come back with
    the lane: the lane back says its own text."""
    plaza = Plaza(T0)
    fare = DisplayMessage(["Class 1", "2.50 EUR"], 10.0).encode()
    plaza.apply(f"lane/{LANE}/display", fare, T0, T0)
    plaza.apply(f"lane/{LANE}/status", LaneStatus.offline(int(T0 * 1e6)).encode(), T0, T0 + 1)
    closed = ["Lane closed", "Please use another lane"]
    assert plaza.snapshot(T0 + 1, T0 + 1)["lanes"][0]["display"] == closed
    back = LaneStatus("idle", 0, None, {"broker": True}, [], int(T0 * 1e6) + 2)
    plaza.apply(f"lane/{LANE}/status", back.encode(), T0 + 2, T0 + 2)
    assert plaza.snapshot(T0 + 2, T0 + 2)["lanes"][0]["display"] == []
    plaza.apply(f"lane/{LANE}/display", DisplayMessage(["Lane open"], 3.0).encode(), T0, T0 + 2)
    assert plaza.snapshot(T0 + 3, T0 + 3)["lanes"][0]["display"] == ["Lane open"]


@pytest.mark.parametrize(
    ("accepting", "idle"),
    [(False, ["Lane closed", "Please use another lane"]), (True, []), (None, [])],
)
def test_once_its_text_has_lived_the_display_says_lane_closed_while_the_lane_takes_no_payments(
    accepting: bool | None, idle: list[str]
) -> None:
    """A fault outlives its 10 s `Lane closed`: the status (`accepting` false) keeps the display
    saying so; a lane that takes payments (or of a release that does not say) leaves it idle."""
    plaza = Plaza(T0)
    status = LaneStatus("fault", 0, None, {}, ["barrier_unreadable"], 1, accepting=accepting)
    plaza.apply(f"lane/{LANE}/status", status.encode(), T0, T0)
    text = DisplayMessage(["Lane closed", "Please use another lane"], 10.0).encode()
    plaza.apply(f"lane/{LANE}/display", text, T0, T0)
    plaza.apply(f"lane/{LANE}/display", DisplayMessage(["Thank you"], 3.0).encode(), T0, T0 + 1)
    assert plaza.snapshot(T0 + 2, T0 + 2)["lanes"][0]["display"] == ["Thank you"]
    assert plaza.snapshot(T0 + 20, T0 + 20)["lanes"][0]["display"] == idle


def test_barrier_sensors_and_commands_are_shown_as_published() -> None:
    plaza = Plaza(T0)
    plaza.apply(
        f"lane/{LANE}/barrier/state", BarrierStatus("open", 2, 1, session="s").encode(), T0, T0
    )
    cmd = pack({"op": "close", "cmd_id": "v1/close", "deadline": 10**16, "lane": LANE})
    plaza.apply(f"lane/{LANE}/barrier/cmd", cmd, T0, T0)
    plaza.apply(
        f"lane/{LANE}/io/safety_loop", SensorReading("safety_loop", True, None, 1).encode(), T0, T0
    )
    plaza.apply(
        f"lane/{LANE}/io/classifier", SensorReading("classifier", None, 2, 1).encode(), T0, T0
    )
    lane = plaza.snapshot(T0, T0)["lanes"][0]
    assert lane["barrier"]["commanded"] == "close" and lane["barrier"]["reported"] == "open"
    assert lane["sensors"]["safety_loop"] is True and lane["sensors"]["entry_loop"] is None
    assert lane["vehicle_class"] == 2


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (f"lane/{LANE}/health", b"\xc1garbage"),
        (f"lane/{LANE}/status", pack({"state": 3})),
        (f"lane/{LANE}/io/entry_loop", pack({"sensor": "exit_loop", "occupied": True, "ts": 1})),
        (f"lane/{LANE}/events", b"not msgpack \xc1"),
    ],
)
def test_garbage_is_shown_on_the_lane_and_changes_nothing(topic: str, payload: bytes) -> None:
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/health", health(), T0, T0)
    plaza.apply(topic, payload, T0, T0)
    lane = plaza.snapshot(T0, T0)["lanes"][0]
    assert lane["garbage"] and lane["tile"] == "ok" and lane["phase"] == "idle"


def test_trends_count_openings_over_each_window_and_since_the_start() -> None:
    plaza = Plaza(T0)
    for minute in range(30):  # one opening a minute for half an hour, latency = minute
        event = pack({"name": "barrier_opened", "latency_ms": float(minute), "vehicle_id": "v"})
        plaza.apply(f"lane/{LANE}/events", event, T0 + 60 * minute + 1, T0 + 60 * minute + 1)
    now = T0 + 30 * 60
    trends = plaza.trends(now)
    windows = trends["windows"]
    assert windows["5m"]["vph"] == 60.0 and windows["60m"]["vph"] == 60.0
    assert windows["5m"]["p50"] == 27.0 and windows["start"]["p50"] == 15.0
    assert sum(p["vph"] for p in trends["points"]) == 30 * 60


@given(st.text(max_size=40))
def test_any_topic_is_either_a_lane_topic_or_ignored(topic: str) -> None:
    plaza = Plaza(T0)
    plaza.apply(topic, b"", T0, T0)
    assert len(plaza.lanes) == (1 if split_topic(topic) is not None else 0)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("*/*", "+/+"), ("p07/*", "p07/+"), ("p07/l03", "p07/l03"), ("p07", "p07/+"), ("*", "+/+")],
)
def test_lane_patterns_become_mqtt_filters(pattern: str, expected: str) -> None:
    assert lane_filter(pattern) == expected


@pytest.mark.parametrize("pattern", ["p07/#", "a/b/c", "p0*/l1", "/l1"])
def test_bad_lane_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="lane pattern"):
        lane_filter(pattern)


# Field names of every message the console reads, and values of every msgpack kind: maps that
# are nearly right are where a decoder that trusts its input breaks.
FIELD_NAMES = st.sampled_from(
    ["state", "phase", "phase_since", "alarms", "checks", "counters", "acquirer", "ts", "seq",
     "session", "op", "cmd_id", "deadline", "lane", "sensor", "occupied", "class", "lines", "ttl",
     "name", "latency_ms", "link", "faults", "code", "severity", "since", "samples"]
)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats() | st.text(max_size=8)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FIELD_NAMES, inner, max_size=3),
    max_leaves=8,
)


@given(
    st.sampled_from(
        ["status", "health", "barrier/state", "barrier/cmd", "io/entry_loop", "display", "events"]
    ),
    st.binary(max_size=200) | st.dictionaries(FIELD_NAMES, VALUES, max_size=8).map(pack),
)
def test_no_payload_on_any_lane_topic_breaks_the_model(suffix: str, payload: bytes) -> None:
    plaza = Plaza(T0)
    plaza.apply(f"lane/{LANE}/{suffix}", payload, T0, T0)
    snap = plaza.snapshot(T0 + 1, T0 + 1)  # still drawable
    assert snap["lanes"][0]["lane"] == LANE
