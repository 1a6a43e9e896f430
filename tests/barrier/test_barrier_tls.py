"""MqttLink over the broker's TLS listener: verified with the lane's CA, refused without it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import eventually
from tls_kit import make_certs, tls_mosquitto

from lane.transport.mqtt import Incoming, MqttLink
from lane.transport.tls import CaFile
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

    tls = CaFile.load(ca)
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
    link = MqttLink(broker.host, port, "tls-wrong-ca", tls=CaFile.load(other["ca"]))
    task = asyncio.create_task(link.run())
    try:
        with pytest.raises(TimeoutError):
            await link.wait_connected(1.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_link_takes_its_ca_file_as_it_is_at_each_attempt(
    tls_broker: tuple[Mosquitto, int, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every link (the device's, the console's, the lane's) verifies with its CA file as it is
    when it connects: one holding another CA is refused, saying the TLS failure once (not on
    every retry); the file gone meanwhile is said too and the last good CA kept; the right
    CA put in its place, the link connects by itself and says it is up."""
    broker, port, ca = tls_broker
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    ca_file = tmp_path / "lane-ca.pem"
    ca_file.write_bytes(make_certs(other_dir)["ca"].read_bytes())
    causes: list[str | None] = []
    link = MqttLink(
        broker.host, port, "tls-rotated", tls=CaFile.load(ca_file), on_disconnect=causes.append
    )
    link.backoff_max = 0.2
    caplog.set_level(logging.WARNING, logger="lane.mqtt")
    task = asyncio.create_task(link.run())
    try:
        await eventually(lambda: failed(caplog) >= 3, within=10)
        assert len(causes) == 1 and str(causes[0]).startswith("TLS: certificate verify failed: ")
        ca_file.unlink()
        missing = f"; CA file {ca_file} unreadable (No such file or directory): still verifying"
        await eventually(lambda: len(causes) == 2)
        assert causes[1] is not None and causes[0] + missing in causes[1]
        staged = tmp_path / "staged.pem"
        staged.write_bytes(ca.read_bytes())
        staged.replace(ca_file)
        await link.wait_connected(10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def failed(caplog: pytest.LogCaptureFixture) -> int:
    """The failed attempts the link logged."""
    return sum(r.getMessage() == "mqtt disconnected" for r in caplog.records)
