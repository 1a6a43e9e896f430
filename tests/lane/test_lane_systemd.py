"""`lane run` as the service deploy/lane.service makes it, under a real systemd manager
(tests/systemd_kit.py boots one where systemd is not the init system, CI's machines
included): it reaches READY; its watchdog kills, and Restart= restarts, a lane whose event
loop is blocked; Restart=on-failure restarts a lane that crashes, not one that stopped
cleanly, and gives up on one that cannot start after StartLimitBurst= starts. The unit is the
shipped file itself, its sandbox included, with a drop-in replacing what ties it to an
installed machine (the `lane` user, /opt/lane, /etc/lane, /var/lib/lane) and a shorter
watchdog. Against the session's mosquitto and the device emulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from polling import eventually
from systemd_kit import CGROUP_PREFIX, Manager, booted_systemd, cgroup2_root, why_not
from test_lane_heal import LaneProcesses, lane_processes
from test_lane_watchdog import assert_hung_in_a_log_write, log_noise

from barrier.messages import LaneStatus
from sim.broker import Mosquitto

UNIT = Path(__file__).parents[2] / "deploy" / "lane.service"
pytestmark = pytest.mark.slow
WATCHDOG_S = 5  # the shipped 20 s, shorter: a loaded machine's pauses stay well below it
CAP_SYS_MODULE = 16  # linux/capability.h


def drop_in(rig: LaneProcesses, unit: Mapping[str, str] | None = None, **own: str) -> str:
    """The shipped unit's settings the test replaces, as an operator would (a drop-in): what
    ties it to an installed machine (the `lane` user, /opt/lane, /etc/lane, /var/lib/lane:
    an empty value resets a setting), the watchdog's interval; `own` ([Service]) and `unit`
    ([Unit]) besides."""
    work = rig.conf.parent
    settings = {
        "User": "", "Group": "", "SupplementaryGroups": "",
        "StateDirectory": "", "ConfigurationDirectory": "",
        "WorkingDirectory": str(work),
        # The test's files live under /tmp, which PrivateTmp= hides: bound into the private one.
        "BindPaths": str(work),
        # The test's Python may live in a home (pyenv's): homes hidden as a tmpfs, not made
        # inaccessible, so that it can be bound back; so may the checkout and its venv, or
        # they may be under /tmp (a CI clone), which PrivateTmp= hides: bound back too.
        "ProtectHome": "tmpfs",
        "BindReadOnlyPaths": " ".join(sorted({sys.base_prefix, sys.prefix, str(UNIT.parents[1])})),
        "WatchdogSec": str(WATCHDOG_S),
        "StandardOutput": f"append:{work / 'lane.log'}",
        "StandardError": f"append:{work / 'stderr.txt'}",
    }  # fmt: skip
    run = f"{sys.executable} -m lane run --config {rig.conf}"
    lines = ["[Unit]", *(f"{k}={v}" for k, v in (unit or {}).items())]
    lines += ["[Service]", "ExecStart=", f"ExecStart={run}"]  # the first empties the list
    return "\n".join(lines + [f"{k}={v}" for k, v in (settings | own).items()]) + "\n"


@pytest.fixture(scope="module")
async def systemd(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Manager]:
    async with booted_systemd(tmp_path_factory.mktemp("systemd")) as manager:
        yield manager


@pytest.fixture
async def rig(tmp_path: Path, mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[LaneProcesses]:
    """The lane's config (its data directory in `tmp_path`), the device emulator."""
    async with lane_processes(tmp_path, mosquitto, lane_id, tmp_path / "data") as processes:
        yield processes


@contextlib.asynccontextmanager
async def lane_unit(
    systemd: Manager,
    rig: LaneProcesses,
    *how: str,
    unit_settings: Mapping[str, str] | None = None,
    **own: str,
) -> AsyncIterator[str]:
    """deploy/lane.service, as it is, installed under a name of its own with the test's
    drop-in, and started: `systemctl start` returns once READY=1 came (Type=notify), or at
    once with `how` --no-block. Stopped on the way out."""
    unit = f"lane-test-{uuid.uuid4().hex[:8]}.service"
    (systemd.units / unit).write_bytes(UNIT.read_bytes())
    (systemd.units / f"{unit}.d").mkdir()
    (systemd.units / f"{unit}.d" / "test.conf").write_text(drop_in(rig, unit_settings, **own))
    await systemd.run("systemctl", "daemon-reload")
    try:
        await systemd.run("systemctl", "start", *how, unit)
        yield unit
    finally:
        await systemd.exec("systemctl", "stop", unit)  # stopped already, when it passed


