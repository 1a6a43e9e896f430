"""The dashboard of a running road (`lane sim --road 2`): the road in `/api/state`, and in a
real browser (Debian's Chromium through Playwright) the plazas along the line with their lane
tiles, vehicles on the road, and the exits' transactions. Set SIM_ROAD_SCREENSHOT=path to keep
the screenshot (docs/road-dashboard.png is made that way).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_kit import browser_page, expect, screenshot
from polling import eventually

from sim.dashboard import Dashboard
from sim.harness import SimOptions
from sim.road import RoadSimulator
from sim.road_model import Road, RoadPlan
from sim.traffic import Mix

PLAN = RoadPlan(Road(("P01", "P02"), (0.0, 4.0)), max_trip_s=480, u_turn_window_s=300)


@pytest.fixture(scope="module")
async def road_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    options = SimOptions(
        speed=30.0,
        conditions="clear",
        frame_size=(640, 360),
        fps=15.0,
        seed=4,
        workdir=tmp_path_factory.mktemp("road-dash"),
        mix=Mix(arrivals_per_hour=1200, behaviours={"token": 0.7, "alipay": 0.3}),
    )
    sim = RoadSimulator(options, PLAN)
    await sim.start()
    dashboard = Dashboard(sim, interval_s=0.2)
    await dashboard.start("127.0.0.1", 0)
    traffic = asyncio.create_task(sim.drive_forever(options.mix))
    try:
        yield dashboard.url
    finally:
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)
        await dashboard.stop()
        await sim.stop()


async def _state(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + "api/state") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def test_the_state_has_the_road_and_its_vehicles(road_url: str) -> None:
    async def on_the_road() -> dict[str, Any] | None:
        state = await _state(road_url)
        return state if state["road"]["on_road"] >= 1 else None

    state = await eventually(on_the_road, within=20, every=0.2, what="a vehicle on the road")
    assert state["mode"] == "road"
    road = state["road"]
    assert [(p["plaza"], p["km"], p["entry"], p["exit"]) for p in road["plazas"]] == [
        ("P01", 0.0, 1, 2),
        ("P02", 4.0, 3, 4),
    ]
    assert [lane["lane"] for lane in state["lanes"]] == ["P01/e1", "P01/x1", "P02/e1", "P02/x1"]
    assert sum(p["heading_here"] for p in road["plazas"]) == road["on_road"]
    assert road["legs"]["on_road"] == road["on_road"] and road["limit_s"] == 480


async def test_in_a_browser_the_road_shows_its_plazas_lanes_and_exits(
    road_url: str, tmp_path: Path
) -> None:
    async with browser_page(1600, 1100) as (page, errors):
        await page.goto(road_url)
        await page.wait_for_selector("#conn.up", timeout=15_000)
        await page.wait_for_selector("#road-panel:not([hidden])", timeout=10_000)
        assert await page.locator("#road .plaza").count() == 2
        assert await page.locator("#road .segment").inner_text() == "4.0 km"
        assert await page.locator("#road .road-lane").count() == 4
        await expect(lambda: _contains(page.locator("#road-summary"), "on the road"), "summary")
        # Vehicles leave the road at the exits: exit records show in the transactions.
        await page.wait_for_selector("#tx-body tr:has(td:text-is('exit'))", timeout=30_000)
        # A lane tile selects the lane whose camera and events the page shows.
        await page.locator('#road .road-lane[data-lane="4"]').click()
        await expect(lambda: _contains(page.locator("#camera-lane"), "P02/x1"), "P02/x1 selected")
        await screenshot(page, tmp_path / "road.png", os.environ.get("SIM_ROAD_SCREENSHOT"))
        assert not errors, f"page errors: {errors}"


async def _contains(locator: Any, text: str) -> bool:
    return text in ((await locator.text_content()) or "")
