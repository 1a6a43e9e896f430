"""The MQTT barrier protocol bridged to a lane I/O controller (or PLC) over Modbus TCP.

`ModbusBridge` is the device emulator with its mechanism replaced by real hardware: commands
are admitted, executed once and acknowledged by exactly the emulator's code and rules
(`barrier.gate`: lane, expiry, deadline, never retained, cmd_id once, no close over an occupied
safety loop or light curtain, reversal when one becomes occupied while closing), and the
state, session and will are the emulator's too. What differs:

- a move writes the drive outputs of the wiring map (coils or a holding register) instead of
  sleeping; it ends when the limit switch says so, and a move that does not reach its limit
  within `travel_s` puts the barrier in `fault`;
- the inputs are read every `poll_s`; every loop and curtain change is published on
  io/{sensor} and drives the safety rule; a drive fault input is a `fault`;
- the I/O controller going away, not answering or answering with a Modbus exception is a
  `fault` with the reason in the state's `error` (the lane raises barrier_fault with that
  text and refuses paid passages; commands are refused with `fault`); once reads succeed again
  the barrier takes the state its limit switches report and the fault clears by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from barrier import gate as rules
from barrier.device import DeviceEmulator
from barrier.iomap import CoilDrive, IoMap, Target, observed_state
from lane.transport.mqtt import Credentials, reraise_swallowed_cancel

log = logging.getLogger("lane.barrier.modbus")

NOT_READ_YET = "io_controller: not read yet"
DRIVE_FAULT = "drive_fault"
BETWEEN_LIMITS = "position_unknown: neither limit switch is active"


class IoError(ConnectionError):
    """The I/O controller did not do what was asked: away, silent, or a Modbus exception."""


class ModbusIo:
    """One Modbus TCP client for one controller; every failure is an IoError with the reason."""

    def __init__(self, host: str, port: int, iomap: IoMap) -> None:
        self.where = f"{host}:{port}"
        self.iomap = iomap
        c = iomap.controller
        # No reconnect of its own: the bridge decides when to try again (retry_s).
        self.client = AsyncModbusTcpClient(
            host, port=port, timeout=c.timeout_s, retries=0, reconnect_delay=0
        )

    async def read(self) -> dict[str, bool]:
        first, count = self.iomap.input_span()
        unit = self.iomap.controller.unit
        response = await self._call(
            lambda: self.client.read_discrete_inputs(first, count=count, device_id=unit)
        )
        return self.iomap.decode(response.bits)

    async def drive(self, target: Target) -> None:
        drive, unit = self.iomap.drive, self.iomap.controller.unit
        if isinstance(drive, CoilDrive):
            on, off = drive.open_coil, drive.close_coil
            if target == Target.CLOSED:
                on, off = off, on
            # The other direction first: both coils must never be on at once.
            await self._call(lambda: self.client.write_coil(off, False, device_id=unit))
            await self._call(lambda: self.client.write_coil(on, True, device_id=unit))
            return
        value = drive.open_value if target == Target.OPEN else drive.close_value
        register = drive.holding_register
        await self._call(lambda: self.client.write_register(register, value, device_id=unit))

    def close(self) -> None:
        self.client.close()

    async def _call(self, request: Callable[[], Awaitable[ModbusPDU]]) -> ModbusPDU:
        if not self.client.connected:
            connected = await self.client.connect()
            reraise_swallowed_cancel()  # its wait_for may eat a cancel
            if not connected:
                raise IoError(f"io_controller: cannot connect to {self.where}")
        try:
            response = await request()
        except ModbusException as exc:
            # pymodbus turns a cancellation into "Request cancelled outside pymodbus": a
            # bridge being stopped must stop, not count it as a fault and poll on for ever.
            reraise_swallowed_cancel()
            self.client.close()  # a fresh connection next time, not a half-dead one
            raise IoError(f"io_controller: {self.where}: {exc}") from exc
        reraise_swallowed_cancel()
        if response.isError():
            code = getattr(response, "exception_code", 0)
            name = ExcCodes(code).name if code in set(ExcCodes) else f"code {code}"
            raise IoError(f"io_controller: {self.where}: Modbus exception {code} ({name})")
        return response


class ModbusBridge(DeviceEmulator):
    def __init__(
        self,
        lane: str,
        host: str,
        port: int,
        iomap: IoMap,
        io: ModbusIo,
        *,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(lane, host, port, clock=clock, credentials=credentials)
        self.iomap = iomap
        self.io = io
        # Until the inputs were read, nothing is known: no command may move the boom.
        self.gate = rules.fail(self.gate, NOT_READ_YET)
        self.io_error: str | None = None

    async def run(self) -> None:
        poller = asyncio.create_task(self._poll(), name="modbus-poll")
        try:
            await super().run()
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            self.io.close()

    # --- the mechanism: outputs and limit switches -------------------------------------------

    async def _move(self, move: rules.Move) -> None:
        try:
            await self.io.drive(Target(move.target))
        except IoError as exc:
            self._io_lost(str(exc))
            return
        travel = self.iomap.controller.travel_s
        await asyncio.sleep(travel)
        if self.gate.generation == move.generation and self.gate.state in ("opening", "closing"):
            why = f"drive_timeout: not {move.target} within {travel:g} s"
            log.warning("drive timeout", extra={"lane": self.lane, "error": why})
            self._apply(rules.fail(self.gate, why), None)

    async def _poll(self) -> None:
        c = self.iomap.controller
        while True:
            try:
                values = await self.io.read()
            except IoError as exc:
                self._io_lost(str(exc))
                await asyncio.sleep(c.retry_s)
                continue
            await self._io_read(values)
            await asyncio.sleep(c.poll_s)

    def _io_lost(self, error: str) -> None:
        if error != self.io_error:
            log.warning("io controller failed", extra={"lane": self.lane, "error": error})
        self.io_error = error
        if self.gate.state != "fault" or self.gate.note != error:
            self._apply(rules.fail(self.gate, error), None)

    async def _io_read(self, values: dict[str, bool]) -> None:
        if self.io_error is not None:
            log.info("io controller answers again", extra={"lane": self.lane})
            self.io_error = None
        for name in self.iomap.sensors:
            if self.sensors.get(name) != values[name]:
                await self.set_sensor(name, values[name])  # publishes; drives the safety rule
        observed = observed_state(values)
        if values.get("drive_fault", False):
            self._fail_once(DRIVE_FAULT)
        elif observed == "fault":
            self._fail_once("limit_switches: open and closed at once")
        elif self.gate.state == "fault":
            if observed is None:
                self._fail_once(BETWEEN_LIMITS)  # where is the boom? nobody may guess
            else:
                # Whatever was wrong is gone: take the state the limit switches report.
                self._apply(replace(rules.recover(self.gate), state=observed), None)
        elif observed is not None and self.gate.state in ("opening", "closing"):
            target = "open" if self.gate.state == "opening" else "closed"
            if observed == target:
                self._apply(*rules.arrived(self.gate, rules.Move(target, self.gate.generation)))

    def _fail_once(self, why: str) -> None:
        if self.gate.state != "fault" or self.gate.note != why:
            log.warning("barrier fault", extra={"lane": self.lane, "error": why})
            self._apply(rules.fail(self.gate, why), None)
