"""The fault matrix (issue #11 item 1): every simulator fault switched on, then off, against the
real things (mosquitto, the device emulator, the lane daemon, the acquirer, the back office).

Per fault: while it is on the lane notices it (its alarm, where it has one; a command fault is
noticed by the vehicle that meets it), once it is off the lane is idle again with no alarm left
within a bounded simulated time, serves the next paying vehicle, and no vehicle was ever paid
and not let through. One simulator serves every case (module scope), in order: a fault left
behind by one case fails that case and the next ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from polling import eventually

from sim.harness import SimOptions, Simulator
from sim.lane import SimLane
from sim.traffic import Driver

SPEED = 10.0
# Simulated seconds: the longest way out of a fault is a probe or a dwell of the lane (a few
# simulated seconds at most) and reconnecting; nothing here may take longer.
HEAL_WITHIN_S = 120.0
NOTICE_WITHIN_S = 60.0


@dataclass(frozen=True)
class Case:
    fault: str
    alarm: str | None  # what the lane raises while the fault lasts, without traffic
    # A vehicle meets the fault (it is only seen by a command), and passes once it is off.
    with_vehicle: str | None = None  # the alarm that vehicle makes the lane raise
    closed: bool = False  # safe while it lasts: the lane takes no payment


CASES = [
    Case("barrier_offline", "barrier_offline", closed=True),
    Case("barrier_fault", "barrier_fault", closed=True),
    Case("barrier_no_ack", None, with_vehicle="barrier_no_ack"),
    Case("barrier_stuck", None, with_vehicle="barrier_stuck"),
    # Acks 3 s late (not scaled by the speed): later than the lane's ack timeout and retries.
    Case("barrier_slow_ack", None, with_vehicle="barrier_no_ack"),
    Case("camera_blackout", "camera_blackout"),
    Case("broker_down", "broker_down", closed=True),
    Case("backoffice_offline", None),
    Case("acquirer_outage", None),
    Case("acquirer_slow", None),
    Case("acquirer_declines", None),
    Case("queue_high_water", "queue_high_water"),
]


@pytest.fixture(scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Simulator]:
    workdir: Path = tmp_path_factory.mktemp("matrix")
    options = SimOptions(
        seed=11, speed=SPEED, conditions="clear", frame_size=(640, 360), fps=15.0, workdir=workdir
    )
    simulator = Simulator(options)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def within(sim: Simulator, what: str, cond: Callable[[], bool], sim_s: float) -> None:
    """Poll `cond` for at most `sim_s` simulated seconds."""
    await eventually(cond, within=sim_s / sim.speed, every=0.02, what=f"{what} ({sim_s:g} sim s)")


def alarms(lane: SimLane) -> dict[str, str]:
    assert lane.daemon is not None
    return lane.daemon.runner.alarms


def healthy(lane: SimLane) -> bool:
    assert lane.daemon is not None
    return not alarms(lane) and lane.daemon.runner.idle() and lane.load == 0


def paying(sim: Simulator, kind: str) -> Driver:
    sim.arrivals += 1
    return Driver(
        index=10_000 + sim.arrivals,
        arrival_s=0.0,
        vehicle_class=1,
        behaviour=kind,
        codes=(kind,),
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.fault)
async def test_each_fault_clears_itself_and_the_next_vehicle_is_served(
    sim: Simulator, case: Case
) -> None:
    lane = sim.lanes[0]
    index = None if sim.faults.lanes_for(case.fault, None) == [None] else 1
    await within(sim, "healthy before the fault", lambda: healthy(lane), HEAL_WITHIN_S)
    mark = lane.watch.mark
    await sim.faults.apply(case.fault, True, index)
    try:
        if case.alarm is not None:
            await within(
                sim, f"{case.alarm} raised", lambda: case.alarm in alarms(lane), NOTICE_WITHIN_S
            )
        if case.closed:
            assert lane.daemon is not None
            assert not lane.daemon.runner.state.accepting_payments
        if case.with_vehicle is not None:
            driver = paying(sim, "token")
            lane.join(driver)
            if case.with_vehicle:
                await within(
                    sim,
                    f"{case.with_vehicle} raised by a vehicle",
                    lambda: case.with_vehicle in alarms(lane),
                    NOTICE_WITHIN_S,
                )
    finally:
        await sim.faults.apply(case.fault, False, index)
    await lane.drained()
    await within(sim, f"healed after {case.fault}", lambda: healthy(lane), HEAL_WITHIN_S)
    # Acquirer faults hit online payments: the next one pays online.
    kind = "alipay" if case.fault.startswith("acquirer") else "token"
    served = len(lane.outcomes)
    lane.join(paying(sim, kind))
    await lane.drained()
    outcome = lane.outcomes[served]
    assert outcome.passed, f"after {case.fault}: {outcome.refusals}"
    await within(sim, f"idle after a vehicle, {case.fault}", lambda: healthy(lane), HEAL_WITHIN_S)
    notes = lane.watch.notes[mark - lane.watch.base :]
    assert [f for _, n, f in notes if n == "paid_not_passed"] == []
    assert sim.faults.active == {}
