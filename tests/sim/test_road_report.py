"""The road report's reconciliation, on records built here: a road whose every record is right
reconciles; each way a record or a trip can be wrong is named as a problem."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import replace

import pytest

from lane.auth.fares import Tariff, parse_tariff
from lane.core.names import AuthResult, Method, RecordKind
from sim.road_model import Case, Road, RoadPlan, Trip, plan_trips, tariff_toml
from sim.road_report import FLAG, Journey, expected_fare, reconcile
from sim.traffic import Mix
from uplink.records import AuthInfo, Record, RecordDraft

EVERY_CASE: dict[Case, float] = {case: 1 / 14 for case in Case if case is not Case.NONE}
PLAN = RoadPlan(Road(("P01", "P02", "P03"), (0.0, 12.0, 30.0)), EVERY_CASE, max_trip_s=3600)
NOW = 1_800_000_000
TARIFF = parse_tariff(tomllib.loads(tariff_toml(PLAN.road, [1, 2, 3, 4, 5], NOW - 86400)), "t")


def _record(rid: str, lane: str, draft: RecordDraft) -> Record:
    return Record(rid, lane, 1, NOW * 10**6, draft)


def world(n: int = 14) -> tuple[list[Journey], list[Record]]:
    """Every vehicle entered, took its ticket, left at its exit and paid what the rules say."""
    trips = plan_trips(n, 3, PLAN, Mix())
    journeys = [
        Journey(
            t,
            ticket=f"LP1:{t.index}",
            pass_id=f"{t.index + 1:016x}",
            ticket_pass=f"{t.index + 1:016x}",
            entry_done=True,
            entry_vehicle=f"e{t.index}",
            exit_vehicle=f"x{t.index}",
            exit_lane=f"{t.exit}/x1",
            paid=True,
        )
        for t in trips
    ]
    records = []
    for j in journeys:
        t = j.trip
        entry = RecordDraft(
            RecordKind.ENTRY,
            f"e{t.index}",
            t.vehicle_class,
            0,
            "CNY",
            Method.NONE,
            None,
            AuthInfo(AuthResult.NONE),
            entry_plaza=t.entry,
            pass_id=j.pass_id,
            plate=t.plate,
        )
        records.append(_record(f"in{t.index}", f"{t.entry}/e1", entry))
        shown = None if t.case is Case.LOST_TICKET else j.pass_id
        if t.copy_of is not None:
            shown = journeys[t.copy_of].pass_id
        flags = () if t.case is Case.NONE else (FLAG[t.case],)
        out = RecordDraft(
            RecordKind.EXIT,
            f"x{t.index}",
            t.exit_class,
            expected_fare(t, TARIFF, NOW),
            "CNY",
            Method.TOKEN,
            "a1",
            AuthInfo(AuthResult.APPROVED),
            flags=flags,
            pass_id=shown,
        )
        records.append(_record(f"out{t.index}", f"{t.exit}/x1", out))
    return journeys, records


def run(journeys: list[Journey], records: list[Record], tariff: Tariff = TARIFF) -> dict:  # type: ignore[type-arg]
    return reconcile(journeys, [r.encode() for r in records], tariff, PLAN)


def test_a_road_whose_records_are_right_reconciles() -> None:
    journeys, records = world()
    report = run(journeys, records)
    assert report["problems"] == [] and report["reconciled"]
    assert report["entry_records"] == report["exit_records"] == report["vehicles"] == 14
    # The lost ticket's entry and the copier's own one stay open; every other trip closed.
    assert report["trips"] == {"closed": 12, "open": 2, "open_expected": 2, "unmatched_exits": 0}
    for case in Case:
        counts = report["exceptions"][case]
        assert counts["injected"] == counts["fare_right"] == (8 if case is Case.NONE else 1)
        assert counts["flagged"] == (None if case is Case.NONE else 1)
    assert report["fares"] == {"checked": 14, "matrix": 9, "exception": 5}
    assert report["revenue_minor"] == sum(r.draft.amount_minor for r in records)


def _trip(case: Case, **changes: object) -> Trip:
    base = Trip(0, 0.0, 1, "token", ("token",), "P01", "P03", "ZJA1", "ZJA1", 1, case, 600.0)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("trip", "fare"),
    [
        (_trip(Case.NONE), 1400),  # 30 km, class 1
        (_trip(Case.NONE, exit="P02"), 500),  # 12 km: 5.40 -> 5 yuan, the minimum
        (_trip(Case.CLASS_MISMATCH, exit_class=2), 2100),  # the higher class's trip fare
        (_trip(Case.LOST_TICKET, exit="P02"), 800),  # the farthest entry into P02 (P03: 18 km)
        (_trip(Case.TICKET_COPY, exit="P02"), 800),
        (_trip(Case.PLATE_MISMATCH, exit="P02"), 800),
        (_trip(Case.OVER_TIME), 1400),  # into P03 the farthest entry is P01 itself
        (_trip(Case.U_TURN, entry="P02", exit="P02"), 500),  # the nearest exit out of P02
        (_trip(Case.U_TURN, entry="P03", exit="P03", exit_class=3), 1600),  # P02, class 3
    ],
)
def test_the_expected_fare_is_the_matrix_or_the_documented_exception(trip: Trip, fare: int) -> None:
    assert expected_fare(trip, TARIFF, NOW) == fare


Tamper = Callable[[list[Journey], list[Record]], None]


def _exit_of(case: Case, records: list[Record], journeys: list[Journey]) -> int:
    j = next(j for j in journeys if j.trip.case is case)
    return next(i for i, r in enumerate(records) if r.draft.vehicle_id == j.exit_vehicle)


def _redraft(case: Case, **changes: object) -> Tamper:
    def tamper(journeys: list[Journey], records: list[Record]) -> None:
        i = _exit_of(case, records, journeys)
        records[i] = replace(records[i], draft=replace(records[i].draft, **changes))  # type: ignore[arg-type]

    return tamper


def _drop(kind: str) -> Tamper:
    def tamper(journeys: list[Journey], records: list[Record]) -> None:
        records.remove(next(r for r in records if r.draft.kind == kind))

    return tamper


def _twice(journeys: list[Journey], records: list[Record]) -> None:
    i = _exit_of(Case.NONE, records, journeys)
    records.append(replace(records[i], record_id="again"))


def _still_driving(journeys: list[Journey], records: list[Record]) -> None:
    j = next(j for j in journeys if j.trip.case is Case.NONE)
    j.exit_vehicle, j.paid = None, False  # the sim thinks it is on the road; its exit is stored


def _ticket_of_another_pass(journeys: list[Journey], records: list[Record]) -> None:
    journeys[0].ticket_pass = "ee" * 8


def _no_ticket(journeys: list[Journey], records: list[Record]) -> None:
    journeys[0].ticket = None


def _at_the_entry(journeys: list[Journey], records: list[Record]) -> None:
    """A run stopped while a vehicle was at its entry lane: its entry record is written, it
    has not left with its ticket."""
    j = journeys[0]
    j.entry_done, j.ticket, j.ticket_pass, j.exit_vehicle, j.paid = False, None, None, None, False
    records[:] = [r for r in records if r.draft.vehicle_id != "x0"]


def _foreign_entry(journeys: list[Journey], records: list[Record]) -> None:
    records.append(
        replace(records[0], record_id="alien", draft=replace(records[0].draft, pass_id="ff" * 8))
    )


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_redraft(Case.NONE, amount_minor=1), "expected"),
        (_redraft(Case.CLASS_MISMATCH, amount_minor=500), "charged 500"),
        (_redraft(Case.U_TURN, flags=()), "not flagged u_turn"),
        (_redraft(Case.OVER_TIME, flags=("over_time", "plate_mismatch")), None),  # extra: fine
        (_redraft(Case.NONE, flags=("no_pass",)), "on a plain trip"),
        (_redraft(Case.TICKET_COPY, pass_id=None), "expected"),
        (_redraft(Case.LOST_TICKET, vehicle_id="nobody"), "of no vehicle that left"),
        (_drop("exit"), "approved exit records, expected 1"),
        (_drop("entry"), "entry record of pass"),
        (_twice, "2 approved exit records"),
        (_still_driving, "is closed, expected otherwise"),
        (_foreign_entry, "of no vehicle"),
        (_ticket_of_another_pass, "its ticket carries pass eeeeeeeeeeeeeeee, its entry pass"),
        (_no_ticket, "vehicle 0: no ticket at"),
        (_at_the_entry, None),
    ],
)
def test_what_does_not_reconcile_is_named(tamper: Tamper, problem: str | None) -> None:
    journeys, records = world()
    tamper(journeys, records)
    report = run(journeys, records)
    if problem is None:
        assert report["reconciled"], report["problems"]
        return
    assert not report["reconciled"]
    assert any(problem in p for p in report["problems"]), report["problems"]


def test_a_declined_payment_is_counted_not_charged() -> None:
    journeys, records = world()
    no = AuthInfo(AuthResult.DECLINED)
    declined = replace(records[1], record_id="declined", draft=replace(records[1].draft, auth=no))
    report = run(journeys, [*records, declined])
    assert report["reconciled"], report["problems"]
    assert report["declined_exit_records"] == 1
