"""A closed road for the simulator: plazas along a line, its tariff, who travels where and how
long, and which exceptions each trip brings. Pure and seeded: the same seed plans the same road.

Plazas `P01..PNN` stand along the road at seeded kilometre posts (8 to 20 km apart). The fare of
a cell is the distance times the class's rate per km, rounded to whole yuan, at least CNY 5.
A vehicle drives the distance at its class's speed (cars 100 km/h, lorries slower, each driver
within ±15 %), so a trip takes simulated minutes to hours and `--speed` compresses it like any
other simulated time.

The exceptions come at configurable rates, allocated by quota (largest remainder) rather than
drawn one by one, so a run of N vehicles carries round(rate x N) of each: a small run still shows
every kind asked for, and the report's counts are what was planned.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from sim.traffic import BEHAVIOURS, VALID_KINDS, Driver, Mix

SPACING_KM = (8.0, 20.0)
# Fen per km by class (a car pays about CNY 0.45 a km on Zhejiang's expressways).
RATE_FEN_PER_KM: dict[int, int] = {1: 45, 2: 70, 3: 90, 4: 115, 5: 140}
MIN_FARE = 500
SPEED_KMH: dict[int, float] = {1: 100.0, 2: 95.0, 3: 85.0, 4: 80.0, 5: 75.0}
SPEED_SPREAD = 0.15
U_TURN_SHARE = (0.2, 0.5)  # of the U-turn window: to the next crossover and back
OVER_TIME_FACTOR = (1.25, 1.5)  # an over-time vehicle stays this many times the limit
# A normal trip must stay this far under the limit, or it could be judged over time: the pass
# holds whole seconds of the lane's clock and the exit queue adds its wait.
LIMIT_MARGIN = 0.75


class Case(enum.StrEnum):
    """What a trip does that the exit lane's rules must catch (docs/closed-road.md)."""

    NONE = "none"
    LOST_TICKET = "lost_ticket"  # shows no pass at the exit
    TICKET_COPY = "ticket_copy"  # shows a copy of a pass that already exited
    U_TURN = "u_turn"  # leaves at the plaza it entered, within the window
    OVER_TIME = "over_time"  # on the road longer than the limit
    CLASS_MISMATCH = "class_mismatch"  # classified higher at the exit than at the entry
    PLATE_MISMATCH = "plate_mismatch"  # the exit's ANPR reads another plate than the pass's


# Rates a busy expressway sees (per vehicle); `--exception-rate NAME=RATE` changes them.
DEFAULT_RATES: dict[Case, float] = {
    Case.LOST_TICKET: 0.005,
    Case.TICKET_COPY: 0.002,
    Case.U_TURN: 0.005,
    Case.OVER_TIME: 0.003,
    Case.CLASS_MISMATCH: 0.01,
    Case.PLATE_MISMATCH: 0.002,
}


@dataclass(frozen=True)
class Road:
    plazas: tuple[str, ...]
    km: tuple[float, ...]  # each plaza's kilometre post, increasing

    def distance_km(self, a: str, b: str) -> float:
        return abs(self.km[self.plazas.index(a)] - self.km[self.plazas.index(b)])

    @property
    def length_km(self) -> float:
        return self.km[-1] - self.km[0]


def build_road(n: int, seed: int, spacing_km: tuple[float, float] = SPACING_KM) -> Road:
    if n < 2:
        raise ValueError("a road needs at least 2 plazas")
    rng = random.Random(seed * 31 + n)
    km = [0.0]
    for _ in range(n - 1):
        km.append(round(km[-1] + rng.uniform(*spacing_km), 1))
    return Road(tuple(f"P{i + 1:02d}" for i in range(n)), tuple(km))


def fare_cell(km: float, vehicle_class: int) -> int:
    """Minor units for `km` in `vehicle_class`: whole yuan (half up), at least MIN_FARE."""
    return max(MIN_FARE, math.floor(km * RATE_FEN_PER_KM[vehicle_class] / 100 + 0.5) * 100)


