"""Simulator benchmarks: lane capacity and latency under rush hour, and the daemon's CPU cost.

    .venv/bin/python bench/sim.py                      # all parts
    .venv/bin/python bench/sim.py --part throughput --vehicles 150
    .venv/bin/python bench/sim.py --part cpu --seconds 60
    .venv/bin/python bench/sim.py --vehicles 2 --speed 20 --seconds 1 --warm-up 0 --lanes 1
        # all parts, small: the test suite's smoke run (figures not worth reading)

throughput: the shipped rush-hour scenario at speed 1 (real barrier timings: opening 0.8 s,
closing 1.0 s, 0.4 s between loop transitions; drivers take 0.6 s to show the phone and 1.0 s
to move up), for --vehicles vehicles. Prints capacity (3600 / mean pay-point time), throughput,
and code-in-frame -> barrier-open latency for all codes and for offline tokens.

cpu: one lane daemon in a child process of its own (bench/lane_child.py), with its synthetic
camera (30 fps, 1280x720) pushing frames into it, in transit-entry mode so that each presented
token is a full passage (verify, record, open) without loops; the barrier device, broker and
back office run in this process. The child measures its own CPU time (user + system, all
threads) over the window and the CPU time of each thread (/proc/self/task/*/stat): the daemon's
share is the process minus the camera's render thread, which stands for the camera hardware.

plaza: see bench/plaza.py (`--part plaza` runs all its runs with --lanes, --seconds,
--plaza-fps and --warm-up; the one-lane runs last lanes x seconds).
Figures are printed, not asserted (the machine is shared; see docs/simulator.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from barrier.device import DeviceEmulator, Timings  # noqa: E402
from bench import lane_child  # noqa: E402
from bench import plaza as bench_plaza  # noqa: E402
from lane.window import percentiles  # noqa: E402
from sim.backoffice import BackOffice  # noqa: E402
from sim.broker import Mosquitto, free_port  # noqa: E402
from sim.codes import CodeFactory  # noqa: E402
from sim.harness import SimOptions, options_for, run_scenario  # noqa: E402
from sim.scenario import load_scenario  # noqa: E402

LANE = "p01/l01"
SEED = 5


# --- throughput ------------------------------------------------------------------------------


def throughput(vehicles: int, speed: float) -> dict[str, Any]:
    scenario = load_scenario("rush-hour")
    options = options_for(scenario, SimOptions(speed=speed))
    report = asyncio.run(run_scenario(scenario, options, vehicles))
    keys = (
        "vehicles", "passed", "paying_vehicles", "paying_passed", "lost", "throughput_vph",
        "capacity_vph", "service_s", "latency_ms", "driver_view_p95_ms", "first_look_read_rate",
        "token_first_look_read_rate", "first_look", "frame_latency_ms", "token_frame_latency_ms",
        "methods", "refusals", "duration_s",
    )  # fmt: skip
    return {k: report[k] for k in keys}


# --- CPU of one daemon -------------------------------------------------------------------------


async def cpu(seconds: float, fps: float, warm_up: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lane-bench-sim-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(port=free_port(), workdir=work)
        broker.start()
        try:
            keyset = CodeFactory(SEED).write_keyset(work / "keyset.json", int(time.time()), [LANE])
            device = DeviceEmulator(LANE, broker.host, broker.port, Timings())
            device_task = asyncio.create_task(device.run())
            backoffice = BackOffice(work / "backoffice.sqlite3", broker.host, broker.port)
            await backoffice.start()
            argv = lane_child.command(
                broker.port, keyset, work, lanes=[LANE], seconds=seconds, fps=fps, warm_up=warm_up
            )
            child = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, cwd=ROOT)
            out, _ = await child.communicate()
            await device.stop()
            device_task.cancel()
            await backoffice.stop()
            lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
            if child.returncode != 0 or not lines:
                raise RuntimeError(
                    f"daemon child failed ({child.returncode}): {out.decode()[-2000:]}"
                )
            result: dict[str, Any] = json.loads(lines[-1])
            result["token_latency_ms"] = percentiles(result["token_latency_ms"])
            result["records_ingested"] = backoffice.stats.records
            return result
        finally:
            broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=["all", "throughput", "cpu", "plaza"], default="all")
    p.add_argument("--lanes", type=int, default=8, help="plaza: lanes")
    p.add_argument("--plaza-fps", type=float, default=10.0, help="plaza: camera frame rate")
    p.add_argument("--vehicles", type=int, default=150)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=60.0, help="CPU measurement window")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument(
        "--warm-up",
        type=float,
        default=lane_child.WARM_UP_S,
        help="cpu, plaza: seconds the lanes serve before the measurement window",
    )
    args = p.parse_args()
    print(f"# bench/sim.py on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if args.part in ("all", "cpu"):
        print("## one lane daemon, camera 1280x720 at", args.fps, "fps (child process)")
        print(json.dumps(asyncio.run(cpu(args.seconds, args.fps, args.warm_up)), indent=2))
    if args.part in ("all", "plaza"):
        print(
            f"## plaza: 1 lane, {args.lanes} in one process, {args.lanes} processes;"
            f" lane sim --lane-processes with 1 and {args.lanes} booths"
        )
        rows = bench_plaza.rows(args.lanes, args.seconds, args.plaza_fps, warm_up=args.warm_up)
        for row in rows:
            print(json.dumps(row))
    if args.part in ("all", "throughput"):
        print(f"## rush-hour, speed {args.speed:g}, {args.vehicles} vehicles")
        print(json.dumps(throughput(args.vehicles, args.speed), indent=2))
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
