"""Headless runs of the whole simulator: real broker, daemons, devices, acquirer, back office.

Runs are short and fast (speed 20, small clear frames): each takes a few seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sim import metro
from sim.cli import build_options, parser
from sim.cli import main as sim_main
from sim.harness import SimOptions, options_for, run_headless, run_scenario
from sim.scenario import parse_scenario
from sim.traffic import Mix

FAST = {"speed": 20.0, "conditions": "clear", "frame_size": (640, 360), "fps": 20.0}
CI_KEYS = {"vehicles", "passed", "denied", "records_written", "records_ingested", "lost"}


async def test_a_headless_run_reports_what_ci_relies_on(tmp_path: Path) -> None:
    report = await run_headless(8, SimOptions(seed=3, workdir=tmp_path, **FAST))  # type: ignore[arg-type]
    assert set(report) >= CI_KEYS
    assert report["vehicles"] == 8
    assert report["lost"] == 0
    assert report["records_ingested"] == report["records_written"] >= report["passed"] > 0
    assert report["paying_passed"] == report["paying_vehicles"]
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"}
    assert report["frame_latency_ms"]["p50"] is not None
    assert report["throughput_vph"] > 0 and report["capacity_vph"] > 0
    assert sum(report["methods"].values()) == report["passed"]
    assert list(report["lanes"]) == ["p01/l01"]
    assert report["lanes"]["p01/l01"]["vehicles"] == 8
    # Clear frames: every code is read on the first look, and the report says so per condition.
    looks = report["first_look"]
    assert looks["presented"] >= report["vehicles"] - report["denied"]
    assert looks["read_first_look"] == looks["presented"] and looks["reaims"] == 0
    assert report["first_look_read_rate"] == {"clear": 1.0}
    assert report["token_first_look_read_rate"]["clear"] in (1.0, None)
    assert report["driver_view_p95_ms"] == report["latency_ms"]["p95"]


CUT_PLAZA = """
name = "cut-plaza"
lanes = 2
vehicles = 14
duration_s = 600
seed = 4
conditions = "clear"
[traffic]
arrivals_per_hour = 2400
[traffic.behaviours]
token = 0.6
emv = 0.2
replay_then_token = 0.2
[[faults]]
at_s = 3
fault = "backoffice_offline"
clear_at_s = 140
"""


async def test_a_plaza_keeps_every_record_through_a_back_office_cut(tmp_path: Path) -> None:
    """Two lanes share the broker and one back office; the back office is cut off while the
    lanes work: the records wait in each lane's queue and all arrive once it is back."""
    scenario = parse_scenario(CUT_PLAZA, "cut-plaza.toml")
    options = options_for(scenario, SimOptions(workdir=tmp_path, **FAST))  # type: ignore[arg-type]
    report = await run_scenario(scenario, options)
    assert report["lane_count"] == 2
    lanes = report["lanes"]
    assert set(lanes) == {"p01/l01", "p01/l02"}
    assert all(v["vehicles"] > 0 for v in lanes.values()), "both lanes served drivers"
    assert sum(v["vehicles"] for v in lanes.values()) == report["vehicles"] == 14
    assert sum(v["records_written"] for v in lanes.values()) == report["records_written"]
    assert report["backlog_max"] > 0, "records piled up while the back office was away"
    assert report["lost"] == 0 and report["records_ingested"] == report["records_written"]
    assert [(f["fault"], f["on"]) for f in report["faults"]] == [
        ("backoffice_offline", True),
        ("backoffice_offline", False),
    ]
    replays = report["replays"]
    shown = replays["same_lane"]["shown"] + replays["other_lane"]["shown"]
    refused = replays["same_lane"]["refused"] + replays["other_lane"]["refused"]
    assert refused == shown, "a replayed token never passes, at whichever lane it is shown"


