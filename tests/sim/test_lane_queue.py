"""A simulated lane's queue of drivers (real broker, daemon, device, acquirer): first come, first
served, except a driver waved ahead (a test's vehicle meeting a fault, a burst of bad codes),
who is served before those waiting. A saturated lane's queue only grows, and what an operator
or a test sends to it must not wait behind all of it (tests/sim/test_console.py's walk did).
"""

from __future__ import annotations

from pathlib import Path

from sim.harness import SimOptions, Simulator
from sim.traffic import Driver


def token(index: int) -> Driver:
    return Driver(index=index, arrival_s=0.0, vehicle_class=1, behaviour="token", codes=("token",))


async def test_a_driver_waved_ahead_is_served_before_those_waiting(tmp_path: Path) -> None:
    options = SimOptions(
        seed=7, speed=20.0, conditions="clear", frame_size=(640, 360), fps=20.0, workdir=tmp_path
    )
    sim = Simulator(options)
    await sim.start()
    try:
        lane = sim.lanes[0]
        # All join before the lane's server takes one: nobody is at the pay point yet.
        lane.join(token(1))
        lane.join(token(2))
        sim.burst(0, 1, "forged")  # the burst's driver is numbered -1
        lane.join(token(3), ahead=True)
        assert lane.load == 4
        await lane.drained()
        assert [o.driver.index for o in lane.outcomes] == [-1, 3, 1, 2]
        assert [o.passed for o in lane.outcomes] == [False, True, True, True]
    finally:
        await sim.stop()
