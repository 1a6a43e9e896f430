"""A metro line in the simulator (`lane sim --mode metro`): entry gates at one station, exit
gates at another, one line sharing its taps, and passengers riding between them.

Lanes 1, 3, ... are `transit-entry` gates at S02, lanes 2, 4, ... `transit-exit` gates at S03
that price each trip by its tap-in with the line's `entry_exit` tariff (docs/closed-road.md,
"Metro"). A passenger taps in, rides `RIDE_S` simulated seconds and taps out at the exit gate
with the least load, showing another code of the same wallet (new digits at every showing,
the same payer) or a new token of the same account. The entry gate charges its flat fare; the
exit charges a wallet code the maximum fare into S03 (from S01) and refunds it down to the S02
trip less what the tap-in charged once the network names the payer: the partial refund an
operator follows on the dashboard and the console. `fare_check` adds each rider's payments up
for the run's report: what they paid in all must be the trip's fare.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lane.auth.fares import FareError, Tariff
from lane.core.names import AuthResult, RecordKind
from lane.core.records import FLAG_CHARGED, FLAG_REFUNDED, flag_value, tap_in_trip_id
from sim.road_model import Road, tariff_toml
from sim.traffic import Driver, Mix
from uplink.records import Record

LINE = "M1"
ENTRY_STATION, EXIT_STATION = "S02", "S03"
# The line's stations at their kilometre posts: the fares come from the distance, as a road's.
STATIONS = Road(("S01", ENTRY_STATION, EXIT_STATION), (0.0, 12.0, 30.0))
RIDE_S = 90.0  # simulated seconds from the tap-in to the exit gate
# Every gate keys a wallet's payer alike, so an exit finds the tap-in of the same payer.
LINE_SECRET = "simulated-metro-line-secret"
# Who rides: wallet codes through Alipay and WeChat Pay (refunded at the exit), and tokens.
MIX = Mix(
    arrivals_per_hour=600.0,
    classes={1: 1.0},
    behaviours={"alipay": 0.4, "wechat": 0.35, "token": 0.25},
)
WALLET_PREFIXES = {"alipay": "28", "wechat": "13"}  # the networks' payment code prefixes


def is_entry(index: int) -> bool:
    """Whether lane `index` (0-based) is an entry gate; the others are exit gates."""
    return index % 2 == 0


def gate_ids(lanes: int) -> list[str]:
    """`S02/g01`, `S03/x01`, `S02/g02`, ...: entry and exit gates in turn."""
    return [
        f"{ENTRY_STATION}/g{i // 2 + 1:02d}" if is_entry(i) else f"{EXIT_STATION}/x{i // 2 + 1:02d}"
        for i in range(lanes)
    ]


def gate_mode(index: int) -> str:
    return "transit-entry" if is_entry(index) else "transit-exit"


def tariff_path(workdir: Path) -> Path:
    return workdir / "tariff.metro.toml"


def write_tariff(workdir: Path, valid_from: int) -> None:
    tariff_path(workdir).write_text(tariff_toml(STATIONS, [1], valid_from, section="transit"))


def gate_config(body: dict[str, Any], index: int, workdir: Path) -> dict[str, Any]:
    """A lane's configuration (`SimLane.config_body`) made a gate of the line."""
    body["lane"]["mode"] = gate_mode(index)
    body["metro"] = {"line": LINE}
    body["auth"]["account_secret"] = LINE_SECRET
    if not is_entry(index):
        body["fares"]["tariff"] = str(tariff_path(workdir))
    return body


def wallet_of(driver: Driver) -> str:
    """The passenger's wallet (and a token's account: 8 characters, as the phones' are)."""
    return f"r{driver.index % 10**7:07d}"


PAID = (AuthResult.APPROVED, AuthResult.DEFERRED)
EXAMPLES = 5  # wrong trips the report names


def fare_check(records: Iterable[Record], tariff: Tariff) -> dict[str, Any]:
    """Each rider's journey added up from the gates' records: what the tap-in charged plus what
    the tap-out charged, less what it refunded, must be the tariff's fare from the tap-in's
    station to the exit's (docs/closed-road.md, "Metro"). `trips` counts the tap-outs that
    found their tap-in, `wrong` those that did not add up (`examples` names a few),
    `unpaired` the paid tap-outs without a tap-in of this run and the tap-ins never tapped out
    (a rider who paid the maximum fare, or is still inside)."""
    paid = [r for r in records if r.draft.auth.result in PAID]
    tap_ins = {tap_in_trip_id(r.record_id, r.draft).hex(): r
               for r in paid if r.draft.kind is RecordKind.TAP_IN}  # fmt: skip
    tap_outs = [r for r in paid if r.draft.kind is RecordKind.TAP_OUT]
    trips, unpaired, wrong = 0, 0, []
    for out in tap_outs:
        tap_in = tap_ins.pop(out.draft.pass_id or "", None)
        if tap_in is None:
            unpaired += 1
            continue
        trips += 1
        refunded = int(flag_value(out.draft.flags, FLAG_REFUNDED) or 0)
        total = tap_in.draft.amount_minor + _charged(out) - refunded
        fare = _trip_fare(tariff, tap_in, out)
        if total != fare:
            wrong.append({"tap_out": out.record_id, "paid_minor": total, "fare_minor": fare})
    return {
        "trips": trips,
        "wrong": len(wrong),
        "unpaired": unpaired + len(tap_ins),
        "examples": wrong[:EXAMPLES],
    }


def _charged(out: Record) -> int:
    """What the exit took from the rider: a wallet code's charge before its refund."""
    return int(flag_value(out.draft.flags, FLAG_CHARGED) or out.draft.amount_minor)


def _trip_fare(tariff: Tariff, tap_in: Record, out: Record) -> int | None:
    """The tariff's fare of the trip; None when it has none (a same-station exit)."""
    entry = tap_in.draft.entry_plaza or tap_in.lane.partition("/")[0]
    try:
        fare = tariff.trip_fare(out.draft.vehicle_class, entry, out.lane.partition("/")[0],
                                out.ts_us / 1e6)  # fmt: skip
    except FareError:
        return None
    return fare.amount_minor
