from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from lane.auth.fares import FareError, Money, TariffError, load_tariff, parse_tariff

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "tariff.example.toml"

FLAT = """
currency = "EUR"
[classes]
1 = "Car"
2 = "Lorry"
[toll]
mode = "flat"
[toll.fares]
1 = 290
2 = 820
"""

MATRIX = """
currency = "EUR"
[classes]
1 = "Car"
2 = "Lorry"
[toll]
mode = "matrix"
[toll.fares.P01]
1 = 120
2 = 410
[toll.fares.P02]
1 = 250
2 = 0
"""


def tariff_of(text: str) -> Any:
    return parse_tariff(tomllib.loads(text), "tariff.toml")


def test_example_file_has_five_classes_in_eur() -> None:
    tariff = load_tariff(EXAMPLE)
    assert tariff.currency == "EUR"
    assert sorted(tariff.classes) == [1, 2, 3, 4, 5]
    assert tariff.fare(2) == Money(290, "EUR")
    assert tariff.format(tariff.fare(2)) == "EUR 2.90"


def test_flat_toll() -> None:
    tariff = tariff_of(FLAT)
    assert tariff.fare(1) == Money(290, "EUR")
    assert tariff.fare(2, entry_plaza="P01") == Money(820, "EUR")  # the plaza is irrelevant
    assert tariff.class_name(2) == "Lorry"
    with pytest.raises(FareError, match="unknown vehicle class 3"):
        tariff.fare(3)


def test_matrix_toll() -> None:
    tariff = tariff_of(MATRIX)
    assert tariff.fare(1, "P01") == Money(120, "EUR")
    assert tariff.fare(2, "P02") == Money(0, "EUR")
    with pytest.raises(FareError, match="entry plaza"):
        tariff.fare(1)
    with pytest.raises(FareError, match="unknown entry plaza 'P99'"):
        tariff.fare(1, "P99")
    with pytest.raises(FareError, match="unknown vehicle class 9"):
        tariff.fare(9, "P01")


