"""A protocol-faithful fake of WeChat Pay API v3 code payment (付款码支付).

`POST /v3/pay/transactions/codepay`, `GET /v3/pay/transactions/out-trade-no/{no}?mchid=`,
`POST /v3/pay/transactions/out-trade-no/{no}/reverse`, and the day's trade bill:
`GET /v3/bill/tradebill?bill_date=` (signed, with the bill's SHA1) then `GET download_url`.
Every request's WECHATPAY2-SHA256-RSA2048 Authorization is checked (401 SIGN_ERROR otherwise),
every answer is signed with the platform key. A reversal sooner than `min_reverse_age_s` after
the order was placed is refused, as WeChat Pay documents. The book, codes and faults are those
of `sim.acquirer` (this is an `AcquirerServer` speaking WeChat Pay; `/admin/...` as there).

Given an APIv3 key and the platform key's certificate, it is in certificate mode: `GET
/v3/certificates` lists its valid certificates, each encrypted with the APIv3 key, and
`rotate_certificate` makes a new one that signs every answer from then on. As WeChat Pay does
in the days a rotation overlaps, the download itself stays signed by the oldest certificate
still valid, so a merchant that trusted it can learn the new one; `retire_old_certificates`
ends the overlap. `certificate_fault` breaks the download (`CertificateFault`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from lane.auth import netkeys
from lane.auth import wechatpay_certs as certs
from lane.auth import wechatpay_wire as wire
from lane.auth.alipay_wire import beijing_time
from scanner.payload import PaymentCodePayload, classify
from sim.acquirer import AcquirerServer, ConflictError, StoppingError, trickle
from sim.acquirer_ledger import SimPayment
from sim.network_bills import BillRow, wechat_bill_text

TRADE_STATE = {
    "PENDING": wire.TradeState.USERPAYING,
    "SUCCEEDED": wire.TradeState.SUCCESS,
    "DECLINED": wire.TradeState.PAYERROR,
    "REVERSED": wire.TradeState.REVOKED,
}
ERROR_CODES = {"insufficient_funds": "NOTENOUGH", "code_used": "AUTH_CODE_INVALID"}
# WeChat Pay's platform certificates are valid for 5 years.
CERTIFICATE_LIFETIME_S = 5 * 365 * certs.DAY_S


class CertificateFault(StrEnum):
    """What is wrong with `GET /v3/certificates`."""

    NONE = "none"
    UNAVAILABLE = "unavailable"  # 500 SYSTEMERROR
    TAMPERED = "tampered"  # a ciphertext altered on the way: GCM refuses it
    BAD_SIGNATURE = "bad_signature"  # the answer's signature does not verify
    # Its status and headers at once, its body a byte every `slow_body_ms` (the faults'): the
    # download stalls mid-answer while every other call answers as usual.
    STALLED = "stalled"


def make_platform_certificate(
    key: rsa.RSAPrivateKey, not_before: float, lifetime_s: float = CERTIFICATE_LIFETIME_S
) -> certs.PlatformCert:
    """A platform certificate for `key` with a fresh random serial (self-signed: the lane
    trusts certificates by what vouched for them, not by a CA)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (fake)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.fromtimestamp(not_before, UTC))
        .not_valid_after(datetime.fromtimestamp(not_before + lifetime_s, UTC))
        .sign(key, hashes.SHA256())
    )
    return certs.cert_from_x509(cert)


