"""A frame decoded only once the next vehicle is at the pay point (a loaded machine) is told by
when it was taken: the vehicle before's code is not the next driver's, and the next driver's
own code read early does not hide its later frames (lane.core.before_arrival, the scanner's
forget_seen); the code the vehicle before paid with, its phone still in view, is not the next
driver's either. The daemon, the scanner pipeline, the device emulator, mosquitto and the
acquirer, all real."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show

from lane.core.before_arrival import PAID_BEFORE
from sim.broker import Mosquitto
from sim.camera import frame_for


async def decoded_late(lane: Lane, text: str, taken: float) -> None:
    """A frame of `text` taken at `taken`, handed over only now; returns once it is decoded."""
    pipeline = lane.daemon.pipeline
    decoded = pipeline.stats().decoded
    lane.source.put(frame_for(text, "clear", rng=1), taken)
    await eventually(lambda: pipeline.stats().decoded > decoded and not pipeline.stats().pending)


async def arrives(lane: Lane) -> str:
    seen = len(named(lane, "vehicle_arrived"))
    await lane.device.vehicle_enters(1)
    await eventually(lambda: len(named(lane, "vehicle_arrived")) > seen)
    return str(named(lane, "vehicle_arrived")[-1]["vehicle_id"])


async def test_the_paid_code_of_the_vehicle_before_read_late_is_not_the_next_drivers(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        runner = lane.daemon.runner
        await arrives(lane)
        paid = lane.codes.make("alipay", int(time.time())).text
        taken = time.monotonic()  # a frame of the phone, taken while its driver pays ...
        await show(lane, paid, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: lane.device.state == "open")
        await lane.device.vehicle_passes()
        await eventually(lambda: runner.state.passage is None)
        second = await arrives(lane)
        await decoded_late(lane, paid, taken)  # ... decoded only now
        # The driver's own code is theirs: refused for what it is, not "declined" as used.
        garbage = lane.codes.make("garbage", int(time.time())).text
        await show(lane, garbage, lambda: named(lane, "code_refused"))
        assert [n["vehicle_id"] for n in named(lane, "code_refused")] == [second]
        assert named(lane, "declined") == []
        assert len(lane.acquirer.payments()) == 1  # the paid code went to the network once


async def test_the_next_drivers_code_read_before_the_lane_saw_the_pay_point_clear_still_pays(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """The camera sees the next driver's phone before the lane hears that the vehicle before
    backed off the loop (the sensor's message comes later than the frame). That frame, read
    late, is set aside; the driver's next frames are read as theirs, not as its repeats."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        await arrives(lane)
        taken = time.monotonic()
        garbage = lane.codes.make("garbage", int(time.time())).text
        await show(lane, garbage, lambda: named(lane, "code_refused"))
        await lane.device.vehicle_backs_away()
        await eventually(lambda: lane.daemon.runner.state.vehicle is None)
        second = await arrives(lane)
        token = lane.codes.make("token", int(time.time())).text
        await decoded_late(lane, token, taken)
        await show(lane, token, lambda: named(lane, "barrier_opened"))
        assert named(lane, "barrier_opened")[0]["vehicle_id"] == second


async def test_the_vehicle_befores_phone_still_in_view_is_ignored_even_with_its_loop_clear_lost(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The paying driver's phone stays in view as the car drives on, and the entry loop's
    clear is never published: once the next vehicle is there the scanner reads the phone again
    (it forgets its sightings for the next person). The code it paid with is set aside with
    one log line: no decline, nothing shown, no try spent; the next driver then pays. Before,
    the network refused it as used and "Payment refused" was shown to the next driver."""
    caplog.set_level(logging.INFO, logger="lane.runner")
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        runner = lane.daemon.runner
        await arrives(lane)
        paid = lane.codes.make("alipay", int(time.time())).text
        other = lane.codes.make("alipay", int(time.time())).text
        taken = time.monotonic()  # a passenger's phone too, in a frame taken while it pays
        await show(lane, paid, lambda: named(lane, "barrier_opened"))
        record = named(lane, "barrier_opened")[0]["record_id"]
        await eventually(lambda: lane.device.state == "open")
        await lane.device.vehicle_passes(lost={"entry_loop"})
        await eventually(lambda: runner.state.passage is None)
        second = await arrives(lane)
        await decoded_late(lane, other, taken)
        await show(lane, paid, lambda: named(lane, "scan_ignored"))
        ignored = {"vehicle_id": second, "reason": PAID_BEFORE, "record_id": record}
        assert named(lane, "scan_ignored") == [ignored]
        assert named(lane, "declined") == [] and named(lane, "code_refused") == []
        assert not [n for n in named(lane, "display") if "Payment refused" in n["lines"]]
        assert len(lane.acquirer.payments()) == 1  # neither code went to the network again
        lines = [r.__dict__ for r in caplog.records if r.getMessage() == "scan ignored"]
        assert [(r["vehicle_id"], r["reason"], r["record_id"]) for r in lines] == [
            (second, PAID_BEFORE, record)
        ]
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: len(named(lane, "barrier_opened")) == 2)
        assert named(lane, "barrier_opened")[1]["vehicle_id"] == second
        assert runner.state.paid_code is not None and runner.state.paid_code.vehicle_id == second
