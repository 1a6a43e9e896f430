"""Every benchmark in bench/ run small, so that none breaks unseen between two `make bench`.

Each script runs through its own entry point as `make bench` runs it (`python -m bench.NAME`),
in a process of its own, with the tiny sizes below. It must exit 0 and print its figures: the
lines that carry them must be there (their values are not looked at; timing is not a test's
business, docs/ keeps the full-size figures). The MQTT scripts start their own mosquitto, as
under `make bench`; the PostgreSQL ones get a database of their own on this session's server
and must leave it as they found it (no schema, no table).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
DSN = "{dsn}"  # in a script's arguments: the DSN of the test's own database
TIMEOUT_S = 180
# Mostly waiting (process starts, windows of wall time): these start together with the
# module's first smoke run, and the others run one at a time meanwhile.
AHEAD = ("plaza", "sim")
# Not benchmarks of their own: what runs them is smoke-run.
HELPERS = {
    "__init__": "the package",
    "args": "the command line every benchmark shares",
    "lane_child": "the lane processes of bench.plaza and sim",
    "proc": "what /proc says of a benchmark's processes",
}


@dataclass(frozen=True)
class Smoke:
    args: str  # the command line after `python -m bench.NAME`
    figures: tuple[str, ...]  # patterns, each must match a line of the output

    @property
    def needs_postgres(self) -> bool:
        return DSN in self.args


RATE = r"\d+ /s +[\d.]+ us each"
PCT = r"p50 +[\d.]+ ms +p99 +[\d.]+ ms"
# Each runs in a few seconds at most on the shared 2-core machine; the whole module in ~60 s.
SMOKES = {
    "auth": Smoke(
        "--tokens 5 --replays 5 --payments 3",
        (
            rf"^  accepted \(full verification\) +{RATE}$",
            rf"^  garbage \(refused at decode\) +{RATE}$",
            rf"^  check_and_mark, first use \(fsync\) +{RATE}$",
            rf"^  overhead +{PCT}$",
        ),
    ),
    "auth_online": Smoke(
        "3 1",
        (rf"^  decision +{PCT}$", rf"^  acquirer +{PCT}$", rf"^  overhead +{PCT}$"),
    ),
    "barrier": Smoke(
        "--count 10",
        (
            r"^send\(\) → ack received +p50 +[\d.]+ ms",
            r"^raw MQTT 5 QoS 1 req/rep +p50 +[\d.]+ ms",
            r"^command / raw request-reply at p50: [\d.]+x",
            r"^command / raw request-reply at p99: [\d.]+x",
        ),
    ),
    "camera": Smoke(
        "--frames 3 --new-scenes 2 --loop-seconds 0.3 --scanner-seconds 0.3",
        (
            r"^first frame \(background, noise fields, phone\): \d+ ms$",
            r"^hard +new scene +p50 +[\d.]+ ms +p95 +[\d.]+ ms$",
            r"^30 fps loop: \d+ frames in [\d.]+ s, dropped \d+, CPU [\d.]+% of one core$",
            r"^idle booth, read  : \d+ frames at 10 fps, CPU [\d.]+% of one core, [\d.]+ ms, "
            r"[\d.]+ voluntary and [\d.]+ involuntary context switches a frame$",
        ),
    ),
    "console": Smoke(
        "--lanes 2 --seconds 60",
        (
            r"^encode one health message +\d+ +\d+ +\d+ bytes$",
            r"^console snapshot, 2 lanes +\d+ +\d+ +\d+ KiB JSON, \d+ openings$",
        ),
    ),
    "first_look": Smoke(
        "--scenes 2 --frames 3 --empty 4 --held 4 --before 2 --conditions clear,hard "
        "--gate-conditions hard --sticker-conditions hard",
        (
            r"^\| sim cab window, night \| [\d.]+ \|.* \| \*\*[\d.]+x\*\* \|",
            r"^\| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \*\*[\d.]+x\*\* \| \*\*[\d.]+x\*\* \|$",
            r"^\| clear \| v2 \| 5-L \| cascade \(default\) \| [\d.]+% \| \*\*[\d.]+%\*\* \|",
            r"^\| hard \| v1 \| on \| [\d.]+% \| \*\*[\d.]+%\*\* \| \d+/\d+ \| \d+ \|$",
            r"^\| \+ thumb only \| [\d.]+% \| \*\*[\d.]+%\*\* \| [\d.]+% \| \*\*[\d.]+%\*\* \|$",
            r"^\| hard \| cascade \(default\) \| \*\*[\d.]+%\*\* \| [\d.]+% \| \*\*[\d.]+%\*\* \|$",
            r"^\| cab window \+ sticker, day \| [\d.]+ \|.*\*\*[\d.]+x\*\* \| [\d.]+x \|",
        ),
    ),
    "handoff": Smoke(
        "--vehicles 2",
        (
            r"^  frame → ack at the lane +p50 +[\d.]+",
            r"^  sum of the raw steps' p50s +[\d.]+ ms$",
            r"^frame → ack p50 / sum of raw steps: [\d.]+x",
            r"^frame → ack p99 / sum of raw steps: [\d.]+x",
            r"^  append, then served +p50 +[\d.]+ .* [\d.]+x the append alone \(mean [\d.]+x\)$",
        ),
    ),
    "networks": Smoke("5", (rf"^  alipay +{PCT}$", rf"^  wechatpay +{PCT}$")),
    "peer_messages": Smoke(
        "--messages 20",
        (
            r"^  seal +[\d.]+ us +raw sign +[\d.]+ us +[\d.]+x$",
            r"^  open +[\d.]+ us +raw verify +[\d.]+ us +[\d.]+x$",
        ),
    ),
    "plaza": Smoke(
        "--lanes 2 --seconds 1 --anchor-seconds 1 --fps 5 --warm-up 0",
        tuple(
            rf'^\{{"run": "{run}", "lanes": \d+, .*"token_ms": .*"p99_vs_one_lane": '
            for run in (
                "1 lane",
                "2 lanes, one process",
                "2 lanes, one process each",
                "lane sim --lane-processes, 1 lane",
                "lane sim --lane-processes, 2 lanes",
            )
        ),
    ),
    "reconcile": Smoke(
        "1000 10",
        (r"^  match +\d+ ms$", r"^  total +\d+ ms; \d+ planted, all found$"),
    ),
    "road": Smoke(
        "--passes 5 --fares 5 --tickets 5 --trips 20 --plazas 2 --vehicles 1 --speed 240",
        (
            rf"^  accepted +{RATE}$",
            rf"^  a plain trip +{RATE}$",
            rf"^  decode \(the printer emulator\) +{RATE}$",
            r"^trip_ledger over \d+ records: \d+ ms",
            r"^lane sim --road 2 .*: \d+ s wall, .*reconciled=True",
            r"^  ticket held up -> fare priced p50 \d+ ms, p99 \d+ ms = \d+x / \d+x",
        ),
    ),
    "scan": Smoke(
        "--limit 8 --repeat 2",
        (
            r"^\| cascade \|( \d+/\d+ \|)+ \*\*\d+/8\*\* ",
            r"^\| deblur \| \d+ \| \d+ \| \d+ \| \(default\) \| [\d.]+ \|$",
            r"^- 1920 px wide: pyzbar / zxing = [\d.]+x on code frames, [\d.]+x on empty",
            r"^- \d+ results from 8 frames; put\(\) -> on_result on the loop: median [\d.]+ ms",
        ),
    ),
    "sim": Smoke(
        "--vehicles 2 --speed 20 --seconds 1 --warm-up 0 --fps 5 --lanes 1 --plaza-fps 5",
        (
            r'^  "daemon_cpu_pct_of_core": [\d.]+,$',
            r'^  "records_ingested": \d+$',
            r'^\{"run": "lane sim --lane-processes, 1 lanes", .*"p99_vs_one_lane": ',
            r'^  "capacity_vph": [\d.]+,$',
        ),
    ),
    "uplink": Smoke(
        "--backlog 200 --appends 20 --drain-lanes 2 --ingest 400 --singles 40 --rounds 1"
        " --worker-records 400 --lanes 2 --dsn {dsn}",
        (
            r"^enqueue \(durable, 20 appends\): p50 [\d.]+ ms",
            r"^decode: Record.decode [\d.]+ µs/record, .* -> [\d.]+x raw",
            r"^drain 200 backlog of 2 lane\(s\) .*\(SQLite\): .* -> pipelined [\d.]+x$",
            r"^drain 200 backlog of 2 lane\(s\) .*\(PostgreSQL\): .* -> pipelined [\d.]+x$",
            r"^workers PostgreSQL, 2 lanes, 400 records: .* 2 COPY processes$",
        ),
    ),
    "uplink_ingest": Smoke(
        "--ingest 400 --singles 40 --rounds 1 --worker-records 400 --lanes 2"
        " --trip-history 200 --dsn {dsn}",
        (
            r"^store SQLite, 100-record batches: store_batch .* -> [\d.]+x$",
            r"^lane trips \(open_trips\), SQLite: 200 closed trips .* -> [\d.]+x$",
            r"^lane trips \(open_trips\), PostgreSQL: 200 closed trips .* -> [\d.]+x$",
            r"^store PostgreSQL, 100-record batches: .* -> [\d.]+x COPY, [\d.]+x executemany$",
            r"^store PostgreSQL, 1-record batches \(20 lanes\): .* -> [\d.]+x COPY$",
            r"^store, 100-record batches of entries then their exits: .* -> [\d.]+x COPY$",
            r"^store, 100-record batches of exits then their entries: .* -> [\d.]+x COPY$",
            r"^workers PostgreSQL, CPU per record .* -> [\d.]+x$",
            r"^workers PostgreSQL, closed-road batches: .* -> [\d.]+x$",
            r"^write guard \(writable_by\) and a statement, pipelined: .* -> [\d.]+x$",
        ),
    ),
}


def test_every_benchmark_is_smoke_run() -> None:
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}
    assert scripts - HELPERS.keys() == SMOKES.keys()
    assert not any(SMOKES[name].needs_postgres for name in AHEAD)  # started without a database


class Run:
    """`python -m bench.NAME args` in a session of its own (on a timeout its whole process
    group is ended: its broker, lane processes and workers with it), output to files."""

    def __init__(self, name: str, args: str, folder: Path) -> None:
        self.name = name
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        argv = [sys.executable, "-m", f"bench.{name}", *shlex.split(args)]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=err, start_new_session=True
            )

    def finish(self) -> tuple[int, str, str]:
        """Its exit status, stdout and stderr, once it has ended."""
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.end()
            pytest.fail(f"bench.{self.name} still running after {TIMEOUT_S} s")
        return code, self.out.read_text(), self.err.read_text()

    def end(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def ahead(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Run]]:
    """The AHEAD benchmarks of this session's selection, started together at once."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == test_the_benchmark_runs_small_and_prints_its_figures.__name__
    }
    folder = tmp_path_factory.mktemp("bench-ahead")
    runs = {name: Run(name, SMOKES[name].args, folder) for name in AHEAD if name in selected}
    yield runs
    for run in runs.values():
        run.end()


def leftovers(dsn: str) -> list[str]:
    """Schemas and tables in the database besides what a new one holds."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%'"
            " AND nspname NOT IN ('public', 'information_schema')"
            " UNION ALL SELECT 'public.' || tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return sorted(str(row[0]) for row in found)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKES))
def test_the_benchmark_runs_small_and_prints_its_figures(
    name: str, ahead: dict[str, Run], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    smoke = SMOKES[name]
    dsn = str(request.getfixturevalue("pg_dsn")) if smoke.needs_postgres else ""
    args = smoke.args.replace(DSN, shlex.quote(dsn))
    run = ahead[name] if name in ahead else Run(name, args, tmp_path)
    code, out, err = run.finish()
    assert code == 0, f"bench.{name} exited {code}:\n{err[-4000:]}"
    missing = [p for p in smoke.figures if not re.search(p, out, re.MULTILINE)]
    assert not missing, f"bench.{name} did not print {missing}:\n{out[-4000:]}"
    if dsn:
        assert leftovers(dsn) == []
