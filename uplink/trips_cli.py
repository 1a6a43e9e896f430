"""`lane trips`: the vehicles that entered a closed road and have not exited (back office).

    lane trips --db ingest.sqlite [--overdue-h 24] [--json]
    lane trips --dsn postgresql://... [--schema lane_ingest] [--overdue-h 24] [--json]

Reads the ingest store (docs/closed-road.md, "Records and the back office"); prints one line
per open trip, oldest first, then a summary line. `--overdue-h H` keeps the trips that entered
more than H hours ago. While an upgrade of the store is still filling it (PostgreSQL,
docs/uplink.md) the answer misses the trips it has not reached: said on stderr (and
`"upgrading": true` in the JSON). Exit 0; 1 when the store cannot be opened; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from lane.wire.utc import utc_text
from uplink.cli import answer_from_store, positive, store_options
from uplink.store import IngestStore
from uplink.trips import END_OF_TIME_US, TripLedger, open_trips


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lane trips", description=__doc__.splitlines()[0])
    store_options(p)
    p.add_argument("--overdue-h", type=positive, help="only trips that entered longer ago")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    return p


def _when(ts_us: int) -> str:
    return utc_text(ts_us / 1e6)


def render(ledger: TripLedger) -> str:
    lines = [
        f"{t.pass_id}\tentered={_when(t.ts_us)}\tlane={t.lane}\tplaza={t.entry_plaza or '-'}"
        f"\tclass={t.vehicle_class}\tplate={t.plate or '-'}"
        for t in ledger.open_trips
    ]
    lines.append(
        f"open={len(ledger.open_trips)}\tclosed={ledger.closed}"
        f"\tunmatched_exits={len(ledger.unmatched_exits)}\tunreadable={ledger.unreadable}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, now: float | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    before = END_OF_TIME_US
    if args.overdue_h is not None:
        before = int(((time.time() if now is None else now) - args.overdue_h * 3600) * 1e6)

    def ask(store: IngestStore) -> TripLedger:
        return open_trips(store, entered_before_us=before)

    return answer_from_store(args, "lane trips", ask, render, lambda t: t.upgrading,
                             "trips of the records it has not reached are missing")  # fmt: skip
