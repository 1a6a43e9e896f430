"""Which vehicles entered a closed road and have not exited: a query over ingested records.

An `entry` record (written by a toll-entry lane) opens a trip under its pass id; an `exit`
record carrying the same pass id closes it. A metro's `tap_in` opens a trip under its own
record id (as hex: the id a `transit-exit` gate puts in its `tap_out`'s `pass_id`, docs/
closed-road.md#metro), and the `tap_out` naming it closes it. A declined tap-in admitted
nobody and a declined exit let nobody out: neither counts. The back office answers from what it has
ingested, whichever store holds it (SQLite or PostgreSQL: `records_between` is shared SQL),
so a trip is "open" until the exit lane's record has arrived, which may lag while that lane
is offline. An exit whose pass has no ingested entry is reported apart (`unmatched_exits`):
its entry record has not arrived yet, or the pass was not issued by an entry lane of this road.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from lane.core.names import AuthResult
from lane.core.records import tap_in_trip_id
from lane.wire.codec import PayloadError
from uplink.records import Record

END_OF_TIME_US = 1 << 62
ENTRY_KINDS = frozenset({"entry", "tap_in"})
EXIT_KINDS = frozenset({"exit", "tap_out"})


class RecordSource(Protocol):
    def records_between(self, start_us: int, end_us: int) -> list[bytes]: ...


@dataclass(frozen=True)
class OpenTrip:
    pass_id: str
    record_id: str  # the entry record
    lane: str  # the entry lane
    entry_plaza: str | None
    ts_us: int  # when the vehicle entered
    vehicle_class: int
    plate: str | None


@dataclass(frozen=True)
class TripLedger:
    open_trips: tuple[OpenTrip, ...]  # entered, not (yet) exited; oldest first
    closed: int  # entries with an exit
    unmatched_exits: tuple[str, ...]  # record ids of exits whose entry is not held
    unreadable: int  # stored records that do not decode (counted, never fatal)


def trip_ledger(blobs: Iterable[bytes]) -> TripLedger:
    """Pure: the trips of a set of encoded records."""
    entries: dict[str, OpenTrip] = {}
    exits: dict[str, list[str]] = {}
    unreadable = 0
    for blob in blobs:
        try:
            record = Record.decode(blob)
        except PayloadError:
            unreadable += 1
            continue
        d = record.draft
        trip = _trip_id(record)
        if trip is None or d.auth.result == AuthResult.DECLINED:
            continue
        if d.kind in ENTRY_KINDS:
            plaza = d.entry_plaza or record.lane.split("/")[0]
            entries.setdefault(
                trip,
                OpenTrip(
                    trip, record.record_id, record.lane, plaza, record.ts_us, d.vehicle_class,
                    d.plate,
                ),
            )  # fmt: skip
        elif d.kind in EXIT_KINDS:
            exits.setdefault(trip, []).append(record.record_id)
    still_open = sorted(
        (t for p, t in entries.items() if p not in exits), key=lambda t: (t.ts_us, t.pass_id)
    )
    unmatched = tuple(sorted(r for p, ids in exits.items() if p not in entries for r in ids))
    closed = sum(1 for p in entries if p in exits)
    return TripLedger(tuple(still_open), closed, unmatched, unreadable)


def _trip_id(record: Record) -> str | None:
    d = record.draft
    if d.pass_id is not None or d.kind != "tap_in":
        return d.pass_id
    try:
        return tap_in_trip_id(record.record_id, d).hex()
    except ValueError:
        return None  # no exit gate can name it


def open_trips(store: RecordSource, entered_before_us: int = END_OF_TIME_US) -> TripLedger:
    """The ledger over every ingested record; `entered_before_us` drops trips that entered
    later (e.g. now minus the road's time limit: the vehicles overdue on the road)."""
    ledger = trip_ledger(store.records_between(0, END_OF_TIME_US))
    overdue = tuple(t for t in ledger.open_trips if t.ts_us < entered_before_us)
    return TripLedger(overdue, ledger.closed, ledger.unmatched_exits, ledger.unreadable)
