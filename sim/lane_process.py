"""A simulated lane whose daemon runs in a process of its own (`lane sim --lane-processes`).

`ProcessLane` is a `SimLane` whose lane daemon and camera are a booth (sim/booth.py) started,
restarted on failure and stopped by a `Supervisor`. The simulator keeps the world (drivers,
the barrier device emulator, the broker, the back office) and talks to the booth over the wire
only:

- notes (what the drivers wait for, the dashboard's figures, records written) from
  `lane/{id}/events`, the display from `lane/{id}/display`, the phase and uplink backlog from
  the retained `lane/{id}/status` (the lane's will says "offline" when its process dies), the
  alarms with their texts from the retained `lane/{id}/health`;
- what is in front of the camera, a camera blackout and the queue quota over
  `sim/{id}/control` (sim/booth_wire.py); a blackout or a squeezed quota in force is sent again
  to a restarted booth.

While the booth is down the lane shows the alarm `lane_offline`, which clears by itself once the
restarted lane says it is up again.

Each booth serves its lane's HTTP ops endpoints (/metrics, /healthz, /readyz) as `lane run`
does, on a free port the simulator picks for its `[metrics]` section; the booth says where it
listens on stdout (`ops http://...`), and that is the lane's `ops_url` (the dashboard's lane,
the report) until the booth goes down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from barrier.health_message import LaneHealth, health_topic
from barrier.messages import DisplayMessage, LaneStatus
from lane.core.display import seen_on_display
from lane.transport.mqtt import Incoming, LinkDown, MqttLink
from lane.wire import topics
from lane.wire.codec import PayloadError, unpack
from scanner.pipeline import LatestFrame
from sim.booth import command
from sim.booth_wire import (
    OPS,
    READY,
    Control,
    ControlOp,
    control_topic,
    decode_frame,
    frame_topic,
    ops_url,
)
from sim.broker import Mosquitto, free_port
from sim.lane import LaneHost, SimLane
from sim.scene import Scene
from sim.supervisor import Child, Supervisor
from uplink.records import Record

log = logging.getLogger("lane.sim")

READY_S = 60.0  # a booth imports the lane stack and opens its stores: seconds on a busy machine
LANE_OFFLINE = "lane_offline"
FRAME_S = 1.0  # the dashboard's camera view asks a few times a second; a late frame is stale


class BoothError(RuntimeError):
    """A lane's process does not come up."""


class RemoteCamera:
    """The booth's camera as the drivers and faults see it: each change is a control message,
    sent in order by one task."""

    def __init__(self) -> None:
        self._scene = Scene(code_text=None)
        self._blackout = False
        self.outbox: asyncio.Queue[Control] = asyncio.Queue()

    @property
    def scene(self) -> Scene:
        return replace(self._scene, blackout=True) if self._blackout else self._scene

    def show(self, code_text: str, conditions: str) -> Scene:
        self._scene = Scene(code_text=code_text)
        self.outbox.put_nowait(Control(ControlOp.SHOW, text=code_text, conditions=conditions))
        return self._scene

    def hide(self) -> None:
        self._scene = Scene(code_text=None)
        self.outbox.put_nowait(Control(ControlOp.HIDE))

    def blackout(self, on: bool = True) -> None:
        self._blackout = on
        self.outbox.put_nowait(Control(ControlOp.BLACKOUT, on=on))

    def stop(self) -> None:
        """The camera stops with its booth."""


