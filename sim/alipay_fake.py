"""A protocol-faithful fake of Alipay's OpenAPI gateway for face-to-face barcode payment.

`POST /gateway.do` with form parameters: `alipay.trade.pay` (scene bar_code), `.query`,
`.cancel` and `alipay.data.dataservice.bill.downloadurl.query`; the bill itself (a zip of the
day's trade CSV, GBK) from `GET /bills/{date}.zip`. The merchant's RSA2 signature is checked
(40002 isv.invalid-signature otherwise) and every answer is signed with the fake's Alipay key.
The book of payments, single-use codes, voids and every fault of `sim.acquirer` are shared: this
is an `AcquirerServer` that speaks Alipay instead of our API (`/admin/...` as there).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth import alipay_wire as wire
from lane.auth import netkeys
from scanner.payload import PaymentCodePayload, classify
from sim.acquirer import AcquirerServer, ConflictError, StoppingError
from sim.acquirer_ledger import SimPayment
from sim.network_bills import BillRow, alipay_bill_zip

# Our acquirer's decline reasons as Alipay's sub_codes.
SUB_CODES = {
    "insufficient_funds": "ACQ.BUYER_BALANCE_NOT_ENOUGH",
    "code_used": "ACQ.PAYMENT_AUTH_CODE_INVALID",
}
QUERY_STATUS = {
    "PENDING": "WAIT_BUYER_PAY",
    "SUCCEEDED": "TRADE_SUCCESS",
    "DECLINED": "TRADE_CLOSED",
    "REVERSED": "TRADE_CLOSED",
}


class AlipayFake(AcquirerServer):
    """Alipay's gateway at `{url}/gateway.do`; `alipay_key` signs, `merchant_key` is checked."""

    def __init__(
        self,
        *,
        app_id: str,
        merchant_key: rsa.RSAPublicKey,
        alipay_key: rsa.RSAPrivateKey,
        wall: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._app_id = app_id
        self._merchant_key = merchant_key
        self._alipay_key = alipay_key
        self._wall = wall
        self._placed: dict[str, float] = {}  # out_trade_no -> wall time the order was placed
        # The 40004 sub_code a pay is answered with once its charge went through (None: the
        # true answer): Alipay's "outcome unknown, query the order" (ACQ.SYSTEM_ERROR).
        self.unknown_pay_answer: str | None = None

    @property
    def gateway_url(self) -> str:
        return f"{self.url}/gateway.do"

    def _api_routes(self, app: web.Application) -> None:
        app.router.add_post("/gateway.do", self._gateway)
        app.router.add_get("/bills/{date}.zip", self._bill)

    async def _gateway(self, request: web.Request) -> web.Response:
        # Parameters come in the URL, the form body, or both (Alipay's SDKs put the common
        # ones in the URL); a name given twice is refused rather than guessed at.
        posted = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if set(posted) & set(request.query):
            return self._answer("error_response", _failure("40002", "isv.duplicate-parameter"))
        form = {**request.query, **posted}
        try:
            method = wire.Method(form.get("method", ""))
        except ValueError:
            return self._answer("error_response", _failure("40001", "isv.missing-method"))
        problem = self._check_request(form)
        if problem is not None:
            return self._answer(method.response_key, problem, signed=False)
        try:
            biz = json.loads(form.get("biz_content", ""))
            if not isinstance(biz, dict):
                raise ValueError("biz_content is not an object")
        except ValueError:
            return self._answer(method.response_key, _failure("40002", "isv.invalid-parameter"))
        if (refused := await self._gate(request)) is not None:
            return refused
        if method is wire.Method.PAY:
            body = await self._pay_trade(biz)
        elif method is wire.Method.REFUND:
            await asyncio.sleep(self._faults.latency_s(self._rng))
            body = self._refund_trade(biz)
        elif method is wire.Method.REFUND_QUERY:
            body = self._refund_query(biz)
        elif method is wire.Method.BILL_URL:
            date = str(biz.get("bill_date", ""))
            body = {**_ok(), "bill_download_url": f"{self.url}/bills/{date}.zip"}
        else:
            await asyncio.sleep(self._faults.latency_s(self._rng))
            body = self._order(method, str(biz.get("out_trade_no", "")))
        return self._answer(method.response_key, body)

    def _check_request(self, form: dict[str, str]) -> dict[str, Any] | None:
        for name in ("app_id", "method", "charset", "sign_type", "timestamp", "version", "sign"):
            if not form.get(name):
                return _failure("40001", f"isv.missing-{name.replace('_', '-')}")
        if form["app_id"] != self._app_id:
            return _failure("40002", "isv.invalid-app-id")
        if form["sign_type"] != "RSA2":
            return _failure("40002", "isv.invalid-signature-type")
        content = wire.signing_content(form).encode()
        if not netkeys.verify(self._merchant_key, content, form["sign"]):
            return _failure("40002", "isv.invalid-signature")
        return None

    async def _pay_trade(self, biz: dict[str, Any]) -> dict[str, Any]:
        otn, code = str(biz.get("out_trade_no", "")), biz.get("auth_code")
        if biz.get("scene") != "bar_code" or not wire.OUT_TRADE_NO.fullmatch(otn):
            return _failure("40002", "isv.invalid-parameter")
        payload = classify(code) if isinstance(code, str) else None
        if not isinstance(payload, PaymentCodePayload) or payload.wallet != "alipay":
            return _failure("40004", "ACQ.PAYMENT_AUTH_CODE_INVALID")
        try:
            amount = wire.minor_from_yuan(str(biz.get("total_amount", "")))
        except ValueError:
            return _failure("40002", "isv.invalid-parameter")
        request = {
            "payment_id": otn,
            "code": code,
            "amount_minor": amount,
            "currency": "CNY",
            "lane": str(biz.get("terminal_id", "")),
        }
        self._placed.setdefault(otn, self._wall())  # before the charge: a late one is billed
        try:
            payment, created = await self.charge(request)
        except ConflictError:  # the same out_trade_no with another code or amount
            return _failure("40004", "ACQ.TRADE_NO_REPEAT")
        except StoppingError:
            return _failure("20000", "isp.unknow-error")
        if self.unknown_pay_answer is not None:
            return _failure("40004", self.unknown_pay_answer)
        view = self.ledger.view(payment)
        status = view["status"]
        if status == "SUCCEEDED":
            if not created:  # the same order again after it was paid
                return _failure("40004", wire.PAID_BEFORE)
            return {**_ok(), **_trade(payment, otn)}
        if status == "PENDING":
            return {**_trade(payment, otn), "code": "10003", "msg": "order success pay inprocess"}
        if status == "REVERSED":
            return _failure("40004", wire.CLOSED)
        sub = SUB_CODES.get(view.get("reason") or "", "ACQ.PAYMENT_FAIL")
        return _failure("40004", sub)

    def _refund_trade(self, biz: dict[str, Any]) -> dict[str, Any]:
        otn, number = str(biz.get("out_trade_no", "")), biz.get("out_request_no")
        try:
            amount = wire.minor_from_yuan(str(biz.get("refund_amount", "")))
        except ValueError:
            return _failure("40002", "isv.invalid-parameter")
        if not isinstance(number, str) or not number:  # a partial refund must be numbered
            return _failure("40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL")
        before = self.ledger.get(otn)
        again = before is not None and number in before.refunds
        refusal = self.refuse_refund(otn, number, amount)
        if refusal is not None:
            return _failure("40004", REFUND_SUB_CODES.get(refusal, "ACQ." + refusal.upper()))
        payment = self.ledger.get(otn)
        assert payment is not None
        return {**_ok(), **_trade(payment, otn), "refund_fee": wire.yuan(payment.refunded),
                "fund_change": "N" if again else "Y"}  # fmt: skip

    def _refund_query(self, biz: dict[str, Any]) -> dict[str, Any]:
        """alipay.trade.fastpay.refund.query: 10000 whether or not the refund was made; only a
        made one carries `refund_status` REFUND_SUCCESS and its amount."""
        otn, number = str(biz.get("out_trade_no", "")), str(biz.get("out_request_no", ""))
        payment = self.ledger.get(otn)
        if payment is None or payment.request is None:
            return _failure("40004", wire.NOT_EXIST)
        doc = {**_ok(), "out_trade_no": otn, "trade_no": payment.acquirer_ref,
               "out_request_no": number}  # fmt: skip
        made = payment.refunds.get(number)
        if made is None:
            return doc
        return {**doc, "refund_amount": wire.yuan(made), "refund_status": "REFUND_SUCCESS",
                "total_amount": wire.yuan(payment.request["amount_minor"])}  # fmt: skip

    def _order(self, method: wire.Method, otn: str) -> dict[str, Any]:
        if method is wire.Method.CANCEL:
            payment = self.ledger.reverse(otn)  # an unknown order is voided: a late pay is refused
            action = "refund" if payment.previous == "SUCCEEDED" else "close"
            return {**_ok(), **_trade(payment, otn), "retry_flag": "N", "action": action}
        found = self.ledger.get(otn)
        if found is None:
            return _failure("40004", wire.NOT_EXIST)
        status = QUERY_STATUS[self.ledger.view(found)["status"]]
        return {**_ok(), **_trade(found, otn), "trade_status": status}

    async def _bill(self, request: web.Request) -> web.StreamResponse:
        date = request.match_info["date"]
        rows = [row for row in self.bill_rows() if wire.beijing_time(row.placed)[:10] == date]
        body = alipay_bill_zip(date, rows)
        return await self.bill_file_answer(
            request, web.Response(body=body, content_type="application/zip")
        )

    def bill_rows(self) -> list[BillRow]:
        """What Alipay would bill: every charge, and every refund of a charge."""
        rows = []
        for otn, placed in self._placed.items():
            payment = self.ledger.get(otn)
            if payment is None or payment.request is None or not payment.charged:
                continue
            rows.append(
                BillRow(
                    otn,
                    payment.acquirer_ref,
                    payment.request["lane"],
                    payment.request["amount_minor"],
                    placed,
                    refunded=payment.status == "REVERSED",
                )
            )
        return rows

    def _answer(self, key: str, body: dict[str, Any], *, signed: bool = True) -> web.Response:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        doc = f'{{"{key}":{text}'
        if signed:
            sign = netkeys.sign(self._alipay_key, text.encode())
            doc += f',"sign":"{sign}"'
        return web.Response(text=doc + "}", content_type="application/json", charset="utf-8")


REFUND_SUB_CODES = {
    "not_found": wire.NOT_EXIST,
    "not_refundable": "ACQ.TRADE_STATUS_ERROR",
    "too_much": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
    "conflict": "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
}


def _trade(payment: SimPayment, otn: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"out_trade_no": otn, "trade_no": payment.acquirer_ref}
    if payment.request is not None:
        doc["total_amount"] = wire.yuan(payment.request["amount_minor"])
    if payment.charged:  # a paid trade names its buyer: one 2088... id per wallet
        doc["buyer_user_id"] = "2088" + payment.payer
    return doc


def _ok() -> dict[str, Any]:
    return {"code": "10000", "msg": "Success"}


def _failure(code: str, sub_code: str) -> dict[str, Any]:
    msg = {"20000": "Service Currently Unavailable", "40004": "Business Failed"}
    return {
        "code": code,
        "msg": msg.get(code, "Invalid Arguments"),
        "sub_code": sub_code,
        "sub_msg": sub_code,
    }
