"""`lane ingest`: run one back-office ingest worker until SIGINT/SIGTERM.

    lane ingest --broker HOST:PORT [--db ingest.sqlite | --dsn postgresql://...]
                [--workers-name ID] [--group ingest] [--schema lane_ingest] [--report]

Start as many workers as needed (each with its own --workers-name, which makes its MQTT client
id, so a restarted worker resumes its session): they share the records through the MQTT 5
shared subscription of --group. `--report` prints per-lane counts, contiguous prefix and gaps
of the store and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import uvloop

from barrier.mqtt import Credentials
from uplink.ingest import Ingest
from uplink.store import IngestStore, IngestStoreError, SqliteIngestStore

log = logging.getLogger("lane.uplink.cli")

PASSWORD_ENV = "LANE_INGEST_PASSWORD"


def parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lane ingest", description=__doc__.splitlines()[0])
    p.add_argument(
        "--broker", type=parse_broker, help="MQTT broker HOST:PORT (not needed with --report)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", default="ingest.sqlite", help="SQLite store file (default)")
    where.add_argument("--dsn", help="PostgreSQL DSN (psycopg 3), instead of --db")
    p.add_argument("--schema", default="lane_ingest", help="PostgreSQL schema of the tables")
    p.add_argument(
        "--workers-name",
        default=socket.gethostname(),
        help="this worker's stable name; MQTT client id is ingest-<name>",
    )
    p.add_argument("--group", default="ingest", help="shared-subscription group of the workers")
    p.add_argument("--username", help=f"MQTT user (password from ${PASSWORD_ENV})")
    p.add_argument("--stats-every", type=float, default=60.0, help="seconds between stat lines")
    p.add_argument("--report", action="store_true", help="print the store's lanes and gaps, exit")
    p.add_argument("--log-level", default="INFO")
    return p


def open_store(args: argparse.Namespace) -> IngestStore:
    if args.dsn:
        # psycopg is imported only when PostgreSQL is used: it is the optional [pg] extra.
        try:
            from uplink.pg import PostgresIngestStore  # noqa: PLC0415
        except ModuleNotFoundError as exc:
            if exc.name != "psycopg":
                raise
            raise IngestStoreError(
                "--dsn needs psycopg, which is not installed: pip install 'lane[pg]' "
                "(or the wheel as 'lane-<version>-py3-none-any.whl[pg]')"
            ) from None

        return PostgresIngestStore(args.dsn, schema=args.schema)
    return SqliteIngestStore(args.db)


def report(store: IngestStore) -> None:
    for lane in store.lanes():
        gaps = store.gaps(lane)
        print(
            f"{lane}\tcount={store.count(lane)}\tcontiguous={store.contiguous(lane)}"
            f"\tgaps={','.join(f'{a}-{b}' for a, b in gaps) or 'none'}"
        )


async def serve(args: argparse.Namespace, store: IngestStore) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = args.broker
    creds = None
    if args.username:
        creds = Credentials(args.username, os.environ.get(PASSWORD_ENV, ""))
    ingest = Ingest(store, group=args.group)
    link = ingest.make_link(host, port, f"ingest-{args.workers_name}", credentials=creds)
    tasks = [asyncio.create_task(link.run(), name="ingest-link")]
    tasks.append(asyncio.create_task(_stats(ingest, args.stats_every), name="ingest-stats"))
    log.info(
        "ingest started",
        extra={"broker": f"{host}:{port}", "worker": args.workers_name, "group": args.group},
    )
    try:
        await stop.wait()
    finally:
        # A batch cut off here was either committed without an ack (the lane resends; the
        # duplicate collapses) or not committed at all (the lane resends): nothing is lost.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("ingest stopped", extra={"worker": args.workers_name, **vars(ingest.stats)})


async def _stats(ingest: Ingest, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        log.info("ingest stats", extra=vars(ingest.stats))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lane ingest`; argv excludes the subcommand name."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.broker is None and not args.report:
        parser.error("--broker HOST:PORT is needed (only --report works without a broker)")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
    try:
        store = open_store(args)
    except IngestStoreError as exc:
        print(f"lane ingest: cannot open the store: {exc}", file=sys.stderr)
        return 1
    try:
        if args.report:
            report(store)
            return 0
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args, store))
        return 0
    finally:
        store.close()
