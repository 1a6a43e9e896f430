"""Alipay OpenAPI gateway, face-to-face barcode payment: what goes on the wire, pure.

Requests are form parameters (app_id, method, charset, sign_type, timestamp, version,
biz_content, sign); `sign` is RSA2 (SHA256withRSA) over the other non-empty parameters sorted
by name as `k=v&k=v`, values not URL-encoded. An answer is JSON
`{"<method with _>_response": {...}, "sign": "..."}`; its signature covers the exact text of the
response object as it appears in the body, so that text is cut out of the body rather than
re-serialised. Amounts are yuan with two decimals ("4.50"), converted from and to integer fen
exactly; timestamps are Beijing time (UTC+8), as the gateway requires.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from lane.auth.acquirer import (
    AcquirerProtocolError,
    AcquirerResult,
    PaymentStatus,
    RefundAnswer,
    RefundRefused,
    RefundState,
)

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
YUAN = re.compile(r"(0|[1-9][0-9]{0,11})\.([0-9]{2})")
OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_]{1,64}")


class Method(StrEnum):
    PAY = "alipay.trade.pay"
    QUERY = "alipay.trade.query"
    CANCEL = "alipay.trade.cancel"
    REFUND = "alipay.trade.refund"
    REFUND_QUERY = "alipay.trade.fastpay.refund.query"
    BILL_URL = "alipay.data.dataservice.bill.downloadurl.query"

    @property
    def response_key(self) -> str:
        return self.value.replace(".", "_") + "_response"


class Code(StrEnum):
    """The gateway's result codes (`code` in every response)."""

    SUCCESS = "10000"
    WAITING_USER = "10003"  # the buyer must confirm on the phone: query until paid
    UNKNOWN = "20000"  # service unavailable, outcome unknown: query
    AUTH_MISSING = "20001"
    MISSING_PARAM = "40001"
    INVALID_PARAM = "40002"
    BUSINESS_FAILED = "40004"
    NO_PERMISSION = "40006"


# Business failures (40004) that are answers about the payment, not declines.
PAID_BEFORE = "ACQ.TRADE_HAS_SUCCESS"  # a retried pay whose first try went through: query
NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
CLOSED = "ACQ.TRADE_HAS_CLOSE"
# A pay answered with these did not fail: Alipay does not know yet whether it went through, and
# says to query the order (its barcode-payment error handling: "if SYSTEM_ERROR is returned,
# call the query interface"). A decline here could leave a charge neither recorded nor reversed.
UNKNOWN_OUTCOME = frozenset({"ACQ.SYSTEM_ERROR"})
# The sub_codes a driver can act on, in the lane's words; the rest keep Alipay's name.
DECLINE_REASONS = {
    "ACQ.BUYER_BALANCE_NOT_ENOUGH": "insufficient_funds",
    "ACQ.BUYER_BANKCARD_BALANCE_NOT_ENOUGH": "insufficient_funds",
    "ACQ.PAYMENT_AUTH_CODE_INVALID": "code_invalid",
    "ACQ.PAYMENT_FAIL": "payment_failed",
    "ACQ.BUYER_PAYMENT_AMOUNT_DAY_LIMIT_ERROR": "over_limit",
    "ACQ.BUYER_PAYMENT_AMOUNT_MONTH_LIMIT_ERROR": "over_limit",
    "ACQ.ERROR_BUYER_CERTIFY_LEVEL_LIMIT": "over_limit",
    "ACQ.PULL_MOBILE_CASHIER_FAIL": "payment_failed",
    "ACQ.CONTEXT_INCONSISTENT": "code_used",
}


def yuan(amount_minor: int) -> str:
    """Integer fen as Alipay's yuan text: 450 -> "4.50". No float ever touches the amount."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor < 0:
        raise ValueError("amount_minor must be a non-negative int of minor units")
    return f"{amount_minor // 100}.{amount_minor % 100:02d}"


def minor_from_yuan(text: str) -> int:
    """Alipay's yuan text as integer fen: "4.50" -> 450; anything else is a ValueError."""
    match = YUAN.fullmatch(text)
    if match is None:
        raise ValueError(f"not an amount in yuan with two decimals: {text!r}")
    return int(match[1]) * 100 + int(match[2])


def beijing_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def unix_from_beijing(text: str) -> float:
    parsed = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    return parsed.astimezone(UTC).timestamp()


