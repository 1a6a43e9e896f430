"""The end-of-run report: per lane and for the whole plaza.

Top-level keys (CI relies on them): vehicles, passed, denied, records_written, records_ingested,
lost, latency_ms {p50, p95, p99, max}, throughput_vph, methods. `lanes` holds the same figures
per lane id.

Latencies: `latency_ms` is the driver's view (code shown to the camera -> barrier acked the
open, re-aims included); `frame_latency_ms` is the lane's own (the frame that held the code ->
barrier acked), and `token_frame_latency_ms` the same for offline tokens only. Throughput is
vehicles served per simulated hour of the run; `capacity_vph` is 3600 / the mean time a vehicle
holds the pay point (its service time, the move-up of the next one included), which is what the
lane could serve with a queue always standing.

First look: `first_look_read_rate` maps the run's camera condition to the share of codes held up
that the lane answered before the driver's first re-aim (`token_first_look_read_rate` the same
for fresh offline tokens); `first_look` has the counts; `driver_view_p95_ms` is the p95 of
`latency_ms`, the figure a driver feels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from lane.window import percentiles
from sim.lane import Look, Outcome, SimLane
from sim.plaza import Plaza
from sim.stats import Histogram
from sim.traffic import VALID_KINDS
from uplink.records import Record


def figures(
    outcomes: list[Outcome],
    records: Mapping[str, Record],
    ingested: set[str],
    *,
    speed: float,
    started_at: float,
    max_tries: int,
    move_up_s: float,
    conditions: str,
) -> dict[str, Any]:
    written = set(records)
    paying = [o for o in outcomes if o.driver.pays(max_tries)]
    end = max((o.done_at for o in outcomes), default=started_at)
    simulated_h = (end - started_at) * speed / 3600
    service = [(o.done_at - o.started_at) * speed + move_up_s for o in outcomes if o.done_at]
    mean_service = sum(service) / len(service) if service else 0.0
    kinds = Counter(r.draft.kind + ":" + r.draft.auth.result for r in records.values())
    tokens = [o.frame_latency_ms for o in outcomes if o.methods == ["token"]]
    looks = [look for o in outcomes for look in o.looks]
    token_looks = [look for look in looks if look.kind == "token"]
    latency = percentiles([o.latency_ms for o in outcomes if o.latency_ms is not None])
    return {
        "vehicles": len(outcomes),
        "passed": sum(o.passed for o in outcomes),
        "denied": sum(not o.passed for o in outcomes),
        "paying_vehicles": len(paying),
        "paying_passed": sum(o.passed for o in paying),
        "records_written": len(written),
        "records_ingested": len(written & ingested),
        "lost": len(written - ingested),
        "records_by_kind": dict(sorted(kinds.items())),
        "latency_ms": latency,
        "driver_view_p95_ms": latency["p95"],
        "first_look_read_rate": {conditions: first_look_rate(looks)},
        "token_first_look_read_rate": {conditions: first_look_rate(token_looks)},
        "first_look": {
            "presented": len(looks),
            "read_first_look": sum(look.read and look.aims == 1 for look in looks),
            "reaims": sum(look.aims - 1 for look in looks),
            "never_read": sum(not look.read for look in looks),
        },
        "frame_latency_ms": percentiles(
            [o.frame_latency_ms for o in outcomes if o.frame_latency_ms is not None]
        ),
        "token_frame_latency_ms": percentiles([t for t in tokens if t is not None]),
        "throughput_vph": round(len(outcomes) / simulated_h, 1) if simulated_h > 0 else 0.0,
        "capacity_vph": round(3600 / mean_service, 1) if mean_service else 0.0,
        "service_s": {k: v for k, v in percentiles(service).items() if k in ("p50", "p95", "max")},
        "methods": dict(sorted(Counter(m for o in outcomes for m in o.methods).items())),
        "refusals": dict(sorted(Counter(r for o in outcomes for r in o.refusals).items())),
        "replays": _replays(outcomes),
    }


def first_look_rate(looks: list[Look]) -> float | None:
    """Share of codes the lane answered before the driver re-aimed; None when none was shown."""
    if not looks:
        return None
    return round(sum(look.read and look.aims == 1 for look in looks) / len(looks), 4)


def _replays(outcomes: Iterable[Outcome]) -> dict[str, dict[str, int]]:
    """Replayed tokens shown, split by whether they were first accepted at this lane or at
    another one of the plaza (which only used-token sharing can catch)."""
    out = {"same_lane": {"shown": 0, "refused": 0}, "other_lane": {"shown": 0, "refused": 0}}
    for o in outcomes:
        for origin, refused in o.replays:
            key = "same_lane" if origin == o.lane else "other_lane"
            out[key]["shown"] += 1
            out[key]["refused"] += int(refused)
    return out


def lane_figures(lane: SimLane, ingested: set[str]) -> dict[str, Any]:
    o = lane.sim.options
    data = figures(
        lane.outcomes,
        lane.records_written,
        ingested,
        speed=o.speed,
        started_at=lane.started_at,
        max_tries=o.max_tries,
        move_up_s=0.0 if lane.transit else o.move_up_s,
        conditions=o.conditions,
    )
    data["backlog_max"] = lane.backlog_max
    data["ops_url"] = lane.ops_url  # a booth's /metrics, /healthz, /readyz (--lane-processes)
    return data


def plaza_report(sim: Plaza, ingested: Mapping[str, set[str]]) -> dict[str, Any]:
    o = sim.options
    outcomes = [out for lane in sim.lanes for out in lane.outcomes]
    records = {rid: r for lane in sim.lanes for rid, r in lane.records_written.items()}
    held = set().union(*ingested.values()) if ingested else set()
    report = figures(
        outcomes,
        records,
        held,
        speed=o.speed,
        started_at=sim.started_at,
        max_tries=o.max_tries,
        move_up_s=0.0 if o.mode != "toll" else o.move_up_s,
        conditions=o.conditions,
    )
    per_lane = {lane.lane_id: lane_figures(lane, ingested[lane.lane_id]) for lane in sim.lanes}
    if len(sim.lanes) > 1:
        # Lanes work side by side: the plaza's capacity is the sum of theirs.
        report["capacity_vph"] = round(sum(v["capacity_vph"] for v in per_lane.values()), 1)
    report.update(
        {
            "backlog_max": max((v["backlog_max"] for v in per_lane.values()), default=0),
            "valid_kinds": sorted(VALID_KINDS),
            "mode": o.mode,
            "lane_count": len(sim.lanes),
            "lanes": per_lane,
            "duration_s": round(sim.sim_time() / o.speed, 2),
            "simulated_s": round(sim.sim_time(), 1),
            "speed": o.speed,
            "seed": o.seed,
        }
    )
    return report


def plaza_view(lanes: list[SimLane]) -> dict[str, Any]:
    """The dashboard's plaza-wide figures: latency over every lane, summed throughput."""
    hist = Histogram()
    latencies: list[float] = []
    recent_latencies: list[float] = []
    tokens: list[float] = []
    recent = total = 0.0
    for lane in lanes:
        hist.merge(lane.stats.histogram)
        latencies += lane.stats.latencies
        recent_latencies += lane.stats.recent_latency()
        tokens += lane.stats.token_latencies
        tp = lane.stats.throughput()
        recent += tp["recent_vph"]
        total += tp["total_vph"]
    return {
        "histogram": hist.bins(),
        "latency_ms": percentiles(latencies),
        "recent_latency_ms": percentiles(recent_latencies),
        "token_latency_ms": percentiles(tokens),
        "throughput": {"recent_vph": round(recent, 1), "total_vph": round(total, 1)},
    }
