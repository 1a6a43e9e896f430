"""The entry-exit fare matrix of a closed road (or a metro line), versioned by validity start.

A tariff in mode "entry_exit" holds one or more versions, each valid from an instant (a TOML
offset date-time, an RFC 3339 string or unix seconds) until the next one starts, so a change
at midnight is exact: the version in force at the moment of the exit prices the trip. Each
version lists its entry and exit plazas (stations) and a fare for every class of every
(entry, exit) pair with entry != exit; exiting where one entered is a U-turn, priced by the
road rules (lane.auth.trip_rules) from the cells of this same matrix. Every missing cell of a
version is reported in one error, so one run of `lane check-config` lists them all.

Pure: parsing takes a loaded mapping; lookups take the instant as a parameter.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lane.auth.sourced import Reader, type_name

MAX_CLASS_ID = 999
MAX_LISTED_GAPS = 50  # beyond this the message says how many more: a whole row is missing


class MatrixLookupError(LookupError):
    """No cell for this class, entry and exit at that instant."""


@dataclass(frozen=True)
class MatrixVersion:
    valid_from: int  # unix seconds UTC, inclusive
    entries: tuple[str, ...]
    exits: tuple[str, ...]
    cells: Mapping[tuple[str, str, int], int]  # (entry, exit, class) -> amount_minor

    def cell(self, entry: str, exit_plaza: str, vehicle_class: int) -> int:
        amount = self.cells.get((entry, exit_plaza, vehicle_class))
        if amount is None:
            raise MatrixLookupError(
                f"no fare from {entry!r} to {exit_plaza!r} for class {vehicle_class}"
            )
        return amount

    def from_entries(self, exit_plaza: str, vehicle_class: int) -> list[int]:
        """Every fare into `exit_plaza` for the class (one per other entry)."""
        return [
            self.cells[(entry, exit_plaza, vehicle_class)]
            for entry in self.entries
            if (entry, exit_plaza, vehicle_class) in self.cells
        ]

    def to_exits(self, entry: str, vehicle_class: int) -> list[int]:
        """Every fare out of `entry` for the class (one per other exit)."""
        return [
            self.cells[(entry, exit_plaza, vehicle_class)]
            for exit_plaza in self.exits
            if (entry, exit_plaza, vehicle_class) in self.cells
        ]


@dataclass(frozen=True)
class EntryExitMatrix:
    versions: tuple[MatrixVersion, ...]  # by valid_from, strictly increasing

    def at(self, unix_s: float) -> MatrixVersion:
        starts = [v.valid_from for v in self.versions]
        i = bisect.bisect_right(starts, math.floor(unix_s)) - 1
        if i < 0:
            raise MatrixLookupError(f"no tariff version is valid at {unix_s:.0f}")
        return self.versions[i]


def parse_matrix(
    read: Reader, items: Sequence[Any], classes: Mapping[int, str], where: str
) -> EntryExitMatrix:
    if not items:
        raise read.fail(where, "needs at least one [[...version]] table")
    versions: list[MatrixVersion] = []
    for i, item in enumerate(items):
        path = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise read.fail(path, f"must be a table, got {type_name(item)}")
        version = _parse_version(read, item, classes, path)
        if versions and version.valid_from <= versions[-1].valid_from:
            raise read.fail(f"{path}.valid_from", "must be later than the version before it")
        versions.append(version)
    return EntryExitMatrix(tuple(versions))


def _parse_version(
    read: Reader, body: Mapping[str, Any], classes: Mapping[int, str], path: str
) -> MatrixVersion:
    for key in body:
        if key not in {"valid_from", "entries", "exits", "fares"}:
            raise read.fail(
                f"{path}.{key}", "unknown key (expected valid_from, entries, exits, fares)"
            )
    valid_from = _instant(read, body, f"{path}.valid_from")
    entries = _names(read, body, "entries", path)
    exits = _names(read, body, "exits", path)
    fares = read.table(body, "fares", f"{path}.fares")
    cells: dict[tuple[str, str, int], int] = {}
    for entry, row in fares.items():
        row_path = f"{path}.fares.{entry}"
        if entry not in entries:
            raise read.fail(row_path, f"{entry!r} is not in {path}.entries")
        if not isinstance(row, Mapping):
            raise read.fail(row_path, f"must be a table of exits, got {type_name(row)}")
        for exit_plaza, amounts in row.items():
            cell_path = f"{row_path}.{exit_plaza}"
            if exit_plaza not in exits:
                raise read.fail(cell_path, f"{exit_plaza!r} is not in {path}.exits")
            if exit_plaza == entry:
                raise read.fail(cell_path, "exit at the entry plaza is a U-turn (road rules)")
            if not isinstance(amounts, Mapping):
                raise read.fail(
                    cell_path, f"must be a table class -> amount, got {type_name(amounts)}"
                )
            for class_key, value in amounts.items():
                key_path = f"{cell_path}.{class_key}"
                vehicle_class = declared_class(read, class_key, key_path, classes)
                cells[(entry, exit_plaza, vehicle_class)] = amount(read, value, key_path)
    _no_gaps(read, entries, exits, classes, cells, f"{path}.fares")
    return MatrixVersion(valid_from, entries, exits, cells)


def _no_gaps(  # noqa: PLR0917 - one check over the whole version
    read: Reader,
    entries: Sequence[str],
    exits: Sequence[str],
    classes: Mapping[int, str],
    cells: Mapping[tuple[str, str, int], int],
    path: str,
) -> None:
    missing = [
        f"{entry}->{exit_plaza} class {c}"
        for entry in entries
        for exit_plaza in exits
        if entry != exit_plaza
        for c in sorted(classes)
        if (entry, exit_plaza, c) not in cells
    ]
    if not missing:
        return
    listed = ", ".join(missing[:MAX_LISTED_GAPS])
    more = len(missing) - MAX_LISTED_GAPS
    tail = f" and {more} more" if more > 0 else ""
    raise read.fail(path, f"{len(missing)} missing cells: {listed}{tail}")


def _instant(read: Reader, body: Mapping[str, Any], path: str) -> int:
    value = body.get("valid_from")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise read.fail(path, f"{value.isoformat()} has no UTC offset (add Z or +08:00)")
        return math.floor(value.timestamp())
    if value is None:
        raise read.fail(path, "is missing")
    return read.time(body, "valid_from", path)


def _names(read: Reader, body: Mapping[str, Any], name: str, path: str) -> tuple[str, ...]:
    items = read.items(body, name, f"{path}.{name}")
    if not items or not all(isinstance(x, str) and x for x in items):
        raise read.fail(f"{path}.{name}", "must be a non-empty list of plaza names")
    if len(set(items)) != len(items):
        raise read.fail(f"{path}.{name}", "names a plaza twice")
    return tuple(items)


def class_id(read: Reader, key: Any, path: str) -> int:
    """A class id key of a tariff table: an integer without leading zeros, <= MAX_CLASS_ID."""
    text = str(key)
    if not text.isascii() or not text.isdigit() or str(int(text)) != text:
        raise read.fail(path, f"class ids are integers without leading zeros, got {text!r}")
    value = int(text)
    if value > MAX_CLASS_ID:
        raise read.fail(path, f"class id must be <= {MAX_CLASS_ID}, got {value}")
    return value


def declared_class(read: Reader, key: Any, path: str, classes: Mapping[int, str]) -> int:
    value = class_id(read, key, path)
    if value not in classes:
        raise read.fail(path, f"class {value} is not declared in [classes]")
    return value


def amount(read: Reader, value: object, path: str) -> int:
    """A fare: a non-negative integer of minor units (a float is the commonest mistake)."""
    if isinstance(value, float):
        raise read.fail(
            path, f"must be an integer of minor units (e.g. 250 for 2.50), got the float {value}"
        )
    return read.check_integer(value, path)