async def test_every_metro_rider_taps_in_and_out_with_the_same_wallet(tmp_path: Path) -> None:
    """A headless metro line ends once every rider tapped out: tokens and wallet codes alike
    find their tap-in (a wallet code is charged the most and refunded down to the trip), and
    each rider pays the trip's fare in all: the entry's fare and the exit's rest."""
    mix = Mix(arrivals_per_hour=3600, classes={1: 1.0}, behaviours={"token": 0.5, "wechat": 0.5})
    options = SimOptions(workdir=tmp_path, mode="metro", lanes=2, mix=mix, **FAST)  # type: ignore[arg-type]
    report = await run_headless(6, options)
    # A code still in view after its gate opened is read again: ignored, not declined as used.
    assert report["records_by_kind"] == {"tap_in:approved": 6, "tap_out:approved": 6}
    assert set(report["methods"]) == {"token", "wechat"} and report["lost"] == 0
    assert report["metro_fares"] == {"trips": 6, "wrong": 0, "unpaired": 0, "examples": []}


TRANSIT = """
name = "gate"
mode = "transit-entry"
vehicles = 6
duration_s = 600
seed = 9
conditions = "clear"
[traffic]
arrivals_per_hour = 3600
[traffic.behaviours]
token = 1.0
"""


def test_the_cli_runs_a_transit_scenario_file_headless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "gate.toml"
    scenario.write_text(TRANSIT)
    out = tmp_path / "report.json"
    argv = ["--headless", "--scenario", str(scenario), "--speed", "20", "--fps", "20"]
    code = sim_main(
        [*argv, "--conditions", "clear", "--report", str(out), "--workdir", str(tmp_path / "w"),
         "--progress-every", "0.5"]
    )  # fmt: skip
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert code == 0
    # The broker's port (to watch the run) and progress lines go to stderr, not the report.
    progress = captured.err.splitlines()
    assert re.match(r"lane sim: broker at 127\.0\.0\.1:\d+ \(watch: lane watch ", progress[0])
    assert any(
        re.match(r"lane sim: t=\d+ s simulated: \d+ vehicles arrived", ln) for ln in progress
    )
    assert json.loads(out.read_text()) == printed
    assert printed["mode"] == "transit-entry" and printed["scenario"] == "gate"
    assert printed["vehicles"] == 6 and printed["passed"] == 6
    assert printed["records_by_kind"].get("tap_in:approved") == 6
    assert printed["lost"] == 0


def test_the_cli_refuses_a_broken_scenario_with_its_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\nduration_s = 10\n[traffic]\nspeed = 3\n')
    assert sim_main(["--headless", "--scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: traffic.speed: unknown key" in err


def test_the_cli_lists_scenarios_and_checks_its_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert sim_main(["--list-scenarios"]) == 0
    assert "rush-hour" in capsys.readouterr().out
    assert sim_main(["--headless", "--speed", "0", "--lanes", "40"]) == 2
    err = capsys.readouterr().err
    assert "--speed must be > 0" in err and "--lanes must be within 1..16" in err
    assert sim_main(["--headless", "--mode", "metro", "--lanes", "1"]) == 2
    assert "--mode metro takes no --scenario and needs --lanes 2 or more" in capsys.readouterr().err


def test_a_metro_line_takes_two_lanes_and_its_riders_unless_told() -> None:
    options = build_options(parser().parse_args(["--mode", "metro"]), None)
    assert (options.lanes, options.mix) == (2, metro.MIX)
    assert options.lane_ids() == ["S02/g01", "S03/x01"]
    options = build_options(parser().parse_args(["--mode", "metro", "--lanes", "4"]), None)
    assert options.lane_ids() == ["S02/g01", "S03/x01", "S02/g02", "S03/x02"]


def test_options_count_lanes_on_from_the_first() -> None:
    assert SimOptions(lanes=3).lane_ids() == ["p01/l01", "p01/l02", "p01/l03"]
    assert SimOptions(lane_id="p07/l09", lanes=2).lane_ids() == ["p07/l09", "p07/l10"]
    assert SimOptions(mix=Mix()).lane_ids() == ["p01/l01"]
