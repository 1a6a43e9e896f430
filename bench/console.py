"""What the console costs: the lane's health message, and the console's model at plaza scale.

    .venv/bin/python -m bench.console [--lanes 16] [--seconds 3600]

Prints, per operation, the median and p99 time over repeated runs:
- encoding one lane's health message (what the lane does once a second), and decoding it;
- the console applying one health message;
- the console's snapshot (what each browser fetches once a second) of a plaza of `--lanes`
  lanes, each with alarms, after `--seconds` of openings (one every 3.6 s per lane: 1,000/h).
Figures, not assertions: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from barrier.health_message import AcquirerHealth, AlarmEntry, CheckEntry, LaneHealth
from lane.alarm_severity import SEVERITY
from lane.console.model import Plaza
from lane.wire.codec import pack

T0 = 1_700_000_000.0


def health(n: int, now: float) -> LaneHealth:
    codes = list(SEVERITY)[n % 5 : n % 5 + 3]
    alarms = [AlarmEntry(c, f"{c} text", SEVERITY[c].value, int((now - 60) * 1e6)) for c in codes]
    cleared = [
        AlarmEntry(c, "was", SEVERITY[c].value, int((now - 900) * 1e6), int((now - 800) * 1e6))
        for c in list(SEVERITY)[:16]
    ]
    checks = [
        CheckEntry(c, True, "fine and dandy") for c in ("camera", "broker", "barrier", "queue")
    ]
    counters = {"vehicles": 1000, "passed": 990, "violations": 2, "paid_not_passed": 0}
    acquirer = AcquirerHealth("ok", 20, 1.0, 0.0, 0.05, 120.0, 300.0)
    return LaneHealth(
        "idle",
        int(now * 1e6),
        alarms + cleared,
        checks,
        counters,
        acquirer,
        int(now * 1e6),
        30.0,
        0,
        None,
    )


def timed(what: Callable[[], object], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        what()
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lanes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    now = T0 + args.seconds
    message = health(0, now)
    data = message.encode()
    plaza = Plaza(T0)
    lanes = [f"p07/l{n:02d}" for n in range(1, args.lanes + 1)]
    for n, lane in enumerate(lanes):
        plaza.apply(f"lane/{lane}/health", health(n, now).encode(), now, now)
    t = T0
    while t < now:  # every lane opens once every 3.6 s
        for lane in lanes:
            event = pack({"name": "barrier_opened", "latency_ms": 25.0, "vehicle_id": "v"})
            plaza.apply(f"lane/{lane}/events", event, t, t)
        t += 3.6
    snapshot = plaza.snapshot(now, now)
    rows = [
        ("encode one health message", timed(message.encode, 2000), f"{len(data)} bytes"),
        ("decode one health message", timed(lambda: LaneHealth.decode(data), 2000), ""),
        (
            "console applies one health message",
            timed(lambda: plaza.apply(f"lane/{lanes[0]}/health", data, now, now), 2000),
            "",
        ),
        (
            f"console snapshot, {args.lanes} lanes",
            timed(lambda: plaza.snapshot(now, now), 50),
            f"{len(json.dumps(snapshot)) // 1024} KiB JSON, {len(plaza.openings)} openings",
        ),
    ]
    print(f"{'operation':<40} {'median µs':>10} {'p99 µs':>10}  note")
    for name, (median, p99), note in rows:
        print(f"{name:<40} {median:>10.0f} {p99:>10.0f}  {note}")


if __name__ == "__main__":
    main()