@dataclass(frozen=True)
class PlatformSigner:
    serial: str
    key: rsa.RSAPrivateKey
    cert: certs.PlatformCert | None  # None: a platform public key (PUB_KEY_ID_...)


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
        platform_certificate: certs.PlatformCert | None = None,
        apiv3_key: bytes | None = None,
        min_reverse_age_s: float = 15.0,
        wall: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._mchid = mchid
        self._appid = appid
        self._merchant_key = merchant_key
        self._merchant_serial = merchant_serial
        if platform_certificate is not None and platform_certificate.serial != platform_serial:
            raise ValueError("platform_serial must be the platform certificate's serial")
        # Oldest first; the last signs the answers.
        self._signers = [PlatformSigner(platform_serial, platform_key, platform_certificate)]
        self._apiv3_key = apiv3_key
        self.certificate_fault = CertificateFault.NONE
        self.certificate_downloads = 0  # answered downloads (tests count them)
        self._min_reverse_age_s = min_reverse_age_s
        self._wall = wall
        self._placed: dict[str, tuple[float, float]] = {}  # otn -> (clock, wall) when placed
        self.early_reversals = 0  # reversals refused for coming too soon (tests look)
        # The HTTP status and code a pay is answered with once its charge went through (None:
        # the true answer): WeChat Pay's "query the order" answers (403 BANKERROR ...).
        self.unknown_pay_answer: tuple[int, str] | None = None
        # How a new refund ends: None, made at once (SUCCESS); "SUCCESS", "ABNORMAL" or
        # "CLOSED": answered PROCESSING, and so is its first query, then that.
        self.refund_ends: str | None = None
        self._refunds: dict[str, dict[str, Any]] = {}  # out_refund_no -> its answer
        self._refund_ends: dict[str, str] = {}  # out_refund_no -> its end, while PROCESSING
        self._refunds_queried: set[str] = set()
        self.refund_queries = 0  # answered refund queries (tests count them)

    def _api_routes(self, app: web.Application) -> None:
        app.router.add_post(wire.CODEPAY_PATH, self._codepay)
        app.router.add_get("/v3/pay/transactions/out-trade-no/{otn}", self._query)
        app.router.add_post("/v3/pay/transactions/out-trade-no/{otn}/reverse", self._reverse_order)
        app.router.add_post(wire.REFUND_PATH, self._refund)
        app.router.add_get(wire.REFUND_PATH + "/{number}", self._refund_query)
        app.router.add_get("/v3/bill/tradebill", self._tradebill)
        app.router.add_get("/v3/billdownload/file", self._bill_file)
        app.router.add_get(certs.CERTIFICATES_PATH, self._certificates)

    # -- platform certificates -------------------------------------------------------------

    def rotate_certificate(self, key: rsa.RSAPrivateKey | None = None) -> certs.PlatformCert:
        """A new platform certificate (for `key`, or a new key) signs every answer from now;
        the old ones stay listed until `retire_old_certificates`."""
        if self._apiv3_key is None:
            raise ValueError("a platform public key (no APIv3 key given) does not rotate")
        key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = make_platform_certificate(key, self._wall() - 60)
        self._signers.append(PlatformSigner(cert.serial, key, cert))
        return cert

    def retire_old_certificates(self) -> None:
        """The overlap is over: only the newest certificate is listed and signs."""
        self._signers = self._signers[-1:]

    @property
    def platform_serial(self) -> str:
        """The serial that signs answers now."""
        return self._signers[-1].serial

    async def _certificates(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._check_auth(request, b"")) is not None:
            return refused
        if (refused := await self._gate(request)) is not None:  # outages reach it too
            return refused
        if self._apiv3_key is None:
            return self._signed(404, _error("RESOURCE_NOT_EXISTS", "platform public key mode"))
        fault = self.certificate_fault
        if fault is CertificateFault.UNAVAILABLE:
            return self._signed(500, _error("SYSTEMERROR", "certificates unavailable"))
        now = self._wall()
        valid = [(s, s.cert) for s in self._signers if s.cert is not None and s.cert.valid_at(now)]
        entries = [certs.download_entry(c, self._apiv3_key, secrets.token_hex(6)) for _, c in valid]
        if fault is CertificateFault.TAMPERED and entries:
            sealed = entries[-1]["encrypt_certificate"]
            raw = bytearray(base64.b64decode(sealed["ciphertext"]))
            raw[len(raw) // 2] ^= 0x01
            sealed["ciphertext"] = base64.b64encode(bytes(raw)).decode()
        self.certificate_downloads += 1
        signer = valid[0][0] if valid else self._signers[-1]  # the oldest valid: see the module doc
        response = self._signed(200, {"data": entries}, signer)
        if fault is CertificateFault.BAD_SIGNATURE:
            response.headers["Wechatpay-Signature"] = base64.b64encode(bytes(256)).decode()
        if fault is CertificateFault.STALLED:
            return await trickle(request, response, self.faults.slow_body_ms / 1000.0)
        return response

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
        if self.unknown_pay_answer is not None:
            http, code = self.unknown_pay_answer
            return self._signed(http, _error(code, "outcome unknown: query the order"))
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

    async def _refund(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if (refused := self._check_auth(request, raw)) is not None:
            return refused
        try:
            body = json.loads(raw)
            otn, number = body["out_trade_no"], body["out_refund_no"]
            refund, total = body["amount"]["refund"], body["amount"]["total"]
            ok = type(refund) is int and type(total) is int and isinstance(number, str)
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            return self._signed(400, _error("PARAM_ERROR", "bad refund request"))
        if (refused := await self._gate(request)) is not None:
            return refused
        payment = self.ledger.get(otn)
        request_of = payment.request if payment is not None else None
        if request_of is not None and total != request_of["amount_minor"]:
            return self._signed(400, _error("PARAM_ERROR", "amount.total is not the order's"))
        refusal = self.refuse_refund(otn, number, refund)
        if refusal is not None:
            code = REFUND_CODES.get(refusal, refusal.upper())
            return self._signed(404 if refusal == "not_found" else 403, _error(code, refusal))
        # Taken: the merchant's balance pays it now (the ledger), the payer gets it when it
        # ends SUCCESS. The same number again is the same refund, as it stands.
        if number not in self._refunds:
            end = self.refund_ends
            self._refunds[number] = {"refund_id": "50" + payment_digits(number),
                                     "out_refund_no": number, "out_trade_no": otn,
                                     "status": "SUCCESS" if end is None else "PROCESSING",
                                     "amount": {"refund": refund, "total": total,
                                                "currency": "CNY"}}  # fmt: skip
            if end is not None:
                self._refund_ends[number] = end
        return self._signed(200, self._refunds[number])

    async def _refund_query(self, request: web.Request) -> web.Response:
        if (refused := self._check_auth(request, await request.read())) is not None:
            return refused
        if (refused := await self._gate(request)) is not None:
            return refused
        number = request.match_info["number"]
        doc = self._refunds.get(number)
        if doc is None:
            return self._signed(404, _error("RESOURCE_NOT_EXISTS", "no such refund"))
        self.refund_queries += 1
        if number in self._refund_ends:  # the first query still finds it PROCESSING
            if number in self._refunds_queried:
                doc["status"] = self._refund_ends.pop(number)
            self._refunds_queried.add(number)
        return self._signed(200, doc)

    def refund_by_hand(self, out_refund_no: str) -> None:
        """The merchant refunded an ABNORMAL refund through the merchant platform (异常退款):
        it is SUCCESS from now on."""
        self._refunds[out_refund_no]["status"] = "SUCCESS"

    def refund_abnormal_by_hand(self) -> None:
        """The merchant refunds every ABNORMAL refund by hand, and the payers' cards work
        again: those still processing towards ABNORMAL end SUCCESS too."""
        for number, end in self._refund_ends.items():
            if end == "ABNORMAL":
                self._refund_ends[number] = "SUCCESS"
        for number, doc in self._refunds.items():
            if doc["status"] == "ABNORMAL":
                self.refund_by_hand(number)

    def refund_status(self, out_refund_no: str) -> str | None:
        doc = self._refunds.get(out_refund_no)
        return None if doc is None else str(doc["status"])

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

    async def _bill_file(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._check_auth(request, b"")) is not None:
            return refused
        text = self.bill_text(request.query.get("token", ""))
        return await self.bill_file_answer(request, web.Response(text=text))

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

    def _signed(
        self, status: int, doc: dict[str, Any] | None, signer: PlatformSigner | None = None
    ) -> web.Response:
        text = "" if doc is None else json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        timestamp, nonce = str(int(self._wall())), secrets.token_hex(16).upper()
        signer = signer or self._signers[-1]
        signature = netkeys.sign(signer.key, wire.answer_message(timestamp, nonce, text).encode())
        headers = {
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": signature,
            "Wechatpay-Serial": signer.serial,
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
        if payment.charged:  # the payer's openid under our appid: one per wallet
            doc["payer"] = {"openid": "o" + payment.payer}
        return doc


REFUND_CODES = {
    "not_found": "RESOURCE_NOT_EXISTS",
    "not_refundable": "INVALID_REQUEST",
    "too_much": "INVALID_REQUEST",
    "conflict": "INVALID_REQUEST",
}


def payment_digits(text: str) -> str:
    return str(int(hashlib.sha256(text.encode()).hexdigest(), 16))[:27]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}
