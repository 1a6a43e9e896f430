"""A whole plaza on one machine: broker, acquirer, back office, and per lane a barrier device,
a camera and the real lane daemon.

Everything is real: a mosquitto child process, the device emulators speaking MQTT, the acquirer
over HTTP, the back-office ingest storing into SQLite, the synthetic cameras feeding the real
scanners, and the real lane daemons in the middle (one per lane, sharing the broker, the
acquirer and the back office, and sharing used offline tokens over the plaza topic). Drivers
(sim.traffic) arrive at the plaza, join the lane with the shortest queue, show codes and drive
through when the barrier opens; the harness watches each lane's own notes to know what happened.

`Simulator(options)`: `start()`, `drive(drivers)`, `drive_forever(mix)`, `settle()`, `report()`,
`snapshot()` (the dashboard's view), `faults` (inject faults), `stop()`. `run_headless(n,
options)` and `run_scenario(scenario, options)` run to the end and return the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from lane.auth.fares import load_tariff
from lane.durable import write_atomically
from sim import metro
from sim.acquirer import AcquirerServer
from sim.acquirer_faults import Faults
from sim.backoffice import BackOffice
from sim.broker import Mosquitto, acl_all_but, acl_config, free_port
from sim.codes import CodeFactory
from sim.faults import FaultController, play_timeline
from sim.lane import Outcome, SimLane
from sim.lane_process import ProcessLane
from sim.networks import SimNetworks
from sim.options import SimOptions
from sim.report import plaza_report, plaza_view
from sim.scenario import Scenario
from sim.traffic import Driver, Mix, plan
from sim.wechatpay_fake import WeChatPayFake

log = logging.getLogger("lane.sim")

REPLAY_MIN_AGE_S = 4.0  # real seconds; above the scanner's 3 s dedup window

__all__ = ["Outcome", "SimLane", "SimOptions", "Simulator", "run_headless", "run_scenario"]


class Simulator:
    def __init__(self, options: SimOptions) -> None:
        if options.speed <= 0:
            raise ValueError("speed must be > 0")
        self.options = options
        self.rng = random.Random(options.seed)
        self.codes = CodeFactory(options.seed)
        # token text -> (lane that accepted it, when): what a replaying driver shows
        self.accepted_tokens: dict[str, tuple[str, float]] = {}
        lane_class = ProcessLane if options.lane_processes else SimLane
        self.lanes = [lane_class(self, i, lane_id) for i, lane_id in enumerate(options.lane_ids())]
        self.faults = FaultController(self)
        self.broker: Mosquitto | None = None
        self.acquirer: AcquirerServer | None = None
        self.networks: SimNetworks | None = None
        self.network_auth: dict[str, Any] = {}  # the lanes' [auth] routes to the networks
        self._backoffice: BackOffice | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._rides: set[asyncio.Task[None]] = set()  # metro passengers between the gates
        self.started_at = time.monotonic()
        self.arrivals = 0
        self.burst_count = 0
        self.scenario: str | None = None
        self.keyset_issued_at = 0  # the plaza's key set file's, as last issued
        self.refused_topics: set[str] = set()  # the broker's ACL refuses these (publish_refused)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self.options.workdir is not None:
            return self.options.workdir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lane-sim-")
        return Path(self._tmp.name)

    @property
    def backoffice(self) -> BackOffice:
        if self._backoffice is None:
            raise RuntimeError("simulator not started")
        return self._backoffice

    @property
    def speed(self) -> float:
        return self.options.speed

    @property
    def metro(self) -> bool:
        return self.options.mode == "metro"

    def sim_time(self) -> float:
        """Simulated seconds since the start."""
        return (time.monotonic() - self.started_at) * self.options.speed

    async def start(self) -> None:
        work = self.workdir
        work.mkdir(parents=True, exist_ok=True)
        self._write_acl()
        self.broker = Mosquitto(free_port(), work, acl_config(self.acl_path))
        await asyncio.to_thread(self.broker.start)
        self.acquirer = AcquirerServer(faults=self.options.acquirer, seed=self.options.seed)
        acquirer_url = await self.acquirer.start()
        self.networks = SimNetworks(work, self.options.acquirer, self.options.seed)
        await self.networks.start()
        self.network_auth = self.networks.auth_config(self.options.speed)
        lanes = [lane.lane_id for lane in self.lanes]
        self.keyset_issued_at = int(time.time())
        keyset = self.codes.write_keyset(self.keyset_path, self.keyset_issued_at, lanes)
        if self.metro:
            metro.write_tariff(work, int(time.time()) - 86_400)
        self._backoffice = BackOffice(
            work / "backoffice.sqlite3", self.broker.host, self.broker.port
        )
        await self._backoffice.start()
        await asyncio.gather(
            *(lane.start(self.broker, acquirer_url, keyset) for lane in self.lanes)
        )
        self.started_at = time.monotonic()
        for lane in self.lanes:
            lane.started_at = self.started_at
            self._tasks.append(asyncio.create_task(lane.serve(), name=f"serve-{lane.lane_id}"))
        self._tasks.append(asyncio.create_task(self._monitor(), name="monitor"))

    async def stop(self) -> None:
        for task in (*self._tasks, *self._rides):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._rides, return_exceptions=True)
        await asyncio.gather(*(lane.stop() for lane in self.lanes), return_exceptions=True)
        if self.acquirer is not None:
            await self.acquirer.stop()
        if self.networks is not None:
            await self.networks.stop()
        if self._backoffice is not None:
            await self._backoffice.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self._tmp is not None:
            self._tmp.cleanup()

    def payment_servers(self) -> list[AcquirerServer]:
        """Our acquirer and the networks' fakes: the acquirer faults apply to all of them."""
        nets = self.networks.servers if self.networks is not None else []
        return [s for s in (self.acquirer, *nets) if s is not None]

    def wechatpay(self) -> WeChatPayFake | None:
        return None if self.networks is None else self.networks.wechatpay

    async def _monitor(self) -> None:
        """Sample every lane's uplink (backlog, link) twice a second for dashboard and report."""
        while True:
            for lane in self.lanes:
                await lane.sample_uplink()
            await asyncio.sleep(0.5)

    # --- traffic --------------------------------------------------------------------------

    def dispatch(self, driver: Driver) -> SimLane:
        """The driver joins the lane with the shortest queue (ties: the lowest lane); on a
        metro line, the entry gate's."""
        entries = [ln for ln in self.lanes if metro.is_entry(ln.index)] if self.metro else None
        lane = _shortest(entries or self.lanes)
        lane.join(driver)
        self.arrivals += 1
        return lane

    def served(self, lane: SimLane, outcome: Outcome) -> None:
        """A metro passenger through an entry gate rides to an exit gate and taps out there
        with the kind of code that let them in."""
        if self.metro and metro.is_entry(lane.index) and outcome.passed:
            driver = dataclasses.replace(outcome.driver, codes=(outcome.methods[-1],))
            ride = asyncio.create_task(self._ride(driver), name=f"ride-{driver.index}")
            self._rides.add(ride)
            ride.add_done_callback(self._rides.discard)

    async def _ride(self, driver: Driver) -> None:
        await asyncio.sleep(metro.RIDE_S / self.speed)
        _shortest([ln for ln in self.lanes if not metro.is_entry(ln.index)]).join(driver)

    async def drive(self, drivers: list[Driver], offset_s: float = 0.0) -> None:
        """Drivers arrive at their times (simulated seconds after `offset_s`); wait until each
        one has been served."""
        speed = self.options.speed
        start = self.started_at + offset_s / speed
        for driver in drivers:
            wait = start + driver.arrival_s / speed - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.dispatch(driver)
        await self.drained()

    async def drained(self) -> None:
        """Every lane's queue served; on a metro line, every rider tapped out too."""
        while True:
            await asyncio.gather(*(lane.drained() for lane in self.lanes))
            if not self._rides:
                return
            await asyncio.wait(set(self._rides))

    async def drive_for(self, duration_s: float, mix: Mix, limit: int | None = None) -> None:
        """Arrivals for `duration_s` simulated seconds from now (or `limit` vehicles)."""
        await self.arrive(_arrivals(mix, self.options.seed), duration_s, limit)
        await self.drained()

    async def arrive(
        self, drivers: Iterable[Driver], duration_s: float, limit: int | None = None
    ) -> None:
        """Dispatch each driver at its time (simulated seconds from now), up to `duration_s`
        or the driver of index `limit`."""
        speed = self.options.speed
        start = time.monotonic()
        for driver in drivers:
            if limit is not None and driver.index >= limit:
                break
            if driver.arrival_s > duration_s:
                break
            wait = start + driver.arrival_s / speed - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.dispatch(driver)

    async def drive_forever(self, mix: Mix) -> None:
        await self.drive_for(float("inf"), mix)

    @property
    def keyset_path(self) -> Path:
        """The plaza's key set, which every lane's `auth.keyset` names."""
        return self.workdir / "keyset.json"

    def issue_keyset(self, lapsed: bool) -> None:
        # Strictly newer, or the lanes keep the set they hold (a fault switched twice a second).
        self.keyset_issued_at = max(int(time.time()), self.keyset_issued_at + 1)
        lanes = [lane.lane_id for lane in self.lanes]
        self.codes.reissue_keyset(self.keyset_path, self.keyset_issued_at, lanes, lapsed=lapsed)
        log.warning("key set issued", extra={"issued_at": self.keyset_issued_at, "lapsed": lapsed})

    @property
    def acl_path(self) -> Path:
        return self.workdir / "mosquitto.acl"

    def refuse_topic(self, topic: str, refused: bool) -> None:
        if refused:
            self.refused_topics.add(topic)
        else:
            self.refused_topics.discard(topic)
        self._write_acl()
        assert self.broker is not None
        self.broker.reload()
        log.warning("broker ACL reloaded", extra={"refused": sorted(self.refused_topics)})

    def _write_acl(self) -> None:
        write_atomically(self.acl_path, acl_all_but(self.refused_topics).encode())

    def burst(self, lane_index: int, count: int, kind: str) -> None:
        """`count` vehicles showing only replayed/forged codes join lane `lane_index` now, at the
        front of its queue."""
        kinds = {"replay": ("replay",), "forged": ("forged",), "mixed": ("replay", "forged")}[kind]
        for i in range(count):
            self.burst_count += 1
            codes = tuple(kinds[(i + j) % len(kinds)] for j in range(self.options.max_tries))
            driver = Driver(
                index=-self.burst_count,
                arrival_s=self.sim_time(),
                vehicle_class=1,
                behaviour=f"burst_{kind}",
                codes=codes,
            )
            # Ahead of the vehicles waiting: the burst is seen now, not after a standing queue.
            self.lanes[lane_index].join(driver, ahead=True)

    def code_for(self, kind: str, lane: SimLane, driver: Driver) -> tuple[str, str | None]:
        """The text a driver shows for `kind`, and for a replay the lane that accepted it. A
        metro passenger's wallet code is one its network issued to the passenger's wallet (so
        the network names the same payer at every gate), a token one of the same account."""
        if self.metro and (kind in metro.WALLET_PREFIXES or kind == "token"):
            wallet = metro.wallet_of(driver)
            nets = self.networks
            if kind == "token" or nets is None:
                return self.codes.make("token", int(time.time()), account=wallet).text, None
            network = nets.alipay if kind == "alipay" else nets.wechatpay
            assert network is not None  # started with the simulator
            return network.ledger.issue_code(wallet, metro.WALLET_PREFIXES[kind]), None
        if kind == "replay":
            # Not one the camera read in the last seconds: the scanner would drop it as the
            # same presentation (its dedup window), and the lane would never see the replay.
            old = time.monotonic() - REPLAY_MIN_AGE_S
            seen = [t for t, (_, at) in list(self.accepted_tokens.items())[-300:] if at < old]
            if seen:
                text = self.rng.choice(seen)
                return text, self.accepted_tokens[text][0]
        code = self.codes.make("garbage" if kind == "replay" else kind, int(time.time()))
        return code.text, None

    def token_accepted(self, text: str, lane_id: str) -> None:
        self.accepted_tokens[text] = (lane_id, time.monotonic())
        if len(self.accepted_tokens) > 5000:
            for key in list(self.accepted_tokens)[:1000]:
                del self.accepted_tokens[key]

    # --- the end of a run -----------------------------------------------------------------

    async def settle(self, timeout: float = 60.0) -> bool:  # noqa: ASYNC109
        """Wait until the back office holds every record the lanes wrote (True) or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = 0
            for lane in self.lanes:
                held = await asyncio.to_thread(self.backoffice.ingested_ids, lane.lane_id)
                missing += len(set(lane.records_written) - held)
            if not missing:
                return True
            await asyncio.sleep(0.2)
        return False

    def report(self, ingested: dict[str, set[str]] | None = None) -> dict[str, Any]:
        if ingested is None:
            ingested = {ln.lane_id: self.backoffice.ingested_ids(ln.lane_id) for ln in self.lanes}
        report = plaza_report(self, ingested)
        report["faults"] = self.faults.history
        if self.metro:  # what each rider paid in all, against the trip's fare
            written = [r for ln in self.lanes for r in ln.records_written.values()]
            tariff = load_tariff(metro.tariff_path(self.workdir))
            report["metro_fares"] = metro.fare_check(written, tariff)
        if self.scenario is not None:
            report["scenario"] = self.scenario
        return report

    async def report_async(self) -> dict[str, Any]:
        """The report, reading the back office off the event loop."""
        ids = await asyncio.gather(
            *(asyncio.to_thread(self.backoffice.ingested_ids, ln.lane_id) for ln in self.lanes)
        )
        return self.report({ln.lane_id: held for ln, held in zip(self.lanes, ids, strict=True)})

    async def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows, as JSON-able data."""
        await asyncio.gather(*(ln.follow_refunds() for ln in self.lanes))
        counts = await asyncio.gather(
            *(asyncio.to_thread(self.backoffice.store.count, ln.lane_id) for ln in self.lanes)
        )
        return {
            "t": round(self.sim_time(), 1),
            "speed": self.options.speed,
            "mode": self.options.mode,
            "scenario": self.scenario,
            "arrivals": self.arrivals,
            "backoffice": {
                "online": self.backoffice.online,
                "connected": self.backoffice.connected,
                "batches": self.backoffice.stats.batches,
                "records": self.backoffice.stats.records,
                "duplicates": self.backoffice.stats.duplicates,
            },
            "acquirer": self.acquirer.faults.to_map() if self.acquirer else None,
            "faults": self.faults.snapshot(),
            "plaza": plaza_view(self.lanes),
            "lanes": [ln.snapshot(held) for ln, held in zip(self.lanes, counts, strict=True)],
        }


