"""A paid vehicle held by a blocking fault (lane.core.recovery): the daemon in this process,
mosquitto, the device emulator taken offline (its `offline` fault: it leaves the broker, its
will says `offline`). The driver is told to wait, and `pass_dwell_s` after its record's commit
it is refunded (`paid_not_passed`) and let go, not held for as long as the device is away."""

from __future__ import annotations

from pathlib import Path

from polling import eventually
from test_lane_daemon import named, running_lane
from test_lane_heal import pays, quiet
from test_lane_paid_carried import kinds, owed_rows

from sim.broker import Mosquitto

PAID_WAIT = ["Paid", "Barrier out of order", "Please wait"]


async def test_paid_behind_the_vehicle_before_then_the_device_goes_it_is_refunded_at_its_due(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """v0 paid and the boom rose for it; it has left the pay point and not reached the boom
    when v1 pays (v1's record durable, waiting for v0's passage). The device goes offline:
    v1 is told to wait, then refunded at its due; back, the device lets v0 through and never
    opens for v1."""
    async with running_lane(
        tmp_path, mosquitto, lane_id, {"probe_s": 0.5, "pass_dwell_s": 3.0}
    ) as lane:
        runner, device = lane.daemon.runner, lane.device
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: device.state == "open")
        await device.set_sensor("entry_loop", False)  # v0 drives on towards the boom
        await pays(lane, lambda: len(named(lane, "record")) == 2)
        v0, v1 = (r["record"] for r in named(lane, "record"))
        assert v1["auth"]["result"] == "approved" and owed_rows(lane.queue_path) == 2
        device.set_fault("offline")
        await eventually(lambda: "barrier_offline" in runner.alarms, within=10)
        await eventually(lambda: named(lane, "display")[-1]["lines"] == PAID_WAIT)
        await eventually(lambda: named(lane, "paid_not_passed"), within=15)
        assert "barrier_offline" in runner.alarms  # refunded while the device is still away
        [gone] = named(lane, "paid_not_passed")
        assert (gone["vehicle_id"], gone["record_id"]) == (v1["vehicle_id"], v1["record_id"])
        # Written just after the note.
        await eventually(lambda: kinds(lane.queue_path, "paid_not_passed"))
        [refund] = kinds(lane.queue_path, "paid_not_passed")
        assert refund.draft.flags == ("paid_not_passed", f"record:{v1['record_id']}")
        assert refund.draft.amount_minor == 0 and refund.draft.vehicle_id == v1["vehicle_id"]
        assert owed_rows(lane.queue_path) == 1  # v0's, let through: its passage is still on
        assert "Please wait for assistance" in named(lane, "display")[-1]["lines"]
        # The device is back: v0 drives through, and the boom never rises for v1.
        device.set_fault(None)
        await eventually(lambda: "barrier_offline" not in runner.alarms, within=10)
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=15)
        assert device.executions == [f"{v0['vehicle_id']}/open", f"{v0['vehicle_id']}/close"]
        assert owed_rows(lane.queue_path) == 0
