"""free_port (sim.broker) under pytest-xdist: each worker hands out ports from its own block
(tests/port_kit.py), each port once in turn, never one that something listens on, so two
workers starting servers at the same moment cannot both be given one port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from port_kit import FIRST, LAST, worker_block

from sim.broker import PORTS_ENV, BrokerError, free_port, port_block

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
TESTS = Path(__file__).parent


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """A server on `port`, as the one the port was handed to."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield s


def free_run(length: int) -> range:
    """`length` consecutive ports of the workers' range that nothing holds right now."""
    for first in range(FIRST, LAST - length, length):
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + length):
                    held.enter_context(listening(port))
            except OSError:
                continue
            return range(first, first + length)
    pytest.skip("no free run of ports to test with")


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_each_worker_has_its_own_block_below_the_ephemeral_ports(workers: int) -> None:
    names = [f"gw{i}" for i in range(workers)]
    blocks = [port_block(worker_block(name, workers)) for name in names]
    taken = [port for block in blocks for port in block]
    assert len(taken) == len(set(taken)), "two workers share a port"
    assert min(taken) >= FIRST and max(taken) <= LAST
    assert len(blocks[0]) >= (LAST - FIRST + 1) // workers
    assert port_block(worker_block(None, 1)) == range(FIRST, LAST + 1)
    if EPHEMERAL.exists():
        low = int(EPHEMERAL.read_text().split()[0])
        assert max(taken) < low, f"the kernel's ephemeral ports start at {low}"


def test_ports_come_from_the_block_each_once_and_never_one_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    block = free_run(4)
    monkeypatch.setenv(PORTS_ENV, f"{block.start}-{block.stop - 1}")
    with contextlib.ExitStack() as servers:
        servers.enter_context(listening(block.start + 1))  # someone else's server
        handed = []
        for _ in range(3):
            port = free_port()
            handed.append(port)
            servers.enter_context(listening(port))  # the server it was handed to takes it
        assert sorted(handed) == [block.start, block.start + 2, block.start + 3]
        with pytest.raises(BrokerError, match=PORTS_ENV):
            free_port()


def test_a_port_handed_out_is_not_handed_out_again_before_the_block_is_used_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not yet bound by its server, a port handed out is still not handed out again."""
    block = free_run(3)
    monkeypatch.setenv(PORTS_ENV, f"{block.start}-{block.stop - 1}")
    assert sorted(free_port() for _ in range(3)) == list(block)


def test_a_malformed_block_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PORTS_ENV, "20000")
    with pytest.raises(BrokerError, match=f"{PORTS_ENV} must be FIRST-LAST"):
        free_port()


def test_without_a_block_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PORTS_ENV, raising=False)
    with listening(free_port()):
        pass


WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from port_kit import claim_worker_block
from sim.broker import free_port
claim_worker_block()
print(json.dumps([free_port() for _ in range(50)]))
"""


def test_two_workers_starting_at_once_never_get_one_port() -> None:
    """Two processes as the session's two workers, each handing out 50 ports at once and
    binding none of them: no port in common, each from its own block."""
    procs = {}
    for worker in ("gw0", "gw1"):
        env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": "2"}
        procs[worker] = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(TESTS)], env=env, stdout=subprocess.PIPE, text=True
        )
    ports = {}
    for worker, proc in procs.items():
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        ports[worker] = json.loads(out)
        assert len(set(ports[worker])) == 50
        assert set(ports[worker]) <= set(port_block(worker_block(worker, 2)))
    assert not set(ports["gw0"]) & set(ports["gw1"])


def test_this_session_hands_out_its_workers_block() -> None:
    """The session's conftest claimed this worker's block (or the whole range in one process)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    assert free_port() in port_block(worker_block(worker, workers))
