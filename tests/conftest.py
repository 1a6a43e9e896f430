"""Session-wide fixtures: one real mosquitto per test session, unique topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sim.broker import Mosquitto, running_mosquitto


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    with running_mosquitto() as broker:
        yield broker


@pytest.fixture
def lane_id() -> str:
    """A lane id unique to the test, so topics never collide between tests."""
    return f"t{uuid.uuid4().hex[:6]}/l01"
