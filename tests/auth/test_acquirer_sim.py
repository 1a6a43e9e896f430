"""The simulated acquirer and the acquirer client, against each other over real HTTP."""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from polling import ManualClock, eventually
from port_kit import refuses_connections

from lane.auth.acquirer import (
    AcquirerClient,
    AcquirerProtocolError,
    AcquirerResult,
    AcquirerTimeout,
    AcquirerUnavailable,
    PaymentStatus,
    PayRequest,
)
from sim.acquirer import AcquirerServer, running_acquirer
from sim.acquirer_faults import Faults, FaultsError, Outage
from sim.codes import emv_cpm

_codes = itertools.count(2800_0000_0000_0000)


def wallet_code() -> str:
    return str(next(_codes))


@pytest.fixture
async def acquirer() -> AsyncIterator[AcquirerServer]:
    async with running_acquirer(seed=7) as server:
        yield server


@pytest.fixture
async def client(acquirer: AcquirerServer) -> AsyncIterator[AcquirerClient]:
    async with AcquirerClient(acquirer.url) as c:
        yield c


async def pay(
    client: AcquirerClient, pid: str, code: str | None = None, amount: int = 450
) -> AcquirerResult:
    return await client.pay(PayRequest(pid, code or wallet_code(), amount, "CNY", "p01/l01"), 1.0)


async def test_pay_succeeds_and_query_agrees(
    acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    result = await pay(client, "pid-ok")
    assert result.status is PaymentStatus.SUCCEEDED
    assert result.acquirer_ref
    assert (await client.query("pid-ok", 1.0)).status is PaymentStatus.SUCCEEDED
    [row] = acquirer.payments()
    assert row["charged"] and not row["reversed"] and row["amount_minor"] == 450


async def test_decline_carries_reason(acquirer: AcquirerServer, client: AcquirerClient) -> None:
    acquirer.update_faults(decline_rate=1.0)
    result = await pay(client, "pid-declined")
    assert result.status is PaymentStatus.DECLINED
    assert result.reason == "insufficient_funds"
    assert not acquirer.payments()[0]["charged"]


async def test_pay_is_idempotent_by_payment_id(
    acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    code = wallet_code()
    first = await pay(client, "pid-idem", code)
    again = await pay(client, "pid-idem", code)
    assert again == first
    assert len(acquirer.payments()) == 1
    with pytest.raises(AcquirerProtocolError) as err:
        await pay(client, "pid-idem", code, amount=999)
    assert err.value.http_status == 409


async def test_a_code_pays_once(client: AcquirerClient) -> None:
    code = wallet_code()
    assert (await pay(client, "pid-a", code)).status is PaymentStatus.SUCCEEDED
    second = await pay(client, "pid-b", code)
    assert (second.status, second.reason) == (PaymentStatus.DECLINED, "code_used")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount_minor", 4.5),
        ("amount_minor", 450.0),
        ("amount_minor", "450"),
        ("amount_minor", True),
        ("amount_minor", -1),
        ("code", "hello"),
        ("code", "123"),
        ("currency", "cny"),
        ("payment_id", "has/slash"),
    ],
)
async def test_bad_requests_get_400_with_json_error(
    acquirer: AcquirerServer, field: str, value: object
) -> None:
    body = {
        "payment_id": "pid-bad",
        "code": wallet_code(),
        "amount_minor": 450,
        "currency": "CNY",
        "lane": "p01/l01",
        field: value,
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(acquirer.url + "/v1/payments", json=body) as resp,
    ):
        assert resp.status == 400
        doc = await resp.json()
    assert doc["error"] == "bad_request" and doc["detail"]
    assert acquirer.payments() == []


