"""What the console knows of a plaza, folded from the lanes' MQTT messages (pure: no I/O, no
clock reads; every input carries the wall time and the monotonic time it arrived at).

`Plaza.apply(topic, payload, now, mono, expiry_s=)` takes any message of a lane topic (status,
health, barrier state and commands, sensors, display, events); a payload that does not decode is
counted and shown on the lane, never raised. `Plaza.snapshot(now, mono)` is the JSON the
browser draws. How long ago something was heard (a lane silent, a command's age, a display's
time to live) is read on the monotonic clock: a wall clock stepped back (NTP, an operator)
would make a lane that stopped publishing look freshly heard. The wall time is for what is
shown as a time and for what the lanes' own times are compared with.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from barrier.health_message import HEALTH_LIFE_S, AlarmEntry, LaneHealth
from barrier.messages import (
    BarrierCommand,
    BarrierStatus,
    DisplayMessage,
    LaneStatus,
    SensorReading,
)
from barrier.peripherals import PlateReading
from lane.alarm_severity import Severity, worst
from lane.core.display import seen_on_display
from lane.window import Window, percentiles
from lane.wire.codec import PayloadError, unpack
from lane.wire.topics import PLATE

PRESENCE_SENSORS = ("entry_loop", "safety_loop", "exit_loop", "light_curtain")
# Phases a lane passes through in seconds; longer than this in one of them is worth a look.
STUCK_AFTER_S = 30.0
RESTING_PHASES = frozenset({"idle", "closed"})
# A lane whose health message is older than this is shown as silent (it publishes each second;
# the broker keeps a retained copy no longer either).
SILENT_AFTER_S = float(HEALTH_LIFE_S)
TREND_WINDOWS_S = (300.0, 900.0, 3600.0)
TREND_BUCKET_S = 60.0
ALARMS_KEPT = 500
GARBAGE_KEPT = 5


@dataclass
class LaneView:
    lane: str
    status: LaneStatus | None = None
    health: LaneHealth | None = None
    heard_at: float | None = None  # monotonic: when the last health message came
    barrier: BarrierStatus | None = None
    commanded: str | None = None  # the last barrier command's op
    commanded_at: float | None = None  # monotonic
    sensors: dict[str, bool] = field(default_factory=dict)
    vehicle_class: int | None = None
    plate: str | None = None  # the last plate the ANPR camera read (closed roads)
    display: list[str] = field(default_factory=list)
    display_until: float | None = None  # monotonic
    opened: int = 0
    garbage: deque[str] = field(default_factory=lambda: deque(maxlen=GARBAGE_KEPT))

    def tile(self, mono: float) -> str:
        """The tile's colour class: offline, silent, the worst active severity, or ok."""
        if self.status is not None and self.status.state == LaneStatus.OFFLINE:
            return "offline"
        if self.heard_at is None or mono - self.heard_at > SILENT_AFTER_S:
            return "silent"
        sev = worst([Severity(a.severity) for a in self._active()])
        return "ok" if sev is None else sev.value

    def shown(self, mono: float) -> list[str]:
        """What the lane's display shows, by its contract (`seen_on_display`)."""
        status = self.status
        alive = self.display_until is not None and mono < self.display_until
        return seen_on_display(
            self.display if alive else [],
            offline=status is not None and status.state == LaneStatus.OFFLINE,
            accepting=None if status is None else status.accepting,
        )

    def _active(self) -> list[AlarmEntry]:
        return [a for a in self.health.alarms if a.active] if self.health is not None else []

    def snapshot(self, mono: float) -> dict[str, Any]:
        h = self.health
        offline = self.status is not None and self.status.state == LaneStatus.OFFLINE
        # An offline lane's last health is stale: its phase is no longer known.
        phase = "offline" if offline else h.phase if h is not None else "unknown"
        in_phase = None
        if h is not None and self.heard_at is not None:
            # How long the phase had lasted when the lane said so (both times on its clock),
            # and since then on ours: the lane's clock against the console's, or either stepped,
            # would otherwise hide a lane stuck in a phase (or flag one that is not).
            lasted = (h.ts_us - h.phase_since_us) / 1e6
            in_phase = max(0.0, lasted + mono - self.heard_at)
        faults = self.status.faults if self.status is not None else []
        return {
            "lane": self.lane,
            "tile": self.tile(mono),
            "phase": phase,
            "phase_for_s": None if in_phase is None else round(in_phase, 1),
            "stuck": in_phase is not None
            and phase not in RESTING_PHASES
            and in_phase > STUCK_AFTER_S,
            "status": None if self.status is None else self.status.state,
            "links": {} if self.status is None else dict(self.status.link),
            "faults": list(faults),
            "barrier": {
                "reported": None if self.barrier is None else self.barrier.state,
                "error": None if self.barrier is None else self.barrier.error,
                "commanded": self.commanded,
                "commanded_ago_s": None
                if self.commanded_at is None
                else round(mono - self.commanded_at, 1),
            },
            "sensors": {s: self.sensors.get(s) for s in PRESENCE_SENSORS},
            "vehicle_class": self.vehicle_class,
            "plate": self.plate,
            "display": self.shown(mono),
            "camera_fps": None if h is None else h.camera_fps,
            "checks": [] if h is None else [c.to_map() for c in h.checks],
            "uplink": {
                "backlog": None if h is None else h.uplink_backlog,
                "oldest_unsent_s": None if h is None else h.oldest_unsent_s,
            },
            "counters": {} if h is None else dict(h.counters),
            "refunds": {} if h is None or h.refunds is None else dict(h.refunds),
            "acquirer": None if h is None else h.acquirer.to_map(),
            "alarms": [_alarm_map(self.lane, a) for a in self._active()],
            "health_age_s": None if self.heard_at is None else round(mono - self.heard_at, 1),
            "garbage": list(self.garbage),
        }


