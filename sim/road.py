"""`lane sim --road N`: a closed road of N plazas, each with an entry lane and an exit lane.

Everything the plaza simulator runs is here too (one broker, the acquirer and the networks'
fakes, the back office, per lane a barrier device, a camera and the real `LaneDaemon`), plus
what a road needs: per plaza a pass key in the key set the lanes read, an `entry_exit` tariff
with every entry-exit-class cell (sim.road_model), a ticket printer per entry lane, and the
road's "field" MQTT client standing for the ANPR cameras (`lane/{id}/io/plate`) and the
attendants (`lane/{id}/attendant`: `no_pass`, `confirm_fare`).

A vehicle (`sim.road_model.Trip`) arrives at its entry plaza, takes a ticket, drives to its
exit plaza in simulated time (distance / speed, scaled by `--speed` like all simulated time),
queues at the exit lane, shows the ticket and pays. The exceptions are planned per trip
(lost ticket, a copy of a ticket that already exited, U-turn, over the time limit, class
and plate mismatch). The report adds `road`: sim.road_report's reconciliation of the back
office's ingested records with what the vehicles did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from barrier.messages import AttendantCommand
from barrier.peripherals import PlateReading
from lane.auth.fares import Tariff, load_tariff
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet
from lane.auth.passes import PassAccepted, verify_pass
from lane.transport.mqtt import MqttLink
from lane.window import percentiles
from lane.wire import topics
from sim.codes import CodeFactory, write_private_key
from sim.harness import Say, Simulator, progress
from sim.lane import Outcome
from sim.options import SimOptions
from sim.road_lane import RoadLane
from sim.road_model import RATE_FEN_PER_KM, Case, RoadPlan, Trip, plan_trips, tariff_toml
from sim.road_report import Journey, reconcile
from sim.traffic import Mix
from uplink.trips import END_OF_TIME_US

log = logging.getLogger("lane.sim.road")

ATTENDANT = "sim-attendant"
PASS_LIFETIME_DAYS = 30


class Leg(enum.StrEnum):
    """Where a vehicle is on its journey (the dashboard counts them)."""

    ENTRY_QUEUE = "entry_queue"
    ON_ROAD = "on_road"
    EXIT_QUEUE = "exit_queue"
    DONE = "done"


@dataclass
class Travel:
    """A journey as the simulator runs it: the pure facts (`Journey`) plus where it is now."""

    facts: Journey
    leg: Leg = Leg.ENTRY_QUEUE
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RoadCodes(CodeFactory):
    """The codes of the plaza simulator, and the road's pass keys in the key set."""

    def __init__(self, seed: int, plazas: tuple[str, ...]) -> None:
        super().__init__(seed)
        rng = random.Random(seed * 7 + 3)
        self.pass_keys = {
            plaza: PlazaPassKey(
                Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)),
                f"pass-{plaza}".encode(),
                plaza,
            )
            for plaza in plazas
        }

    def keyset(self, now: int, lanes: Iterable[str] = ()) -> KeySet:
        tokens = super().keyset(now, lanes)
        passes = [dataclasses.replace(k, not_before=now - 86400).public()
                  for k in self.pass_keys.values()]  # fmt: skip
        return KeySet.of(tokens.issued_at, [*tokens.keys.values(), *passes])


