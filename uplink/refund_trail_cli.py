"""`lane refund-trail`: the refunds owed to passengers that the back office has not seen made.

    lane refund-trail --db ingest.sqlite [--json]
    lane refund-trail --dsn postgresql://... [--schema lane_ingest] [--json]

Reads the ingest store (docs/uplink.md, "Refund records"): one line per refund owed by a metro
`tap_out` whose payment has no `made` or `made_by_hand` record, oldest first; those whose last
end is `unpaid` (WeChat Pay's ABNORMAL or CLOSED: an operator's case) with the network's word,
then a summary line. While an upgrade of the store is still marking old records (PostgreSQL)
the answer misses the refunds of the records it has not reached: said on stderr (and
`"upgrading": true` in the JSON). Exit 0; 1 when the store cannot be opened; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lane.wire.utc import utc_text
from uplink.cli import answer_from_store, store_options
from uplink.refunds import OpenRefund, RefundTrail, open_refunds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lane refund-trail", description=__doc__.splitlines()[0])
    store_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    return p


def _when(ts_us: int | None) -> str:
    if ts_us is None:
        return "-"
    return utc_text(ts_us / 1e6)


def _line(r: OpenRefund) -> str:
    state = r.state if r.word is None else f"{r.state}({r.word})"
    return (
        f"{r.payment_id}\t{state}\t{r.owed_minor} {r.currency}\texited={_when(r.ts_us)}"
        f"\tlane={r.lane}\trecord={r.record_id}\tended={_when(r.ended_us)}"
    )


def render(trail: RefundTrail) -> str:
    lines = [_line(r) for r in (*trail.owed, *trail.unpaid)]
    lines.append(f"owed={len(trail.owed)}\tunpaid={len(trail.unpaid)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    missing = "refunds owed by the records it has not reached are missing"
    return answer_from_store(
        args, "lane refund-trail", open_refunds, render, lambda t: t.upgrading, missing
    )
