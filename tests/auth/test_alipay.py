"""Alipay face-to-face barcode payment: the wire rules (tables, properties, Alipay's published
signing example) and the adapter against the fake gateway (real HTTP, real signatures)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.auth import alipay_wire as wire
from lane.auth import netkeys
from lane.auth.acquirer import AcquirerProtocolError, PaymentStatus, PayRequest
from lane.auth.alipay import AlipayClient
from lane.auth.resolver import PaymentState
from lane.metrics import LaneMetrics
from sim.acquirer_faults import Outage
from sim.alipay_fake import AlipayFake

Keys = dict[str, Any]  # name -> conftest.KeyPair
_codes = itertools.count(2800_0000_0000_0000_01)


def code() -> str:
    return str(next(_codes))


# -- wire rules (pure) -------------------------------------------------------------------------


def test_signing_content_matches_alipays_published_example() -> None:
    # The 待签名样例 of Alipay's "自行实现签名" page: sorted, k=v&..., values not encoded.
    biz = (
        '{"button":[{"actionParam":"ZFB_HFCZ","actionType":"out","name":"话费充值"},'
        '{"name":"查询","subButton":[{"actionParam":"ZFB_YECX","actionType":"out","name":"余额查询"},'
        '{"actionParam":"ZFB_LLCX","actionType":"out","name":"流量查询"},'
        '{"actionParam":"ZFB_HFCX","actionType":"out","name":"话费查询"}]},'
        '{"actionParam":"http://m.alipay.com","actionType":"link","name":"最新优惠"}]}'
    )
    params = {
        "method": "alipay.mobile.public.menu.add",
        "charset": "GBK",
        "sign_type": "RSA2",
        "timestamp": "2014-07-24 03:07:50",
        "biz_content": biz,
        "sign": "ignored",
        "app_id": "2014072300007148",
        "version": "1.0",
        "notify_url": "",  # empty values are left out
    }
    assert wire.signing_content(params) == (
        f"app_id=2014072300007148&biz_content={biz}&charset=GBK"
        "&method=alipay.mobile.public.menu.add&sign_type=RSA2&timestamp=2014-07-24 03:07:50"
        "&version=1.0"
    )


@pytest.mark.parametrize(
    ("minor", "text"),
    [(0, "0.00"), (1, "0.01"), (450, "4.50"), (100, "1.00"), (1234567, "12345.67")],
)
def test_amounts_in_yuan(minor: int, text: str) -> None:
    assert wire.yuan(minor) == text
    assert wire.minor_from_yuan(text) == minor


@pytest.mark.parametrize("bad", ["4.5", "4", "04.50", "-1.00", "4.500", "1e3", " 4.50", "4,50"])
def test_amount_text_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="yuan"):
        wire.minor_from_yuan(bad)


@given(st.integers(min_value=0, max_value=10**13))
def test_yuan_round_trip_is_exact(minor: int) -> None:
    assert wire.minor_from_yuan(wire.yuan(minor)) == minor


def test_beijing_time() -> None:
    assert wire.beijing_time(0) == "1970-01-01 08:00:00"
    assert wire.unix_from_beijing("1970-01-01 08:00:01") == 1


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=8) | st.integers(), max_size=4))
def test_response_text_is_cut_out_exactly(extra: dict[str, Any]) -> None:
    inner = json.dumps({"code": "10000", **extra, "tricky": '}{"sign":"x"}'}, ensure_ascii=False)
    raw = f'{{ "alipay_trade_query_response" : {inner} ,\n "sign":"c2ln"}}'
    signed = wire.split_response(raw, wire.Method.QUERY)
    assert signed.text == inner
    assert signed.sign == "c2ln"


@pytest.mark.parametrize(
    "raw", ["", "[]", '{"other_response": {}}', '{"alipay_trade_query_response": {} x', "{"]
)
def test_unusable_answers(raw: str) -> None:
    with pytest.raises(AcquirerProtocolError):
        wire.split_response(raw, wire.Method.QUERY)


M = wire.Method
RESULTS = [
    (M.PAY, {"code": "10000", "trade_no": "t1"}, PaymentStatus.SUCCEEDED, None),
    (M.PAY, {"code": "10003"}, PaymentStatus.PENDING, None),
    (M.PAY, {"code": "20000", "sub_code": "isp.unknow-error"}, PaymentStatus.PENDING, None),
    (
        M.PAY,
        {"code": "40004", "sub_code": "ACQ.BUYER_BALANCE_NOT_ENOUGH"},
        PaymentStatus.DECLINED,
        "insufficient_funds",
    ),
    (M.PAY, {"code": "40004", "sub_code": "ACQ.RISK_X"}, PaymentStatus.DECLINED, "risk_x"),
    (M.PAY, {"code": "40004", "sub_code": wire.PAID_BEFORE}, PaymentStatus.PENDING, None),
    (M.PAY, {"code": "40004", "sub_code": "ACQ.SYSTEM_ERROR"}, PaymentStatus.PENDING, None),
    (M.PAY, {"code": "40004", "sub_code": wire.CLOSED}, PaymentStatus.REVERSED, "closed"),
    (M.QUERY, {"code": "10000", "trade_status": "WAIT_BUYER_PAY"}, PaymentStatus.PENDING, None),
    (M.QUERY, {"code": "10000", "trade_status": "TRADE_SUCCESS"}, PaymentStatus.SUCCEEDED, None),
    (M.QUERY, {"code": "10000", "trade_status": "TRADE_FINISHED"}, PaymentStatus.SUCCEEDED, None),
    (M.QUERY, {"code": "10000", "trade_status": "TRADE_CLOSED"}, PaymentStatus.REVERSED, "closed"),
    (M.QUERY, {"code": "40004", "sub_code": wire.NOT_EXIST}, PaymentStatus.NOT_FOUND, "not_found"),
    (M.CANCEL, {"code": "10000", "action": "refund"}, PaymentStatus.REVERSED, "reversed"),
    (M.CANCEL, {"code": "40004", "sub_code": wire.NOT_EXIST}, PaymentStatus.REVERSED, "not_found"),
]


@pytest.mark.parametrize(("method", "body", "status", "reason"), RESULTS)
def test_result_codes(
    method: wire.Method, body: dict[str, Any], status: PaymentStatus, reason: str | None
) -> None:
    answer = wire.result(method, body, "pay_1")
    assert (answer.status, answer.reason) == (status, reason)


@pytest.mark.parametrize(
    ("method", "body"),
    [
        (M.PAY, {"code": "40002", "sub_code": "isv.invalid-signature"}),
        (M.QUERY, {"code": "20000"}),  # unknown: ask again
        (M.QUERY, {"code": "10000", "trade_status": "SOMETHING_NEW"}),
        (M.CANCEL, {"code": "10000", "retry_flag": "Y"}),
        (M.PAY, {}),
    ],
)
def test_answers_that_are_not_results(method: wire.Method, body: dict[str, Any]) -> None:
    with pytest.raises(AcquirerProtocolError):
        wire.result(method, body, "pay_1")


# -- the adapter against the fake gateway ------------------------------------------------------


async def test_approved_then_settled(alipay_gateway: Any, net_lane: Any) -> None:
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        req = lane.request(code())
        decision = await lane.auth.authorise(req)
        assert (decision.approved, decision.reason) == (True, "approved")
        assert decision.acquirer_ref is not None
        await lane.auth.settle(req.auth_id)
        assert await lane.final(decision.payment_id) is PaymentState.SETTLED
        row = fake.payment(decision.payment_id or "")
        assert row is not None and row.request is not None
        assert row.request["amount_minor"] == 450  # "4.50" on the wire, exact


async def test_declined_with_the_sub_codes_reason(alipay_gateway: Any, net_lane: Any) -> None:
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(decline_rate=1.0)
        decision = await lane.auth.authorise(lane.request(code()))
        assert (decision.approved, decision.reason) == (False, "insufficient_funds")


async def test_system_error_on_a_charged_pay_is_queried_not_declined(
    alipay_gateway: Any, net_lane: Any
) -> None:
    """40004 ACQ.SYSTEM_ERROR is Alipay's "outcome unknown, query": this one went through."""
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.unknown_pay_answer = "ACQ.SYSTEM_ERROR"
        await lane.pays_once(code())


