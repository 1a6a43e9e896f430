from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from uplink_kit import drained, lane_side, reconcile, recs, start_lane

from sim.broker import Mosquitto
from uplink.cli import main, parse_broker
from uplink.store import SqliteIngestStore

RUN = "import sys; from uplink.cli import main; sys.exit(main(sys.argv[1:]))"


async def test_ingest_command_serves_until_sigterm_and_exits_0(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    db = tmp_path / "ingest.sqlite"
    name = lane_id.replace("/", "-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        RUN,
        "--broker",
        f"{mosquitto.host}:{mosquitto.port}",
        "--db",
        str(db),
        "--workers-name",
        name,
        "--group",
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    side = await start_lane(lane_side(mosquitto.host, mosquitto.port, lane_id, tmp_path / "q"))
    try:
        await side.link.wait_connected(5)
        await side.append(50)
        store = SqliteIngestStore(db)  # the file exists once the worker has started
        await drained(side, store, lane_id)
        reconcile(side, store, lane_id)
        store.close()
    finally:
        await side.stop()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert b"ingest stopped" in err

    code = await asyncio.to_thread(main, ["--broker", "x:1", "--db", str(db), "--report"])
    assert code == 0


def test_report_lists_lanes_and_gaps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ingest.sqlite"
    store = SqliteIngestStore(db)
    store.store_batch("p09/l04", recs(1, 3), 1)
    store.store_batch("p09/l04", recs(7, 9), 1)
    store.close()
    assert main(["--db", str(db), "--report"]) == 0  # a report needs no broker
    out = capsys.readouterr().out
    assert "p09/l04\tcount=6\tcontiguous=3\tgaps=4-6" in out


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main(["--broker", "nohostport"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("argparse accepted a bad broker")
    assert parse_broker("10.0.0.1:1883") == ("10.0.0.1", 1883)


def test_unreachable_postgres_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--broker", "127.0.0.1:1", "--dsn", "host=127.0.0.1 port=1 connect_timeout=1"])
    assert code == 1
    assert "cannot open the store" in capsys.readouterr().err


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
    err = capsys.readouterr().err
    assert "needs psycopg, which is not installed" in err and "lane[pg]" in err
