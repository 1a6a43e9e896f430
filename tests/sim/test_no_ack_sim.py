"""The simulator's `barrier_no_ack` fault end to end (mosquitto, the device emulator, the lane
daemon, the acquirer): the vehicle that meets it is charged, not let through and refunded; the
next vehicle is refused (no record, no charge) while the lane shows `fault` and the alarm; once
the fault is off the lane clears by itself and the next vehicle pays and passes.

Twice: with the daemon in the simulator's process, and with each lane a process of its own
killed with SIGKILL while the fault holds; the booth the supervisor restarts starts with the
fault (kept on disk) and refuses the next vehicle as well, where it used to charge and refund
it once more before the alarm was back.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from polling import eventually

from lane.core.notes import NoteName
from sim.harness import SimOptions, Simulator
from sim.lane import SimLane
from sim.lane_process import LANE_OFFLINE, ProcessLane
from sim.traffic import Driver
from uplink.records import Record

SPEED = 10.0
NOTICE_WITHIN_S = 60.0  # simulated seconds
HEAL_WITHIN_S = 120.0
NO_ACK = "barrier_no_ack"


async def within(sim: Simulator, what: str, cond: Callable[[], object], sim_s: float) -> None:
    await eventually(cond, within=sim_s / sim.speed, every=0.02, what=f"{what} ({sim_s:g} sim s)")


def view(lane: SimLane) -> dict[str, object]:
    """What the dashboard shows of the lane: for a lane process, from its status and health."""
    return lane.snapshot(0)


def alarms(lane: SimLane) -> dict[str, str]:
    shown: dict[str, str] = lane.snapshot(0)["alarms"]
    return shown


def healthy(lane: SimLane, *, but: frozenset[str] = frozenset()) -> bool:
    """Idle with no alarm (`but` these), nobody waiting."""
    quiet = set(alarms(lane)) <= but
    return quiet and view(lane)["phase"] == "idle" and lane.load == 0


# The refunded driver's alarm calls the attendant; it stays until a vehicle passes again.
REFUND_NOTICE = frozenset({"paid_not_passed"})


def carried(lane: SimLane) -> bool:
    return "(carried over a restart)" in alarms(lane).get(NO_ACK, "")


def token_driver(index: int) -> Driver:
    return Driver(index=index, arrival_s=0.0, vehicle_class=1, behaviour="token", codes=("token",))


def records_of(lane: SimLane, vehicle_id: str | None) -> list[Record]:
    assert vehicle_id is not None
    return [r for r in lane.records_written.values() if r.draft.vehicle_id == vehicle_id]


def refunds(lane: SimLane) -> list[Record]:
    return [r for r in lane.records_written.values() if "paid_not_passed" in r.draft.flags]


async def serve(lane: SimLane, driver: Driver) -> None:
    lane.join(driver)
    await lane.drained()


@pytest.mark.parametrize("killed", [False, True], ids=["in_process", "booth_killed"])
async def test_under_no_ack_the_next_vehicle_is_refused_and_once_off_the_lane_serves(
    tmp_path: Path, killed: bool
) -> None:
    options = SimOptions(
        seed=5,
        speed=SPEED,
        conditions="clear",
        frame_size=(640, 360),
        fps=15.0,
        workdir=tmp_path,
        lane_processes=killed,
    )
    sim = Simulator(options)
    await sim.start()
    try:
        lane = sim.lanes[0]
        kept = tmp_path / lane.lane_id.replace("/", "_") / "barrier_no_ack.json"
        await within(sim, "healthy at the start", lambda: healthy(lane), HEAL_WITHIN_S)
        await sim.faults.apply(NO_ACK, True, 1)

        # The vehicle that meets the fault: charged, its open dropped, refunded.
        await serve(lane, token_driver(1))
        first = lane.outcomes[-1]
        assert not first.passed
        assert NO_ACK in alarms(lane)
        await within(sim, "the refund record", lambda: refunds(lane), NOTICE_WITHIN_S)
        charged = [r for r in records_of(lane, first.vehicle_id) if r.draft.amount_minor > 0]
        assert len(charged) == 1 and len(refunds(lane)) == 1
        assert kept.exists()

        if killed:
            assert isinstance(lane, ProcessLane) and lane.child is not None
            process = lane.child.process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)  # no clean shutdown
            await eventually(lambda: LANE_OFFLINE in alarms(lane), 10, what="offline")
            await eventually(lambda: LANE_OFFLINE not in alarms(lane), 60, what="restarted")
            # The restarted booth's own health (the old one's stays retained until then).
            await eventually(lambda: carried(lane), 10, what="the kept alarm")
            assert lane.child.restarts == 1

        # The next vehicle is refused: the lane asks no acquirer and writes no record for it.
        mark = lane.watch.mark
        await serve(lane, token_driver(2))
        second = lane.outcomes[-1]
        assert not second.passed and second.vehicle_id is not None
        assert records_of(lane, second.vehicle_id) == []
        refused = [f for _, n, f in lane.watch.notes[mark - lane.watch.base :]
                   if n == NoteName.SCAN_REFUSED]  # fmt: skip
        assert refused and all(NO_ACK in f["reason"] for f in refused)
        shown = view(lane)
        assert shown["phase"] == "fault" and NO_ACK in alarms(lane), shown
        assert len(refunds(lane)) == 1  # nobody else charged and refunded
        assert kept.exists()

        # The fault off: the lane's test close is acked at the next probe, and it heals.
        await sim.faults.apply(NO_ACK, False, 1)
        await within(sim, "healed", lambda: healthy(lane, but=REFUND_NOTICE), HEAL_WITHIN_S)
        assert not kept.exists()
        await serve(lane, token_driver(3))
        third = lane.outcomes[-1]
        assert third.passed, third.refusals
        assert [r.draft.amount_minor > 0 for r in records_of(lane, third.vehicle_id)] == [True]
        await within(sim, "idle after the vehicle", lambda: healthy(lane), HEAL_WITHIN_S)
    finally:
        await sim.stop()
