"""`lane ingest`: run one back-office ingest worker until SIGINT/SIGTERM.

    lane ingest --broker HOST:PORT [--db ingest.sqlite | --dsn postgresql://...]
                [--workers-name ID] [--group ingest] [--schema lane_ingest] [--report]
                [--hole-after 60] [--lock-timeout 5] [--stats-every 60] [--retry-max 30]
                [--metrics-host 127.0.0.1 --metrics-port 9109]

Start as many workers as needed (each with its own --workers-name, which makes its MQTT client
id, so a restarted worker resumes its session): they share the records through the MQTT 5
shared subscription of --group. `--report` prints per lane its queue epochs (base, contiguous
prefix, gaps) and every conflicting record with both digests, and exits. Logs are the daemon's:
one JSON line per event on stdout. A database that refuses connections at start is retried
(backoff up to --retry-max) until it answers or the worker is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import uvloop

from lane.core.backoff import Backoff
from lane.log import setup_logging
from lane.refusal_log import passed
from lane.signals import stop_on_signals
from lane.transport.mqtt import Credentials
from uplink.ingest import Ingest
from uplink.ingest_metrics import MetricsServer
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import (
    IngestStore,
    IngestStoreError,
    StoreUnavailableError,
    StoreUpgradingError,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # a reading command's answer, printed as JSON too

log = logging.getLogger("lane.uplink.cli")

# A worker's opening of its SQLite store waits this long for another process's upgrade of the
# file (its write lock), then, unless stopped, opens it again: a stop is seen within it, and the
# worker starts once the upgrade is over, however long it takes (it used to give up after
# SQLite's 30 s busy wait and exit 1). Its log line says it again at most this often.
UPGRADE_WAIT_S = 1.0
UPGRADE_SAY_EVERY_S = 60.0

PASSWORD_ENV = "LANE_INGEST_PASSWORD"


def parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < float("inf"):  # inf is no bound: a timeout or wait made of it fails
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


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
    p.add_argument("--stats-every", type=positive, default=60.0, help="seconds between stats")
    p.add_argument(
        "--hole-after", type=positive, default=60.0, help="seconds a missing seq is a hole"
    )
    p.add_argument(
        "--lock-timeout", type=positive, default=5.0, help="PostgreSQL lock wait bound (s)"
    )
    p.add_argument(
        "--retry-max", type=positive, default=30.0, help="longest wait between store connects"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics (off when unset)")
    p.add_argument("--report", action="store_true", help="print lanes, epochs, gaps, conflicts")
    p.add_argument("--log-level", default="INFO")
    return p


def store_options(p: argparse.ArgumentParser) -> None:
    """Where a reading command finds the store: `--db` or `--dsn` (and `--schema`)."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="SQLite ingest store file")
    where.add_argument("--dsn", help="PostgreSQL DSN (psycopg 3)")
    p.add_argument("--schema", default="lane_ingest", help="PostgreSQL schema of the tables")
    p.add_argument("--lock-timeout", type=positive, default=5.0, help=argparse.SUPPRESS)


def open_store(args: argparse.Namespace, upgrade_wait_s: float | None = None) -> IngestStore:
    """`upgrade_wait_s`: how long a SQLite store's opening waits for another process's upgrade
    (uplink.sqlite_store), SQLite's busy wait unless set."""
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

        store: IngestStore = PostgresIngestStore(
            args.dsn, schema=args.schema, lock_timeout_s=args.lock_timeout
        )
        return store
    return SqliteIngestStore(args.db, upgrade_wait_s=upgrade_wait_s)


def answer_from_store(  # noqa: PLR0917 - what each reading command differs in
    args: argparse.Namespace,
    prog: str,
    ask: Callable[[IngestStore], T],
    render: Callable[[T], str],
    upgrading: Callable[[T], bool],
    missing: str,
) -> int:
    """A reading command's whole run over the store of `args` (`store_options`): its answer
    (`ask`) printed as `render` gives it, or as one JSON object with `--json`; while an
    upgrade of the store has not finished, a line on stderr says what the answer misses. 0;
    1 when the store cannot be opened (or the `--db` file is not there)."""
    if args.db is not None and not Path(args.db).is_file():
        print(f"{prog}: {args.db}: no such store file", file=sys.stderr)
        return 1

    def show(store: IngestStore) -> None:
        answer = ask(store)
        if upgrading(answer):
            print(
                f"{prog}: the store's upgrade has not finished (a lane ingest worker goes on"
                f" with it); {missing}",
                file=sys.stderr,
            )
        text = json.dumps(asdict(answer), separators=(",", ":")) if args.json else render(answer)
        print(text)

    return read_store(args, prog, show)


def read_store(args: argparse.Namespace, prog: str, read: Callable[[IngestStore], None]) -> int:
    """Open the store of `args`, run `read` on it, close it: 0, or 1 when it cannot be opened."""
    try:
        store = open_store(args)
    except IngestStoreError as exc:
        print(f"{prog}: cannot open the store: {exc}", file=sys.stderr)
        return 1
    try:
        read(store)
    finally:
        store.close()
    return 0


