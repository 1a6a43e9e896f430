"""Fixtures of the lane tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sim.broker import Mosquitto, free_port


@pytest.fixture
async def private_broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    """A broker of the test's own, to restart without disturbing the other tests."""
    work = tmp_path / "broker"
    work.mkdir()
    broker = Mosquitto(port=free_port(), workdir=work)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
