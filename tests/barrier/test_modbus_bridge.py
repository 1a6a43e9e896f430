"""The Modbus bridge between mosquitto and pymodbus's real Modbus TCP server on loopback."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from modbus_kit import DRIVE_FAULT, DRIVE_REGISTER, SAFETY, IoController, io_map, running
from pymodbus.constants import ExcCodes
from test_barrier_protocol import Recorder, command, eventually, until

from barrier.iomap import IoMap, IoMapError, load_iomap, parse_iomap
from barrier.link import BarrierLink
from barrier.messages import BarrierAck, BarrierCommand, DeviceQuery, DeviceSnapshot
from barrier.modbus_bridge import ModbusBridge, ModbusIo
from lane.device_cli import main as device_main
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics
from sim.broker import Mosquitto, free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@dataclass
class Bench:
    controller: IoController
    bridge: ModbusBridge
    rec: Recorder
    link: BarrierLink
    lane: str

    async def send(self, op: str, cmd_id: str) -> BarrierAck:
        await self.link.send(command(self.lane, op, cmd_id), expiry_s=3)
        return await until(self.rec.acks, lambda a: a.cmd_id == cmd_id)

    async def state(self, wanted: str, error: str | None = None) -> None:
        def matches(s: object) -> bool:
            state = getattr(s, "state", None)
            return state == wanted and (error is None or error in (getattr(s, "error", "") or ""))

        await until(self.rec.states, matches)


async def bench_for(
    mosquitto: Mosquitto, lane_id: str, iomap: IoMap, travel_s: float = 0.05
) -> AsyncIterator[Bench]:
    controller = IoController(free_port(), travel_s)
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    io = ModbusIo("127.0.0.1", controller.port, iomap)
    bridge = ModbusBridge(lane_id, mosquitto.host, mosquitto.port, iomap, io)
    async with running(controller):
        tasks = [asyncio.create_task(link.run()), asyncio.create_task(bridge.run())]
        try:
            await link.wait_connected(5)
            await bridge.wait_connected(5)
            bench = Bench(controller, bridge, rec, link, lane_id)
            await bench.state("closed")  # read from the closed limit switch
            yield bench
        finally:
            await bridge.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def bench(mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[Bench]:
    async for b in bench_for(mosquitto, lane_id, io_map()):
        yield b


async def test_open_and_close_drive_the_coils_and_follow_the_limits(bench: Bench) -> None:
    assert await bench.send("open", "v1/open") == BarrierAck("v1/open", True, "opening")
    await bench.state("open")
    assert bench.controller.coil(0) and not bench.controller.coil(1)
    # The ack carries the move the command started; the bridge publishes where it ends.
    assert await bench.send("close", "v1/close") == BarrierAck("v1/close", True, "closing")
    await bench.state("closed")
    assert bench.controller.coil(1) and not bench.controller.coil(0)
    # The same cmd_id again: answered with its first outcome, never executed twice.
    again = await bench.send("open", "v1/open")
    assert again.ok and again.state == "closed"
    assert bench.bridge.executions == ["v1/open", "v1/close"]
    assert not bench.controller.coil(0)


async def test_a_holding_register_drive(mosquitto: Mosquitto, lane_id: str) -> None:
    drive = {"kind": "register", "holding_register": DRIVE_REGISTER, "open_value": 1}
    register_map = parse_iomap(
        {**io_map().model_dump(), "drive": {**drive, "close_value": 2}}, "io.toml"
    )
    async for bench in bench_for(mosquitto, lane_id, register_map):
        assert (await bench.send("open", "r1/open")).ok
        await bench.state("open")
        assert bench.controller.register(DRIVE_REGISTER) == 1
        assert not bench.controller.coil(0) and not bench.controller.coil(1)
        assert (await bench.send("close", "r1/close")).ok
        await bench.state("closed")
        assert bench.controller.register(DRIVE_REGISTER) == 2


async def test_loops_are_published_and_no_close_over_an_occupied_safety_loop(
    bench: Bench,
) -> None:
    assert (await bench.send("open", "v2/open")).ok
    await bench.state("open")
    bench.controller.set_input(SAFETY, True)
    reading = await until(bench.rec.sensors, lambda r: r.sensor == "safety_loop" and r.occupied)
    assert reading.seq is not None
    refused = await bench.send("close", "v2/close")
    assert refused == BarrierAck("v2/close", False, "open", "safety_loop_occupied")
    assert not bench.controller.coil(1)
    bench.controller.set_input(SAFETY, False)
    await until(bench.rec.sensors, lambda r: r.sensor == "safety_loop" and r.occupied is False)
    assert (await bench.send("close", "v2/close")).ok  # refused before: may execute now
    await bench.state("closed")


async def test_a_vehicle_under_a_closing_boom_reverses_it(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    async for bench in bench_for(mosquitto, lane_id, io_map(), travel_s=0.4):
        assert (await bench.send("open", "v3/open")).ok
        await bench.state("open")
        assert await bench.send("close", "v3/close") == BarrierAck("v3/close", True, "closing")
        bench.controller.set_input(SAFETY, True)
        await bench.state("opening", "safety_reversal")
        # The state goes out without waiting for its PUBACK, so it may be seen before the
        # drive's coil is written: the reversal is the coil, polled with a bound.
        await eventually(lambda b=bench: b.controller.coil(0), within=5)  # type: ignore[misc]
        await bench.state("open")
        bench.controller.set_input(SAFETY, False)  # the accepted close completes
        await bench.state("closing")
        await bench.state("closed")


async def test_the_controller_going_away_is_a_fault_that_clears_itself(bench: Bench) -> None:
    await bench.controller.stop()
    # Safe: the barrier says fault, with why, and refuses to move.
    await bench.state("fault", "io_controller:")
    refused = await bench.send("open", "v4/open")
    assert refused == BarrierAck("v4/open", False, "fault", "fault")
    await bench.controller.start()
    # Back: the state its limit switches report, and commands work again.
    await bench.state("closed")
    assert (await bench.send("open", "v4/open")).ok
    await bench.state("open")


async def test_modbus_exceptions_are_a_fault_that_clears_itself(bench: Bench) -> None:
    bench.controller.fail(ExcCodes.DEVICE_BUSY)
    await bench.state("fault", "Modbus exception 6 (DEVICE_BUSY)")
    assert bench.bridge.io_error is not None
    bench.controller.fail(None)
    await bench.state("closed")
    await eventually(lambda: bench.bridge.io_error is None)


async def test_a_drive_fault_contact_is_a_fault(bench: Bench) -> None:
    bench.controller.set_input(DRIVE_FAULT, True)
    await bench.state("fault", "drive_fault")
    assert not (await bench.send("open", "v5/open")).ok
    bench.controller.set_input(DRIVE_FAULT, False)
    await bench.state("closed")


async def test_a_move_that_never_reaches_its_limit_is_a_fault(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    slow = io_map(controller={"travel_s": 0.2})
    async for bench in bench_for(mosquitto, lane_id, slow, travel_s=30):
        assert (await bench.send("open", "v6/open")).ok
        await bench.state("fault", "drive_timeout: not open within 0.2 s")


async def test_the_admission_rules_are_the_devices(bench: Bench, mosquitto: Mosquitto) -> None:
    """Shared with the emulator: no expiry refused, wrong lane refused, late dropped."""
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{bench.lane}")
    task = asyncio.create_task(raw.run())
    try:
        await raw.wait_connected(5)
        topic = topics.barrier_cmd(bench.lane)
        deadline = int((time.time() + 3) * 1_000_000)
        no_expiry = BarrierCommand("open", "n1", deadline, bench.lane)
        await raw.publish(topic, no_expiry.encode(), response_topic=topics.barrier_ack(bench.lane))
        ack = await until(bench.rec.acks, lambda a: a.cmd_id == "n1")
        assert ack.error == "no_expiry"
        other = BarrierCommand("open", "n2", deadline, "p99/l99")
        await raw.publish(topic, other.encode(), expiry_s=3)
        assert (await until(bench.rec.acks, lambda a: a.cmd_id == "n2")).error == "wrong_lane"
        late = BarrierCommand("open", "n3", int((time.time() - 1) * 1_000_000), bench.lane)
        await raw.publish(topic, late.encode(), expiry_s=3)
        await eventually(lambda: any(c.cmd_id == "n3" for c in bench.bridge.received))
        assert bench.bridge.executions == [] and not bench.controller.coil(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_active_low_inputs_read_a_cut_wire_as_occupied(
    mosquitto: Mosquitto, lane_id: str
) -> None:
    fail_safe = io_map(inputs={"active_low": ["safety_loop"]})
    async for bench in bench_for(mosquitto, lane_id, fail_safe):
        # The bench starts with every input at 0: a normally-closed loop reads occupied.
        reading = await until(bench.rec.sensors, lambda r: r.sensor == "safety_loop")
        assert reading.occupied is True
        bench.controller.set_input(SAFETY, True)  # the contact closes: clear
        await until(bench.rec.sensors, lambda r: r.sensor == "safety_loop" and not r.occupied)


def test_the_example_map_loads_and_every_problem_is_listed(tmp_path: Path) -> None:
    example = load_iomap(DEPLOY / "io.example.toml")
    assert example.sensors == ("entry_loop", "safety_loop", "exit_loop", "light_curtain")
    assert example.input_span() == (0, 7)
    bad = {
        "controller": {"poll_s": 0, "colour": "red"},
        "drive": {"kind": "coils", "open_coil": 3, "close_coil": 3},
        "inputs": {"open_limit": 0, "closed_limit": 0, "entry_loop": 1},
    }
    with pytest.raises(IoMapError) as info:
        parse_iomap(bad, "io.toml")
    lines = str(info.value).splitlines()
    assert any(line.startswith("io.toml: controller.poll_s:") for line in lines)
    assert any(line.startswith("io.toml: controller.colour: Extra inputs") for line in lines)
    assert any("open_coil and close_coil must differ" in line for line in lines)
    assert any("needs safety_loop or light_curtain" in line for line in lines)
    path = tmp_path / "io.toml"
    path.write_text("[drive\n")
    with pytest.raises(IoMapError, match="not valid TOML"):
        load_iomap(path)
    with pytest.raises(IoMapError, match="cannot read"):
        load_iomap(tmp_path / "missing.toml")


@pytest.mark.skipif(
    not hasattr(ModbusBridge, "snapshot"),
    reason="the bridge answers device queries with the emulator's code (heal branch, issue #11)",
)
async def test_the_bridge_answers_a_device_query_with_its_whole_truth(
    bench: Bench, mosquitto: Mosquitto
) -> None:
    snapshots: asyncio.Queue[DeviceSnapshot] = asyncio.Queue()

    async def got(msg: Incoming) -> None:
        snapshots.put_nowait(DeviceSnapshot.decode(msg.payload))

    subs = [(topics.device_snapshot(bench.lane), 1)]
    asker = MqttLink(mosquitto.host, mosquitto.port, f"ask-{bench.lane}", subs, got)
    task = asyncio.create_task(asker.run())
    try:
        await asker.wait_connected(5)
        bench.controller.set_input(SAFETY, True)
        await until(bench.rec.sensors, lambda r: r.sensor == "safety_loop" and r.occupied)
        query = DeviceQuery("q1", bench.lane, int(time.time() * 1_000_000))
        await asker.publish(topics.device_query(bench.lane), query.encode())
        answer = await until(snapshots, lambda s: s.query_id == "q1")
        assert answer.barrier == "closed" and answer.sensors["safety_loop"] is True
        assert answer.sensors["entry_loop"] is False and answer.error is None
        await bench.controller.stop()
        await bench.state("fault", "io_controller:")
        await asker.publish(topics.device_query(bench.lane), replace(query, query_id="q2").encode())
        answer = await until(snapshots, lambda s: s.query_id == "q2")
        assert answer.barrier == "fault" and (answer.error or "").startswith("io_controller:")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_lane_device_modbus_runs_the_shipped_map(mosquitto: Mosquitto, lane_id: str) -> None:
    """The command as an installer runs it, with deploy/io.example.toml as shipped."""
    rec = Recorder()
    link = rec.link(mosquitto, lane_id)
    controller = IoController(free_port())
    async with running(controller):
        task = asyncio.create_task(link.run())
        argv = [
            "device", "--modbus", f"127.0.0.1:{controller.port}",
            "--map", str(DEPLOY / "io.example.toml"),
            "--lane", lane_id, "--broker", f"{mosquitto.host}:{mosquitto.port}",
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lane", *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await link.wait_connected(5)
            await until(rec.states, lambda s: s.state == "closed", within=15)
            # Wired normally closed in the example map: an input at 0 is an occupied loop.
            curtain = await until(rec.sensors, lambda r: r.sensor == "light_curtain")
            assert curtain.occupied is True
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert proc.returncode == 0, out.decode()
    assert b'"event":"modbus bridge started"' in out


def test_lane_device_modbus_refuses_a_bad_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "io.toml"
    bad.write_text('[drive]\nkind = "coils"\nopen_coil = 0\nclose_coil = 0\n')
    argv = ["--modbus", "127.0.0.1:502", "--map", str(bad), "--lane", "p1/l1", "--broker", "h:1"]
    assert device_main(argv) == 2
    err = capsys.readouterr().err
    assert "io.toml: drive: Value error, open_coil and close_coil must differ" in err
    assert "io.toml: inputs: Field required" in err


async def test_a_request_in_flight_is_cancelled_not_turned_into_a_fault() -> None:
    """pymodbus turns a cancel into its own exception; stopping the bridge mid-request must
    still stop it (it hung a teardown, polling on), not record an I/O fault."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    silent.setblocking(False)
    port = silent.getsockname()[1]
    io = ModbusIo("127.0.0.1", port, io_map(controller={"timeout_s": 10}))
    try:
        read = asyncio.create_task(io.read())
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(silent)
        assert await loop.sock_recv(conn, 12)  # the request is on the wire, its answer awaited
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await read
        conn.close()
    finally:
        io.close()
        silent.close()
