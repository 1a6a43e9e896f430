"""WeChat Pay API v3 code payment: the wire rules (tables, WeChat Pay's published signing
example) and the adapter against the fake (real HTTP, real signatures both ways)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest

from lane.auth import netkeys
from lane.auth import wechatpay_wire as wire
from lane.auth.acquirer import AcquirerProtocolError, PaymentStatus, PayRequest
from lane.auth.authoriser import payment_id_for
from lane.auth.resolver import PaymentState
from lane.core.reread import PASSING

Keys = dict[str, Any]  # name -> conftest.KeyPair
MCHID, APPID = "1900000100", "wx8888888888888888"
MERCHANT_SERIAL, PLATFORM_SERIAL = "5157F09EFDC096DE15EBE81A47057A72", "PUB_KEY_ID_0000000001"
_codes = itertools.count(134567890123456789)


def code() -> str:
    return str(next(_codes))


# -- wire rules (pure) -------------------------------------------------------------------------


def test_request_message_matches_the_published_example() -> None:
    # WeChat Pay's 签名生成 guide: GET /v3/certificates at 1554208460 with that nonce.
    assert wire.request_message(
        "GET", "/v3/certificates", "1554208460", "593BEC0C930BF1AFEB40B4A08C8FB242", ""
    ) == ("GET\n/v3/certificates\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n")


# WeChat Pay's documentation, 带 Body 参数如何计算签名
# (pay.weixin.qq.com/doc/v3/merchant/4012365336): its test private key
# (tests/auth/data/wechatpay-doc-test-key.pem), the request and the signature.
DOC_BODY = (
    '{"appid":"wxd678efh567hg6787","mchid":"1900007291","description":"Image形象店-深圳腾大-QQ公仔",'
    '"out_trade_no":"1217752501201407033233368018",'
    '"notify_url":"https://www.weixin.qq.com/wxpay/pay.php",'
    '"amount":{"total":100,"currency":"CNY"},"payer":{"openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}}'
)
DOC_SIGNATURE = (
    "jnks4dlrPw3ZX+ozVvSK39oa0t7OMBsg83BHAwd8BRdUFiVaQNTLTvci+wURgP1OQBbKYhFGvt7iqYpDSTQkp7Uq1s"
    "ltaQKyncCyrA1g88m5bsKERQfPyT0ahSwKTYJ1CAn9QiJuSJRq1QsQs07eehbU/k9BCS51jTyc1Jpsi2H77HF9f/Bn"
    "jXAOP3/sPObg6V5Ee4EzwLox684hhuMuIwHo7D8KFk3LIHOKDcNI4It1aCXydFWNpNK+SG86VUDe5kwoDpw4Ulqfu9z"
    "8OFDGbDs9TCxEv8iqQzbpxOlEVoOe2kalSYM5kApQb3nZcxdUtoE0liJGW3RGUNE0t4v01A=="
)


def test_signature_matches_the_published_example(tmp_path: Path) -> None:
    published = Path(__file__).parent / "data" / "wechatpay-doc-test-key.pem"
    key_file = tmp_path / "apiclient_key.pem"
    shutil.copyfile(published, key_file)
    key_file.chmod(0o600)
    key = netkeys.load_private_key(key_file)
    message = wire.request_message(
        "POST",
        "/v3/pay/transactions/jsapi",
        "1554208460",
        "593BEC0C930BF1AFEB40B4A08C8FB242",
        DOC_BODY,
    )
    assert netkeys.sign(key, message.encode()) == DOC_SIGNATURE


def test_authorization_header_round_trip() -> None:
    header = wire.authorization(MCHID, MERCHANT_SERIAL, "N1", "1554208460", "c2ln")
    assert header.startswith("WECHATPAY2-SHA256-RSA2048 ")
    assert wire.parse_authorization(header) == {
        "mchid": MCHID,
        "nonce_str": "N1",
        "signature": "c2ln",
        "timestamp": "1554208460",
        "serial_no": MERCHANT_SERIAL,
    }


@pytest.mark.parametrize(
    "header",
    ["", "Bearer x", 'WECHATPAY2-SHA256-RSA2048 mchid="1"', "WECHATPAY2-SHA256-RSA2048 mchid=1"],
)
def test_bad_authorization_headers(header: str) -> None:
    with pytest.raises(ValueError, match="authorization"):
        wire.parse_authorization(header)


def test_out_trade_no_fits_wechats_32_characters() -> None:
    otn = wire.out_trade_no(payment_id_for("p07/l03", "auth-1"))
    assert len(otn) == 32 and wire.OUT_TRADE_NO.fullmatch(otn)
    with pytest.raises(ValueError, match="out_trade_no"):
        wire.out_trade_no("pay_" + "a" * 40)


@pytest.mark.parametrize("amount", [0, -1, True, 1.5])
def test_amount_must_be_positive_fen(amount: Any) -> None:
    with pytest.raises(ValueError, match="fen"):
        wire.codepay_body(wire.Merchant(MCHID, APPID, "10.0.0.7"), "a" * 32, code(), amount, "p")


C = wire.Call
RESULTS = [
    (C.PAY, 200, {"trade_state": "SUCCESS"}, PaymentStatus.SUCCEEDED, None),
    (C.PAY, 202, {"code": "USERPAYING"}, PaymentStatus.PENDING, None),
    (C.PAY, 403, {"code": "NOTENOUGH"}, PaymentStatus.DECLINED, "insufficient_funds"),
    (C.PAY, 400, {"code": "AUTH_CODE_INVALID"}, PaymentStatus.DECLINED, "code_invalid"),
    (C.PAY, 403, {"code": "RULELIMIT"}, PaymentStatus.DECLINED, "rulelimit"),
    (C.PAY, 403, {"code": "ORDERPAID"}, PaymentStatus.PENDING, None),
    (C.PAY, 403, {"code": "BANKERROR"}, PaymentStatus.PENDING, None),
    (C.PAY, 429, {"code": "FREQUENCY_LIMITED"}, PaymentStatus.DECLINED, "frequency_limited"),
    (C.PAY, 400, {"code": "SYSTEMERROR"}, PaymentStatus.PENDING, None),
    (C.PAY, 403, {"code": "ORDERREVERSED"}, PaymentStatus.REVERSED, "closed"),
    (C.QUERY, 200, {"trade_state": "USERPAYING"}, PaymentStatus.PENDING, None),
    (C.QUERY, 200, {"trade_state": "SUCCESS"}, PaymentStatus.SUCCEEDED, None),
    (C.QUERY, 200, {"trade_state": "PAYERROR"}, PaymentStatus.DECLINED, "payment_failed"),
    (C.QUERY, 200, {"trade_state": "REVOKED"}, PaymentStatus.REVERSED, "revoked"),
    (C.QUERY, 200, {"trade_state": "CLOSED"}, PaymentStatus.REVERSED, "closed"),
    (C.QUERY, 404, {"code": "ORDER_NOT_EXIST"}, PaymentStatus.NOT_FOUND, "not_found"),
    (C.REVERSE, 204, {}, PaymentStatus.REVERSED, "reversed"),
    (C.REVERSE, 200, {"recall": "N"}, PaymentStatus.REVERSED, "reversed"),
    (C.REVERSE, 404, {"code": "ORDER_NOT_EXIST"}, PaymentStatus.REVERSED, "not_found"),
]


@pytest.mark.parametrize(("call", "http", "doc", "status", "reason"), RESULTS)
def test_results(
    call: wire.Call, http: int, doc: dict[str, Any], status: PaymentStatus, reason: str | None
) -> None:
    answer = wire.result(call, http, doc, "pay_1")
    assert (answer.status, answer.reason) == (status, reason)


@pytest.mark.parametrize(
    ("call", "http", "doc"),
    [
        (C.PAY, 400, {"code": "PARAM_ERROR"}),
        (C.PAY, 401, {"code": "SIGN_ERROR"}),
        (C.REVERSE, 403, {"code": "INVALID_REQUEST"}),  # too soon: the resolver tries later
        (C.QUERY, 200, {"trade_state": "NEW_STATE"}),
        (C.QUERY, 403, {"code": "NOTENOUGH"}),
    ],
)
def test_answers_that_are_not_results(call: wire.Call, http: int, doc: dict[str, Any]) -> None:
    with pytest.raises(AcquirerProtocolError):
        wire.result(call, http, doc, "pay_1")


# -- the adapter against the fake --------------------------------------------------------------


async def test_approved_then_settled(wechat_gateway: Any, net_lane: Any) -> None:
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        await lane.pays_once(code())


async def test_declined_not_enough(wechat_gateway: Any, net_lane: Any) -> None:
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(decline_rate=1.0)
        decision = await lane.auth.authorise(lane.request(code()))
        assert (decision.approved, decision.reason) == (False, "insufficient_funds")


@pytest.mark.parametrize(
    ("http", "code", "passing"),
    [(429, "FREQUENCY_LIMITED", True), (403, "OUT_TRADE_NO_USED", True), (403, "NOTENOUGH", False)],
)
def test_a_decline_about_the_call_is_not_remembered_at_a_fare_gate(
    http: int, code: str, passing: bool
) -> None:
    """A rate limit says nothing of the payer's code: shown again, it goes out again."""
    reason = wire.result(C.PAY, http, {"code": code}, "pay_x").reason
    assert (reason in PASSING) is passing


