"""Tariffs: what a vehicle (or passenger) class pays at this lane, in integer minor units.

A tariff file is TOML (people edit it): a currency, the classes, and exactly one of
`[toll]` (mode "flat": class -> amount, "matrix": entry plaza -> class -> amount, or
"entry_exit": versions of entry -> exit -> class -> amount, lane.auth.entry_exit) or
`[transit]` (mode "flat": class -> amount at the gate, "zero_at_entry": tap-ins record 0
and the back office prices the trip from the tap-in/tap-out pair, or "entry_exit" by entry
and exit station). See
deploy/tariff.example.toml. `parse_tariff` validates a loaded mapping (pure); amounts must be
non-negative integers and every declared class must have a fare in every table, so a lane
never discovers a gap with a vehicle at the barrier.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from lane.auth.entry_exit import (
    EntryExitMatrix,
    MatrixLookupError,
    amount,
    class_id,
    declared_class,
    parse_matrix,
)
from lane.auth.sourced import Reader, SourcedError, type_name

KINDS = {
    "toll": ("flat", "matrix", "entry_exit"),
    "transit": ("flat", "zero_at_entry", "entry_exit"),
}
_CURRENCY = re.compile(r"[A-Z]{3}")
T = TypeVar("T")


class TariffError(SourcedError):
    """A tariff file that cannot be used: `file: key: problem`, one line per problem found."""

    # Every problem when there were several (str() lists them, one per line).
    problems: tuple[SourcedError, ...] = ()


class FareError(LookupError):
    """No fare for this class (or entry plaza) in the tariff."""


@dataclass(frozen=True)
class Money:
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class Tariff:
    currency: str
    classes: Mapping[int, str]
    kind: str  # "toll" or "transit"
    mode: str  # "flat", "matrix" (toll), "zero_at_entry" (transit) or "entry_exit" (both)
    flat: Mapping[int, int] = field(default_factory=dict)
    matrix: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    minor_digits: int = 2
    entry_exit: EntryExitMatrix | None = None

    def fare(self, vehicle_class: int, entry_plaza: str | None = None) -> Money:
        """The fare for a class; a matrix tariff also needs the entry plaza (ignored otherwise)."""
        if vehicle_class not in self.classes:
            raise FareError(f"unknown vehicle class {vehicle_class!r}")
        if self.mode == "zero_at_entry":
            return Money(0, self.currency)
        if self.mode == "flat":
            return Money(self.flat[vehicle_class], self.currency)
        if self.entry_exit is not None:
            raise FareError("this tariff is priced by entry and exit: use trip_fare")
        if entry_plaza is None:
            raise FareError("this toll is priced by entry plaza and none was given")
        row = self.matrix.get(entry_plaza)
        if row is None:
            raise FareError(f"unknown entry plaza {entry_plaza!r}")
        return Money(row[vehicle_class], self.currency)

    def trip_fare(self, vehicle_class: int, entry: str, exit_plaza: str, at: float) -> Money:
        """The matrix cell of a trip, from the version in force at `at` (the exit time).
        A per-entry "matrix" tariff prices the trip by its entry alone."""
        self._known(vehicle_class)
        if self.entry_exit is None:
            return self.fare(vehicle_class, entry)
        try:
            cell = self.entry_exit.at(at).cell(entry, exit_plaza, vehicle_class)
        except MatrixLookupError as exc:
            raise FareError(str(exc)) from None
        return Money(cell, self.currency)

    def farthest_fare(self, vehicle_class: int, exit_plaza: str, at: float) -> Money:
        """The highest fare of any entry into `exit_plaza`: what a trip without a pass pays."""
        self._known(vehicle_class)
        if self.entry_exit is None:
            amounts = [row[vehicle_class] for row in self.matrix.values()]
        else:
            amounts = self.entry_exit.at(at).from_entries(exit_plaza, vehicle_class)
        if not amounts:
            raise FareError(f"no entry leads to {exit_plaza!r} for class {vehicle_class}")
        return Money(max(amounts), self.currency)

    def nearest_fare(self, vehicle_class: int, entry: str, at: float) -> Money:
        """The lowest fare out of `entry`: what a U-turn at the entry plaza pays."""
        self._known(vehicle_class)
        if self.entry_exit is None:
            return self.fare(vehicle_class, entry)
        amounts = self.entry_exit.at(at).to_exits(entry, vehicle_class)
        if not amounts:
            raise FareError(f"no exit is priced from {entry!r} for class {vehicle_class}")
        return Money(min(amounts), self.currency)

    def _known(self, vehicle_class: int) -> None:
        if vehicle_class not in self.classes:
            raise FareError(f"unknown vehicle class {vehicle_class!r}")
        if self.mode not in {"matrix", "entry_exit"}:
            raise FareError(f"a {self.mode} tariff does not price trips by entry")

    def class_name(self, vehicle_class: int) -> str:
        try:
            return self.classes[vehicle_class]
        except KeyError:
            raise FareError(f"unknown vehicle class {vehicle_class!r}") from None

    def format(self, money: Money) -> str:
        """For displays: 'EUR 2.90' (minor units shifted by the tariff's minor_digits)."""
        if self.minor_digits == 0:
            return f"{money.currency} {money.amount_minor}"
        units, minor = divmod(money.amount_minor, 10**self.minor_digits)
        return f"{money.currency} {units}.{minor:0{self.minor_digits}d}"


def load_tariff(path: str | Path) -> Tariff:
    source = str(path)
    try:
        with Path(path).open("rb") as f:
            body = tomllib.load(f)
    except OSError as exc:
        raise TariffError(source, "", f"cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TariffError(source, "", f"not TOML: {exc}") from None
    return parse_tariff(body, source)


class _Problems:
    """Collects every problem of a tariff, so one run of check-config lists them all."""

    def __init__(self) -> None:
        self.found: list[SourcedError] = []

    def attempt(self, work: Callable[[], T]) -> T | None:
        try:
            return work()
        except TariffError as exc:
            self.found.extend(exc.problems or (exc,))
            return None

    def raise_any(self) -> None:
        if not self.found:
            return
        first = self.found[0]
        error = TariffError(first.source, first.key, first.problem)
        error.problems = tuple(self.found)
        error.args = ("\n".join(str(p) for p in self.found),)
        raise error


def parse_tariff(body: Mapping[str, Any], source_name: str) -> Tariff:
    """The tariff, or a TariffError listing every problem found (one per line)."""
    read = Reader(source_name, TariffError)
    problems = _Problems()
    _no_unknown_keys(read, problems, body, {"currency", "minor_digits", "classes", *KINDS}, "")
    currency = problems.attempt(lambda: _currency(read, body))
    minor_digits = problems.attempt(lambda: _minor_digits(read, body))
    classes = problems.attempt(lambda: _parse_classes(read, problems, body)) or {}
    kinds = [k for k in KINDS if k in body]
    if len(kinds) != 1:
        problems.found.append(read.fail("", "needs exactly one of [toll] or [transit]"))
        problems.raise_any()
    kind = kinds[0]
    section = problems.attempt(lambda: read.table(body, kind, kind)) or {}
    _no_unknown_keys(read, problems, section, {"mode", "fares", "version"}, kind)
    mode = problems.attempt(lambda: _mode(read, section, kind))
    where = f"{kind}.fares"
    flat: dict[int, int] = {}
    matrix: dict[str, Mapping[int, int]] = {}
    entry_exit: EntryExitMatrix | None = None
    if mode != "entry_exit" and "version" in section:
        problems.found.append(
            read.fail(f"{kind}.version", f"is only used in entry_exit mode, not {mode}")
        )
    if mode == "entry_exit":
        if "fares" in section:
            problems.found.append(
                read.fail(where, "entry_exit fares go in [[" + kind + ".version]] tables")
            )
        entry_exit = problems.attempt(lambda: _parse_versions(read, section, classes, kind))
    elif mode == "zero_at_entry" and "fares" in section:
        problems.found.append(read.fail(where, "is not used in zero_at_entry mode; remove it"))
    elif mode in ("flat", "matrix"):
        fares = problems.attempt(lambda: read.table(section, "fares", where)) or {}
        if mode == "flat" and "fares" in section:
            flat = _parse_row(read, problems, fares, classes, where)
        elif mode == "matrix":
            matrix = _parse_matrix(read, problems, fares, classes, where)
    problems.raise_any()
    assert currency is not None and minor_digits is not None and mode is not None
    return Tariff(currency, classes, kind, mode, flat, matrix, minor_digits, entry_exit)


def _parse_versions(
    read: Reader, section: Mapping[str, Any], classes: Mapping[int, str], kind: str
) -> EntryExitMatrix:
    items = read.items(section, "version", f"{kind}.version")
    return parse_matrix(read, items, classes, f"{kind}.version")


def _currency(read: Reader, body: Mapping[str, Any]) -> str:
    currency = read.text(body, "currency", "currency")
    if not _CURRENCY.fullmatch(currency):
        raise read.fail("currency", f"must be an ISO 4217 code like 'EUR', got {currency!r}")
    return currency


def _minor_digits(read: Reader, body: Mapping[str, Any]) -> int:
    if "minor_digits" not in body:
        return 2
    minor_digits = read.integer(body, "minor_digits", "minor_digits")
    if minor_digits > 4:
        raise read.fail("minor_digits", f"must be 0..4, got {minor_digits}")
    return minor_digits


def _mode(read: Reader, section: Mapping[str, Any], kind: str) -> str:
    mode = read.text(section, "mode", f"{kind}.mode")
    if mode not in KINDS[kind]:
        raise read.fail(f"{kind}.mode", f"must be one of {', '.join(KINDS[kind])}, got {mode!r}")
    return mode


def _parse_matrix(
    read: Reader,
    problems: _Problems,
    fares: Mapping[Any, Any],
    classes: Mapping[int, str],
    where: str,
) -> dict[str, Mapping[int, int]]:
    if not fares:
        problems.found.append(read.fail(where, "needs at least one entry plaza table"))
    matrix: dict[str, Mapping[int, int]] = {}
    for plaza, row in fares.items():
        if not isinstance(row, Mapping):
            problems.found.append(
                read.fail(f"{where}.{plaza}", f"must be a table of fares, got {type_name(row)}")
            )
            continue
        matrix[plaza] = _parse_row(read, problems, row, classes, f"{where}.{plaza}")
    return matrix


def _parse_classes(read: Reader, problems: _Problems, body: Mapping[str, Any]) -> dict[int, str]:
    table = read.table(body, "classes", "classes")
    if not table:
        raise read.fail("classes", "must declare at least one class")
    classes: dict[int, str] = {}
    for key, name in table.items():
        vehicle_class = problems.attempt(partial(class_id, read, key, f"classes.{key}"))
        if not isinstance(name, str) or not name:
            problems.found.append(
                read.fail(f"classes.{key}", f"must be the class name, got {type_name(name)}")
            )
        elif vehicle_class is not None:
            classes[vehicle_class] = name
    return classes


def _parse_row(
    read: Reader,
    problems: _Problems,
    row: Mapping[Any, Any],
    classes: Mapping[int, str],
    where: str,
) -> dict[int, int]:
    amounts: dict[int, int] = {}
    for key, value in row.items():
        found = problems.attempt(partial(_fare, read, key, value, classes, where))
        if found is not None:
            amounts[found[0]] = found[1]
    missing = sorted(set(classes) - set(amounts) - {_int_or_none(k) for k in row})
    if missing:
        names = ", ".join(f"{c} ({classes[c]})" for c in missing)
        problems.found.append(read.fail(where, f"has no fare for class {names}"))
    return amounts


def _fare(
    read: Reader, key: Any, value: Any, classes: Mapping[int, str], where: str
) -> tuple[int, int]:
    path = f"{where}.{key}"
    return declared_class(read, key, path, classes), amount(read, value, path)


def _int_or_none(key: Any) -> int | None:
    text = str(key)
    return int(text) if text.isascii() and text.isdigit() else None


def _no_unknown_keys(
    read: Reader, problems: _Problems, body: Mapping[str, Any], known: set[str], where: str
) -> None:
    for key in body:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            expected = ", ".join(sorted(known))
            problems.found.append(read.fail(path, f"unknown key (expected one of {expected})"))