async def test_used_code_is_declined(alipay_gateway: Any, net_lane: Any) -> None:
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        same = code()
        assert (await lane.auth.authorise(lane.request(same))).approved
        again = await lane.auth.authorise(lane.request(same))
        assert (again.approved, again.reason) == (False, "code_invalid")


async def test_waiting_for_the_user_polls_until_paid(alipay_gateway: Any, net_lane: Any) -> None:
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(pending_rate=1.0, pending_ms=80)  # 10003, then TRADE_SUCCESS
        decision = await lane.auth.authorise(lane.request(code()))
        assert decision.approved and decision.latency_ms >= 80


async def test_waiting_past_the_deadline_is_cancelled(alipay_gateway: Any, net_lane: Any) -> None:
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(pending_rate=1.0, pending_ms=600)
        decision = await lane.auth.authorise(lane.request(code(), budget_s=0.3))
        assert (decision.approved, decision.reason) == (False, "timeout")
        assert await lane.final(decision.payment_id) is PaymentState.REVERSED
        payment = fake.payment(decision.payment_id or "")
        assert payment is not None and payment.status == "REVERSED"  # alipay.trade.cancel
        assert lane.charged_not_reversed() == []


async def test_success_after_the_lane_gave_up_is_cancelled(
    alipay_gateway: Any, net_lane: Any
) -> None:
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(late_success_rate=1.0, late_success_ms=1)
        decision = await lane.auth.authorise(lane.request(code(), budget_s=0.2))
        assert decision.reason == "timeout"
        assert await lane.final(decision.payment_id) is PaymentState.REVERSED
        assert lane.charged_not_reversed() == []


