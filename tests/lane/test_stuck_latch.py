"""barrier_stuck's latch on disk (lane.stuck_latch) against real files, and a lane started
over an unreadable one (mosquitto, the device emulator, the daemon in this process)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from polling import eventually
from test_lane_daemon import named, running_lane
from test_lane_heal import STUCK_BARRIER, self_tests

from lane.core.events import StuckCarried
from lane.stuck_latch import FILE_NAME, UNKNOWN_SINCE, StuckLatchFile
from sim.broker import Mosquitto


def test_a_kept_latch_is_carried_and_a_dropped_one_is_gone(tmp_path: Path) -> None:
    latch = StuckLatchFile(tmp_path, "l01")
    assert latch.load() is None
    latch.keep(1_796_000_000.9, "commanded open, device reports closed after 4 s")
    assert latch.load() == StuckCarried(
        "2026-11-30T00:53:20Z", "commanded open, device reports closed after 4 s"
    )
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary file left
    latch.drop()
    assert latch.load() is None and list(tmp_path.iterdir()) == []
    latch.drop()  # dropped twice (a crash between the drop and its log line): no error


@pytest.mark.parametrize(
    "body", [b"", b"{not json", b'{"since": 5, "detail": "x"}', b'{"detail": "x"}', b"\xff\xfe"]
)
def test_an_unreadable_latch_still_latches_and_says_why(
    tmp_path: Path, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_bytes(body)
    carried = StuckLatchFile(tmp_path, "l01").load()
    assert carried is not None and carried.since == UNKNOWN_SINCE
    assert f"{tmp_path / FILE_NAME} is unreadable" in carried.detail
    lines = [r for r in caplog.records if r.getMessage().startswith("stuck latch unreadable")]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert lines[0].__dict__["lane"] == "l01"


async def test_a_lane_started_over_an_unreadable_latch_is_latched_until_its_self_test(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    data = tmp_path / "lane"  # running_lane's data directory
    data.mkdir()
    (data / FILE_NAME).write_bytes(b"{torn")
    async with running_lane(tmp_path, mosquitto, lane_id, barrier=STUCK_BARRIER) as lane:
        raised = [f for f in named(lane, "alarm") if f["code"] == "barrier_stuck"]
        assert raised[0]["active"] and "unreadable" in raised[0]["message"]
        assert f"latched since {UNKNOWN_SINCE}" in raised[0]["message"]
        # The boom works: the first self-test sees it open and the lane heals by itself.
        await eventually(lambda: "barrier_stuck" not in lane.daemon.runner.alarms, within=10)
        assert self_tests(lane, "passed") != []
        assert not (data / FILE_NAME).exists()