def report(store: IngestStore) -> None:
    """Per lane its epochs (base, prefix, gaps), then every conflict with both digests."""
    gaps: dict[tuple[str, str], list[str]] = {}
    for lane in store.lanes():
        epochs = store.epochs(lane)
        for g in store.gaps(lane):
            gaps.setdefault((lane, g.epoch), []).append(f"{g.first}-{g.last}")
        print(f"{lane}\tcount={store.count(lane)}\tepochs={len(epochs)}")
        for e in epochs:
            print(
                f"  epoch={e.epoch or '(before epochs)'}\tbase={e.base}\tcontiguous={e.contiguous}"
                f"\tmax_seq={e.max_seq}\tgaps={','.join(gaps.get((lane, e.epoch), [])) or 'none'}"
            )
    conflicts = store.conflicts()
    print(f"conflicts={len(conflicts)}")
    for row in conflicts:
        c = row.conflict
        print(
            f"  conflict\tlane={c.lane}\tepoch={c.epoch}\tseq={c.seq}\trecord_id={c.record_id}"
            f"\theld_record_id={c.held_record_id}\tstored_digest={c.stored_digest}"
            f"\toffered_digest={c.offered_digest}\tseen={row.count}"
        )


async def connect_store(
    args: argparse.Namespace,
    stop: asyncio.Event,
    backoff_min: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> IngestStore | None:
    """Open the store, retrying while the database refuses connections, and while another
    process upgrades the SQLite file (said once, then again at most every UPGRADE_SAY_EVERY_S
    on `clock`); None once stopped."""
    backoff = Backoff(backoff_min, args.retry_max)
    attempt = 0
    upgrade = UpgradeWait(clock)
    while not stop.is_set():
        try:
            store = await asyncio.to_thread(open_store, args, UPGRADE_WAIT_S)
        except StoreUpgradingError as exc:
            upgrade.still(exc, args.db)
            continue  # the opening itself waited UPGRADE_WAIT_S
        except StoreUnavailableError as exc:
            attempt += 1
            delay = backoff.delay(attempt)
            log.warning(
                "ingest store unavailable",
                extra={"attempt": attempt, "error": str(exc).strip(), "retry_s": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        upgrade.over(args.db)
        return store
    return None


@dataclass
class UpgradeWait:
    """A worker's wait for another process's upgrade of the SQLite store, in its log lines:
    the first try that meets it says so, the next ones only once UPGRADE_SAY_EVERY_S passed,
    the opening once it is over (an upgrade of a large store takes minutes)."""

    clock: Callable[[], float]
    since: float | None = None
    said_at: float = 0.0

    def still(self, exc: StoreUpgradingError, path: str) -> None:
        now = self.clock()
        if self.since is not None and not passed(self.said_at, now, UPGRADE_SAY_EVERY_S):
            return
        self.since = now if self.since is None else self.since
        self.said_at = now
        log.warning(
            "ingest store waits for another process's upgrade",
            extra={"path": path, "waited_s": round(now - self.since), "error": str(exc)},
        )

    def over(self, path: str) -> None:
        if self.since is not None:
            waited = round(self.clock() - self.since)
            log.info("ingest store upgrade over", extra={"path": path, "waited_s": waited})


async def serve(args: argparse.Namespace) -> int:
    stop = stop_on_signals()
    try:
        store = await connect_store(args, stop)
    except IngestStoreError as exc:
        log.error("ingest cannot open the store", extra={"error": str(exc)})
        return 1
    if store is None:
        return 0
    try:
        return await _serve(args, store, stop)
    finally:
        store.close()


async def _serve(args: argparse.Namespace, store: IngestStore, stop: asyncio.Event) -> int:
    """Serve until stopped (0), or until a batch finds the store's schema newer than this
    release (1: a worker left running while a newer release upgraded the store)."""
    host, port = args.broker
    creds = None
    if args.username:
        creds = Credentials(args.username, os.environ.get(PASSWORD_ENV, ""))
    ingest = Ingest(store, group=args.group, hole_after_s=args.hole_after)
    link = ingest.make_link(host, port, f"ingest-{args.workers_name}", credentials=creds)
    metrics = MetricsServer(ingest)
    if args.metrics_port is not None:
        try:
            await metrics.start(args.metrics_host, args.metrics_port)
        except OSError as exc:
            log.error(
                "ingest metrics not started",
                extra={"host": args.metrics_host, "port": args.metrics_port, "error": str(exc)},
            )
    tasks: list[asyncio.Task[object]] = [asyncio.create_task(link.run(), name="ingest-link")]
    tasks.append(asyncio.create_task(_stats(ingest, args.stats_every), name="ingest-stats"))
    log.info(
        "ingest started",
        extra={"broker": f"{host}:{port}", "worker": args.workers_name, "group": args.group},
    )
    ends = [asyncio.create_task(e.wait()) for e in (stop, ingest.schema_newer)]
    try:
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        return 1 if ingest.schema_newer.is_set() else 0
    finally:
        tasks += ends
        # A batch cut off here was either committed without an ack (the lane resends; the
        # duplicate collapses) or not committed at all (the lane resends): nothing is lost.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ingest.close()
        await metrics.stop()
        log.info("ingest stopped", extra={"worker": args.workers_name, **vars(ingest.stats)})


async def _stats(ingest: Ingest, every: float) -> None:
    # The hole check rides on the stats timer: a hole shows within one period of `hole_after`.
    tick = min(every, ingest.holes.after_s)
    waited = 0.0
    while True:
        await asyncio.sleep(tick)
        await ingest.check_holes()
        waited += tick
        if waited >= every:
            waited = 0.0
            log.info("ingest stats", extra=vars(ingest.stats))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lane ingest`; argv excludes the subcommand name."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.broker is None and not args.report:
        parser.error("--broker HOST:PORT is needed (only --report works without a broker)")
    setup_logging(args.log_level.upper(), worker=args.workers_name)
    if args.report:
        return read_store(args, "lane ingest", report)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(args))
