"""Alipay face-to-face barcode payment behind the lane's `Acquirer` port (docs/acquirer.md).

pay = `alipay.trade.pay` (scene bar_code, the driver's code as auth_code), query =
`alipay.trade.query`, reverse = `alipay.trade.cancel`, all by out_trade_no = our payment id, so
every retry is the same order. Every request is signed with the merchant's RSA2 key; every
answer the lane acts on must carry a valid signature by Alipay's public key, or it is an
`AcquirerProtocolError` (the payment then goes to the resolver: query, cancel).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth import alipay_wire as wire
from lane.auth import netkeys
from lane.auth.acquirer import (
    AcquirerProtocolError,
    AcquirerResult,
    HttpClient,
    OneNetwork,
    PayRequest,
    RefundAnswer,
    RefundRequest,
    RequestObserver,
    ReverseRule,
)

log = logging.getLogger("lane.auth.alipay")


def out_trade_no(payment_id: str) -> str:
    """Alipay takes up to 64 letters, digits and underscores: our payment id as it is."""
    if not wire.OUT_TRADE_NO.fullmatch(payment_id):
        raise ValueError(f"payment id {payment_id!r} cannot be an Alipay out_trade_no")
    return payment_id


class AlipayClient(HttpClient, OneNetwork):
    """One merchant app on one Alipay gateway. Pass a shared `session` or let it own one."""

    network = "alipay"

    def __init__(
        self,
        gateway_url: str,
        app_id: str,
        private_key: rsa.RSAPrivateKey,
        alipay_public_key: rsa.RSAPublicKey,
        session: aiohttp.ClientSession | None = None,
        *,
        wall: Callable[[], float] = time.time,
        observe: RequestObserver | None = None,
    ) -> None:
        super().__init__(session, observe)
        self._url = gateway_url
        self._app_id = app_id
        self._key = private_key
        self._alipay_key = alipay_public_key
        self._wall = wall

    def reverse_rule(self, payment_id: str) -> ReverseRule:
        # A trade still waiting for the buyer is cancelled at once: the driver has gone.
        return ReverseRule(min_age_s=0.0, pending_grace_s=0.0)

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult:
        if request.currency != "CNY":
            raise ValueError(f"Alipay face-to-face payments are in CNY, not {request.currency}")
        pid = request.payment_id
        biz = wire.pay_biz(out_trade_no(pid), request.code, request.amount_minor, request.lane)
        return await self._call(wire.Method.PAY, biz, pid, timeout_s)

    async def query(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        biz = {"out_trade_no": out_trade_no(payment_id)}
        return await self._call(wire.Method.QUERY, biz, payment_id, timeout_s)

    async def reverse(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        biz = {"out_trade_no": out_trade_no(payment_id)}
        return await self._call(wire.Method.CANCEL, biz, payment_id, timeout_s)

    async def refund(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        otn = out_trade_no(request.payment_id)
        biz = wire.refund_biz(otn, request.refund_id, request.amount_minor)
        return wire.refund_result(await self._refund_call(wire.Method.REFUND, biz, timeout_s))

    async def refund_status(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        biz = {"out_trade_no": out_trade_no(request.payment_id),
               "out_request_no": request.refund_id}  # fmt: skip
        body = await self._refund_call(wire.Method.REFUND_QUERY, biz, timeout_s)
        return wire.refund_query_result(body, request.refund_id)

    async def _refund_call(
        self, method: wire.Method, biz: dict[str, Any], timeout_s: float
    ) -> dict[str, object]:
        body = await self._signed_call(method, biz, timeout_s)
        if body.get("out_trade_no") not in (None, biz["out_trade_no"]):
            raise AcquirerProtocolError(f"{method}: answer for order {body.get('out_trade_no')!r}")
        return body

    async def bill_url(self, bill_date: str, timeout_s: float) -> str:
        """Where the day's trade bill (a zip of CSV) can be downloaded; bill_date YYYY-MM-DD."""
        biz = {"bill_type": "trade", "bill_date": bill_date}
        body = await self._signed_call(wire.Method.BILL_URL, biz, timeout_s)
        url = body.get("bill_download_url")
        if body.get("code") != wire.Code.SUCCESS or not isinstance(url, str):
            raise AcquirerProtocolError(
                f"bill for {bill_date}: {body.get('code')} {body.get('sub_code', '')}", 200
            )
        return url

    async def bill(self, url: str, timeout_s: float, max_bytes: int) -> bytes:
        """The bill zip at `url` (`bill_url`'s, unsigned: its content is checked as it is
        parsed), whole within `timeout_s` (AcquirerTimeout, a stalled body included)."""
        answer = await self._send("GET", url, "GET Alipay bill", timeout_s, max_bytes)
        if answer.status != 200:
            raise AcquirerProtocolError(f"GET Alipay bill: HTTP {answer.status}", answer.status)
        return answer.body

    async def _call(
        self, method: wire.Method, biz: dict[str, str], payment_id: str, timeout_s: float
    ) -> AcquirerResult:
        body = await self._signed_call(method, biz, timeout_s)
        answer = wire.result(method, body, payment_id)
        if body.get("out_trade_no") not in (None, biz["out_trade_no"]):
            raise AcquirerProtocolError(
                f"{method}: answer for order {body.get('out_trade_no')!r}", 200
            )
        return answer

    async def _signed_call(
        self, method: wire.Method, biz: dict[str, Any], timeout_s: float
    ) -> dict[str, object]:
        params = wire.request_params(self._app_id, method, biz, self._wall())
        params["sign"] = netkeys.sign(self._key, wire.signing_content(params).encode())
        # As Alipay's own SDKs send them: the common parameters in the URL, biz_content in the
        # form body. The signature covers all of them wherever they travel.
        common = {k: v for k, v in params.items() if k != "biz_content"}
        form = {"biz_content": params["biz_content"]}
        answer = await self._send(
            "POST", self._url, str(method), timeout_s, params=common, data=form
        )
        if answer.status != 200:
            raise AcquirerProtocolError(f"{method}: HTTP {answer.status}", answer.status)
        try:
            text = answer.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AcquirerProtocolError(f"{method}: answer is not UTF-8", 200) from exc
        signed = wire.split_response(text, method)
        if signed.sign is None or not netkeys.verify(
            self._alipay_key, signed.text.encode(), signed.sign
        ):
            log.error(
                "alipay answer not signed by Alipay",
                extra={"method": str(method), "code": signed.body.get("code")},
            )
            raise AcquirerProtocolError(
                f"{method}: answer without a valid Alipay signature"
                f" (code {signed.body.get('code')} {signed.body.get('sub_code', '')})",
                200,
            )
        return signed.body
