"""`lane sim --road N`: the road's command-line options and its headless run (sim.cli calls in).

lane sim --road 3                              dashboard: a road of 3 plazas, endless traffic
lane sim --road 2 --headless --vehicles 60     60 vehicles to their exits, JSON report
lane sim --road 4 --exception-rate lost_ticket=0.05 --time-limit-min 90
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any

from lane.daemon import run_with_uvloop
from sim.harness import Say
from sim.options import SimOptions
from sim.road import run_road
from sim.road_model import DEFAULT_RATES, Case, RoadPlan, build_road

ROAD_SPEED = 20.0  # trips take simulated minutes to hours: the default speed of a road run
MAX_PLAZAS = 8  # 16 lanes, as many as a plaza run allows
DEFAULT_VEHICLES = 200


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--road",
        type=int,
        metavar="N",
        help=f"a closed road of N plazas (2..{MAX_PLAZAS}), an entry and an exit lane each",
    )
    names = ", ".join(c for c in Case if c is not Case.NONE)
    p.add_argument(
        "--exception-rate",
        action="append",
        default=[],
        metavar="NAME=RATE",
        help=f"road: share of vehicles with this exception ({names})",
    )
    p.add_argument(
        "--time-limit-min",
        type=float,
        help="road: the time limit on the road (default: the whole road at 40 km/h, >= 60)",
    )


def road_plan(args: argparse.Namespace, options: SimOptions) -> RoadPlan | list[str]:
    """The road asked for, or every problem with the arguments."""
    problems = []
    if not 2 <= args.road <= MAX_PLAZAS:
        problems.append(f"--road must be within 2..{MAX_PLAZAS}")
    for name in ("scenario", "lanes", "mode"):
        if getattr(args, name) is not None:
            problems.append(f"--{name} does not apply to --road")
    rates = dict(DEFAULT_RATES)
    for item in args.exception_rate:
        name, _, value = item.partition("=")
        try:
            rates[Case(name)] = float(value)
        except ValueError:
            problems.append(f"--exception-rate {item!r}: expected NAME=RATE, NAME one of "
                            + ", ".join(c for c in Case if c is not Case.NONE))  # fmt: skip
    limit = args.time_limit_min
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        problems.append("--time-limit-min must be > 0")
    if problems:
        return problems
    road = build_road(args.road, options.seed)
    plan = RoadPlan(road, rates, max_trip_s=(limit or 0.0) * 60)
    return plan.problems(options.mix) or plan


def road_options(args: argparse.Namespace, options: SimOptions) -> SimOptions:
    return dataclasses.replace(options, speed=args.speed or ROAD_SPEED, mode="toll")


def headless(args: argparse.Namespace, options: SimOptions, plan: RoadPlan, say: Say) -> int:
    """Run, print the report; exit 1 when a record was lost or the road does not reconcile."""
    n = DEFAULT_VEHICLES if args.vehicles is None else args.vehicles
    report: dict[str, Any] = run_with_uvloop(
        lambda: run_road(n, options, plan, say, args.progress_every)
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0 if report["lost"] == 0 and report["road"]["reconciled"] else 1
