"""`lane sim --lane-processes` against real processes: each lane daemon a booth (sim/booth.py)
under the supervisor, the simulator talking to it over the broker only.

Two lanes serve token vehicles end to end (the codes read by each booth's own scanner, the
barrier opened, the records in the back office); the dashboard shows them and a booth's camera
view; a camera blackout and a squeezed queue quota sent over the control topic raise the lane's
own alarms and clear; a booth killed with SIGKILL shows `lane_offline`, is restarted by the
supervisor, and its lane serves again. Each booth serves its lane's /metrics and /readyz on a
port of its own, which the simulator shows; /readyz follows the lane's readiness.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_kit import browser_page
from polling import eventually
from prometheus_client.parser import text_string_to_metric_families

from lane.core.display import LANE_CLOSED
from lane.core.state import Phase
from lane.wire.codec import PayloadError, pack
from scanner.pipeline import LatestFrame
from sim.booth_wire import (
    Control,
    ControlError,
    ControlOp,
    decode_frame,
    encode_frame,
    ops_line,
    ops_url,
)
from sim.dashboard import Dashboard
from sim.harness import SimOptions, Simulator
from sim.lane import SimLane
from sim.lane_process import LANE_OFFLINE, BoothError, ProcessLane
from sim.traffic import Driver

FAST = {"speed": 4.0, "conditions": "clear", "frame_size": (640, 360), "fps": 15.0}


def token_driver(index: int, arrival_s: float = 0.0) -> Driver:
    return Driver(
        index=index, arrival_s=arrival_s, vehicle_class=1, behaviour="token", codes=("token",)
    )


def alarms(sim: Simulator, lane: SimLane) -> dict[str, str]:
    alarms: dict[str, str] = lane.snapshot(0)["alarms"]
    return alarms


async def all_ingested(sim: Simulator) -> bool:
    return await sim.settle(timeout=20)


async def booth_metrics(lane: SimLane) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a booth's /metrics, by name and labels (only `lane` of `lane_info`)."""
    async with aiohttp.ClientSession() as http, http.get(f"{lane.ops_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "lane_info":  # its mode and version are not the test's business
                labels = {"lane": labels["lane"]}
            samples[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return samples


async def readyz(lane: SimLane) -> tuple[int, dict[str, bool]]:
    """A booth's /readyz: its status and whether each check is ok."""
    async with aiohttp.ClientSession() as http, http.get(f"{lane.ops_url}/readyz") as response:
        body = await response.json()
        return response.status, {c["name"]: c["ok"] for c in body["checks"]}


async def test_two_lane_processes_serve_survive_a_kill_and_take_faults(tmp_path: Path) -> None:
    sim = Simulator(SimOptions(seed=3, lanes=2, lane_processes=True, workdir=tmp_path, **FAST))  # type: ignore[arg-type]
    await sim.start()
    try:
        lanes = sim.lanes
        assert all(isinstance(lane, ProcessLane) for lane in lanes)
        pids = {lane.child.process.pid for lane in lanes if isinstance(lane, ProcessLane)}  # type: ignore[union-attr]
        assert len(pids) == 2 and os.getpid() not in pids
        # Nothing of the lane runs here: what is served was read and decided in the booths.
        assert all(lane.daemon is None for lane in lanes)

        await sim.drive([token_driver(i, arrival_s=i * 0.5) for i in range(4)])
        for lane in lanes:
            assert lane.outcomes and all(o.passed for o in lane.outcomes), lane.lane_id
            # The lane's own frame -> barrier ack figure: the booth's scanner read the code.
            assert all(o.frame_latency_ms is not None for o in lane.outcomes)
            assert lane.records_written
        assert await all_ingested(sim)

        # The dashboard reads what the lanes publish; its camera view asks the booth.
        dashboard = Dashboard(sim)
        url = await dashboard.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}api/state") as response:
                    state = await response.json()
                async with http.get(f"{url}api/lanes/2/frame.jpg") as response:
                    assert response.status == 200
                    assert (await response.read()).startswith(b"\xff\xd8")  # a JPEG
            # Each lane tile links to its booth's own /metrics.
            async with browser_page(1600, 1000) as (page, errors):
                await page.goto(url)
                await page.wait_for_selector("[data-testid=ops] a", timeout=15_000)
                links = page.locator("[data-testid=ops] a")
                hrefs = [await links.nth(i).get_attribute("href") for i in range(2)]
                assert hrefs == [f"{lane.ops_url}/metrics" for lane in lanes]
                assert not errors, f"page errors: {errors}"
        finally:
            await dashboard.stop()
        assert [lane["passed"] for lane in state["lanes"]] == [len(ln.outcomes) for ln in lanes]
        # The phase is the booth's own, from its status (a vehicle may still be driving off).
        assert all(
            lane["phase"] in set(Phase) and lane["process"]["pid"] for lane in state["lanes"]
        )

        # Each booth serves its lane's own ops endpoints, on a port of its own, and the
        # simulator shows where (the dashboard's lane, the report).
        urls = [lane.ops_url for lane in lanes]
        assert all(urls) and len(set(urls)) == 2, urls
        assert [lane["process"]["ops"] for lane in state["lanes"]] == urls
        assert [sim.report()["lanes"][ln.lane_id]["ops_url"] for ln in lanes] == urls
        for lane in lanes:
            metrics = await booth_metrics(lane)
            assert metrics[("lane_info", (("lane", lane.lane_id),))] == 1.0
            assert metrics[("lane_vehicles_total", ())] == len(lane.outcomes)
            assert (await readyz(lane))[0] == 200

        # A fault that reaches into a lane goes over the control topic, and clears by itself;
        # the booth's /readyz says it is not ready while it lasts.
        second = lanes[1]
        await sim.faults.apply("camera_blackout", True, 2)
        await eventually(lambda: "camera_blackout" in alarms(sim, second), 10, what="blackout")
        status, checks = await readyz(second)
        assert status == 503 and not checks["camera"], checks
        assert (await readyz(lanes[0]))[0] == 200  # the other booth's lane is another lane
        await sim.faults.apply("camera_blackout", False, 2)
        await eventually(lambda: "camera_blackout" not in alarms(sim, second), 10, what="clear")
        assert (await readyz(second))[0] == 200
        await sim.faults.apply("queue_high_water", True, 2)
        await eventually(lambda: "queue_high_water" in alarms(sim, second), 10, what="squeezed")
        await sim.faults.apply("queue_high_water", False, 2)
        await eventually(lambda: "queue_high_water" not in alarms(sim, second), 10, what="given")

        first = lanes[0]
        assert isinstance(first, ProcessLane) and first.child is not None
        assert first.child.process is not None
        killed = first.child.process.pid
        os.kill(killed, signal.SIGKILL)

        def offline_view() -> dict[str, Any] | None:
            view: dict[str, Any] = first.snapshot(0)
            return view if LANE_OFFLINE in view["alarms"] else None

        view = await eventually(offline_view, 10, what="offline")
        down = view["alarms"][LANE_OFFLINE]
        assert "offline" in down or "exited" in down
        # Its display as a display shows it (and the console): not a fare the dead lane left.
        assert view["display"] == list(LANE_CLOSED.lines)
        child = first.child

        def back() -> bool:
            process = child.process
            return (
                child.restarts == 1
                and process is not None
                and process.pid != killed
                and LANE_OFFLINE not in alarms(sim, first)
            )

        await eventually(back, 30, what="restarted and up")
        assert first.ops_url == urls[0]  # the restarted booth serves where it did
        assert (await booth_metrics(first))[("lane_info", (("lane", first.lane_id),))] == 1.0
        served = len(first.outcomes)
        first.join(token_driver(100))
        await first.drained()
        assert len(first.outcomes) == served + 1 and first.outcomes[-1].passed
        assert await all_ingested(sim)
    finally:
        await sim.stop()
    assert all(
        lane.child.process.returncode is not None  # type: ignore[union-attr]
        for lane in sim.lanes
        if isinstance(lane, ProcessLane)
    )


async def test_a_booth_that_cannot_start_fails_the_start_with_its_return_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad_config(*_args: object) -> dict[str, object]:
        return {"lane": {"id": "p01/l01", "mode": "toll", "max_tries": 0}}

    monkeypatch.setattr(ProcessLane, "config_body", bad_config)
    monkeypatch.setattr(ProcessLane, "MAX_RESTARTS", 0)
    sim = Simulator(SimOptions(seed=3, lane_processes=True, workdir=tmp_path, **FAST))  # type: ignore[arg-type]
    with pytest.raises(BoothError, match=r"did not come up .*return codes so far: \[2\]"):
        await sim.start()
    await sim.stop()


@pytest.mark.parametrize(
    "control",
    [
        Control(ControlOp.SHOW, text="LANE1:abc", conditions="hard"),
        Control(ControlOp.HIDE),
        Control(ControlOp.BLACKOUT, on=True),
        Control(ControlOp.QUOTA, on=False),
        Control(ControlOp.FRAME, quality=70, hold_s=3.0),
    ],
)
def test_a_control_message_reads_back_as_sent(control: Control) -> None:
    assert Control.decode(control.encode()) == control


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"op": "jump"}', "unknown op"),
        (b'{"op": "show", "conditions": "clear"}', "non-empty 'text'"),
        (b'{"op": "show", "text": "x", "conditions": "foggy"}', "'conditions'"),
        (b'{"op": "blackout", "on": "yes"}', "boolean 'on'"),
        (b'{"op": "frame", "quality": 0, "hold_s": 1}', "'quality' within"),
        (b'{"op": "frame", "quality": 70}', "'hold_s' within"),
    ],
)
def test_a_bad_control_message_is_refused_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(ControlError, match=why):
        Control.decode(payload)


