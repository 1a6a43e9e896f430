"""The entry-exit matrix tariff: cells, versions at midnight, gaps listed at once, errors."""

from __future__ import annotations

import re
import shutil
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.auth.fares import FareError, Money, TariffError, load_tariff, parse_tariff
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet, keyset_to_json, load_keyset
from lane.checks import check_config
from sim.codes import CodeFactory

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROAD = DEPLOY / "tariff.road.example.toml"
# Midnight in Beijing (UTC+8) on 1 January 2027, when the second version starts.
CHANGE = int(datetime(2026, 12, 31, 16, 0, tzinfo=UTC).timestamp())


def body() -> dict[str, Any]:
    with ROAD.open("rb") as f:
        return tomllib.load(f)


def test_the_example_road_tariff_prices_every_trip() -> None:
    tariff = load_tariff(ROAD)
    assert tariff.mode == "entry_exit"
    assert tariff.trip_fare(1, "P01", "P03", CHANGE - 1) == Money(4000, "CNY")
    assert tariff.trip_fare(3, "P03", "P02", CHANGE - 1) == Money(5000, "CNY")
    assert tariff.farthest_fare(2, "P02", CHANGE - 1) == Money(3800, "CNY")
    assert tariff.nearest_fare(1, "P03", CHANGE - 1) == Money(2500, "CNY")
    assert tariff.format(tariff.trip_fare(1, "P01", "P03", CHANGE)) == "CNY 42.00"


def test_a_tariff_change_at_midnight_is_exact() -> None:
    tariff = load_tariff(ROAD)
    assert tariff.trip_fare(1, "P01", "P03", CHANGE - 1).amount_minor == 4000
    assert tariff.trip_fare(1, "P01", "P03", CHANGE - 0.001).amount_minor == 4000
    assert tariff.trip_fare(1, "P01", "P03", CHANGE).amount_minor == 4200
    assert tariff.farthest_fare(1, "P01", CHANGE).amount_minor == 4200


def test_lookups_refuse_what_the_matrix_does_not_hold() -> None:
    tariff = load_tariff(ROAD)
    with pytest.raises(FareError, match="no tariff version is valid"):
        tariff.trip_fare(1, "P01", "P03", 0)
    with pytest.raises(FareError, match="no fare from 'P01' to 'P01'"):
        tariff.trip_fare(1, "P01", "P01", CHANGE)
    with pytest.raises(FareError, match="unknown vehicle class 9"):
        tariff.trip_fare(9, "P01", "P03", CHANGE)
    with pytest.raises(FareError, match="no entry leads to 'P09'"):
        tariff.farthest_fare(1, "P09", CHANGE)
    with pytest.raises(FareError, match="use trip_fare"):
        tariff.fare(1, "P01")


def test_every_missing_cell_is_listed_at_once() -> None:
    data = body()
    first = data["toll"]["version"][0]["fares"]
    del first["P01"]["P03"]["2"]
    del first["P02"]["P01"]
    del first["P03"]
    with pytest.raises(TariffError) as caught:
        parse_tariff(data, "road.toml")
    message = str(caught.value)
    assert message.startswith("road.toml: toll.version[0].fares: 10 missing cells: ")
    for cell in ["P01->P03 class 2", "P02->P01 class 1", "P02->P01 class 3"]:
        assert cell in message
    assert all(f"P03->P0{x} class {c}" in message for x in (1, 2) for c in (1, 2, 3))


def example_config(where: Path) -> None:
    """The shipped example config, naming tariff.toml and keyset.json beside it."""
    text = (DEPLOY / "lane.toml.example").read_text()
    text = text.replace('"tariff.example.toml"', '"tariff.toml"')
    (where / "lane.toml").write_text(text.replace('"keyset.example.json"', '"keyset.json"'))


def test_check_config_lists_every_missing_cell(tmp_path: Path) -> None:
    example_config(tmp_path)
    CodeFactory(1).write_keyset(tmp_path / "keyset.json", CHANGE - 3600)
    text = ROAD.read_text()
    assert "P03 = { 1 = 2500, 2 = 3800, 3 = 5000 }\n" in text
    (tmp_path / "tariff.toml").write_text(
        text.replace("P03 = { 1 = 2500, 2 = 3800, 3 = 5000 }\n", "P03 = { 1 = 2500 }\n", 1)
    )
    found = check_config(tmp_path / "lane.toml", now=CHANGE)
    assert [p for p in found.problems if "missing cells" in p] == [
        f"{tmp_path / 'tariff.toml'}: toll.version[0].fares: 2 missing cells: "
        "P02->P03 class 2, P02->P03 class 3"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b["toll"]["version"][1].update(valid_from=b["toll"]["version"][0]["valid_from"]),
         "toll.version[1].valid_from: must be later than the version before it"),
        (lambda b: b["toll"]["version"][0].update(valid_from=datetime(2026, 1, 1)),
         "toll.version[0].valid_from: 2026-01-01T00:00:00 has no UTC offset"),
        (lambda b: b["toll"]["version"][0]["fares"]["P01"].update(P01={1: 0}),
         "toll.version[0].fares.P01.P01: exit at the entry plaza is a U-turn"),
        (lambda b: b["toll"]["version"][0]["fares"]["P01"].update(P09={1: 0}),
         "toll.version[0].fares.P01.P09: 'P09' is not in toll.version[0].exits"),
        (lambda b: b["toll"]["version"][0]["fares"].update(P09={}),
         "toll.version[0].fares.P09: 'P09' is not in toll.version[0].entries"),
        (lambda b: b["toll"]["version"][0]["fares"]["P01"]["P02"].update({"1": 15.0}),
         "toll.version[0].fares.P01.P02.1: must be an integer of minor units"),
        (lambda b: b["toll"]["version"][0]["fares"]["P01"]["P02"].update({"7": 1}),
         "toll.version[0].fares.P01.P02.7: class 7 is not declared"),
        (lambda b: b["toll"]["version"][0].update(entries=["P01", "P01"]),
         "toll.version[0].entries: names a plaza twice"),
        (lambda b: b["toll"]["version"][0].update(rate=1),
         "toll.version[0].rate: unknown key"),
        (lambda b: b["toll"].update(version=[]), "toll.version: needs at least one"),
        (lambda b: b["toll"].update(fares={}), "toll.fares: entry_exit fares go in"),
        (lambda b: b["toll"].update(mode="flat"), "toll.version: is only used in entry_exit"),
    ],
)  # fmt: skip
def test_file_errors_name_the_key(change: Any, expected: str) -> None:
    data = body()
    change(data)
    with pytest.raises(TariffError, match="^" + re.escape("road.toml: " + expected)):
        parse_tariff(data, "road.toml")


