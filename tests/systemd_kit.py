"""A real systemd for the tests where it is not the init system (CI's machines and containers):
the distribution's /lib/systemd/systemd booted as PID 1 of PID, mount, cgroup and UTS
namespaces of its own, a system manager that runs real units, watchdog and Restart= included.

Its namespaces: a cgroup of its own (made under the cgroup2 hierarchy and removed afterwards) is
the root of its cgroup namespace, where it mounts cgroup2 and runs in unified mode; its /run is
a tmpfs of its own (its sockets, its transient units, $NOTIFY_SOCKET); /proc/sys is read-only to
it, so it changes no sysctl of the machine; `container=` in its environment makes it skip what
an init does to a whole machine; it starts without CAP_SYS_MODULE in its bounding set
(`setpriv`), so neither it (its early `autofs4`, which `container=` does not skip) nor a unit it
starts loads a module into the machine's kernel. The network and every other file are the
machine's: a unit reaches the session's mosquitto and runs this checkout's `lane run`. It loads
units from a directory of the test's own only (`$SYSTEMD_UNIT_PATH`), holding the targets a
service's default dependencies name, empty: nothing of the machine's units starts. Its log
(systemd[1]'s lines) goes to a pseudo-terminal standing for /dev/console, read into `log()`.
`systemctl` and `systemd-run` reach it through `nsenter` into its mount and PID namespaces.

It needs root (CI runs `make test` as root), `unshare`/`nsenter`/`setpriv` (util-linux),
systemd's binaries (`make test` installs the `systemd` package where missing) and a cgroup2
hierarchy; elsewhere the test is skipped, saying which is missing. Killing it on the way out
ends every process it started; so does the death of the tests' process itself (SIGKILL, where
no `finally` runs), whose empty cgroup the next boot removes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from polling import eventually

SYSTEMD = Path("/lib/systemd/systemd")
TOOLS = ("unshare", "nsenter", "setpriv", "mount", "systemctl", "systemd-run")
TARGET = "lane-test.target"  # what it boots to: nothing
CGROUP_PREFIX = "lane-test-systemd-"  # then the tests' process id and a random part
# The targets of a service's default dependencies (Requires=sysinit.target, After=basic.target,
# Conflicts=shutdown.target): empty, but there.
TARGETS = (TARGET, "sysinit.target", "basic.target", "shutdown.target")

# PID 1 of the new namespaces: the mounts above, then systemd in place of the shell.
BOOT = """set -e
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 tmpfs /run
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount --bind "$CONSOLE" /dev/console
exec setpriv --bounding-set=-sys_module -- env -i container=lane-test SYSTEMD_UNIT_PATH="$UNITS" \\
  PATH=/usr/sbin:/usr/bin:/sbin:/bin "$SYSTEMD" --unit="$TARGET" --log-target=console
