"""Plaza: N lanes in one process against one process per lane, with one lane as the anchor.

    .venv/bin/python -m bench.plaza [--lanes 8] [--seconds 30] [--fps 10] [--runs all|children|sim]
        [--no-change-gate] [--anchor-seconds S] [--warm-up 5]

Three runs, one after the other, in the same invocation: one lane alone (for --anchor-seconds,
by default lanes x seconds, so that its p99 is taken over as many passages as the N-lane runs'
and is not the maximum of a handful); N lanes as N daemons in
one process; N lanes as N processes (one daemon each) under `sim.supervisor.Supervisor`, as real
booths run. Then two runs of `lane sim --lane-processes` itself (`--runs sim` runs only these):
one booth, then N booths (sim/booth.py, each a lane daemon with its camera, supervised by the
simulator, which talks to them over the broker only), the same passengers (`sim_booths`); the
CPU, memory and context switches per lane are read from each booth's /proc entry, camera
rendering included.

Each lane is the lane daemon with its synthetic camera (1280x720 at --fps) and a
passenger showing an offline token every 3.6 s (bench/lane_child.py: transit-entry mode, each
token a whole passage); the barrier devices, the broker and the back office run in this process.
Printed per run: token frame → barrier ack p50 / p99 (all lanes together), the p99 as a ratio to
the one-lane run, CPU per lane (process, system part, and without the camera's render thread,
which stands for the camera hardware) and resident memory per lane. Figures, not assertions:
the machine is shared (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from barrier.device import DeviceEmulator, Timings  # noqa: E402
from bench import lane_child  # noqa: E402
from bench.proc import context_switches, cpu_s, rss_mb  # noqa: E402
from lane.window import percentiles  # noqa: E402
from sim.backoffice import BackOffice  # noqa: E402
from sim.broker import Mosquitto, free_port  # noqa: E402
from sim.codes import CodeFactory  # noqa: E402
from sim.harness import Simulator  # noqa: E402
from sim.lane import SimLane  # noqa: E402
from sim.lane_process import ProcessLane  # noqa: E402
from sim.options import SimOptions  # noqa: E402
from sim.supervisor import Supervisor  # noqa: E402
from sim.traffic import Driver  # noqa: E402


async def run(
    broker: Mosquitto, keyset: Path, work: Path, *, groups: list[list[str]], seconds: float,
    fps: float, warm_up: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each group of lanes in a process of its own; the devices of all lanes here."""
    lanes = [lane for group in groups for lane in group]
    devices = [DeviceEmulator(lane, broker.host, broker.port, Timings()) for lane in lanes]
    device_tasks = [asyncio.create_task(d.run()) for d in devices]
    results: list[dict[str, Any]] = []

    def on_line(name: str, line: str) -> None:
        if line.startswith("{"):
            results.append(json.loads(line))

    try:
        for device in devices:
            await device.wait_connected(10)
        async with Supervisor(on_line, max_restarts=0, grace_s=20.0) as supervisor:
            for i, group in enumerate(groups):
                argv = lane_child.command(
                    broker.port, keyset, work, lanes=group, seconds=seconds, fps=fps,
                    warm_up=warm_up,
                )  # fmt: skip
                supervisor.start(f"group-{i}", argv)
            codes = [await supervisor.wait(f"group-{i}") for i in range(len(groups))]
        if any(codes) or len(results) != len(groups):
            raise RuntimeError(f"lane processes failed: return codes {codes}")
    finally:
        await asyncio.gather(*(d.stop() for d in devices), return_exceptions=True)
        for task in device_tasks:
            task.cancel()
        await asyncio.gather(*device_tasks, return_exceptions=True)
    return results


def summary(name: str, results: list[dict[str, Any]], anchor_p99: float | None) -> dict[str, Any]:
    lanes = sum(len(r["lanes"]) for r in results)
    latencies = [x for r in results for x in r["token_latency_ms"]]
    figures = percentiles(latencies)
    p99 = figures["p99"]

    def per_lane(key: str) -> float:
        return round(sum(r[key] for r in results) / lanes, 1)

    return {
        "run": name,
        "lanes": lanes,
        "processes": len(results),
        "passages": len(latencies),
        "token_ms": {"p50": figures["p50"], "p99": p99, "max": figures["max"]},
        "p99_vs_one_lane": None if not (anchor_p99 and p99) else round(p99 / anchor_p99, 2),
        "cpu_pct_per_lane": per_lane("process_cpu_pct_of_core"),
        "system_cpu_pct_per_lane": per_lane("system_cpu_pct_of_core"),
        "daemon_cpu_pct_per_lane": per_lane("daemon_cpu_pct_of_core"),
        "rss_mb_per_lane": per_lane("rss_mb"),
    }


