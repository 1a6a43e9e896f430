"""A lane I/O controller on loopback: pymodbus's real Modbus TCP server, a boom behind it.

The server answers over TCP like a controller in a cabinet would. Behind it, a boom that moves
when its coils say so and sets its limit switches after `travel_s`; the test sets loops and
the drive fault contact, stops the server (the controller goes away), starts it again, or
makes every request answer with a Modbus exception.
"""

from __future__ import annotations

import asyncio
import contextlib

from pymodbus.constants import ExcCodes
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer

from barrier.iomap import IoMap, parse_iomap

# Function codes of the datastore: coils, discrete inputs, holding registers.
COILS, INPUTS, REGISTERS = 1, 2, 3
MAP = {
    "controller": {"poll_s": 0.01, "timeout_s": 0.3, "retry_s": 0.05, "travel_s": 2.0},
    "drive": {"kind": "coils", "open_coil": 0, "close_coil": 1},
    "inputs": {
        "open_limit": 0, "closed_limit": 1, "drive_fault": 2,
        "entry_loop": 3, "safety_loop": 4, "exit_loop": 5, "light_curtain": 6,
    },
}  # fmt: skip
OPEN_LIMIT, CLOSED_LIMIT, DRIVE_FAULT, ENTRY, SAFETY, EXIT, CURTAIN = range(7)
DRIVE_REGISTER = 100


def io_map(**changes: dict[str, object]) -> IoMap:
    data = {k: {**v, **changes.get(k, {})} for k, v in MAP.items()}
    return parse_iomap(data, "io.toml")


class Block(ModbusSequentialDataBlock):  # type: ignore[misc]
    """A data block that can be made to answer every request with a Modbus exception."""

    failing: ExcCodes | None = None

    def getValues(self, address: int, count: int = 1) -> list[int] | list[bool] | ExcCodes:  # noqa: N802
        if self.failing is not None:
            return self.failing
        values: list[int] | list[bool] | ExcCodes = super().getValues(address, count)
        return values

    def setValues(self, address: int, values: list[int] | list[bool]) -> ExcCodes | None:  # noqa: N802
        if self.failing is not None:
            return self.failing
        super().setValues(address, values)
        return None


class IoController:
    def __init__(self, port: int, travel_s: float = 0.05) -> None:
        self.port = port
        self.travel_s = travel_s
        self.blocks = [Block(0, [False] * 32), Block(0, [False] * 32), Block(0, [0] * 128)]
        co, di, hr = self.blocks
        self.device = ModbusDeviceContext(co=co, di=di, hr=hr)
        self.context = ModbusServerContext(devices=self.device, single=True)
        self.server: ModbusTcpServer | None = None
        self._boom: asyncio.Task[None] | None = None
        self.set_input(CLOSED_LIMIT, True)

    async def start(self) -> None:
        self.server = ModbusTcpServer(self.context, address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        self._boom = asyncio.create_task(self._drive())

    async def stop(self) -> None:
        """The controller goes away (power cut, cable pulled): connections drop."""
        if self._boom is not None:
            self._boom.cancel()
            await asyncio.gather(self._boom, return_exceptions=True)
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    def fail(self, code: ExcCodes | None) -> None:
        """Answer every request with this Modbus exception (None: answer normally again)."""
        for block in self.blocks:
            block.failing = code

    def set_input(self, address: int, value: bool) -> None:
        failing = self.blocks[1].failing
        self.blocks[1].failing = None
        self.device.setValues(INPUTS, address, [value])
        self.blocks[1].failing = failing

    def input(self, address: int) -> bool:
        return bool(self._get(1, INPUTS, address))

    def coil(self, address: int) -> bool:
        return bool(self._get(0, COILS, address))

    def register(self, address: int) -> int:
        return int(self._get(2, REGISTERS, address))

    def wants(self) -> tuple[bool, bool]:
        """(open, closed): what the drive is told, by its coils or by register 100 (1 / 2)."""
        command = self.register(DRIVE_REGISTER)
        return self.coil(0) or command == 1, self.coil(1) or command == 2

    def _get(self, block: int, func: int, address: int) -> int | bool:
        failing = self.blocks[block].failing
        self.blocks[block].failing = None
        try:
            values = self.device.getValues(func, address, 1)
        finally:
            self.blocks[block].failing = failing
        assert isinstance(values, list)
        return values[0]

    async def _drive(self) -> None:
        """The boom: goes where the held coil says, reaching the limit after travel_s."""
        while True:
            await asyncio.sleep(0.005)
            want_open, want_closed = self.wants()
            if want_open and not self.input(OPEN_LIMIT):
                self.set_input(CLOSED_LIMIT, False)
                await asyncio.sleep(self.travel_s)
                if self.wants()[0]:
                    self.set_input(OPEN_LIMIT, True)
            elif want_closed and not self.input(CLOSED_LIMIT):
                self.set_input(OPEN_LIMIT, False)
                await asyncio.sleep(self.travel_s)
                if self.wants()[1]:
                    self.set_input(CLOSED_LIMIT, True)


@contextlib.asynccontextmanager
async def running(controller: IoController):  # type: ignore[no-untyped-def]
    await controller.start()
    try:
        yield controller
    finally:
        await controller.stop()