def tariff_toml(road: Road, classes: list[int], valid_from: int, section: str = "toll") -> str:
    """The road's `entry_exit` tariff as the lanes load it: every entry-exit-class cell
    (`section` "transit": a metro line's, its stations as the plazas)."""
    lines = [
        "# Written by lane sim for this run (sim/road_model.py).",
        'currency = "CNY"',
        "minor_digits = 2",
        "",
        "[classes]",
        *(f'{c} = "class {c}"' for c in classes),
        "",
        f"[{section}]",
        'mode = "entry_exit"',
        "",
        f"[[{section}.version]]",
        f"valid_from = {valid_from}",
        f"entries = [{', '.join(repr(p) for p in road.plazas)}]".replace("'", '"'),
        f"exits = [{', '.join(repr(p) for p in road.plazas)}]".replace("'", '"'),
    ]
    for entry in road.plazas:
        lines += ["", f"[{section}.version.fares.{entry}]"]
        for exit_plaza in road.plazas:
            if exit_plaza != entry:
                km = road.distance_km(entry, exit_plaza)
                cells = ", ".join(f"{c} = {fare_cell(km, c)}" for c in classes)
                lines.append(f"{exit_plaza} = {{ {cells} }}")
    return "\n".join(lines) + "\n"


def travel_s(km: float, speed_kmh: float) -> float:
    """Simulated seconds to drive `km` at `speed_kmh`."""
    return km / speed_kmh * 3600.0


def default_max_trip_s(road: Road) -> float:
    """The road's time limit: the whole road at 40 km/h, in whole 10 minutes, at least 1 h."""
    return max(3600.0, math.ceil(travel_s(road.length_km, 40.0) / 600) * 600)


@dataclass(frozen=True)
class Trip(Driver):
    """A vehicle's journey; `codes` (from Driver) are the payment codes it shows at the exit."""

    entry: str
    exit: str
    plate: str  # what the entry's ANPR reads (bound to the pass)
    exit_plate: str | None  # what the exit's ANPR reads (None: it reads nothing)
    exit_class: int  # what the exit's classifier reads
    case: Case
    travel_s: float  # simulated seconds from the entry's barrier to the exit's queue
    copy_of: int | None = None  # TICKET_COPY: the trip whose pass it shows


