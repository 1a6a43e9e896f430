"""A private Mosquitto broker run as a child process (simulator and tests)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class BrokerError(RuntimeError):
    """Mosquitto could not be found or did not start."""


# A block of ports ("FIRST-LAST") this process hands out servers' ports from, set by a process
# that starts servers beside others doing the same (each pytest-xdist worker of the test
# session, tests/port_kit.py): the kernel's port 0 can hand a port just probed and let go by
# one process to another before either server has bound it; disjoint blocks cannot.
PORTS_ENV = "LANE_PORTS"
_cursor: dict[range, int] = {}  # the block's next port to try
_cursor_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server about to start: one of the
    `LANE_PORTS` block when that is set (each port once in turn, from a random place in it, so
    another session given the same block rarely tries the same port at the same moment),
    else whatever the kernel picks."""
    block = os.environ.get(PORTS_ENV)
    if not block:
        return _bound_to(0)
    ports = port_block(block)
    with _cursor_lock:
        start = _cursor.get(ports, random.randrange(ports.start, ports.stop))
        for i in range(len(ports)):
            port = ports.start + (start - ports.start + i) % len(ports)
            with contextlib.suppress(OSError):  # taken: by our servers or someone else's
                _bound_to(port)
                _cursor[ports] = port + 1 if port + 1 < ports.stop else ports.start
                return port
    raise BrokerError(f"no free port left in {PORTS_ENV}={block}")


def port_block(text: str) -> range:
    """`FIRST-LAST` (inclusive) as a range, refused with the variable's name when malformed."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and 0 < int(first) <= int(last) < 65536):
        raise BrokerError(f"{PORTS_ENV} must be FIRST-LAST within 1..65535, not {text!r}")
    return range(int(first), int(last) + 1)


def _bound_to(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        bound: int = s.getsockname()[1]
        return bound


def find_mosquitto() -> str:
    candidates = (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    raise BrokerError("mosquitto not found: install it (apt-get install -y mosquitto)")


PR_SET_PDEATHSIG = 1
# Loaded here, not in the child: between fork and exec only a plain foreign call is safe.
_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6") if sys.platform == "linux" else None
)


def _die_with_parent() -> None:
    """Linux: the broker gets SIGTERM when the thread that started it dies, even by SIGKILL,
    so a killed simulator or test run leaves no broker behind. (Started as root, mosquitto
    drops to its own user, which clears this: a killed root run can still leave one.)"""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Mosquitto:
    """One mosquitto process listening on 127.0.0.1:port, configured from a temporary file."""

    port: int
    workdir: Path
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self, timeout: float = 10.0) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            "max_queued_messages 100000\n"
            # Without it every small command and ack waits ~40 ms for a delayed TCP ACK.
            "set_tcp_nodelay true\n"
            f"{self.extra_config}\n"
        )
        log = (self.workdir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no allocation
            # Its own session: a Ctrl-C at the terminal stops the simulator, which then stops
            # the broker last, instead of the broker dying under a lane that is shutting down.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self.process.returncode}: "
                    f"{(self.workdir / 'mosquitto.log').read_text(errors='replace')[-2000:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(self.address, 0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its ACL file again; its clients stay connected."""
        if self.process is None or self.process.poll() is not None:
            raise BrokerError("mosquitto is not running: nothing to reload")
        self.process.send_signal(signal.SIGHUP)


def acl_all_but(denied: Iterable[str]) -> str:
    """An ACL file's text for anonymous clients: every topic, read and write, but `denied`
    (neither; mosquitto weighs denials first)."""
    return "".join(f"topic deny {topic}\n" for topic in sorted(denied)) + "topic readwrite #\n"


def acl_config(acl: Path) -> str:
    """The config lines that make mosquitto obey the ACL file `acl`. Started as root it reads
    the file after dropping to its own user, which cannot read a private work dir: it stays
    root then."""
    return f"acl_file {acl}\n" + ("user root\n" if os.geteuid() == 0 else "")


@contextlib.contextmanager
def running_mosquitto(port: int | None = None, extra_config: str = "") -> Iterator[Mosquitto]:
    with tempfile.TemporaryDirectory(prefix="lane-mosquitto-") as tmp:
        broker = Mosquitto(port=port or free_port(), workdir=Path(tmp), extra_config=extra_config)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()