async def unit_is(systemd: Manager, unit: str, **wanted: str) -> bool:
    return await systemd.show(unit, *wanted) == wanted


class Journal:
    """The lane's stdout as a FIFO that journald stands for: unread, it fills (64 KiB) and the
    lane's next log line blocks its event loop; `read()` drains it from then on."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._reading = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # A writer of its own, never used: no end of file (and no busy reader) between lanes.
        self._writing = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self.lines = bytearray()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._reading, 65536):
                self.lines += chunk

    def read(self) -> None:
        asyncio.get_running_loop().add_reader(self._reading, self._drain)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._reading)
        os.close(self._writing)
        os.close(self._reading)


async def test_the_unit_is_ready_and_its_watchdog_restarts_a_lane_whose_loop_blocks(
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
    systemd: Manager,
    rig: LaneProcesses,
) -> None:
    """The loop blocks as it does when journald stops reading: the lane's stdout is full and
    the next log line's write() waits on the loop."""
    work = rig.conf.parent
    journal = Journal(work / "journal")
    try:
        async with lane_unit(systemd, rig, StandardOutput=f"file:{journal.path}") as unit:
            # The start job is done, so READY=1 came (Type=notify).
            first = await systemd.show(unit, "ActiveState", "SubState", "MainPID", "NRestarts")
            assert first | {"MainPID": ""} == {
                "ActiveState": "active", "SubState": "running", "MainPID": "", "NRestarts": "0"
            }  # fmt: skip
            await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=30)
            await eventually(
                lambda: unit_is(systemd, unit, StatusText="serving: ready"),
                every=0.2,
                what="the lane's status in systemctl status",
            )
            seen = len(lane_statuses)
            async with log_noise(mosquitto, lane_id):
                await eventually(
                    lambda: unit_is(systemd, unit, NRestarts="1"),
                    within=60,
                    every=0.2,
                    what="the watchdog's kill and the restart",
                )
            journal.read()  # journald reads again: the restarted lane logs, and serves
            await eventually(lambda: any(s.state == "idle" for s in lane_statuses[seen:]), 30)
            again = await systemd.show(unit, "ActiveState", "MainPID", "NRestarts")
            assert again["ActiveState"] == "active" and again["MainPID"] != first["MainPID"]
            assert again["NRestarts"] == "1"
    finally:
        journal.close()
    log = systemd.log()
    assert f"{unit}: Watchdog timeout (limit {WATCHDOG_S}s)!" in log, log
    assert f"{unit}: Failed with result 'watchdog'." in log, log
    assert_hung_in_a_log_write(work / "stderr.txt")
    assert b'"event":"lane starting"' in journal.lines  # the restarted lane's, read


async def test_the_unit_restarts_a_lane_that_crashes_and_not_one_that_stops_cleanly(
    lane_statuses: list[LaneStatus], systemd: Manager, rig: LaneProcesses
) -> None:
    async with lane_unit(systemd, rig) as unit:
        first = await systemd.show(unit, "MainPID")
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=30)
        seen = len(lane_statuses)
        await systemd.run("systemctl", "kill", "--signal=SIGKILL", unit)  # a crash
        await eventually(
            lambda: unit_is(systemd, unit, ActiveState="active", NRestarts="1"),
            within=30,
            every=0.2,
            what="the crashed lane restarted",
        )
        assert await systemd.show(unit, "MainPID") != first
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses[seen:]), 30)
        # SIGTERM not from systemctl stop (someone's kill): the lane stops cleanly, exit 0,
        # and the unit goes dead, not into a restart.
        await systemd.run("systemctl", "kill", "--signal=SIGTERM", unit)
        await eventually(
            lambda: f"{unit}: Deactivated successfully." in systemd.log(),
            within=30,
            what="the lane stopped and left stopped",
        )
        assert lane_statuses[-1].state == "offline"  # said on its way out
    log = systemd.log()
    assert f"{unit}: Main process exited, code=killed, status=9/KILL" in log, log
    assert f"{unit}: Scheduled restart job, restart counter is at 1." in log, log
    assert "restart counter is at 2" not in log, log


