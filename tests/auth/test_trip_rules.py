"""The fare and exception rules of a closed road and a metro: tables and properties."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lane.auth.fares import FareError, Money, load_tariff
from lane.auth.passes import EntryPass, PassReason, PassRefused, pass_key
from lane.auth.replay import ReplayStore
from lane.auth.trip_rules import (
    MAX_LINE,
    Basis,
    Evidence,
    ExitContext,
    Outcome,
    OverTimeCharge,
    RoadRules,
    TripFlag,
    TripKind,
    decide_fare,
    normalise_plate,
    tap_in_entry,
)
from uplink.records import AuthInfo, Record, RecordDraft

TARIFF = load_tariff(Path(__file__).resolve().parents[2] / "deploy" / "tariff.road.example.toml")
NOW = int(datetime(2026, 12, 1, 4, 0, tzinfo=UTC).timestamp())
HOUR = 3600
RULES = RoadRules(u_turn_window_s=1800, max_trip_s=24 * HOUR)
METRO = RoadRules(TripKind.METRO, u_turn_window_s=1200, max_trip_s=4 * HOUR)
PASS = EntryPass("P01", "l02", NOW - HOUR, 1, b"\x07" * 12, "ZJ-A12345")
AT_P03 = ExitContext("P03", "x01", 1, "ZJA12345", NOW)
ATTN = TripFlag.ATTENDANT

# (name, evidence, used, exit, rules, outcome, amount, flags, display)
Lines = tuple[str, ...]
Case = tuple[str, Evidence, bool, ExitContext, RoadRules, Outcome, int, set[TripFlag], Lines]
CASES: list[Case] = [
    ("normal trip", PASS, False, AT_P03, RULES, Outcome.CHARGED, 4000, set(),
     ("P01 to P03", "Fare CNY 40.00")),
    ("plate read at exit only", dataclasses.replace(PASS, plate=None), False, AT_P03, RULES,
     Outcome.CHARGED, 4000, set(), ("P01 to P03", "Fare CNY 40.00")),
    ("no pass / lost pass", None, False, AT_P03, RULES, Outcome.NO_PASS, 4000,
     {TripFlag.NO_PASS, ATTN}, ("No entry pass", "Maximum fare CNY 40.00", "Attendant coming")),
    ("no pass at the middle plaza", None, False, dataclasses.replace(AT_P03, plaza="P02"),
     RULES, Outcome.NO_PASS, 2500, {TripFlag.NO_PASS, ATTN},
     ("No entry pass", "Maximum fare CNY 25.00", "Attendant coming")),
    ("pass already used", PASS, True, AT_P03, RULES, Outcome.PASS_USED, 4000,
     {TripFlag.PASS_USED, ATTN},
     ("Entry pass already used", "Maximum fare CNY 40.00", "Attendant coming")),
    ("unknown plaza key", PassRefused(PassReason.UNKNOWN_KEY, "no key"), False, AT_P03, RULES,
     Outcome.UNKNOWN_PLAZA_KEY, 4000, {TripFlag.UNKNOWN_PLAZA_KEY, ATTN},
     ("Pass from an unknown plaza key", "Maximum fare CNY 40.00", "Attendant coming")),
    ("retired plaza key", PassRefused(PassReason.RETIRED_KEY, "old"), False, AT_P03, RULES,
     Outcome.UNKNOWN_PLAZA_KEY, 4000, {TripFlag.RETIRED_PLAZA_KEY, ATTN},
     ("Pass from an unknown plaza key", "Maximum fare CNY 40.00", "Attendant coming")),
    ("forged pass", PassRefused(PassReason.BAD_SIGNATURE, "sig"), False, AT_P03, RULES,
     Outcome.PASS_REFUSED, 4000, {TripFlag.PASS_REFUSED, ATTN},
     ("Entry pass not valid: bad_signature", "Maximum fare CNY 40.00", "Attendant coming")),
    ("plate mismatch", PASS, False, dataclasses.replace(AT_P03, plate="ZJB99999"), RULES,
     Outcome.PLATE_MISMATCH, 4000, {TripFlag.PLATE_MISMATCH, ATTN},
     ("Plate differs from the pass", "Maximum fare CNY 40.00", "Attendant coming")),
    ("u-turn within the window", dataclasses.replace(PASS, entered_at=NOW - 1800), False,
     dataclasses.replace(AT_P03, plaza="P01"), RULES, Outcome.U_TURN, 1500, {TripFlag.U_TURN},
     ("U-turn at P01", "Fare CNY 15.00")),
    ("u-turn after the window", dataclasses.replace(PASS, entered_at=NOW - 1801), False,
     dataclasses.replace(AT_P03, plaza="P01"), RULES, Outcome.LATE_U_TURN, 4000,
     {TripFlag.LATE_U_TURN}, ("Back at the entry plaza", "Maximum fare CNY 40.00")),
    ("over the time limit", dataclasses.replace(PASS, entered_at=NOW - 24 * HOUR - 1), False,
     dataclasses.replace(AT_P03, plaza="P02"), RULES, Outcome.OVER_TIME, 2500,
     {TripFlag.OVER_TIME}, ("Over the 24 h limit", "Maximum fare CNY 25.00")),
    ("over the time limit, trip rule", dataclasses.replace(PASS, entered_at=NOW - 25 * HOUR),
     False, dataclasses.replace(AT_P03, plaza="P02"),
     dataclasses.replace(RULES, over_time=OverTimeCharge.TRIP), Outcome.OVER_TIME, 1500,
     {TripFlag.OVER_TIME}, ("Over the 24 h limit", "Fare CNY 15.00")),
    ("at the time limit exactly", dataclasses.replace(PASS, entered_at=NOW - 24 * HOUR), False,
     dataclasses.replace(AT_P03, plaza="P02"), RULES, Outcome.CHARGED, 1500, set(),
     ("P01 to P02", "Fare CNY 15.00")),
    ("class higher at exit", PASS, False, dataclasses.replace(AT_P03, vehicle_class=3), RULES,
     Outcome.CHARGED, 8000, {TripFlag.CLASS_MISMATCH},
     ("P01 to P03", "Fare CNY 80.00", "Class 3 charged (entry 1)")),
    ("class lower at exit", dataclasses.replace(PASS, vehicle_class=2), False, AT_P03, RULES,
     Outcome.CHARGED, 6000, {TripFlag.CLASS_MISMATCH},
     ("P01 to P03", "Fare CNY 60.00", "Class 2 charged (entry 2)")),
    ("class mismatch and over time", dataclasses.replace(PASS, vehicle_class=3,
     entered_at=NOW - 30 * HOUR), False, dataclasses.replace(AT_P03, plaza="P02"), RULES,
     Outcome.OVER_TIME, 5000, {TripFlag.OVER_TIME, TripFlag.CLASS_MISMATCH},
     ("Over the 24 h limit", "Maximum fare CNY 50.00", "Class 3 charged (entry 3)")),
    ("pass from a plaza the tariff does not price", dataclasses.replace(PASS, plaza="P77"),
     False, AT_P03, RULES, Outcome.ENTRY_UNPRICED, 4000, {TripFlag.ENTRY_UNPRICED, ATTN},
     ("No fare from P77", "Maximum fare CNY 40.00", "Attendant coming")),
    ("metro trip", dataclasses.replace(PASS, plate=None), False, AT_P03, METRO,
     Outcome.CHARGED, 4000, set(), ("P01 to P03", "Fare CNY 40.00")),
    ("metro: no tap-in", None, False, AT_P03, METRO, Outcome.NO_PASS, 4000, {TripFlag.NO_PASS},
     ("No tap-in", "Maximum fare CNY 40.00")),
    ("metro: same station", dataclasses.replace(PASS, entered_at=NOW - 600), False,
     dataclasses.replace(AT_P03, plaza="P01"), METRO, Outcome.U_TURN, 1500, {TripFlag.U_TURN},
     ("Same station exit", "Fare CNY 15.00")),
    ("metro: over time", dataclasses.replace(PASS, entered_at=NOW - 5 * HOUR), False,
     dataclasses.replace(AT_P03, plaza="P02"), METRO, Outcome.OVER_TIME, 2500,
     {TripFlag.OVER_TIME}, ("Over the 4 h limit", "Maximum fare CNY 25.00")),
    ("metro: tap-in already closed", PASS, True, AT_P03, METRO, Outcome.PASS_USED, 4000,
     {TripFlag.PASS_USED}, ("Tap-in already used", "Maximum fare CNY 40.00")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "evidence", "used", "at_exit", "rules", "outcome", "amount", "flags", "display"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_rules(  # noqa: PLR0917 - one row of the table
    name: str,
    evidence: Evidence,
    used: bool,
    at_exit: ExitContext,
    rules: RoadRules,
    outcome: Outcome,
    amount: int,
    flags: set[TripFlag],
    display: Lines,
) -> None:
    decision = decide_fare(evidence, used, at_exit, TARIFF, rules)
    assert decision.outcome is outcome, name
    assert decision.amount == Money(amount, "CNY"), name
    assert set(decision.flags) == flags, name
    assert len(decision.flags) == len(flags)
    assert decision.display == display
    assert decision.attendant == (ATTN in flags)
    assert all(len(line) <= MAX_LINE for line in decision.display)


def test_the_decision_names_the_trip() -> None:
    decision = decide_fare(PASS, False, AT_P03, TARIFF, RULES)
    assert (decision.entry_plaza, decision.pass_id) == ("P01", PASS.pass_hex)
    assert (decision.charged_class, decision.basis) == (1, Basis.TRIP)
    lost = decide_fare(None, False, AT_P03, TARIFF, RULES)
    assert (lost.entry_plaza, lost.pass_id, lost.basis) == (None, None, Basis.FARTHEST)


def test_an_exit_the_tariff_cannot_price_is_a_configuration_fault() -> None:
    with pytest.raises(FareError, match="unknown vehicle class 9"):
        decide_fare(PASS, False, dataclasses.replace(AT_P03, vehicle_class=9), TARIFF, RULES)
    with pytest.raises(FareError, match="no entry leads to 'P99'"):
        decide_fare(None, False, dataclasses.replace(AT_P03, plaza="P99"), TARIFF, RULES)


def test_plates_compare_as_people_read_them() -> None:
    assert normalise_plate("zj-a 123.45") == "ZJA12345"
    same = decide_fare(PASS, False, dataclasses.replace(AT_P03, plate="zj a12345"), TARIFF, RULES)
    assert same.outcome is Outcome.CHARGED


PLAZAS = ("P01", "P02", "P03")
passes = st.builds(
    EntryPass,
    plaza=st.sampled_from((*PLAZAS, "P77")),
    lane=st.just("l01"),
    entered_at=st.integers(NOW - 40 * HOUR, NOW + 60),
    vehicle_class=st.integers(1, 4),  # 4 is not in the tariff: a pass from another era
    pass_id=st.binary(min_size=8, max_size=8),
    plate=st.none() | st.sampled_from(["ZJA12345", "ZJB99999"]),
)
evidence = (
    st.none() | passes | st.builds(PassRefused, st.sampled_from(list(PassReason)), st.just("x"))
)
exits = st.builds(
    ExitContext,
    plaza=st.sampled_from(PLAZAS),
    lane=st.just("x01"),
    vehicle_class=st.integers(1, 3),
    plate=st.none() | st.sampled_from(["ZJA12345", "zj-b 99999"]),
    now=st.integers(NOW - 60, NOW + 60),
)
rule_sets = st.builds(
    RoadRules,
    kind=st.sampled_from(list(TripKind)),
    u_turn_window_s=st.integers(0, 4 * HOUR),
    max_trip_s=st.integers(HOUR, 30 * HOUR),
    over_time=st.sampled_from(list(OverTimeCharge)),
)


@settings(max_examples=400, deadline=None)
@given(evidence, st.booleans(), exits, rule_sets)
def test_a_fare_is_always_a_matrix_cell_or_the_documented_exception(
    ev: Evidence, used: bool, at_exit: ExitContext, rules: RoadRules
) -> None:
    decision = decide_fare(ev, used, at_exit, TARIFF, rules)
    version = TARIFF.entry_exit.at(at_exit.now)  # type: ignore[union-attr]
    classes = {at_exit.vehicle_class} | ({ev.vehicle_class} if isinstance(ev, EntryPass) else set())
    cells = {a for (_, x, c), a in version.cells.items() if c in classes and x == at_exit.plaza}
    if decision.basis is Basis.NEAREST:
        assert isinstance(ev, EntryPass)
        cells = {a for (e, _, c), a in version.cells.items() if c in classes and e == ev.plaza}
    assert decision.amount.amount_minor in cells
    assert decision.amount.amount_minor >= 0
    farthest = TARIFF.farthest_fare(decision.charged_class, at_exit.plaza, at_exit.now)
    assert decision.amount.amount_minor <= farthest.amount_minor
    if decision.basis is Basis.FARTHEST:
        assert decision.amount == farthest
    assert decision.charged_class in classes
    # Only a plain trip carries no flag; every decision has a headline and a fare line.
    assert bool(decision.flags) == (decision.outcome is not Outcome.CHARGED) or (
        TripFlag.CLASS_MISMATCH in decision.flags
    )
    assert len(decision.display) >= 2
    assert decision.attendant == (TripFlag.ATTENDANT in decision.flags)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(PLAZAS)), min_size=1, max_size=12))
def test_a_pass_never_exits_twice(
    tmp_path_factory: pytest.TempPathFactory, visits: list[tuple[int, str]]
) -> None:
    """Exits with the same passes, through the real used-pass store: each pass is charged
    its trip once; every later showing is PASS_USED (farthest fare, attendant)."""
    pool = [dataclasses.replace(PASS, pass_id=bytes([i]) * 8, plate=None) for i in range(4)]
    with ReplayStore(tmp_path_factory.mktemp("used") / "used.sqlite") as store:
        exited: set[int] = set()
        for which, plaza in visits:
            entry = pool[which]
            at_exit = dataclasses.replace(AT_P03, plaza=plaza, plate=None)
            first = store.check_and_mark(
                pass_key(entry.pass_hex), entry.entered_at + 30 * 86_400, "p/x01", NOW
            )
            decision = decide_fare(entry, not first, at_exit, TARIFF, RULES)
            if which in exited:
                assert decision.outcome is Outcome.PASS_USED
                assert decision.basis is Basis.FARTHEST and decision.attendant
            else:
                assert decision.outcome is not Outcome.PASS_USED
            exited.add(which)
        assert store.count() == len(exited)


def test_a_metro_exit_prices_the_tap_in_record() -> None:
    tap_in = Record(
        "0190f0a2-7b1c-7cde-8f00-0123456789ab", "P01/g07", 3, (NOW - HOUR) * 1_000_000,
        RecordDraft("tap_in", "p-1", 1, 0, "CNY", "token", "acct", AuthInfo("approved")),
    )  # fmt: skip
    entry = tap_in_entry(tap_in)
    assert (entry.plaza, entry.lane, entry.entered_at) == ("P01", "g07", NOW - HOUR)
    assert entry.pass_id == bytes.fromhex("0190f0a27b1c7cde8f000123456789ab")
    decision = decide_fare(entry, False, AT_P03, TARIFF, METRO)
    assert (decision.outcome, decision.amount.amount_minor) == (Outcome.CHARGED, 4000)
    with_id = dataclasses.replace(tap_in, draft=dataclasses.replace(tap_in.draft, pass_id="ab" * 8))
    assert tap_in_entry(with_id).pass_id == b"\xab" * 8
    toll = dataclasses.replace(tap_in, draft=dataclasses.replace(tap_in.draft, kind="toll"))
    with pytest.raises(ValueError, match="not a tap_in"):
        tap_in_entry(toll)
    with pytest.raises(ValueError, match="no usable trip id"):
        tap_in_entry(dataclasses.replace(tap_in, record_id="r-1"))
