"""The shipped broker config and ACL, run in a real mosquitto; the systemd unit's settings."""

from __future__ import annotations

import asyncio
import configparser
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tls_kit import make_certs

from barrier.device import DeviceEmulator, Timings
from barrier.link import BarrierLink
from barrier.messages import (
    BarrierAck,
    BarrierCommand,
    BarrierStatus,
    DisplayMessage,
    LaneStatus,
    SensorReading,
)
from lane.transport.broker_link import BrokerLink
from lane.transport.mqtt import Credentials, Incoming, MqttLink, PublishRefused
from lane.wire import topics
from sim.broker import Mosquitto, find_mosquitto, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PASSWD_TOOL = Path("/usr/bin/mosquitto_passwd")
USERS = ("controller", "barrier", "io", "operator", "attendant", "anpr", "printer", "display")
FAST = Timings(opening_s=0.01, closing_s=0.01, slow_ack_s=0.0, step_s=0.0)
needs_passwd = pytest.mark.skipif(
    not PASSWD_TOOL.exists(), reason="mosquitto_passwd not at /usr/bin: cannot make a password file"
)


# Started as root, mosquitto drops to user "mosquitto", which cannot read pytest's tmp_path.
AS_ROOT = "user root\n" if os.geteuid() == 0 else ""


def password_file(directory: Path) -> Path:
    path = directory / "lane.passwd"
    path.touch()
    for user in USERS:
        subprocess.run([str(PASSWD_TOOL), "-b", str(path), user, f"pw-{user}"], check=True)
    return path


def creds(user: str) -> Credentials:
    return Credentials(user, f"pw-{user}")


