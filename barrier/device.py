"""A barrier and lane I/O device emulator that speaks the same protocol as a real gate.

Used by the tests and the simulator. It subscribes to the lane's command topic, admits,
executes and acknowledges commands by the rules in `barrier.gate`, publishes its retained
state with an increasing seq, and plays the lane's sensors (loops, light curtain, classifier)
for a traffic generator. Faults can be injected: stuck, stuck_open, no_ack, slow_ack, offline,
fault, garbled, garbled_acks.

Time: `clock` is the device's wall clock (Unix seconds, used for deadlines and timestamps);
`sleep` is how it waits for its mechanism and for passing vehicles, so the simulator can run
faster than real time and tests can inject their own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, fields, replace

from barrier import gate as rules
from barrier.messages import (
    WILL_SEQ,
    BarrierAck,
    BarrierCommand,
    BarrierStatus,
    DeviceQuery,
    DeviceSnapshot,
    SensorReading,
)
from lane.transport.mqtt import Credentials, Incoming, LinkDown, MqttLink, WillSpec
from lane.wire import topics
from lane.wire.codec import PayloadError, unpack

log = logging.getLogger("lane.barrier.device")

FAULTS = frozenset(
    {"stuck", "stuck_open", "no_ack", "slow_ack", "offline", "fault", "garbled", "garbled_acks"}
)
# Under `garbled`, what the device says of its boom (acks, states, snapshots) goes out as this:
# a byte msgpack never uses, as a firmware speaking another format would look to the lane.
# `garbled_acks` garbles its acks only (a firmware whose ack encoder alone broke).
GARBLED = b"\xc1"
SAFETY_SENSORS = frozenset({"safety_loop", "light_curtain"})
# Every presence sensor the emulated lane has: a snapshot reports each one.
LANE_SENSORS = ("entry_loop", "exit_loop", "light_curtain", "safety_loop")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Timings:
    """Seconds the device takes for things; `scaled(speed)` runs them `speed` times faster."""

    opening_s: float = 0.8
    closing_s: float = 1.0
    slow_ack_s: float = 3.0  # extra delay before a command is even looked at, under slow_ack
    step_s: float = 0.4  # between the loop transitions of a passing vehicle

    def scaled(self, speed: float) -> Timings:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        return Timings(*(getattr(self, f.name) / speed for f in fields(self)))


@dataclass(frozen=True)
class _Out:
    """One message waiting to be published; states carry the session they belong to."""

    topic: str
    payload: bytes
    retain: bool = False
    correlation: bytes | None = None
    session: str | None = None


class DeviceEmulator:
    def __init__(  # noqa: PLR0917 - the positional order is the documented API
        self,
        lane: str,
        host: str,
        port: int,
        timings: Timings = Timings(),
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        *,
        credentials: Credentials | None = None,
        client_id: str | None = None,
        memory: int = 1024,
    ) -> None:
        self.lane = lane
        self._boom_words = topics.boom_words(lane)
        self.timings = timings
        self.gate = rules.Gate()
        self.fault: str | None = None
        self.executed = rules.ExecutedCommands(memory)
        # Every well-formed command that reached the device, and the cmd_ids it executed.
        self.received: list[BarrierCommand] = []
        self.executions: list[str] = []
        self.queries: list[str] = []  # the query_ids it answered
        self.sensors: dict[str, bool] = {}
        self._clock = clock
        self._sleep = sleep
        self._session = ""
        self._next_session = secrets.token_hex(6)
        self._seq = 0
        self._io_seq = 0
        # Commands wait here only behind a slow one (slow_ack): otherwise they are handled
        # as they arrive, without a hand-off to another task.
        self._inbox: asyncio.Queue[tuple[Incoming, int]] = asyncio.Queue()
        self._working = False
        # Everything goes out in the order it happened (an ack before the state it caused, a
        # safety loop reading before the reversal it triggered), without waiting for the
        # broker's PUBACK of one message before handing over the next (see _emit).
        self._publishing: set[asyncio.Task[None]] = set()
        self._control: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        self._stopped = asyncio.Event()
        self._running = False
        self._link_task: asyncio.Task[None] | None = None
        self._motion: asyncio.Task[None] | None = None
        self.link = MqttLink(
            host,
            port,
            client_id or f"barrier-{lane}",
            [(topics.barrier_cmd(lane), 1), (topics.device_query(lane), 1)],
            receive=self._on_message,
            on_connect=self._on_connect,
            will=self._will(self._next_session),
            credentials=credentials,
            # A retained command is dropped (gate.admit) even when the broker forwards it live.
            retain_as_published=True,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop()` (or cancellation)."""
        self._running = True
        self._stopped.clear()
        helpers = [asyncio.create_task(self._work())]
        self._start_link()
        try:
            while True:
                kind, previous = await self._control.get()
                if kind == "stop":
                    break
                await self._after_fault_change(previous)
        finally:
            tasks = [t for t in (*helpers, *self._publishing, self._link_task, self._motion) if t]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._link_task = self._motion = None
            self._running = False
            self._stopped.set()

    async def stop(self) -> None:
        """Shut down cleanly: say `offline` (a clean disconnect discards the will), leave."""
        if not self._running:
            return
        self._publish_state("offline")
        try:
            async with asyncio.timeout(2.0):
                await self.flushed()
        except TimeoutError:
            log.warning("stopping with unsent messages", extra={"lane": self.lane})
        self._control.put_nowait(("stop", None))
        await self._stopped.wait()

    async def flushed(self) -> None:
        """Until every message queued so far was published, or lost to a broker that is down."""
        while self._publishing:
            await asyncio.wait(set(self._publishing))

    async def wait_connected(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.link.wait_connected(timeout)

    def set_fault(self, name: str | None) -> None:
        """Inject a fault (one of FAULTS) or clear it with None; takes effect right away.

        The next command is handled under the new fault; leaving or rejoining the broker
        follows on the device's task.
        """
        if name is not None and name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {sorted(FAULTS)}")
        previous, self.fault = self.fault, name
        if previous == name:
            return
        log.warning("fault", extra={"lane": self.lane, "fault": name, "previous": previous})
        if previous == "fault":
            self._apply(rules.recover(self.gate), None)
        if name == "fault":
            self._apply(rules.fail(self.gate, "fault injected"), None)
        if "garbled" in (name, previous):
            self._publish_state()  # a device that changes its format says its state in the new one
        self._control.put_nowait(("fault", previous))

    @property
    def state(self) -> str:
        return self.gate.state

    # --- lane I/O, for the traffic generator ---------------------------------------------------

    async def vehicle_enters(self, vehicle_class: int) -> None:
        """A vehicle drives onto the pay point: classified first, then the entry loop."""
        self._publish_io("classifier", vehicle_class=vehicle_class)
        await self.set_sensor("entry_loop", True)

    async def vehicle_passes(self, lost: Collection[str] = ()) -> None:
        """The vehicle at the pay point drives through: safety loop, then exit loop. The clears
        of the loops named in `lost` never reach the broker (a dropped message, a loop fault):
        the device knows them (its snapshot tells), the lane does not hear them."""
        if self.gate.state != "open":
            log.warning(
                "vehicle passes a barrier that is not open",
                extra={"lane": self.lane, "state": self.gate.state},
            )
        step = self.timings.step_s
        await self.set_sensor("safety_loop", True)
        await self._sleep(step)
        await self.set_sensor("entry_loop", False, heard="entry_loop" not in lost)
        await self._sleep(step)
        await self.set_sensor("safety_loop", False)
        await self._sleep(step)
        await self.set_sensor("exit_loop", True)
        await self._sleep(step)
        await self.set_sensor("exit_loop", False, heard="exit_loop" not in lost)

    async def vehicle_backs_away(self) -> None:
        await self.set_sensor("entry_loop", False)

    async def set_sensor(self, name: str, occupied: bool, *, heard: bool = True) -> None:
        """Set one presence sensor and publish it (unless not `heard`: its message lost); a
        safety sensor also drives the gate."""
        if name == "classifier":
            raise ValueError("the classifier reports a class: use vehicle_enters()")
        self.sensors[name] = occupied
        if heard:
            self._publish_io(name, occupied=occupied)
        if name in SAFETY_SENSORS:
            under = any(self.sensors.get(s, False) for s in SAFETY_SENSORS)
            if under != self.gate.safety_occupied:
                self._apply(*rules.safety(self.gate, under))

    # --- commands ------------------------------------------------------------------------------

    def _on_message(self, msg: Incoming) -> None:
        if msg.topic == topics.device_query(self.lane):
            self._answer_query(msg)
            return
        # Stamp arrival now: the MQTT expiry the broker forwarded counts from this moment.
        received_us = self._now_us()
        if self._working or not self._inbox.empty() or self.fault == "slow_ack":
            self._inbox.put_nowait((msg, received_us))  # behind a slow one, in order
            return
        cmd = self._take(msg)
        if cmd is not None:
            self._execute(msg, cmd, received_us)

    async def _work(self) -> None:
        while True:
            msg, received_us = await self._inbox.get()
            self._working = True
            try:
                cmd = self._take(msg)
                if cmd is not None:
                    if self.fault == "slow_ack":
                        await self._sleep(self.timings.slow_ack_s)
                    self._execute(msg, cmd, received_us)
            finally:
                self._working = False

    def _take(self, msg: Incoming) -> BarrierCommand | None:
        """The command to look at, or None: malformed (refused if it has a cmd_id) or ignored."""
        try:
            cmd = BarrierCommand.decode(msg.payload)
        except PayloadError as exc:
            log.warning("malformed command", extra={"lane": self.lane, "error": str(exc)})
            cmd_id = _salvage_cmd_id(msg.payload)
            if cmd_id is not None:
                self._ack(msg, BarrierAck(cmd_id, False, self.gate.state, f"bad_command: {exc}"))
            return None
        self.received.append(cmd)
        if self.fault == "no_ack":
            extra = {"lane": self.lane, "cmd_id": cmd.cmd_id, "op": cmd.op}
            log.info("command ignored (no_ack fault)", extra=extra)
            return None
        return cmd

    def _execute(self, msg: Incoming, cmd: BarrierCommand, received_us: int) -> None:
        extra = {"lane": self.lane, "cmd_id": cmd.cmd_id, "op": cmd.op}
        expires_us = None if msg.expiry_s is None else received_us + msg.expiry_s * 1_000_000
        verdict = rules.admit(cmd, self.lane, self._now_us(), expires_us, retained=msg.retain)
        if verdict is not None:
            if verdict.drop:
                log.warning("%s command dropped", verdict.error, extra=extra)
                return
            log.warning("command refused", extra={**extra, "error": verdict.error})
            self._ack(msg, BarrierAck(cmd.cmd_id, False, self.gate.state, verdict.error))
            return
        prior = self.executed.outcome(cmd.cmd_id)
        if prior is not None:
            log.info("repeated cmd_id answered, not executed", extra=extra)
            self._ack(msg, BarrierAck(cmd.cmd_id, prior[0], self.gate.state, prior[1]))
            return
        if self.fault == "stuck" or (self.fault == "stuck_open" and cmd.op == "close"):
            # The drive reports success but the boom never moves (stuck_open: it rises, and
            # then never comes down).
            self.executed.remember(cmd.cmd_id, True, None)
            self._ack(msg, BarrierAck(cmd.cmd_id, True, self.gate.state))
            return
        gate, ok, error, move = rules.command(self.gate, cmd.op)
        if ok:
            self.executed.remember(cmd.cmd_id, ok, error)
            self.executions.append(cmd.cmd_id)
        log.info("command", extra={**extra, "ok": ok, "error": error})
        # The ack goes first: it is what the controller is waiting for. It carries the move the
        # command started (`opening`, `closing`), which is therefore not published as a state
        # of its own; the end of the move is (docs/barrier.md, rule 8).
        self._ack(msg, BarrierAck(cmd.cmd_id, ok, gate.state, error))
        self._apply(gate, move, announce=move is None)

    def _ack(self, msg: Incoming, ack: BarrierAck) -> None:
        topic = msg.response_topic or topics.barrier_ack(self.lane)
        correlation = msg.correlation if msg.correlation is not None else ack.cmd_id.encode()
        self._emit(_Out(topic, ack.encode(), correlation=correlation))

    # --- mechanics -----------------------------------------------------------------------------

    def _apply(self, gate: rules.Gate, move: rules.Move | None, *, announce: bool = True) -> None:
        """Take the new gate, start its move, and publish the state if what it says changed
        (unless `announce` is off: an ack already said it)."""
        before = (self.gate.state, self.gate.note)
        self.gate = gate
        if move is not None:
            current = asyncio.current_task()
            if self._motion is not None and self._motion is not current:
                self._motion.cancel()  # superseded: its arrival would be ignored anyway
            self._motion = asyncio.create_task(self._move(move))
        if (gate.state, gate.note) != before and announce:
            self._publish_state()

    async def _move(self, move: rules.Move) -> None:
        duration = self.timings.opening_s if move.target == "open" else self.timings.closing_s
        await self._sleep(duration)
        self._apply(*rules.arrived(self.gate, move))

    async def _after_fault_change(self, previous: str | None) -> None:
        if previous == "offline" and self.fault != "offline":
            self._start_link()
        if self.fault == "offline":
            # Leave as a crashed device would: the broker publishes our will ("offline").
            await self.link.drop()
            await self._stop_link()

    # --- MQTT ----------------------------------------------------------------------------------

    def _start_link(self) -> None:
        if self._link_task is None or self._link_task.done():
            self._link_task = asyncio.create_task(self.link.run())

    async def _stop_link(self) -> None:
        task, self._link_task = self._link_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _on_connect(self) -> None:
        # Each connection is a session of its own: seq restarts, and the will prepared for
        # this connection (already registered with the broker) names it.
        self._session, self._seq = self._next_session, 0
        self._next_session = secrets.token_hex(6)
        self.link.will = self._will(self._next_session)
        self._publish_state()
        self._publish_snapshot(None)  # the whole truth, for a controller that missed anything

    def _will(self, session: str) -> WillSpec:
        status = BarrierStatus("offline", WILL_SEQ, self._now_us(), None, session)
        return WillSpec(topics.barrier_state(self.lane), status.encode(), qos=1, retain=True)

    def _publish_state(self, state: str | None = None) -> None:
        self._seq += 1
        status = BarrierStatus(
            state or self.gate.state, self._seq, self._now_us(), self.gate.note, self._session
        )
        topic = topics.barrier_state(self.lane)
        self._emit(_Out(topic, status.encode(), retain=True, session=self._session))

    # --- the device's whole truth (DeviceQuery -> DeviceSnapshot) -------------------------------

    def _answer_query(self, msg: Incoming) -> None:
        """Answered at once, whatever the fault: a query moves nothing, and a controller that
        cannot get an ack must still learn where the boom is."""
        try:
            query = DeviceQuery.decode(msg.payload)
        except PayloadError as exc:
            log.warning("malformed device query", extra={"lane": self.lane, "error": str(exc)})
            return
        if query.lane != self.lane:
            log.warning(
                "device query for another lane ignored",
                extra={"lane": self.lane, "query_lane": query.lane},
            )
            return
        self.queries.append(query.query_id)
        self._publish_snapshot(query.query_id)

    def snapshot(self, query_id: str | None = None) -> DeviceSnapshot:
        sensors = {name: self.sensors.get(name, False) for name in LANE_SENSORS}
        return DeviceSnapshot(
            self.gate.state,
            sensors,
            self._session,
            self._seq,
            self._now_us(),
            query_id,
            self.gate.note,
        )

    def _publish_snapshot(self, query_id: str | None) -> None:
        payload = self.snapshot(query_id).encode()
        topic = topics.device_snapshot(self.lane)
        self._emit(_Out(topic, payload, session=self._session))

    def _publish_io(
        self, sensor: str, *, occupied: bool | None = None, vehicle_class: int | None = None
    ) -> None:
        self._io_seq += 1
        reading = SensorReading(sensor, occupied, vehicle_class, self._now_us(), self._io_seq)
        self._emit(_Out(topics.io(self.lane, sensor), reading.encode()))

    def _emit(self, out: _Out) -> None:
        """Hand a message to the broker now, in call order, without waiting for the previous
        one's PUBACK (waiting made an ack queue behind the states of the previous command).

        Order holds because each publish runs in a task of its own, tasks take their first
        step in creation order, and `MqttLink.publish` hands the packet to the MQTT client
        (which writes in call order) before its first await.
        """
        if (self.fault == "garbled" and out.topic in self._boom_words) or (
            self.fault == "garbled_acks" and out.topic == topics.barrier_ack(self.lane)
        ):
            out = replace(out, payload=GARBLED)
        task = asyncio.create_task(self._publish(out))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, out: _Out) -> None:
        if out.session is not None and out.session != self._session:
            return  # a state of an earlier connection: the new one re-announced it
        try:
            await self.link.publish(
                out.topic, out.payload, qos=1, retain=out.retain, correlation=out.correlation
            )
        except LinkDown as exc:
            # States are re-announced on reconnection; a lost ack or reading is what a real
            # device would lose too, and the controller's timeouts cover it.
            log.warning(
                "message lost: broker down",
                extra={"lane": self.lane, "topic": out.topic, "error": str(exc)},
            )

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)


def _salvage_cmd_id(payload: bytes) -> str | None:
    """The cmd_id of a malformed command, if it has a usable one, so it can be refused."""
    try:
        body = unpack(payload)
    except PayloadError:
        return None
    cmd_id = body.get("cmd_id")
    if isinstance(cmd_id, str) and 0 < len(cmd_id) <= 128:
        return cmd_id
    return None


__all__ = ["FAULTS", "DeviceEmulator", "Timings"]
