"""A real lane for the ops tests: LaneDaemon + device emulator + mosquitto + acquirer + a push
camera fed with rendered frames, with its metrics endpoint on a free port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from polling import eventually
from prometheus_client.parser import text_string_to_metric_families

from barrier.device import DeviceEmulator, Timings
from lane.config import LaneConfig, parse_config
from lane.daemon import LaneDaemon, build
from lane.runner import Clocks
from scanner.sources import PushSource
from sim.acquirer import AcquirerServer
from sim.broker import Mosquitto
from sim.camera import frame_for
from sim.codes import CodeFactory

ANSWERS = ("barrier_opened", "declined", "code_refused")


@dataclass
class OpsLane:
    config: LaneConfig
    daemon: LaneDaemon
    device: DeviceEmulator
    source: PushSource
    codes: CodeFactory
    notes: list[tuple[str, dict[str, Any]]]
    base_url: str
    http: aiohttp.ClientSession

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for n, fields in self.notes if n == name]

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base_url + path) as resp:
            return resp.status, await resp.text()

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """/metrics parsed: (sample name, sorted labels) -> value."""
        status, text = await self.get("/metrics")
        assert status == 200, text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def serve(self, kind: str, vehicle_class: int = 2) -> str:
        """One vehicle: arrives, shows a code of `kind`; drives through when let through.
        Returns the name of the lane's answer."""
        arrived = len(self.named("vehicle_arrived"))
        await self.device.vehicle_enters(vehicle_class)
        await eventually(lambda: len(self.named("vehicle_arrived")) > arrived)
        vehicle_id = self.named("vehicle_arrived")[-1]["vehicle_id"]
        text = self.codes.make(kind, int(time.time())).text
        frame = frame_for(text, "clear", rng=1)

        def answer() -> str | None:
            for name, fields in self.notes:
                if name in ANSWERS and fields.get("vehicle_id") == vehicle_id:
                    return name
            return None

        deadline = time.monotonic() + 8.0
        while answer() is None:
            assert time.monotonic() < deadline, f"no answer; notes: {self.notes[-5:]}"
            self.source.put(frame, self.daemon.clocks.monotonic())  # the camera's is the lane's
            await asyncio.sleep(0.03)
        result = answer()
        assert result is not None
        if result == "barrier_opened":
            await eventually(lambda: self.device.state == "open")
            await self.device.vehicle_passes()
            await eventually(lambda: self.daemon.runner.state.passage is None)
        else:
            await self.device.vehicle_backs_away()
            await eventually(lambda: self.daemon.runner.state.vehicle is None)
        return result


@asynccontextmanager
async def running_lane(
    tmp_path: Path,
    broker: Mosquitto,
    lane_id: str,
    *,
    extra: dict[str, dict[str, Any]] | None = None,
    clocks: Clocks | None = None,
) -> AsyncIterator[OpsLane]:
    """`extra`: config keys by section, on top of the test lane's; `clocks`: the lane's (its
    wall is the device's too: both computers keep the same time)."""
    codes = CodeFactory(11)
    keyset = codes.write_keyset(tmp_path / "keyset.json", int(time.time()), [lane_id])
    acquirer = AcquirerServer()
    url = await acquirer.start()
    sections: dict[str, dict[str, Any]] = {
        "lane": {"id": lane_id, "data_dir": str(tmp_path / "lane")},
        "broker": {"port": broker.port},
        "camera": {"source": "push"},
        "auth": {"acquirer_url": url, "keyset": str(keyset), **codes.lane_auth(tmp_path, lane_id)},
        "metrics": {"host": "127.0.0.1", "port": 0},
    }
    for section, keys in (extra or {}).items():
        sections[section] = {**sections.get(section, {}), **keys}
    config = parse_config(sections)
    wall = time.time if clocks is None else clocks.wall
    device = DeviceEmulator(lane_id, broker.host, broker.port, Timings().scaled(50), wall)
    # Frames only come when a test shows a code: no blackout alarm in between.
    source = PushSource(blackout_after_s=3600)
    daemon = await build(config, source=source, clocks=clocks, shutdown_grace_s=2.0)
    notes: list[tuple[str, dict[str, Any]]] = []
    daemon.runner.observers.append(lambda note: notes.append((note.name, note.fields())))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(device.run()), asyncio.create_task(daemon.run(stop))]
    http = aiohttp.ClientSession()
    try:
        await device.wait_connected(5)
        await daemon.link.wait_connected(5)
        await eventually(lambda: daemon.ops.address is not None)
        await eventually(lambda: daemon.runner.state.barrier == "closed")
        assert daemon.ops.address is not None
        base = f"http://127.0.0.1:{daemon.ops.address[1]}"
        yield OpsLane(config, daemon, device, source, codes, notes, base, http)
    finally:
        await http.close()
        stop.set()
        await asyncio.wait_for(tasks[1], 15)
        await device.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await acquirer.stop()