"""


def cgroup2_root() -> Path | None:
    """Where this machine mounts the cgroup2 hierarchy (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified beside cgroup v1's controllers); None when it does not."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, target, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(target)
    return None


def why_not() -> str | None:
    """Why no systemd can be booted here; None when it can be tried."""
    if os.geteuid() != 0:
        return "a systemd of the test's own needs root (namespaces, mounts, cgroups)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not SYSTEMD.exists():
        missing.append(str(SYSTEMD))
    if missing:
        return f"no systemd to boot here: {', '.join(missing)} missing"
    if cgroup2_root() is None:
        return "no cgroup2 hierarchy mounted here for systemd's cgroup"
    return None


class Console:
    """A pseudo-terminal as the manager's /dev/console, drained by a thread (a full one would
    block systemd's next log line, and PID 1 with it)."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        self.path = os.ttyname(self._slave)
        self._read: list[bytes] = []
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError):  # EIO: every end of the terminal is closed
            while chunk := os.read(self.master, 65536):
                self._read.append(chunk)

    def text(self) -> str:
        return b"".join(self._read).decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        """Once the manager is gone: its last lines are read, then the terminal closed."""
        os.close(self._slave)
        self._thread.join(10)
        os.close(self.master)


class Manager:
    """The booted manager: `pid` as this machine sees it; `units` where it loads unit files
    from (`systemctl daemon-reload` after adding one)."""

    def __init__(self, pid: int, units: Path, console: Console) -> None:
        self.pid = pid
        self.units = units
        self._console = console

    def log(self) -> str:
        """systemd[1]'s lines so far (its journal, here)."""
        return self._console.text()

    async def exec(self, *command: str) -> tuple[int, str, str]:
        """`command` (systemctl, systemd-run) against this manager: exit code, stdout, stderr."""
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--target={self.pid}", "--mount", "--pid", *command,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def run(self, *command: str) -> str:
        """`command`'s stdout; failing, it says why and what the manager logged."""
        code, out, err = await self.exec(*command)
        if code != 0:
            raise AssertionError(
                f"{' '.join(command)}: exit {code}: {out.strip()} {err.strip()}\n"
                f"systemd's log:\n{self.log()}"
            )
        return out

    async def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show` of those properties of `unit`."""
        shown = await self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def _write_units(units: Path) -> None:
    units.mkdir()
    for target in TARGETS:
        (units / target).write_text(f"[Unit]\nDescription={target} (empty: lane tests)\n")


def _remove_stale_cgroups(root: Path) -> None:
    """The (empty) cgroups of tests' processes that died before removing theirs: named by
    their process id, so that another test session's, still running, is never touched."""
    for stale in root.glob(f"{CGROUP_PREFIX}*"):
        owner = stale.name.removeprefix(CGROUP_PREFIX).split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):  # its processes not all gone yet: next time
                _remove_cgroup(stale)


def _remove_cgroup(top: Path) -> None:
    """`top` and the cgroups systemd made under it, deepest first (all empty by now)."""
    for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        path.rmdir()
    top.rmdir()


@contextlib.asynccontextmanager
async def booted_systemd(workdir: Path) -> AsyncIterator[Manager]:
    """A systemd manager of its own, up (its target reached) while the block runs, then killed
    with every process it started. Skips the test where none can be booted (`why_not`)."""
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    root = cgroup2_root()
    assert root is not None
    _remove_stale_cgroups(root)
    cgroup = root / f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    cgroup.mkdir()
    units = workdir / "units"
    _write_units(units)
    console = Console()
    env = {
        "PATH": os.environ["PATH"],
        "CONSOLE": console.path,
        "UNITS": str(units),
        "SYSTEMD": str(SYSTEMD),
        "TARGET": TARGET,
    }
    said = workdir / "boot.txt"
    # The shell moves itself into the new cgroup, then becomes unshare; unshare's child is PID 1.
    # Should the tests' process die without its `finally` (SIGKILL), unshare is killed with it
    # (`--pdeathsig`), and PID 1 with unshare (`--kill-child`): nothing is left running.
    with said.open("wb") as out:
        boot = await asyncio.create_subprocess_exec(
            "sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec setpriv --pdeathsig=KILL -- '
            f'unshare --cgroup --pid --mount --uts --fork --kill-child --mount-proc '
            f'--propagation private sh -c "$0"',
            BOOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    children = Path(f"/proc/{boot.pid}/task/{boot.pid}/children")
    manager: Manager | None = None
    try:

        def systemd_pid() -> int | None:
            if boot.returncode is not None:  # the namespaces or the mounts were refused
                pytest.skip(f"cannot boot a systemd here: {said.read_text().strip()}")
            with contextlib.suppress(OSError):  # not forked yet, or gone again
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            return None

        pid = await eventually(systemd_pid, within=30, what="systemd as PID 1")
        manager = Manager(pid, units, console)

        async def running() -> bool:  # TARGET reached; before, its socket may not be there
            assert manager is not None
            return (await manager.exec("systemctl", "is-system-running"))[1].strip() == "running"

        await eventually(running, within=30, every=0.1, what="systemd up")
        yield manager
    finally:
        if boot.returncode is None:
            if manager is not None:
                os.kill(manager.pid, signal.SIGKILL)  # the kernel ends its namespace with it
            else:
                boot.kill()  # unshare, whose child follows it (--kill-child)
        await asyncio.wait_for(boot.wait(), 30)
        console.close()
        _remove_cgroup(cgroup)
