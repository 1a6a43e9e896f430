"""`lane sim`: a whole simulated lane; `--headless` runs N vehicles and writes a JSON report."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from lane.daemon import run_with_uvloop
from lane.log import setup_logging
from sim.harness import SimLane, SimOptions, run_headless
from sim.traffic import plan

log = logging.getLogger("lane.sim")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lane sim", description=__doc__)
    p.add_argument("--headless", action="store_true", help="run N vehicles, print a report, exit")
    p.add_argument("--vehicles", type=int, default=200, help="vehicles in a headless run")
    p.add_argument("--seed", type=int, default=1, help="traffic and camera seed")
    p.add_argument("--speed", type=float, default=4.0, help="run this many times real time")
    p.add_argument("--conditions", default="realistic", choices=["clear", "realistic", "hard"])
    p.add_argument("--fps", type=float, default=30.0, help="synthetic camera frame rate")
    p.add_argument("--report", type=Path, help="write the JSON report to this file")
    p.add_argument("--workdir", type=Path, help="keep the lane's files here (default: a temp dir)")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.speed <= 0 or args.vehicles < 0:
        print("lane sim: --speed must be > 0 and --vehicles >= 0", file=sys.stderr)
        return 2
    setup_logging(args.log_level, stream=sys.stderr)
    options = SimOptions(
        seed=args.seed,
        speed=args.speed,
        conditions=args.conditions,
        fps=args.fps,
        workdir=args.workdir,
    )
    if args.headless:
        report: dict[str, Any] = run_with_uvloop(lambda: run_headless(args.vehicles, options))
        text = json.dumps(report, indent=2)
        print(text)
        if args.report:
            args.report.write_text(text + "\n")
        ok = report["lost"] == 0 and report["paying_passed"] == report["paying_vehicles"]
        return 0 if ok else 1
    return run_with_uvloop(lambda: _forever(options))  # type: ignore[no-any-return]


async def _forever(options: SimOptions) -> int:
    lane = SimLane(options)
    await lane.start()
    print(
        f"lane sim: lane {options.lane_id} running (broker 127.0.0.1:{lane.broker.port if lane.broker else '?'}); "
        "Ctrl-C to stop",
        file=sys.stderr,
    )
    try:
        batch = 0
        while True:
            await lane.drive(plan(50, options.seed + batch, options.mix))
            batch += 1
            print(json.dumps(lane.report()), file=sys.stderr)
    except asyncio.CancelledError:
        pass
    finally:
        await lane.stop()
    return 0
