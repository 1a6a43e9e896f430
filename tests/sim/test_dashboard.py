"""The dashboard against a running simulator: its HTTP API, its event stream, and (when Chromium
and Playwright are installed) a real browser that watches vehicles pass and clicks a fault.

One simulator serves the whole module (speed 20, small clear frames); the browser test runs
last because it leaves a barrier fault behind. Set SIM_DASHBOARD_SCREENSHOT=path to keep the
browser's screenshot (docs/dashboard.png is made that way).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_kit import browser_page, expect, screenshot
from polling import eventually

from sim.dashboard import Dashboard
from sim.harness import SimOptions, Simulator
from sim.traffic import Mix


class Running:
    def __init__(self, sim: Simulator, dashboard: Dashboard, http: aiohttp.ClientSession) -> None:
        self.sim, self.dashboard, self.http = sim, dashboard, http
        self.url = dashboard.url

    async def state(self) -> dict[str, Any]:
        async with self.http.get(self.url + "api/state") as resp:
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data

    async def post_fault(self, body: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url + "api/faults", data=json.dumps(body)) as resp:
            return resp.status, await resp.json()

    async def until(
        self,
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - polls a remote state, no awaitable to bound
    ) -> dict[str, Any]:
        async def matching() -> dict[str, Any] | None:
            state = await self.state()
            return state if check(state) else None

        found: dict[str, Any] = await eventually(
            matching, within=timeout, every=0.1, what="the dashboard state"
        )
        return found


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    options = SimOptions(
        speed=20.0,
        conditions="clear",
        frame_size=(640, 360),
        fps=20.0,
        seed=2,
        workdir=tmp_path_factory.mktemp("dash"),
        mix=Mix(arrivals_per_hour=1000, behaviours={"token": 0.7, "emv": 0.3}),
    )
    sim = Simulator(options)
    await sim.start()
    dashboard = Dashboard(sim, interval_s=0.2)
    await dashboard.start("127.0.0.1", 0)
    traffic = asyncio.create_task(sim.drive_forever(options.mix))
    http = aiohttp.ClientSession()
    try:
        yield Running(sim, dashboard, http)
    finally:
        await http.close()
        traffic.cancel()
        await asyncio.gather(traffic, return_exceptions=True)
        await dashboard.stop()
        await sim.stop()


async def test_the_state_shows_lanes_uplink_and_transactions(running: Running) -> None:
    state = await running.until(lambda s: len(s["lanes"][0]["transactions"]) >= 1)
    lane = state["lanes"][0]
    assert lane["lane"] == "p01/l01"
    assert lane["phase"] in {
        "idle",
        "vehicle_present",
        "authorising",
        "persisting",
        "opening",
        "open",
        "closing",
    }
    tx = lane["transactions"][0]
    assert {"amount_minor", "method", "result", "auth_ms", "open_ms"} <= set(tx)
    assert state["backoffice"]["online"] is True
    assert lane["uplink"]["link_up"] is True
    assert state["plaza"]["histogram"] and "recent_vph" in state["plaza"]["throughput"]


async def test_the_event_stream_sends_state(running: Running) -> None:
    async with running.http.get(running.url + "api/events") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        event = None
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "state":
                assert json.loads(line[6:])["lanes"][0]["lane"] == "p01/l01"
                break


async def test_the_camera_frame_comes_with_its_code_outlines(running: Running) -> None:
    async with running.http.get(running.url + "api/lanes/1/frame.jpg") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert (await resp.read())[:2] == b"\xff\xd8"
        assert resp.headers["X-Frame-Size"] == "640x360"
        assert isinstance(json.loads(resp.headers["X-Polygons"]), list)
    async with running.http.get(running.url + "api/lanes/9/frame.jpg") as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"fault": "barier_stuck"}, "unknown fault 'barier_stuck'"),
        ({"fault": "barrier_stuck", "lane": 5}, "lane 5 does not exist"),
        (
            {"fault": "acquirer_declines", "params": {"rate": 7}},
            "rate must be a number within 0..1",
        ),
        ({"fault": "code_burst", "on": False}, "one-shot"),
        ({"fault": "camera_blackout", "on": "yes"}, "on must be true or false"),
        ({"fault": "camera_blackout", "when": 3}, "unknown field(s): when"),
        (["camera_blackout"], "expected {"),
    ],
)
async def test_bad_fault_requests_are_refused_with_a_reason(
    running: Running, body: Any, message: str
) -> None:
    status, data = await running.post_fault(body)
    assert status == 400
    assert message in data["error"]


async def test_a_back_office_cut_piles_records_up_and_they_drain_after(running: Running) -> None:
    status, data = await running.post_fault({"fault": "backoffice_offline", "on": True})
    assert status == 200 and data["done"] == ["backoffice_offline on"]
    before = (await running.state())["lanes"][0]["records_ingested"]
    cut = await running.until(lambda s: s["lanes"][0]["uplink"].get("backlog", 0) >= 2)
    assert cut["backoffice"]["online"] is False
    assert cut["lanes"][0]["records_ingested"] == before, "nothing reaches a cut-off back office"
    assert any(f["name"] == "backoffice_offline" for f in cut["faults"])
    status, _ = await running.post_fault({"fault": "backoffice_offline", "on": False})
    assert status == 200
    drained = await running.until(
        lambda s: (
            s["lanes"][0]["uplink"].get("backlog") == 0
            and s["lanes"][0]["records_ingested"] >= s["lanes"][0]["records_written"] - 1
        ),
        timeout=40.0,
    )
    assert drained["lanes"][0]["records_ingested"] > before


async def test_a_camera_blackout_raises_the_lanes_alarm(running: Running) -> None:
    status, _ = await running.post_fault({"fault": "camera_blackout", "on": True, "lane": 1})
    assert status == 200
    dark = await running.until(lambda s: "camera_blackout" in s["lanes"][0]["alarms"], timeout=15.0)
    assert dark["lanes"][0]["camera"]["blackout"] is True
    await running.post_fault({"fault": "camera_blackout", "on": False, "lane": 1})
    await running.until(lambda s: "camera_blackout" not in s["lanes"][0]["alarms"], timeout=15.0)


async def test_a_burst_of_bad_codes_is_refused(running: Running) -> None:
    before = (await running.state())["lanes"][0]["counts"]
    status, data = await running.post_fault(
        {"fault": "code_burst", "params": {"count": 2, "kind": "forged"}}
    )
    assert status == 200 and data["done"] == ["code_burst on at p01/l01"]
    after = await running.until(
        lambda s: s["lanes"][0]["counts"]["declined"] >= before["declined"] + 2, timeout=30.0
    )
    assert after["lanes"][0]["counts"]["opened"] >= before["opened"]


@pytest.mark.parametrize(
    ("fault", "says", "rate"),
    [
        ("acquirer_slow_body", "answers stall 100% (a byte every 1000 ms)", "slow_body_rate"),
        ("acquirer_cut_body", "answers cut 100%", "cut_body_rate"),
    ],
)
async def test_in_a_browser_the_acquirer_body_faults_have_their_buttons(
    running: Running, fault: str, says: str, rate: str
) -> None:
    """Beside the other acquirer faults: a click sets it on every payment server, the
    acquirer's line says so, a second click takes it off."""
    async with browser_page(1600, 1000) as (page, errors):
        await page.goto(running.url)
        await page.wait_for_selector("#conn.up", timeout=15_000)
        group = page.locator("#fault-buttons > *")
        names = [await b.get_attribute("data-fault") for b in await group.all()]
        assert names[names.index("acquirer_declines") + 1 :][:2] == [
            "acquirer_slow_body",
            "acquirer_cut_body",
        ], names
        button = page.locator(f'button[data-fault="{fault}"]')
        acquirer = page.locator("#acquirer")
        await button.click()
        await expect(lambda: _has_class(button, "active"), "the button shown active")
        await expect(lambda: _text_has(acquirer, says), "the acquirer's line says so")
        assert all(server.faults.to_map()[rate] == 1.0 for server in running.sim.payment_servers())
        await button.click()
        await expect(lambda: _text_is(acquirer, "healthy, instant"), "the acquirer healthy")
        assert not await _has_class(button, "active")
        assert all(server.faults.to_map()[rate] == 0.0 for server in running.sim.payment_servers())
        assert not errors, f"page errors: {errors}"


