"""A test's own MQTT watcher on the session broker: what a lane publishes on one topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from lane.transport.mqtt import Incoming, MqttLink
from sim.broker import Mosquitto

T = TypeVar("T")


@asynccontextmanager
async def collected(
    mosquitto: Mosquitto, client_id: str, topic: str, decode: Callable[[bytes], T]
) -> AsyncIterator[list[T]]:
    """Every message on `topic` while the block runs, decoded, in the order they came (the
    block starts once the watcher is connected)."""
    got: list[T] = []

    async def on_message(msg: Incoming) -> None:
        got.append(decode(msg.payload))

    watcher = MqttLink(mosquitto.host, mosquitto.port, client_id, [(topic, 1)], on_message)
    task = asyncio.create_task(watcher.run())
    try:
        await watcher.wait_connected(5)
        yield got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
