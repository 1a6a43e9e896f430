"""`lane sim`: a whole simulated plaza with a web dashboard; `--headless` runs and reports.

lane sim                                   dashboard on http://127.0.0.1:8080/, endless traffic
lane sim --scenario rush-hour              a scenario's traffic and faults, then on
lane sim --lanes 4 --port 8081             a plaza of four lanes
lane sim --lanes 8 --lane-processes        each lane daemon a process of its own, supervised
lane sim --headless --vehicles 200         200 vehicles, JSON report on stdout
lane sim --headless --scenario backoffice-offline-10min --speed 10
lane sim --list-scenarios
lane sim --road 3                          a closed road of 3 plazas (entry and exit lanes)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lane.console.users import UsersError, load_users
from lane.daemon import run_with_uvloop
from lane.log import setup_logging
from lane.signals import install_signal_handlers
from sim import metro
from sim.dashboard import Dashboard
from sim.faults import play_timeline
from sim.harness import (
    SimOptions,
    Simulator,
    options_for,
    run_headless,
    run_scenario,
    where_line,
)
from sim.road import RoadSimulator
from sim.road_cli import add_arguments, road_options, road_plan
from sim.road_cli import headless as road_headless
from sim.scenario import Scenario, ScenarioError, load_scenario, shipped

log = logging.getLogger("lane.sim")

HEADLESS_SPEED = 4.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lane sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--headless", action="store_true", help="run, print a JSON report, exit")
    p.add_argument("--scenario", help="a shipped scenario name or a TOML file")
    p.add_argument("--list-scenarios", action="store_true", help="list shipped scenarios")
    p.add_argument("--vehicles", type=int, help="vehicles in a headless run (default 200)")
    p.add_argument("--lanes", type=int, help="lanes in the plaza (default 1, or the scenario's)")
    p.add_argument(
        "--lane-processes",
        action="store_true",
        help="run each lane daemon in a process of its own under a supervisor (as booths do)",
    )
    p.add_argument(
        "--mode",
        choices=["toll", "transit-entry", "transit-exit", "metro"],
        help="lane mode; metro: a line's entry and exit gates in turn, wallet refunds",
    )
    p.add_argument("--seed", type=int, help="traffic, codes and camera seed")
    p.add_argument(
        "--speed",
        type=float,
        help=f"times real time (default: the scenario's, else 1 with the dashboard,"
        f" {HEADLESS_SPEED:g} headless)",
    )
    p.add_argument("--conditions", choices=["clear", "realistic", "hard"], help="camera scenes")
    p.add_argument("--fps", type=float, default=30.0, help="synthetic camera frame rate")
    p.add_argument("--host", default="127.0.0.1", help="dashboard address")
    p.add_argument("--port", type=int, default=8080, help="dashboard port (0: any free one)")
    p.add_argument("--report", type=Path, help="write the JSON report to this file")
    p.add_argument(
        "--users", type=Path, help="console user file (lane console adduser); else read-only"
    )
    p.add_argument("--workdir", type=Path, help="keep the lanes' files here (default: a temp dir)")
    p.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        help="headless: seconds between progress lines",
    )
    p.add_argument("--log-level", default="WARNING")
    add_arguments(p)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.list_scenarios:
        for name in shipped():
            print(f"{name:28} {load_scenario(name).description}")
        return 0
    problems = _check_args(args)
    if problems:
        print("lane sim: " + "\nlane sim: ".join(problems), file=sys.stderr)
        return 2
    scenario: Scenario | None = None
    if args.scenario:
        try:
            scenario = load_scenario(args.scenario)
        except ScenarioError as exc:
            print(f"lane sim: bad scenario\n{exc}", file=sys.stderr)
            return 2
    setup_logging(args.log_level, stream=sys.stderr)
    options = build_options(args, scenario)
    if args.road is not None:
        return _road(args, options)
    if args.headless:
        return _headless(args, options, scenario)
    return int(run_with_uvloop(lambda: _interactive(args, options, scenario)))


def _road(args: argparse.Namespace, options: SimOptions) -> int:
    plan = road_plan(args, options)
    if isinstance(plan, list):
        print("lane sim: " + "\nlane sim: ".join(plan), file=sys.stderr)
        return 2
    options = road_options(args, options)
    if args.headless:
        return road_headless(args, options, plan, say)
    road = functools.partial(RoadSimulator, plan=plan)
    return int(run_with_uvloop(lambda: _interactive(args, options, None, road)))


def _check_args(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.speed is not None and args.speed <= 0:
        problems.append("--speed must be > 0")
    if args.vehicles is not None and args.vehicles < 0:
        problems.append("--vehicles must be >= 0")
    if args.lanes is not None and not 1 <= args.lanes <= 16:
        problems.append("--lanes must be within 1..16")
    if args.mode == "metro" and (args.scenario or (args.lanes or 2) < 2):
        problems.append("--mode metro takes no --scenario and needs --lanes 2 or more")
    if not 0 < args.fps <= 240:
        problems.append("--fps must be within 0..240")
    if not 0 <= args.port <= 65535:
        problems.append("--port must be within 0..65535")
    return problems


def build_options(args: argparse.Namespace, scenario: Scenario | None) -> SimOptions:
    """Options from the scenario (if any), then the command line on top."""
    base = SimOptions(fps=args.fps, workdir=args.workdir)
    if scenario is not None:
        base = options_for(scenario, base)
    speed = args.speed or (scenario.speed if scenario else None)
    speed = speed or (HEADLESS_SPEED if args.headless else 1.0)
    changes: dict[str, Any] = {"speed": speed}
    if args.lane_processes:
        changes["lane_processes"] = True
    if args.mode == "metro":  # an entry and an exit gate at least, the line's riders
        changes |= {"lanes": 2, "mix": metro.MIX}
    for name in ("seed", "lanes", "mode", "conditions"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return dataclasses.replace(base, **changes)


def say(line: str) -> None:
    """Progress for the person at the terminal: stderr, so stdout stays the JSON report."""
    print(f"lane sim: {line}", file=sys.stderr, flush=True)


def _headless(args: argparse.Namespace, options: SimOptions, scenario: Scenario | None) -> int:
    every = args.progress_every
    if scenario is not None:
        report: dict[str, Any] = run_with_uvloop(
            lambda: run_scenario(scenario, options, args.vehicles, say, every)
        )
    else:
        n = 200 if args.vehicles is None else args.vehicles
        report = run_with_uvloop(lambda: run_headless(n, options, say, every))
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if scenario is not None:
        # Faults and declines make some paying vehicles turn back: only loss is a failure.
        return 0 if report["lost"] == 0 else 1
    ok = report["lost"] == 0 and report["paying_passed"] == report["paying_vehicles"]
    fares = report.get("metro_fares")  # a metro line: every rider paid the trip's fare, once
    ok = ok and (fares is None or fares["wrong"] == fares["unpaired"] == 0)
    return 0 if ok else 1


async def _interactive(
    args: argparse.Namespace,
    options: SimOptions,
    scenario: Scenario | None,
    make: Callable[[SimOptions], Simulator] = Simulator,
) -> int:
    try:
        users = load_users(args.users) if args.users else {}
    except UsersError as exc:
        print(f"lane sim: {exc}", file=sys.stderr)
        return 2
    sim = make(options)
    sim.scenario = scenario.name if scenario else None
    await sim.start()
    dashboard = Dashboard(sim, users=users)
    try:
        url = await dashboard.start(args.host, args.port)
    except OSError as exc:
        await sim.stop()
        where = f"{args.host}:{args.port}"
        print(f"lane sim: cannot serve the dashboard on {where}: {exc}", file=sys.stderr)
        return 2
    lanes = ", ".join(lane.lane_id for lane in sim.lanes)
    print(f"lane sim: dashboard at {url}", flush=True)
    say(where_line(sim))
    print(
        f"lane sim: {options.mode} lanes {lanes}, speed {options.speed:g}x"
        + (f", scenario {scenario.name}" if scenario else "")
        + "; Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    install_signal_handlers(stop)
    tasks = [asyncio.create_task(sim.drive_forever(options.mix), name="traffic")]
    if scenario is not None:
        tasks.append(asyncio.create_task(play_timeline(sim.faults, scenario.timeline(), sim.speed)))
    try:
        await stop.wait()
    finally:
        print("lane sim: stopping", file=sys.stderr, flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await dashboard.stop()
        summary = {k: v for k, v in sim.report().items() if k != "lanes"}
        await sim.stop()
        print(json.dumps(summary), file=sys.stderr)
    return 0