def _alarm_map(lane: str, a: AlarmEntry) -> dict[str, Any]:
    return {
        "lane": lane,
        "code": a.code,
        "message": a.message,
        "severity": a.severity,
        "since": a.since_us / 1e6,
        "cleared": None if a.cleared_us is None else a.cleared_us / 1e6,
        "acked_by": a.acked_by,
        "acked": None if a.acked_us is None else a.acked_us / 1e6,
    }


def split_topic(topic: str) -> tuple[str, str] | None:
    """`lane/p07/l03/io/entry_loop` -> (`p07/l03`, `io/entry_loop`); None if not a lane topic."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "lane":
        return None
    return f"{parts[1]}/{parts[2]}", "/".join(parts[3:])


class Plaza:
    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.lanes: dict[str, LaneView] = {}
        # (lane, code, since_us) -> the newest version of that alarm occurrence
        self.alarms: dict[tuple[str, str, int], AlarmEntry] = {}
        self.openings: Window[float] = Window(max(TREND_WINDOWS_S))
        self.all_latencies: Window[float] = Window(float("inf"), limit=100_000)

    def lane(self, lane: str) -> LaneView:
        view = self.lanes.get(lane)
        if view is None:
            view = self.lanes[lane] = LaneView(lane)
        return view

    def apply(
        self, topic: str, payload: bytes, now: float, mono: float, *, expiry_s: int | None = None
    ) -> None:
        """`expiry_s`: the message's MQTT 5 expiry as the broker handed it over (what is left
        of a retained display text's or health message's life), None when it has none."""
        where = split_topic(topic)
        if where is None:
            return
        lane, rest = where
        view = self.lane(lane)
        try:
            self._apply(view, rest, payload, now, mono, expiry=expiry_s)
        except PayloadError as exc:
            view.garbage.appendleft(f"{rest}: {exc}")

    def _apply(
        self,
        view: LaneView,
        rest: str,
        payload: bytes,
        now: float,
        mono: float,
        *,
        expiry: int | None,
    ) -> None:
        if rest == "status":
            view.status = LaneStatus.decode(payload)
            if view.status.state == LaneStatus.OFFLINE:
                view.display_until = None  # a lane back from offline says its text anew
        elif rest == "health":
            # A retained copy handed over late is as old as its expiry says, not new.
            age = 0 if expiry is None else max(0, HEALTH_LIFE_S - expiry)
            view.health, view.heard_at = LaneHealth.decode(payload), mono - age
            for a in view.health.alarms:
                self.alarms[(view.lane, a.code, a.since_us)] = a
            while len(self.alarms) > ALARMS_KEPT:
                del self.alarms[next(iter(self.alarms))]
        elif rest == "barrier/state":
            view.barrier = BarrierStatus.decode(payload)
        elif rest == "barrier/cmd":
            view.commanded, view.commanded_at = BarrierCommand.decode(payload).op, mono
        elif rest == f"io/{PLATE}":
            view.plate = PlateReading.decode(payload).plate
        elif rest.startswith("io/"):
            reading = SensorReading.decode(payload)
            if reading.sensor != rest[3:]:
                raise PayloadError(f"reading of {reading.sensor!r} on the topic of {rest[3:]!r}")
            if reading.occupied is not None:
                view.sensors[reading.sensor] = reading.occupied
            else:
                view.vehicle_class = reading.vehicle_class
        elif rest == "display":
            shown = DisplayMessage.decode(payload)
            # A retained text handed over late has only what its expiry left of its ttl.
            ttl = shown.ttl_s if expiry is None else min(shown.ttl_s, expiry)
            view.display, view.display_until = list(shown.lines), mono + ttl
        elif rest == "events":
            self._event(view, unpack(payload), now)

    def _event(self, view: LaneView, body: dict[str, Any], now: float) -> None:
        if body.get("name") != "barrier_opened":
            return
        view.opened += 1
        latency = body.get("latency_ms")
        value = float(latency) if isinstance(latency, int | float) else None
        self.openings.add(now, -1.0 if value is None else value)
        if value is not None:
            self.all_latencies.add(now, value)

    # --- what the browser draws ---------------------------------------------------------------

    def trends(self, now: float) -> dict[str, Any]:
        """Latency percentiles and throughput over the last 5 / 15 / 60 minutes and since the
        start, plus per-minute points of the last hour to plot."""
        self.openings.prune(now)
        windows = {}
        for span in TREND_WINDOWS_S:
            samples = list(self.openings.since(now - span))
            covered = min(span, now - self.started_at)
            windows[f"{span / 60:g}m"] = {
                **percentiles([v for v in samples if v >= 0]),
                "vph": round(len(samples) * 3600 / covered, 1) if covered > 1 else 0.0,
            }
        total = self.all_latencies.values()
        elapsed = now - self.started_at
        opened = sum(v.opened for v in self.lanes.values())
        windows["start"] = {
            **percentiles(total),
            "vph": round(opened * 3600 / elapsed, 1) if elapsed > 1 else 0.0,
        }
        return {"windows": windows, "points": self._points(now)}

    def _points(self, now: float) -> list[dict[str, Any]]:
        buckets = int(max(TREND_WINDOWS_S) / TREND_BUCKET_S)
        values: list[list[float]] = [[] for _ in range(buckets)]
        counts = [0] * buckets
        for t, v in self.openings.timed():
            i = int((now - t) / TREND_BUCKET_S)
            if 0 <= i < buckets:
                counts[i] += 1
                if v >= 0:
                    values[i].append(v)
        return [
            {
                "ago_min": i,
                "p95": percentiles(values[i])["p95"],
                "vph": counts[i] * 3600 / TREND_BUCKET_S,
            }
            for i in range(buckets)
        ]

    def alarm_list(self) -> list[dict[str, Any]]:
        """Every alarm occurrence seen, active first, newest first."""
        rows = [_alarm_map(lane, a) for (lane, _, _), a in self.alarms.items()]
        rows.sort(key=lambda r: (r["cleared"] is not None, -r["since"]))
        return rows

    def snapshot(self, now: float, mono: float) -> dict[str, Any]:
        return {
            "now": now,
            "lanes": [self.lanes[k].snapshot(mono) for k in sorted(self.lanes)],
            "alarms": self.alarm_list(),
            "trends": self.trends(now),
            "severities": [s.value for s in Severity],
        }


def alarm_active(view: LaneView, code: str) -> bool:
    return view.health is not None and any(a.active and a.code == code for a in view.health.alarms)
