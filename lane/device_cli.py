"""`lane device`: the barrier and lane I/O side of a lane, as a process.

    lane device --emulate (--config lane.toml | --lane ID --broker HOST:PORT)
                [--fault NAME] [--vehicle CLASS] [--auto-pass] [--speed X]
    lane device --modbus HOST:PORT --map io.toml (--config lane.toml | --lane ID --broker ...)
    lane device --send OP (--config lane.toml | --lane ID --broker ...)
                [--fault NAME] [--class N] [--sensor NAME --occupied yes|no]

`--emulate` runs `DeviceEmulator` (what the tests and the simulator use) until SIGINT/SIGTERM;
its faults and vehicles are switched with flags at start and over MQTT at run time
(`lane/{id}/device/control`, see `barrier.device_control`; `--send` publishes one). `--modbus`
bridges the barrier protocol to a Modbus TCP I/O controller (see `barrier.modbus_bridge`).
The MQTT password comes from $LANE_DEVICE_PASSWORD, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from barrier import device_control as control
from barrier.device import FAULTS, DeviceEmulator, Timings
from barrier.messages import BarrierStatus, LaneStatus
from lane.config import ConfigError, load_config
from lane.log import setup_logging
from lane.signals import stop_on_signals
from lane.transport.mqtt import (
    Credentials,
    Handler,
    Incoming,
    LinkStopped,
    MqttLink,
)
from lane.transport.tls import CaFile
from lane.wire import topics
from lane.wire.codec import PayloadError

log = logging.getLogger("lane.lane.device_cli")

PASSWORD_ENV = "LANE_DEVICE_PASSWORD"


class UsageError(ValueError):
    """A command line that cannot be run; the text says why."""


@dataclass(frozen=True)
class Target:
    """Which lane, on which broker, as whom."""

    lane: str
    host: str
    port: int
    credentials: Credentials | None
    tls_ca: Path | None

    def tls(self) -> CaFile | None:
        return CaFile.load(self.tls_ca) if self.tls_ca is not None else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lane device", description="Run the barrier and lane I/O side of a lane."
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--emulate", action="store_true", help="run the device emulator")
    mode.add_argument("--modbus", metavar="HOST:PORT", help="bridge to a Modbus TCP controller")
    mode.add_argument(
        "--send", choices=[str(op) for op in control.ControlOp], help="send one control, exit"
    )
    p.add_argument("--config", type=Path, help="lane.toml: lane id and broker from it")
    p.add_argument("--lane", help="lane id, e.g. p07/l03 (instead of --config)")
    p.add_argument("--broker", help="HOST:PORT of the broker (instead of --config)")
    p.add_argument("--username", help=f"MQTT user (password from ${PASSWORD_ENV})")
    p.add_argument("--tls-ca", type=Path, help="connect with TLS, verifying the broker")
    p.add_argument("--map", type=Path, help="--modbus: the wiring map (io.toml)")
    p.add_argument("--fault", choices=sorted(FAULTS), help="a fault to start with (or to --send)")
    p.add_argument("--vehicle", type=int, metavar="CLASS", help="a vehicle drives up at start")
    p.add_argument(
        "--auto-pass", action="store_true", help="a waiting vehicle drives through once open"
    )
    p.add_argument("--speed", type=float, default=1.0, help="run the mechanics X times faster")
    p.add_argument("--class", dest="vehicle_class", type=int, help="--send vehicle_enters")
    p.add_argument("--sensor", choices=sorted(control.PRESENCE_SENSORS), help="--send sensor")
    p.add_argument("--occupied", choices=["yes", "no"], help="--send sensor")
    p.add_argument("--log-level", default="INFO")
    return p


def parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def target_of(args: argparse.Namespace) -> Target:
    """The lane and broker from --config, or from --lane and --broker; flags win."""
    lane, host, port, ca = args.lane, None, None, args.tls_ca
    if args.config is not None:
        config = load_config(args.config)  # ConfigError: the caller prints it
        lane = lane or config.lane.id
        host, port = config.broker.host, config.broker.port
        ca = ca or config.broker.tls_ca_file
    if args.broker is not None:
        host, port = parse_broker(args.broker)
    if lane is None or host is None or port is None:
        raise UsageError("say which lane and broker: --config lane.toml, or --lane and --broker")
    try:
        # `[lane] id`'s own check: a wildcard would reach paho as a topic it refuses, mid-run.
        topics.check_lane_id(lane)
    except ValueError as exc:
        raise UsageError(f"--lane: {exc}") from None
    creds = None
    if args.username:
        creds = Credentials(args.username, os.environ.get(PASSWORD_ENV, ""))
    return Target(lane, host, port, creds, ca)


def control_of(args: argparse.Namespace) -> control.DeviceControl:
    occupied = None if args.occupied is None else args.occupied == "yes"
    try:
        return control.DeviceControl(
            secrets.token_hex(8),
            control.ControlOp(args.send),
            fault=args.fault,
            vehicle_class=args.vehicle_class,
            sensor=args.sensor,
            occupied=occupied,
        )
    except PayloadError as exc:
        raise UsageError(str(exc)) from None


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help already
        return exc.code if isinstance(exc.code, int) else 2
    try:
        target = target_of(args)
        if args.speed <= 0:
            raise UsageError(f"--speed must be > 0, got {args.speed}")
        if args.modbus is not None and args.map is None:
            raise UsageError("--modbus needs --map io.toml (see deploy/io.example.toml)")
        emulator_only = args.vehicle is not None or args.auto_pass
        if not args.emulate and (emulator_only or (args.modbus and args.fault)):
            raise UsageError("--vehicle, --auto-pass (and --fault at start) are for --emulate")
        if args.send is not None:
            return asyncio.run(send(target, control_of(args)))
    except (UsageError, ConfigError) as exc:
        print(f"lane device: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, lane=target.lane)
    if args.modbus is not None:
        from lane.modbus_cli import run_bridge  # noqa: PLC0415 - pymodbus only when used

        code: int = run_bridge(target, args.modbus, args.map)
        return code
    return asyncio.run(emulate(target, args))


def _link(
    target: Target,
    client_id: str,
    subscriptions: Sequence[tuple[str, int]] = (),
    handler: Handler | None = None,
) -> MqttLink:
    """A throwaway session (no persistent state on the broker) for bench traffic."""
    return MqttLink(
        target.host,
        target.port,
        client_id,
        subscriptions,
        handler=handler,
        credentials=target.credentials,
        tls=target.tls(),
        session_expiry=0,
    )


async def send(target: Target, ctl: control.DeviceControl) -> int:
    link = _link(target, f"bench-{secrets.token_hex(4)}")
    task = asyncio.create_task(link.run())
    try:
        try:
            await link.wait_connected(5.0)
        except TimeoutError:
            print(
                f"lane device: no MQTT connection to {target.host}:{target.port} within 5 s",
                file=sys.stderr,
            )
            return 1
        except LinkStopped as exc:
            print(f"lane device: {target.host}:{target.port}: {exc}", file=sys.stderr)
            return 1
        await link.publish(control.device_control(target.lane), ctl.encode(), qos=1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    print(f"sent {ctl.op} ({ctl.ctl_id}) to lane {target.lane}")
    return 0


async def emulate(target: Target, args: argparse.Namespace) -> int:
    device = DeviceEmulator(
        target.lane,
        target.host,
        target.port,
        Timings().scaled(args.speed),
        credentials=target.credentials,
    )
    device.link.tls = target.tls()
    if args.fault is not None:
        device.set_fault(args.fault)
    bench = Bench(device, vehicle=args.vehicle, auto_pass=args.auto_pass)
    link = _link(target, f"bench-{target.lane}", bench.subscriptions(), bench.handle)
    stop = stop_on_signals()
    tasks = [asyncio.create_task(device.run()), asyncio.create_task(link.run())]
    log.info(
        "device emulator started",
        extra={"lane": target.lane, "broker": f"{target.host}:{target.port}", "fault": args.fault},
    )
    try:
        await stop.wait()
    finally:
        await device.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bench.close()
    log.info("device emulator stopped", extra={"lane": target.lane})
    return 0


class Bench:
    """Runs the controls that arrive over MQTT, and the --vehicle / --auto-pass traffic."""

    def __init__(self, device: DeviceEmulator, *, vehicle: int | None, auto_pass: bool) -> None:
        self.device = device
        self.lane = device.lane
        self._vehicle = vehicle
        self._auto_pass = auto_pass
        self._passing = False
        self._work: set[asyncio.Task[None]] = set()

    def subscriptions(self) -> list[tuple[str, int]]:
        subs = [(control.device_control(self.lane), 1)]
        if self._vehicle is not None:
            # The vehicle drives up once the controller is there to see it: loop readings are
            # not retained, and one published before `lane run` connects would be lost.
            subs.append((topics.status(self.lane), 1))
        if self._auto_pass:
            subs.append((topics.barrier_state(self.lane), 1))
        return subs

    async def handle(self, msg: Incoming) -> None:
        if msg.topic == control.device_control(self.lane):
            self._on_control(msg.payload)
        elif msg.topic == topics.status(self.lane):
            self._on_lane_status(msg.payload)
        elif msg.topic == topics.barrier_state(self.lane):
            self._on_barrier_state(msg.payload)

    def _on_control(self, payload: bytes) -> None:
        try:
            ctl = control.DeviceControl.decode(payload)
        except PayloadError as exc:
            log.warning("bad device control ignored", extra={"lane": self.lane, "error": str(exc)})
            return
        log.info("device control", extra={"lane": self.lane, "ctl_id": ctl.ctl_id, "op": ctl.op})
        self._spawn(control.apply(self.device, ctl))

    def _on_lane_status(self, payload: bytes) -> None:
        try:
            status = LaneStatus.decode(payload)
        except PayloadError:
            return  # `lane watch` shows it; the bench only waits for an online controller
        if status.state != "offline" and self._vehicle is not None:
            vehicle_class, self._vehicle = self._vehicle, None
            log.info("vehicle drives up", extra={"lane": self.lane, "class": vehicle_class})
            self._spawn(self.device.vehicle_enters(vehicle_class))

    def _on_barrier_state(self, payload: bytes) -> None:
        try:
            state = BarrierStatus.decode(payload).state
        except PayloadError:
            return
        waiting = self.device.sensors.get("entry_loop", False)
        if state == "open" and waiting and not self._passing:
            self._passing = True
            log.info("vehicle drives through", extra={"lane": self.lane})
            self._spawn(self._pass())

    async def _pass(self) -> None:
        try:
            await self.device.vehicle_passes()
        finally:
            self._passing = False

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._work.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._work.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "device control failed",
                extra={"lane": self.lane, "error": repr(task.exception())},
            )

    async def close(self) -> None:
        for task in list(self._work):
            task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
