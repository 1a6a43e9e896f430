"""`lane refunds`: the partial refunds a lane owes its passengers, and an operator's way out.

    lane refunds --config lane.toml                     # every refund owed, as it stands
    lane refunds --config lane.toml --made PAYMENT_ID   # one ended unpaid, refunded by hand

A refund the network ended unpaid (WeChat Pay's ABNORMAL or CLOSED: `refund_unpaid`) is never
asked again under another number by the lane: the operator refunds it on the merchant platform
and says so here. The running lane reads its payments file again within 30 s and clears the
alarm. Only such a refund can be marked: one still in the network's hands could be paid twice.
The running lane then writes its `refund` record (`made_by_hand`) for the back office.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lane.auth.resolution_store import PaymentRow, ResolutionStore, StoreError
from lane.auth.resolver import refund_id_for
from lane.config import ConfigError, load_config


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        data = load_config(args.config).lane.data_dir
    except ConfigError as exc:
        print(f"lane refunds: {exc}", file=sys.stderr)
        return 2
    try:
        store = ResolutionStore(data / "payments.sqlite3")
    except StoreError as exc:
        print(f"lane refunds: {exc}", file=sys.stderr)
        return 2
    try:
        if args.made is not None:
            row = store.refund_made_by_hand(args.made, int(time.time() * 1000))
            print(f"{_line(row)}: marked made by hand")
            return 0
        for row in store.refunds_owed():
            print(_line(row))
        return 0
    except StoreError as exc:
        print(f"lane refunds: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _line(row: PaymentRow) -> str:
    return (
        f"{row.payment_id} {row.network or '?'} {refund_id_for(row.payment_id)}"
        f" {row.refund_minor} {row.currency} {row.refund_state}"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lane refunds", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True, help="the lane's TOML (its data_dir)")
    p.add_argument("--made", metavar="PAYMENT_ID", help="a refund ended unpaid, made by hand")
    return p