@pytest.mark.parametrize("answer", [(403, "BANKERROR"), (400, "SYSTEMERROR")])
async def test_bank_or_system_error_on_a_charged_pay_is_queried_not_declined(
    wechat_gateway: Any, net_lane: Any, answer: tuple[int, str]
) -> None:
    """WeChat Pay says to query the order after these: this one went through."""
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.unknown_pay_answer = answer
        await lane.pays_once(code())


async def test_an_alipay_code_is_refused_by_wechat(wechat_gateway: Any, net_lane: Any) -> None:
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        decision = await lane.auth.authorise(lane.request("28" + "1" * 16))
        assert (decision.approved, decision.reason) == (False, "code_invalid")


async def test_userpaying_is_requeried_until_paid(wechat_gateway: Any, net_lane: Any) -> None:
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(pending_rate=1.0, pending_ms=80)
        # The budget only bounds the wait here (the next test is the deadline's): the queries
        # took up to 0.26 s of the default 0.4 s on a loaded machine, more in a full run.
        decision = await lane.auth.authorise(lane.request(code(), budget_s=5.0))
        assert decision.approved and decision.latency_ms >= 80


async def test_userpaying_past_the_deadline_is_reversed_no_sooner_than_allowed(
    wechat_gateway: Any, net_lane: Any
) -> None:
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(pending_rate=1.0, pending_ms=5000)
        decision = await lane.auth.authorise(lane.request(code(), budget_s=0.2))
        assert (decision.approved, decision.reason) == (False, "timeout")
        assert await lane.final(decision.payment_id) is PaymentState.REVERSED
        assert fake.early_reversals == 0  # the resolver waited for reverse_after_s
        assert lane.charged_not_reversed() == []


