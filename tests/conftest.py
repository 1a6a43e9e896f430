"""Session-wide fixtures: one real mosquitto and one real PostgreSQL per test session (see
pg_server: a throwaway cluster when none answers on 5432), unique topics per test."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from disk_kit import ext4_image, small_tmpfs
from hypothesis import settings
from mqtt_kit import collected
from pg_server import own_database, postgres_server
from port_kit import claim_worker_block

from barrier.messages import LaneStatus
from lane.log import JsonFormatter
from lane.wire import topics
from sim.broker import Mosquitto, running_mosquitto

# No per-example deadline (hypothesis' default is 200 ms): it is a wall-clock assert, and under
# `make test`'s workers on shared cores a pure example can take longer (seen: a used-token
# decode test failing "Flaky" under load, passing alone with the same seed).
settings.register_profile("lane", deadline=None)
settings.load_profile("lane")


def pytest_configure(config: pytest.Config) -> None:
    # Servers' ports from this worker's own block: free_port (sim.broker) could otherwise hand
    # two workers one port.
    claim_worker_block()


@pytest.fixture(autouse=True)
def _lane_logging_undone() -> Iterator[None]:
    """A CLI's main() run in-process sets up the lane's JSON logging on the stdout of that test
    (pytest's capture, closed afterwards): every later log line would fail to write and print a
    'Logging error' traceback. Remove such handlers and restore the level after each test."""
    root = logging.getLogger()
    level = root.level
    yield
    root.handlers[:] = [h for h in root.handlers if not isinstance(h.formatter, JsonFormatter)]
    root.setLevel(level)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    with running_mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A superuser DSN (without dbname) of this session's PostgreSQL; never skipped."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A DSN of a new database of this test's own, dropped afterwards."""
    with own_database(pg_server) as dsn:
        yield dsn


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/lane` (a test lane's data directory) as an 8 MiB tmpfs of its own."""
    with small_tmpfs(tmp_path / "lane") as target:
        yield target


@pytest.fixture
def ext4_fs(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/lane` (a test lane's data directory) as an ext4 image on a loop device of its
    own, to freeze (disk_kit.frozen)."""
    with ext4_image(tmp_path / "lane") as target:
        yield target


@pytest.fixture
def lane_id() -> str:
    """A lane id unique to the test, so topics never collide between tests."""
    return f"t{uuid.uuid4().hex[:6]}/l01"


@pytest.fixture
async def lane_statuses(mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[list[LaneStatus]]:
    """Every retained status the lane `lane_id` publishes, in order, as an operator sees them."""
    topic = topics.status(lane_id)
    async with collected(mosquitto, f"w-{lane_id}", topic, LaneStatus.decode) as statuses:
        yield statuses
