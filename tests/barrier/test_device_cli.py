"""`lane device --emulate` as a process over mosquitto; controls over MQTT and from flags."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import pytest
from test_barrier_protocol import eventually

from barrier.device_control import ControlOp, DeviceControl, device_control
from barrier.messages import BarrierStatus, SensorReading
from lane.device_cli import main
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics
from lane.wire.codec import PayloadError
from sim.broker import Mosquitto

LANE_CMD = [sys.executable, "-m", "lane"]


class Seen:
    """Barrier states and sensor readings of one lane, as a watcher receives them."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.readings: list[tuple[str, bool | None, int | None]] = []

    async def on(self, msg: Incoming) -> None:
        if msg.topic.endswith("/barrier/state") and msg.payload:
            self.states.append(BarrierStatus.decode(msg.payload).state)
        elif "/io/" in msg.topic:
            r = SensorReading.decode(msg.payload)
            self.readings.append((r.sensor, r.occupied, r.vehicle_class))


@pytest.fixture
async def seen(mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[Seen]:
    found = Seen()
    subs = [(topics.barrier_state(lane_id), 1), (topics.io_all(lane_id), 1)]
    link = MqttLink(mosquitto.host, mosquitto.port, f"seen-{lane_id}", subs, found.on)
    task = asyncio.create_task(link.run())
    await link.wait_connected(5)
    yield found
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def lane_cmd(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *LANE_CMD, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_faults_and_vehicles_are_switched_over_mqtt(
    mosquitto: Mosquitto, lane_id: str, seen: Seen
) -> None:
    where = ["--lane", lane_id, "--broker", f"{mosquitto.host}:{mosquitto.port}"]
    device = await asyncio.create_subprocess_exec(
        *LANE_CMD, "device", "--emulate", *where, "--fault", "fault",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        # --fault at start: the device comes up in `fault`.
        await eventually(lambda: seen.states[-1:] == ["fault"])
        # Cleared over MQTT: it homes to closed.
        code, out = await lane_cmd("device", "--send", "fault", *where)
        assert code == 0 and out.startswith("sent fault"), out
        await eventually(lambda: seen.states[-1:] == ["closed"])
        # A vehicle, then one sensor, over MQTT.
        code, out = await lane_cmd("device", "--send", "vehicle_enters", "--class", "2", *where)
        assert code == 0 and out.startswith("sent vehicle_enters")
        await eventually(lambda: ("entry_loop", True, None) in seen.readings)
        assert ("classifier", None, 2) in seen.readings
        code, _ = await lane_cmd(
            "device", "--send", "sensor", "--sensor", "light_curtain", "--occupied", "yes", *where
        )
        assert code == 0
        await eventually(lambda: ("light_curtain", True, None) in seen.readings)
        # Garbage on the control topic is logged and ignored; the next control still works.
        noise = MqttLink(mosquitto.host, mosquitto.port, f"noise-{lane_id}")
        task = asyncio.create_task(noise.run())
        await noise.wait_connected(5)
        await noise.publish(device_control(lane_id), b"\xc1 not msgpack")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        code, _ = await lane_cmd("device", "--send", "fault", "--fault", "fault", *where)
        assert code == 0
        await eventually(lambda: seen.states[-1:] == ["fault"])
    finally:
        if device.returncode is None:
            device.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(device.communicate(), 20)
    log = out.decode()
    assert device.returncode == 0, log
    assert "bad device control ignored" in log
    # A clean stop says offline (retained), as a real device's shutdown would.
    await eventually(lambda: seen.states[-1:] == ["offline"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--emulate"], "--config lane.toml, or --lane and --broker"),
        (["--emulate", "--lane", "p1/l1", "--broker", "nohost"], "expected HOST:PORT"),
        (["--modbus", "127.0.0.1:502", "--lane", "p1/l1", "--broker", "h:1"], "needs --map"),
        (["--send", "vehicle_enters", "--lane", "p1/l1", "--broker", "h:1"], "needs field 'class'"),
        (["--send", "sensor", "--lane", "p1/l1", "--broker", "h:1"], "field 'sensor' must be"),
        (["--emulate", "--config", "/nonexistent/lane.toml"], "cannot read"),
        (["--emulate", "--lane", "p1/l1", "--broker", "h:1", "--speed", "0"], "--speed must be"),
        (
            [
                "--modbus",
                "h:502",
                "--map",
                "io.toml",
                "--lane",
                "p1/l1",
                "--broker",
                "h:1",
                "--fault",
                "stuck",
            ],
            "are for --emulate",
        ),
        (["--send", "fault", "--lane", "p1/l1", "--broker", "h:1", "--auto-pass"], "for --emulate"),
    ],
)
def test_bad_command_lines_exit_2_with_the_reason(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("mode", [["--send", "fault"], ["--emulate"]], ids=["send", "emulate"])
async def test_a_lane_id_that_is_not_one_is_refused_up_front(
    mosquitto: Mosquitto, mode: list[str]
) -> None:
    """`p07/#` is no lane: `--send` published to a topic with a wildcard and died on paho's
    ValueError with a traceback; `--emulate` subscribed to such filters, its links stopped and
    it served on with nothing connected. Refused before any connection, as `[lane] id` is."""
    where = ["--lane", "p07/#", "--broker", f"{mosquitto.host}:{mosquitto.port}"]
    code, out = await lane_cmd("device", *mode, *where)
    assert (code, out) == (
        2,
        "lane device: --lane: a lane id is plaza/lane (letters, digits, _ and -), not 'p07/#'\n",
    )


def test_device_control_round_trips_and_refuses_nonsense() -> None:
    for ctl in (
        DeviceControl("c1", ControlOp.FAULT, fault="stuck"),
        DeviceControl("c2", ControlOp.FAULT),
        DeviceControl("c3", ControlOp.VEHICLE_ENTERS, vehicle_class=3),
        DeviceControl("c4", ControlOp.SENSOR, sensor="exit_loop", occupied=False),
        DeviceControl("c5", ControlOp.VEHICLE_PASSES),
    ):
        assert DeviceControl.decode(ctl.encode()) == ctl
    with pytest.raises(PayloadError, match="'fault' must be one of"):
        DeviceControl("c", ControlOp.FAULT, fault="melted")
    with pytest.raises(PayloadError, match="'op' must be one of"):
        DeviceControl.from_map({"v": 1, "ctl_id": "c", "op": "explode"})
    with pytest.raises(PayloadError, match="'class' must not be negative"):
        DeviceControl("c", ControlOp.VEHICLE_ENTERS, vehicle_class=-1)
    with pytest.raises(PayloadError, match="'occupied'"):
        DeviceControl("c", ControlOp.SENSOR, sensor="entry_loop")