async def plaza(
    lanes: int, seconds: float, anchor_seconds: float, fps: float, warm_up: float
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="lane-bench-plaza-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(port=free_port(), workdir=work)
        await asyncio.to_thread(broker.start)
        backoffice = BackOffice(work / "backoffice.sqlite3", broker.host, broker.port)
        try:
            # A plaza id per run: no run sees another's retained states or data directories.
            one = [["b1/l01"]]
            shared = [[f"bs/l{i + 1:02d}" for i in range(lanes)]]
            apart = [[f"bp/l{i + 1:02d}"] for i in range(lanes)]
            every = [lane for groups in (one, shared, apart) for g in groups for lane in g]
            keyset = CodeFactory(lane_child.SEED).write_keyset(
                work / "keys.json", int(time.time()), every
            )
            await backoffice.start()
            out: list[dict[str, Any]] = []
            anchor = None
            for name, groups, span in (
                ("1 lane", one, anchor_seconds),
                (f"{lanes} lanes, one process", shared, seconds),
                (f"{lanes} lanes, one process each", apart, seconds),
            ):
                results = await run(
                    broker, keyset, work, groups=groups, seconds=span, fps=fps, warm_up=warm_up
                )
                out.append(summary(name, results, anchor))
                anchor = out[0]["token_ms"]["p99"]
            return out
        finally:
            await backoffice.stop()
            await asyncio.to_thread(broker.stop)


def booth_pid(lane: SimLane) -> int:
    if not isinstance(lane, ProcessLane) or lane.child is None or lane.child.process is None:
        raise RuntimeError(f"lane {lane.lane_id} is not running as a booth")
    return lane.child.process.pid


async def passengers(lane: SimLane, lanes: int) -> None:
    """A passenger with an offline token joins the lane every PASSENGER_EVERY_S seconds, the
    lanes' passengers spread over that period (people do not arrive at all lanes at once)."""
    await asyncio.sleep(lane_child.PASSENGER_EVERY_S * lane.index / lanes)
    index = 0
    while True:
        lane.join(Driver(index, 0.0, 1, "token", ("token",)))
        index += 1
        await asyncio.sleep(lane_child.PASSENGER_EVERY_S)


async def sim_booths(
    name: str, lanes: int, seconds: float, fps: float, *, anchor: dict[str, Any] | None,
    warm_up: float, change_gate: bool,
) -> dict[str, Any]:  # fmt: skip
    """`lane sim --lane-processes` with `lanes` booths and the passengers of `lane_child`."""
    with tempfile.TemporaryDirectory(prefix="lane-bench-booths-") as tmp:
        options = SimOptions(
            seed=lane_child.SEED, lanes=lanes, lane_processes=True, mode="transit-entry",
            conditions="clear", fps=fps, workdir=Path(tmp), lane_id="bb/l01",
            change_gate=change_gate,
        )  # fmt: skip
        sim = Simulator(options)
        await sim.start()
        feeders = [asyncio.create_task(passengers(lane, lanes)) for lane in sim.lanes]
        try:
            await asyncio.sleep(warm_up)
            pids = [booth_pid(lane) for lane in sim.lanes]
            wall0, own0, cpu0 = time.monotonic(), os.times(), [cpu_s(p) for p in pids]
            switches0 = [context_switches(p) for p in pids]
            await asyncio.sleep(seconds)
            wall1, own1, cpu1 = time.monotonic(), os.times(), [cpu_s(p) for p in pids]
            switches1 = [context_switches(p) for p in pids]
            rss = [rss_mb(p) for p in pids]
            if [booth_pid(lane) for lane in sim.lanes] != pids:
                raise RuntimeError("a booth was restarted during the window")
        finally:
            for task in feeders:
                task.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)
            await sim.stop()
    wall = wall1 - wall0
    latencies = [
        o.frame_latency_ms
        for lane in sim.lanes
        for o in lane.outcomes
        if wall0 <= o.started_at and o.done_at <= wall1
        and o.frame_latency_ms is not None and o.methods == ["token"]
    ]  # fmt: skip
    figures = percentiles(latencies)
    cpu = sum(b[0] - a[0] for a, b in zip(cpu0, cpu1, strict=True)) / lanes
    system = sum(b[1] - a[1] for a, b in zip(cpu0, cpu1, strict=True)) / lanes
    own = (own1.user + own1.system) - (own0.user + own0.system)
    voluntary, involuntary = (
        sum(b[i] - a[i] for a, b in zip(switches0, switches1, strict=True)) / lanes / wall
        for i in (0, 1)
    )
    cpu_pct = round(100 * cpu / wall, 1)
    anchor_p99 = anchor["token_ms"]["p99"] if anchor else None
    p99 = figures["p99"]
    return {
        "run": name,
        "lanes": lanes,
        "processes": lanes,
        "passages": len(latencies),
        "token_ms": {"p50": figures["p50"], "p99": p99, "max": figures["max"]},
        "p99_vs_one_lane": None if not (anchor_p99 and p99) else round(p99 / anchor_p99, 2),
        "cpu_pct_per_lane": cpu_pct,
        "cpu_per_lane_vs_one_lane": None if anchor is None
        else round(cpu_pct / anchor["cpu_pct_per_lane"], 2),
        "system_cpu_pct_per_lane": round(100 * system / wall, 1),
        # Threads put to sleep and woken again (voluntary), or preempted, per booth a second.
        "wakeups_per_lane_s": round(voluntary, 1),
        "preempted_per_lane_s": round(involuntary, 1),
        "rss_mb_per_lane": round(sum(rss) / lanes, 1),
        "simulator_cpu_pct": round(100 * own / wall, 1),
    }  # fmt: skip


