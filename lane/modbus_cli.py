"""`lane device --modbus HOST:PORT --map io.toml`: run the Modbus bridge until SIGINT/SIGTERM.

Imported by `lane.device_cli` only when --modbus is given, so pymodbus loads only then.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from barrier.iomap import IoMap, IoMapError, load_iomap
from barrier.modbus_bridge import ModbusBridge, ModbusIo
from lane.device_cli import Target, UsageError, parse_broker
from lane.signals import stop_on_signals

log = logging.getLogger("lane.barrier.modbus")


def run_bridge(target: Target, modbus: str, map_path: Path) -> int:
    try:
        host, port = parse_broker(modbus)
        iomap = load_iomap(map_path)
    except (UsageError, IoMapError) as exc:
        print(f"lane device: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(target, host, port, iomap))


async def _serve(target: Target, host: str, port: int, iomap: IoMap) -> int:
    bridge = ModbusBridge(
        target.lane,
        target.host,
        target.port,
        iomap,
        ModbusIo(host, port, iomap),
        credentials=target.credentials,
    )
    bridge.link.tls = target.tls()
    stop = stop_on_signals()
    task = asyncio.create_task(bridge.run())
    log.info(
        "modbus bridge started",
        extra={"lane": target.lane, "io_controller": f"{host}:{port}", "sensors": iomap.sensors},
    )
    await stop.wait()
    await bridge.stop()
    await asyncio.gather(task, return_exceptions=True)
    log.info("modbus bridge stopped", extra={"lane": target.lane})
    return 0
