"""The lanes of a simulated closed road: an entry lane that hands out tickets and an exit lane
where the driver shows the ticket and pays.

Both are `SimLane`s (their own device, camera and real `LaneDaemon`), in the lane modes
`toll-entry` and `toll-exit`. What differs is the driver:

- at an entry lane the ANPR camera reads the plate and the classifier the class before the
  vehicle is on the entry loop (the pass binds both); the lane prints the ticket on its
  printer (`barrier.printer.PrinterEmulator`, one per entry lane); the driver takes the paper,
  whose QR text is what it will show at the exit, and drives on once the barrier is up;
- at an exit lane the ANPR reads the plate (when the trip says it does: a plate the lane
  knows prices the trip by itself), the driver holds the ticket's QR up to the lane's camera
  (rendered into the frame like any code) until the lane prices the trip, calls the attendant
  when it has no ticket (`no_pass`) or when the fare waits for one (`confirm_fare`), then
  shows the payment code and drives through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from barrier.printer import PrinterEmulator
from lane.core.notes import NoteName
from sim.broker import Mosquitto
from sim.lane import LaneHost, Outcome, SimLane
from sim.road_model import Trip

log = logging.getLogger("lane.sim.road")

ATTENDANT_WALK_S = 20.0  # simulated seconds for the attendant to reach the lane
ANSWER_S = 10.0  # real seconds a lane may take to answer what the driver did
# An entry lane reads no code: its camera idles at a low rate, leaving the CPU to the exits'.
ENTRY_FPS = 5.0


class RoadHost(LaneHost, Protocol):
    """What a road lane asks of the road simulator (`sim.road.RoadSimulator`)."""

    async def read_plate(self, lane_id: str, plate: str) -> None: ...

    async def attendant(self, lane_id: str, op: str, vehicle_id: str) -> None: ...

    def road_config(self, lane: RoadLane) -> dict[str, Any]: ...

    def ticket_shown(self, trip: Trip) -> str | None: ...

    def pass_issued(self, trip: Trip, pass_id: str) -> None: ...

    def entered(self, trip: Trip, outcome: Outcome, ticket: str | None) -> None: ...

    def exited(self, trip: Trip, outcome: Outcome) -> None: ...


class RoadLane(SimLane):
    def __init__(self, sim: RoadHost, index: int, lane_id: str, mode: str, plaza: str) -> None:
        super().__init__(sim, index, lane_id)
        self.road = sim
        self.mode = mode
        self.plaza = plaza
        self.printer: PrinterEmulator | None = None
        # Exit: ms from the ticket held up to the fare priced (the driver's view of reading it).
        self.pass_priced_ms: list[float] = []

    @property
    def entry(self) -> bool:
        return self.mode == "toll-entry"

    @property
    def fps(self) -> float:
        return min(ENTRY_FPS, self.sim.options.fps) if self.entry else self.sim.options.fps

    def config_body(self, broker_port: int, acquirer_url: str, keyset: Path) -> dict[str, Any]:
        body = super().config_body(broker_port, acquirer_url, keyset)
        return body | self.road.road_config(self)

    async def start(self, broker: Mosquitto, acquirer_url: str, keyset: Path) -> None:
        if self.entry:
            self.printer = PrinterEmulator(self.lane_id, broker.host, broker.port)
            self._spawn(self.printer.run(), "printer")
            async with asyncio.timeout(10):
                await self.printer.link.connected.wait()
        await super().start(broker, acquirer_url, keyset)

    # --- drivers --------------------------------------------------------------------------

    async def _serve_vehicle(self, driver: Any) -> Outcome:
        assert isinstance(driver, Trip)
        wait = self._free_at + self.sim.options.move_up_s / self.sim.speed - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        outcome = Outcome(driver, self.lane_id, started_at=time.monotonic())
        if self.entry:
            ticket = await self._take_ticket(driver, outcome)
            await self._leave(outcome, outcome.passed)
            self.road.entered(driver, outcome, ticket)
        else:
            await self._pay_trip(driver, outcome)
            await self._leave(outcome, outcome.passed)
            self.road.exited(driver, outcome)
        return outcome

    async def _pull_up(self, outcome: Outcome, plate: str | None, vehicle_class: int) -> int | None:
        """ANPR, classifier, entry loop; the watch mark after the lane saw the vehicle."""
        assert self.device is not None
        mark = self.watch.mark
        if plate is not None:
            await self.road.read_plate(self.lane_id, plate)
        await self.device.vehicle_enters(vehicle_class)
        arrived = await self.watch.wait_for(lambda n, f: n == NoteName.VEHICLE_ARRIVED, mark, 5.0)
        if arrived is None:
            log.error("lane did not see the vehicle", extra={"lane": self.lane_id})
            return None
        outcome.vehicle_id = arrived[3]["vehicle_id"]
        return arrived[0]

    def _of_vehicle(self, outcome: Outcome, *names: str) -> Any:
        return lambda n, f: n in names and f.get("vehicle_id") == outcome.vehicle_id

    async def _take_ticket(self, trip: Trip, outcome: Outcome) -> str | None:
        """Entry: the lane prints the ticket and opens; the driver takes the paper."""
        mark = await self._pull_up(outcome, trip.plate, trip.vehicle_class)
        if mark is None:
            return None
        issued = await self.watch.wait_for(
            self._of_vehicle(outcome, NoteName.PASS_ISSUED), mark, ANSWER_S
        )
        if issued is not None:
            mark = issued[0]
            self.road.pass_issued(trip, issued[3]["pass_id"])
        opened = await self.watch.wait_for(
            self._of_vehicle(outcome, NoteName.BARRIER_OPENED), mark, ANSWER_S
        )
        if opened is None:
            outcome.refusals.append("no ticket")
            return None
        outcome.passed = True
        outcome.methods.append("ticket")
        return self._printed(f"{outcome.vehicle_id}/pass")

    def _printed(self, job_id: str) -> str | None:
        assert self.printer is not None
        for ticket in reversed(self.printer.printed):
            if ticket.job_id == job_id and ticket.qr_codes:
                return ticket.qr_codes[0]
        return None

    async def _pay_trip(self, trip: Trip, outcome: Outcome) -> None:
        """Exit: the trip priced (by plate, ticket or the attendant), then the payment."""
        mark = await self._pull_up(outcome, trip.exit_plate, trip.exit_class)
        if mark is None:
            return
        vehicle = outcome.vehicle_id
        assert vehicle is not None
        await asyncio.sleep(self.sim.options.reaction_s / self.sim.speed)
        priced_by = self._of_vehicle(outcome, NoteName.TRIP_PRICED)
        # A plate the lane knows may have priced the trip already.
        found = await self.watch.wait_for(priced_by, mark, 0.0)
        ticket = self.road.ticket_shown(trip)
        lost = False
        if found is None and ticket is not None:
            answer = (NoteName.TRIP_PRICED,)
            shown = await self._present("entry_pass", ticket, outcome, mark, answer)
            if shown is not None:
                found = (shown[0], shown[2], shown[3], shown[4])
                self.pass_priced_ms.append((shown[2] - shown[1]) * 1000)
        if found is None:  # no ticket, or one the lane never read: the attendant comes
            lost = True
            await asyncio.sleep(ATTENDANT_WALK_S / self.sim.speed)
            await self.road.attendant(self.lane_id, "no_pass", vehicle)
            found = await self.watch.wait_for(priced_by, mark, ANSWER_S)
        if found is None:
            outcome.refusals.append("not priced")
            return
        mark, _, _, priced = found
        if priced.get("attendant") and not lost:
            await asyncio.sleep(ATTENDANT_WALK_S / self.sim.speed)
            await self.road.attendant(self.lane_id, "confirm_fare", vehicle)
            confirmed = await self.watch.wait_for(
                self._of_vehicle(outcome, NoteName.FARE_CONFIRMED), mark, ANSWER_S
            )
            mark = confirmed[0] if confirmed is not None else self.watch.mark
        await self._try_codes(trip, outcome, mark)