async def sim_plaza(
    lanes: int, seconds: float, anchor_seconds: float, fps: float, *, change_gate: bool,
    warm_up: float,
) -> list[dict[str, Any]]:  # fmt: skip
    gate = "" if change_gate else ", change gate off"
    one = await sim_booths(
        f"lane sim --lane-processes, 1 lane{gate}", 1, anchor_seconds, fps, anchor=None,
        warm_up=warm_up, change_gate=change_gate,
    )  # fmt: skip
    name = f"lane sim --lane-processes, {lanes} lanes{gate}"
    n_lanes = await sim_booths(
        name, lanes, seconds, fps, anchor=one, warm_up=warm_up, change_gate=change_gate
    )
    return [one, n_lanes]


def rows(
    lanes: int, seconds: float, fps: float, *, anchor_seconds: float | None = None,
    runs: str = "all", change_gate: bool = True, warm_up: float = lane_child.WARM_UP_S,
) -> list[dict[str, Any]]:  # fmt: skip
    """The runs' rows; the one-lane runs last `anchor_seconds`, by default lanes x seconds."""
    anchor_seconds = anchor_seconds or lanes * seconds
    out: list[dict[str, Any]] = []
    if runs in ("all", "children"):
        out += asyncio.run(plaza(lanes, seconds, anchor_seconds, fps, warm_up))
    if runs in ("all", "sim"):
        out += asyncio.run(
            sim_plaza(lanes, seconds, anchor_seconds, fps, change_gate=change_gate, warm_up=warm_up)
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lanes", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument(
        "--anchor-seconds",
        type=float,
        help="the one-lane runs (default: lanes x seconds, as many passages as the N-lane runs)",
    )
    p.add_argument("--runs", choices=["all", "children", "sim"], default="all")
    p.add_argument(
        "--no-change-gate",
        action="store_true",
        help="the booths of the `sim` runs decode every frame (the scanner's change gate off)",
    )
    p.add_argument(
        "--warm-up",
        type=float,
        default=lane_child.WARM_UP_S,
        help="seconds each run's lanes serve before its window (default %(default)s)",
    )
    a = p.parse_args()
    print(f"# bench/plaza.py on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    out = rows(
        a.lanes, a.seconds, a.fps, anchor_seconds=a.anchor_seconds, runs=a.runs,
        change_gate=not a.no_change_gate, warm_up=a.warm_up,
    )  # fmt: skip
    for row in out:
        print(json.dumps(row))
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
