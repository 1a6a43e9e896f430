"""Scenario files: the shipped ones load; broken ones fail with file, key and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.faults import FAULTS, FaultError, check_params
from sim.scenario import (
    BAD_BEHAVIOURS,
    ScenarioError,
    load_scenario,
    mix_behaviours,
    parse_scenario,
    resolve,
    shipped,
)

MINIMAL = 'name = "t"\nduration_s = 60\n'


def problems(text: str, source: str = "x.toml") -> str:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, source)
    return str(err.value)


def test_the_shipped_scenarios_load() -> None:
    names = shipped()
    assert {
        "rush-hour",
        "backoffice-offline-10min",
        "acquirer-degraded",
        "transit-gate-peak",
    } <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name
        mix = scenario.mix()
        assert mix.arrivals_per_hour > 0
        assert (
            abs(sum(mix.behaviours.values()) - 1.0) < 0.05
            or scenario.traffic.bad_code_share is None
        )


def test_shipped_scenarios_say_what_they_promise() -> None:
    cut = load_scenario("backoffice-offline-10min").timeline()
    assert [(s.fault, s.at_s, s.clear_at_s) for s in cut] == [("backoffice_offline", 60, 660)]
    assert load_scenario("transit-gate-peak").mode == "transit-entry"
    rush = load_scenario("rush-hour")
    bad = sum(w for k, w in rush.mix().behaviours.items() if k in BAD_BEHAVIOURS)
    assert bad == pytest.approx(0.06)
    degraded = load_scenario("acquirer-degraded")
    assert {s.fault for s in degraded.timeline()} == {"acquirer_outage", "acquirer_slow"}


def test_a_scenario_is_found_by_name_or_by_path(tmp_path: Path) -> None:
    assert resolve("rush-hour").name == "rush-hour.toml"
    own = tmp_path / "mine.toml"
    own.write_text(MINIMAL)
    assert load_scenario(str(own)).name == "t"
    with pytest.raises(ScenarioError, match=r"nope: no such scenario file.*rush-hour"):
        resolve("nope")


def test_an_unknown_key_is_named_with_its_file() -> None:
    text = MINIMAL + "[traffic]\narrivals_per_hour = 100\nrate = 3\n"
    assert problems(text) == "x.toml: traffic.rate: unknown key"


def test_every_problem_is_reported_at_once() -> None:
    text = (
        'name = "t"\nduration_s = -5\nmode = "ferry"\n'
        "[traffic]\narrivals_per_hour = 0\n[traffic.behaviours]\ntokn = 1.0\n"
    )
    lines = problems(text).splitlines()
    assert any(line.startswith("x.toml: duration_s: ") for line in lines)
    assert any(line.startswith("x.toml: mode: ") and "toll" in line for line in lines)
    assert any(line.startswith("x.toml: traffic.arrivals_per_hour: ") for line in lines)
    assert any("traffic.behaviours: unknown behaviour 'tokn'" in line for line in lines)


def test_a_run_needs_an_end() -> None:
    assert "give duration_s or vehicles" in problems('name = "t"\n')


def test_bad_toml_is_reported_as_such() -> None:
    assert problems("name = \n").startswith("x.toml: not valid TOML: ")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('at_s = 1\nfault = "barier_stuck"', "faults #1: unknown fault 'barier_stuck'"),
        (
            'at_s = 10\nfault = "camera_blackout"\nclear_at_s = 5',
            "faults #1: clear_at_s (5.0) must be after",
        ),
        (
            'at_s = 1\nfault = "backoffice_offline"\nlane = 1',
            "faults #1: backoffice_offline hits the whole",
        ),
        ('at_s = 1\nfault = "code_burst"\nclear_at_s = 9', "faults #1: code_burst is a one-shot"),
        (
            'at_s = 1\nfault = "acquirer_slow"\nparams = { median_ms = 900, p99_ms = 100 }',
            "median_ms must not exceed",
        ),
        (
            'at_s = 1\nfault = "acquirer_declines"\nparams = { rate = 2 }',
            "rate must be a number within 0..1",
        ),
        ('at_s = 1\nfault = "camera_blackout"\nparams = { x = 1 }', "unknown parameter(s) x"),
        ('fault = "camera_blackout"', "faults #1.at_s: missing (required)"),
    ],
)
def test_fault_timeline_entries_are_checked(entry: str, expected: str) -> None:
    text = MINIMAL + '[[faults]]\nat_s = 0\nfault = "camera_blackout"\n[[faults]]\n' + entry + "\n"
    message = problems(text).replace("faults #2", "faults #1")
    assert expected in message
    assert message.startswith("x.toml: faults #1")


def test_a_fault_on_a_lane_the_plaza_lacks_is_refused() -> None:
    text = MINIMAL + 'lanes = 2\n[[faults]]\nat_s = 1\nfault = "barrier_stuck"\nlane = 3\n'
    assert "faults #1: lane 3 but the plaza has 2" in problems(text)


def test_the_timeline_is_in_time_order() -> None:
    text = MINIMAL + (
        '[[faults]]\nat_s = 30\nfault = "camera_blackout"\nclear_at_s = 40\n'
        '[[faults]]\nat_s = 5\nfault = "acquirer_outage"\nparams = { mode = "503" }\n'
    )
    steps = parse_scenario(text).timeline()
    assert [(s.at_s, s.fault) for s in steps] == [(5, "acquirer_outage"), (30, "camera_blackout")]
    assert steps[0].params == {"mode": "503"}


def test_bad_code_share_rescales_only_the_bad_behaviours() -> None:
    weights = mix_behaviours(
        {"token": 3.0, "alipay": 1.0, "only_bad": 1.0, "replay_then_token": 1.0}, 0.2
    )
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["only_bad"] == pytest.approx(0.1)
    assert weights["token"] == pytest.approx(0.6)
    # No bad behaviour listed: the default mix's bad ones make up the share.
    only_good = mix_behaviours({"token": 1.0}, 0.1)
    assert sum(w for k, w in only_good.items() if k in BAD_BEHAVIOURS) == pytest.approx(0.1)
    assert mix_behaviours({"token": 2.0, "emv": 0.0}, None) == {"token": 2.0}
    with pytest.raises(ValueError, match="needs at least one behaviour with only good codes"):
        mix_behaviours({"only_bad": 1.0}, 0.5)


def test_fault_parameters_get_defaults_and_clear_errors() -> None:
    assert check_params("acquirer_slow", {}) == {"median_ms": 1200.0, "p99_ms": 4000.0}
    assert check_params("code_burst", {"count": 3}) == {"count": 3.0, "kind": "mixed"}
    with pytest.raises(FaultError, match="kind must be one of mixed, replay, forged"):
        check_params("code_burst", {"kind": "nasty"})
    with pytest.raises(FaultError, match="count must be a number"):
        check_params("code_burst", {"count": True})
    with pytest.raises(FaultError, match="unknown fault 'x'"):
        check_params("x", {})
    assert all(spec.label and spec.description for spec in FAULTS.values())
