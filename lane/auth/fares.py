"""Tariffs: what a vehicle (or passenger) class pays at this lane, in integer minor units.

A tariff file is TOML (people edit it): a currency, the classes, and exactly one of
`[toll]` (mode "flat": class -> amount, or "matrix": entry plaza -> class -> amount) or
`[transit]` (mode "flat": class -> amount at the gate, or "zero_at_entry": tap-ins record 0
and the back office prices the trip from the tap-in/tap-out pair). See
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

from lane.auth.sourced import Reader, SourcedError, type_name

KINDS = {"toll": ("flat", "matrix"), "transit": ("flat", "zero_at_entry")}
_CURRENCY = re.compile(r"[A-Z]{3}")
MAX_CLASS_ID = 999
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
    mode: str  # "flat", "matrix" (toll) or "zero_at_entry" (transit)
    flat: Mapping[int, int] = field(default_factory=dict)
    matrix: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    minor_digits: int = 2

    def fare(self, vehicle_class: int, entry_plaza: str | None = None) -> Money:
        """The fare for a class; a matrix tariff also needs the entry plaza (ignored otherwise)."""
        if vehicle_class not in self.classes:
            raise FareError(f"unknown vehicle class {vehicle_class!r}")
        if self.mode == "zero_at_entry":
            return Money(0, self.currency)
        if self.mode == "flat":
            return Money(self.flat[vehicle_class], self.currency)
        if entry_plaza is None:
            raise FareError("this toll is priced by entry plaza and none was given")
        row = self.matrix.get(entry_plaza)
        if row is None:
            raise FareError(f"unknown entry plaza {entry_plaza!r}")
        return Money(row[vehicle_class], self.currency)

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
    _no_unknown_keys(read, problems, section, {"mode", "fares"}, kind)
    mode = problems.attempt(lambda: _mode(read, section, kind))
    where = f"{kind}.fares"
    flat: dict[int, int] = {}
    matrix: dict[str, Mapping[int, int]] = {}
    if mode == "zero_at_entry" and "fares" in section:
        problems.found.append(read.fail(where, "is not used in zero_at_entry mode; remove it"))
    elif mode in ("flat", "matrix"):
        fares = problems.attempt(lambda: read.table(section, "fares", where)) or {}
        if mode == "flat" and "fares" in section:
            flat = _parse_row(read, problems, fares, classes, where)
        elif mode == "matrix":
            matrix = _parse_matrix(read, problems, fares, classes, where)
    problems.raise_any()
    assert currency is not None and minor_digits is not None and mode is not None
    return Tariff(currency, classes, kind, mode, flat, matrix, minor_digits)


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
        class_id = problems.attempt(partial(_class_id, read, key, f"classes.{key}"))
        if not isinstance(name, str) or not name:
            problems.found.append(
                read.fail(f"classes.{key}", f"must be the class name, got {type_name(name)}")
            )
        elif class_id is not None:
            classes[class_id] = name
    return classes


def _parse_row(
    read: Reader,
    problems: _Problems,
    row: Mapping[Any, Any],
    classes: Mapping[int, str],
    where: str,
) -> dict[int, int]:
    amounts: dict[int, int] = {}
    for key, amount in row.items():
        found = problems.attempt(partial(_fare, read, key, amount, classes, where))
        if found is not None:
            amounts[found[0]] = found[1]
    missing = sorted(set(classes) - set(amounts) - {_int_or_none(k) for k in row})
    if missing:
        names = ", ".join(f"{c} ({classes[c]})" for c in missing)
        problems.found.append(read.fail(where, f"has no fare for class {names}"))
    return amounts


def _fare(
    read: Reader, key: Any, amount: Any, classes: Mapping[int, str], where: str
) -> tuple[int, int]:
    path = f"{where}.{key}"
    class_id = _class_id(read, key, path)
    if class_id not in classes:
        raise read.fail(path, f"class {class_id} is not declared in [classes]")
    if isinstance(amount, float):
        raise read.fail(
            path,
            f"must be an integer of minor units (e.g. 250 for 2.50), got the float {amount}",
        )
    return class_id, read.check_integer(amount, path)


def _int_or_none(key: Any) -> int | None:
    text = str(key)
    return int(text) if text.isascii() and text.isdigit() else None


def _class_id(read: Reader, key: Any, path: str) -> int:
    text = str(key)
    if not text.isascii() or not text.isdigit() or str(int(text)) != text:
        raise read.fail(path, f"class ids are integers without leading zeros, got {text!r}")
    class_id = int(text)
    if class_id > MAX_CLASS_ID:
        raise read.fail(path, f"class id must be <= {MAX_CLASS_ID}, got {class_id}")
    return class_id


def _no_unknown_keys(
    read: Reader, problems: _Problems, body: Mapping[str, Any], known: set[str], where: str
) -> None:
    for key in body:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            expected = ", ".join(sorted(known))
            problems.found.append(read.fail(path, f"unknown key (expected one of {expected})"))
