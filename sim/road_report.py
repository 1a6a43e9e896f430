"""The road's part of the report: the back office's ingested records reconciled with what the
simulated vehicles did. Pure: the records come in as encoded blobs, the journeys as facts.

- Every entry record belongs to a ticket a vehicle took, and every ticket has its entry record.
- Every entry is closed by an exit (`uplink.trips.trip_ledger`, the back office's own query)
  or still open, and which one is what the vehicle did: a vehicle that showed its own ticket
  (or whose plate found it) closed its trip; a lost ticket, the ticket a copier hid, and a
  vehicle still on the road leave it open. No exit is without its entry.
- Every approved exit record belongs to a vehicle that left, one each, carries the pass it
  should (its own, the copied one, none when lost), the flag of its exception, and the fare of
  the matrix for its trip, or the documented exception amount (docs/closed-road.md): the
  farthest entry's fare for a lost or used ticket, a plate mismatch or over the time limit, the
  nearest fare from the plaza for a U-turn, the higher class's trip fare for a class mismatch.

`reconcile` returns the figures, the counts per exception (injected, flagged, fare right) and
`problems`; `reconciled` is true when there is none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lane.auth.fares import Tariff
from lane.wire.codec import PayloadError
from sim.road_model import Case, RoadPlan, Trip
from uplink.records import Record
from uplink.trips import trip_ledger

MAX_PROBLEMS = 50
# The record flag each exception must raise (lane.auth.trip_rules.TripFlag values).
FLAG: dict[Case, str] = {
    Case.LOST_TICKET: "no_pass",
    Case.TICKET_COPY: "pass_used",
    Case.U_TURN: "u_turn",
    Case.OVER_TIME: "over_time",
    Case.CLASS_MISMATCH: "class_mismatch",
    Case.PLATE_MISMATCH: "plate_mismatch",
}
# Cases whose own entry stays open: the vehicle never showed its own ticket.
LEAVES_OPEN = frozenset({Case.LOST_TICKET, Case.TICKET_COPY})


@dataclass
class Journey:
    """What one vehicle did, as the simulator saw it (filled in as it travels)."""

    trip: Trip
    ticket: str | None = None  # the QR text printed at the entry
    pass_id: str | None = None  # hex: the pass the entry lane issued (its pass_issued note)
    ticket_pass: str | None = None  # hex: the pass read back from the printed ticket
    entry_done: bool = False  # the vehicle has left the entry lane (with a ticket or not)
    entry_vehicle: str | None = None  # the entry lane's vehicle id
    exit_vehicle: str | None = None  # the exit lane's vehicle id (None: not at an exit yet)
    exit_lane: str | None = None
    paid: bool = False


def expected_fare(trip: Trip, tariff: Tariff, at: float) -> int:
    """The amount the exit must charge for `trip` (minor units), exiting at `at`."""
    if trip.case in (Case.LOST_TICKET, Case.OVER_TIME, Case.PLATE_MISMATCH, Case.TICKET_COPY):
        return tariff.farthest_fare(trip.exit_class, trip.exit, at).amount_minor
    if trip.case is Case.U_TURN:
        return tariff.nearest_fare(trip.exit_class, trip.entry, at).amount_minor
    classes = {trip.vehicle_class, trip.exit_class}  # two when the classes differ: the higher
    return max(tariff.trip_fare(c, trip.entry, trip.exit, at).amount_minor for c in classes)


def _decode(blobs: Iterable[bytes]) -> tuple[list[Record], int]:
    records, unreadable = [], 0
    for blob in blobs:
        try:
            records.append(Record.decode(blob))
        except PayloadError:
            unreadable += 1
    return records, unreadable


def reconcile(
    journeys: list[Journey], blobs: list[bytes], tariff: Tariff, plan: RoadPlan
) -> dict[str, Any]:
    problems: list[str] = []
    records, unreadable = _decode(blobs)
    entries = [r for r in records if r.draft.kind == "entry"]
    exits = [r for r in records if r.draft.kind == "exit"]
    approved = [r for r in exits if r.draft.auth.result == "approved"]
    ledger = trip_ledger(blobs)
    by_index = {j.trip.index: j for j in journeys}
    issued = {j.pass_id: j for j in journeys if j.pass_id is not None}

    for j in journeys:
        # A vehicle still at its entry lane (a run stopped mid-way) has nothing to check yet.
        if j.entry_done and (j.pass_id is None or j.ticket is None):
            problems.append(f"vehicle {j.trip.index}: no ticket at {j.trip.entry}")
        elif j.entry_done and j.ticket_pass != j.pass_id:
            problems.append(
                f"vehicle {j.trip.index}: its ticket carries pass {j.ticket_pass}, "
                f"its entry pass {j.pass_id}"
            )
    entered = {r.draft.pass_id for r in entries}
    for r in entries:
        if r.draft.pass_id not in issued:
            problems.append(f"entry record {r.record_id}: pass {r.draft.pass_id} of no vehicle")
    for pass_id, j in issued.items():
        if pass_id not in entered:
            problems.append(f"vehicle {j.trip.index}: entry record of pass {pass_id} missing")

    still_open = {t.pass_id for t in ledger.open_trips}
    expect_open = {
        p for p, j in issued.items() if j.exit_vehicle is None or j.trip.case in LEAVES_OPEN
    }
    for pass_id in sorted(expect_open ^ still_open):
        holder = issued.get(pass_id)
        what = "open" if pass_id in still_open else "closed"
        who = f"vehicle {holder.trip.index} ({holder.trip.case})" if holder else "no vehicle's"
        problems.append(f"trip {pass_id} of {who} is {what}, expected otherwise")
    problems += [f"exit record {rid}: no entry for its pass" for rid in ledger.unmatched_exits]

    injected = Counter(j.trip.case for j in journeys)
    flagged: Counter[Case] = Counter()
    right: Counter[Case] = Counter()
    basis: Counter[str] = Counter()
    by_exit = {(j.exit_lane, j.exit_vehicle): j for j in journeys if j.exit_vehicle}
    exits_of: Counter[int] = Counter()
    for r in approved:
        leaver = by_exit.get((r.lane, r.draft.vehicle_id))
        if leaver is None:
            problems.append(f"exit record {r.record_id}: of no vehicle that left")
            continue
        exits_of[leaver.trip.index] += 1
        trip, flags = leaver.trip, set(r.draft.flags)
        case_problems = _check_exit(r, leaver, by_index, tariff, flags)
        problems += case_problems
        if trip.case is not Case.NONE and FLAG[trip.case] in flags:
            flagged[trip.case] += 1
        if not case_problems:
            right[trip.case] += 1
            basis["matrix" if trip.case in (Case.NONE, Case.CLASS_MISMATCH) else "exception"] += 1
    for j in journeys:
        want = int(j.paid)
        if exits_of[j.trip.index] != want:
            problems.append(
                f"vehicle {j.trip.index}: {exits_of[j.trip.index]} approved exit records, "
                f"expected {want}"
            )
    return {
        "plazas": list(plan.road.plazas),
        "km": list(plan.road.km),
        "time_limit_s": plan.limit_s,
        "vehicles": len(journeys),
        "exited": sum(j.exit_vehicle is not None for j in journeys),
        "entry_records": len(entries),
        "exit_records": len(exits),
        "declined_exit_records": len(exits) - len(approved),
        "unreadable_records": unreadable,
        "trips": {
            "closed": ledger.closed,
            "open": len(ledger.open_trips),
            "open_expected": len(expect_open),
            "unmatched_exits": len(ledger.unmatched_exits),
        },
        "fares": {"checked": len(approved), **dict(sorted(basis.items()))},
        "revenue_minor": sum(r.draft.amount_minor for r in approved),
        "exceptions": {
            str(case): {
                "injected": injected[case],
                "flagged": flagged[case] if case is not Case.NONE else None,
                "fare_right": right[case],
            }
            for case in Case
        },
        "reconciled": not problems,
        "problems": problems[:MAX_PROBLEMS],
        "problem_count": len(problems),
    }


def _check_exit(
    record: Record,
    journey: Journey,
    by_index: Mapping[int, Journey],
    tariff: Tariff,
    flags: set[str],
) -> list[str]:
    """What is wrong with one approved exit record of `journey`."""
    trip, d = journey.trip, record.draft
    where = f"vehicle {trip.index} ({trip.case}) exit record {record.record_id}"
    out = []
    want = expected_fare(trip, tariff, record.ts_us / 1e6)
    if d.amount_minor != want:
        out.append(f"{where}: charged {d.amount_minor}, expected {want}")
    if trip.case is Case.NONE:
        wrong = flags & set(FLAG.values())
        if wrong:
            out.append(f"{where}: flagged {sorted(wrong)} on a plain trip")
    elif FLAG[trip.case] not in flags:
        out.append(f"{where}: not flagged {FLAG[trip.case]} (flags {sorted(flags)})")
    if trip.case is Case.LOST_TICKET:
        pass_id = None
    elif trip.copy_of is not None:
        pass_id = by_index[trip.copy_of].pass_id
    else:
        pass_id = journey.pass_id
    if d.pass_id != pass_id:
        out.append(f"{where}: pass {d.pass_id}, expected {pass_id}")
    return out
