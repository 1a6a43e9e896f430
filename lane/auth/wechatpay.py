"""WeChat Pay API v3 code payment behind the lane's `Acquirer` port (docs/acquirer.md).

pay = `POST /v3/pay/transactions/codepay`, query = `GET .../out-trade-no/{no}?mchid=`, reverse =
`POST .../out-trade-no/{no}/reverse`; out_trade_no is our payment id without `pay_`, so every
retry is the same order. USERPAYING (the buyer confirms on the phone) is PENDING: the
authoriser re-queries until its deadline. Every answer the lane acts on must be signed by a
platform key the lane trusts (`lane.auth.wechatpay_trust`: the fixed platform public key, or the
platform certificates, learning a new one from WeChat Pay within the call's budget) and be
fresh, or it is an `AcquirerProtocolError`. WeChat Pay asks that an order is not reversed
sooner than some seconds after it was placed: `reverse_rule` tells the resolver so.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth import netkeys
from lane.auth import wechatpay_wire as wire
from lane.auth.acquirer import (
    MAX_BODY_BYTES,
    AcquirerProtocolError,
    AcquirerResult,
    HttpAnswer,
    HttpClient,
    OneNetwork,
    PayRequest,
    RefundAnswer,
    RefundRefused,
    RefundRequest,
    RefundState,
    RequestObserver,
    ReverseRule,
)
from lane.auth.wechatpay_certs import CERTIFICATES_PATH
from lane.auth.wechatpay_trust import CertificateUnansweredError, PlatformTrust

log = logging.getLogger("lane.auth.wechatpay")

# WeChat Pay's documentation: call reverse no sooner than 15 s after the order was placed. The
# resolver counts from the intent, which precedes the order by up to one pay call (the budget).
DOCUMENTED_REVERSE_DELAY_S = 15.0


class WeChatPayClient(HttpClient, OneNetwork):
    """One merchant (mchid, appid) on one API v3 endpoint."""

    network = "wechatpay"

    def __init__(
        self,
        base_url: str,
        *,
        mchid: str,
        appid: str,
        serial_no: str,
        private_key: rsa.RSAPrivateKey,
        platform: PlatformTrust,
        session: aiohttp.ClientSession | None = None,
        reverse_after_s: float = DOCUMENTED_REVERSE_DELAY_S + 3.0,
        device_ip: str = "127.0.0.1",
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        observe: RequestObserver | None = None,
    ) -> None:
        super().__init__(session, observe)
        self._base = base_url.rstrip("/")
        self._merchant = wire.Merchant(mchid, appid, device_ip)
        self._serial = serial_no
        self._key = private_key
        self.platform = platform
        self._reverse_after_s = reverse_after_s
        self._wall = wall
        self._monotonic = monotonic

    def reverse_rule(self, payment_id: str) -> ReverseRule:
        return ReverseRule(min_age_s=self._reverse_after_s, pending_grace_s=0.0)

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult:
        if request.currency != "CNY":
            raise ValueError(f"WeChat Pay code payments are in CNY, not {request.currency}")
        pid = request.payment_id
        otn = wire.out_trade_no(pid)
        body = wire.codepay_body(
            self._merchant, otn, request.code, request.amount_minor, request.lane
        )
        return await self._call(wire.Call.PAY, "POST", wire.CODEPAY_PATH, body, pid, timeout_s)

    async def query(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        path = wire.query_path(wire.out_trade_no(payment_id), self._merchant.mchid)
        return await self._call(wire.Call.QUERY, "GET", path, None, payment_id, timeout_s)

    async def reverse(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        path = wire.reverse_path(wire.out_trade_no(payment_id))
        body = {"appid": self._merchant.appid, "mchid": self._merchant.mchid}
        return await self._call(wire.Call.REVERSE, "POST", path, body, payment_id, timeout_s)

    async def refund(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        body = wire.refund_body(wire.out_trade_no(request.payment_id), request.refund_id,
                                request.amount_minor, request.total_minor)  # fmt: skip
        status, doc = await self.signed_call("POST", wire.REFUND_PATH, body, timeout_s)
        return wire.refund_result(status, doc, request.refund_id)

    async def refund_status(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        path = wire.refund_path(request.refund_id)
        status, doc = await self.signed_call("GET", path, None, timeout_s)
        try:
            return wire.refund_result(status, doc, request.refund_id)
        except RefundRefused as exc:
            if exc.reason == "resource_not_exists":  # never taken under this number
                return RefundAnswer(RefundState.UNKNOWN, "RESOURCE_NOT_EXISTS")
            raise

    async def signed_call(
        self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float
    ) -> tuple[int, dict[str, Any]]:
        """One signed request (e.g. GET the trade bill's download URL), its answer verified
        within the same budget: the HTTP status and the answer's JSON."""
        deadline = self._monotonic() + timeout_s
        answer = await self.request(method, path, body, timeout_s)
        return answer.status, await self._verified(answer, f"{method} {path}", deadline)

    async def download_certificates(self, timeout_s: float) -> HttpAnswer:
        """`GET /v3/certificates`, unverified: the platform trust checks it its own way."""
        return await self.request("GET", CERTIFICATES_PATH, None, timeout_s)

    async def _call(  # noqa: PLR0917 - one request, described field by field
        self,
        call: wire.Call,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        payment_id: str,
        timeout_s: float,
    ) -> AcquirerResult:
        status, doc = await self.signed_call(method, path, body, timeout_s)
        result = wire.result(call, status, doc, payment_id)
        otn = doc.get("out_trade_no")
        if otn is not None and otn != wire.out_trade_no(payment_id):
            raise AcquirerProtocolError(f"wechatpay {call}: order {otn!r}", status)
        return result

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        timeout_s: float,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> HttpAnswer:
        """One signed request; the answer is not verified yet (5xx, transport errors raise)."""
        text = "" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        timestamp, nonce = str(int(self._wall())), secrets.token_hex(16).upper()
        message = wire.request_message(method, path, timestamp, nonce, text)
        signature = netkeys.sign(self._key, message.encode())
        headers = {
            "Authorization": wire.authorization(
                self._merchant.mchid, self._serial, nonce, timestamp, signature
            ),
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "lane",
        }
        data = text.encode() if body is not None else None
        what = f"{method} {path}"
        url = self._base + path
        return await self._send(method, url, what, timeout_s, max_bytes, data=data, headers=headers)

    async def _verified(self, answer: HttpAnswer, what: str, deadline: float) -> dict[str, Any]:
        raw, status = answer.body, answer.status
        problem = wire.answer_problem(answer.headers, raw, self.platform.key_for, self._wall())
        unanswered = None
        if problem is not None and problem.kind is wire.Untrusted.UNKNOWN_KEY:
            # A rotation: learn the new certificate within what is left of the budget.
            left = deadline - self._monotonic()
            unanswered = await self.platform.learn(problem.serial, self.download_certificates, left)
            problem = wire.answer_problem(answer.headers, raw, self.platform.key_for, self._wall())
        if problem is not None:
            log.error("wechatpay answer not trusted: %s", problem.detail, extra={"call": what})
            message = f"{what}: HTTP {status}: {problem.detail}"
            if unanswered is not None and problem.kind is wire.Untrusted.UNKNOWN_KEY:
                raise CertificateUnansweredError(message, status, unanswered)
            raise AcquirerProtocolError(message, status)
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AcquirerProtocolError(f"{what}: answer is not JSON", status) from exc
        if not isinstance(doc, dict):
            raise AcquirerProtocolError(f"{what}: answer is not a JSON object", status)
        return doc