def _shortest(lanes: list[SimLane]) -> SimLane:
    return min(lanes, key=lambda ln: (ln.load, ln.index))


def _arrivals(mix: Mix, seed: int, chunk: int = 200) -> Any:
    """Endless Poisson arrivals: plan() in chunks, each shifted to follow the last."""
    offset, index, batch = 0.0, 0, 0
    while True:
        drivers = plan(chunk, seed * 7919 + batch, mix)
        for d in drivers:
            yield dataclasses.replace(d, index=index, arrival_s=offset + d.arrival_s)
            index += 1
        offset += drivers[-1].arrival_s
        batch += 1


Say = Callable[[str], None]


def where_line(sim: Simulator) -> str:
    """Where to watch a running simulator from another terminal."""
    assert sim.broker is not None
    host, port = sim.broker.host, sim.broker.port
    lane = sim.lanes[0].lane_id
    return f"broker at {host}:{port} (watch: lane watch --broker {host}:{port} --lane {lane})"


@contextlib.asynccontextmanager
async def progress(sim: Simulator, say: Say | None, every_s: float) -> AsyncIterator[None]:
    """Say where the broker is, then one progress line every `every_s` (wall) seconds."""
    if say is None:
        yield
        return
    say(where_line(sim))

    async def loop() -> None:
        while True:
            await asyncio.sleep(every_s)
            served = sum(len(lane.records_written) for lane in sim.lanes)
            say(
                f"t={sim.sim_time():.0f} s simulated: {sim.arrivals} vehicles arrived, "
                f"{served} records written, {sim.backoffice.stats.records} ingested"
            )

    task = asyncio.create_task(loop(), name="progress")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run_headless(
    n: int, options: SimOptions, say: Say | None = None, every_s: float = 10.0
) -> dict[str, Any]:
    sim = Simulator(options)
    await sim.start()
    try:
        async with progress(sim, say, every_s):
            await sim.drive(plan(n, options.seed, options.mix))
        await sim.settle()
        return sim.report()
    finally:
        await sim.stop()


def options_for(scenario: Scenario, base: SimOptions) -> SimOptions:
    """The simulator options a scenario asks for (speed and workdir stay the caller's)."""
    acquirer = Faults().merged(scenario.acquirer.model_dump())
    return dataclasses.replace(
        base,
        seed=scenario.seed,
        mix=scenario.mix(),
        conditions=scenario.conditions,
        lanes=scenario.lanes,
        mode=scenario.mode,
        acquirer=acquirer,
    )


async def run_scenario(
    scenario: Scenario,
    options: SimOptions,
    vehicles: int | None = None,
    say: Say | None = None,
    every_s: float = 10.0,
) -> dict[str, Any]:
    """Play a scenario to its end (duration or vehicle count) and return the report.

    `options` are used as given: build them with `options_for(scenario, base)`."""
    sim = Simulator(options)
    sim.scenario = scenario.name
    await sim.start()
    timeline = asyncio.create_task(
        play_timeline(sim.faults, scenario.timeline(), sim.speed), name="timeline"
    )
    try:
        duration = scenario.duration_s if scenario.duration_s is not None else float("inf")
        async with progress(sim, say, every_s):
            await sim.drive_for(duration, sim.options.mix, vehicles or scenario.vehicles)
        # Faults still to be cleared are cleared before the end (a back office comes back).
        timeline.cancel()
        for active in list(sim.faults.active.values()):
            index = None
            if active.lane is not None:
                index = next(ln.index + 1 for ln in sim.lanes if ln.lane_id == active.lane)
            await sim.faults.apply(active.name, False, index)
        await sim.settle()
        return sim.report()
    finally:
        timeline.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timeline
        await sim.stop()
