"""`build(config)`: everything is opened before the shell is constructed, a failure half-way
closes what was opened, and `aclose()` closes it all again (twice is harmless)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lane.config import LaneConfig, parse_config
from lane.daemon import build
from scanner.sources import PushSource
from uplink.queue import QueueError, RecordQueue


def config_for(data: Path) -> LaneConfig:
    return parse_config({"lane": {"id": "p01/l01", "data_dir": str(data)}})


def open_wal_files(data: Path) -> list[str]:
    # A WAL database keeps its -wal file while a connection is open; a clean close removes it.
    return sorted(p.name for p in data.glob("*-wal"))


async def test_a_failure_half_way_closes_what_was_opened(tmp_path: Path) -> None:
    data = tmp_path / "lane"
    data.mkdir()
    RecordQueue(data / "queue.sqlite3", "p01/l99", 10**6).close()  # another lane's queue
    with pytest.raises(QueueError, match="p01/l99"):
        await build(config_for(data), source=PushSource())
    assert (data / "replay.sqlite3").exists() and (data / "payments.sqlite3").exists()
    assert open_wal_files(data) == []


async def test_aclose_closes_everything_build_opened(tmp_path: Path) -> None:
    data = tmp_path / "lane"
    daemon = await build(config_for(data), source=PushSource())
    assert open_wal_files(data) != []  # the stores are open
    await daemon.aclose()
    assert open_wal_files(data) == []
    with pytest.raises(QueueError, match="queue closed"):
        await daemon.queue.backlog()
    await daemon.aclose()  # twice is harmless


async def test_the_replay_store_gets_the_lanes_skew_and_token_cap(tmp_path: Path) -> None:
    config = parse_config(
        {
            "lane": {"id": "p01/l01", "data_dir": str(tmp_path / "lane")},
            "auth": {"skew_s": 10, "max_token_lifetime_s": 120},
        }
    )
    daemon = await build(config, source=PushSource())
    try:
        now = 1_800_000_000.0
        daemon.replay.mark_remote("far", int(now) + 86_400 * 365, "p01/l02", now=now)
        used = daemon.replay.get("far")
        assert used is not None and used.exp == int(now) + 130
    finally:
        await daemon.aclose()
