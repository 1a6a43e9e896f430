"""A metro line's gate config: the [metro] keys, and what check-config says of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_road_config import DEPLOY, NOW, keyset_with, lane_toml

from lane.checks import check_config, check_config_main, check_line
from lane.config import ConfigError, LaneConfig, load_config, parse_config
from lane.daemon import exit_rules, rules_from

METRO = DEPLOY / "tariff.metro.example.toml"


def gate_toml(where: Path, lane_id: str, mode: str, tariff: Path, line: bool = True) -> Path:
    shutil.copy(tariff, where / "tariff.toml")
    keyset_with(where)
    path = lane_toml(where, lane_id, mode)
    if line:
        path.write_text(path.read_text().replace('# line = "L1"', 'line = "L1"'))
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"lane": {"mode": "transit-exit"}, "metro": {"line": "L1"}}, "set fares.tariff"),
        ({"metro": {"same_station_window_s": 7200, "max_trip_s": 3600}}, "must be shorter"),
        ({"metro": {"line": "L 1"}}, "metro.line"),
        ({"metro": {"over_time": "half"}}, "metro.over_time"),
        ({"metro": {"max_trip_s": 0}}, "metro.max_trip_s"),
        ({"auth": {"refund_query_s": 0}}, "auth.refund_query_s"),
        ({"lane": {"reread_s": 0}}, "lane.reread_s"),
    ],
)
def test_bad_metro_settings_are_refused_with_the_key(
    data: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        parse_config(data)


def test_a_metro_exit_gate_prices_by_tap_in_with_the_metro_rules() -> None:
    config = parse_config({"lane": {"id": "S03/x1", "mode": "transit-exit"},
                           "metro": {"line": "L1", "max_trip_s": 7200},
                           "fares": {"tariff": "t.toml"}})  # fmt: skip
    assert config.metro_pricing
    rules = exit_rules(config)
    assert (rules.plaza, rules.road.kind, rules.road.max_trip_s) == ("S03", "metro", 7200)
    assert (rules.road.u_turn_window_s, rules.pass_lifetime_s) == (1200, 14_400)
    # Without a line, or at an entry gate: no pricing by tap-in (a flat fare, as before).
    assert not parse_config({"lane": {"mode": "transit-exit"}}).metro_pricing
    entry = parse_config({"lane": {"mode": "transit-entry"}, "metro": {"line": "L1"}})
    assert not entry.metro_pricing and not rules_from(entry).metro_pricing


def test_a_gate_ignores_its_approved_codes_read_again_for_reread_s() -> None:
    """[lane] reread_s (30 s unless set) is the core's window (lane.core.reread)."""
    assert rules_from(parse_config({"lane": {"mode": "transit-entry"}})).reread_s == 30
    gate = parse_config({"lane": {"mode": "transit-exit", "reread_s": 12.5}})
    assert rules_from(gate).reread_s == 12.5


def test_check_config_takes_a_metro_tariff_at_a_metro_exit_gate(tmp_path: Path) -> None:
    found = check_config(gate_toml(tmp_path, "S03/x1", "transit-exit", METRO), now=NOW)
    assert [p for p in found.problems if "tariff" in p] == []
    assert [w for w in found.warnings if "pass key" in w] == []  # tap-ins are not signed


def test_check_config_refuses_a_flat_tariff_at_a_metro_exit_gate(tmp_path: Path) -> None:
    tariff = DEPLOY / "tariff.example.toml"
    text = tariff.read_text().replace("[toll]", "[transit]").replace("toll.", "transit.")
    (tmp_path / "flat.toml").write_text(text)
    found = check_config(gate_toml(tmp_path, "S03/x1", "transit-exit", tmp_path / "flat.toml"))
    assert any(
        "a transit-exit gate with metro.line prices by tap-in station by entry and exit" in p
        for p in found.problems
    ), found.problems


def test_check_config_refuses_a_metro_tariff_without_a_line(tmp_path: Path) -> None:
    path = gate_toml(tmp_path, "S03/x1", "transit-exit", METRO, line=False)
    found = check_config(path, now=NOW)
    assert [p for p in found.problems if "entry_exit" in p] == [
        f"{tmp_path / 'tariff.toml'}: mode: 'entry_exit' prices the exits of a closed road or a "
        f"metro line, which lane.mode 'transit-exit' in {path} does not charge (use "
        "'toll-exit', or 'transit-exit' with metro.line)"
    ]


def test_check_config_refuses_a_station_the_tariff_does_not_reach(tmp_path: Path) -> None:
    path = gate_toml(tmp_path, "S09/x1", "transit-exit", METRO)
    found = check_config(path, now=NOW)
    assert [p for p in found.problems if "not an exit" in p] == [
        f"{tmp_path / 'tariff.toml'}: transit.version[0].exits: the lane's plaza 'S09' "
        f"({path} lane.id) is not an exit of this version: every vehicle would be unpriced"
    ]