class ProcessLane(SimLane):
    MAX_RESTARTS = 5  # then the booth stays down, given up (sim.supervisor)

    def __init__(self, sim: LaneHost, index: int, lane_id: str) -> None:
        super().__init__(sim, index, lane_id)
        self.remote = RemoteCamera()
        self.camera = self.remote
        self.supervisor = Supervisor(self._on_line, max_restarts=self.MAX_RESTARTS)
        self.child: Child | None = None
        self.status: LaneStatus | None = None
        self.health: LaneHealth | None = None
        self.squeezed = False
        self.link: MqttLink | None = None
        self._ready = asyncio.Event()
        self._frame_waiters: list[asyncio.Future[LatestFrame]] = []
        self._ops_port: int | None = None  # picked once: a restarted booth serves where it did

    def config_body(self, broker_port: int, acquirer_url: str, keyset: Path) -> dict[str, Any]:
        body = super().config_body(broker_port, acquirer_url, keyset)
        if self._ops_port is None:
            self._ops_port = free_port()
        return body | {"metrics": {"host": "127.0.0.1", "port": self._ops_port}}

    async def start(self, broker: Mosquitto, acquirer_url: str, keyset: Path) -> None:
        o = self.sim.options
        await self.open_uplink_link(broker)
        config = self.sim.workdir / f"{self.lane_id.replace('/', '_')}.json"
        config.write_text(json.dumps(self.config_body(broker.port, acquirer_url, keyset)))
        self.device = self.make_device(broker)
        lane = self.lane_id
        self.link = MqttLink(
            broker.host,
            broker.port,
            client_id=f"sim-{lane}-{os.getpid()}",
            subscriptions=[
                (topics.events(lane), 0),
                (topics.display(lane), 0),
                (topics.status(lane), 1),
                (health_topic(lane), 1),
                (frame_topic(lane), 0),
            ],
            receive=self._receive,
        )
        self._spawn(self.device.run(), "device")
        self._spawn(self.link.run(), "wire")
        self._spawn(self._send_controls(), "control")
        await self.device.wait_connected(10)
        await self.link.wait_connected(10)
        argv = command(config, fps=self.fps, size=o.frame_size, seed=self.camera_seed)
        self.child = self.supervisor.start(lane, argv)
        ready = asyncio.ensure_future(self._ready.wait())
        down = asyncio.ensure_future(self.supervisor.wait(lane))  # exited 0, or given up
        await asyncio.wait({ready, down}, timeout=READY_S, return_when=asyncio.FIRST_COMPLETED)
        for waiting in (ready, down):
            waiting.cancel()
        if not self._ready.is_set():
            raise BoothError(
                f"lane {lane}: its process did not come up within {READY_S:g} s"
                f" (return codes so far: {self.child.exits}; its errors are on stderr)"
            )

    async def stop(self) -> None:
        await self.clear_loops()
        await self.supervisor.stop()
        await self.stop_world()

    # --- from the booth ---------------------------------------------------------------------

    def _on_line(self, _name: str, line: str) -> None:
        if line.startswith(OPS):
            self.ops_url = ops_url(line)
            return
        if line != READY:
            return
        self._ready.set()
        # A restarted booth starts with a clear camera and its own bound: faults in force again.
        if self.remote.scene.blackout:
            self.remote.outbox.put_nowait(Control(ControlOp.BLACKOUT, on=True))
        if self.squeezed:
            self.remote.outbox.put_nowait(Control(ControlOp.QUOTA, on=True))

    def _receive(self, msg: Incoming) -> None:
        suffix = msg.topic.removeprefix(f"lane/{self.lane_id}/")
        try:
            if msg.topic == frame_topic(self.lane_id):
                frame = decode_frame(msg.payload)
                waiters, self._frame_waiters = self._frame_waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(frame)
            elif suffix == "events":
                self._event(unpack(msg.payload))
            elif suffix == "display":
                display = DisplayMessage.decode(msg.payload)
                self.stats.observe("display", {"lines": display.lines, "ttl_s": display.ttl_s})
            elif suffix == "status":
                self.status = LaneStatus.decode(msg.payload)
            elif suffix == "health":
                self.health = LaneHealth.decode(msg.payload)
        except PayloadError as exc:
            log.warning(
                "garbage from a lane process",
                extra={"lane": self.lane_id, "topic": msg.topic, "error": str(exc)},
            )

    def _event(self, body: dict[str, Any]) -> None:
        name = str(body.pop("name", ""))
        body.pop("v", None)
        if name == "record":
            record = Record.from_map(body["record"])
            self.records_written[record.record_id] = record
        self.watch.add(name, body)
        self.stats.observe(name, body)

    # --- to the booth -----------------------------------------------------------------------

    async def _send_controls(self) -> None:
        while True:
            control = await self.remote.outbox.get()
            if self.link is None:
                continue
            try:
                await self.link.publish(control_topic(self.lane_id), control.encode(), qos=1)
            except LinkDown as exc:
                # A scene lost is a look not seen: the driver re-aims, as at a dirty lens.
                log.warning(
                    "control not sent",
                    extra={"lane": self.lane_id, "op": control.op.value, "error": str(exc)},
                )

    async def squeeze_queue(self, on: bool) -> None:
        self.squeezed = on
        self.remote.outbox.put_nowait(Control(ControlOp.QUOTA, on=on))

    # --- what the dashboard and the report read ---------------------------------------------

    async def latest_frame(self, quality: int, hold_s: float) -> LatestFrame | None:
        """Asked of the booth over the control topic; None when it has none within FRAME_S."""
        waiter: asyncio.Future[LatestFrame] = asyncio.get_running_loop().create_future()
        self._frame_waiters.append(waiter)
        self.remote.outbox.put_nowait(Control(ControlOp.FRAME, quality=quality, hold_s=hold_s))
        try:
            async with asyncio.timeout(FRAME_S):
                return await waiter
        except TimeoutError:
            return None
        finally:
            if waiter in self._frame_waiters:
                self._frame_waiters.remove(waiter)

    def offline_alarm(self) -> str | None:
        """Why the lane is down (its process exited, or its will said offline), or None."""
        child = self.child
        process = child.process if child is not None else None
        if child is not None and process is not None and process.returncode is not None:
            return (
                f"lane process exited (return code {process.returncode}):"
                f" restart {child.restarts + 1} by the supervisor"
                if not child.gave_up
                else f"lane process keeps failing (return code {process.returncode}): given up"
            )
        if self.status is not None and self.status.state == LaneStatus.OFFLINE:
            return "lane controller offline (its will or its last word)"
        return None

    async def sample_uplink(self) -> None:
        status = self.status
        if status is None or status.state == LaneStatus.OFFLINE:
            return
        backlog = status.uplink_backlog or 0
        self.backlog_max = max(self.backlog_max, backlog)
        oldest = status.oldest_unsent_s
        self.uplink = {
            "backlog": backlog,
            "oldest_age_s": None if oldest is None else round(oldest, 1),
            "link_up": status.link.get("uplink", False),
            "backlog_max": self.backlog_max,
        }

    def snapshot(self, ingested: int) -> dict[str, Any]:
        view = super().snapshot(ingested)
        alarms = {}
        if self.health is not None:
            alarms = {a.code: a.message for a in self.health.alarms if a.cleared_us is None}
        down = self.offline_alarm()
        if down is not None:
            alarms[LANE_OFFLINE] = down
        status = self.status
        phase = "starting" if status is None else status.state
        view |= {
            "phase": LaneStatus.OFFLINE if down is not None else phase,
            # As a display shows it, and the console's view of it: not a text the lane left.
            "display": seen_on_display(
                view["display"],
                offline=down is not None,
                accepting=None if status is None else status.accepting,
            ),
            "barrier": self.device.state if self.device is not None else "unknown",
            "alarms": alarms,
            "process": {
                "pid": None if self.child is None or self.child.process is None
                else self.child.process.pid,
                "restarts": 0 if self.child is None else self.child.restarts,
                "ops": None if down is not None else self.ops_url,
            },
        }  # fmt: skip
        return view
