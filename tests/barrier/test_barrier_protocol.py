"""BarrierLink and DeviceEmulator against a real mosquitto: the protocol end to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from polling import eventually

from barrier.device import DeviceEmulator, Timings
from barrier.link import BarrierLink
from barrier.messages import (
    WILL_SEQ,
    AttendantCommand,
    BarrierAck,
    BarrierCommand,
    BarrierStatus,
    DisplayMessage,
    LaneStatus,
    SensorReading,
)
from lane.transport.broker_link import BrokerLink
from lane.transport.mqtt import Incoming, LinkDown, MqttLink
from lane.wire import topics
from lane.wire.codec import pack, unpack
from sim.broker import Mosquitto, running_mosquitto

T = TypeVar("T")
FAST = Timings(opening_s=0.02, closing_s=0.02, slow_ack_s=0.05, step_s=0.01)
WAIT = 5.0


class Recorder:
    """Everything a BarrierLink hands on, in queues."""

    def __init__(self) -> None:
        self.acks: asyncio.Queue[BarrierAck] = asyncio.Queue()
        self.states: asyncio.Queue[BarrierStatus] = asyncio.Queue()
        self.sensors: asyncio.Queue[SensorReading] = asyncio.Queue()
        self.attendant: asyncio.Queue[AttendantCommand] = asyncio.Queue()
        self.garbage: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.link_changes: list[bool] = []

    def link(self, broker: Mosquitto, lane: str, **kwargs: Any) -> BarrierLink:
        return BarrierLink(
            lane,
            BrokerLink(broker.host, broker.port),
            on_ack=self.acks.put_nowait,
            on_state=self.states.put_nowait,
            on_sensor=self.sensors.put_nowait,
            on_attendant=self.attendant.put_nowait,
            on_garbage=lambda topic, error: self.garbage.put_nowait((topic, error)),
            on_link=lambda up, _cause: self.link_changes.append(up),
            **kwargs,
        )

    async def state(self, wanted: str) -> BarrierStatus:
        return await until(self.states, lambda s: s.state == wanted)


async def until(queue: asyncio.Queue[T], pred: Callable[[T], bool], within: float = WAIT) -> T:
    async with asyncio.timeout(within):
        while True:
            item = await queue.get()
            if pred(item):
                return item


@asynccontextmanager
async def tasks(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    running = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def command(lane: str, op: str, cmd_id: str, ttl_s: float = 3.0) -> BarrierCommand:
    return BarrierCommand(op, cmd_id, int((time.time() + ttl_s) * 1_000_000), lane)


class Spy:
    """A raw MQTT client that records everything under the lane's topics."""

    def __init__(self, broker: Mosquitto, lane: str) -> None:
        self.seen: asyncio.Queue[Incoming] = asyncio.Queue()
        self.mqtt = MqttLink(
            broker.host,
            broker.port,
            f"spy-{lane}",
            [(f"lane/{lane}/#", 1)],
            handler=self._got,
            session_expiry=0,
        )

    async def _got(self, msg: Incoming) -> None:
        self.seen.put_nowait(msg)

    async def on(self, topic: str) -> Incoming:
        return await until(self.seen, lambda m: m.topic == topic)


