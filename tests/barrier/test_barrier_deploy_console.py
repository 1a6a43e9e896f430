"""The shipped ACL lets the lane publish its health and an attendant console read it and
command the lane; nobody else may speak for the lane's health."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_barrier_deploy import acl_broker, creds, needs_passwd, tasks

from barrier.health_message import AcquirerHealth, LaneHealth, health_topic
from barrier.messages import AttendantCommand
from lane.transport.mqtt import Incoming, MqttLink, PublishRefused
from lane.wire import topics
from sim.broker import Mosquitto

__all__ = ["acl_broker"]  # the fixture, used by name


@needs_passwd
async def test_health_reaches_the_attendant_whose_commands_reach_the_controller(
    acl_broker: Mosquitto,
) -> None:
    lane = "p07/l03"
    host, port = acl_broker.host, acl_broker.port
    seen: asyncio.Queue[LaneHealth] = asyncio.Queue()
    commands: asyncio.Queue[AttendantCommand] = asyncio.Queue()

    async def on_health(msg: Incoming) -> None:
        seen.put_nowait(LaneHealth.decode(msg.payload))

    async def on_command(msg: Incoming) -> None:
        commands.put_nowait(AttendantCommand.decode(msg.payload))

    console = MqttLink(
        host, port, "console", [(health_topic(lane), 1)], on_health, credentials=creds("attendant")
    )
    controller = MqttLink(
        host,
        port,
        "ctl",
        [(topics.attendant(lane), 1)],
        on_command,
        credentials=creds("controller"),
    )
    io = MqttLink(host, port, "io-module", credentials=creds("io"))
    async with tasks(console.run(), controller.run(), io.run()):
        for client in (console, controller, io):
            await client.wait_connected(5)
        now = int(time.time() * 1e6)
        forged = LaneHealth("idle", now, [], [], {"passed": 999}, AcquirerHealth("ok", 0), now)
        with pytest.raises(PublishRefused, match="Not authorized"):  # the broker drops it
            await io.publish(health_topic(lane), forged.encode())
        real = LaneHealth("idle", now, [], [], {"passed": 1}, AcquirerHealth("idle", 0), now)
        await controller.publish(health_topic(lane), real.encode())
        assert await asyncio.wait_for(seen.get(), 5) == real
        cmd = AttendantCommand("ack_alarm", "c1", "camera_blackout", "olga", now)
        await console.publish(topics.attendant(lane), cmd.encode())
        assert await asyncio.wait_for(commands.get(), 5) == cmd
        assert seen.empty()