@asynccontextmanager
async def tasks(*coros: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    running = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Any:
    passwd = password_file(tmp_path)
    acl = DEPLOY / "mosquitto" / "acl"
    broker = Mosquitto(
        port=free_port(),
        workdir=tmp_path,
        extra_config=f"password_file {passwd}\nacl_file {acl}\n{AS_ROOT}",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@needs_passwd
async def test_only_the_controller_can_command_the_barrier(acl_broker: Mosquitto) -> None:
    lane = "p07/l03"
    host, port = acl_broker.host, acl_broker.port
    acks: asyncio.Queue[BarrierAck] = asyncio.Queue()
    states: asyncio.Queue[BarrierStatus] = asyncio.Queue()
    sensors: asyncio.Queue[SensorReading] = asyncio.Queue()
    garbage: list[tuple[str, str]] = []
    link = BarrierLink(
        lane,
        BrokerLink(host, port, creds("controller")),
        on_ack=acks.put_nowait,
        on_state=states.put_nowait,
        on_sensor=sensors.put_nowait,
        on_attendant=lambda a: None,
        on_garbage=lambda t, e: garbage.append((t, e)),
    )
    device = DeviceEmulator(lane, host, port, FAST, credentials=creds("barrier"))
    io = MqttLink(host, port, "io-module", credentials=creds("io"))
    anonymous = MqttLink(host, port, "nobody")
    async with tasks(link.run(), device.run(), io.run(), anonymous.run()):
        for client in (link.mqtt, device.link, io, anonymous):
            await client.wait_connected(5)
        assert (await asyncio.wait_for(states.get(), 5)).state == "closed"

        deadline = int((time.time() + 3) * 1_000_000)
        for who, cmd_id in ((io, "forged-io"), (anonymous, "forged-anon"), (device.link, "self")):
            forged = BarrierCommand("open", cmd_id, deadline, lane)
            # The broker refuses the publish (or drops it): either way it must not arrive.
            try:
                await who.publish(topics.barrier_cmd(lane), forged.encode(), expiry_s=3)
            except Exception as exc:
                print(f"publish refused: {exc!r}")
        # io may not speak for the barrier either, and hears that it was refused.
        fake = BarrierStatus("open", 99, 1, None, "fake")
        with pytest.raises(PublishRefused, match="Not authorized"):
            await io.publish(topics.barrier_state(lane), fake.encode(), retain=True)
        # ... but it may report its sensors.
        reading = SensorReading("entry_loop", True, None, 1)
        await io.publish(topics.io(lane, "entry_loop"), reading.encode())
        assert await asyncio.wait_for(sensors.get(), 5) == reading

        # The controller's command is the first one the device ever sees.
        await link.send(BarrierCommand("open", "real", deadline, lane), expiry_s=3)
        ack = await asyncio.wait_for(acks.get(), 5)
        assert (ack.cmd_id, ack.ok) == ("real", True)
        assert [c.cmd_id for c in device.received] == ["real"]
        assert device.executions == ["real"]
        while not states.empty():
            assert states.get_nowait().session != "fake"
        assert not garbage


@needs_passwd
async def test_the_shipped_acl_lets_the_display_read_the_lane_s_text_and_status_only(
    acl_broker: Mosquitto,
) -> None:
    """The display's contract (docs/barrier.md, "DisplayMessage"): it reads the lane's retained
    text and its status, whose will says `offline` once the lane is gone; it writes nothing."""
    lane = "p07/l03"
    host, port = acl_broker.host, acl_broker.port
    link = BarrierLink(
        lane,
        BrokerLink(host, port, creds("controller")),
        on_ack=lambda a: None,
        on_state=lambda s: None,
        on_sensor=lambda r: None,
        on_attendant=lambda a: None,
    )
    got: asyncio.Queue[Incoming] = asyncio.Queue()
    subscriptions = [(topics.display(lane), 1), (topics.status(lane), 1)]
    display = MqttLink(
        host, port, "display-p07-l03", subscriptions, credentials=creds("display"),
        receive=got.put_nowait, session_expiry=0,
    )  # fmt: skip
    async with tasks(link.run()):
        await link.wait_connected(5)
        await link.show(DisplayMessage(["Lane open"], 30.0))
        await link.publish_status(LaneStatus("idle", 0, None, {"broker": True}, [], 1))
        async with tasks(display.run()):  # the display starts after the lane spoke
            await display.wait_connected(5)
            handed = {m.topic: m for m in [await asyncio.wait_for(got.get(), 5) for _ in "ab"]}
            assert DisplayMessage.decode(handed[topics.display(lane)].payload).lines == [
                "Lane open"
            ]
            assert LaneStatus.decode(handed[topics.status(lane)].payload).state == "idle"
            await link.mqtt.drop()  # the lane dies: its will reaches the display
            will = await asyncio.wait_for(got.get(), 5)
            assert (will.topic, LaneStatus.decode(will.payload).state) == (
                topics.status(lane),
                "offline",
            )
            forged = DisplayMessage(["Free passage"], 30.0).encode()
            with pytest.raises(PublishRefused, match="Not authorized"):
                await display.publish(topics.display(lane), forged, qos=1, retain=True)
            with pytest.raises(PublishRefused, match="Not authorized"):
                await display.publish(topics.status(lane), b"", qos=1, retain=True)


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mosquitto rejected lane.conf:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"mosquitto did not listen on {port}")


@needs_passwd
async def test_shipped_lane_conf_runs(tmp_path: Path) -> None:
    """lane.conf as shipped, with only its paths and ports moved into tmp_path."""
    certs = make_certs(tmp_path)
    plain, tls = free_port(), free_port()
    (tmp_path / "data").mkdir()
    replacements = {
        "/etc/mosquitto/lane.passwd": str(password_file(tmp_path)),
        "/etc/mosquitto/lane.acl": str(DEPLOY / "mosquitto" / "acl"),
        "/var/lib/mosquitto/": f"{tmp_path / 'data'}/",
        "/etc/mosquitto/certs/ca.crt": str(certs["ca"]),
        "/etc/mosquitto/certs/server.crt": str(certs["server"]),
        "/etc/mosquitto/certs/server.key": str(certs["key"]),
        "listener 1883 127.0.0.1": f"listener {plain} 127.0.0.1",
        "listener 8883": f"listener {tls} 127.0.0.1",
    }
    conf = (DEPLOY / "mosquitto" / "lane.conf").read_text()
    for old, new in replacements.items():
        assert old in conf, f"lane.conf no longer contains {old!r}"
        conf = conf.replace(old, new)
    (tmp_path / "lane.conf").write_text(conf + AS_ROOT)
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once, the broker runs on
            [find_mosquitto(), "-c", str(tmp_path / "lane.conf")], stdout=out, stderr=out
        )
    try:
        wait_listening(plain, process, log)
        wait_listening(tls, process, log)
        # The TLS listener presents the configured certificate.
        context = ssl.create_default_context(cafile=str(certs["ca"]))
        with (
            socket.create_connection(("127.0.0.1", tls), 2) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
        ):
            assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
        # Passwords are required: the controller gets in, an anonymous client does not.
        good = MqttLink("127.0.0.1", plain, "controller-1", credentials=creds("controller"))
        anonymous = MqttLink("127.0.0.1", plain, "anonymous-1")
        async with tasks(good.run(), anonymous.run()):
            await good.wait_connected(5)
            with pytest.raises(TimeoutError):
                await anonymous.wait_connected(0.3)
    finally:
        process.terminate()
        process.wait(5)


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "lane.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("lane run --config /etc/lane/lane.toml")
    assert service["Restart"] == "on-failure"
    assert service["User"] == "lane" and service["StateDirectory"] == "lane"
    for option, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[option] == value, option
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        result = subprocess.run(
            [analyze, "verify", str(DEPLOY / "lane.service")],
            capture_output=True,
            text=True,
            check=False,
        )
        # A missing /usr/bin/lane on the test machine is expected; syntax errors are not.
        assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr
