"""A whole lane on one machine: broker, barrier device, acquirer, back office, camera, daemon.

Everything is real: a mosquitto child process, the device emulator speaking MQTT, the acquirer
over HTTP, the ingest storing into SQLite, the synthetic camera feeding the real scanner, and the
real lane daemon in the middle. Drivers (sim.traffic) arrive, show codes to the camera and drive
through when the barrier opens; the harness watches the lane's own notes to know what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barrier.device import DeviceEmulator, Timings
from lane.config import LaneConfig, parse_config
from lane.daemon import LaneDaemon
from scanner.sources import PushSource
from sim.acquirer import AcquirerServer
from sim.broker import Mosquitto, free_port
from sim.camera import SyntheticCamera
from sim.codes import CodeFactory
from sim.traffic import VALID_KINDS, Driver, Mix, plan
from uplink.ingest import Ingest
from uplink.records import Record
from uplink.store import SqliteIngestStore

log = logging.getLogger("lane.sim")


@dataclass
class SimOptions:
    seed: int = 1
    speed: float = 1.0
    mix: Mix = field(default_factory=Mix)
    conditions: str = "realistic"
    fps: float = 30.0
    lane_id: str = "p01/l01"
    workdir: Path | None = None
    reaction_s: float = 0.6  # from stopping at the pay point to the phone in front of the camera
    max_tries: int = 3


@dataclass
class Outcome:
    driver: Driver
    vehicle_id: str | None = None
    passed: bool = False
    methods: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    latency_ms: float | None = None  # code shown to the camera -> barrier acked the open
    frame_latency_ms: float | None = None  # frame that held the code -> barrier acked the open


class Watch:
    """Waits on the lane's notes (the same stream the events topic and dashboard see)."""

    def __init__(self) -> None:
        self.notes: list[tuple[float, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        self.notes.append((time.monotonic(), name, fields))
        self._changed.set()

    async def wait_for(
        self, match: Callable[[str, dict[str, Any]], bool], start: int, timeout: float
    ) -> tuple[int, float, str, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.notes):
                ts, name, fields = self.notes[i]
                i += 1
                if match(name, fields):
                    return i, ts, name, fields
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


class SimLane:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.codes = CodeFactory(options.seed)
        self.watch = Watch()
        self.outcomes: list[Outcome] = []
        self.records_written: dict[str, Record] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.broker: Mosquitto | None = None
        self.acquirer: AcquirerServer | None = None
        self.device: DeviceEmulator | None = None
        self.camera: SyntheticCamera | None = None
        self.daemon: LaneDaemon | None = None
        self.ingest_store: SqliteIngestStore | None = None
        self._stop = asyncio.Event()
        self.started_at = 0.0

    @property
    def workdir(self) -> Path:
        if self.options.workdir is not None:
            return self.options.workdir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lane-sim-")
        return Path(self._tmp.name)

    def lane_config(self, broker_port: int, acquirer_url: str, keyset: Path) -> LaneConfig:
        return parse_config(
            {
                "lane": {
                    "id": self.options.lane_id,
                    "data_dir": str(self.workdir / "lane"),
                    "max_tries": self.options.max_tries,
                },
                "broker": {"port": broker_port},
                "camera": {"source": "push"},
                "auth": {"acquirer_url": acquirer_url, "keyset": str(keyset)},
            },
            "simulator",
        )

    async def start(self) -> None:
        work = self.workdir
        work.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(port=free_port(), workdir=work)
        await asyncio.to_thread(self.broker.start)
        self.acquirer = AcquirerServer(seed=self.options.seed)
        acquirer_url = await self.acquirer.start()
        keyset = self.codes.write_keyset(work / "keyset.json", int(time.time()))
        config = self.lane_config(self.broker.port, acquirer_url, keyset)

        self.ingest_store = SqliteIngestStore(work / "backoffice.sqlite3")
        ingest = Ingest(self.ingest_store)
        ingest_link = ingest.make_link(self.broker.host, self.broker.port, "ingest-sim")
        timings = Timings().scaled(self.options.speed)
        self.device = DeviceEmulator(config.lane.id, self.broker.host, self.broker.port, timings)

        source = PushSource()
        self.camera = SyntheticCamera(fps=self.options.fps, rng=self.options.seed)
        self.daemon = LaneDaemon(config, source=source)
        self.daemon.runner.observers.append(self.watch)
        self.daemon.runner.observers.append(self._on_note)

        self._tasks += [
            asyncio.create_task(ingest_link.run(), name="ingest"),
            asyncio.create_task(self.device.run(), name="device"),
            asyncio.create_task(self.daemon.run(self._stop), name="daemon"),
        ]
        await self.device.wait_connected(10)
        await self.daemon.link.wait_connected(10)
        await ingest_link.wait_connected(10)
        self.camera.start(source.put)
        self.started_at = time.monotonic()

    def _on_note(self, name: str, fields: dict[str, Any]) -> None:
        if name == "record":
            record = Record.from_map(fields["record"])
            self.records_written[record.record_id] = record

    async def stop(self) -> None:
        if self.camera is not None:
            await asyncio.to_thread(self.camera.stop)
        self._stop.set()
        daemon_task = next((t for t in self._tasks if t.get_name() == "daemon"), None)
        if daemon_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(daemon_task), 15)
        if self.device is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.device.stop(), 5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.acquirer is not None:
            await self.acquirer.stop()
        if self.ingest_store is not None:
            self.ingest_store.close()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self._tmp is not None:
            self._tmp.cleanup()

    # --- traffic --------------------------------------------------------------------------

    async def drive(self, drivers: list[Driver]) -> None:
        """Serve the drivers in arrival order through the one pay point."""
        speed = self.options.speed
        start = time.monotonic()
        for driver in drivers:
            wait = start + driver.arrival_s / speed - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.outcomes.append(await self._serve(driver))

    async def _serve(self, driver: Driver) -> Outcome:
        assert self.device is not None and self.camera is not None
        outcome = Outcome(driver)
        speed = self.options.speed
        mark = len(self.watch.notes)
        await self.device.vehicle_enters(driver.vehicle_class)
        arrived = await self.watch.wait_for(lambda n, f: n == "vehicle_arrived", mark, 5.0)
        if arrived is None:
            log.error("lane did not see the vehicle", extra={"driver": driver.index})
            await self.device.vehicle_backs_away()
            return outcome
        mark, _, _, fields = arrived
        vehicle_id = fields["vehicle_id"]
        outcome.vehicle_id = vehicle_id
        await asyncio.sleep(self.options.reaction_s / speed)
        for kind in driver.codes[: self.options.max_tries]:
            code = self.codes.make(kind, int(time.time()))
            result = await self._present(code.text, vehicle_id, mark)
            if result is None:
                outcome.refusals.append("no answer")
                continue
            mark, shown_at, ts, name, fields = result
            if name == "barrier_opened":
                outcome.passed = True
                outcome.methods.append(kind)
                outcome.latency_ms = (ts - shown_at) * 1000
                outcome.frame_latency_ms = fields.get("latency_ms")
                break
            outcome.refusals.append(str(fields.get("reason")))
            await asyncio.sleep(0.3 / speed)
        if outcome.passed:
            await self._drive_through()
        else:
            await self.device.vehicle_backs_away()
        return outcome

    async def _present(
        self, text: str, vehicle_id: str, mark: int
    ) -> tuple[int, float, float, str, dict[str, Any]] | None:
        """Hold the phone up until the lane answers; re-aim it when it is not read."""
        assert self.camera is not None
        shown_at = time.monotonic()

        def answer(name: str, fields: dict[str, Any]) -> bool:
            ours = fields.get("vehicle_id") == vehicle_id
            return ours and name in ("barrier_opened", "declined", "code_refused")

        try:
            for _ in range(4):
                self.camera.show(text, self.options.conditions)
                found = await self.watch.wait_for(answer, mark, 3.5)
                if found is not None:
                    i, ts, name, fields = found
                    return i, shown_at, ts, name, fields
            return None
        finally:
            self.camera.hide()

    async def _drive_through(self) -> None:
        assert self.device is not None
        device = self.device
        # A driver moves off once the boom is up (the lane's latency ends at the ack, before).
        deadline = time.monotonic() + 5.0
        while device.state != "open" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        passing = asyncio.create_task(device.vehicle_passes())
        self._tasks.append(passing)
        # The next driver may pull up once this one has left the entry loop.
        while device.sensors.get("entry_loop", False) and not passing.done():
            await asyncio.sleep(0.01)

    # --- the report -----------------------------------------------------------------------

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until the back office holds every record the lane wrote (or timeout)."""
        assert self.ingest_store is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(self.records_written) <= self._ingested_ids():
                return
            await asyncio.sleep(0.2)

    def _ingested_ids(self) -> set[str]:
        assert self.ingest_store is not None
        return {r.record_id for r in self.ingest_store.records(self.options.lane_id)}

    def report(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started_at
        ingested = self._ingested_ids()
        written = set(self.records_written)
        latencies = sorted(o.latency_ms for o in self.outcomes if o.latency_ms is not None)
        frame_lat = sorted(o.frame_latency_ms for o in self.outcomes if o.frame_latency_ms is not None)
        paying = [o for o in self.outcomes if o.driver.pays(self.options.max_tries)]
        methods = Counter(m for o in self.outcomes for m in o.methods)
        refusals = Counter(r for o in self.outcomes for r in o.refusals)
        simulated_h = elapsed * self.options.speed / 3600
        kinds = Counter(r.draft.kind + ":" + r.draft.auth.result for r in self.records_written.values())
        return {
            "vehicles": len(self.outcomes),
            "passed": sum(o.passed for o in self.outcomes),
            "denied": sum(not o.passed for o in self.outcomes),
            "paying_vehicles": len(paying),
            "paying_passed": sum(o.passed for o in paying),
            "records_written": len(written),
            "records_ingested": len(written & ingested),
            "lost": len(written - ingested),
            "records_by_kind": dict(sorted(kinds.items())),
            "latency_ms": _percentiles(latencies),
            "frame_latency_ms": _percentiles(frame_lat),
            "throughput_vph": round(len(self.outcomes) / simulated_h, 1) if simulated_h else 0.0,
            "methods": dict(sorted(methods.items())),
            "refusals": dict(sorted(refusals.items())),
            "valid_kinds": sorted(VALID_KINDS),
            "duration_s": round(elapsed, 2),
            "speed": self.options.speed,
            "seed": self.options.seed,
        }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(values[-1], 1)}


async def run_headless(n: int, options: SimOptions) -> dict[str, Any]:
    lane = SimLane(options)
    await lane.start()
    try:
        await lane.drive(plan(n, options.seed, options.mix))
        await lane.settle()
        return lane.report()
    finally:
        await lane.stop()
