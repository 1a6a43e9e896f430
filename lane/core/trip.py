"""A closed road's trip as the lane core holds it for the vehicle at the pay point (pure data).

An entry lane's vehicle holds a `Ticket` (the pass being issued and printed); an exit lane's
holds `AwaitingEntry` until the shell priced its trip, then `Priced`; a metro exit gate's
passenger holds `TapOut` (the code shown) until its trip is priced, then `Priced`. The rules
that fill these are in lane.core.road and lane.core.metro; the fare itself is decided by the
shell (lane.auth.trip_rules), which answers `PriceTrip` with `TripPriced`, as an authoriser
answers `Authorise` with `Decided`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lane.core.events import Scanned


@dataclass(frozen=True)
class Ticket:
    """Entry lane: the pass to ask for, asked for (`IssuePass`), then issued and printed (or
    not). The entry record is written once it is printed, or bound to a plate."""

    issue_id: str
    asked: bool = False
    wait_until: float | None = None  # not asked before this unless a plate is read first
    pass_id: str | None = None  # hex, once the shell signed the pass
    printed: bool = False
    printer_error: str | None = None  # the last print failed (paper_out, offline ...)


@dataclass(frozen=True)
class AwaitingEntry:
    """Exit lane: no trip priced yet. `asked` is the PriceTrip in flight, if any."""

    asked: str | None = None
    asks: int = 0  # PriceTrips sent for this vehicle (names the next one)
    plate_tried: bool = False  # the plate had no open entry: only a pass (or attendant) now
    lost: bool = False  # `asked` is the attendant's no_pass: its fare is confirmed already


@dataclass(frozen=True)
class Priced:
    """Exit lane: the trip's fare as the shell decided it (docs/closed-road.md)."""

    trip_id: str
    outcome: str
    amount_minor: int | None  # None: the exit cannot be priced (a configuration fault)
    currency: str
    entry_plaza: str | None
    pass_id: str | None
    pass_exp: float | None  # unix s until which the used-pass store must remember the pass
    flags: tuple[str, ...]
    attendant: bool  # the fare waits for the attendant's confirmation
    confirmed: bool
    display: tuple[str, ...]  # headline, fare, class line (lane.auth.trip_rules), <= 3
    # Metro, a wallet code without a tap-in by its own reference: charged this fare, then priced
    # again by the payer the acquirer's answer names (lane.core.metro.kept_fare).
    by_payer: bool = False
    refund_minor: int = 0  # charged minus the fare kept: owed back once the record is durable

    @property
    def waits_for_attendant(self) -> bool:
        return self.attendant and not self.confirmed


@dataclass(frozen=True)
class TapOut:
    """Metro exit gate (lane.core.metro): the passenger's code is held while the shell prices
    the trip by the account's open tap-in (`PriceTrip` `asked`); it is then authorised at that
    fare without being shown again."""

    asked: str
    code: Scanned


Trip = Ticket | AwaitingEntry | TapOut | Priced
