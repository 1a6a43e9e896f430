"""`build(config)`: everything is opened before the shell is constructed, a failure half-way
closes what was opened, and `aclose()` closes it all again (twice is harmless)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lane.auth.passes import pass_key
from lane.config import LaneConfig, parse_config
from lane.daemon import build
from lane.runner import Clocks
from scanner.sources import Frame, PushSource
from sim.camera import frame_for
from sim.codes import CodeFactory
from uplink.queue import QueueError, RecordQueue


def config_for(data: Path) -> LaneConfig:
    # Alone: nothing to tell other lanes, no lane key.
    auth = {"share_used_tokens": False}
    return parse_config({"lane": {"id": "p01/l01", "data_dir": str(data)}, "auth": auth})


def lane_key(where: Path, lane: str) -> dict[str, str]:
    """[auth] keys giving `lane` its key (a road or metro lane talks to the others)."""
    CodeFactory(1).write_keyset(where / "keyset.json", int(time.time()), [lane])
    return CodeFactory(1).lane_auth(where, lane)


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


async def test_the_camera_it_opens_stamps_its_frames_on_the_lanes_clock(tmp_path: Path) -> None:
    # A code is the pay point's vehicle's by when its frame was taken, on the lane's clock
    # (lane.core.before_arrival, the scanner's forget_seen): frames on another clock (a lane
    # given its clock, the camera on the system's) would have every code set aside for ever.
    lane_now = time.monotonic() + 3600.0
    config = parse_config(
        {
            "lane": {"id": "p01/l01", "data_dir": str(tmp_path / "lane")},
            "auth": {"share_used_tokens": False},
            "camera": {"source": "push"},
        }
    )
    daemon = await build(config, clocks=Clocks(monotonic=lambda: lane_now))
    try:
        camera = daemon.source
        assert isinstance(camera, PushSource)
        camera.put(frame_for("a phone", "clear", rng=1))
        frame = next(item for item in camera.stream() if isinstance(item, Frame))
        assert frame.ts == lane_now
    finally:
        await daemon.aclose()


@pytest.mark.parametrize(
    ("settings", "pass_bound_s"),
    [
        # A road lane: a pass entered at now + skew, good for pass_lifetime_days and the skew.
        ({"road": {"pass_lifetime_days": 2}}, 10 + 2 * 86_400 + 10),
        # A metro gate: a tap-in is kept (and its exit) for the line's retention, 2 x max_trip_s.
        (
            {"lane": {"mode": "transit-entry"}, "metro": {"line": "L1", "max_trip_s": 3600}},
            10 + 7200 + 10,
        ),
    ],
    ids=["road", "metro"],
)
async def test_the_replay_store_gets_the_lanes_skew_and_caps(
    tmp_path: Path, settings: dict[str, dict[str, object]], pass_bound_s: int
) -> None:
    data: dict[str, dict[str, object]] = {
        "lane": {"id": "p01/l01", "data_dir": str(tmp_path / "lane")},
        "auth": {"skew_s": 10, "max_token_lifetime_s": 120, **lane_key(tmp_path, "p01/l01")},
    }
    for section, values in settings.items():
        data[section] = {**data.get(section, {}), **values}
    daemon = await build(parse_config(data), source=PushSource())
    try:
        now = 1_800_000_000.0
        far = int(now) + 86_400 * 365
        for used_id, bound_s in (("far", 130), (pass_key("ab" * 12), pass_bound_s)):
            daemon.replay.mark_remote(used_id, far, "p01/l02", now=now)
            used = daemon.replay.get(used_id)
            assert used is not None and used.exp == int(now) + bound_s
    finally:
        await daemon.aclose()
