"""docs/quickstart.md, run exactly as written.

Every `sh` block of the page is run in order, line by line, in a fresh folder that holds the
checkout's `deploy/` (the page starts in the root of a checkout). The `sh install` block is
what `make test` has already done. Two substitutions only: the test's own broker port for 1883
(on the command lines, and in the copied `lane.toml`), and `lane` from this test's venv. The
commands the page runs "each in its own terminal" run in the background until the page says
Ctrl-C; the report command is repeated until it shows the record (a person reads `lane watch`
first), bounded.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.broker import Mosquitto, running_mosquitto

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "quickstart.md"
# Commands that serve until Ctrl-C (the page's four terminals).
SERVING = ("lane device --emulate", "lane watch", "lane ingest --broker", "lane run")
REPORT = "lane ingest --db backoffice.sqlite3 --report"


def steps(page: str) -> list[str]:
    """The command lines of every `sh` block, in order; comments and blank lines dropped."""
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", page, flags=re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A broker of the test's own: the page's lane id is fixed (p01/l01)."""
    with running_mosquitto() as mosquitto:
        yield mosquitto


def test_the_page_has_the_steps_this_test_knows() -> None:
    commands = steps(PAGE.read_text())
    assert commands[0] == "mkdir -p first-lane/camera"
    assert sum(c.startswith(SERVING) for c in commands) == 4
    assert commands[-1] == REPORT


@pytest.mark.slow
def test_the_quickstart_serves_one_vehicle(tmp_path: Path, broker: Mosquitto) -> None:
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cwd = tmp_path
    serving: list[tuple[str, subprocess.Popen[str], Path]] = []
    address = f"{broker.host}:{broker.port}"
    try:
        for written in steps(PAGE.read_text()):
            command = written.replace("127.0.0.1:1883", address)
            argv = shlex.split(command)
            if argv[0] == "cd":
                cwd = cwd / argv[1]
            elif command.startswith(SERVING):
                log = cwd / f"{argv[1]}.out"
                with log.open("w") as out:
                    proc = subprocess.Popen(
                        argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
                    )
                serving.append((command, proc, log))
            elif command == REPORT:
                wait_served(serving)
                report = poll_report(argv, cwd, env, serving)
                assert re.fullmatch(
                    r"p01/l01\tcount=1\tepochs=1\n"
                    r"  epoch=[0-9a-f-]{36}\tbase=0\tcontiguous=1\tmax_seq=1\tgaps=none\n"
                    r"conflicts=0\n",
                    report,
                )
            else:
                done = subprocess.run(
                    argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
                )
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                if argv[:2] == ["cp", "deploy/quickstart.toml"]:
                    config = cwd / argv[2]
                    text = config.read_text()
                    config.write_text(text.replace("port = 1883", f"port = {broker.port}"))
                if argv[:3] == ["lane", "token", "issue"]:
                    assert done.stderr.startswith("valid 900 s, until ")
                if argv[:2] == ["lane", "check-config"]:
                    assert done.stdout.endswith("lane.toml: OK\n")
    finally:
        codes = stop_all(serving)
    assert codes == {command: 0 for command, _, _ in serving}
    watched = next(log for command, _, log in serving if command.startswith("lane watch"))
    lines = watched.read_text()
    assert '"op":"open"' in lines and '"op":"close"' in lines
    assert "uplink/p01/l01/acks" in lines
    run_log = next(log for command, _, log in serving if command.startswith("lane run"))
    assert '"level":"error"' not in run_log.read_text()


def wait_served(serving: list[tuple[str, subprocess.Popen[str], Path]]) -> None:
    """What the person waits for in `lane watch`: the barrier opened, then closed again."""
    watched = next(log for command, _, log in serving if command.startswith("lane watch"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after_close = watched.read_text().partition('"op":"close"')[2]
        if 'barrier/state {"v":1,"state":"closed"' in after_close:
            return
        time.sleep(0.2)
    tails = {command: log.read_text()[-2000:] for command, _, log in serving}
    raise AssertionError(f"the vehicle was not served: {tails}")


def poll_report(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    serving: list[tuple[str, subprocess.Popen[str], Path]],
) -> str:
    """Run the report until the record is there (bounded); say what the lane did if not."""
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        if (cwd / "backoffice.sqlite3").exists():
            done = subprocess.run(
                argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
            )
            out = done.stdout
            if "count=1" in out:
                return out
        time.sleep(0.2)
    tails = {command: log.read_text()[-2000:] for command, _, log in serving}
    raise AssertionError(f"no record in the back office: {out!r}\n{tails}")


def stop_all(serving: list[tuple[str, subprocess.Popen[str], Path]]) -> dict[str, int | None]:
    """Ctrl-C to each, the lane first (as a person would stop it before its device)."""
    for _, proc, _ in reversed(serving):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    codes: dict[str, int | None] = {}
    for command, proc, _ in serving:
        try:
            codes[command] = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[command] = proc.wait()
    return codes
