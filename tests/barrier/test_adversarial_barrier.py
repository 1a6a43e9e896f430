"""Adversarial checks of the barrier rules (safety rules 2 and 3): stale, retained, repeated."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgpack
import pytest

from barrier import gate as g
from barrier.device import DeviceEmulator, Timings
from barrier.messages import BarrierCommand
from lane.transport.mqtt import MqttLink
from lane.wire import topics
from lane.wire.codec import PayloadError
from sim.broker import Mosquitto

FAST = Timings(opening_s=0.02, closing_s=0.02, slow_ack_s=0.05, step_s=0.01)
LANE = "p07/l03"
NOW = 1_700_000_000_000_000


def cmd(op: str = "open", deadline: int = NOW + 2_000_000, lane: str = LANE) -> BarrierCommand:
    return BarrierCommand(op, "c1", deadline, lane)


def test_deadline_exactly_now_is_still_timely_but_one_us_later_is_dropped() -> None:
    assert g.admit(cmd(deadline=NOW), LANE, NOW, NOW + 1) is None
    assert g.admit(cmd(deadline=NOW), LANE, NOW + 1, NOW + 10) == g.Verdict(g.LATE, True)


def test_lane_prefix_and_case_tricks_are_refused() -> None:
    for other in ("p07/l03/", "P07/l03", "p07/l0", "p07/l03 ", "p07\u2215l03"):
        assert g.admit(cmd(lane=other), LANE, NOW, NOW + 1_000_000) == g.Verdict(g.WRONG_LANE)


def test_absurd_deadlines_are_refused_not_executed() -> None:
    huge = cmd(deadline=(1 << 63) - 1)
    assert g.admit(huge, LANE, NOW, NOW + 1_000_000) == g.Verdict(g.DEADLINE_TOO_FAR)
    assert g.admit(cmd(deadline=0), LANE, NOW, NOW + 1_000_000) == g.Verdict(g.LATE, True)
    with pytest.raises(PayloadError):
        cmd(deadline=-1)  # a negative deadline never becomes a command at all
    # An already-expired MQTT expiry wins over a generous deadline.
    assert g.admit(cmd(), LANE, NOW, NOW - 1) == g.Verdict(g.LATE, True)


def test_a_retained_command_is_dropped_silently() -> None:
    assert g.admit(cmd(), LANE, NOW, NOW + 1_000_000, retained=True) == g.Verdict(g.RETAINED, True)


def test_close_is_refused_over_an_occupied_loop_from_any_state() -> None:
    for state in ("open", "opening", "closing", "closed"):
        gate = g.Gate(state=state, safety_occupied=True)
        new, ok, error, move = g.command(gate, "close")
        assert (ok, error, move) == (False, g.SAFETY_LOOP_OCCUPIED, None)
        assert new.state == state


def test_stale_move_after_fault_and_recovery_does_not_move_the_gate() -> None:
    gate, move = g._start(g.Gate(state="open"), "closing", "closed")
    assert move is not None
    gate = g.recover(g.fail(gate, "motor"))
    # The old close's timer fires after recovery: it must change nothing.
    after, next_move = g.arrived(gate, move)
    assert (after, next_move) == (gate, None)


def test_recovery_over_an_occupied_loop_stays_open() -> None:
    gate = g.fail(g.Gate(state="closing", safety_occupied=True), "motor")
    assert g.recover(gate).state == "open"


async def test_a_retained_open_command_is_never_executed(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """Rule 2: commands are never retained. A retained command someone left on the broker
    (a buggy tool, a replaying attacker) reaches every device that subscribes afterwards,
    with a valid deadline and expiry: the device must not act on it."""
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    topic = topics.barrier_cmd(lane_id)
    task = asyncio.create_task(raw.run())
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, FAST)
    dev_task: asyncio.Task[None] | None = None
    try:
        await raw.wait_connected(5.0)
        deadline = int((time.time() + 20) * 1_000_000)
        stale = BarrierCommand("open", "retained-1", deadline, lane_id)
        await raw.publish(topic, stale.encode(), retain=True, expiry_s=20)
        dev_task = asyncio.create_task(device.run())
        await device.wait_connected(5.0)
        fresh = BarrierCommand("open", "fresh-1", int((time.time() + 3) * 1e6), lane_id)
        await raw.publish(topic, fresh.encode(), expiry_s=3)
        async with asyncio.timeout(5.0):
            while "fresh-1" not in device.executions:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        assert device.executions == ["fresh-1"]
    finally:
        await raw.publish(topic, b"", retain=True)  # clear the retained message
        if dev_task is not None:
            dev_task.cancel()
        task.cancel()
        await asyncio.gather(task, *(t for t in (dev_task,) if t), return_exceptions=True)


@contextlib.asynccontextmanager
async def device_and_sender(
    broker: Mosquitto, lane_id: str
) -> AsyncIterator[tuple[DeviceEmulator, MqttLink, str]]:
    """A connected device emulator, and a raw MQTT client to publish on its command topic."""
    raw = MqttLink(broker.host, broker.port, f"raw-{lane_id}")
    device = DeviceEmulator(lane_id, broker.host, broker.port, FAST)
    tasks = [asyncio.create_task(raw.run()), asyncio.create_task(device.run())]
    try:
        await raw.wait_connected(5.0)
        await device.wait_connected(5.0)
        yield device, raw, topics.barrier_cmd(lane_id)
    finally:
        await raw.publish(topics.barrier_cmd(lane_id), b"", retain=True)  # nothing left behind
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def executes_fresh(device: DeviceEmulator, raw: MqttLink, topic: str, cmd_id: str) -> None:
    """Send a good command after the one under test (same session: it arrives after it) and
    wait for its execution: by then the one under test has been handled."""
    fresh = BarrierCommand("open", cmd_id, int((time.time() + 3) * 1e6), device.lane)
    await raw.publish(topic, fresh.encode(), expiry_s=3)
    async with asyncio.timeout(5.0):
        while cmd_id not in device.executions:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_a_retained_command_published_while_connected_is_never_executed(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """Issue #11 item 8: a live delivery clears the retain flag unless the device subscribed
    with Retain-As-Published. Then a retained `open`, sent while the device listens, would be
    executed now and stay on the broker for the next device to connect."""
    async with device_and_sender(mosquitto, lane_id) as (device, raw, topic):
        deadline = int((time.time() + 20) * 1_000_000)
        retained = BarrierCommand("open", "live-retained", deadline, lane_id)
        await raw.publish(topic, retained.encode(), retain=True, expiry_s=20)
        await executes_fresh(device, raw, topic, "fresh-2")
        assert [c.cmd_id for c in device.received] == ["live-retained", "fresh-2"]
        assert device.executions == ["fresh-2"]


async def test_a_command_with_a_repeated_key_is_refused_by_the_device(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """`op: close` then `op: open` in one map: msgpack alone reads the last value (open)."""
    async with device_and_sender(mosquitto, lane_id) as (device, raw, topic):
        body = BarrierCommand("close", "twice", int((time.time() + 3) * 1e6), lane_id).to_map()
        pairs = [("v", 1), *body.items(), ("op", "open")]
        payload = bytes([0x80 | len(pairs)]) + b"".join(
            msgpack.packb(k) + msgpack.packb(v) for k, v in pairs
        )
        await raw.publish(topic, payload, expiry_s=3)
        await executes_fresh(device, raw, topic, "fresh-3")
        assert [c.cmd_id for c in device.received] == ["fresh-3"]  # "twice" never decoded
        assert device.executions == ["fresh-3"]
