"""A closed road's lane config: the modes, the [road] keys, and what check-config says of them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet, keyset_to_json, load_keyset
from lane.checks import check_config
from lane.config import ConfigError, parse_config
from sim.codes import CodeFactory

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROAD = DEPLOY / "tariff.road.example.toml"
NOW = 1_798_761_600  # 2027-01-01 UTC


def lane_toml(where: Path, lane_id: str, mode: str, road: str = "") -> Path:
    text = (DEPLOY / "lane.toml.example").read_text()
    text = text.replace('id = "p07/l03"', f'id = "{lane_id}"').replace(
        'mode = "toll"', f'mode = "{mode}"'
    )
    text = text.replace('"tariff.example.toml"', '"tariff.toml"')
    text = text.replace('"keyset.example.json"', '"keyset.json"')
    (where / "lane.toml").write_text(text.replace("\n[road]\n", f"\n[road]\n{road}"))
    return where / "lane.toml"


def keyset_with(where: Path, *plazas: PlazaPassKey) -> None:
    CodeFactory(1).write_keyset(where / "keyset.json", NOW - 3600)
    keys = load_keyset(where / "keyset.json")
    both = KeySet.of(keys.issued_at, [*keys.keys.values(), *(p.public() for p in plazas)])
    (where / "keyset.json").write_text(keyset_to_json(both))


def write_key(where: Path, key: PlazaPassKey, mode: int = 0o600) -> Path:
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = where / "pass.pem"
    path.write_bytes(pem)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"lane": {"mode": "toll-entry"}}, "set road.pass_key"),
        ({"lane": {"mode": "toll-exit"}}, "set fares.tariff to an entry_exit tariff"),
        ({"road": {"u_turn_window_s": 7200, "max_trip_s": 3600}}, "must be shorter than"),
        ({"road": {"over_time": "half"}}, "road.over_time"),
        ({"road": {"pass_lifetime_days": 0}}, "road.pass_lifetime_days"),
        ({"road": {"pass_kid": ""}}, "road.pass_kid"),
        ({"lane": {"mode": "toll-middle"}}, "lane.mode"),
        ({"road": {"plate_wait_s": 9}}, "road.plate_wait_s"),
    ],
)
def test_bad_road_settings_are_refused_with_the_key(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        parse_config(data)


def test_road_lanes_parse_with_their_keys() -> None:
    entry = parse_config(
        {"lane": {"mode": "toll-entry"}, "road": {"pass_key": "k.pem", "pass_kid": "pass-P01"}}
    )
    assert (entry.lane.mode, entry.road.pass_kid, entry.road.max_trip_s) == (
        "toll-entry", "pass-P01", 86_400
    )  # fmt: skip
    exit_lane = parse_config({"lane": {"mode": "toll-exit"}, "fares": {"tariff": "t.toml"}})
    assert (exit_lane.road.over_time, exit_lane.road.attendant_confirms) == ("farthest", True)


def test_check_config_takes_a_road_tariff_at_an_exit_lane(tmp_path: Path) -> None:
    """Every entry-exit-class cell exists (the tariff's loading lists the missing ones); the
    exit lane's plaza is an exit; entry plazas without a pass key are warned about."""
    shutil.copy(ROAD, tmp_path / "tariff.toml")
    keyset_with(tmp_path, PlazaPassKey.generate("P02"))
    found = check_config(lane_toml(tmp_path, "P03/x1", "toll-exit"), now=NOW)
    assert [p for p in found.problems if "tariff" in p] == []
    assert [w for w in found.warnings if "pass key" in w] == [
        f"{tmp_path / 'keyset.json'}: keys: no pass key for entry plaza P01, P03; "
        "their passes will be refused as unknown_key"
    ]


def test_check_config_refuses_an_exit_lane_its_tariff_does_not_reach(tmp_path: Path) -> None:
    shutil.copy(ROAD, tmp_path / "tariff.toml")
    keyset_with(tmp_path)
    found = check_config(lane_toml(tmp_path, "P09/x1", "toll-exit"), now=NOW)
    assert [p for p in found.problems if "not an exit" in p] == [
        f"{tmp_path / 'tariff.toml'}: toll.version[{n}].exits: the lane's plaza 'P09' "
        f"({tmp_path / 'lane.toml'} lane.id) is not an exit of this version: every vehicle "
        "would be unpriced"
        for n in (0, 1)
    ]


def test_check_config_refuses_a_flat_tariff_at_an_exit_lane(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "tariff.example.toml", tmp_path / "tariff.toml")
    keyset_with(tmp_path)
    found = check_config(lane_toml(tmp_path, "P03/x1", "toll-exit"), now=NOW)
    assert any("a toll-exit lane prices trips by entry and exit" in p for p in found.problems)


def test_check_config_loads_the_entry_lanes_pass_key(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "tariff.example.toml", tmp_path / "tariff.toml")
    key = PlazaPassKey.generate("P01")
    keyset_with(tmp_path, key)
    road = 'pass_key = "pass.pem"\npass_kid = "pass-P01"\n'
    path = lane_toml(tmp_path, "P01/e1", "toll-entry", road)
    write_key(tmp_path, key)
    found = check_config(path, now=NOW)
    assert [p for p in found.problems if "pass" in p] == []
    assert [w for w in found.warnings if "pass key" in w] == []
    # Published under another kid: the exits would refuse every pass.
    keyset_with(tmp_path, PlazaPassKey.generate("P01", kid="pass-P01-old"))
    found = check_config(path, now=NOW)
    assert [w for w in found.warnings if "no pass key" in w] == [
        f"{tmp_path / 'keyset.json'}: no pass key 'pass-P01': the exit lanes must hold it, "
        "or they refuse this lane's passes as unknown_key"
    ]
    # A key file others may read is refused, naming the file, never its content.
    write_key(tmp_path, key, mode=0o644)
    found = check_config(path, now=NOW)
    assert [p for p in found.problems if p.startswith("road.pass_key")] == [
        f"road.pass_key: {tmp_path / 'pass.pem'}: mode 0644 lets group or others read a "
        f"secret; chmod 600 {tmp_path / 'pass.pem'}"
    ]