async def test_retry_of_a_paid_order_is_not_a_second_charge(alipay_gateway: Any) -> None:
    async with alipay_gateway() as (fake, client):
        the_code = code()
        first = await client.pay(PayRequest("pay_retry1", the_code, 450, "CNY", "p07/l03"), 1.0)
        assert first.status is PaymentStatus.SUCCEEDED
        again = await client.pay(PayRequest("pay_retry1", the_code, 450, "CNY", "p07/l03"), 1.0)
        assert again.status is PaymentStatus.PENDING  # ACQ.TRADE_HAS_SUCCESS: query tells
        assert (await client.query("pay_retry1", 1.0)).status is PaymentStatus.SUCCEEDED
        assert len(fake.payments()) == 1


async def test_answer_signed_by_someone_else_is_not_trusted(
    alipay_gateway: Any, net_lane: Any
) -> None:
    async with alipay_gateway(signer="impostor") as (_, client):
        with pytest.raises(AcquirerProtocolError, match="signature"):
            await client.pay(PayRequest("pay_forged1", code(), 450, "CNY", "p07/l03"), 1.0)


async def test_gateway_refuses_a_request_we_did_not_sign(alipay_gateway: Any) -> None:
    async with alipay_gateway(merchant="impostor") as (fake, client):
        with pytest.raises(AcquirerProtocolError, match=r"40002 isv\.invalid-signature"):
            await client.query("pay_x", 1.0)
        assert fake.payments() == []


async def test_outage_then_recovery(alipay_gateway: Any, net_lane: Any) -> None:
    async with alipay_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.set_faults(fake.faults.merged({"outages": [{"mode": "503", "duration_s": None}]}))
        down = await lane.auth.authorise(lane.request(code()))
        assert (down.approved, down.reason) == (False, "acquirer_unavailable")
        fake.update_faults(outages=(Outage("503", 0, 0),))
        up = await lane.auth.authorise(lane.request(code()))
        assert up.approved
        assert await lane.final(down.payment_id) is PaymentState.REVERSED  # voided


async def test_currency_other_than_cny_is_refused(alipay_gateway: Any) -> None:
    async with alipay_gateway() as (_, client):
        with pytest.raises(ValueError, match="CNY"):
            await client.pay(PayRequest("pay_eur", code(), 450, "EUR", "p07/l03"), 1.0)


def test_signatures_verify_only_with_the_right_key(network_keys: Keys) -> None:
    sig = netkeys.sign(network_keys["merchant"].private, b"abc")
    assert netkeys.verify(network_keys["merchant"].public, b"abc", sig)
    assert not netkeys.verify(network_keys["merchant"].public, b"abd", sig)
    assert not netkeys.verify(network_keys["alipay"].public, b"abc", sig)
    assert not netkeys.verify(network_keys["merchant"].public, b"abc", "not base64!")


async def test_each_alipay_call_is_measured_as_what_it_is(network_keys: Keys) -> None:
    # Every Alipay call is a POST to /gateway.do: the `method` parameter names the operation.
    metrics = LaneMetrics("p07/l03", "toll")
    fake = AlipayFake(
        app_id="2021000000000001",
        merchant_key=network_keys["merchant"].public,
        alipay_key=network_keys["alipay"].private,
    )
    await fake.start()
    try:
        async with AlipayClient(
            fake.gateway_url,
            "2021000000000001",
            network_keys["merchant"].private,
            network_keys["alipay"].public,
            observe=metrics.acquirer_request,
        ) as client:
            await client.pay(PayRequest("pay_m1", code(), 450, "CNY", "p07/l03"), 1.0)
            await client.query("pay_m1", 1.0)
            await client.reverse("pay_m1", 1.0)
    finally:
        await fake.stop()
    for operation in ("pay", "query", "reverse"):
        count = metrics.registry.get_sample_value(
            "lane_acquirer_request_seconds_count", {"operation": operation}
        )
        assert count == 1, operation