def test_check_config_warns_of_gates_without_a_shared_account_secret(tmp_path: Path) -> None:
    path = gate_toml(tmp_path, "S01/g1", "transit-entry", DEPLOY / "tariff.example.toml")
    found = check_config(path, now=NOW)
    assert [w for w in found.warnings if "auth.account_secret" in w] == [
        f"{path}: auth.account_secret: not set, so this gate's payment-code account references "
        "are its own: a payment code's tap-in on line 'L1' would not be found at another gate "
        "(tokens are); set the same secret at every gate of the line"
    ]
    text = path.read_text().replace("# account_secret = ", "account_secret = ")
    path.write_text(text)
    found = check_config(path, now=NOW)
    assert [w for w in found.warnings if "auth.account_secret" in w] == []


def entry_tariff(path: Path, currency: str, adult: int, student: int) -> Path:
    """A metro entry gate's flat [transit] tariff."""
    path.write_text(
        f'currency = "{currency}"\n[classes]\n1 = "Adult"\n2 = "Student"\n'
        f'[transit]\nmode = "flat"\n[transit.fares]\n1 = {adult}\n2 = {student}\n'
    )
    return path


def line_gates(tmp_path: Path, entry: Path) -> tuple[Path, Path]:
    """An entry gate at S01 charging `entry`, and an exit gate at S03 pricing the line's trips
    by the shipped metro tariff (from S01: S02 = 300 / 150, S03 = 500 / 250)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return (
        gate_toml(tmp_path / "in", "S01/g1", "transit-entry", entry),
        gate_toml(tmp_path / "out", "S03/x1", "transit-exit", METRO),
    )


def test_check_config_warns_of_an_entry_fare_above_a_trips_fare_naming_the_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry fare above a trip's left that exit 0 (`entry_overpaid:`), the excess never
    refunded, with no word from check-config."""
    entry, out = line_gates(tmp_path, entry_tariff(tmp_path / "entry.toml", "CNY", 400, 300))
    tariff = tmp_path / "in" / "tariff.toml"
    metro = tmp_path / "out" / "tariff.toml"
    check_config_main([str(entry), str(out)])  # (its key sets are judged on the real clock)
    said = [line for line in capsys.readouterr().out.splitlines() if "entry_overpaid" in line]
    tail = (
        ": those exits keep 0 (flagged entry_overpaid:) and the excess is never refunded; set "
        "the entry fare at or below the line's lowest fare"
    )
    assert said == [
        f"warning: {tariff}: transit.fares.1 = 400: above the trip's fare in {metro}: "
        f"transit.version[0].fares.S01 class 1: S02 = 300{tail}",
        f"warning: {tariff}: transit.fares.2 = 300: above the trip's fare in {metro}: "
        f"transit.version[0].fares.S01 class 2: S02 = 150, S03 = 250{tail}",
    ]
    # At or below every trip from the station: nothing to say; each gate alone: nothing.
    entry_tariff(tariff, "CNY", 300, 150)
    assert check_line(loaded(entry, out)) == []
    entry_tariff(tariff, "CNY", 400, 300)
    assert check_line(loaded(entry)) == check_line(loaded(out)) == []


def test_check_config_warns_of_an_entry_fare_in_another_currency_than_the_lines(
    tmp_path: Path,
) -> None:
    """An entry gate charging another currency: the exits take nothing off (`entry_currency:`),
    the rider pays the entry and the whole trip, with no word from check-config."""
    entry, out = line_gates(tmp_path, entry_tariff(tmp_path / "entry.toml", "CNY", 200, 100))
    text = entry.read_text().replace('tariff = "tariff.toml"', "# no tariff: the flat table")
    entry.write_text(text)  # the built-in flat fares, in EUR (fares.currency)
    assert check_line(loaded(entry, out)) == [
        f"{entry}: fares.flat: in EUR, but {tmp_path / 'out' / 'tariff.toml'} prices the line's "
        "trips in CNY: the exits do not take the entry fare off (the rider pays it and the "
        "whole trip; flagged entry_currency:EUR); charge the line's currency at its entry gates"
    ]
    # In the line's currency: taken off; the built-in class 2 fare (400) is above its trips.
    entry.write_text(text.replace('currency = "EUR"', 'currency = "CNY"'))
    [said] = check_line(loaded(entry, out))
    assert said.startswith(f"{entry}: fares.flat.2 = 400: above the trip's fare in "), said


def loaded(*paths: Path) -> list[tuple[Path, LaneConfig]]:
    return [(path, load_config(path)) for path in paths]