async def test_in_a_browser_the_lanes_uplink_goes_down_alone(running: Running) -> None:
    """Its button beside the back-office cut: lane 1's uplink shows down, its `uplink_down`
    alarm comes after its grace (real seconds) while its barrier is untouched, and a second
    click brings the link back and clears the alarm."""
    async with browser_page(1600, 1000) as (page, errors):
        await page.goto(running.url)
        await page.wait_for_selector("#conn.up", timeout=15_000)
        group = page.locator("#fault-buttons > *")
        names = [await b.get_attribute("data-fault") for b in await group.all()]
        assert names[names.index("backoffice_offline") + 1] == "uplink_down", names
        button = page.locator('button[data-fault="uplink_down"]')
        link = page.locator("#link-1")
        await button.click()
        await expect(lambda: _text_is(link, "down"), "lane 1's uplink down", 15.0)
        await expect(lambda: _has_class(button, "active"), "the button shown active")
        await page.wait_for_selector('#alarms li[data-alarm="uplink_down"]', timeout=30_000)
        assert await page.locator('#alarms li[data-alarm="broker_down"]').count() == 0
        assert await page.locator("#phase-1").text_content() != "fault"  # the barrier link is up
        await button.click()
        await expect(lambda: _text_is(link, "up"), "lane 1's uplink up again", 30.0)
        await page.wait_for_selector(
            '#alarms li[data-alarm="uplink_down"]', state="detached", timeout=30_000
        )
        assert not errors, f"page errors: {errors}"