async def test_garbage_body_gets_400(acquirer: AcquirerServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(acquirer.url + "/v1/payments", data=b"\xff{not json") as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"] == "bad_request"


async def test_client_never_sends_float_money(client: AcquirerClient) -> None:
    with pytest.raises(ValueError, match="minor units"):
        await client.pay(PayRequest("pid-f", wallet_code(), 4.5, "CNY", "l"), 1.0)  # type: ignore[arg-type]


async def test_emv_payload_is_accepted(client: AcquirerClient) -> None:
    result = await client.pay(
        PayRequest("pid-emv", emv_cpm("4761739001010010", 1, bytes(8)), 300, "EUR", "l"), 1.0
    )
    assert result.status is PaymentStatus.SUCCEEDED


async def test_pending_turns_succeeded_later() -> None:
    clock = ManualClock()
    async with (
        running_acquirer(Faults(pending_rate=1.0, pending_ms=60), seed=7, clock=clock) as acq,
        AcquirerClient(acq.url) as client,
    ):
        assert (await pay(client, "pid-p")).status is PaymentStatus.PENDING
        clock.advance(0.059)
        assert (await client.query("pid-p", 1.0)).status is PaymentStatus.PENDING
        clock.advance(0.002)
        assert (await client.query("pid-p", 1.0)).status is PaymentStatus.SUCCEEDED


async def test_reverse_refunds_and_voids(acquirer: AcquirerServer, client: AcquirerClient) -> None:
    await pay(client, "pid-r")
    reversed_ = await client.reverse("pid-r", 1.0)
    assert reversed_.status is PaymentStatus.REVERSED
    assert await client.reverse("pid-r", 1.0) == reversed_  # idempotent
    summary = (await admin_get(acquirer, "/admin/payments"))["summary"]
    assert summary["charged_not_reversed"] == [] and summary["net_charged_minor"] == {}
    # A reversal of an unknown id voids it: a pay arriving afterwards charges nothing.
    assert (await client.query("pid-void", 1.0)).status is PaymentStatus.NOT_FOUND
    assert (await client.reverse("pid-void", 1.0)).status is PaymentStatus.REVERSED
    assert (await pay(client, "pid-void")).status is PaymentStatus.REVERSED
    assert not acquirer.payment("pid-void").charged  # type: ignore[union-attr]


async def test_injected_5xx_is_unavailable(
    acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    acquirer.update_faults(error_rate=1.0)
    with pytest.raises(AcquirerUnavailable) as err:
        await pay(client, "pid-5xx")
    assert err.value.http_status == 500
    assert acquirer.payments() == []


async def test_outage_503_and_refused(acquirer: AcquirerServer, client: AcquirerClient) -> None:
    await pay(client, "pid-warm")  # leaves a keep-alive connection that must be dropped too
    acquirer.update_faults(outages=(Outage("503"),))
    with pytest.raises(AcquirerUnavailable) as err:
        await client.query("pid-warm", 1.0)
    assert err.value.http_status == 503
    await admin_post(acquirer, {"outages": [{"mode": "refuse"}]})
    await eventually(lambda: refuses_connections(acquirer.url), what="listener closed")
    for _ in range(2):  # first the old connection is dropped, then a new one is refused
        with pytest.raises(AcquirerUnavailable):
            await client.query("pid-warm", 1.0)
    async with aiohttp.ClientSession() as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fresh.get(acquirer.url + "/v1/payments/pid-warm")
    assert (await admin_post(acquirer, {"outages": []}))["outages"] == []
    await eventually(lambda: listening(acquirer.url), what="listener open again")
    assert (await client.query("pid-warm", 1.0)).status is PaymentStatus.SUCCEEDED


async def listening(url: str) -> bool:
    return not await refuses_connections(url)


async def refused(client: AcquirerClient, pid: str) -> bool:
    try:
        await pay(client, pid)
    except AcquirerUnavailable:
        return True
    return False


async def test_outage_window_ends_by_itself() -> None:
    clock = ManualClock()
    async with (
        running_acquirer(seed=7, clock=clock) as acquirer,
        AcquirerClient(acquirer.url) as client,
    ):
        acquirer.update_faults(outages=(Outage("refuse", start_s=0.0, duration_s=20.0),))
        await eventually(lambda: refused(client, "pid-w"), what="the outage")
        clock.advance(10.0)
        acquirer.update_faults(latency_ms=1)  # other faults change: the window keeps its clock
        assert await refused(client, "pid-w")
        clock.advance(10.0)  # the window's end, counted from when the outage was set
        acquirer.update_faults(latency_ms=2)  # wakes the supervisor, which reads the clock
        answer = await eventually(lambda: _paid(client, "pid-w"), what="the outage's end")
        assert answer.status is PaymentStatus.SUCCEEDED


async def _paid(client: AcquirerClient, pid: str) -> AcquirerResult | None:
    try:
        return await pay(client, pid)
    except AcquirerUnavailable:
        return None


async def test_hang_never_answers_and_records_nothing(
    acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    acquirer.update_faults(hang_rate=1.0)
    with pytest.raises(AcquirerTimeout):
        await client.pay(PayRequest("pid-h", wallet_code(), 100, "CNY", "l"), 0.05)
    assert (await client.query("pid-h", 1.0)).status is PaymentStatus.NOT_FOUND


async def test_success_after_the_client_gave_up(
    acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    acquirer.update_faults(late_success_rate=1.0, late_success_ms=1)
    with pytest.raises(AcquirerTimeout):
        await client.pay(PayRequest("pid-late", wallet_code(), 100, "CNY", "l"), 0.05)

    async def settled() -> AcquirerResult | None:
        answer = await client.query("pid-late", 1.0)
        return None if answer.status is PaymentStatus.PENDING else answer

    answer = await eventually(settled, what="the late success")
    assert answer.status is PaymentStatus.SUCCEEDED
    assert acquirer.payment("pid-late").charged  # type: ignore[union-attr]


async def test_latency_is_applied(acquirer: AcquirerServer, client: AcquirerClient) -> None:
    acquirer.update_faults(latency_ms=80)
    with pytest.raises(AcquirerTimeout):
        await pay_with_timeout(client, "pid-slow", 0.03)


async def pay_with_timeout(client: AcquirerClient, pid: str, timeout_s: float) -> None:
    await client.pay(PayRequest(pid, wallet_code(), 100, "CNY", "l"), timeout_s)


async def test_admin_faults_are_validated_and_merged(acquirer: AcquirerServer) -> None:
    doc = await admin_post(acquirer, {"decline_rate": 0.25, "latency_ms": 5})
    assert (doc["decline_rate"], doc["latency_ms"]) == (0.25, 5.0)
    doc = await admin_post(acquirer, {"pending_rate": 0.5})
    assert (doc["decline_rate"], doc["pending_rate"]) == (0.25, 0.5)
    for bad in ({"decline_rate": 2}, {"nonsense": 1}, {"outages": [{"mode": "x"}]}, [1]):
        async with (
            aiohttp.ClientSession() as session,
            session.post(acquirer.admin_url + "/admin/faults", json=bad) as resp,
        ):
            assert resp.status == 400
            assert (await resp.json())["error"] == "bad_faults"
    assert acquirer.faults.decline_rate == 0.25


def test_fault_settings_are_checked() -> None:
    with pytest.raises(FaultsError):
        Faults(error_rate=-0.1)
    with pytest.raises(FaultsError):
        Faults(latency_median_ms=50)
    with pytest.raises(FaultsError):
        Faults(latency_median_ms=50, latency_p99_ms=10)


def test_lognormal_latency_matches_median_and_p99() -> None:
    faults = Faults(latency_median_ms=200, latency_p99_ms=1200)
    rng = random.Random(3)
    samples = sorted(faults.latency_s(rng) * 1000 for _ in range(20_000))
    assert statistics.median(samples) == pytest.approx(200, rel=0.05)
    assert samples[int(0.99 * len(samples))] == pytest.approx(1200, rel=0.1)
    assert Faults(latency_ms=30).latency_s(rng) == 0.03


# -- answers the client must refuse (a server outside the simulator) ------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b'["SUCCEEDED"]', "not an object"),
        (b'{"payment_id": "pid-x", "status": "MAYBE"}', "unknown status"),
        (b'{"payment_id": "other", "status": "SUCCEEDED"}', "is for payment"),
        (b'{"payment_id": "pid-x", "status": "SUCCEEDED", "acquirer_ref": 5}', "acquirer_ref"),
        (b'{"payment_id": "pid-x", "status": "SUCCEEDED", "amount_minor": 4.5}', "integer"),
        (b"{" + b" " * 100_000 + b"}", "larger than"),
    ],
)
async def test_bad_answers_are_protocol_errors(body: bytes, match: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/payments", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with AcquirerClient(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(AcquirerProtocolError, match=match):
                await pay(client, "pid-x")
    finally:
        await runner.cleanup()


async def test_a_404_that_is_not_the_apis_is_no_answer() -> None:
    runner = web.AppRunner(web.Application(), access_log=None)  # no routes: plain 404s
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with AcquirerClient(f"http://127.0.0.1:{port}/wrong") as client:
            with pytest.raises(AcquirerProtocolError) as err:
                await client.query("pid-x", 1.0)
            assert err.value.http_status == 404
    finally:
        await runner.cleanup()


async def test_connection_refused_is_unavailable() -> None:
    async with running_acquirer() as server:
        url = server.url
    async with AcquirerClient(url) as client:
        with pytest.raises(AcquirerUnavailable):
            await pay(client, "pid-gone")


# -- helpers ------------------------------------------------------------------------------


async def admin_get(acquirer: AcquirerServer, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(acquirer.admin_url + path) as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


async def admin_post(acquirer: AcquirerServer, changes: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(acquirer.admin_url + "/admin/faults", json=changes) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]
