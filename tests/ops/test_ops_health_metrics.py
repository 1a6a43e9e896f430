"""lane.health (pure checks) and lane.metrics (notes, mirrored counters, acquirer tracing)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from aiohttp import web

from lane import health
from lane.auth.acquirer import (
    AcquirerClient,
    AcquirerTimeout,
    AcquirerUnavailable,
    PaymentStatus,
    PayRequest,
)
from lane.core.notes import (
    BarrierOpened,
    CodeRefused,
    PaidNotPassed,
    ScanRefused,
    Tailgating,
    VehicleArrived,
)
from lane.health import Check, LivenessFacts, ReadinessFacts
from lane.metrics import LaneMetrics, Snapshot, acquirer_operation, reason_label
from lane.notification import ShellNote
from lane.notification import ShellNoteName as Shell
from scanner.pipeline import ScanStats
from sim.acquirer import running_acquirer
from sim.acquirer_faults import Faults
from sim.broker import free_port

GOOD = ReadinessFacts(
    camera_running=True,
    broker_connected=True,
    barrier_state="closed",
    queue_bytes=1000,
    queue_max_bytes=100_000,
    data_dir_writable=True,
    disk_free_bytes=10**10,
    alarms={},
)


def failing(facts: ReadinessFacts) -> dict[str, str]:
    return {c.name: c.detail for c in health.readiness(facts) if not c.ok}


def test_all_usable_is_ready() -> None:
    checks = health.readiness(GOOD)
    assert [c.name for c in checks] == list(health.CHECKS)
    assert health.all_ok(checks)
    assert health.report(checks)["ok"] is True
    assert health.as_links(checks) == dict.fromkeys(health.CHECKS, True)


@pytest.mark.parametrize(
    ("change", "check", "detail"),
    [
        ({"camera_running": False}, "camera", "scanner not running"),
        (
            {"alarms": {"camera_blackout": "camera blackout: no frames for 2.0 s"}},
            "camera",
            "no frames",
        ),
        (
            {
                "camera_running": False,  # a demo source read to its end says so in its alarm
                "alarms": {"camera_blackout": "camera reads no codes: camera source ended: ..."},
            },
            "camera",
            "camera source ended",
        ),
        ({"broker_connected": False}, "broker", "not connected"),
        ({"barrier_state": "unknown"}, "barrier", "no state reported yet"),
        ({"barrier_state": "offline"}, "barrier", "device is offline"),
        ({"barrier_state": "fault"}, "barrier", "device is fault"),
        ({"alarms": {"barrier_no_ack": "barrier does not answer"}}, "barrier", "does not answer"),
        ({"alarms": {"barrier_stuck": "did not reach open"}}, "barrier", "did not reach open"),
        ({"queue_bytes": None}, "queue", "not read yet"),
        ({"queue_bytes": 100_000}, "queue", "full (100000 of 100000 bytes)"),
        ({"alarms": {"disk_error": "record write failed"}}, "queue", "record write failed"),
        ({"data_dir_writable": False}, "queue", "not writable"),
        ({"disk_free_bytes": 1000}, "queue", "disk almost full"),
    ],
)
def test_each_unusable_part_fails_its_own_check(
    change: dict[str, Any], check: str, detail: str
) -> None:
    bad = failing(dataclasses.replace(GOOD, **change))
    assert list(bad) == [check]
    assert detail in bad[check]


@pytest.mark.parametrize(
    ("closes", "ready"),
    [(True, False), (False, True)],  # a lane that takes codes; a closed road's entry lane
)
def test_a_dark_camera_fails_readiness_only_where_it_closes_the_lane(
    closes: bool, ready: bool
) -> None:
    text = "camera reads no codes: camera blackout: no frames for 2.0 s"
    facts = dataclasses.replace(GOOD, alarms={"camera_blackout": text}, camera_closes=closes)
    camera = {c.name: c for c in health.readiness(facts)}["camera"]
    assert (camera.ok, camera.detail) == (ready, text)  # said either way
    assert health.all_ok(health.readiness(facts)) is ready


def test_liveness() -> None:
    assert health.all_ok(health.liveness(LivenessFacts(None, True)))
    assert health.all_ok(health.liveness(LivenessFacts(0.01, True)))
    late = health.liveness(LivenessFacts(7.5, True))
    assert [(c.name, c.ok) for c in late] == [("event_loop", False), ("runner", True)]
    assert "7.5 s late" in late[0].detail
    dead = health.liveness(LivenessFacts(0.0, False))
    assert [(c.name, c.ok) for c in dead] == [("event_loop", True), ("runner", False)]


@pytest.mark.parametrize(
    ("reason", "refused", "label"),
    [
        (None, False, "none"),
        ("expired", False, "expired"),
        ("replayed", False, "replayed"),
        ("already_used", False, "already_used"),  # a copy of a code a fare gate just let through
        ("insufficient_funds", False, "other"),  # an acquirer's own word: not a label value
        ("payment timed out", False, "timeout"),
        ("error: KeyError", False, "internal_error"),
        ("unreadable code", True, "unreadable_code"),
        ("unsupported code: emv", True, "unsupported_code"),
        ("no fare for class 9", True, "no_fare"),
        ("not a payment code (12 digits starting 99)", True, "invalid_code"),
        ("bad Base45: character '!' at offset 3", True, "invalid_code"),
    ],
)
def test_reason_labels_are_bounded(reason: str | None, refused: bool, label: str) -> None:
    assert reason_label(reason, refused=refused) == label


def test_acquirer_operations() -> None:
    assert acquirer_operation("POST", "/v1/payments") == "pay"
    assert acquirer_operation("GET", "/v1/payments/p1") == "query"
    assert acquirer_operation("POST", "/v1/payments/p1/reverse") == "reverse"
    # Refunds and the certificate download are no driver's pay or query.
    assert acquirer_operation("POST", "/v1/payments/p1/refunds") == "refund"
    assert acquirer_operation("POST", "/v3/refund/domestic/refunds") == "refund"
    assert acquirer_operation("GET", "/v3/refund/domestic/refunds/r1") == "refund"
    assert acquirer_operation("POST", "/gateway.do", "alipay.trade.refund") == "refund"
    assert acquirer_operation("GET", "/v3/certificates") == "other"


WALLET_CODE = "2800000000000001"  # a wallet's online code, as the simulated acquirer takes it


def value(m: LaneMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def record(method: str, result: str, flags: list[str]) -> dict[str, Any]:
    return {"record": {"method": method, "auth": {"result": result}, "flags": flags}}


def test_notes_become_counts() -> None:
    m = LaneMetrics("p01/l01", "toll")
    m.observe_note(VehicleArrived("v1", 2, False))
    m.observe_note(ShellNote(Shell.RECORD, record("token", "approved", [])))
    m.observe_note(
        ShellNote(Shell.RECORD, record("payment_code", "declined", ["deferred?", "expired"]))
    )
    m.observe_note(ShellNote(Shell.RECORD, record("bogus", "approved", [])))
    m.observe_note(CodeRefused("v1", "not a payment code"))
    m.observe_note(ScanRefused("barrier_offline"))
    m.observe_note(BarrierOpened("v1", "r", 180.0))
    m.observe_note(BarrierOpened("v2", "r", None))
    m.observe_note(
        ShellNote(Shell.ALARM, {"code": "barrier_fault", "message": "x", "active": True})
    )
    m.observe_note(ShellNote(Shell.ALARM, {"code": "barrier_fault", "active": False}))
    m.observe_note(ShellNote(Shell.ALARM, {"code": "Not A Code!", "active": True}))
    for told in ("x", "x told again"):  # a text told again is not another fault raised
        m.observe_note(
            ShellNote(Shell.ALARM, {"code": "barrier_stuck", "message": told, "active": True})
        )
    m.observe_note(PaidNotPassed("v3", "r3"))
    m.observe_note(Tailgating("u1/violation/1", ("unpaid_passage",)))
    assert value(m, "lane_vehicles_total") == 1
    assert value(m, "lane_decisions_total", method="token", result="approved", reason="none") == 1
    declined = {"method": "payment_code", "result": "declined", "reason": "expired"}
    assert value(m, "lane_decisions_total", **declined) == 1
    assert value(m, "lane_decisions_total", method="other", result="approved", reason="none") == 1
    refused = {"method": "none", "result": "refused"}
    assert value(m, "lane_decisions_total", reason="invalid_code", **refused) == 1
    assert value(m, "lane_decisions_total", reason="lane_closed", **refused) == 1
    assert value(m, "lane_code_to_open_seconds_count") == 1
    assert value(m, "lane_code_to_open_seconds_bucket", le="0.2") == 1
    assert value(m, "lane_code_to_open_seconds_bucket", le="0.15") == 0
    assert value(m, "lane_barrier_faults_total", fault="barrier_fault") == 1
    assert value(m, "lane_alarm_active", alarm="barrier_fault") == 0
    assert value(m, "lane_alarm_active", alarm="Not A Code!") is None
    assert value(m, "lane_barrier_faults_total", fault="barrier_stuck") == 1
    assert value(m, "lane_paid_not_passed_total") == 1
    assert value(m, "lane_tailgating_total") == 1


def test_barrier_round_trip_uses_the_last_send() -> None:
    now = [100.0]
    m = LaneMetrics("p01/l01", "toll", clock=lambda: now[0])
    m.barrier_sent("v1/open", "open")
    now[0] = 100.6
    m.barrier_sent("v1/open", "open")  # resent after an ack timeout
    now[0] = 100.65
    m.barrier_acked("v1/open")
    m.barrier_acked("v1/open")  # a redelivered ack counts once
    m.barrier_acked("never-sent")
    assert value(m, "lane_barrier_commands_total", op="open") == 2
    assert value(m, "lane_barrier_command_rtt_seconds_count", op="open") == 1
    assert value(m, "lane_barrier_command_rtt_seconds_sum", op="open") == pytest.approx(0.05)
    for i in range(200):  # acks that never come do not pile up
        m.barrier_sent(f"lost-{i}", "close")
    assert len(m._sent) == 64


def stats(frames: int, dropped: int, skipped: int = 0, static: int = 0) -> ScanStats:
    return ScanStats(
        frames, 0, frames - skipped, skipped, dropped, 1, 0, 0, 0, False, 4.0, None, static
    )


def test_snapshots_mirror_running_totals_and_survive_a_reset() -> None:
    m = LaneMetrics("p01/l01", "toll")
    m.update(Snapshot(scan=stats(10, 2), mqtt={"uplink": (True, 1)}, keyset_age_s=None))
    m.update(
        Snapshot(
            scan=stats(25, 3, 20, static=2),
            mqtt={"uplink": (False, 2)},
            alarms={"keyset_stale": "x"},
        )
    )
    assert value(m, "lane_scanner_static_codes") == 2  # the lane ignores two codes it reads
    assert value(m, "lane_scanner_frames_total") == 25
    assert value(m, "lane_scanner_frames_skipped_total") == 20
    assert value(m, "lane_scanner_frames_dropped_total") == 3
    assert value(m, "lane_scanner_frame_decode_seconds", quantile="0.5") == 0.004
    assert math.isnan(value(m, "lane_scanner_frame_decode_seconds", quantile="0.95") or 0)
    assert value(m, "lane_mqtt_connected", link="uplink") == 0
    assert value(m, "lane_mqtt_reconnects_total", link="uplink") == 2
    assert value(m, "lane_alarm_active", alarm="keyset_stale") == 1
    assert math.isnan(value(m, "lane_keyset_age_seconds") or 0)
    m.update(Snapshot(scan=stats(4, 0), readiness=[Check("queue", False, "full")]))  # restarted
    assert value(m, "lane_scanner_frames_total") == 29
    assert value(m, "lane_alarm_active", alarm="keyset_stale") == 0
    assert value(m, "lane_ready") == 0
    assert value(m, "lane_ready_check", check="queue") == 0


def test_two_lanes_in_one_process_keep_their_own_figures() -> None:
    a, b = LaneMetrics("p01/l01", "toll"), LaneMetrics("p01/l02", "toll")
    a.observe_note(VehicleArrived("v1", 1, False))
    assert value(a, "lane_vehicles_total") == 1
    assert value(b, "lane_vehicles_total") == 0
    assert b"p01/l02" in b.render() and b"p01/l01" not in b.render()


async def test_acquirer_requests_are_timed_and_failures_counted() -> None:
    async def pay(r: web.Request) -> web.Response:
        paid = {"payment_id": (await r.json())["payment_id"], "status": "SUCCEEDED"}
        return web.json_response(paid)

    async def broken(_r: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=503)

    async def unknown(_r: web.Request) -> web.Response:
        return web.json_response({"error": "not_found"}, status=404)

    app = web.Application()
    app.router.add_post("/v1/payments", pay)
    app.router.add_post("/v1/payments/{pid}/reverse", broken)
    app.router.add_get("/v1/payments/{pid}", unknown)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    m = LaneMetrics("p01/l01", "toll")
    base = f"http://127.0.0.1:{port}"
    try:
        async with AcquirerClient(base, observe=m.acquirer_request) as client:
            await client.pay(PayRequest("p1", WALLET_CODE, 450, "CNY", "p01/l01"), 1.0)
            with pytest.raises(AcquirerUnavailable):
                await client.reverse("p1", 1.0)
            assert (await client.query("p1", 1.0)).status is PaymentStatus.NOT_FOUND
        async with AcquirerClient(
            f"http://127.0.0.1:{free_port()}", observe=m.acquirer_request
        ) as client:
            with pytest.raises(AcquirerUnavailable):
                await client.pay(PayRequest("p2", WALLET_CODE, 450, "CNY", "p01/l01"), 1.0)
    finally:
        await runner.cleanup()
    assert value(m, "lane_acquirer_request_seconds_count", operation="pay") == 1
    assert value(m, "lane_acquirer_request_seconds_count", operation="reverse") == 1
    assert value(m, "lane_acquirer_errors_total", operation="reverse", kind="http_5xx") == 1
    assert value(m, "lane_acquirer_errors_total", operation="query", kind="http_4xx") is None
    assert value(m, "lane_acquirer_errors_total", operation="pay", kind="connection") == 1


async def test_an_answer_stalled_or_cut_mid_body_is_counted_as_failed_not_timed() -> None:
    """Headers at once, then the body slowly or cut short: the metrics see the failure the
    lane acts on, not an answer as quick as its headers."""
    m = LaneMetrics("p01/l01", "toll")
    async with (
        running_acquirer(Faults(slow_body_rate=1.0)) as acquirer,
        AcquirerClient(acquirer.url, observe=m.acquirer_request) as client,
    ):
        with pytest.raises(AcquirerTimeout):
            await client.pay(PayRequest("p1", WALLET_CODE, 450, "CNY", "p01/l01"), 0.3)
        acquirer.update_faults(slow_body_rate=0.0, cut_body_rate=1.0)
        with pytest.raises(AcquirerUnavailable):
            await client.query("p1", 1.0)
        acquirer.update_faults(cut_body_rate=0.0)
        assert (await client.query("p1", 1.0)).status is PaymentStatus.SUCCEEDED
    assert value(m, "lane_acquirer_request_seconds_count", operation="pay") is None
    assert value(m, "lane_acquirer_errors_total", operation="pay", kind="timeout") == 1
    assert value(m, "lane_acquirer_errors_total", operation="query", kind="connection") == 1
    assert value(m, "lane_acquirer_request_seconds_count", operation="query") == 1