async def test_in_a_browser_vehicles_pass_and_a_barrier_fault_shows(
    running: Running, tmp_path: Path
) -> None:
    async with browser_page(1600, 1000) as (page, errors):
        await page.goto(running.url)
        await page.wait_for_selector("#conn.up", timeout=15_000)
        # Vehicles pass: transaction rows appear, approved, with their latency.
        await page.wait_for_selector("#tx-body tr td.approved", timeout=20_000)
        await page.wait_for_selector("#frame[src^='blob:']", state="attached", timeout=15_000)
        phase = page.locator("#phase-1")
        assert await phase.text_content() != "fault"
        # The back office cut: the lane's MQTT link is up, but its records get no acks ("no
        # acks"), and after the simulator's stall limit (60 simulated s: 3 s at speed 20) the
        # lane's uplink_stalled alarm says so.
        link = page.locator("#link-1")
        await running.post_fault({"fault": "backoffice_offline", "on": True})
        await expect(lambda: _text_is(link, "STALLED"), "link stalled", 20.0)
        await running.post_fault({"fault": "backoffice_offline", "on": False})
        await expect(lambda: _text_is(link, "up"), "link up again", 30.0)
        # The operator takes the barrier offline: the lane goes to FAULT and says why.
        button = page.locator('button[data-fault="barrier_offline"]')
        await button.click()
        await expect(lambda: _text_is(phase, "fault"), "phase fault")
        await page.wait_for_selector('#alarms li[data-alarm="barrier_offline"]', timeout=15_000)
        await expect(lambda: _has_class(button, "active"), "the button shown active")
        assert "barrier_offline on at p01/l01" in await page.locator("#toast").inner_text()
        keep = os.environ.get("SIM_DASHBOARD_SCREENSHOT")
        await screenshot(page, tmp_path / "dashboard.png", keep)
        # Back online: the fault clears.
        await button.click()
        await expect(lambda: _text_is_not(phase, "fault"), "the lane out of fault", 20.0)
        assert not errors, f"page errors: {errors}"


async def _text_is(locator: Any, text: str) -> bool:
    return bool(await locator.text_content() == text)


async def _text_has(locator: Any, text: str) -> bool:
    return text in ((await locator.text_content()) or "")


async def _text_is_not(locator: Any, text: str) -> bool:
    return bool(await locator.text_content() != text)


async def _has_class(locator: Any, name: str) -> bool:
    return name in ((await locator.get_attribute("class")) or "").split()
