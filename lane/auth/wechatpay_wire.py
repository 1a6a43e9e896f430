"""WeChat Pay API v3 code payment (付款码支付): what goes on the wire, pure.

A request carries `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=..,nonce_str=..,
signature=..,timestamp=..,serial_no=..`, the signature being SHA256withRSA over
`METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`. An answer is signed by the platform key over
`TIMESTAMP\\nNONCE\\nBODY\\n` from its `Wechatpay-Timestamp`, `-Nonce` headers and its body.
Amounts are integer fen already (`amount.total`), so nothing is converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth import netkeys
from lane.auth.acquirer import (
    AcquirerProtocolError,
    AcquirerResult,
    PaymentStatus,
    RefundAnswer,
    RefundRefused,
    RefundState,
)

SCHEME = "WECHATPAY2-SHA256-RSA2048"
CODEPAY_PATH = "/v3/pay/transactions/codepay"
REFUND_PATH = "/v3/refund/domestic/refunds"  # 申请退款: a partial refund of a paid order
OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_|*-]{6,32}")
# Answers signed longer ago than this are refused: a replayed old answer proves nothing now.
MAX_ANSWER_AGE_S = 300
_AUTH_FIELD = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*')


class TradeState(StrEnum):
    SUCCESS = "SUCCESS"
    REFUND = "REFUND"
    NOTPAY = "NOTPAY"
    CLOSED = "CLOSED"
    REVOKED = "REVOKED"
    USERPAYING = "USERPAYING"
    PAYERROR = "PAYERROR"


class Call(StrEnum):
    PAY = "codepay"
    QUERY = "query"
    REVERSE = "reverse"


# Error codes (`code` of an error answer) that a driver can act on, in the lane's words.
DECLINE_REASONS = {
    "NOTENOUGH": "insufficient_funds",
    "AUTH_CODE_INVALID": "code_invalid",
    "AUTHCODEEXPIRE": "code_invalid",
    "AUTH_CODE_ERROR": "code_invalid",
    "BUYER_MISMATCH": "code_invalid",
    "TRADE_ERROR": "payment_failed",
    "PAYERROR": "payment_failed",
    "NOAUTH": "payment_failed",
}
# Errors that are about our request or our account, not the driver: never a decline.
REQUEST_ERRORS = frozenset(
    {"PARAM_ERROR", "INVALID_REQUEST", "SIGN_ERROR", "APPID_MCHID_NOT_MATCH", "MCH_NOT_EXISTS"}
)
# A pay answered with these may have gone through or still be going: WeChat Pay says to query
# the order (code payment: USERPAYING, SYSTEMERROR, BANKERROR), never to take them as a no.
# 5xx answers never reach `result`: they are outages, which the resolver queries too.
QUERY_CODES = frozenset(
    {"USERPAYING", "SYSTEMERROR", "SYSTEM_ERROR", "BANKERROR", "BANK_ERROR", "ORDERPAID"}
)
NOT_FOUND_CODES = frozenset({"ORDER_NOT_EXIST", "ORDERNOTEXIST", "RESOURCE_NOT_EXISTS"})
CLOSED_CODES = frozenset({"ORDER_CLOSED", "ORDERCLOSED", "ORDERREVERSED", "ORDER_REVERSED"})


def out_trade_no(payment_id: str) -> str:
    """WeChat takes 6-32 characters: our payment id without its `pay_` prefix (32 hex)."""
    candidate = payment_id.removeprefix("pay_")
    if not OUT_TRADE_NO.fullmatch(candidate):
        raise ValueError(f"payment id {payment_id!r} cannot be a WeChat Pay out_trade_no")
    return candidate


def query_path(otn: str, mchid: str) -> str:
    return f"/v3/pay/transactions/out-trade-no/{otn}?mchid={mchid}"


def reverse_path(otn: str) -> str:
    return f"/v3/pay/transactions/out-trade-no/{otn}/reverse"


def request_message(method: str, path: str, timestamp: str, nonce: str, body: str) -> str:
    return f"{method}\n{path}\n{timestamp}\n{nonce}\n{body}\n"


def answer_message(timestamp: str, nonce: str, body: str) -> str:
    return f"{timestamp}\n{nonce}\n{body}\n"


def authorization(mchid: str, serial_no: str, nonce: str, timestamp: str, signature: str) -> str:
    return (
        f'{SCHEME} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial_no}"'
    )


def parse_authorization(header: str) -> dict[str, str]:
    """The fields of an Authorization header; ValueError if it is not WeChat Pay's scheme."""
    scheme, _, rest = header.partition(" ")
    if scheme != SCHEME:
        raise ValueError(f"authorization scheme is not {SCHEME}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _AUTH_FIELD.fullmatch(part)
        if match is None:
            raise ValueError(f"bad authorization field {part!r}")
        fields[match[1]] = match[2]
    missing = {"mchid", "nonce_str", "signature", "timestamp", "serial_no"} - set(fields)
    if missing:
        raise ValueError(f"authorization lacks {sorted(missing)}")
    return fields


class Untrusted(StrEnum):
    """Why an answer is not believed."""

    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"  # signed by a key (serial) the lane does not have
    STALE = "stale"
    NOT_UTF8 = "not_utf8"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True)
