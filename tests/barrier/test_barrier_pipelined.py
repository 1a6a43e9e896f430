"""The device hands each message to the broker without waiting for the previous one's PUBACK.

Through a TCP proxy that holds back every PUBACK the broker sends the device, a command's ack
still reaches the controller while an earlier message waits for its PUBACK, and in the order
the device produced them (docs/barrier.md: an ack before the state its move ends in; a reading
before what follows it). A device that published one message at a time would never answer here.
"""

from __future__ import annotations

import asyncio

import pytest
from mqtt_kit import broker_proxy
from polling import eventually
from test_barrier_protocol import FAST, WAIT, command, tasks

from barrier.device import DeviceEmulator
from barrier.link import BarrierLink
from barrier.messages import BarrierAck, BarrierStatus, SensorReading
from lane.transport.broker_link import BrokerLink
from lane.transport.mqtt import LinkDown, MqttLink
from sim.broker import Mosquitto


async def test_ack_is_not_held_behind_an_unacknowledged_publish(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    seen: asyncio.Queue[BarrierAck | BarrierStatus | SensorReading] = asyncio.Queue()
    link = BarrierLink(
        lane_id,
        BrokerLink(mosquitto.host, mosquitto.port),
        on_ack=seen.put_nowait,
        on_state=seen.put_nowait,
        on_sensor=seen.put_nowait,
        on_attendant=lambda command: None,
        on_garbage=lambda topic, error: None,
    )
    async with broker_proxy(mosquitto) as proxy:
        device = DeviceEmulator(lane_id, "127.0.0.1", proxy.port, FAST)
        async with tasks(link.run(), device.run()):
            await link.wait_connected(WAIT)
            await device.wait_connected(WAIT)
            async with asyncio.timeout(WAIT):
                await device.flushed()

            proxy.holding = True
            await device.set_sensor("entry_loop", True)  # its PUBACK never comes, for now
            await link.send(command(lane_id, "open", "v1/open"), expiry_s=3)
            order: list[str] = []
            async with asyncio.timeout(WAIT):
                while "open" not in order:
                    message = await seen.get()
                    if isinstance(message, SensorReading) and message.sensor == "entry_loop":
                        order.append("entry_loop")
                    elif isinstance(message, BarrierAck):
                        assert message.cmd_id == "v1/open" and message.ok
                        order.append("ack")
                    elif isinstance(message, BarrierStatus) and message.state == "open":
                        order.append("open")
            # The reading first, then the ack (`opening`), then the state its move ended in.
            assert order == ["entry_loop", "ack", "open"]
            assert proxy.held, "the broker's PUBACKs were held while the ack went out"

            proxy.release()
            async with asyncio.timeout(WAIT):
                await device.flushed()  # every message's PUBACK came in after all
            await device.stop()


async def test_a_publish_without_its_puback_raises_link_down(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """MqttLink waits for the PUBACK itself (not through aiomqtt's publish): none within the
    timeout is LinkDown, with nothing left waiting; one that comes ends the wait."""
    async with broker_proxy(mosquitto) as proxy:
        link = MqttLink(mosquitto.host, proxy.port, f"pub-{lane_id}")
        task = asyncio.create_task(link.run())
        try:
            await link.wait_connected(5)
            assert link._conn is not None
            proxy.holding = True
            with pytest.raises(LinkDown, match="no PUBACK"):
                await link.publish(f"lane/{lane_id}/events", b"x", timeout=0.3)
            assert not link._conn.acks
            held = len(proxy.held)
            waiting = asyncio.create_task(link.publish(f"lane/{lane_id}/events", b"y"))
            await eventually(lambda: len(proxy.held) > held, 5, what="the PUBACK held")
            assert not waiting.done()
            proxy.release()
            await asyncio.wait_for(waiting, 5)
            assert not link._conn.acks
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_publish_waiting_for_its_puback_hears_at_once_that_its_connection_ended(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    """A PUBACK cannot come on another connection (its client never heard of the message), so
    a publisher still waiting when the connection ends is told so then, not at its timeout."""
    async with broker_proxy(mosquitto) as proxy:
        link = MqttLink(mosquitto.host, proxy.port, f"pub-{lane_id}")
        task = asyncio.create_task(link.run())
        try:
            await link.wait_connected(5)
            proxy.holding = True
            waiting = asyncio.create_task(
                link.publish(f"lane/{lane_id}/events", b"x", timeout=30.0)
            )
            await eventually(lambda: len(proxy.held) == 1, 5, what="the PUBACK held")
            await link.drop()
            with pytest.raises(LinkDown, match="lost before the PUBACK"):
                await waiting
            proxy.release()
            await link.wait_connected(5)
            await link.publish(f"lane/{lane_id}/events", b"y")  # the next connection's own
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
