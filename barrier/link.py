"""The controller's side of the barrier and lane I/O protocol: a thin adapter over MqttLink.

It turns incoming MQTT messages into typed messages for callbacks and typed messages into
publishes with the right QoS, retain flag and MQTT 5 properties. It holds no lane logic: ack
timeouts, retries and FAULT are the lane core's. What it does decide:

- garbage on any subscribed topic goes to `on_garbage(topic, error)` when given, never into
  another callback, and is logged ("garbage on a lane topic": lane, topic, error, retained):
  the first of a topic (the `io/+` readings share one) in `REFUSAL_LOG_EVERY_S`, the others
  counted, and `say_counted()`, from the lane's health loop, says how many once that time has
  passed (every window's as the lane stops: lane.refusal_log): a flood writes two lines a
  minute, not one a message;
- a barrier state older than one already seen from the same device session (lower or equal
  seq) is dropped, so a re-delivered retained state never rolls the lane's view back;
- the controller's will is `lane/{id}/status` = LaneStatus "offline", retained;
- on each connection, before the lane hears of it, the display's retained text is replaced by
  one with no lines (`DisplayMessage.none()`): a text left from before is not the lane's.

Callbacks are plain functions called on the event loop, straight from the MQTT client's read
callback (no task or queue in between: an ack reaches `on_ack` in the loop turn that read it);
they should only hand the message on (e.g. `queue.put_nowait`). An exception in one is logged by
MqttLink with the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from barrier.messages import (
    AttendantCommand,
    BarrierAck,
    BarrierCommand,
    BarrierStatus,
    DeviceQuery,
    DeviceSnapshot,
    DisplayMessage,
    LaneStatus,
    SensorReading,
)
from barrier.peripherals import PlateReading
from lane.refusal_log import RefusalLog
from lane.transport.broker_link import BrokerLink
from lane.transport.mqtt import Incoming, PublishRefused, WillSpec
from lane.wire import topics
from lane.wire.codec import PayloadError, pack

log = logging.getLogger("lane.barrier")


class BarrierLink:
    def __init__(
        self,
        lane: str,
        broker: BrokerLink,
        *,
        on_ack: Callable[[BarrierAck], None],
        on_state: Callable[[BarrierStatus], None],
        on_sensor: Callable[[SensorReading], None],
        on_attendant: Callable[[AttendantCommand], None],
        on_garbage: Callable[[str, str], None] | None = None,
        on_link: Callable[[bool, str | None], None] | None = None,
        on_snapshot: Callable[[DeviceSnapshot], None] | None = None,
        on_plate: Callable[[PlateReading], None] | None = None,
        client_id: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.lane = lane
        self._on_ack = on_ack
        self._on_state = on_state
        self._on_sensor = on_sensor
        self._on_attendant = on_attendant
        self._on_garbage = on_garbage
        self._on_link = on_link
        self._on_snapshot = on_snapshot
        self._on_plate = on_plate
        self.wall = wall
        self._ack_topic = topics.barrier_ack(lane)
        self._state_topic = topics.barrier_state(lane)
        self._attendant_topic = topics.attendant(lane)
        self._snapshot_topic = topics.device_snapshot(lane)
        # (session, seq) of the newest barrier state passed on.
        self._last_state: tuple[str, int] | None = None
        # The newest text the lane said (and when, its wall clock), for `show_again`: a text
        # the broker refused is not kept by anyone else, and nothing else would try its topic.
        self._said: tuple[DisplayMessage, float] | None = None
        self._text_refused = asyncio.Event()
        self.garbage_log = RefusalLog()
        self.mqtt = broker.link(
            client_id or f"controller-{lane}",
            subscriptions=[
                (self._ack_topic, 1),
                (self._state_topic, 1),
                (topics.io_all(lane), 1),
                (self._attendant_topic, 1),
                (self._snapshot_topic, 1),
            ],
            receive=self._dispatch,
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            will=self._will(),
        )

    async def run(self) -> None:
        """Connect, subscribe and dispatch forever (run it as a task; cancel to stop)."""
        await self.mqtt.run()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self.mqtt.wait_connected(timeout)

    @property
    def connected(self) -> bool:
        return self.mqtt.connected.is_set()

    # --- outgoing ------------------------------------------------------------------------------

    async def send(self, cmd: BarrierCommand, expiry_s: int) -> None:
        """Publish a barrier command: QoS 1, never retained, expiring, answerable.

        Returns once the broker has taken it; raises LinkDown when the broker is unreachable.
        """
        if cmd.lane != self.lane:
            raise ValueError(f"command for lane {cmd.lane!r} sent on lane {self.lane!r}")
        if isinstance(expiry_s, bool) or not isinstance(expiry_s, int) or expiry_s < 1:
            raise ValueError(f"expiry_s must be an int >= 1, got {expiry_s!r}")
        await self.mqtt.publish(
            topics.barrier_cmd(self.lane),
            cmd.encode(),
            qos=1,
            retain=False,
            expiry_s=expiry_s,
            response_topic=self._ack_topic,
            correlation=cmd.cmd_id.encode(),
        )

    async def query(self, query: DeviceQuery) -> None:
        """Ask the device for its whole truth: QoS 1, never retained (a stale query is noise)."""
        if query.lane != self.lane:
            raise ValueError(f"query for lane {query.lane!r} sent on lane {self.lane!r}")
        await self.mqtt.publish(topics.device_query(self.lane), query.encode(), qos=1, retain=False)

    async def show(self, message: DisplayMessage) -> None:
        """Put lines on the lane display: QoS 1 (a text may be the lane's last word for a long
        while, "Lane closed" for a whole fault: the broker keeps it for a display away on its
        persistent session), retained, so a display that (re)starts is handed the lane's current
        text at once, and expiring with the text's ttl, so the broker never hands it one the
        lane stopped showing. PublishRefused when the broker's ACL refuses the topic (then
        `show_again` says the lane's newest text again, at the refusal back-off)."""
        self._said = (message, self.wall())
        try:
            await self.mqtt.publish(
                topics.display(self.lane),
                message.encode(),
                qos=1,
                retain=True,
                expiry_s=message.expiry_s,
            )
        except PublishRefused:
            self._text_refused.set()
            raise

    async def show_again(self) -> None:
        """A refused text is the lane's word until its next: at an idle lane that may be hours,
        so `publish_refused` stayed raised, and the display dark or on a stale copy, long after
        the ACL was fixed. The newest text the lane said (what is left of its ttl; spent, no
        text) is said again at the link's refusal back-off until the broker takes it. Run as a
        task."""
        topic = topics.display(self.lane)
        while True:
            await self._text_refused.wait()
            self._text_refused.clear()
            await asyncio.sleep(self.mqtt.refusals.wait_s(topic))
            said = self._said
            if said is None or not self.mqtt.refusals.wait_s(topic):
                continue  # taken meanwhile (a newer text, or the first said again)
            message, at = said
            left_s = message.ttl_s - (self.wall() - at)
            again = DisplayMessage(message.lines, left_s) if left_s > 0 else DisplayMessage.none()
            extra = {"lane": self.lane, "topic": topic}
            try:
                await self.show(again)
            except PublishRefused:
                continue  # logged once, by the link's refusals; show set the next try
            except ConnectionError as exc:  # down: on connecting the lane says its text anew
                log.warning("display text not said again", extra={**extra, "error": str(exc)})
            else:
                log.info("display text said again", extra=extra)

    async def publish_status(self, status: LaneStatus) -> None:
        await self.mqtt.publish(topics.status(self.lane), status.encode(), qos=1, retain=True)

    async def publish_event(self, event: Mapping[str, Any]) -> None:
        try:
            payload = pack(event)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"event cannot be encoded: {exc}") from exc
        await self.mqtt.publish(topics.events(self.lane), payload, qos=0)

    # --- incoming ------------------------------------------------------------------------------

    def _dispatch(self, msg: Incoming) -> None:
        try:
            deliver = self._decode(msg)
        except PayloadError as exc:
            # retained: a copy the broker kept, met at (re)connection; it stays until its
            # publisher replaces it or someone deletes it (an empty retained message).
            kind = "retained" if msg.retain else "live"
            if self.garbage_log.admit(self._garbage_topic(msg.topic), kind, self.wall()):
                log.warning(
                    "garbage on a lane topic",
                    extra={
                        "lane": self.lane,
                        "topic": msg.topic,
                        "error": str(exc),
                        "retained": msg.retain,
                    },
                )
            if self._on_garbage is not None:
                self._on_garbage(msg.topic, str(exc))
            return
        deliver()

    def say_counted(self, *, stopping: bool = False) -> None:
        """One line per topic whose garbage was counted, not logged, in a window that passed
        (`stopping`: in every window)."""
        refusals = self.garbage_log
        for counted in refusals.rest() if stopping else refusals.counted(self.wall()):
            log.warning(
                "garbage on a lane topic, more counted",
                extra={
                    "lane": self.lane,
                    "topic": counted.what,
                    "retained": counted.reason == "retained",
                    "refused": counted.count,
                    "since": counted.since,
                },
            )

    def _garbage_topic(self, topic: str) -> str:
        """The topic a garbage line is counted under: a reading's topic names a sensor anybody
        may invent (`io/<anything>`), so they share their wildcard."""
        return topic if topics.sensor_of(topic) is None else topics.io_all(self.lane)

    def _decode(self, msg: Incoming) -> Callable[[], None]:
        """Decode and check a message; returns the call that hands it on."""
        topic = msg.topic
        if topic == self._ack_topic:
            ack = BarrierAck.decode(msg.payload)
            if msg.correlation is not None and msg.correlation != ack.cmd_id.encode():
                raise PayloadError(f"ack for {ack.cmd_id!r} carries another correlation")
            return lambda: self._on_ack(ack)
        if topic == self._state_topic:
            status = BarrierStatus.decode(msg.payload)
            return lambda: self._state(status)
        if topic == self._snapshot_topic:
            snapshot = DeviceSnapshot.decode(msg.payload)
            return lambda: self._snapshot(snapshot)
        if topic == self._attendant_topic:
            command = AttendantCommand.decode(msg.payload)
            return lambda: self._on_attendant(command)
        sensor = topics.sensor_of(topic)
        if sensor is None:
            raise PayloadError("message on a topic this link does not handle")
        if sensor == topics.PLATE:
            plate = PlateReading.decode(msg.payload)
            on_plate = self._on_plate
            # A lane that does not bind plates (not a closed road's) takes the reading and
            # leaves it: a valid plate is not garbage.
            return (lambda: on_plate(plate)) if on_plate is not None else (lambda: None)
        reading = SensorReading.decode(msg.payload)
        if reading.sensor != sensor:
            raise PayloadError(f"reading of {reading.sensor!r} on the topic of {sensor!r}")
        return lambda: self._on_sensor(reading)

    def _state(self, status: BarrierStatus) -> None:
        last = self._last_state
        if last is not None and last[0] == status.session and status.seq <= last[1]:
            log.debug(
                "stale barrier state ignored",
                extra={"lane": self.lane, "seq": status.seq, "last_seq": last[1]},
            )
            return
        self._last_state = (status.session, status.seq)
        self._on_state(status)

    def _snapshot(self, snap: DeviceSnapshot) -> None:
        """A snapshot older than a state already passed on is stale; a newer one moves the
        ordering on, so a retained state it supersedes cannot roll the lane's view back."""
        last = self._last_state
        if last is not None and last[0] == snap.session and snap.seq < last[1]:
            log.debug(
                "stale device snapshot ignored",
                extra={"lane": self.lane, "seq": snap.seq, "last_seq": last[1]},
            )
            return
        self._last_state = (snap.session, snap.seq)
        if self._on_snapshot is not None:
            self._on_snapshot(snap)

    # --- connection ----------------------------------------------------------------------------

    async def _connected(self) -> None:
        # The will registered for the next connection says when this one was made.
        self.mqtt.will = self._will()
        # Before the lane is told (and says its status, or its phase's text): the retained
        # text is one this lane's previous process, or the lane before the outage, left; a
        # display that starts must not be handed it (a fare, "Lane open") over a lane that
        # came back not showing it. Its PUBACK comes before anything the lane says.
        # Refused by the ACL, not the link: reconnecting would not mend it, and the lane's
        # commands must not wait for its display. The link's refusals log it and raise
        # publish_refused; the lane's next text meets the same refusal.
        with contextlib.suppress(PublishRefused):
            await self.show(DisplayMessage.none())
        if self._on_link is not None:
            self._on_link(True, None)

    def _disconnected(self, cause: str | None) -> None:
        """Down, with what the operator can fix at this end (MqttLink.on_disconnect)."""
        if self._on_link is not None:
            self._on_link(False, cause)

    def _will(self) -> WillSpec:
        offline = LaneStatus.offline(int(self.wall() * 1_000_000))
        return WillSpec(topics.status(self.lane), offline.encode(), qos=1, retain=True)
