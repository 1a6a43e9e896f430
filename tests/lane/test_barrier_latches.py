"""The barrier's faults kept over a restart (lane.barrier_latches) against real files, and
lanes started over a kept or unreadable one (mosquitto, the device emulator, the daemon in this
process)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from polling import eventually
from test_lane_daemon import named, running_lane, show
from test_lane_heal import QUICK, STUCK_BARRIER, charged, pays, quiet, self_tests

from lane.barrier_latches import UNKNOWN_SINCE, LatchFiles, file_name
from lane.core.events import LatchCarried
from lane.core.names import KEPT_LATCHES, Alarm
from sim.broker import Mosquitto

STUCK, NO_ACK = Alarm.BARRIER_STUCK, Alarm.BARRIER_NO_ACK


def test_the_files_are_named_for_their_alarms_as_before() -> None:
    # barrier_stuck.json is the name a lane before barrier_no_ack was kept wrote: still read.
    assert [file_name(f) for f in KEPT_LATCHES] == ["barrier_stuck.json", "barrier_no_ack.json"]


@pytest.mark.parametrize("fault", KEPT_LATCHES)
def test_a_kept_latch_is_carried_and_a_dropped_one_is_gone(tmp_path: Path, fault: Alarm) -> None:
    latch = LatchFiles(tmp_path, "l01")
    assert latch.load() == []
    latch.keep(fault, 1_796_000_000.9, "commanded open, device reports closed after 4 s")
    [carried] = latch.load()
    assert (carried.fault, carried.since, carried.detail) == (
        fault,
        "2026-11-30T00:53:20Z",
        "commanded open, device reports closed after 4 s",
    )
    assert [p.name for p in tmp_path.iterdir()] == [file_name(fault)]  # no temporary file left
    latch.drop(fault)
    assert latch.load() == [] and list(tmp_path.iterdir()) == []
    latch.drop(fault)  # dropped twice (a crash between the drop and its log line): no error


def test_both_kept_are_carried_each_with_an_id_of_its_own(tmp_path: Path) -> None:
    latch = LatchFiles(tmp_path, "l01")
    latch.keep(NO_ACK, 1_796_000_000, "open v1/open")
    latch.keep(STUCK, 1_796_000_100, "commanded open")
    carried = latch.load()
    assert [c.fault for c in carried] == [STUCK, NO_ACK]
    assert len({c.event_id for c in carried}) == 2
    latch.drop(STUCK)  # each is dropped on its own
    assert [c.fault for c in latch.load()] == [NO_ACK]


def test_a_stuck_latch_written_before_no_ack_was_kept_is_still_read(tmp_path: Path) -> None:
    (tmp_path / "barrier_stuck.json").write_bytes(
        b'{"since": "2026-11-30T00:53:20Z", "detail": "commanded open"}'
    )
    [carried] = LatchFiles(tmp_path, "l01").load()
    assert carried == LatchCarried(
        STUCK, "2026-11-30T00:53:20Z", "commanded open", carried.event_id
    )


@pytest.mark.parametrize("fault", KEPT_LATCHES)
@pytest.mark.parametrize(
    "body", [b"", b"{not json", b'{"since": 5, "detail": "x"}', b'{"detail": "x"}', b"\xff\xfe"]
)
def test_an_unreadable_latch_still_latches_and_says_why(
    tmp_path: Path, fault: Alarm, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / file_name(fault)).write_bytes(body)
    [carried] = LatchFiles(tmp_path, "l01").load()
    assert carried.fault == fault and carried.since == UNKNOWN_SINCE
    assert f"{tmp_path / file_name(fault)} is unreadable" in carried.detail
    lines = [r for r in caplog.records if r.getMessage().startswith("latch unreadable")]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert lines[0].__dict__["lane"] == "l01" and lines[0].__dict__["alarm"] == fault


async def test_a_lane_started_over_an_unreadable_latch_is_latched_until_its_self_test(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    data = tmp_path / "lane"  # running_lane's data directory
    data.mkdir()
    (data / file_name(STUCK)).write_bytes(b"{torn")
    async with running_lane(tmp_path, mosquitto, lane_id, barrier=STUCK_BARRIER) as lane:
        raised = [f for f in named(lane, "alarm") if f["code"] == "barrier_stuck"]
        assert raised[0]["active"] and "unreadable" in raised[0]["message"]
        assert f"latched since {UNKNOWN_SINCE}" in raised[0]["message"]
        # The boom works: the first self-test sees it open and the lane heals by itself.
        await eventually(lambda: "barrier_stuck" not in lane.daemon.runner.alarms, within=10)
        # The self-test's event comes over the broker after the alarm cleared in the runner.
        await eventually(lambda: self_tests(lane, "passed") != [], within=10)
        assert not (data / file_name(STUCK)).exists()


async def test_a_lane_started_over_an_unreadable_no_ack_latch_refuses_until_an_ack(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Torn on disk: latched to be safe (an error logged), the lane refuses the next driver
    while the device drops its commands, and its test close's first ack clears it."""
    data = tmp_path / "lane"
    data.mkdir()
    (data / file_name(NO_ACK)).write_bytes(b"{torn")
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK, fault="no_ack") as lane:
        runner, device = lane.daemon.runner, lane.device
        text = runner.alarms["barrier_no_ack"]
        assert "unreadable" in text and f"latched since {UNKNOWN_SINCE}" in text
        unreadable = [r for r in caplog.records if r.getMessage().startswith("latch unreadable")]
        assert [r.levelno for r in unreadable] == [logging.ERROR]
        await device.vehicle_enters(1)
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: named(lane, "scan_refused"))
        assert "barrier_no_ack" in named(lane, "scan_refused")[0]["reason"]
        await device.vehicle_backs_away()
        device.set_fault(None)
        await eventually(lambda: "barrier_no_ack" not in runner.alarms, within=10)
        assert not (data / file_name(NO_ACK)).exists()
        await eventually(lambda: quiet(lane), within=10)
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)
        assert len(charged(lane)) == 1
