"""A frame of the vehicle before, decoded only once the next vehicle is at the pay point (a
loaded machine), is not the next driver's code (lane.core.before_arrival): the daemon, the
scanner pipeline, the device emulator, mosquitto and the acquirer, all real."""

from __future__ import annotations

import time
from pathlib import Path

from polling import eventually
from test_lane_daemon import named, running_lane, show

from lane.core.before_arrival import BEFORE_ARRIVAL
from sim.broker import Mosquitto
from sim.camera import frame_for


async def test_the_paid_code_of_the_vehicle_before_read_late_is_ignored_for_the_next(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        runner = lane.daemon.runner
        await lane.device.vehicle_enters(1)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        paid = lane.codes.make("alipay", int(time.time())).text
        taken = time.monotonic()  # a frame of the phone, taken while its driver pays ...
        await show(lane, paid, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: lane.device.state == "open")
        await lane.device.vehicle_passes()
        await eventually(lambda: runner.state.passage is None)
        await lane.device.vehicle_enters(1)
        await eventually(lambda: len(named(lane, "vehicle_arrived")) == 2)
        second = named(lane, "vehicle_arrived")[1]["vehicle_id"]
        # ... decoded only now: the scanner forgot its sightings for the new vehicle, so it
        # reports the code once more, from that frame.
        lane.source.put(frame_for(paid, "clear", rng=1), taken)
        ignored = {"vehicle_id": second, "reason": BEFORE_ARRIVAL}
        await eventually(lambda: ignored in named(lane, "scan_ignored"), what="ignored")
        vehicle = runner.state.vehicle
        assert vehicle is not None and vehicle.vehicle_id == second and vehicle.tries == 0
        # The driver's own code is theirs: refused for what it is, not "declined" as used.
        garbage = lane.codes.make("garbage", int(time.time())).text
        await show(lane, garbage, lambda: named(lane, "code_refused"))
        assert [n["vehicle_id"] for n in named(lane, "code_refused")] == [second]
        assert named(lane, "declined") == []
        assert len(lane.acquirer.payments()) == 1  # the code went to the network once
