"""MqttLink over the broker's TLS listener: verified with the lane's CA, refused without it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_kit import make_certs, tls_mosquitto

from lane.transport.mqtt import Incoming, MqttLink, tls_context
from sim.broker import Mosquitto


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int, Path]]:
    with tls_mosquitto(tmp_path) as broker:
        yield broker


async def test_publish_and_receive_over_tls(tls_broker: tuple[Mosquitto, int, Path]) -> None:
    broker, port, ca = tls_broker
    got: asyncio.Queue[Incoming] = asyncio.Queue()

    async def handler(msg: Incoming) -> None:
        await got.put(msg)

    tls = tls_context(str(ca))
    rx = MqttLink(broker.host, port, "tls-rx", [("lane/p1/l1/events", 1)], handler, tls=tls)
    tx = MqttLink(broker.host, port, "tls-tx", tls=tls)
    tasks = [asyncio.create_task(rx.run()), asyncio.create_task(tx.run())]
    try:
        await rx.wait_connected(5)
        await tx.wait_connected(5)
        await tx.publish("lane/p1/l1/events", b"over tls")
        assert (await asyncio.wait_for(got.get(), 5)).payload == b"over tls"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_broker_not_signed_by_the_lane_ca_is_refused(
    tls_broker: tuple[Mosquitto, int, Path], tmp_path: Path
) -> None:
    broker, port, _ = tls_broker
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = make_certs(other_dir)
    link = MqttLink(broker.host, port, "tls-wrong-ca", tls=tls_context(str(other["ca"])))
    task = asyncio.create_task(link.run())
    try:
        with pytest.raises(TimeoutError):
            await link.wait_connected(1.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
