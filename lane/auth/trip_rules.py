"""The fare of a trip on a closed road (or a metro line), with the exceptions operators meet daily.

`decide_fare` is pure: the entry evidence (a verified pass, a refused one, or none), whether the
used-pass store had already seen the pass, the exit (plaza, lane, class, plate, now), the tariff
and the road rules go in; a `FareDecision` comes out with a typed outcome, the amount (always a
cell of the tariff's matrix: the trip's own, the farthest entry's or the nearest exit's), the
text for the lane display, whether an attendant must confirm, and the flags for the record.
The table of rules, texts and flags is in docs/closed-road.md.

Metro: the same function with `TripKind.METRO`; `tap_in_entry` turns the tap-in record into
an `EntryPass` (station, gate, time, class, tap-in id) and "already used" means the tap-in was
already closed by a tap-out.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Protocol

from lane.auth.fares import FareError, Money, Tariff
from lane.auth.passes import PASS_ID_LEN, EntryPass, PassReason, PassRefused
from lane.core.records import RecordDraft, tap_in_trip_id

MAX_LINE = 40  # characters a line of the lane's display shows


class StampedRecord(Protocol):
    """What a tap-in must carry: a stored record (uplink's `Record`) has all of it."""

    @property
    def record_id(self) -> str: ...
    @property
    def lane(self) -> str: ...
    @property
    def ts_us(self) -> int: ...
    @property
    def draft(self) -> RecordDraft: ...


class TripKind(enum.StrEnum):
    ROAD = "road"
    METRO = "metro"


class Outcome(enum.StrEnum):
    CHARGED = "charged"  # the trip's matrix cell
    NO_PASS = "no_pass"  # no pass / lost pass; metro: no tap-in
    PASS_REFUSED = "pass_refused"  # malformed, forged, expired, dated in the future
    UNKNOWN_PLAZA_KEY = "unknown_plaza_key"  # signed by a key the lane does not hold (or retired)
    ENTRY_UNPRICED = "entry_unpriced"  # a genuine pass from a plaza the tariff does not price
    PASS_USED = "pass_used"  # a pass exits once
    PLATE_MISMATCH = "plate_mismatch"
    U_TURN = "u_turn"  # exit at the entry plaza within the window
    LATE_U_TURN = "late_u_turn"  # exit at the entry plaza after the window
    OVER_TIME = "over_time"


class TripFlag(enum.StrEnum):
    """Record flags (uplink RecordDraft.flags): every rule that applied, not only the first."""

    NO_PASS = "no_pass"
    PASS_REFUSED = "pass_refused"
    UNKNOWN_PLAZA_KEY = "unknown_plaza_key"
    RETIRED_PLAZA_KEY = "retired_plaza_key"
    ENTRY_UNPRICED = "entry_unpriced"
    PASS_USED = "pass_used"
    PLATE_MISMATCH = "plate_mismatch"
    U_TURN = "u_turn"
    LATE_U_TURN = "late_u_turn"
    OVER_TIME = "over_time"
    CLASS_MISMATCH = "class_mismatch"
    ATTENDANT = "attendant"  # the fare waits for an attendant's confirmation


class OverTimeCharge(enum.StrEnum):
    FARTHEST = "farthest"  # over the limit: the farthest entry's fare
    TRIP = "trip"  # over the limit: flag only, the trip's own fare


class Basis(enum.StrEnum):
    """Which cell of the matrix a decision charges."""

    TRIP = "trip"
    FARTHEST = "farthest"
    NEAREST = "nearest"


@dataclass(frozen=True)
class RoadRules:
    kind: TripKind = TripKind.ROAD
    u_turn_window_s: float = 1800.0
    max_trip_s: float = 86_400.0
    over_time: OverTimeCharge = OverTimeCharge.FARTHEST


@dataclass(frozen=True)
class ExitContext:
    plaza: str
    lane: str
    vehicle_class: int  # read at the exit
    plate: str | None  # read by ANPR at the exit, when there is a camera
    now: float  # unix seconds UTC


@dataclass(frozen=True)
class FareDecision:
    outcome: Outcome
    amount: Money
    charged_class: int
    basis: Basis
    entry_plaza: str | None  # None when the trip's entry is not known
    pass_id: str | None  # hex; None without a readable pass
    flags: tuple[TripFlag, ...]
    attendant: bool
    headline: str  # what happened, for people: the first display line
    entry_class: int | None  # the class on the pass
    display: tuple[str, ...] = ()  # the lane display's lines (`display_lines`)


Evidence = EntryPass | PassRefused | None

# Outcomes that charge the farthest entry's fare and call the attendant (on a road).
_SUSPECT = {
    Outcome.NO_PASS,
    Outcome.PASS_REFUSED,
    Outcome.UNKNOWN_PLAZA_KEY,
    Outcome.ENTRY_UNPRICED,
    Outcome.PASS_USED,
    Outcome.PLATE_MISMATCH,
}


def tap_in_entry(record: StampedRecord) -> EntryPass:
    """A metro tap-in record as the entry evidence of a `transit-exit` (station = the gate's
    plaza, unless the record names its `entry_plaza`). Its trip id is the record's `pass_id`
    when it has one, else its record id (a UUID); ValueError for a record that is not a
    tap-in or whose ids are not of that form."""
    d = record.draft
    if d.kind != "tap_in":
        raise ValueError(f"record {record.record_id} is a {d.kind!r}, not a tap_in")
    station, _, gate = record.lane.partition("/")
    trip_id = tap_in_trip_id(record.record_id, d)
    low, high = PASS_ID_LEN
    if not low <= len(trip_id) <= high:
        raise ValueError(f"record {record.record_id}: trip id of {len(trip_id)} bytes")
    entered_at = record.ts_us // 1_000_000
    return EntryPass(d.entry_plaza or station, gate or station, entered_at, d.vehicle_class,
                     trip_id, d.plate)  # fmt: skip


def normalise_plate(plate: str) -> str:
    """Plates compare without spaces, dashes, dots and case: 'zj-a 123' == 'ZJA123'."""
    return "".join(ch for ch in plate.upper() if ch.isalnum())


def decide_fare(
    evidence: Evidence, already_used: bool, at_exit: ExitContext, tariff: Tariff, rules: RoadRules
) -> FareDecision:
    """Raises FareError only when the exit itself cannot be priced (an unknown class at exit,
    an exit plaza the tariff does not reach): a configuration fault, not a vehicle's."""
    flags: list[TripFlag] = []
    entry = evidence if isinstance(evidence, EntryPass) else None
    outcome = _entry_outcome(evidence, already_used, at_exit, tariff, flags)
    classes = [at_exit.vehicle_class]
    if entry is not None and entry.vehicle_class != at_exit.vehicle_class:
        flags.append(TripFlag.CLASS_MISMATCH)
        classes.append(entry.vehicle_class)
    basis = Basis.FARTHEST
    if outcome is None and entry is not None:
        outcome, basis = _trip_outcome(entry, at_exit, rules, flags)
    assert outcome is not None  # _entry_outcome decides whenever there is no usable entry
    attendant = outcome in _SUSPECT and rules.kind is TripKind.ROAD
    if attendant:
        flags.append(TripFlag.ATTENDANT)
    # The higher of the two classes' fares; a class the tariff does not know (a pass from
    # another tariff's era) is flagged but cannot be charged.
    amount, charged = max(
        (_cell(tariff, basis, c, entry, at_exit), c)
        for c in classes
        if c == at_exit.vehicle_class or c in tariff.classes
    )
    money = Money(amount, tariff.currency)
    decision = FareDecision(
        outcome,
        money,
        charged,
        basis,
        entry.plaza if entry is not None and outcome is not Outcome.ENTRY_UNPRICED else None,
        entry.pass_hex if entry is not None else None,
        tuple(flags),
        attendant,
        _display(outcome, evidence, entry, at_exit, rules, basis),
        entry.vehicle_class if entry is not None else None,
    )
    return dataclasses.replace(decision, display=display_lines(decision, tariff.format(money)))


def _entry_outcome(
    evidence: Evidence,
    already_used: bool,
    at_exit: ExitContext,
    tariff: Tariff,
    flags: list[TripFlag],
) -> Outcome | None:
    """The outcome decided by the evidence alone; None when the trip rules decide."""
    if evidence is None:
        flags.append(TripFlag.NO_PASS)
        return Outcome.NO_PASS
    if isinstance(evidence, PassRefused):
        if evidence.reason is PassReason.UNKNOWN_KEY:
            flags.append(TripFlag.UNKNOWN_PLAZA_KEY)
            return Outcome.UNKNOWN_PLAZA_KEY
        if evidence.reason is PassReason.RETIRED_KEY:
            flags.append(TripFlag.RETIRED_PLAZA_KEY)
            return Outcome.UNKNOWN_PLAZA_KEY
        flags.append(TripFlag.PASS_REFUSED)
        return Outcome.PASS_REFUSED
    if already_used:
        flags.append(TripFlag.PASS_USED)
        return Outcome.PASS_USED
    if (
        evidence.plate is not None
        and at_exit.plate is not None
        and normalise_plate(evidence.plate) != normalise_plate(at_exit.plate)
    ):
        flags.append(TripFlag.PLATE_MISMATCH)
        return Outcome.PLATE_MISMATCH
    if evidence.plaza != at_exit.plaza and not _priced(tariff, evidence, at_exit):
        flags.append(TripFlag.ENTRY_UNPRICED)
        return Outcome.ENTRY_UNPRICED
    return None


def _priced(tariff: Tariff, entry: EntryPass, at_exit: ExitContext) -> bool:
    try:
        tariff.trip_fare(at_exit.vehicle_class, entry.plaza, at_exit.plaza, at_exit.now)
    except FareError:
        return False
    return True


def _trip_outcome(
    entry: EntryPass, at_exit: ExitContext, rules: RoadRules, flags: list[TripFlag]
) -> tuple[Outcome, Basis]:
    on_road = at_exit.now - entry.entered_at
    if entry.plaza == at_exit.plaza:
        if on_road <= rules.u_turn_window_s:
            flags.append(TripFlag.U_TURN)
            return Outcome.U_TURN, Basis.NEAREST
        flags.append(TripFlag.LATE_U_TURN)
        return Outcome.LATE_U_TURN, Basis.FARTHEST
    if on_road > rules.max_trip_s:
        flags.append(TripFlag.OVER_TIME)
        basis = Basis.FARTHEST if rules.over_time is OverTimeCharge.FARTHEST else Basis.TRIP
        return Outcome.OVER_TIME, basis
    return Outcome.CHARGED, Basis.TRIP


def _cell(
    tariff: Tariff, basis: Basis, vehicle_class: int, entry: EntryPass | None, at_exit: ExitContext
) -> int:
    if basis is Basis.TRIP and entry is not None:
        return tariff.trip_fare(vehicle_class, entry.plaza, at_exit.plaza, at_exit.now).amount_minor
    if basis is Basis.NEAREST and entry is not None:
        return tariff.nearest_fare(vehicle_class, entry.plaza, at_exit.now).amount_minor
    return tariff.farthest_fare(vehicle_class, at_exit.plaza, at_exit.now).amount_minor


def _display(  # noqa: PLR0917 - one text per outcome, said in one place
    outcome: Outcome,
    evidence: Evidence,
    entry: EntryPass | None,
    at_exit: ExitContext,
    rules: RoadRules,
    basis: Basis,
) -> str:
    """The first display line: what happened (the fare and the attendant follow it)."""
    metro = rules.kind is TripKind.METRO
    pass_name = "tap-in" if metro else "entry pass"
    place = "station" if metro else "plaza"
    if outcome is Outcome.PASS_REFUSED and isinstance(evidence, PassRefused):
        return f"Entry pass not valid: {evidence.reason.value}"
    if outcome is Outcome.ENTRY_UNPRICED and entry is not None:
        return f"No fare from {entry.plaza}"
    if outcome is Outcome.U_TURN:
        return f"Same {place} exit" if metro else f"U-turn at {at_exit.plaza}"
    if outcome is Outcome.OVER_TIME:
        return f"Over the {rules.max_trip_s / 3600:g} h limit"
    if entry is not None and outcome is Outcome.CHARGED:
        return f"{entry.plaza} to {at_exit.plaza}"
    texts = {
        Outcome.NO_PASS: f"No {pass_name}",
        Outcome.UNKNOWN_PLAZA_KEY: f"Pass from an unknown {place} key",
        Outcome.PASS_USED: f"{pass_name.capitalize()} already used",
        Outcome.PLATE_MISMATCH: "Plate differs from the pass",
        Outcome.LATE_U_TURN: f"Back at the entry {place}",
    }
    return texts.get(outcome, outcome.value)


def display_lines(decision: FareDecision, fare: str) -> tuple[str, ...]:
    """The lines for the lane display (each at most MAX_LINE characters)."""
    lines = [decision.headline]
    lines.append(f"Maximum fare {fare}" if decision.basis is Basis.FARTHEST else f"Fare {fare}")
    if TripFlag.CLASS_MISMATCH in decision.flags and decision.entry_class is not None:
        lines.append(f"Class {decision.charged_class} charged (entry {decision.entry_class})")
    if decision.attendant:
        lines.append("Attendant coming")
    return tuple(lines)