class AnswerProblem:
    kind: Untrusted
    detail: str
    serial: str  # the Wechatpay-Serial it named


# The platform key for a serial at a time, or None: the lane does not trust that serial then.
KeyFor = Callable[[str, float], rsa.RSAPublicKey | None]


def answer_problem(
    headers: Mapping[str, str], raw: bytes, key_for: KeyFor, now: float
) -> AnswerProblem | None:
    """Why an answer (its headers and body) is not signed by a trusted platform key, or None."""
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp = lower.get("wechatpay-timestamp", "")
    nonce = lower.get("wechatpay-nonce", "")
    signature = lower.get("wechatpay-signature", "")
    serial = lower.get("wechatpay-serial", "")
    if not (timestamp and nonce and signature):
        return AnswerProblem(Untrusted.UNSIGNED, "answer not signed", serial)
    key = key_for(serial, now)
    if key is None:
        detail = f"signed by key {serial!r}, which the lane does not trust"
        return AnswerProblem(Untrusted.UNKNOWN_KEY, detail, serial)
    if not timestamp.isdigit() or abs(now - int(timestamp)) > MAX_ANSWER_AGE_S:
        detail = f"signature time {timestamp!r} is not within {MAX_ANSWER_AGE_S} s of now"
        return AnswerProblem(Untrusted.STALE, detail, serial)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return AnswerProblem(Untrusted.NOT_UTF8, "answer is not UTF-8", serial)
    if not netkeys.verify(key, answer_message(timestamp, nonce, text).encode(), signature):
        return AnswerProblem(Untrusted.BAD_SIGNATURE, "bad signature", serial)
    return None


@dataclass(frozen=True)
class Merchant:
    mchid: str
    appid: str
    device_ip: str  # the lane computer: the code payment's payer_client_ip


def codepay_body(
    merchant: Merchant, otn: str, auth_code: str, amount_minor: int, lane: str
) -> dict[str, Any]:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor < 1:
        raise ValueError("WeChat Pay amounts are a positive int of fen")
    return {
        "appid": merchant.appid,
        "mchid": merchant.mchid,
        "description": f"lane {lane}",
        "out_trade_no": otn,
        "scene_info": {"payer_client_ip": merchant.device_ip, "device_id": lane},
        "amount": {"total": amount_minor, "currency": "CNY"},
        "payer": {"auth_code": auth_code},
    }


def refund_body(otn: str, out_refund_no: str, refund: int, total: int) -> dict[str, Any]:
    return {"out_trade_no": otn, "out_refund_no": out_refund_no, "reason": "fare priced at exit",
            "amount": {"refund": refund, "total": total, "currency": "CNY"}}  # fmt: skip


def refund_path(out_refund_no: str) -> str:
    """查询单笔退款: where a refund stands, by our refund number."""
    return f"{REFUND_PATH}/{out_refund_no}"


# A refund's `status`: SUCCESS paid; PROCESSING not yet (asked about again by its number);
# ABNORMAL the payer's account refused it (a closed or frozen card: the money waits at WeChat
# Pay for the merchant's manual refund or 发起异常退款); CLOSED ended unpaid (7 days PROCESSING
# without the merchant's balance: a new refund number is needed).
REFUND_STATES = {
    "SUCCESS": RefundState.MADE,
    "PROCESSING": RefundState.PROCESSING,
    "ABNORMAL": RefundState.FAILED,
    "CLOSED": RefundState.FAILED,
}


