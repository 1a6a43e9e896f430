"""The console's HTTP API in-process, with its broker away: what it refuses and why."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from polling import ManualClock

from barrier.health_message import AcquirerHealth, AlarmEntry, LaneHealth
from lane.console.feed import ConsoleFeed
from lane.console.model import SILENT_AFTER_S, Plaza
from lane.console.server import Console
from lane.console.users import Role, User, hash_password
from sim.broker import free_port

LANE = "p07/l03"


@pytest.fixture
async def console() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """A console whose broker is not there (nothing listens on its port), one lane known."""
    now = time.time()
    plaza = Plaza(now)
    alarm = AlarmEntry("camera_blackout", "dark", "major", int(now * 1e6))
    health = LaneHealth("idle", int(now * 1e6), [alarm], [], {}, AcquirerHealth("idle", 0), 1)
    plaza.apply(f"lane/{LANE}/health", health.encode(), now, time.monotonic())
    feed = ConsoleFeed(plaza, "127.0.0.1", free_port())  # never run: the broker is away
    users = {"olga": User("olga", Role.OPERATOR, hash_password("pw"))}
    app = web.Application()
    Console(plaza, feed, users).add_routes(app, prefix="/console")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/console", http
    await runner.cleanup()


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body)
    async with http.post(url, data=data) as resp:
        return resp.status, await resp.json()


async def test_the_page_is_served_under_its_prefix(
    console: tuple[str, aiohttp.ClientSession],
) -> None:
    base, http = console
    async with http.get(base) as resp:  # the redirect to base/ is followed
        assert resp.status == 200 and str(resp.url).endswith("/console/")
        assert "Plaza console" in await resp.text()
    async with http.get(base + "/static/console.js") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not JSON"),
        (["olga", "pw"], 400, "JSON object"),
        ({"user": "olga"}, 400, "expected"),
        ({"user": "olga", "password": "wrong"}, 401, "wrong password"),
        ({"user": "nobody", "password": "pw"}, 401, "unknown user"),
    ],
)
async def test_bad_logins_are_refused_with_a_reason(
    console: tuple[str, aiohttp.ClientSession], body: Any, status: int, message: str
) -> None:
    base, http = console
    got, answer = await _post(http, base + "/api/login", body)
    assert got == status and message in answer["error"]


async def test_with_the_broker_away_an_action_is_refused_and_nothing_is_sent(
    console: tuple[str, aiohttp.ClientSession],
) -> None:
    base, http = console
    async with http.get(base + "/api/state") as resp:
        state = await resp.json()
    assert state["broker"] is False and state["lanes"][0]["lane"] == LANE
    assert (await _post(http, base + "/api/login", {"user": "olga", "password": "pw"}))[0] == 200
    body = {"lane": LANE, "op": "ack_alarm", "alarm": "camera_blackout", "confirm": True}
    status, answer = await _post(http, base + "/api/action", body)
    assert status == 503 and "nothing was sent" in answer["error"]


async def test_after_logout_the_session_acts_no_more(
    console: tuple[str, aiohttp.ClientSession],
) -> None:
    base, http = console
    assert (await _post(http, base + "/api/login", {"user": "olga", "password": "pw"}))[0] == 200
    assert (await _post(http, base + "/api/logout", {}))[0] == 200
    body = {"lane": LANE, "op": "close_lane", "confirm": True}
    status, answer = await _post(http, base + "/api/action", body)
    assert status == 401 and "log in" in answer["error"]


def test_the_console_judges_silence_on_its_monotonic_clock() -> None:
    wall, mono = ManualClock(time.time()), ManualClock(100.0)
    plaza = Plaza(wall())
    feed = ConsoleFeed(plaza, "127.0.0.1", free_port(), wall=wall, monotonic=mono)
    console = Console(plaza, feed, {}, wall=wall, monotonic=mono)
    health = LaneHealth("idle", int(wall() * 1e6), [], [], {}, AcquirerHealth("idle", 0), 1)
    plaza.apply(f"lane/{LANE}/health", health.encode(), wall(), mono())
    wall.advance(-3600.0)  # the wall clock stepped back; the lane has stopped publishing
    mono.advance(SILENT_AFTER_S + 1)
    assert console.snapshot()["lanes"][0]["tile"] == "silent"
