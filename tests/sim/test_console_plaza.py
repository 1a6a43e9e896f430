"""A plaza of sixteen lanes at a glance, in Chromium: one tile per lane coloured by its worst
alarm (grey for an offline lane), the alarm list filtered, and a viewer who can look but not
act. The lanes are MQTT publishers of retained health and status, as real lanes are."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from browser_kit import browser_page, expect, screenshot

from barrier.health_message import AcquirerHealth, AlarmEntry, CheckEntry, LaneHealth, health_topic
from barrier.messages import LaneStatus
from lane.alarm_severity import severity_of
from lane.console.feed import ConsoleFeed
from lane.console.model import Plaza
from lane.console.server import Console
from lane.console.users import Role, User, hash_password
from lane.transport.mqtt import MqttLink
from lane.wire import topics
from sim.broker import Mosquitto

# lane number -> its active alarms; lane 16 is offline
ALARMS = {
    3: ["uplink_down"],
    5: ["keyset_stale"],
    8: ["barrier_offline", "uplink_stalled"],
    11: ["acquirer_unhealthy", "attendant_needed"],
    14: ["queue_full"],
}
OFFLINE = 16
EXPECTED = {3: "major", 5: "minor", 8: "critical", 11: "major", 14: "critical", OFFLINE: "offline"}


def lane_health(codes: list[str], now_us: int) -> LaneHealth:
    alarms = [
        AlarmEntry(c, f"{c} on this lane", severity_of(c), now_us - 60_000_000) for c in codes
    ]
    checks = [CheckEntry(n, True, "ok") for n in ("camera", "broker", "barrier", "queue")]
    return LaneHealth(
        "idle", now_us, alarms, checks, {"passed": 10}, AcquirerHealth("ok", 20, 1.0), now_us
    )


@pytest.fixture
async def sixteen(mosquitto: Mosquitto) -> AsyncIterator[tuple[str, list[str]]]:
    """A console showing sixteen lanes of a plaza of the test's own."""
    plaza_id = f"q{uuid.uuid4().hex[:5]}"
    lanes = [f"{plaza_id}/l{n:02d}" for n in range(1, 17)]
    publisher = MqttLink(mosquitto.host, mosquitto.port, f"lanes-{plaza_id}")
    plaza = Plaza(time.time())
    feed = ConsoleFeed(plaza, mosquitto.host, mosquitto.port, lanes=f"{plaza_id}/*")
    users = {"victor": User("victor", Role.VIEWER, hash_password("pw"))}
    app = web.Application()
    Console(plaza, feed, users).add_routes(app, prefix="/")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(feed.run())]
    try:
        await publisher.wait_connected(5)
        # Subscribed before the garbage below, which is not retained: a feed connecting after
        # it (a loaded machine) never saw it, and the garbage box stayed hidden.
        await feed.link.wait_connected(30)
        now_us = int(time.time() * 1e6)
        for n, lane in enumerate(lanes, 1):
            health = lane_health(ALARMS.get(n, []), now_us)
            await publisher.publish(health_topic(lane), health.encode(), retain=True)
        # Lane 1's display speaks garbage: shown on the lane, nothing else changes.
        await publisher.publish(topics.display(lanes[0]), b"\xc1 not msgpack")
        offline = LaneStatus.offline(now_us)
        await publisher.publish(topics.status(lanes[OFFLINE - 1]), offline.encode(), retain=True)
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/", lanes
    finally:
        for lane in lanes:  # no retained state left behind on the shared broker
            await publisher.publish(health_topic(lane), b"", retain=True)
        await publisher.publish(topics.status(lanes[OFFLINE - 1]), b"", retain=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


async def test_sixteen_lanes_at_a_glance_and_a_viewer_cannot_act(
    sixteen: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, lanes = sixteen
    async with browser_page(1500, 1000) as (page, errors):
        await page.goto(url)
        await page.wait_for_selector("#tile-16", timeout=15_000)
        for n in range(1, 17):
            colour = EXPECTED.get(n, "ok")
            await page.wait_for_selector(f"#tile-{n}.sev-{colour}", timeout=10_000)
        await page.wait_for_selector("#garbage-box:not([hidden]) li:has-text('display')")
        rows = page.locator("#alarm-body tr")
        assert await rows.count() == sum(len(c) for c in ALARMS.values())
        await page.select_option("#f-severity", "critical")
        await expect(lambda: _count_is(rows, 2), "two critical alarms")
        await page.select_option("#f-lane", lanes[10])
        await page.select_option("#f-severity", "")
        await expect(lambda: _count_is(rows, 2), "lane 11's two alarms")
        await page.select_option("#f-lane", "")
        keep = os.environ.get("SIM_CONSOLE_SCREENSHOTS")
        await screenshot(
            page, tmp_path / "p.png", Path(keep) / "console-16-lanes.png" if keep else None
        )
        # A viewer logs in: still no action, no acknowledgement.
        await page.fill("#login-user", "victor")
        await page.fill("#login-password", "pw")
        await page.click("#login button")
        await page.wait_for_selector("#whoami:not([hidden])", timeout=10_000)
        await page.click("#tile-8")
        await page.wait_for_selector("#lane-id:has-text('l08')")
        assert await page.locator('.actions button[data-op="open"]').is_disabled()
        assert await page.locator("#alarm-body button.ack").first.is_disabled()
        assert not errors, f"page errors: {errors}"


async def _count_is(locator: object, n: int) -> bool:
    count = await locator.count()  # type: ignore[attr-defined]
    return bool(count == n)
