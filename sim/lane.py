"""One simulated lane: its barrier device, its camera, the real lane daemon, and the drivers
queueing at it.

A lane serves the drivers who joined its queue one at a time. In toll mode a driver pulls up
onto the entry loop (classified first), reacts, shows a code to the camera, re-aims when it is
not read, tries the next code after a refusal, and drives through (safety loop, exit loop) once
the boom is up; the next driver pulls up when the entry loop is clear. In transit mode a
passenger has no loops: showing the code is the arrival (the core makes an implicit passenger);
after the gate opens the passenger walks through (safety loop, then exit loop) while the next
one already shows a code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from barrier.device import DeviceEmulator, Timings
from lane.config import LaneConfig, parse_config
from lane.core.notes import NoteName
from lane.core.state import phase
from lane.daemon import LaneDaemon, build
from lane.notification import Notification, ShellNote, ShellNoteName
from scanner.pipeline import LatestFrame
from scanner.sources import PushSource
from sim import metro
from sim.broker import Mosquitto
from sim.camera import SyntheticCamera
from sim.codes import CodeFactory
from sim.link_relay import LinkRelay
from sim.options import SimOptions
from sim.scene import Scene
from sim.stats import LaneStats
from sim.traffic import Driver
from uplink.records import Record

log = logging.getLogger("lane.sim")

ANSWERS = (NoteName.BARRIER_OPENED, NoteName.DECLINED, NoteName.CODE_REFUSED)
STOP_GRACE_S = 2.0
STEP_UP_S = 0.5  # transit: the next passenger steps up to the reader, phone in hand
AIMS = 4  # a driver aims a code at most this many times, then tries the next one
REAIM_AFTER_S = 3.5  # a driver waits this long for an answer before re-aiming the phone
GATE_HOLD_S = 8.0  # transit: a gate nobody walks through closes after this (simulated) time
REREAD_S = 30.0  # transit: a phone still held up after its gate opened, in (simulated) time
# The lane's bounds on waiting, in simulated seconds (the lane's own defaults).
DWELL_S = {"pay_dwell_s": 120.0, "pass_dwell_s": 60.0, "persist_dwell_s": 10.0, "probe_s": 5.0}
MOVE_S = 4.0
# The lane's self-test backoff of a boom that did not open (its defaults), scaled like MOVE_S.
SELFTEST_S = {"selftest_s": 5.0, "selftest_max_s": 60.0}
# Simulated seconds the back office may take no record before the lane raises uplink_stalled
# (the lane's default is 300 s: too long to see in a simulator session).
STALLED_AFTER_S = 60.0
# Simulated seconds before a refund the network is processing is first asked about (the lane's
# default, WeChat Pay's advice), scaled like the waits above so an unpaid one is seen in time.
REFUND_QUERY_S = 60.0


@dataclass(frozen=True)
class Look:
    """One code held up: how many times the driver aimed it (1 = read on the first look)."""

    kind: str
    aims: int
    read: bool  # the lane answered (opened, declined or refused it) before the driver gave up


@dataclass
class Outcome:
    driver: Driver
    lane: str = ""
    vehicle_id: str | None = None
    passed: bool = False
    methods: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    latency_ms: float | None = None  # code shown to the camera -> barrier acked the open
    frame_latency_ms: float | None = None  # frame that held the code -> barrier acked the open
    replays: list[tuple[str, bool]] = field(default_factory=list)  # (accepted at lane, refused)
    looks: list[Look] = field(default_factory=list)  # each code presented, in order
    started_at: float = 0.0  # monotonic: the driver reached the pay point
    done_at: float = 0.0  # monotonic: the pay point is free for the next one


class Watch:
    """Waits on the lane's notes (the same stream the events topic and dashboard see).

    Indexes are absolute; old notes are dropped in halves so an endless run stays bounded."""

    KEEP = 20_000

    def __init__(self) -> None:
        self.notes: list[tuple[float, str, dict[str, Any]]] = []
        self.base = 0  # absolute index of notes[0]
        self._changed = asyncio.Event()

    def __call__(self, note: Notification) -> None:
        self.add(str(note.name), note.fields())

    def add(self, name: str, fields: dict[str, Any]) -> None:
        """A note by name and fields, as the daemon's observers or the events topic give it."""
        self.notes.append((time.monotonic(), name, fields))
        if len(self.notes) > self.KEEP:
            drop = self.KEEP // 2
            del self.notes[:drop]
            self.base += drop
        self._changed.set()

    @property
    def mark(self) -> int:
        return self.base + len(self.notes)

    async def wait_for(
        self,
        match: Callable[[str, dict[str, Any]], bool],
        start: int,
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[int, float, str, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        i = max(start, self.base)
        while True:
            while i < self.mark:
                ts, name, fields = self.notes[i - self.base]
                i += 1
                if match(name, fields):
                    return i, ts, name, fields
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._changed.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
            # that arrives as the event is set, and the serving task would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()


async def _until(condition: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
    """Poll the device emulator (it has no change events) every 10 ms, up to `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def _wait_daemon(daemon: asyncio.Task[Any], timeout: float) -> None:  # noqa: ASYNC109
    """Wait for a stopping daemon, bounded: a lane that does not stop is an error to report."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.wait([daemon])
    if not daemon.done():
        log.error("lane daemon did not stop", extra={"timeout_s": timeout})


async def squeeze_queue(daemon: LaneDaemon, on: bool, saved: int | None) -> int | None:
    """Disk pressure: cut the lane queue's bound to just above what it holds (high water, not
    full), or give the `saved` bound back. Returns the bound to give back later (None: none)."""
    queue = daemon.queue.sync  # the bound is a plain setting, read at each append
    if not on:
        if saved is not None:
            queue.max_bytes = saved
        return None
    used = (await daemon.forwarder.status()).bytes_used
    if saved is None:
        saved = queue.max_bytes
    queue.max_bytes = max(used + 1, int(used / queue.high_water))
    return saved


class LaneCamera(Protocol):
    """What drivers and faults do to a lane's camera: `SyntheticCamera`, or the camera of a
    lane in a process of its own (`sim.lane_process.RemoteCamera`)."""

    @property
    def scene(self) -> Scene: ...

    def show(self, code_text: str, conditions: str) -> object: ...

    def hide(self) -> None: ...

    def blackout(self, on: bool = True) -> None: ...

    def stop(self) -> None: ...


class LaneHost(Protocol):
    """What a SimLane asks of the simulator that runs it (`sim.harness.Simulator`)."""

    options: SimOptions
    network_auth: dict[str, Any]

    @property
    def speed(self) -> float: ...

    @property
    def workdir(self) -> Path: ...

    @property
    def codes(self) -> CodeFactory: ...  # the lanes' message keys too (`lane_auth`)

    def sim_time(self) -> float: ...

    def code_for(self, kind: str, lane: SimLane, driver: Driver) -> tuple[str, str | None]: ...

    def served(self, lane: SimLane, outcome: Outcome) -> None: ...

    def token_accepted(self, text: str, lane_id: str) -> None: ...


class SimLane:
    def __init__(self, sim: LaneHost, index: int, lane_id: str) -> None:
        self.sim = sim
        self.index = index
        self.lane_id = lane_id
        self.mode = metro.gate_mode(index) if sim.options.mode == "metro" else sim.options.mode
        self.watch = Watch()
        self.stats = LaneStats(lane_id, sim.sim_time, sim.options.speed)
        self.outcomes: list[Outcome] = []
        self.records_written: dict[str, Record] = {}
        self.device: DeviceEmulator | None = None
        self.camera: LaneCamera | None = None
        self.daemon: LaneDaemon | None = None
        self.ops_url: str | None = None  # its /metrics, /healthz, /readyz: only a booth's
        self.uplink_link: LinkRelay | None = None  # the uplink's own road to the broker
        self.uplink: dict[str, Any] = {}
        self.backlog_max = 0
        self.started_at = time.monotonic()
        # (0 for a driver waved ahead, else 1; the order of joining; the driver): first come,
        # first served, but a driver waved ahead is served before those waiting.
        self._queue: asyncio.PriorityQueue[tuple[int, int, Driver]] = asyncio.PriorityQueue()
        self._joined = 0
        self._admitting = asyncio.Event()  # cleared: the queue is held back (`hold`)
        self._admitting.set()
        self._serving: Driver | None = None
        self._free_at = 0.0  # monotonic time the entry loop was last cleared
        self._walking = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._quota: int | None = None  # the queue's own bound while squeezed

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def fps(self) -> float:
        return self.sim.options.fps

    @property
    def camera_seed(self) -> int:
        return self.sim.options.seed * 100 + self.index

    @property
    def transit(self) -> bool:
        return self.mode.startswith("transit")

    def config(self, broker_port: int, acquirer_url: str, keyset: Path) -> LaneConfig:
        body = self.config_body(broker_port, acquirer_url, keyset)
        return parse_config(body, f"simulator lane {self.lane_id}")

    def config_body(self, broker_port: int, acquirer_url: str, keyset: Path) -> dict[str, Any]:
        """The lane's configuration as a lane.toml would hold it."""
        o = self.sim.options
        body: dict[str, Any] = {
            "lane": {
                "id": self.lane_id,
                "mode": self.mode,
                "data_dir": str(self.sim.workdir / self.lane_id.replace("/", "_")),
                "max_tries": o.max_tries,
                # A passenger's walk is physics: it scales with the simulation speed, and so
                # do the waits for drivers and barriers the lane bounds (docs/core.md).
                "gate_hold_s": GATE_HOLD_S / o.speed,
                "reread_s": REREAD_S / o.speed,
                **{key: value / o.speed for key, value in DWELL_S.items()},
            },
            "barrier": {
                "move_s": MOVE_S / o.speed,
                **{key: value / o.speed for key, value in SELFTEST_S.items()},
            },
            "broker": {"port": broker_port},
            "uplink": {
                "stalled_after_s": STALLED_AFTER_S / o.speed,
                **({} if self.uplink_link is None else {"port": self.uplink_link.port}),
            },
            "camera": {
                "source": "push",
                "workers": o.decode_workers,
                "change_gate": o.change_gate,
            },
            "auth": {
                "refund_query_s": REFUND_QUERY_S / o.speed,
                "acquirer_url": acquirer_url,
                "keyset": str(keyset),
                **self.sim.codes.lane_auth(keyset.parent, self.lane_id),
                **self.sim.network_auth,
            },
            # Alipay and WeChat Pay charge in yuan.
            "fares": {"currency": "CNY"},
        }
        if o.mode == "metro":
            return metro.gate_config(body, self.index, self.sim.workdir)
        return body

    def make_device(self, broker: Mosquitto) -> DeviceEmulator:
        # The device's mechanics are physics and scale with the speed; a slow ack is its answer
        # time, raced against the lane's ack timeout, which does not scale (as the acquirer's
        # latency does not): scaled, "slow" would be faster than the timeout at speed 10.
        speed = self.sim.options.speed
        timings = replace(Timings().scaled(speed), slow_ack_s=Timings().slow_ack_s)
        return DeviceEmulator(self.lane_id, broker.host, broker.port, timings)

    async def open_uplink_link(self, broker: Mosquitto) -> None:
        """The uplink's road to `broker`, apart from the barrier link's (`cut_uplink`)."""
        self.uplink_link = LinkRelay(broker.address)
        await self.uplink_link.start()

    async def cut_uplink(self, on: bool) -> None:
        """The lane's uplink connection down (`on`), its barrier link untouched; or back."""
        assert self.uplink_link is not None  # opened by start()
        await (self.uplink_link.stop() if on else self.uplink_link.start())

    async def start(self, broker: Mosquitto, acquirer_url: str, keyset: Path) -> None:
        o = self.sim.options
        await self.open_uplink_link(broker)
        config = self.config(broker.port, acquirer_url, keyset)
        self.device = self.make_device(broker)
        source = PushSource()
        camera = SyntheticCamera(fps=self.fps, size=o.frame_size, rng=self.camera_seed)
        self.camera = camera
        # A simulator stopping needs no long grace for the vehicle in progress.
        self.daemon = await build(config, source=source, shutdown_grace_s=STOP_GRACE_S)
        self.daemon.runner.observers += [self.watch, self.stats, self._on_note]
        self._spawn(self.device.run(), "device")
        self._spawn(self.daemon.run(self._stop), "daemon")
        await self.device.wait_connected(10)
        await self.daemon.link.wait_connected(10)
        await self.daemon.uplink.wait_connected(10)
        # Frames are stamped when the camera hands them over, as a real camera's driver stamps
        # them at capture: the synthetic camera's own stamp is taken before it renders, and
        # drawing a new phone pose takes it 20-150 ms, a cost of the simulator, not of the lane.
        camera.start(lambda frame, _rendered: source.put(frame, time.monotonic()))

    async def stop(self) -> None:
        if self.camera is not None:
            await asyncio.to_thread(self.camera.stop)
        await self.clear_loops()
        self._stop.set()
        daemon = next((t for t in self._tasks if t.get_name() == "daemon"), None)
        if daemon is not None:
            await _wait_daemon(daemon, 20.0)
        await self.stop_world()

    async def stop_world(self) -> None:
        """Once the lane is down: its device emulator, then the tasks the lane ran here."""
        if self.device is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.device.stop(), 5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.uplink_link is not None:
            await self.uplink_link.stop()

    async def clear_loops(self) -> None:
        """Whoever is on a loop drives off, so the lane goes quiet and stops at once."""
        if self.device is not None:
            for sensor, occupied in list(self.device.sensors.items()):
                if occupied:
                    with contextlib.suppress(Exception):
                        await self.device.set_sensor(sensor, False)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        if name != "daemon":  # the daemon task is awaited in stop()
            task.add_done_callback(self._tasks.discard)
        return task

    def _on_note(self, note: Notification) -> None:
        match note:
            case ShellNote(name=ShellNoteName.RECORD, body=body):
                record = Record.from_map(body["record"])
                self.records_written[record.record_id] = record

    async def sample_uplink(self) -> None:
        if self.daemon is None:
            return
        status = await self.daemon.forwarder.status()
        self.backlog_max = max(self.backlog_max, status.backlog)
        self.uplink = {
            "backlog": status.backlog,
            "oldest_age_s": None if status.oldest_age_s is None else round(status.oldest_age_s, 1),
            "bytes_used": status.bytes_used,
            "link_up": status.link_up,
            "last_ack_age_s": None
            if status.last_ack_wall is None
            else round(max(0.0, time.time() - status.last_ack_wall), 1),
            "inflight_batches": status.inflight_batches,
            "sent_batches": status.sent_batches,
            "resent_batches": status.resent_batches,
            "backlog_max": self.backlog_max,
        }

    async def squeeze_queue(self, on: bool) -> None:
        if self.daemon is not None:
            self._quota = await squeeze_queue(self.daemon, on, self._quota)

    # --- the queue of drivers -------------------------------------------------------------

    @property
    def load(self) -> int:
        return self._queue.qsize() + (self._serving is not None)

    def join(self, driver: Driver, ahead: bool = False) -> None:
        """The driver queues at this lane; `ahead`: waved to the front, served next (after the
        one at the pay point and any waved ahead before). A saturated lane's queue only grows:
        a vehicle an operator (or a test) sends to meet a fault would wait behind all of it."""
        self._joined += 1
        self._queue.put_nowait((0 if ahead else 1, self._joined, driver))

    def hold(self, on: bool) -> None:
        """Hold the queue back from the pay point (on), or let it move again (off): the
        vehicle at the pay point finishes, nobody follows. What only heals at an empty lane
        (a stuck boom's self-test runs while nobody is there) heals under a queue that never
        ends, as it would with a marshal holding the traffic back."""
        if on:
            self._admitting.clear()
        else:
            self._admitting.set()

    async def drained(self) -> None:
        await self._queue.join()

    async def serve(self) -> None:
        """Serve the drivers of this lane's queue, one at a time, forever."""
        while True:
            await self._admitting.wait()
            _, _, driver = await self._queue.get()
            self._serving = driver
            try:
                outcome = await (
                    self._serve_passenger(driver) if self.transit else self._serve_vehicle(driver)
                )
                self.outcomes.append(outcome)
                self.sim.served(self, outcome)
            except Exception:
                log.exception(
                    "serving a driver failed", extra={"lane": self.lane_id, "driver": driver.index}
                )
            finally:
                self._serving = None
                self._queue.task_done()

    async def _serve_vehicle(self, driver: Driver) -> Outcome:
        assert self.device is not None
        speed = self.sim.speed
        # The vehicle behind moves up once the one ahead has cleared the entry loop.
        wait = self._free_at + self.sim.options.move_up_s / speed - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        outcome = Outcome(driver, self.lane_id, started_at=time.monotonic())
        mark = self.watch.mark
        await self.device.vehicle_enters(driver.vehicle_class)
        arrived = await self.watch.wait_for(lambda n, f: n == NoteName.VEHICLE_ARRIVED, mark, 5.0)
        if arrived is None:
            log.error(
                "lane did not see the vehicle", extra={"lane": self.lane_id, "driver": driver.index}
            )
            await self._leave(outcome, passed=False)
            return outcome
        mark, _, _, fields = arrived
        outcome.vehicle_id = fields["vehicle_id"]
        await asyncio.sleep(self.sim.options.reaction_s / speed)
        await self._try_codes(driver, outcome, mark)
        await self._leave(outcome, outcome.passed)
        return outcome

    async def _serve_passenger(self, driver: Driver) -> Outcome:
        outcome = Outcome(driver, self.lane_id, started_at=time.monotonic())
        await asyncio.sleep(STEP_UP_S / self.sim.speed)
        await self._try_codes(driver, outcome, self.watch.mark)
        if outcome.passed:
            self._spawn(self._walk_through(), "walk")
        outcome.done_at = time.monotonic()
        return outcome

    async def _try_codes(self, driver: Driver, outcome: Outcome, mark: int) -> None:
        for kind in driver.codes[: self.sim.options.max_tries]:
            text, replay_of = self.sim.code_for(kind, self, driver)
            result = await self._present(kind, text, outcome, mark)
            if result is None:
                outcome.refusals.append("no answer")
                continue
            mark, shown_at, ts, name, fields = result
            if replay_of is not None:
                outcome.replays.append((replay_of, name != NoteName.BARRIER_OPENED))
            if name == NoteName.BARRIER_OPENED:
                outcome.passed = True
                outcome.methods.append(kind)
                outcome.latency_ms = (ts - shown_at) * 1000
                outcome.frame_latency_ms = fields.get("latency_ms")
                if kind == "token":
                    self.sim.token_accepted(text, self.lane_id)
                return
            outcome.refusals.append(str(fields.get("reason")))
            await asyncio.sleep(max(0.3 / self.sim.speed, 0.1))
            if self.transit:
                # Frames of the refused code still in flight make more implicit passengers
                # (see docs/simulator.md); the next code's answer is looked for after them.
                mark = self.watch.mark

    async def _present(
        self,
        kind: str,
        text: str,
        outcome: Outcome,
        mark: int,
        answers: Collection[str] = ANSWERS,
    ) -> tuple[int, float, float, str, dict[str, Any]] | None:
        """Hold the phone up until the lane answers; re-aim it when it is not read.

        In transit mode the vehicle id is learnt from the implicit arrival the scan causes."""
        assert self.camera is not None
        shown_at = time.monotonic()
        # A passenger's refused code ends that implicit passenger: each code makes a new one.
        bound = None if self.transit else outcome.vehicle_id

        def answer(name: str, fields: dict[str, Any]) -> bool:
            nonlocal bound
            if bound is None and name == NoteName.VEHICLE_ARRIVED:
                bound = fields.get("vehicle_id")
            return name in answers and bound is not None and fields.get("vehicle_id") == bound

        try:
            for aim in range(1, AIMS + 1):
                self.camera.show(text, self.sim.options.conditions)
                found = await self.watch.wait_for(answer, mark, REAIM_AFTER_S)
                if found is not None:
                    outcome.looks.append(Look(kind, aim, read=True))
                    i, ts, name, fields = found
                    outcome.vehicle_id = bound
                    return i, shown_at, ts, name, fields
            outcome.looks.append(Look(kind, AIMS, read=False))
            return None
        finally:
            self.camera.hide()

    async def _leave(self, outcome: Outcome, passed: bool) -> None:
        """Drive through (paid) or back away; the pay point is free once the entry loop is."""
        device = self.device
        assert device is not None
        if passed:
            # A driver moves off once the boom is up (the lane's latency ends at the ack, before).
            await _until(lambda: device.state == "open", 5.0)
            passing = self._spawn(device.vehicle_passes(), "passing")
            await _until(lambda: not device.sensors.get("entry_loop") or passing.done(), 30.0)
        else:
            await device.vehicle_backs_away()
        self._free_at = outcome.done_at = time.monotonic()

    async def _walk_through(self) -> None:
        """A passenger crosses the open gate: safety loop, then the exit loop. Passengers walk
        through one after the other (the gate may be handed over to the next one while open)."""
        async with self._walking:
            await self._walk()

    async def _walk(self) -> None:
        device = self.device
        assert device is not None
        await _until(lambda: device.state == "open", 5.0)
        step = 0.3 / self.sim.speed
        await device.set_sensor("safety_loop", True)
        await asyncio.sleep(step)
        await device.set_sensor("safety_loop", False)
        await device.set_sensor("exit_loop", True)
        await asyncio.sleep(step)
        await device.set_sensor("exit_loop", False)

    # --- what the dashboard shows -----------------------------------------------------------

    async def follow_refunds(self) -> None:
        """Where each recent partial refund stands, from the lane's payments store (a lane in
        a process of its own shows the record's amounts only)."""
        if self.daemon is None:
            return
        for tx in list(self.stats.transactions):
            if tx["refunded_minor"] and tx["payment_id"] and tx["refund"] != "made":
                row = await self.daemon.resolver.get(tx["payment_id"])
                tx["refund"] = None if row is None else row.refund_state

    async def latest_frame(self, quality: int, hold_s: float) -> LatestFrame | None:
        """The frame the lane's scanner decoded last, as JPEG (see `Pipeline.latest_frame`)."""
        if self.daemon is None:
            return None
        return await asyncio.to_thread(self.daemon.pipeline.latest_frame, True, quality, hold_s)

    def snapshot(self, ingested: int) -> dict[str, Any]:
        daemon = self.daemon
        state = daemon.runner.state if daemon is not None else None
        return {
            "index": self.index + 1,
            "lane": self.lane_id,
            "phase": phase(state).value if state is not None else "starting",
            "barrier": state.barrier if state is not None else "unknown",
            "device": self.device.state if self.device is not None else "unknown",
            "device_fault": self.device.fault if self.device is not None else None,
            "alarms": dict(daemon.runner.alarms) if daemon is not None else {},
            "queue": self.load,
            "served": len(self.outcomes),
            "passed": sum(o.passed for o in self.outcomes),
            "records_written": len(self.records_written),
            "records_ingested": ingested,
            "uplink": self.uplink,
            "camera": {
                "blackout": self.camera.scene.blackout if self.camera is not None else False,
                "fps": self.fps,
            },
            **self.stats.snapshot(),
        }