async def test_open_close_roundtrip(mosquitto: Mosquitto, lane_id: str) -> None:
    rec, spy = Recorder(), Spy(mosquitto, lane_id)
    link = rec.link(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(spy.mqtt.run(), link.run(), device.run()):
        await spy.mqtt.wait_connected(WAIT)
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        first = await rec.state("closed")
        assert first.seq == 1 and first.session

        await link.send(command(lane_id, "open", "v1/open"), expiry_s=3)
        sent = await spy.on(topics.barrier_cmd(lane_id))
        assert not sent.retain
        assert sent.correlation == b"v1/open"
        assert sent.response_topic == topics.barrier_ack(lane_id)
        assert sent.expiry_s is not None and 0 < sent.expiry_s <= 3
        acked = await spy.on(topics.barrier_ack(lane_id))
        assert acked.correlation == b"v1/open"

        # The ack says where the command put the barrier; the move it started is not a state
        # message of its own: the next state is where the move ends.
        assert await until(rec.acks, lambda a: True) == BarrierAck("v1/open", True, "opening")
        opened = await until(rec.states, lambda s: True)
        assert (opened.state, opened.seq) == ("open", first.seq + 1)
        assert opened.session == first.session

        await link.send(command(lane_id, "close", "v1/close"), expiry_s=3)
        assert await until(rec.acks, lambda a: True) == BarrierAck("v1/close", True, "closing")
        closed = await until(rec.states, lambda s: True)
        assert (closed.state, closed.seq) == ("closed", opened.seq + 1)
        assert device.executions == ["v1/open", "v1/close"]
        assert rec.link_changes == [True]


async def test_repeated_cmd_id_is_answered_not_executed(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(link.run(), device.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        await link.send(command(lane_id, "open", "c1"), expiry_s=3)
        await rec.state("open")
        await link.send(command(lane_id, "close", "c2"), expiry_s=3)
        await rec.state("closed")
        # The same cmd_id again, even with a fresh deadline: answered, never executed again.
        await link.send(command(lane_id, "open", "c1"), expiry_s=3)
        repeat = await until(rec.acks, lambda a: a.cmd_id == "c1" and a.state == "closed")
        assert repeat.ok
        await link.send(command(lane_id, "close", "c3"), expiry_s=3)
        await until(rec.acks, lambda a: a.cmd_id == "c3")
        assert device.executions == ["c1", "c2", "c3"]
        assert device.state == "closed"


class Wall:
    """A wall clock the test can move; `sleep` moves it instead of waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.offset += seconds
        await asyncio.sleep(0)


async def test_late_commands_are_dropped(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    wall = Wall()
    link = rec.link(mosquitto, lane_id)
    timings = Timings(opening_s=0.0, closing_s=0.0, slow_ack_s=5.0, step_s=0.0)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, timings, wall, wall.sleep)
    async with tasks(link.run(), device.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        # 1. Delivered after its deadline (the device's clock is an hour ahead).
        wall.offset = 3600.0
        await link.send(command(lane_id, "open", "late-deadline"), expiry_s=3)
        await eventually(lambda: len(device.received) == 1)
        # 2. Within its deadline but past its MQTT expiry: the device took 5 s to look at it.
        device.set_fault("slow_ack")
        wall.offset = 0.0
        await link.send(command(lane_id, "open", "late-expiry", ttl_s=50), expiry_s=2)
        await eventually(lambda: len(device.received) == 2)
        # 3. A timely command (the device clock is now 5 s ahead: the slow ack's sleep moved
        # it): once it is answered, the two before it were handled, in order.
        device.set_fault(None)
        await link.send(command(lane_id, "open", "timely", ttl_s=30), expiry_s=30)
        ack = await until(rec.acks, lambda a: True)
        assert ack.cmd_id == "timely" and ack.ok
        assert [c.cmd_id for c in device.received] == ["late-deadline", "late-expiry", "timely"]
        assert device.executions == ["timely"]
        assert rec.acks.empty()


async def test_refusals_are_acked_with_a_reason(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    async with tasks(link.run(), device.run(), raw.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        await raw.wait_connected(WAIT)
        cmd_topic, ack_topic = topics.barrier_cmd(lane_id), topics.barrier_ack(lane_id)
        # No MQTT expiry: refused, every command must carry one (safety rule 2).
        await raw.publish(
            cmd_topic, command(lane_id, "open", "r1").encode(), response_topic=ack_topic
        )
        assert (await until(rec.acks, lambda a: True)) == BarrierAck(
            "r1", False, "closed", "no_expiry"
        )
        far = BarrierCommand("open", "r2", int((time.time() + 3600) * 1e6), lane_id)
        await link.send(far, expiry_s=3)
        assert (await until(rec.acks, lambda a: True)).error == "deadline_too_far"
        bad = pack({"op": "lift", "cmd_id": "r3", "deadline": 1, "lane": lane_id})
        await raw.publish(cmd_topic, bad, expiry_s=3, response_topic=ack_topic)
        ack = await until(rec.acks, lambda a: True)
        assert ack.cmd_id == "r3" and not ack.ok and ack.error and "bad_command" in ack.error
        await raw.publish(cmd_topic, b"\xff garbage", expiry_s=3)
        await link.send(command(lane_id, "open", "r4"), expiry_s=3)
        assert (await until(rec.acks, lambda a: True)).cmd_id == "r4"
        assert device.executions == ["r4"]


async def test_commands_are_not_retained(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    async with tasks(link.run()):
        await link.wait_connected(WAIT)
        await link.send(command(lane_id, "open", "before-device"), expiry_s=3)
        device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
        async with tasks(device.run()):
            await device.wait_connected(WAIT)
            await link.send(command(lane_id, "open", "after-device"), expiry_s=3)
            assert (await until(rec.acks, lambda a: True)).cmd_id == "after-device"
            assert [c.cmd_id for c in device.received] == ["after-device"]


async def test_safety_loop(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    timings = Timings(opening_s=0.02, closing_s=0.3, slow_ack_s=0.0, step_s=0.0)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, timings)
    async with tasks(link.run(), device.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        await link.send(command(lane_id, "open", "s1"), expiry_s=3)
        await rec.state("open")
        await device.set_sensor("safety_loop", True)
        reading = await until(rec.sensors, lambda r: r.sensor == "safety_loop")
        assert reading.occupied is True
        # A close over an occupied loop is refused and not executed.
        await link.send(command(lane_id, "close", "s2"), expiry_s=3)
        refused = await until(rec.acks, lambda a: a.cmd_id == "s2")
        assert (refused.ok, refused.state, refused.error) == (False, "open", "safety_loop_occupied")
        await device.set_sensor("safety_loop", False)
        # The same cmd_id may be sent again once the loop is clear: it was never executed.
        await link.send(command(lane_id, "close", "s2"), expiry_s=3)
        closing = await until(rec.acks, lambda a: a.cmd_id == "s2")
        assert (closing.ok, closing.state) == (True, "closing")
        # Something drives under the closing boom: it reverses, then closes once clear (moves
        # nobody commanded are published as states).
        await device.set_sensor("light_curtain", True)
        reversed_ = await rec.state("opening")
        assert reversed_.error == "safety_reversal"
        await rec.state("open")
        await device.set_sensor("light_curtain", False)
        await rec.state("closing")
        await rec.state("closed")
        assert device.executions == ["s1", "s2"]


async def test_faults(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(link.run(), device.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        await rec.state("closed")
        device.set_fault("no_ack")
        await link.send(command(lane_id, "open", "f1"), expiry_s=3)
        await eventually(lambda: len(device.received) == 1)
        device.set_fault("stuck")
        await link.send(command(lane_id, "open", "f2"), expiry_s=3)
        stuck = await until(rec.acks, lambda a: True)
        assert (stuck.cmd_id, stuck.ok, stuck.state) == ("f2", True, "closed")
        device.set_fault("fault")
        faulted = await rec.state("fault")
        assert faulted.error
        await link.send(command(lane_id, "open", "f3"), expiry_s=3)
        assert await until(rec.acks, lambda a: True) == BarrierAck("f3", False, "fault", "fault")
        device.set_fault(None)
        await rec.state("closed")
        await link.send(command(lane_id, "open", "f4"), expiry_s=3)
        await rec.state("open")
        assert device.executions == ["f4"]


async def test_device_offline_will_and_return(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(link.run(), device.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        online = await rec.state("closed")
        device.set_fault("offline")
        will = await rec.state("offline")
        assert (will.session, will.seq) == (online.session, WILL_SEQ)
        with pytest.raises(TimeoutError):
            await device.wait_connected(0.05)
        device.set_fault(None)
        back = await rec.state("closed")
        assert back.session != online.session and back.seq == 1
        await link.send(command(lane_id, "open", "o1"), expiry_s=3)
        await rec.state("open")
        await device.stop()
        assert (await rec.state("offline")).session == back.session


async def test_stale_or_repeated_state_is_ignored(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    async with tasks(link.run(), raw.run()):
        await link.wait_connected(WAIT)
        await raw.wait_connected(WAIT)
        state_topic = topics.barrier_state(lane_id)
        for state, seq, session in [
            ("open", 5, "a"),
            ("closing", 3, "a"),  # older: ignored
            ("open", 5, "a"),  # repeated: ignored
            ("closed", 6, "a"),
            ("closed", 1, "b"),  # a new device session starts its own count
        ]:
            status = BarrierStatus(state, seq, 1, None, session)
            await raw.publish(state_topic, status.encode(), retain=True)
        got = [await until(rec.states, lambda s: True) for _ in range(3)]
        assert [(s.state, s.seq, s.session) for s in got] == [
            ("open", 5, "a"),
            ("closed", 6, "a"),
            ("closed", 1, "b"),
        ]
        await raw.publish(state_topic, b"", retain=True)  # clear the retained message


async def test_garbage_everywhere_link_keeps_working(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    async with tasks(link.run(), device.run(), raw.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        await raw.wait_connected(WAIT)
        await rec.state("closed")
        ack_topic = topics.barrier_ack(lane_id)
        entry = topics.io(lane_id, "entry_loop")
        garbage = [
            (ack_topic, b"\x00\x01", None),
            (ack_topic, pack({"cmd_id": "x", "ok": "yes", "state": "open"}), None),
            (ack_topic, BarrierAck("x", True, "open").encode(), b"someone-else"),
            (topics.barrier_state(lane_id), b"not msgpack \xc1", None),
            (topics.barrier_state(lane_id), pack({"state": "ajar", "seq": 9, "ts": 1}), None),
            (entry, pack({"occupied": True, "ts": 1}), None),
            (entry, SensorReading("exit_loop", True, None, 1).encode(), None),
            (topics.io(lane_id, "classifier"), pack({"sensor": "classifier", "ts": 1}), None),
            (topics.attendant(lane_id), pack({"op": "open"}), None),
            (topics.attendant(lane_id), msgpack_list(), None),
        ]
        for topic, payload, correlation in garbage:
            await raw.publish(topic, payload, correlation=correlation)
        seen = [await until(rec.garbage, lambda g: True) for _ in garbage]
        assert [topic for topic, _ in seen] == [topic for topic, _, _ in garbage]
        assert all(error for _, error in seen)
        assert "correlation" in seen[2][1]
        # Still working: a real attendant command and a real barrier round trip.
        order = AttendantCommand("open", "a1", "phone broken", "alice", 1)
        await raw.publish(topics.attendant(lane_id), order.encode())
        assert await until(rec.attendant, lambda a: True) == order
        await link.send(command(lane_id, "open", "g1"), expiry_s=3)
        await rec.state("open")
        assert rec.garbage.empty() and rec.acks.qsize() == 1


async def test_retained_garbage_met_at_start_is_logged_once_as_retained(
    mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken copy the broker keeps (a device's state) is named at start as retained, once:
    the line says it stays until replaced; live garbage is not retained."""
    state_topic = topics.barrier_state(lane_id)
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    async with tasks(raw.run()):
        await raw.wait_connected(WAIT)
        await raw.publish(state_topic, b"\xc1 broken", retain=True)
        try:
            rec = Recorder()
            link = rec.link(mosquitto, lane_id)
            async with tasks(link.run()):
                assert (await until(rec.garbage, lambda g: True))[0] == state_topic
                await link.wait_connected(WAIT)  # subscribed to every topic
                await raw.publish(topics.attendant(lane_id), b"\xc1 live")
                await until(rec.garbage, lambda g: True)
        finally:
            await raw.publish(state_topic, b"", retain=True)
    lines = [r for r in caplog.records if r.getMessage() == "garbage on a lane topic"]
    assert [(r.__dict__["topic"], r.__dict__["retained"]) for r in lines] == [
        (state_topic, True),
        (topics.attendant(lane_id), False),
    ]


async def test_a_garbage_flood_is_logged_once_a_topic_a_window_and_the_rest_counted(
    mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage faster than anyone reads (a broken device, somebody with the broker password)
    writes a line per topic a window, not one a message: the rest are counted and said in one
    line once the window passed. Readings on invented sensors share one line."""
    now = [1_000.0]
    rec = Recorder()
    link = rec.link(mosquitto, lane_id, wall=lambda: now[0])
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    state_topic = topics.barrier_state(lane_id)
    flood = [(state_topic, b"\xc1")] * 30 + [
        (topics.io(lane_id, f"invented{n}"), b"\xc1") for n in range(30)
    ]
    async with tasks(link.run(), raw.run()):
        await link.wait_connected(WAIT)
        await raw.wait_connected(WAIT)
        for topic, payload in flood:
            await raw.publish(topic, payload)
        seen = [await until(rec.garbage, lambda g: True) for _ in flood]
        assert len(seen) == len(flood)  # each still handed on: the lane acts on every one
        link.say_counted()  # the window has not passed: nothing to say yet
        now[0] += 60
        link.say_counted()
    lines = [r for r in caplog.records if r.getMessage().startswith("garbage on a lane topic")]
    assert [(r.getMessage(), r.__dict__["topic"], r.__dict__.get("refused")) for r in lines] == [
        ("garbage on a lane topic", state_topic, None),
        ("garbage on a lane topic", topics.io(lane_id, "invented0"), None),
        ("garbage on a lane topic, more counted", state_topic, 29),
        ("garbage on a lane topic, more counted", topics.io_all(lane_id), 29),
    ]


def msgpack_list() -> bytes:
    return bytes([0x92, 0x01, 0x02])


async def test_vehicle_io_sequence(mosquitto: Mosquitto, lane_id: str) -> None:
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(link.run(), device.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        await device.vehicle_enters(3)
        await link.send(command(lane_id, "open", "v1"), expiry_s=3)
        await rec.state("open")
        await device.vehicle_passes()
        got = [await until(rec.sensors, lambda r: True) for _ in range(7)]
        assert [(r.sensor, r.occupied, r.vehicle_class) for r in got] == [
            ("classifier", None, 3),
            ("entry_loop", True, None),
            ("safety_loop", True, None),
            ("entry_loop", False, None),
            ("safety_loop", False, None),
            ("exit_loop", True, None),
            ("exit_loop", False, None),
        ]
        seqs = [r.seq or 0 for r in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == 7 and 0 not in seqs


async def test_controller_outputs_and_will(mosquitto: Mosquitto, lane_id: str) -> None:
    rec, spy = Recorder(), Spy(mosquitto, lane_id)
    link = rec.link(mosquitto, lane_id)
    async with tasks(spy.mqtt.run(), link.run()):
        await spy.mqtt.wait_connected(WAIT)
        await link.wait_connected(WAIT)
        # On connecting, before anything else: no text (a text left from before is not ours).
        blank = await spy.on(topics.display(lane_id))
        assert DisplayMessage.decode(blank.payload) == DisplayMessage.none()
        await link.show(DisplayMessage(["Class 2", "EUR 3.40"], 8.0))
        shown = await spy.on(topics.display(lane_id))
        assert DisplayMessage.decode(shown.payload).lines == ["Class 2", "EUR 3.40"]
        status = LaneStatus("idle", 0, None, {"backoffice": True}, [], 5)
        await link.publish_status(status)
        assert LaneStatus.decode((await spy.on(topics.status(lane_id))).payload) == status
        await link.publish_event({"name": "vehicle_arrived", "vehicle_id": "v1"})
        event = unpack((await spy.on(topics.events(lane_id))).payload)
        assert event["name"] == "vehicle_arrived"
        with pytest.raises(ValueError, match="encoded"):
            await link.publish_event({"bad": object()})
        with pytest.raises(ValueError, match="lane"):
            await link.send(command("p99/l99", "open", "x"), expiry_s=3)
        with pytest.raises(ValueError, match="expiry_s"):
            await link.send(command(lane_id, "open", "x"), expiry_s=0)
        # The controller dies: the broker publishes its will, retained.
        await link.mqtt.drop()
        will = LaneStatus.decode((await spy.on(topics.status(lane_id))).payload)
        assert will.state == "offline" and will.uplink_backlog is None
        assert rec.link_changes[:2] == [True, False]


async def test_send_raises_link_down_without_broker(lane_id: str) -> None:
    link = BarrierLink(
        lane_id,
        BrokerLink("127.0.0.1", 1),
        on_ack=print,
        on_state=print,
        on_sensor=print,
        on_attendant=print,
        on_garbage=lambda topic, error: None,
    )
    with pytest.raises(LinkDown):
        await link.send(command(lane_id, "open", "x"), expiry_s=3)


async def test_broker_restart_link_and_device_come_back(lane_id: str) -> None:
    with running_mosquitto() as broker:
        rec = Recorder()
        link = rec.link(broker, lane_id)
        device = DeviceEmulator(lane_id, broker.host, broker.port, FAST)
        async with tasks(link.run(), device.run()):
            await link.wait_connected(WAIT)
            await device.wait_connected(WAIT)
            await link.send(command(lane_id, "open", "b1"), expiry_s=3)
            await rec.state("open")
            await asyncio.to_thread(broker.restart)
            await eventually(lambda: link.mqtt.reconnects >= 1 and device.link.reconnects >= 1, 10)
            await link.wait_connected(WAIT)
            await device.wait_connected(WAIT)
            # The device re-announced its state in a new session; commands work again.
            assert (await rec.state("open")).seq == 1
            await link.send(command(lane_id, "close", "b2"), expiry_s=3)
            assert (await until(rec.acks, lambda a: a.cmd_id == "b2")).ok
            await rec.state("closed")
            assert rec.link_changes == [True, False, True]


async def test_what_the_session_held_while_the_controller_was_away_reaches_it(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """The broker hands a persistent session's messages over right after the CONNACK: the link's
    receiver must be in place before it connects, or they are lost."""
    rec = Recorder()
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(device.run()):
        await device.wait_connected(WAIT)
        async with tasks(rec.link(mosquitto, lane_id).run()):
            await eventually(lambda: rec.link_changes == [True])
        await device.set_sensor("safety_loop", True)  # while the controller is away
        async with asyncio.timeout(WAIT):
            await device.flushed()
        async with tasks(rec.link(mosquitto, lane_id).run()):
            reading = await until(rec.sensors, lambda r: True)
            assert (reading.sensor, reading.occupied) == ("safety_loop", True)


async def test_a_callback_that_raises_is_logged_and_the_link_stays_up(
    mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver runs inside the MQTT client's read callback: an exception let through there
    would end the connection."""
    readings: asyncio.Queue[SensorReading] = asyncio.Queue()
    links: list[bool] = []

    def on_sensor(reading: SensorReading) -> None:
        if reading.sensor == "entry_loop":
            raise RuntimeError("a bug in a callback")
        readings.put_nowait(reading)

    link = BarrierLink(
        lane_id,
        BrokerLink(mosquitto.host, mosquitto.port),
        on_ack=lambda ack: None,
        on_state=lambda status: None,
        on_sensor=on_sensor,
        on_attendant=lambda command: None,
        on_garbage=lambda topic, error: None,
        on_link=lambda up, _cause: links.append(up),
    )
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    async with tasks(link.run(), device.run()):
        await link.wait_connected(WAIT)
        await device.wait_connected(WAIT)
        await device.set_sensor("entry_loop", True)  # its callback raises
        await device.set_sensor("exit_loop", True)
        reading = await until(readings, lambda r: True)
        assert reading.sensor == "exit_loop"
        assert links == [True]  # never dropped
        failed = [r for r in caplog.records if r.getMessage() == "mqtt handler failed"]
        assert [getattr(r, "topic", None) for r in failed] == [topics.io(lane_id, "entry_loop")]


def test_a_link_takes_a_handler_or_a_receiver_not_both() -> None:
    async def handler(msg: Incoming) -> None:
        pass

    with pytest.raises(ValueError, match="a handler or a receive"):
        MqttLink("127.0.0.1", 1883, "both", handler=handler, receive=lambda msg: None)