async def test_the_unit_gives_up_on_a_lane_that_cannot_start_and_restarts_once_fixed(
    tmp_path: Path, lane_statuses: list[LaneStatus], systemd: Manager, rig: LaneProcesses
) -> None:
    """A broken config: `lane run` exits 2 at once, and systemd tries again until its start
    limit (StartLimitBurst= starts in StartLimitIntervalSec=), then leaves the unit failed.
    Fixed, `reset-failed` and `restart` start it (docs/operations.md, "What needs a restart")."""
    good = rig.conf.read_text()
    rig.conf.write_text(good + "[lane]\n")  # a table twice: not valid TOML
    burst = int(re.findall(r"^StartLimitBurst=(\d+)$", UNIT.read_text(), re.M)[0])
    # The shipped 2 s between starts, shorter, and the starts counted over 10 min, not 1:
    # the same 10 starts, sooner, and all counted however slow a loaded machine is.
    limits = {"StartLimitIntervalSec": "10min"}
    async with lane_unit(
        systemd, rig, "--no-block", unit_settings=limits, RestartSec="100ms"
    ) as unit:
        await eventually(
            lambda: unit_is(systemd, unit, ActiveState="failed", NRestarts=str(burst)),
            # Ten starts of a Python program: a minute on a quiet machine, several on a loaded one.
            within=600,
            every=0.2,
            what="systemd giving up on the lane",
        )
        assert lane_statuses == []  # it never came up
        rig.conf.write_text(good)
        # Within StartLimitIntervalSec= of giving up a restart is refused, even by hand:
        # reset-failed forgets the starts.
        code, _, err = await systemd.exec("systemctl", "restart", unit)
        assert code != 0 and "failed" in err
        await systemd.run("systemctl", "reset-failed", unit)
        await systemd.run("systemctl", "restart", unit)  # returns once READY=1 came
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=30)
    log = systemd.log()
    assert log.count(f"{unit}: Main process exited, code=exited, status=2/") == burst, log
    assert f"{unit}: Start request repeated too quickly." in log, log
    assert (tmp_path / "stderr.txt").read_text().count("not valid TOML") == burst


def bounding_set(pid: int) -> int:
    """The capability bounding set of process `pid`, as a mask."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(
        next(v for k, v in (ln.split(":", 1) for ln in status.splitlines()) if k == "CapBnd"), 16
    )


async def test_the_manager_loads_no_kernel_module_into_the_machine(systemd: Manager) -> None:
    """The machine's kernel is shared: the manager (and whatever it starts) has no
    CAP_SYS_MODULE to bound it, so its early `autofs4` load (which `container=` does not skip)
    is not even tried."""
    assert not bounding_set(systemd.pid) & (1 << CAP_SYS_MODULE), hex(bounding_set(systemd.pid))
    assert "autofs4" not in systemd.log(), systemd.log()


# Tests that boot a systemd and wait, in a process of their own (`argv`: their directory, tests/).
BOOTED_AND_WAITING = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from systemd_kit import booted_systemd

async def main() -> None:
    async with booted_systemd(Path(sys.argv[1])) as manager:
        print(manager.pid, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def gone(pid: int) -> bool:
    """No such process (or only its exit status left)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_tests_killed_outright_leave_no_systemd_behind(tmp_path: Path) -> None:
    """Tests killed with SIGKILL (a CI job's timeout), where no `finally` runs, left their
    systemd running, with every unit it ran, and its cgroup."""
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    tests = Path(__file__).parents[1]
    (tmp_path / "killed").mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BOOTED_AND_WAITING, str(tmp_path / "killed"), str(tests),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    manager = int(await asyncio.wait_for(proc.stdout.readline(), 60))
    proc.kill()
    await proc.wait()
    try:
        await eventually(lambda: gone(manager), within=30, what="the manager gone with the tests")
    finally:
        if not gone(manager):  # failed: not left running after the test either
            os.kill(manager, signal.SIGKILL)
    root = cgroup2_root()
    assert root is not None
    (tmp_path / "next").mkdir()
    async with booted_systemd(tmp_path / "next"):  # the next boot removes the dead one's cgroup
        assert not list(root.glob(f"{CGROUP_PREFIX}{proc.pid}-*"))