def refund_result(http_status: int, doc: Mapping[str, Any], out_refund_no: str) -> RefundAnswer:
    """A verified answer to a refund or its query: 200 with its `status` (REFUND_STATES); a
    query of a number WeChat Pay has no refund under (404 RESOURCE_NOT_EXISTS) is UNKNOWN; a 4xx
    business code (`NOT_ENOUGH`: the merchant's balance, `RESOURCE_NOT_EXISTS` ...) is its no;
    a request error is ours."""
    code = str(doc.get("code", ""))
    if http_status == 200 and not code:
        if doc.get("out_refund_no") != out_refund_no:
            raise AcquirerProtocolError(f"wechatpay refund: answer for {doc.get('out_refund_no')}")
        status = str(doc.get("status", ""))
        state = REFUND_STATES.get(status)
        if state is None:
            raise AcquirerProtocolError(f"wechatpay refund: unknown status {status!r}", 200)
        return RefundAnswer(state, status)
    # A refund's INVALID_REQUEST is about the order (refunded beyond its total, not paid), not
    # our request: WeChat Pay's no, like NOT_ENOUGH.
    ours = REQUEST_ERRORS - {"INVALID_REQUEST"}
    if code and code not in ours and 400 <= http_status < 500:
        raise RefundRefused(code.lower(), str(doc.get("message", "")))
    raise AcquirerProtocolError(f"wechatpay refund: HTTP {http_status} {code}", http_status)


def result(call: Call, http_status: int, doc: Mapping[str, Any], payment_id: str) -> AcquirerResult:
    """The lane's view of a verified answer (2xx or 4xx; 5xx never gets here)."""
    if 200 <= http_status < 300 and "code" not in doc:
        if call is Call.REVERSE:
            return AcquirerResult(payment_id, PaymentStatus.REVERSED, "reversed")
        return _trade(call, doc, payment_id)
    code = str(doc.get("code", ""))
    if code in QUERY_CODES and call is Call.PAY:  # ORDERPAID: our retry of a paid order
        return AcquirerResult(payment_id, PaymentStatus.PENDING)
    if code in NOT_FOUND_CODES and call is not Call.PAY:
        status = PaymentStatus.REVERSED if call is Call.REVERSE else PaymentStatus.NOT_FOUND
        return AcquirerResult(payment_id, status, "not_found")
    if code in CLOSED_CODES:
        return AcquirerResult(payment_id, PaymentStatus.REVERSED, "closed")
    if call is Call.PAY and code and code not in REQUEST_ERRORS and 400 <= http_status < 500:
        reason = DECLINE_REASONS.get(code, code.lower())
        return AcquirerResult(payment_id, PaymentStatus.DECLINED, reason)
    raise AcquirerProtocolError(
        f"wechatpay {call}: HTTP {http_status} {code} {doc.get('message', '')}".strip(),
        http_status,
    )


def _trade(call: Call, doc: Mapping[str, Any], payment_id: str) -> AcquirerResult:
    ref = doc.get("transaction_id") if isinstance(doc.get("transaction_id"), str) else None
    state = doc.get("trade_state")
    if state == TradeState.SUCCESS:
        payer = doc.get("payer")
        openid = payer.get("openid") if isinstance(payer, dict) else None
        # `payer.openid`: the payer's id under our appid, the same for every code they show.
        user = openid if isinstance(openid, str) and openid else None
        return AcquirerResult(payment_id, PaymentStatus.SUCCEEDED, None, ref, user)
    if state in (TradeState.USERPAYING, TradeState.NOTPAY):
        return AcquirerResult(payment_id, PaymentStatus.PENDING, acquirer_ref=ref)
    if state == TradeState.PAYERROR:
        reason = "payment_failed"
        return AcquirerResult(payment_id, PaymentStatus.DECLINED, reason, ref)
    if state in (TradeState.CLOSED, TradeState.REVOKED, TradeState.REFUND):
        return AcquirerResult(payment_id, PaymentStatus.REVERSED, str(state).lower(), ref)
    raise AcquirerProtocolError(f"wechatpay {call}: unknown trade_state {state!r}", 200)
