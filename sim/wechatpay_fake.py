"""A protocol-faithful fake of WeChat Pay API v3 code payment (付款码支付).

`POST /v3/pay/transactions/codepay`, `GET /v3/pay/transactions/out-trade-no/{no}?mchid=`,
`POST /v3/pay/transactions/out-trade-no/{no}/reverse`, and the day's trade bill:
`GET /v3/bill/tradebill?bill_date=` (signed, with the bill's SHA1) then `GET download_url`.
Every request's WECHATPAY2-SHA256-RSA2048 Authorization is checked (401 SIGN_ERROR otherwise),
every answer is signed with the platform key. A reversal sooner than `min_reverse_age_s` after
the order was placed is refused, as WeChat Pay documents. The book, codes and faults are those
of `sim.acquirer` (this is an `AcquirerServer` speaking WeChat Pay; `/admin/...` as there).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth import netkeys
from lane.auth import wechatpay_wire as wire
from lane.auth.alipay_wire import beijing_time
from scanner.payload import PaymentCodePayload, classify
from sim.acquirer import AcquirerServer, ConflictError, StoppingError
from sim.acquirer_ledger import SimPayment
from sim.network_bills import BillRow, wechat_bill_text

TRADE_STATE = {
    "PENDING": wire.TradeState.USERPAYING,
    "SUCCEEDED": wire.TradeState.SUCCESS,
    "DECLINED": wire.TradeState.PAYERROR,
    "REVERSED": wire.TradeState.REVOKED,
}
ERROR_CODES = {"insufficient_funds": "NOTENOUGH", "code_used": "AUTH_CODE_INVALID"}


class WeChatPayFake(AcquirerServer):
    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        merchant_key: rsa.RSAPublicKey,
        merchant_serial: str,
        platform_key: rsa.RSAPrivateKey,
        platform_serial: str,
        min_reverse_age_s: float = 15.0,
        wall: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._mchid = mchid
        self._appid = appid
        self._merchant_key = merchant_key
        self._merchant_serial = merchant_serial
        self._platform_key = platform_key
        self._platform_serial = platform_serial
        self._min_reverse_age_s = min_reverse_age_s
        self._wall = wall
        self._placed: dict[str, tuple[float, float]] = {}  # otn -> (clock, wall) when placed
        self.early_reversals = 0  # reversals refused for coming too soon (tests look)

    def _api_routes(self, app: web.Application) -> None:
        app.router.add_post(wire.CODEPAY_PATH, self._codepay)
        app.router.add_get("/v3/pay/transactions/out-trade-no/{otn}", self._query)
        app.router.add_post("/v3/pay/transactions/out-trade-no/{otn}/reverse", self._reverse_order)
        app.router.add_get("/v3/bill/tradebill", self._tradebill)
        app.router.add_get("/v3/billdownload/file", self._bill_file)

    # -- API -------------------------------------------------------------------------------

    async def _codepay(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if (refused := self._check_auth(request, raw)) is not None:
            return refused
        try:
            body = json.loads(raw)
            otn, total = body["out_trade_no"], body["amount"]["total"]
            auth_code, scene = body["payer"]["auth_code"], body["scene_info"]
            lane = scene["device_id"]
            ipaddress.ip_address(scene["payer_client_ip"])  # required, an address
            ok = (
                body["appid"] == self._appid
                and body["mchid"] == self._mchid
                and wire.OUT_TRADE_NO.fullmatch(otn)
                and type(total) is int
                and total >= 1
                and body["amount"].get("currency", "CNY") == "CNY"
            )
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            return self._signed(400, _error("PARAM_ERROR", "bad codepay request"))
        payload = classify(auth_code) if isinstance(auth_code, str) else None
        if not isinstance(payload, PaymentCodePayload) or payload.wallet != "wechat":
            return self._signed(403, _error("AUTH_CODE_INVALID", "not a WeChat payment code"))
        if (refused := await self._gate(request)) is not None:
            return refused
        self._placed.setdefault(otn, (self._clock(), self._wall()))  # a late charge is billed
        order = {"payment_id": otn, "code": auth_code, "amount_minor": total, "currency": "CNY"}
        try:
            payment, created = await self.charge({**order, "lane": str(lane)})
        except ConflictError:
            return self._signed(403, _error("OUT_TRADE_NO_USED", "same number, other order"))
        except StoppingError:
            return self._signed(500, _error("SYSTEMERROR", "stopping"))
        status = self.ledger.view(payment)["status"]
        if status == "SUCCEEDED":
            if not created:
                return self._signed(403, _error("ORDERPAID", "order already paid"))
            return self._signed(200, self._trade(payment, otn))
        if status == "PENDING":
            return self._signed(202, _error("USERPAYING", "waiting for the buyer's password"))
        if status == "REVERSED":
            return self._signed(403, _error("ORDERREVERSED", "order was reversed"))
        code = ERROR_CODES.get(payment.reason or "", "TRADE_ERROR")
        return self._signed(403, _error(code, payment.reason or "declined"))

    async def _query(self, request: web.Request) -> web.Response:
        if (refused := self._check_auth(request, await request.read())) is not None:
            return refused
        if (refused := await self._gate(request)) is not None:
            return refused
        if request.query.get("mchid") != self._mchid:
            return self._signed(400, _error("PARAM_ERROR", "mchid"))
        otn = request.match_info["otn"]
        payment = self.ledger.get(otn)
        if payment is None:
            return self._signed(404, _error("ORDER_NOT_EXIST", "no such order"))
        return self._signed(200, self._trade(payment, otn))

    async def _reverse_order(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if (refused := self._check_auth(request, raw)) is not None:
            return refused
        if (refused := await self._gate(request)) is not None:
            return refused
        otn = request.match_info["otn"]
        placed = self._placed.get(otn)
        if placed is not None and self._clock() - placed[0] < self._min_reverse_age_s:
            self.early_reversals += 1
            return self._signed(
                403,
                _error(
                    "INVALID_REQUEST",
                    f"reverse no sooner than {self._min_reverse_age_s:g} s after the order",
                ),
            )
        self.ledger.reverse(otn)  # an unknown order is voided: a late pay is refused
        return self._signed(204, None)

    async def _tradebill(self, request: web.Request) -> web.Response:
        if (refused := self._check_auth(request, b"")) is not None:
            return refused
        date = request.query.get("bill_date", "")
        digest = hashlib.sha1(self.bill_text(date).encode(), usedforsecurity=False).hexdigest()
        return self._signed(
            200,
            {
                "hash_type": "SHA1",
                "hash_value": digest,
                "download_url": f"{self.url}/v3/billdownload/file?token={date}",
            },
        )

    async def _bill_file(self, request: web.Request) -> web.Response:
        if (refused := self._check_auth(request, b"")) is not None:
            return refused
        return web.Response(text=self.bill_text(request.query.get("token", "")))

    def bill_text(self, date: str) -> str:
        rows = []
        for otn, (_, wall) in self._placed.items():
            payment = self.ledger.get(otn)
            if payment is None or payment.request is None or not payment.charged:
                continue
            if beijing_time(wall)[:10] != date:
                continue
            req = payment.request
            refunded = payment.status == "REVERSED"
            rows.append(
                BillRow(otn, payment.acquirer_ref, req["lane"], req["amount_minor"], wall, refunded)
            )
        return wechat_bill_text(self._mchid, self._appid, rows)

    # -- signatures ------------------------------------------------------------------------

    def _check_auth(self, request: web.Request, raw: bytes) -> web.Response | None:
        try:
            fields = wire.parse_authorization(request.headers.get("Authorization", ""))
        except ValueError as exc:
            return self._signed(401, _error("SIGN_ERROR", str(exc)))
        if fields["mchid"] != self._mchid or fields["serial_no"] != self._merchant_serial:
            return self._signed(401, _error("SIGN_ERROR", "unknown merchant or key serial"))
        ts = fields["timestamp"]
        if not ts.isdigit() or abs(self._wall() - int(ts)) > wire.MAX_ANSWER_AGE_S:
            return self._signed(401, _error("SIGN_ERROR", "timestamp out of range"))
        message = wire.request_message(
            request.method, request.path_qs, ts, fields["nonce_str"], raw.decode("utf-8", "replace")
        )
        if not netkeys.verify(self._merchant_key, message.encode(), fields["signature"]):
            return self._signed(401, _error("SIGN_ERROR", "signature does not verify"))
        return None

    def _signed(self, status: int, doc: dict[str, Any] | None) -> web.Response:
        text = "" if doc is None else json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        timestamp, nonce = str(int(self._wall())), secrets.token_hex(16).upper()
        signature = netkeys.sign(
            self._platform_key, wire.answer_message(timestamp, nonce, text).encode()
        )
        headers = {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": self._platform_serial,
            "Wechatpay-Signature-Type": wire.SCHEME,
        }
        if doc is None:
            return web.Response(status=status, headers=headers)
        return web.Response(
            status=status, text=text, headers=headers, content_type="application/json"
        )

    def _trade(self, payment: SimPayment, otn: str) -> dict[str, Any]:
        state = TRADE_STATE[self.ledger.view(payment)["status"]]
        doc: dict[str, Any] = {
            "appid": self._appid,
            "mchid": self._mchid,
            "out_trade_no": otn,
            "transaction_id": payment.acquirer_ref,
            "trade_type": "MICROPAY",
            "trade_state": state.value,
            "trade_state_desc": state.value,
        }
        if payment.request is not None:
            total = payment.request["amount_minor"]
            doc["amount"] = {"total": total, "payer_total": total, "currency": "CNY"}
        return doc


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}