def test_a_frame_reads_back_as_sent_and_garbage_is_refused() -> None:
    frame = LatestFrame(7, b"\xff\xd8jpeg", (((1, 2), (3, 4), (5, 6), (7, 8)),))
    assert decode_frame(encode_frame(frame)) == frame
    with pytest.raises(PayloadError, match="polygons"):
        decode_frame(pack({"frame_id": 1, "polygons": [[1, 2]], "jpeg": b""}))
    with pytest.raises(PayloadError, match="frame_id"):
        decode_frame(pack({"frame_id": "1", "polygons": [], "jpeg": b""}))


def test_a_booths_ops_line_names_its_endpoint_or_none() -> None:
    assert ops_url(ops_line(("127.0.0.1", 9100))) == "http://127.0.0.1:9100"
    assert ops_url(ops_line(None)) is None  # the port could not be bound: not served
    with pytest.raises(ValueError, match="not an ops line"):
        ops_url("ready")


@pytest.mark.parametrize("gate", [True, False])
def test_a_sim_lane_config_carries_the_change_gate_option(tmp_path: Path, gate: bool) -> None:
    """bench/plaza's `--no-change-gate` reaches each booth's scanner through its lane config."""
    sim = Simulator(SimOptions(workdir=tmp_path, change_gate=gate))
    keyset = tmp_path / "keyset.json"
    config = SimLane(sim, 0, "p01/l01").config(1883, "http://127.0.0.1:1/", keyset)
    assert config.camera.change_gate is gate
