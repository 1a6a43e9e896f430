from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import aiohttp
import pytest
from polling import eventually
from uplink_kit import LaneSide, Q, drained, lane_side, reconcile, recs, start_lane

from sim.broker import Mosquitto, free_port
from uplink.cli import main, parse_broker
from uplink.ingest import IngestStats
from uplink.ingest_metrics import HELP
from uplink.messages import QueueIdentity
from uplink.pg import PostgresIngestStore
from uplink.sqlite_store import SqliteIngestStore

RUN = "import sys; from uplink.cli import main; sys.exit(main(sys.argv[1:]))"


async def ingest_process(
    mosquitto: Mosquitto, name: str, *store: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN,
        "--broker",
        f"{mosquitto.host}:{mosquitto.port}",
        *store,
        "--workers-name",
        name,
        "--group",
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


class Lines:
    """The JSON log lines of a running ingest process, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, object]] = []
        self.err = b""  # its stderr, read once it is stopped
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.events.append(json.loads(raw))  # every line is one JSON object

    def named(self, event: str) -> list[dict[str, object]]:
        return [e for e in self.events if e["event"] == event]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stderr is not None
        self.err = await asyncio.wait_for(self.proc.stderr.read(), 10)
        await asyncio.wait_for(self.proc.wait(), 10)
        await asyncio.wait_for(self.task, 5)


def worker_name(lane_id: str) -> str:
    """The ingest worker (and its share group) of a test's lane: a group name has no '/'."""
    return lane_id.replace("/", "-")


@contextlib.asynccontextmanager
async def ingest_drained(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path, db: Path, records: int
) -> AsyncIterator[tuple[Lines, LaneSide, SqliteIngestStore]]:
    """`lane ingest` on the SQLite store `db` beside the lane's uplink (its queue in
    tmp_path/q): the lane wrote `records` and the ingest stored them all. Yields the ingest's
    lines, the lane and the store (open); all closed on the way out (stderr in `Lines.err`)."""
    lines = Lines(await ingest_process(mosquitto, worker_name(lane_id), "--db", str(db)))
    side = await start_lane(lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q"))
    try:
        await eventually(lambda: lines.named("ingest started"), what="ingest started")
        await side.link.wait_connected(5)
        await side.append(records)
        store = SqliteIngestStore(db)
        try:
            await drained(side, store, lane_id)
            yield lines, side, store
        finally:
            store.close()
    finally:
        await side.stop()
        await lines.stop()


async def test_ingest_command_serves_until_sigterm_and_logs_json_lines(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    db = tmp_path / "ingest.sqlite"
    async with ingest_drained(mosquitto, lane_id, tmp_path, db, 50) as (lines, side, store):
        reconcile(side, store, lane_id)
    assert lines.proc.returncode == 0, lines.err.decode()
    stopped = lines.named("ingest stopped")[0]
    assert stopped["records"] == 50 and stopped["conflicts"] == 0
    assert stopped["worker"] == worker_name(lane_id) and stopped["logger"] == "lane.uplink.cli"

    code = await asyncio.to_thread(main, ["--broker", "x:1", "--db", str(db), "--report"])
    assert code == 0


def test_report_lists_epochs_gaps_and_conflicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ingest.sqlite"
    store = SqliteIngestStore(db)
    store.store_batch("p09/l04", Q, recs(1, 3), 1)
    store.store_batch("p09/l04", Q, recs(7, 9), 1)
    store.store_batch("p09/l04", QueueIdentity("epoch-2"), recs(1, 2, tag="n"), 2)
    conflict = store.store_batch("p09/l04", Q, recs(2, 2, amount=1), 3).conflicts[0]
    store.close()
    assert main(["--db", str(db), "--report"]) == 0  # a report needs no broker
    out = capsys.readouterr().out
    assert "p09/l04\tcount=8\tepochs=2" in out
    assert "epoch=epoch-1\tbase=0\tcontiguous=3\tmax_seq=9\tgaps=4-6" in out
    assert "epoch=epoch-2\tbase=0\tcontiguous=2\tmax_seq=2\tgaps=none" in out
    assert "conflicts=1" in out
    c = conflict
    assert f"stored_digest={c.stored_digest}\toffered_digest={c.offered_digest}" in out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--broker", "nohostport"],
        ["--broker", "h:1", "--hole-after", "0"],
        ["--broker", "h:1", "--lock-timeout", "inf"],  # no bound; was an OverflowError later
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert parse_broker("10.0.0.1:1883") == ("10.0.0.1", 1883)


def test_report_of_an_unreachable_postgres_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} connect_timeout=1"
    code = main(["--broker", "127.0.0.1:1", "--dsn", dsn, "--report"])
    assert code == 1
    assert "cannot open the store" in capsys.readouterr().err


@contextlib.asynccontextmanager
async def tcp_proxy(port: int, to_port: int) -> AsyncIterator[None]:
    """Forward 127.0.0.1:port to 127.0.0.1:to_port (the database 'comes back' on `port`)."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", to_port)
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


async def test_ingest_keeps_retrying_a_refused_postgres_at_start(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path, pg_dsn: str
) -> None:
    real_port = int(re.search(r"port=(\d+)", pg_dsn).group(1))  # type: ignore[union-attr]
    port = free_port()  # nothing listens yet: connections are refused
    dsn = re.sub(r"port=\d+", f"port={port}", pg_dsn)
    lines = Lines(await ingest_process(mosquitto, worker_name(lane_id), "--dsn", dsn))
    side = await start_lane(lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q"))
    try:
        await side.append(5)
        await eventually(lambda: len(lines.named("ingest store unavailable")) >= 2, 20)
        assert lines.proc.returncode is None  # still trying, not exited
        refused = lines.named("ingest store unavailable")[0]
        assert refused["level"] == "warning" and "refused" in str(refused["error"])
        assert side.queue.backlog().count == 5  # nothing acknowledged meanwhile
        async with tcp_proxy(port, real_port):
            await eventually(lambda: lines.named("ingest started"), 30, what="ingest started")
            store = PostgresIngestStore(pg_dsn)
            try:
                await drained(side, store, lane_id, within=30)
                reconcile(side, store, lane_id)
            finally:
                store.close()
            await lines.stop()
    finally:
        await side.stop()
        if lines.proc.returncode is None:
            await lines.stop()
    assert lines.proc.returncode == 0


async def test_metrics_raise_and_clear_the_conflict_alarm(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    db = tmp_path / "ingest.sqlite"
    store = SqliteIngestStore(db)
    store.store_batch(lane_id, Q, recs(1, 2, lane=lane_id), 1)
    mine = recs(1, 2, lane=lane_id, amount=9)  # the lane's version: refused
    assert len(store.store_batch(lane_id, Q, mine, 2).conflicts) == 2
    port = free_port()
    name = worker_name(lane_id)
    lines = Lines(
        await ingest_process(mosquitto, name, "--db", str(db), "--metrics-port", str(port))
    )
    try:
        await eventually(lambda: lines.named("ingest metrics listening"), what="metrics up")

        async def scrape() -> dict[str, float]:
            url = f"http://127.0.0.1:{port}/metrics"
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                assert resp.status == 200
                text = await resp.text()
            return {
                k: float(v)
                for k, v in re.findall(r"^(lane_ingest_\w+) ([0-9.e+-]+)$", text, re.MULTILINE)
            }

        got = await scrape()
        assert got["lane_ingest_conflicts_open"] == 2 and got["lane_ingest_holes_open"] == 0
        assert got["lane_ingest_records_total"] == 0
        # The cause goes: the wrong rows are removed, the lane's versions stored.
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM records WHERE lane=?", (lane_id,))
        store.store_batch(lane_id, Q, mine, 3)
        assert (await scrape())["lane_ingest_conflicts_open"] == 0
    finally:
        store.close()
        await lines.stop()


def test_every_ingest_counter_has_its_help() -> None:
    assert set(HELP) == {f.name for f in fields(IngestStats)}


def test_without_a_broker_only_report_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--db", "ingest.sqlite"])
    assert exit_.value.code == 2
    assert "--broker HOST:PORT is needed" in capsys.readouterr().err


def test_dsn_without_the_pg_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wheel installed without [pg]: psycopg cannot be imported."""
    monkeypatch.delitem(sys.modules, "uplink.pg", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ModuleNotFoundError
    code = main(["--broker", "127.0.0.1:1", "--dsn", "host=127.0.0.1 port=1"])
    assert code == 1
    said = capsys.readouterr()
    line = said.out + said.err  # one structured log line: "ingest cannot open the store"
    assert "needs psycopg, which is not installed" in line and "lane[pg]" in line
