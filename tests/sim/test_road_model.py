"""The simulated road's pure parts: geometry, fares, travel, the planned exceptions."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.auth.fares import parse_tariff
from sim.road_model import (
    DEFAULT_RATES,
    LIMIT_MARGIN,
    MIN_FARE,
    SPACING_KM,
    Case,
    Road,
    RoadPlan,
    _originals_first,
    allocate,
    build_road,
    default_max_trip_s,
    fare_cell,
    plan_trips,
    tariff_toml,
    travel_s,
)
from sim.traffic import BEHAVIOURS, VALID_KINDS, Mix

EVERY_CASE: dict[Case, float] = {case: 1 / 14 for case in Case if case is not Case.NONE}


@pytest.mark.parametrize("n", [2, 3, 8])
def test_a_road_has_its_plazas_along_a_line(n: int) -> None:
    road = build_road(n, seed=5)
    assert road.plazas == tuple(f"P{i:02d}" for i in range(1, n + 1))
    gaps = [b - a for a, b in itertools.pairwise(road.km)]
    assert all(SPACING_KM[0] - 0.1 <= g <= SPACING_KM[1] + 0.1 for g in gaps)
    assert road == build_road(n, seed=5) != build_road(n, seed=6)
    assert road.distance_km(road.plazas[-1], road.plazas[0]) == road.length_km


def test_a_road_of_one_plaza_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        build_road(1, seed=1)


@pytest.mark.parametrize(
    ("km", "vehicle_class", "fen"),
    [
        (10.0, 1, MIN_FARE),  # 4.50 yuan: the minimum fare
        (20.0, 1, 900),
        (14.3, 2, 1000),  # 10.01 yuan: whole yuan
        (30.0, 5, 4200),
        (90.0, 1, 4100),  # 40.50 yuan: half up
    ],
)
def test_a_fare_is_the_distance_at_the_class_rate_in_whole_yuan(
    km: float, vehicle_class: int, fen: int
) -> None:
    assert fare_cell(km, vehicle_class) == fen


def test_the_tariff_prices_every_entry_exit_class_cell_and_loads() -> None:
    road = build_road(4, seed=2)
    tariff = parse_tariff(tomllib.loads(tariff_toml(road, [1, 2, 3], 1_700_000_000)), "road")
    for entry in road.plazas:
        for exit_plaza in road.plazas:
            if entry == exit_plaza:
                continue
            for c in (1, 2, 3):
                fare = tariff.trip_fare(c, entry, exit_plaza, 1_800_000_000)
                assert fare.amount_minor == fare_cell(road.distance_km(entry, exit_plaza), c)


@pytest.mark.parametrize(
    ("km", "kmh", "seconds"), [(100.0, 100.0, 3600.0), (15.0, 90.0, 600.0), (0.0, 80.0, 0.0)]
)
def test_travel_time_is_distance_over_speed(km: float, kmh: float, seconds: float) -> None:
    assert travel_s(km, kmh) == pytest.approx(seconds)


@pytest.mark.parametrize(("length", "limit"), [(29.3, 3600.0), (100.0, 9000.0), (101.0, 9600.0)])
def test_the_default_time_limit_is_the_road_at_40_kmh(length: float, limit: float) -> None:
    assert default_max_trip_s(Road(("P01", "P02"), (0.0, length))) == limit


@pytest.mark.parametrize(
    ("n", "rates", "expected"),
    [
        (14, EVERY_CASE, {**dict.fromkeys(EVERY_CASE, 1), Case.NONE: 8}),
        (10, {Case.LOST_TICKET: 0.25}, {Case.LOST_TICKET: 3, Case.NONE: 7}),  # 2.5: half up
        (
            10,
            {Case.LOST_TICKET: 0.12, Case.U_TURN: 0.14},
            {Case.LOST_TICKET: 1, Case.U_TURN: 2, Case.NONE: 7},
        ),
        (0, DEFAULT_RATES, {**dict.fromkeys(DEFAULT_RATES, 0), Case.NONE: 0}),
        (
            200,
            DEFAULT_RATES,
            {
                Case.LOST_TICKET: 1,
                Case.TICKET_COPY: 0,
                Case.U_TURN: 1,
                Case.OVER_TIME: 1,
                Case.CLASS_MISMATCH: 2,
                Case.PLATE_MISMATCH: 0,
                Case.NONE: 195,
            },
        ),
    ],
)
def test_exceptions_are_allocated_by_quota(
    n: int, rates: dict[Case, float], expected: dict[Case, int]
) -> None:
    assert allocate(n, rates) == expected


@given(
    st.integers(0, 500),
    st.lists(st.floats(0, 1 / 6), min_size=6, max_size=6),
)
def test_an_allocation_always_adds_up_and_stays_within_one_of_the_rate(
    n: int, shares: list[float]
) -> None:
    rates: dict[Case, float] = dict(zip(list(EVERY_CASE), shares, strict=True))
    counts = allocate(n, rates)
    assert sum(counts.values()) == n and min(counts.values()) >= 0
    for case, rate in rates.items():
        assert abs(counts[case] - rate * n) < 1 + 1e-9


def test_rates_over_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        allocate(10, {Case.LOST_TICKET: 0.7, Case.U_TURN: 0.4})


def test_a_copy_comes_after_a_plain_trip_to_copy() -> None:
    cases = [Case.TICKET_COPY, Case.U_TURN, Case.NONE]
    _originals_first(cases)
    assert cases == [Case.NONE, Case.U_TURN, Case.TICKET_COPY]
    with pytest.raises(ValueError, match="to copy"):
        _originals_first([Case.U_TURN, Case.TICKET_COPY])


SHORT = RoadPlan(
    Road(("P01", "P02", "P03"), (0.0, 4.0, 9.0)), EVERY_CASE, max_trip_s=900, u_turn_window_s=600
)


@pytest.mark.parametrize("seed", range(6))
def test_every_planned_trip_does_what_its_exception_says(seed: int) -> None:
    trips = plan_trips(28, seed, SHORT, Mix())
    assert [t.index for t in trips] == list(range(28))
    assert all(a.arrival_s < b.arrival_s for a, b in itertools.pairwise(trips))
    assert {c: sum(t.case is c for t in trips) for c in Case} == allocate(28, SHORT.rates)
    for t in trips:
        assert BEHAVIOURS[t.behaviour][0] in VALID_KINDS  # road drivers pay at the first try
        assert (t.exit == t.entry) == (t.case is Case.U_TURN)
        assert (t.exit_class != t.vehicle_class) == (t.case is Case.CLASS_MISMATCH)
        if t.case is Case.CLASS_MISMATCH:
            assert t.exit_class == t.vehicle_class + 1
        if t.case is Case.U_TURN:
            assert t.travel_s <= SHORT.u_turn_window_s * LIMIT_MARGIN
        elif t.case is Case.OVER_TIME:
            assert t.travel_s > SHORT.limit_s * 1.2
        else:
            assert t.travel_s < SHORT.limit_s * LIMIT_MARGIN
        if t.case in (Case.LOST_TICKET, Case.TICKET_COPY):
            assert t.exit_plate is None  # no plate the exit could find the entry by
        if t.case is Case.PLATE_MISMATCH:
            assert t.exit_plate is not None and t.exit_plate != t.plate
        assert (t.copy_of is not None) == (t.case is Case.TICKET_COPY)
        if t.copy_of is not None:
            original = trips[t.copy_of]
            assert original.index < t.index and original.case is Case.NONE
            assert original.vehicle_class == t.vehicle_class
            assert original.exit == t.exit != t.entry  # the plaza's used-pass store catches it
    assert trips == plan_trips(28, seed, SHORT, Mix())


def test_the_exit_anpr_share_decides_which_plain_trips_show_a_plate() -> None:
    for share, read in ((0.0, 0), (1.0, 30)):
        trips = plan_trips(30, 1, replace(SHORT, rates={}, exit_anpr=share), Mix())
        assert sum(t.exit_plate is not None for t in trips) == read


@pytest.mark.parametrize(
    ("plan", "mix", "problem"),
    [
        (replace(SHORT, max_trip_s=300), Mix(), "the time limit must be at least"),
        (replace(SHORT, rates={Case.LOST_TICKET: 0.8, Case.U_TURN: 0.3}), Mix(), "add up"),
        (SHORT, Mix(classes={1: 0.5, 7: 0.5}), "road vehicle classes"),
    ],
)
def test_a_plan_that_cannot_run_says_why(plan: RoadPlan, mix: Mix, problem: str) -> None:
    assert any(problem in p for p in plan.problems(mix))
    assert SHORT.problems(Mix()) == []
