"""The console's actions against a real lane (daemon, device emulator, mosquitto): they move
the barrier device only for a logged-in operator, and the lane records who did it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from ops_kit import OpsLane, running_lane
from polling import eventually

from lane.console.feed import ConsoleFeed
from lane.console.model import Plaza
from lane.console.server import Console
from lane.console.users import Role, User, hash_password
from sim.broker import Mosquitto


@pytest.fixture
async def lane(tmp_path: Path, mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[OpsLane]:
    async with running_lane(tmp_path, mosquitto, lane_id) as running:
        yield running


@pytest.fixture
async def console_url(mosquitto: Mosquitto, lane: OpsLane) -> AsyncIterator[str]:
    users = {
        "olga": User("olga", Role.OPERATOR, hash_password("pw")),
        "vera": User("vera", Role.VIEWER, hash_password("pw")),
    }
    plaza = Plaza(time.time())
    feed = ConsoleFeed(plaza, mosquitto.host, mosquitto.port, lanes=lane.daemon.lane)
    console = Console(plaza, feed, users)
    app = web.Application()
    console.add_routes(app, prefix="/")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    task = asyncio.create_task(feed.run())
    try:
        await eventually(lambda: lane.daemon.lane in plaza.lanes and feed.connected)
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with http.post(url, data=json.dumps(body)) as resp:
        return resp.status


async def test_console_actions_move_the_device_only_for_an_operator(
    lane: OpsLane, console_url: str
) -> None:
    lane_id, device = lane.daemon.lane, lane.device
    open_body = {"lane": lane_id, "op": "open", "reason": "driver lost phone", "confirm": True}
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        assert await _post(http, console_url + "api/action", open_body) == 401
        assert (
            await _post(http, console_url + "api/login", {"user": "vera", "password": "pw"}) == 200
        )
        assert await _post(http, console_url + "api/action", open_body) == 403
        assert (
            await _post(http, console_url + "api/login", {"user": "olga", "password": "pw"}) == 200
        )
        assert not device.executions and device.state == "closed", "nothing moved without a login"

        close = {"lane": lane_id, "op": "close_lane", "reason": "works", "confirm": True}
        assert await _post(http, console_url + "api/action", close) == 200
        await eventually(lambda: lane.daemon.runner.state.closed_reason is not None)
        async with http.post(console_url + "api/action", data=json.dumps(open_body)) as resp:
            assert resp.status == 200
            cmd_id = (await resp.json())["cmd_id"]
        # Nobody at the pay point: the manual passage is the command's own.
        await eventually(lambda: f"{cmd_id}/open" in device.executions)
        await eventually(lambda: device.state == "open")
        manual = [
            n for n, f in lane.notes if n == "record" and "attendant:olga" in f["record"]["flags"]
        ]
        assert manual, "the manual open is recorded with who did it"