def test_transit_modes() -> None:
    flat = tariff_of(
        'currency = "GBP"\n[classes]\n1 = "Adult"\n2 = "Child"\n'
        '[transit]\nmode = "flat"\n[transit.fares]\n1 = 280\n2 = 140\n'
    )
    assert flat.kind == "transit"
    assert flat.fare(2) == Money(140, "GBP")
    zero = tariff_of(
        'currency = "JPY"\nminor_digits = 0\n[classes]\n1 = "Adult"\n'
        '[transit]\nmode = "zero_at_entry"\n'
    )
    assert zero.fare(1) == Money(0, "JPY")
    assert zero.format(Money(210, "JPY")) == "JPY 210"
    with pytest.raises(FareError):
        zero.fare(2)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (FLAT.replace("1 = 290", "1 = 2.90"), "toll.fares.1", "integer of minor units"),
        (FLAT.replace("1 = 290", "1 = -290"), "toll.fares.1", "must be >= 0"),
        (FLAT.replace("1 = 290", '1 = "290"'), "toll.fares.1", "must be an integer"),
        (FLAT.replace("1 = 290", "1 = true"), "toll.fares.1", "a boolean"),
        (FLAT.replace("1 = 290\n", ""), "toll.fares", "no fare for class 1 (Car)"),
        (FLAT.replace("2 = 820", "2 = 820\n3 = 900"), "toll.fares.3", "not declared in [classes]"),
        (FLAT.replace('currency = "EUR"', 'currency = "eur"'), "currency", "ISO 4217"),
        (FLAT.replace('currency = "EUR"', ""), "currency", "is missing"),
        (
            FLAT.replace('currency = "EUR"', 'currency = "EUR"\nminor_digits = 7'),
            "minor_digits",
            "0..4",
        ),
        (FLAT.replace('currency = "EUR"', 'currency = "EUR"\nlanes = 3'), "lanes", "unknown key"),
        (FLAT.replace('1 = "Car"', '01 = "Car"'), "classes.01", "without leading zeros"),
        (FLAT.replace('1 = "Car"', 'car = "Car"'), "classes.car", "class ids are integers"),
        (FLAT.replace('1 = "Car"', '1 = ""'), "classes.1", "class name"),
        (FLAT.replace('1 = "Car"', '1000 = "Car"'), "classes.1000", "<= 999"),
        (FLAT.replace('mode = "flat"', 'mode = "distance"'), "toll.mode", "flat, matrix"),
        (FLAT.replace('mode = "flat"', 'mode = "flat"\nspeed = 1'), "toll.speed", "unknown key"),
        (FLAT.replace("[toll.fares]", "[toll.prices]"), "toll.prices", "unknown key"),
        (FLAT + '[transit]\nmode = "flat"\n', "", "exactly one of [toll] or [transit]"),
        (
            MATRIX.replace("[toll.fares.P02]\n1 = 250", "[toll.fares.P02]\n"),
            "toll.fares.P02",
            "no fare",
        ),
        ('currency = "EUR"\n[classes]\n', "classes", "at least one class"),
        (
            'currency = "EUR"\n[classes]\n1 = "A"\n[transit]\nmode = "zero_at_entry"\n'
            "[transit.fares]\n1 = 5\n",
            "transit.fares",
            "not used in zero_at_entry",
        ),
        (
            'currency = "EUR"\n[classes]\n1 = "A"\n[toll]\nmode = "matrix"\n[toll.fares]\n',
            "toll.fares",
            "at least one entry plaza",
        ),
        (
            'currency = "EUR"\n[classes]\n1 = "A"\n[toll]\nmode = "matrix"\n[toll.fares]\nP1 = 5\n',
            "toll.fares.P1",
            "must be a table of fares",
        ),
    ],
)
def test_errors_name_file_key_and_problem(text: str, key: str, problem: str) -> None:
    with pytest.raises(TariffError) as info:
        tariff_of(text)
    assert info.value.source == "tariff.toml"
    assert info.value.key == key
    assert problem in info.value.problem


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TariffError, match="cannot read"):
        load_tariff(tmp_path / "missing.toml")
    path = tmp_path / "tariff.toml"
    path.write_text("currency = \n")
    with pytest.raises(TariffError, match=f"{path}: not TOML"):
        load_tariff(path)
    path.write_text(FLAT.replace("2 = 820", "2 = 8.20"))
    with pytest.raises(TariffError, match=rf"{path}: toll\.fares\.2: must be an integer"):
        load_tariff(path)


def test_every_problem_of_a_tariff_is_listed_at_once() -> None:
    """A bad currency, an unknown key, a bad class and two bad fares: one run lists all five,
    layer after layer, instead of one per run."""
    text = """
currency = "euro"
colour = "blue"
[classes]
1 = "Car"
x = "Van"
[toll]
mode = "flat"
[toll.fares]
1 = 2.90
7 = 100
"""
    with pytest.raises(TariffError) as info:
        tariff_of(text)
    keys = [p.key for p in info.value.problems]
    assert keys == ["colour", "currency", "classes.x", "toll.fares.1", "toll.fares.7"]
    lines = str(info.value).splitlines()
    assert len(lines) == 5 and all(line.startswith("tariff.toml: ") for line in lines)
    assert info.value.key == "colour"  # the first one, for callers that show only one


def test_check_config_lists_every_tariff_problem(tmp_path: Path) -> None:
    from lane.checks import check_config  # noqa: PLC0415

    (tmp_path / "tariff.toml").write_text(
        FLAT.replace('currency = "EUR"', 'currency = "eur"').replace("2 = 820", "2 = -1")
    )
    (tmp_path / "lane.toml").write_text('[fares]\ntariff = "tariff.toml"\n')
    found = check_config(tmp_path / "lane.toml")
    tariff_lines = [p for p in found.problems if "tariff.toml" in p]
    assert len(tariff_lines) == 2
    assert "currency" in tariff_lines[0] and "toll.fares.2" in tariff_lines[1]
