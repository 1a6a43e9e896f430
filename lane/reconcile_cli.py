"""`lane reconcile`: the day's back-office records against Alipay's and WeChat Pay's bills.

    lane reconcile --config lane.toml --date 2026-12-01 [--db ingest.sqlite | --dsn ...]
                   [--alipay-bill FILE.zip] [--wechat-bill FILE.csv] [--json]
                   [--timeout-s 60] [--tries 3] [--retry-s 30]

The bills are fetched from the networks configured and routed in `--config` (the same `[auth]`
section as a lane's: credentials and key files), or read from files. A fetch that stalls,
times out or finds the network unreachable is tried again (`--tries`, each whole within
`--timeout-s`, waiting `--retry-s` and then twice as long between them); a bill is used only
whole. The date is Beijing's (the networks' bill day). Exit status: 0 all matched, 1
discrepancies found, 2 could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from lane.auth import bills as billfmt
from lane.auth.acquirer import AcquirerError, AcquirerTimeout, AcquirerUnavailable
from lane.auth.alipay import AlipayClient
from lane.auth.alipay_wire import BEIJING
from lane.auth.netkeys import KeyFileError
from lane.auth.networks import NetworkKeys, alipay_client, wechatpay_client
from lane.auth.reconcile import Day, Finding, LaneReport, RecordedPayment, reconcile
from lane.auth.wechatpay import WeChatPayClient
from lane.config import AuthSection, ConfigError, load_config
from lane.core.backoff import Backoff
from lane.core.names import RecordKind
from lane.log import setup_logging
from lane.wire.codec import PayloadError
from uplink.cli import positive
from uplink.records import Record
from uplink.sql_store import SqlIngestStore
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestStoreError

log = logging.getLogger("lane.reconcile")
FETCH_TIMEOUT_S = 60.0  # one try of a fetch, its body whole
FETCH_TRIES = 3
RETRY_S = 30.0  # the first wait before a fetch is tried again, doubled for each further one
BILL_MAX_BYTES = 512 * 1024 * 1024  # a day of a large road is tens of MiB
ROUTE_KINDS = ("alipay", "wechat", "unionpay", "emv")


class ReconcileError(Exception):
    """Something the run cannot do without (a bill, the records): exit 2 with this message."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lane reconcile", description=__doc__.splitlines()[0])
    p.add_argument("--date", help="the bill day YYYY-MM-DD (Beijing); default: yesterday")
    p.add_argument("--config", type=Path, help="TOML with [auth] routes and network credentials")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", default="ingest.sqlite", help="back-office SQLite store")
    where.add_argument("--dsn", help="back-office PostgreSQL DSN, instead of --db")
    p.add_argument("--schema", default="lane_ingest", help="PostgreSQL schema of the tables")
    p.add_argument("--alipay-bill", type=Path, help="Alipay bill zip, instead of fetching it")
    p.add_argument("--wechat-bill", type=Path, help="WeChat Pay bill text, instead of fetching")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--timeout-s",
        type=positive,
        default=FETCH_TIMEOUT_S,
        help="each try of a bill's fetch must end, its body whole, within this",
    )
    p.add_argument(
        "--tries", type=int, choices=range(1, 11), default=FETCH_TRIES, metavar="1..10",
        help="tries of a bill's fetch that stalls, times out or finds the network unreachable",
    )  # fmt: skip
    p.add_argument(
        "--retry-s",
        type=positive,
        default=RETRY_S,
        help="the wait before the second try, doubled before each further one",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("WARNING", stream=sys.stderr)
    try:
        date = args.date or (datetime.now(BEIJING) - timedelta(days=1)).strftime("%Y-%m-%d")
        day = day_of(date)
        config = load_config(args.config) if args.config else None
        auth = AuthSection() if config is None else config.auth
        # The lane's data directory holds WeChat Pay's downloaded platform certificates.
        state_dir = None if config is None else config.lane.data_dir
        bills = asyncio.run(gather_bills(args, auth, date, state_dir))
        records = load_records(args, day)
    except (ReconcileError, ConfigError, KeyFileError, IngestStoreError) as exc:
        print(f"lane reconcile: {exc}", file=sys.stderr)
        return 2
    routes = {kind: getattr(auth.routes, kind) for kind in ROUTE_KINDS}
    # A bill given as a file is for its network's own codes, whatever the config routes.
    for kind, network in (("alipay", "alipay"), ("wechat", "wechatpay")):
        if network in bills and routes[kind] == "acquirer":
            routes[kind] = network
    reports = reconcile(records, bills, routes, day)
    print(render_json(date, reports) if args.json else render_text(date, reports))
    return 1 if any(r.discrepancies for r in reports.values()) else 0


def day_of(date: str) -> Day:
    try:
        start = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=BEIJING)
    except ValueError:
        raise ReconcileError(f"--date {date!r} is not YYYY-MM-DD") from None
    start_us = int(start.timestamp()) * 1_000_000
    return Day(start_us, start_us + 86_400 * 1_000_000)