def signing_content(params: Mapping[str, str]) -> str:
    """The text an RSA2 signature covers: sorted `k=v` of every non-empty parameter but sign."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")


def request_params(
    app_id: str, method: Method, biz: Mapping[str, Any], now_unix: float
) -> dict[str, str]:
    """The request's parameters without `sign` (the caller signs `signing_content` of them)."""
    return {
        "app_id": app_id,
        "method": method.value,
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": beijing_time(now_unix),
        "version": "1.0",
        "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
    }


def pay_biz(out_trade_no: str, auth_code: str, amount_minor: int, lane: str) -> dict[str, Any]:
    return {
        "out_trade_no": out_trade_no,
        "scene": "bar_code",
        "auth_code": auth_code,
        "product_code": "FACE_TO_FACE_PAYMENT",
        "subject": f"lane {lane}",
        "total_amount": yuan(amount_minor),
        "terminal_id": lane,
        # The order closes itself a minute on even if no cancel ever reaches Alipay.
        "timeout_express": "1m",
    }


@dataclass(frozen=True)
class Signed:
    """A gateway answer: the response object, its exact text, and the signature over it."""

    body: dict[str, Any]
    text: str
    sign: str | None


def split_response(raw: str, method: Method) -> Signed:
    """Cut `<method>_response` (or the gateway's `error_response`) out of an answer, exactly."""
    decoder = json.JSONDecoder()
    members: dict[str, tuple[Any, str]] = {}
    try:
        pos = _skip(raw, 0)
        if raw[pos : pos + 1] != "{":
            raise ValueError("not a JSON object")
        pos = _skip(raw, pos + 1)
        while raw[pos : pos + 1] != "}":
            key, pos = decoder.raw_decode(raw, pos)
            pos = _skip(raw, pos)
            if raw[pos : pos + 1] != ":":
                raise ValueError(f"':' expected at {pos}")
            start = _skip(raw, pos + 1)
            value, pos = decoder.raw_decode(raw, start)
            members[key] = (value, raw[start:pos])
            pos = _skip(raw, pos)
            if raw[pos : pos + 1] == ",":
                pos = _skip(raw, pos + 1)
        if _skip(raw, pos + 1) != len(raw):
            raise ValueError("text after the JSON object")
    except (ValueError, IndexError) as exc:
        raise AcquirerProtocolError(f"{method}: answer is not a JSON object: {exc}", 200) from exc
    sign = members.get("sign", (None, ""))[0]
    for key in (method.response_key, "error_response"):
        if key in members and isinstance(members[key][0], dict):
            body, text = members[key]
            return Signed(body, text, sign if isinstance(sign, str) and sign else None)
    raise AcquirerProtocolError(f"{method}: answer without {method.response_key}", 200)


def _skip(raw: str, pos: int) -> int:
    while pos < len(raw) and raw[pos] in " \t\r\n":
        pos += 1
    return pos


def result(method: Method, body: Mapping[str, Any], payment_id: str) -> AcquirerResult:
    """The lane's view of a verified answer to pay, query or cancel."""
    code, sub = str(body.get("code", "")), str(body.get("sub_code", ""))
    ref = body.get("trade_no") if isinstance(body.get("trade_no"), str) else None
    if code == Code.SUCCESS:
        return _success(method, body, payment_id, ref)
    if code in (Code.WAITING_USER, Code.UNKNOWN) and method is Method.PAY:
        return AcquirerResult(payment_id, PaymentStatus.PENDING, acquirer_ref=ref)
    if code == Code.BUSINESS_FAILED:
        if sub == NOT_EXIST:
            status = PaymentStatus.REVERSED if method is Method.CANCEL else PaymentStatus.NOT_FOUND
            return AcquirerResult(payment_id, status, reason="not_found")
        if sub == CLOSED:
            return AcquirerResult(payment_id, PaymentStatus.REVERSED, reason="closed")
        if method is Method.PAY:
            if sub == PAID_BEFORE or sub in UNKNOWN_OUTCOME:  # the query says what happened
                return AcquirerResult(payment_id, PaymentStatus.PENDING, acquirer_ref=ref)
            reason = DECLINE_REASONS.get(sub) or sub.removeprefix("ACQ.").lower() or "declined"
            return AcquirerResult(payment_id, PaymentStatus.DECLINED, reason, ref)
    raise AcquirerProtocolError(
        f"{method}: code {code} {body.get('msg', '')}: {sub} {body.get('sub_msg', '')}".strip(),
        200,
    )


