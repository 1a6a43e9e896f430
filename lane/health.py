"""Liveness and readiness of a lane, decided from facts the shell gathers (pure: no I/O, no clock).

Liveness answers "should this process be restarted?": the event loop turns (its measured lag is
small) and the lane runner task is still alive. Readiness answers "can this lane serve a vehicle
right now?": the camera delivers frames, the broker is connected, the barrier is usable and the
record queue can take a record. The HTTP endpoints (`/healthz`, `/readyz`), the metrics and the
retained MQTT status all report the same checks, computed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lane.core.names import BARRIER_ALARMS

# A loop that has not turned for this long is stuck (a blocking call, a busy loop).
MAX_LOOP_LAG_S = 5.0
# Below this much free space on the data directory's file system a record may not fit: the
# queue's own bound cannot help when the disk fills up first.
MIN_FREE_BYTES = 16 * 1024 * 1024

BARRIER_UNUSABLE_STATES = frozenset({"offline", "fault", "unknown"})
QUEUE_FAULTS = ("queue_full", "disk_error", "disk_not_answering")
CHECKS = ("camera", "broker", "barrier", "queue")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_map(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class ReadinessFacts:
    """What the shell knows at one moment; `None` means not known yet."""

    camera_running: bool  # the scan pipeline was started and its source has not ended
    broker_connected: bool
    barrier_state: str  # the device's last reported state ("unknown" before any report)
    queue_bytes: int | None  # bytes the queue uses (None before the first reading)
    queue_max_bytes: int
    data_dir_writable: bool
    disk_free_bytes: int | None
    alarms: Mapping[str, str] = field(default_factory=dict)  # active alarms: code -> message
    # A finite source not started yet: it waits until the lane can take a code.
    camera_held: bool = False
    # False at a closed road's entry lane, which takes no codes: a camera that reads none
    # (`camera_blackout`, a notice there) leaves it ready to issue tickets.
    camera_closes: bool = True


@dataclass(frozen=True)
class LivenessFacts:
    loop_lag_s: float | None  # how late the last heartbeat ran (None: no heartbeat yet)
    runner_alive: bool
    max_loop_lag_s: float = MAX_LOOP_LAG_S


def readiness(facts: ReadinessFacts) -> list[Check]:
    return [_camera(facts), _broker(facts), _barrier(facts), _queue(facts)]


def liveness(facts: LivenessFacts) -> list[Check]:
    if facts.loop_lag_s is None:
        loop = Check("event_loop", True, "no heartbeat yet")
    elif facts.loop_lag_s > facts.max_loop_lag_s:
        loop = Check(
            "event_loop",
            False,
            f"heartbeat {facts.loop_lag_s:.1f} s late (limit {facts.max_loop_lag_s:g} s)",
        )
    else:
        loop = Check("event_loop", True, f"heartbeat {facts.loop_lag_s * 1000:.0f} ms late")
    runner = Check("runner", facts.runner_alive, "running" if facts.runner_alive else "not running")
    return [loop, runner]


def all_ok(checks: Iterable[Check]) -> bool:
    return all(c.ok for c in checks)


def report(checks: Sequence[Check]) -> dict[str, Any]:
    """The JSON body of /healthz and /readyz."""
    return {"ok": all_ok(checks), "checks": [c.to_map() for c in checks]}


def as_links(checks: Iterable[Check]) -> dict[str, bool]:
    """The checks as the `link` map of the retained MQTT lane status."""
    return {c.name: c.ok for c in checks}


def _camera(facts: ReadinessFacts) -> Check:
    if facts.camera_held:
        return Check("camera", True, "finite source held until the lane can take a code")
    # Before whether it runs: a source read to its end says so in its alarm.
    blackout = facts.alarms.get("camera_blackout")
    if blackout is not None:
        return Check("camera", not facts.camera_closes, blackout)
    if not facts.camera_running:
        return Check("camera", False, "scanner not running")
    return Check("camera", True, "scanner running")


def _broker(facts: ReadinessFacts) -> Check:
    if facts.broker_connected:
        return Check("broker", True, "connected")
    return Check("broker", False, "not connected")


def _barrier(facts: ReadinessFacts) -> Check:
    state = facts.barrier_state
    if state in BARRIER_UNUSABLE_STATES:
        why = "no state reported yet" if state == "unknown" else f"device is {state}"
        return Check("barrier", False, why)
    for fault in BARRIER_ALARMS:
        if fault in facts.alarms:
            return Check("barrier", False, facts.alarms[fault] or fault)
    return Check("barrier", True, state)


def disk_problem(writable: bool, free_bytes: int | None) -> str | None:
    """Why the data directory cannot take a record now, or None (readiness; and at start, what
    the lane waits out before it opens its stores)."""
    if not writable:
        return "data directory not writable"
    if free_bytes is not None and free_bytes < MIN_FREE_BYTES:
        return f"disk almost full ({free_bytes} bytes free)"
    return None


def _queue(facts: ReadinessFacts) -> Check:
    for fault in QUEUE_FAULTS:
        if fault in facts.alarms:
            return Check("queue", False, facts.alarms[fault] or fault)
    problem = disk_problem(facts.data_dir_writable, facts.disk_free_bytes)
    if problem is not None:
        return Check("queue", False, problem)
    if facts.queue_bytes is None:
        return Check("queue", False, "not read yet")
    if facts.queue_bytes >= facts.queue_max_bytes:
        return Check("queue", False, f"full ({facts.queue_bytes} of {facts.queue_max_bytes} bytes)")
    share = facts.queue_bytes / facts.queue_max_bytes
    return Check("queue", True, f"{share:.0%} of {facts.queue_max_bytes} bytes used")