class RoadSimulator(Simulator):
    def __init__(self, options: SimOptions, plan: RoadPlan) -> None:
        super().__init__(options)
        self.plan = plan
        plazas = plan.road.plazas
        self.codes: RoadCodes = RoadCodes(options.seed, plazas)
        self.entry_lanes = {
            p: RoadLane(self, 2 * i, f"{p}/e1", "toll-entry", p) for i, p in enumerate(plazas)
        }
        self.exit_lanes = {
            p: RoadLane(self, 2 * i + 1, f"{p}/x1", "toll-exit", p) for i, p in enumerate(plazas)
        }
        self.lanes = sorted([*self.entry_lanes.values(), *self.exit_lanes.values()],
                            key=lambda lane: lane.index)  # fmt: skip
        self.travels: dict[int, Travel] = {}
        self._on_road: set[asyncio.Task[None]] = set()  # one task per vehicle travelling
        self.tariff: Tariff | None = None
        self._field: MqttLink | None = None
        self._keys: KeySet | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        work = self.workdir
        (work / "keys").mkdir(parents=True, exist_ok=True)
        now = int(time.time())
        tariff_path = work / "tariff.road.toml"
        tariff_path.write_text(tariff_toml(self.plan.road, sorted(RATE_FEN_PER_KM), now - 86400))
        self.tariff = load_tariff(tariff_path)
        for plaza, key in self.codes.pass_keys.items():
            write_private_key(work / "keys" / f"pass-{plaza}.key.pem", key.private_key)
        self._keys = self.codes.keyset(now)
        await super().start()
        assert self.broker is not None
        self._field = MqttLink(self.broker.host, self.broker.port, "sim-road-field")
        self._tasks.append(asyncio.create_task(self._field.run(), name="road-field"))
        async with asyncio.timeout(10):
            await self._field.connected.wait()

    async def stop(self) -> None:
        for task in list(self._on_road):
            task.cancel()
        await asyncio.gather(*self._on_road, return_exceptions=True)
        await super().stop()

    def road_config(self, lane: RoadLane) -> dict[str, Any]:
        """The lane.toml sections a road lane adds to the plaza simulator's (sim.lane)."""
        work, speed = self.workdir, self.options.speed
        fares: dict[str, Any] = {"currency": "CNY", "tariff": str(work / "tariff.road.toml")}
        if lane.entry:
            key = f"pass-{lane.plaza}"
            pem = str(work / "keys" / f"{key}.key.pem")
            return {"fares": fares, "road": {"pass_key": pem, "pass_kid": key}}
        # The limits are simulated time, the lane's clock is real: they scale with the speed.
        road: dict[str, Any] = {
            "max_trip_s": self.plan.limit_s / speed,
            "u_turn_window_s": self.plan.u_turn_window_s / speed,
            "pass_lifetime_days": PASS_LIFETIME_DAYS,
        }
        return {"fares": fares, "road": road}

    # --- what the road's devices and people do --------------------------------------------

    async def read_plate(self, lane_id: str, plate: str) -> None:
        """The lane's ANPR camera reads a plate (before the entry loop: the pass binds it)."""
        assert self._field is not None
        reading = PlateReading(plate, 0.97, int(time.time() * 1e6))
        await self._field.publish(topics.io(lane_id, topics.PLATE), reading.encode(), qos=1)

    async def attendant(self, lane_id: str, op: str, vehicle_id: str) -> None:
        assert self._field is not None
        command = AttendantCommand(op, uuid.uuid4().hex, f"vehicle {vehicle_id}", ATTENDANT,
                                   int(time.time() * 1e6))  # fmt: skip
        await self._field.publish(topics.attendant(lane_id), command.encode(), qos=1)
        log.info("attendant", extra={"lane": lane_id, "op": op, "vehicle_id": vehicle_id})

    def ticket_shown(self, trip: Trip) -> str | None:
        """The QR text the driver holds up at the exit: its own ticket, a copy, or none."""
        if trip.case is Case.LOST_TICKET:
            return None
        if trip.case is Case.TICKET_COPY and trip.copy_of is not None:
            return self.travels[trip.copy_of].facts.ticket
        return self.travels[trip.index].facts.ticket

    def pass_issued(self, trip: Trip, pass_id: str) -> None:
        """The entry lane issued the vehicle's pass (its entry record is on its way)."""
        self.travels[trip.index].facts.pass_id = pass_id

    def entered(self, trip: Trip, outcome: Outcome, ticket: str | None) -> None:
        travel = self.travels[trip.index]
        travel.facts.ticket = ticket
        travel.facts.ticket_pass = self._pass_id(ticket)
        travel.facts.entry_done = True
        travel.facts.entry_vehicle = outcome.vehicle_id
        if not outcome.passed or ticket is None:
            log.error("no ticket at the entry", extra={"lane": outcome.lane, "trip": trip.index})
            self._finish(travel)
            return
        travel.leg = Leg.ON_ROAD
        task = asyncio.create_task(self._travel(travel), name=f"trip-{trip.index}")
        self._on_road.add(task)
        task.add_done_callback(self._on_road.discard)

    def _pass_id(self, ticket: str | None) -> str | None:
        if ticket is None or self._keys is None:
            return None
        verdict = verify_pass(ticket, self._keys, time.time(), 5, PASS_LIFETIME_DAYS * 86400)
        return verdict.entry.pass_hex if isinstance(verdict, PassAccepted) else None

    async def _travel(self, travel: Travel) -> None:
        trip = travel.facts.trip
        await asyncio.sleep(trip.travel_s / self.options.speed)
        if trip.copy_of is not None:
            # A copy is shown once the ticket it copies has exited (else the original would
            # meet the used pass).
            await self.travels[trip.copy_of].done.wait()
        travel.leg = Leg.EXIT_QUEUE
        self.exit_lanes[trip.exit].join(trip)

    def exited(self, trip: Trip, outcome: Outcome) -> None:
        travel = self.travels[trip.index]
        travel.facts.exit_vehicle = outcome.vehicle_id
        travel.facts.exit_lane = outcome.lane
        travel.facts.paid = outcome.passed
        self._finish(travel)

    def _finish(self, travel: Travel) -> None:
        travel.leg = Leg.DONE
        travel.done.set()

    # --- traffic --------------------------------------------------------------------------

    def dispatch(self, driver: Any) -> RoadLane:
        assert isinstance(driver, Trip)
        self.travels[driver.index] = Travel(Journey(driver))
        lane = self.entry_lanes[driver.entry]
        lane.join(driver)
        self.arrivals += 1
        return lane

    async def drive_trips(self, trips: Iterable[Trip]) -> None:
        """Vehicles arrive at their entry plazas at their times (simulated seconds from now);
        returns once every one of them has left the road."""
        await self.arrive(trips, float("inf"))
        await self._left_the_road()

    async def drive_for(self, duration_s: float, mix: Mix, limit: int | None = None) -> None:
        await self.arrive(endless_trips(self.plan, self.options.seed, mix), duration_s, limit)
        await self._left_the_road()

    async def _left_the_road(self) -> None:
        await asyncio.gather(*(t.done.wait() for t in list(self.travels.values())))

    # --- what the run shows ---------------------------------------------------------------

    def report(
        self, ingested: dict[str, set[str]] | None = None, blobs: list[bytes] | None = None
    ) -> dict[str, Any]:
        report = super().report(ingested)
        report["mode"] = "road"
        assert self.tariff is not None
        if blobs is None:
            blobs = self.backoffice.store.records_between(0, END_OF_TIME_US)
        journeys = [t.facts for t in self.travels.values()]
        report["road"] = reconcile(journeys, blobs, self.tariff, self.plan)
        shown = [ms for lane in self.exit_lanes.values() for ms in lane.pass_priced_ms]
        report["road"]["pass_priced_ms"] = percentiles(shown)
        return report

    async def report_async(self) -> dict[str, Any]:
        """The report, reading the back office off the event loop."""
        store = self.backoffice.store
        ids, blobs = await asyncio.gather(
            asyncio.gather(
                *(asyncio.to_thread(self.backoffice.ingested_ids, ln.lane_id) for ln in self.lanes)
            ),
            asyncio.to_thread(store.records_between, 0, END_OF_TIME_US),
        )
        ingested = {ln.lane_id: held for ln, held in zip(self.lanes, ids, strict=True)}
        return self.report(ingested, blobs)

    async def snapshot(self) -> dict[str, Any]:
        snap = await super().snapshot()
        snap["mode"] = "road"
        snap["road"] = self.road_view()
        return snap

    def road_view(self) -> dict[str, Any]:
        """The dashboard's road: plazas along the line, vehicles on each leg, lane tiles."""
        legs = {leg: 0 for leg in Leg}
        for travel in self.travels.values():
            legs[travel.leg] += 1
        road = self.plan.road
        return {
            "plazas": [
                {
                    "plaza": p,
                    "km": km,
                    "entry": self.entry_lanes[p].index + 1,
                    "exit": self.exit_lanes[p].index + 1,
                    "heading_here": sum(
                        t.leg is Leg.ON_ROAD and t.facts.trip.exit == p
                        for t in self.travels.values()
                    ),
                }
                for p, km in zip(road.plazas, road.km, strict=True)
            ],
            "length_km": road.length_km,
            "on_road": legs[Leg.ON_ROAD],
            "legs": {str(k): v for k, v in legs.items()},
            "limit_s": self.plan.limit_s,
        }


def endless_trips(plan: RoadPlan, seed: int, mix: Mix, chunk: int = 200) -> Iterator[Trip]:
    """Trips without end: plan_trips in chunks, each following the last (ids count on)."""
    offset, base, batch = 0.0, 0, 0
    while True:
        trips = plan_trips(chunk, seed * 7919 + batch, plan, mix)
        for t in trips:
            copy_of = None if t.copy_of is None else base + t.copy_of
            yield dataclasses.replace(
                t, index=base + t.index, arrival_s=offset + t.arrival_s, copy_of=copy_of
            )
        offset += trips[-1].arrival_s
        base += len(trips)
        batch += 1


async def run_road(
    n: int, options: SimOptions, plan: RoadPlan, say: Say | None = None, every_s: float = 10.0
) -> dict[str, Any]:
    """N vehicles over the road, every one to its exit; the report once the back office holds
    every record."""
    sim = RoadSimulator(options, plan)
    await sim.start()
    try:
        async with progress(sim, say, every_s):
            await sim.drive_trips(plan_trips(n, options.seed, plan, options.mix))
        await sim.settle()
        return await sim.report_async()
    finally:
        await sim.stop()