async def gather_bills(
    args: argparse.Namespace, auth: AuthSection, date: str, state_dir: Path | None
) -> dict[str, list[billfmt.BilledOrder]]:
    bills: dict[str, list[billfmt.BilledOrder]] = {}
    try:
        if args.alipay_bill is not None:
            bills["alipay"] = _parse_alipay(_read(args.alipay_bill))
        if args.wechat_bill is not None:
            bills["wechatpay"] = _parse_wechat(_read(args.wechat_bill).decode("utf-8"))
        keys = NetworkKeys.load(auth, state_dir)  # the routed networks' keys only
        async with aiohttp.ClientSession() as session:
            if "alipay" not in bills and keys.alipay is not None:
                client = alipay_client(auth, keys, session)
                raw = await with_tries(
                    "Alipay", lambda: fetch_alipay(client, date, args.timeout_s), args
                )
                bills["alipay"] = _parse_alipay(raw)
            if "wechatpay" not in bills and keys.wechatpay is not None:
                wclient = wechatpay_client(auth, keys, session)
                text = await with_tries(
                    "WeChat Pay", lambda: fetch_wechat(wclient, date, args.timeout_s), args
                )
                bills["wechatpay"] = _parse_wechat(text)
    except (AcquirerError, aiohttp.ClientError) as exc:
        raise ReconcileError(f"could not fetch a bill: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReconcileError(f"WeChat Pay bill is not UTF-8: {exc}") from exc
    if not bills:  # nothing to compare with would read as "all matched"
        raise ReconcileError(
            "no bill: route a network in --config's [auth.routes], or give --alipay-bill or"
            " --wechat-bill"
        )
    return bills


T = TypeVar("T")


async def with_tries(
    network: str, fetch: Callable[[], Awaitable[T]], args: argparse.Namespace
) -> T:
    """`fetch` again after a stall, a timeout or the network unreachable, `args.tries` times
    in all; then ReconcileError saying which bill and why. Anything else is not retried: a
    second try would get the same answer."""
    backoff = Backoff(first_s=args.retry_s, max_s=float("inf"))
    tried = 1
    while True:
        try:
            return await fetch()
        except (AcquirerTimeout, AcquirerUnavailable) as exc:
            how = "stalls or times out" if isinstance(exc, AcquirerTimeout) else "fails"
            if tried == args.tries:
                raise ReconcileError(
                    f"{network} bill not fetched: the download {how} ({exc}); tried"
                    f" {tried} times, each within {args.timeout_s:g} s; nothing reconciled,"
                    " run it again"
                ) from exc
            wait = backoff.delay(tried)
            log.warning(
                "bill download failed; retrying",
                extra={"network": network, "tried": tried, "retry_in_s": wait, "error": str(exc)},
            )
            await asyncio.sleep(wait)
            tried += 1


async def fetch_alipay(client: AlipayClient, date: str, timeout_s: float) -> bytes:
    """The day's bill zip; each step whole within `timeout_s`."""
    url = await client.bill_url(date, timeout_s)
    return await client.bill(url, timeout_s, BILL_MAX_BYTES)


async def fetch_wechat(client: WeChatPayClient, date: str, timeout_s: float) -> str:
    """The day's bill text, its SHA1 checked; each step whole within `timeout_s`."""
    status, doc = await client.signed_call(
        "GET", f"/v3/bill/tradebill?bill_date={date}&bill_type=ALL", None, timeout_s
    )
    url, digest = doc.get("download_url"), doc.get("hash_value")
    if status != 200 or not isinstance(url, str) or not isinstance(digest, str):
        raise ReconcileError(f"WeChat Pay trade bill for {date}: HTTP {status} {doc}")
    parts = urlsplit(url)
    path = f"{parts.path}?{parts.query}" if parts.query else parts.path
    answer = await client.request("GET", path, None, timeout_s, BILL_MAX_BYTES)
    # The file itself is not signed: its SHA1, from the signed answer above, vouches for it.
    actual = hashlib.sha1(answer.body, usedforsecurity=False).hexdigest()
    if answer.status != 200 or actual != digest.lower():
        raise ReconcileError(
            f"WeChat Pay bill download: HTTP {answer.status}, SHA1 {actual} != {digest}"
        )
    return answer.body.decode("utf-8")


def load_records(args: argparse.Namespace, day: Day) -> list[RecordedPayment]:
    store: SqlIngestStore
    if args.dsn:
        from uplink.pg import PostgresIngestStore  # noqa: PLC0415 - psycopg only when used

        store = PostgresIngestStore(args.dsn, schema=args.schema)
    else:
        if not Path(args.db).is_file():
            raise ReconcileError(f"{args.db}: no such back-office store")
        store = SqliteIngestStore(args.db)
    try:
        blobs = store.records_between(day.start_us - day.margin_us, day.end_us + day.margin_us)
    finally:
        store.close()
    found = []
    for data in blobs:
        try:
            record = Record.decode(data)
        except PayloadError as exc:  # an older format holds no payment of ours: say so, go on
            log.warning("record not readable: %s", exc)
            continue
        d = record.draft
        # A refund record names its payment too, but takes nothing: the bill's charge is the
        # tap_out's to match (its kept amount against the charge net of refunds).
        if d.payment_id is None or d.kind == RecordKind.REFUND:
            continue
        found.append(
            RecordedPayment(
                record.lane,
                record.record_id,
                d.payment_id,
                d.amount_minor,
                d.auth.result,
                d.account_ref,
                record.ts_us,
            )
        )
    return found


def render_text(date: str, reports: dict[str, LaneReport]) -> str:
    head = f"{'lane':<12} {'matched':>8} {'amount':>12} {'to refund':>9} {'no charge':>9}"
    lines = [f"reconciliation of {date} (Beijing)", head + f" {'mismatch':>8} {'refunded':>8}"]
    for r in reports.values():
        lines.append(
            f"{r.lane:<12} {r.matched:>8} {_yuan(r.matched_minor):>12}"
            f" {r.count(Finding.CHARGED_WITHOUT_RECORD):>9}"
            f" {r.count(Finding.APPROVED_WITHOUT_CHARGE):>9}"
            f" {r.count(Finding.AMOUNT_MISMATCH):>8} {r.refunded:>8}"
        )
    for r in reports.values():
        for d in r.discrepancies:
            lines.append(
                f"{d.finding.value}: lane {d.lane} {d.network} order {d.out_trade_no}"
                f" trade {d.trade_no} record {d.record_id}"
                f" recorded {_yuan(d.recorded_minor)} charged {_yuan(d.charged_minor)}"
            )
    return "\n".join(lines)


def render_json(date: str, reports: dict[str, LaneReport]) -> str:
    doc: dict[str, Any] = {"date": date, "lanes": []}
    for r in reports.values():
        doc["lanes"].append(
            {
                **{k: v for k, v in asdict(r).items() if k != "discrepancies"},
                "discrepancies": [
                    {**asdict(d), "finding": d.finding.value} for d in r.discrepancies
                ],
            }
        )
    return json.dumps(doc, ensure_ascii=False, indent=1)


def _yuan(minor: int | None) -> str:
    if minor is None:
        return "-"
    return ("-" if minor < 0 else "") + f"{abs(minor) // 100}.{abs(minor) % 100:02d}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReconcileError(f"{path}: cannot read: {exc.strerror}") from None


def _parse_alipay(data: bytes) -> list[billfmt.BilledOrder]:
    try:
        return list(billfmt.parse_alipay(billfmt.alipay_csv_from_zip(data)).values())
    except billfmt.BillError as exc:
        raise ReconcileError(f"Alipay bill: {exc}") from exc


def _parse_wechat(text: str) -> list[billfmt.BilledOrder]:
    try:
        return list(billfmt.parse_wechat(text).values())
    except billfmt.BillError as exc:
        raise ReconcileError(f"WeChat Pay bill: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
