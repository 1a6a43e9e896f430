"""`lane sim --road 2` against real processes: broker, lane daemons in the toll-entry and
toll-exit modes, barrier devices, ticket printers, acquirer, back office.

One run of 14 vehicles carries each exception once (lost ticket, a copied ticket, U-turn, over
the time limit, class and plate mismatch) on a 4 km road at speed 30, and the report must
reconcile every entry with an exit or an open trip and every fare with the matrix or the
documented exception amount. About 30 s, most of it the over-time vehicle's trip. (On two
plazas the farthest, nearest and trip cells of a class are one cell, so here the flags tell
the exceptions apart; tests/sim/test_road_report.py checks every amount on three plazas.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.cli import main as sim_main
from sim.harness import SimOptions
from sim.road import run_road
from sim.road_model import Case, Road, RoadPlan

FAST: dict[str, Any] = {
    "speed": 30.0,
    "conditions": "clear",
    "frame_size": (640, 360),
    "fps": 15.0,
}
EVERY_CASE: dict[Case, float] = {case: 1 / 14 for case in Case if case is not Case.NONE}
# 4 km: a trip is 2.5 to 4 simulated minutes; the limit (8 min) and the U-turn window
# (6 min) are short so that the over-time vehicle is on the road for 10 to 12 minutes, not hours.
PLAN = RoadPlan(Road(("P01", "P02"), (0.0, 4.0)), EVERY_CASE, max_trip_s=480, u_turn_window_s=360)


@pytest.mark.slow
async def test_a_road_of_two_plazas_reconciles_every_trip_and_fare(tmp_path: Path) -> None:
    report = await run_road(14, SimOptions(seed=2, workdir=tmp_path, **FAST), PLAN)
    road = report["road"]
    assert road["problems"] == [] and road["reconciled"]
    assert report["lost"] == 0 and report["records_ingested"] == report["records_written"]
    assert set(report["lanes"]) == {"P01/e1", "P01/x1", "P02/e1", "P02/x1"}
    assert road["vehicles"] == road["exited"] == road["entry_records"] == 14
    assert road["fares"]["checked"] == 14
    # The lost ticket's entry and the copier's own one stay open; the other twelve closed.
    assert road["trips"] == {"closed": 12, "open": 2, "open_expected": 2, "unmatched_exits": 0}
    for case in Case:
        counts = road["exceptions"][case]
        assert counts["injected"] == counts["fare_right"] == (8 if case is Case.NONE else 1)
        assert counts["flagged"] == (None if case is Case.NONE else 1)
    assert report["records_by_kind"]["entry:none"] == 14
    # The tickets were read by the exits' cameras (the rest by plate).
    assert report["lanes"]["P01/x1"]["first_look"]["presented"] > 0


def test_the_cli_checks_the_road_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--road", "1", "--headless"]) == 2
    assert "--road must be within 2..8" in capsys.readouterr().err
    assert sim_main(["--road", "2", "--lanes", "2", "--exception-rate", "lost=0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lanes does not apply to --road" in err
    assert "--exception-rate 'lost=0.1': expected NAME=RATE, NAME one of lost_ticket" in err
    assert sim_main(["--road", "3", "--time-limit-min", "5"]) == 2
    assert "the time limit must be at least" in capsys.readouterr().err


def test_the_cli_runs_a_road_headless(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No exception asked for: two vehicles on the 8.2 km road of seed 9, one report, exit 0
    when it reconciles."""
    rates = [f"--exception-rate={case}=0" for case in EVERY_CASE]
    code = sim_main(
        ["--road", "2", "--seed", "9", "--headless", "--vehicles", "2", "--speed", "40",
         "--fps", "10", "--conditions", "clear", "--workdir", str(tmp_path), *rates]
    )  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["road"]["problems"]
    assert report["mode"] == "road" and report["road"]["reconciled"]
    assert report["road"]["trips"]["closed"] == 2