def test_a_metro_is_priced_by_station_the_same_way() -> None:
    data = body()
    data["transit"] = data.pop("toll")
    tariff = parse_tariff(data, "metro.toml")
    assert tariff.kind == "transit"
    assert tariff.trip_fare(1, "P02", "P03", CHANGE) == Money(2500, "CNY")


def test_per_entry_matrix_tariffs_still_load_and_price_trips() -> None:
    legacy = {
        "currency": "EUR",
        "classes": {"1": "Car", "2": "Lorry"},
        "toll": {
            "mode": "matrix",
            "fares": {"P01": {"1": 100, "2": 300}, "P02": {"1": 200, "2": 500}},
        },
    }
    tariff = parse_tariff(legacy, "legacy.toml")
    assert tariff.fare(2, "P02") == Money(500, "EUR")
    assert tariff.trip_fare(2, "P02", "anywhere", 0) == Money(500, "EUR")
    assert tariff.farthest_fare(1, "P09", 0) == Money(200, "EUR")
    assert tariff.nearest_fare(1, "P01", 0) == Money(100, "EUR")
    flat = parse_tariff({**legacy, "toll": {"mode": "flat", "fares": {"1": 1, "2": 2}}}, "f")
    with pytest.raises(FareError, match="a flat tariff does not price trips by entry"):
        flat.trip_fare(1, "P01", "P02", 0)


@given(st.integers(CHANGE - 10**7, CHANGE + 10**7), st.sampled_from([1, 2, 3]))
def test_farthest_and_nearest_are_cells_bounding_every_trip(at: int, vehicle_class: int) -> None:
    tariff = load_tariff(ROAD)
    for exit_plaza in ("P01", "P02", "P03"):
        trips = [
            tariff.trip_fare(vehicle_class, entry, exit_plaza, at).amount_minor
            for entry in ("P01", "P02", "P03")
            if entry != exit_plaza
        ]
        assert tariff.farthest_fare(vehicle_class, exit_plaza, at).amount_minor == max(trips)
        nearest = tariff.nearest_fare(vehicle_class, exit_plaza, at).amount_minor
        assert nearest == min(
            tariff.trip_fare(vehicle_class, exit_plaza, x, at).amount_minor
            for x in ("P01", "P02", "P03")
            if x != exit_plaza
        )


CELLS = [
    (e, x, c) for e in ("P01", "P02", "P03") for x in ("P01", "P02", "P03") if e != x
    for c in ("1", "2", "3")
]  # fmt: skip


@given(st.sets(st.sampled_from(CELLS), min_size=1))
def test_check_names_exactly_the_missing_cells(missing: set[tuple[str, str, str]]) -> None:
    data = body()
    fares = data["toll"]["version"][0]["fares"]
    for entry, exit_plaza, vehicle_class in missing:
        del fares[entry][exit_plaza][vehicle_class]
    with pytest.raises(TariffError) as caught:
        parse_tariff(data, "road.toml")
    named = re.findall(r"(P0\d)->(P0\d) class (\d)", str(caught.value))
    assert set(named) == missing and len(named) == len(missing)


def test_check_config_refuses_a_road_tariff_at_a_toll_lane(tmp_path: Path) -> None:
    """A `toll` lane would meet FareError on every vehicle: only `toll-exit` charges a road's
    trips (tests/lane/test_road_config.py checks one)."""
    example_config(tmp_path)
    shutil.copy(ROAD, tmp_path / "tariff.toml")
    factory = CodeFactory(1)
    factory.write_keyset(tmp_path / "keyset.json", CHANGE - 3600)
    keys = load_keyset(tmp_path / "keyset.json")
    p02 = PlazaPassKey.generate("P02")
    with_pass_key = KeySet.of(keys.issued_at, [*keys.keys.values(), p02.public()])
    (tmp_path / "keyset.json").write_text(keyset_to_json(with_pass_key))
    found = check_config(tmp_path / "lane.toml", now=CHANGE)
    assert [p for p in found.problems if "entry_exit" in p] == [
        f"{tmp_path / 'tariff.toml'}: mode: 'entry_exit' prices the exits of a closed road, "
        f"which lane.mode 'toll' in {tmp_path / 'lane.toml'} does not charge (use 'toll-exit')"
    ]
