"""/metrics, /healthz and /readyz of a running lane, and the readiness in the retained status."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import aiohttp
from ops_kit import running_lane
from polling import eventually

from barrier.messages import LaneStatus
from lane.config import parse_config
from lane.daemon import build
from scanner.sources import PushSource
from sim.broker import Mosquitto

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


def sample(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return m[(name, tuple(sorted(labels.items())))]


async def test_metrics_scraped_while_vehicles_pass(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        assert await lane.serve("token") == "barrier_opened"
        assert await lane.serve("alipay") == "barrier_opened"
        assert await lane.serve("garbage") == "code_refused"
        m = await lane.scrape()

    assert sample(m, "lane_vehicles_total") == 3
    decisions = {k[1]: v for k, v in m.items() if k[0] == "lane_decisions_total"}
    assert decisions == {
        (("method", "token"), ("reason", "none"), ("result", "approved")): 1,
        (("method", "payment_code"), ("reason", "none"), ("result", "approved")): 1,
        (("method", "none"), ("reason", "invalid_code"), ("result", "refused")): 1,
    }
    # Two openings, each from the frame with the code to the device's ack.
    assert sample(m, "lane_code_to_open_seconds_count") == 2
    assert 0 < sample(m, "lane_code_to_open_seconds_sum") < 6
    assert sample(m, "lane_code_to_open_seconds_bucket", le="+Inf") == 2
    assert sample(m, "lane_barrier_command_rtt_seconds_count", op="open") == 2
    assert sample(m, "lane_barrier_command_rtt_seconds_count", op="close") == 2
    assert sample(m, "lane_barrier_commands_total", op="open") == 2
    assert sample(m, "lane_acquirer_request_seconds_count", operation="pay") == 1
    assert ("lane_acquirer_errors_total", (("kind", "timeout"), ("operation", "pay"))) not in m
    for link in ("barrier", "uplink"):
        assert sample(m, "lane_mqtt_connected", link=link) == 1
        assert sample(m, "lane_mqtt_reconnects_total", link=link) == 0
    assert sample(m, "lane_scanner_frames_total") >= 3
    assert sample(m, "lane_scanner_codes_total") >= 3
    assert sample(m, "lane_scanner_frame_decode_seconds", quantile="0.5") > 0
    assert sample(m, "lane_queue_disk_bytes") > 0
    assert sample(m, "lane_queue_max_bytes") == 2_000_000_000
    assert sample(m, "lane_uplink_backlog_records") >= 0
    assert sample(m, "lane_keyset_age_seconds") >= 0
    assert sample(m, "lane_barrier_state", state="closed") == 1
    assert sample(m, "lane_ready") == 1
    assert sample(m, "lane_alarms_active") == 0
    info = [k for k in m if k[0] == "lane_info"]
    assert len(info) == 1 and ("lane", lane_id) in info[0][1]
    # Bounded labels: no record, vehicle or payment id, and the lane id only in lane_info.
    for (name, labels), _ in m.items():
        for _, value in labels:
            assert not UUID.match(value), (name, labels)
            assert name == "lane_info" or lane_id not in value, (name, labels)


async def test_readyz_follows_the_barrier_and_the_status_says_the_same(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    statuses = lane_statuses
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:

        async def ready_is(code: int) -> dict[str, object] | None:
            status, text = await lane.get("/readyz")
            return json.loads(text) if status == code else None

        body = await eventually(lambda: ready_is(200))
        assert body["ok"] is True
        assert [c["name"] for c in body["checks"]] == ["camera", "broker", "barrier", "queue"]
        await eventually(lambda: statuses and statuses[-1].link.get("barrier") is True)
        assert {"camera", "broker", "barrier", "queue"} <= set(statuses[-1].link)

        lane.device.set_fault("offline")
        body = await eventually(lambda: ready_is(503))
        barrier = next(c for c in body["checks"] if c["name"] == "barrier")
        assert barrier == {"name": "barrier", "ok": False, "detail": "device is offline"}
        assert all(c["ok"] for c in body["checks"] if c["name"] != "barrier")
        await eventually(lambda: statuses[-1].link.get("barrier") is False)
        assert "barrier_offline" in statuses[-1].faults
        m = await lane.scrape()
        assert sample(m, "lane_ready") == 0
        assert sample(m, "lane_ready_check", check="barrier") == 0
        assert sample(m, "lane_barrier_state", state="offline") == 1
        assert sample(m, "lane_barrier_faults_total", fault="barrier_offline") == 1
        assert sample(m, "lane_alarm_active", alarm="barrier_offline") == 1
        # Not ready is not dead: liveness stays green.
        status, text = await lane.get("/healthz")
        assert status == 200, text

        lane.device.set_fault(None)
        await eventually(lambda: ready_is(200))
        await eventually(lambda: statuses[-1].link.get("barrier") is True)
        m = await lane.scrape()
        assert sample(m, "lane_alarm_active", alarm="barrier_offline") == 0


async def test_healthz_reports_the_loop_and_the_runner(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        await eventually(lambda: lane.daemon.ops.loop_lag_s is not None)
        status, text = await lane.get("/healthz")
        body = json.loads(text)
        assert status == 200
        assert [(c["name"], c["ok"]) for c in body["checks"]] == [
            ("event_loop", True),
            ("runner", True),
        ]
        status, _ = await lane.get("/nothing-here")
        assert status == 404


async def test_a_taken_metrics_port_does_not_stop_the_lane(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = parse_config(
            {
                "lane": {"id": lane_id, "data_dir": str(tmp_path / "lane")},
                "broker": {"port": mosquitto.port},
                "metrics": {"port": port},
                "auth": {"share_used_tokens": False},  # alone: no lane key
            }
        )
        daemon = await build(config, source=PushSource())
        try:
            await daemon.ops.start_http("127.0.0.1", port)  # logs the error, raises nothing
            assert daemon.ops.address is None
        finally:
            await daemon.ops.stop_http()
            await daemon.aclose()


async def test_healthz_is_503_once_the_runner_task_has_died(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    config = parse_config(
        {
            "lane": {"id": lane_id, "data_dir": str(tmp_path / "lane")},
            "metrics": {"port": 0},
            "auth": {"share_used_tokens": False},  # alone: no lane key
        }
    )
    daemon = await build(config, source=PushSource())

    async def crash() -> None:
        raise RuntimeError("runner bug")

    daemon.ops.runner_task = asyncio.create_task(crash())
    await asyncio.gather(daemon.ops.runner_task, return_exceptions=True)
    try:
        await daemon.ops.start_http("127.0.0.1", 0)
        assert daemon.ops.address is not None
        url = f"http://127.0.0.1:{daemon.ops.address[1]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/healthz") as resp:
                assert resp.status == 503
                body = await resp.json()
            async with http.get(url + "/readyz") as resp:
                assert resp.status == 503  # not running at all: nothing is usable
    finally:
        await daemon.ops.stop_http()
        await daemon.aclose()
    assert {"name": "runner", "ok": False, "detail": "not running"} in body["checks"]