async def test_reversing_too_soon_is_refused_then_retried(
    wechat_gateway: Any, net_lane: Any
) -> None:
    # Without the resolver's wait (reverse_after_s=0) the network refuses, and it takes retries.
    async with (
        wechat_gateway(reverse_after_s=0.0) as (fake, client),
        net_lane(client, fake) as lane,
    ):
        fake.update_faults(late_success_rate=1.0, late_success_ms=1)
        decision = await lane.auth.authorise(lane.request(code(), budget_s=0.2))
        assert await lane.final(decision.payment_id) is PaymentState.REVERSED
        assert fake.early_reversals > 0
        assert lane.charged_not_reversed() == []


async def test_success_after_the_lane_gave_up_is_reversed(
    wechat_gateway: Any, net_lane: Any
) -> None:
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(late_success_rate=1.0, late_success_ms=1)
        decision = await lane.auth.authorise(lane.request(code(), budget_s=0.2))
        assert decision.reason == "timeout"
        assert await lane.final(decision.payment_id) is PaymentState.REVERSED
        assert lane.charged_not_reversed() == []


async def test_retry_of_a_paid_order_is_not_a_second_charge(wechat_gateway: Any) -> None:
    async with wechat_gateway() as (fake, client):
        the_code = code()
        first = await client.pay(
            PayRequest("pay_" + "b" * 32, the_code, 300, "CNY", "p07/l03"), 1.0
        )
        assert first.status is PaymentStatus.SUCCEEDED and first.acquirer_ref
        again = await client.pay(
            PayRequest("pay_" + "b" * 32, the_code, 300, "CNY", "p07/l03"), 1.0
        )
        assert again.status is PaymentStatus.PENDING  # ORDERPAID: the query tells
        assert (await client.query("pay_" + "b" * 32, 1.0)).status is PaymentStatus.SUCCEEDED
        assert len(fake.payments()) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"signer": "impostor"}, "bad signature"),
        ({"client_skew_s": 400.0}, "not within"),
    ],
)
async def test_answers_not_trusted(wechat_gateway: Any, options: Any, match: str) -> None:
    async with wechat_gateway(**options) as (_, client):
        with pytest.raises(AcquirerProtocolError, match=match):
            await client.query("pay_" + "c" * 32, 1.0)


async def test_request_we_did_not_sign_is_refused(wechat_gateway: Any) -> None:
    async with wechat_gateway(merchant="impostor") as (fake, client):
        with pytest.raises(AcquirerProtocolError, match="SIGN_ERROR"):
            await client.pay(PayRequest("pay_" + "d" * 32, code(), 300, "CNY", "p07/l03"), 1.0)
        assert fake.payments() == []


async def test_server_errors_are_outages(wechat_gateway: Any, net_lane: Any) -> None:
    async with wechat_gateway() as (fake, client), net_lane(client, fake) as lane:
        fake.update_faults(error_rate=1.0)
        down = await lane.auth.authorise(lane.request(code()))
        assert (down.approved, down.reason) == (False, "acquirer_unavailable")
        fake.update_faults(error_rate=0.0)
        assert (await lane.auth.authorise(lane.request(code()))).approved
        assert await lane.final(down.payment_id) is PaymentState.REVERSED