def buyer(body: Mapping[str, Any]) -> str | None:
    """The payer's stable id in a paid trade's answer: `buyer_open_id` (apps created since
    Alipay's OpenID migration get it instead of the 2088... `buyer_user_id`), else
    `buyer_user_id`. Scoped by the scheme: never compared with another network's ids."""
    for name in ("buyer_open_id", "buyer_user_id"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}"
    return None


def refund_biz(out_trade_no: str, out_request_no: str, amount_minor: int) -> dict[str, Any]:
    """A partial refund: `out_request_no` names it (required for a partial one; the same number
    again refunds once)."""
    return {
        "out_trade_no": out_trade_no,
        "out_request_no": out_request_no,
        "refund_amount": yuan(amount_minor),
        "refund_reason": "fare priced at exit",
    }


def refund_result(body: Mapping[str, Any]) -> RefundAnswer:
    """A verified answer to alipay.trade.refund: 10000 with `fund_change` Y is the refund made
    now; with N no money moved in this call (made before under that number, or not at all):
    PROCESSING until `refund_query_result` says which. A business failure is Alipay's no, with
    its sub_code (`ACQ.SELLER_BALANCE_NOT_ENOUGH`, `ACQ.TRADE_STATUS_ERROR` ...); 20000 is
    unknown: asked again under the same number."""
    _refund_code(body)
    if body.get("fund_change") == "Y":
        return RefundAnswer(RefundState.MADE, "fund_change Y")
    return RefundAnswer(RefundState.PROCESSING, f"fund_change {body.get('fund_change')}")


def refund_query_result(body: Mapping[str, Any], out_request_no: str) -> RefundAnswer:
    """A verified answer to alipay.trade.fastpay.refund.query: 10000 is only the query done;
    `refund_status` REFUND_SUCCESS is the refund made, none is a refund not received or not
    made, which Alipay says to ask again under the same number (UNKNOWN)."""
    _refund_code(body)
    if body.get("out_request_no") not in (None, out_request_no):
        raise AcquirerProtocolError(f"refund query: answer for {body.get('out_request_no')!r}")
    if body.get("refund_status") == "REFUND_SUCCESS":
        return RefundAnswer(RefundState.MADE, "REFUND_SUCCESS")
    return RefundAnswer(RefundState.UNKNOWN, str(body.get("refund_status") or "no refund_status"))


def _refund_code(body: Mapping[str, Any]) -> None:
    """Raise what a refund call's answer other than 10000 means."""
    code, sub = str(body.get("code", "")), str(body.get("sub_code", ""))
    if code == Code.SUCCESS:
        return
    if code in (Code.BUSINESS_FAILED, Code.UNKNOWN):
        reason = sub.removeprefix("ACQ.").lower() or ("unknown" if code == Code.UNKNOWN else code)
        raise RefundRefused(reason, str(body.get("sub_msg", "")))
    raise AcquirerProtocolError(f"refund: code {code} {body.get('msg', '')}: {sub}".strip(), 200)


def _success(
    method: Method, body: Mapping[str, Any], payment_id: str, ref: str | None
) -> AcquirerResult:
    if method is Method.CANCEL:
        if body.get("retry_flag") == "Y":  # Alipay could not cancel yet: ask again
            raise AcquirerProtocolError(f"{method}: cancel not done, retry_flag=Y", 200)
        return AcquirerResult(payment_id, PaymentStatus.REVERSED, "reversed", ref)
    if method is Method.PAY:
        return AcquirerResult(payment_id, PaymentStatus.SUCCEEDED, None, ref, buyer(body))
    status = body.get("trade_status")
    if status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
        return AcquirerResult(payment_id, PaymentStatus.SUCCEEDED, None, ref, buyer(body))
    if status == "WAIT_BUYER_PAY":
        return AcquirerResult(payment_id, PaymentStatus.PENDING, acquirer_ref=ref)
    if status == "TRADE_CLOSED":  # cancelled, refunded, or never paid and timed out: final
        return AcquirerResult(payment_id, PaymentStatus.REVERSED, "closed", ref)
    raise AcquirerProtocolError(f"{method}: unknown trade_status {status!r}", 200)
