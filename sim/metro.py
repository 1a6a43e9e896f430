"""A metro line in the simulator (`lane sim --mode metro`): entry gates at one station, exit
gates at another, one line sharing its taps, and passengers riding between them.

Lanes 1, 3, ... are `transit-entry` gates at S02, lanes 2, 4, ... `transit-exit` gates at S03
that price each trip by its tap-in with the line's `entry_exit` tariff (docs/closed-road.md,
"Metro"). A passenger taps in, rides `RIDE_S` simulated seconds and taps out at the exit gate
with the least load, showing another code of the same wallet (new digits at every showing,
the same payer) or a new token of the same account. The exit charges a wallet code the maximum
fare into S03 (from S01) and refunds the difference down to the S02 trip once the network
names the payer: the partial refund an operator follows on the dashboard and the console.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.road_model import Road, tariff_toml
from sim.traffic import Driver, Mix

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
