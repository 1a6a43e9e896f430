"""The lane process supervisor against real child processes: a crashed child is restarted, a
child that keeps failing is given up, a clean exit rests, and stopping leaves nothing running
(SIGTERM, then SIGKILL for a child that ignores it)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sim.supervisor import Supervisor

# Crashes on its first run (no marker yet), then says it is up and runs until stopped.
CRASH_ONCE = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.write_text("crashed once")
    sys.exit(3)
print("up", flush=True)
time.sleep(600)
"""
DEAF = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Running (a reaped child has no /proc entry; a zombie would still say so)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "(zombie)" not in status


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polls a child process, bounded
            await asyncio.sleep(0.01)


async def test_a_crashed_child_is_restarted_and_stop_ends_it(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    async with Supervisor(lambda name, line: lines.append((name, line)), backoff_s=0.01) as sup:
        child = sup.start("p01/l01", [sys.executable, "-c", CRASH_ONCE, str(tmp_path / "m")])
        await until(lambda: ("p01/l01", "up") in lines)
        assert child.exits == [3] and child.restarts == 1 and not child.gave_up
        assert child.process is not None
        pid = child.process.pid
        assert alive(pid)
    assert not alive(pid), "leaving the supervisor stops every child"
    assert child.exits[-1] != 0 and child.restarts == 1  # stopped, not restarted again


async def test_a_child_that_keeps_failing_is_given_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lane.sim.supervisor")
    async with Supervisor(max_restarts=2, backoff_s=0.01) as sup:
        child = sup.start("bad", [sys.executable, "-c", "raise SystemExit(7)"])
        assert await sup.wait("bad") == 7
    assert child.exits == [7, 7, 7] and child.restarts == 2 and child.gave_up
    restarts = [r for r in caplog.records if r.getMessage() == "child failed: restarting"]
    assert [r.__dict__["retry_s"] for r in restarts] == [0.01, 0.02]  # each wait doubled


async def test_a_clean_exit_is_not_restarted() -> None:
    async with Supervisor(backoff_s=0.01) as sup:
        child = sup.start("done", [sys.executable, "-c", "print('bye')"])
        assert await sup.wait("done") == 0
    assert child.exits == [0] and child.restarts == 0


async def test_a_child_ignoring_sigterm_is_killed() -> None:
    lines: list[tuple[str, str]] = []
    sup = Supervisor(lambda name, line: lines.append((name, line)), grace_s=0.3)
    child = sup.start("deaf", [sys.executable, "-c", DEAF])
    await until(lambda: ("deaf", "up") in lines)
    assert child.process is not None
    pid = child.process.pid
    await sup.stop()
    assert child.exits == [-9] and not alive(pid)
