"""A `lane ingest` worker started while another process upgrades the SQLite store (a large
store's upgrade takes minutes, under the file's write lock): it waits, saying so once in its
log and again at most once a minute, and starts once the upgrade is over, or once the
upgrading process dies, whose lock goes with it (the worker then upgrades the file itself). It
used to give up after SQLite's 30 s busy wait and exit 1.

The other process is a real opening of an old store (version 2, ROWS records: its upgrade
takes seconds), stopped with SIGSTOP in the middle of its migration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import eventually
from test_uplink_cli import Lines, ingest_process, worker_name
from uplink_kit import drained, lane_side, reconcile, start_lane

from sim.broker import Mosquitto
from uplink import cli
from uplink.sql_store import SCHEMA_VERSION
from uplink.sqlite_store import SqliteIngestStore

FIXTURES = Path(__file__).resolve().parents[1] / "ops" / "fixtures"
ROWS = 200_000
UPGRADE = (
    "import sys; from uplink.sqlite_store import SqliteIngestStore as S; S(sys.argv[1]).close()"
)
WAITS = "ingest store waits for another process's upgrade"
OVER = "ingest store upgrade over"
POLL_S = 0.005  # between two looks at the upgrader's lock


def old_store(path: Path, rows: int) -> Path:
    """A version 2 store (the earliest fixture) with `rows` toll records more."""
    shutil.copy(FIXTURES / "ingest_v2.sqlite", path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO records SELECT 'big-' || i, 'P09/x9', epoch, i, ts_us, kind,"
            " amount_minor, currency, data, ingested_us FROM records, n"
            " WHERE record_id = 'r-toll'",
            (rows,),
        )
    return path


def version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def write_lock_held(path: Path) -> bool:
    """Whether another connection holds the file's write lock (taken and let go at once if not)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as db:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        db.execute("ROLLBACK")
        return False


@contextlib.contextmanager
def upgrade_stopped_midway(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process opening the old store at `path`, stopped (SIGSTOP) in its migration: it holds
    the write lock, the file still of its old version. Killed on the way out if still there."""
    proc = subprocess.Popen([sys.executable, "-c", UPGRADE, str(path)])
    try:
        while not write_lock_held(path):
            assert proc.poll() is None, f"the upgrade ended ({proc.returncode}) before it was seen"
            time.sleep(POLL_S)
        proc.send_signal(signal.SIGSTOP)
        assert version(path) == 2 and write_lock_held(path), "not stopped in its migration"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.mark.parametrize("ends", ["over", "killed"])
async def test_a_worker_waits_for_another_process_s_upgrade_then_starts(
    ends: str, mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    db = old_store(tmp_path / "ingest.sqlite", ROWS)
    side = await start_lane(lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q"))
    lines: Lines | None = None
    try:
        with upgrade_stopped_midway(db) as upgrader:
            lines = Lines(await ingest_process(mosquitto, worker_name(lane_id), "--db", str(db)))
            await side.append(5)
            await eventually(lambda: lines.named(WAITS), within=20, what=WAITS)
            # The upgrade holds the lock over several of the worker's openings (each waits
            # UPGRADE_WAIT_S): it still waits, and has said so once.
            await asyncio.sleep(3 * cli.UPGRADE_WAIT_S)
            assert lines.proc.returncode is None and len(lines.named(WAITS)) == 1
            assert not lines.named("ingest started") and side.queue.backlog().count == 5
            (said,) = lines.named(WAITS)
            assert said["level"] == "warning" and said["path"] == str(db)
            assert "another process holds the write lock" in str(said["error"])
            if ends == "over":
                upgrader.send_signal(signal.SIGCONT)
                assert await asyncio.to_thread(upgrader.wait, 60) == 0
            else:  # SQLite's lock goes with the process: the worker upgrades the file itself
                upgrader.kill()
                await asyncio.to_thread(upgrader.wait, 30)
                assert version(db) == 2
        await eventually(lambda: lines.named("ingest started"), within=60, what="started")
        assert version(db) == SCHEMA_VERSION
        (over,) = lines.named(OVER)
        assert int(str(over["waited_s"])) >= 3 * cli.UPGRADE_WAIT_S
        store = SqliteIngestStore(db)
        try:
            await drained(side, store, lane_id, within=30)
            reconcile(side, store, lane_id)
            assert store.count("P09/x9") == ROWS
        finally:
            store.close()
        await lines.stop()
        assert lines.proc.returncode == 0, lines.err.decode()
    finally:
        await side.stop()
        if lines is not None and lines.proc.returncode is None:
            await lines.stop()


async def test_a_worker_waiting_for_another_process_s_upgrade_stops_at_sigterm(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    """Stopped while it waits, the worker ends (0) within its opening's wait, having opened
    nothing: the upgrade is the other process's to finish."""
    db = old_store(tmp_path / "ingest.sqlite", ROWS)
    with upgrade_stopped_midway(db):
        lines = Lines(await ingest_process(mosquitto, worker_name(lane_id), "--db", str(db)))
        try:
            await eventually(lambda: lines.named(WAITS), within=20, what=WAITS)
        finally:
            await lines.stop()  # SIGTERM, its end awaited 10 s at most
        assert lines.proc.returncode == 0, lines.err.decode()
        assert not lines.named("ingest started") and not lines.named(OVER)
        assert version(db) == 2


async def test_the_wait_is_said_again_at_most_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A clock 20 s on at each reading (one per opening that waited): the worker says it
    waits at the first, then once every three; the wait's end once."""
    caplog.set_level(logging.INFO, logger="lane.uplink.cli")
    db = old_store(tmp_path / "ingest.sqlite", 0)
    readings: list[float] = []

    def clock() -> float:
        readings.append(20.0 * len(readings))
        return readings[-1]

    args = cli.build_parser().parse_args(["--broker", "x:1", "--db", str(db)])
    stop = asyncio.Event()
    # The write lock held as an upgrade holds it, by a connection of this process.
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        opening = asyncio.create_task(cli.connect_store(args, stop, clock=clock))
        await eventually(lambda: len(readings) >= 7, within=30, what="seven openings waited")
        holder.execute("ROLLBACK")
        store = await asyncio.wait_for(opening, 30)
    finally:
        holder.close()
    assert store is not None
    store.close()
    said = [r for r in caplog.records if r.name == "lane.uplink.cli"]
    waits = [r.__dict__["waited_s"] for r in said if r.getMessage() == WAITS]
    assert len(waits) >= 3 and waits == [60 * n for n in range(len(waits))], waits
    assert len(waits) <= (len(readings) - 2) // 3 + 1  # the last reading is the end's
    (over,) = [r for r in said if r.getMessage() == OVER]
    assert over.__dict__["waited_s"] == readings[-1]