@dataclass(frozen=True)
class RoadPlan:
    road: Road
    rates: Mapping[Case, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    max_trip_s: float = 0.0  # 0: default_max_trip_s(road)
    u_turn_window_s: float = 1800.0
    # Share of vehicles whose plate the exit's ANPR reads (a known plate prices the trip
    # without the ticket); the others show the ticket's QR.
    exit_anpr: float = 0.5

    @property
    def limit_s(self) -> float:
        return self.max_trip_s or default_max_trip_s(self.road)

    def problems(self, mix: Mix) -> list[str]:
        """Why this plan cannot be run with this traffic (empty when it can)."""
        out = []
        total = sum(self.rates.values())
        if any(r < 0 for r in self.rates.values()) or total > 1:
            out.append(f"exception rates must be >= 0 and add up to at most 1, not {total:g}")
        slowest = min(SPEED_KMH.values()) * (1 - SPEED_SPREAD)
        longest = travel_s(self.road.length_km, slowest)
        if longest > self.limit_s * LIMIT_MARGIN:
            out.append(
                f"the road ({self.road.length_km:g} km) takes up to {longest / 60:.0f} min: "
                f"the time limit must be at least {longest / LIMIT_MARGIN / 60:.0f} min"
            )
        if not set(mix.classes) <= set(RATE_FEN_PER_KM):
            out.append(f"road vehicle classes are {sorted(RATE_FEN_PER_KM)}")
        return out


def allocate(n: int, rates: Mapping[Case, float]) -> dict[Case, int]:
    """How many of `n` trips get each case: round by largest remainder, the rest NONE."""
    if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1:
        raise ValueError("exception rates must be >= 0 and add up to at most 1")
    exact = {case: rate * n for case, rate in rates.items() if case is not Case.NONE}
    counts: dict[Case, int] = {case: math.floor(x) for case, x in exact.items()}
    spare = math.floor(sum(exact.values()) + 0.5) - sum(counts.values())
    by_remainder = sorted(exact, key=lambda c: (-(exact[c] - counts[c]), list(Case).index(c)))
    for case in by_remainder[: max(0, spare)]:
        counts[case] += 1
    counts[Case.NONE] = n - sum(counts.values())
    return counts


def plate(rng: random.Random) -> str:
    """A Zhejiang-looking plate in ASCII: ZJ, a city letter, five letters or digits."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    tail = "".join(rng.choice("0123456789" + letters[:6]) for _ in range(5))
    return "ZJ" + rng.choice(letters) + tail


def paying_behaviours(mix: Mix) -> tuple[list[str], list[float]]:
    """The mix's behaviours whose first code pays: road drivers pay at the first try (bad codes
    at a toll lane are the plaza simulator's subject; here the fare is)."""
    pairs = [(b, w) for b, w in mix.behaviours.items() if BEHAVIOURS[b][0] in VALID_KINDS]
    if not pairs:
        return ["token"], [1.0]
    names, weights = zip(*pairs, strict=True)
    return list(names), list(weights)


def plan_trips(n: int, seed: int, plan: RoadPlan, mix: Mix) -> list[Trip]:
    """`n` trips with Poisson arrivals over the road's entry plazas."""
    rng = random.Random(seed)
    road = plan.road
    counts = allocate(n, plan.rates)
    cases = [case for case, k in counts.items() for _ in range(k)]
    rng.shuffle(cases)
    _originals_first(cases)
    classes, class_weights = zip(*mix.classes.items(), strict=True)
    behaviours, weights = paying_behaviours(mix)
    trips: list[Trip] = []
    t = 0.0
    for i, case in enumerate(cases):
        t += rng.expovariate(mix.arrivals_per_hour / 3600.0)
        behaviour = rng.choices(behaviours, weights)[0]
        vehicle_class = rng.choices(classes, class_weights)[0]
        entry = rng.choice(road.plazas)
        exit_plaza = rng.choice([p for p in road.plazas if p != entry])
        own_plate = plate(rng)
        speed = SPEED_KMH[vehicle_class] * rng.uniform(1 - SPEED_SPREAD, 1 + SPEED_SPREAD)
        duration = travel_s(road.distance_km(entry, exit_plaza), speed)
        copy_of = None
        exit_class = vehicle_class
        exit_plate: str | None = own_plate if rng.random() < plan.exit_anpr else None
        if case is Case.U_TURN:
            exit_plaza = entry
            duration = plan.u_turn_window_s * rng.uniform(*U_TURN_SHARE)
        elif case is Case.OVER_TIME:
            duration = plan.limit_s * rng.uniform(*OVER_TIME_FACTOR)
        elif case is Case.CLASS_MISMATCH:
            # Read one class higher at the exit (a trailer hitched on the road); the highest
            # class was read one lower at the entry.
            if vehicle_class < max(RATE_FEN_PER_KM):
                exit_class = vehicle_class + 1
            else:
                vehicle_class = exit_class - 1
        elif case is Case.PLATE_MISMATCH:
            exit_plate = plate(rng)
        elif case is Case.LOST_TICKET:
            exit_plate = None  # a plate the exit knows would find the entry: not lost then
        elif case is Case.TICKET_COPY:
            # A vehicle of the same class as one before it (a fleet's lorries share tickets).
            copy_of = rng.choice([j.index for j in trips if j.case is Case.NONE])
            original = trips[copy_of]
            vehicle_class = exit_class = original.vehicle_class
            exit_plate = None  # its own plate would price its own trip: it hides the plate
            # It leaves where the original left: the used-pass store is the plaza's
            # (docs/closed-road.md), a copy shown at another plaza is not caught offline.
            exit_plaza = original.exit
            if entry == exit_plaza:
                entry = rng.choice([p for p in road.plazas if p != exit_plaza])
            duration = travel_s(road.distance_km(entry, exit_plaza), speed)
        trips.append(
            Trip(
                index=i,
                arrival_s=t,
                vehicle_class=vehicle_class,
                behaviour=behaviour,
                codes=BEHAVIOURS[behaviour],
                entry=entry,
                exit=exit_plaza,
                plate=own_plate,
                exit_plate=exit_plate,
                exit_class=exit_class,
                case=case,
                travel_s=duration,
                copy_of=copy_of,
            )
        )
    return trips


def _originals_first(cases: list[Case]) -> None:
    """Reorder so that every TICKET_COPY has a plain trip (one that exits with its own pass)
    before it to copy from; ValueError when the plan has no plain trip at all."""
    for i, case in enumerate(cases):
        if case is Case.NONE:
            return
        if case is Case.TICKET_COPY:
            j = next((k for k in range(i + 1, len(cases)) if cases[k] is Case.NONE), None)
            if j is None:
                raise ValueError("a ticket copy needs a trip without exception to copy")
            cases[i], cases[j] = cases[j], cases[i]
            return
