"""What a decoded QR text is: offline token, wallet payment code, EMV CPM payload, a closed
road's entry pass, or unknown.

`classify` is pure and total: it never raises, whatever the camera hands it. Only the shape of
a code is judged here; signatures, expiry and replay are the business of `lane.auth`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from scanner.emv import (
    EmvApplication,
    EmvError,
    EmvPayload,
    decode_base64,
    looks_like_cpm,
    mask_pan,
    parse_cpm,
)

__all__ = [
    "EmvApplication",
    "EmvPayload",
    "EntryPassPayload",
    "Payload",
    "PaymentCodePayload",
    "TokenPayload",
    "UnknownPayload",
    "Wallet",
    "classify",
    "is_payment",
    "mask_pan",
]

# Offline tokens, v1 and the compact v2 (lane.auth.tokens.TokenFormat); the scanner only
# checks the shape, so it does not import the verifier.
TOKEN_PREFIXES = ("LT1:", "LT2:")
BASE45_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
# A COSE_Sign1 carries at least a 64-byte signature plus headers and claims; a QR code
# (version 40, alphanumeric) holds at most 4296 characters, i.e. 2864 bytes of Base45.
TOKEN_MIN_BYTES = 64
TOKEN_MAX_BYTES = 2864

# A closed road's entry pass (lane.auth.passes): read by exit lanes, never a payment.
PASS_PREFIX = "LP1:"

_DIGITS = re.compile(r"[0-9]+")
_B45 = {c: i for i, c in enumerate(BASE45_ALPHABET)}


Wallet = Literal["alipay", "wechat", "unionpay"]
# UnionPay QR payment codes (银联二维码付款码) are 19 digits starting 62; nothing else overlaps.
UNIONPAY_DIGITS = 19
UNIONPAY_PREFIX = "62"


@dataclass(frozen=True, slots=True)
class TokenPayload:
    text: str
    kind: Literal["token"] = field(default="token", init=False)


@dataclass(frozen=True, slots=True)
class PaymentCodePayload:
    digits: str
    wallet: Wallet
    kind: Literal["payment_code"] = field(default="payment_code", init=False)


@dataclass(frozen=True, slots=True)
class EntryPassPayload:
    text: str
    kind: Literal["entry_pass"] = field(default="entry_pass", init=False)


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    reason: str
    kind: Literal["unknown"] = field(default="unknown", init=False)


Payload = TokenPayload | PaymentCodePayload | EmvPayload | EntryPassPayload | UnknownPayload


def classify(text: str) -> Payload:
    """Classify decoded QR text. Never raises."""
    try:
        return _classify(text)
    except Exception as exc:  # a bug here must not take the lane down; say what happened
        return UnknownPayload(f"unclassifiable ({exc.__class__.__name__})")


def is_payment(text: str) -> bool:
    """Could the lane take payment from this code (any kind but `UnknownPayload`)?"""
    return not isinstance(classify(text), UnknownPayload)


def _classify(text: str) -> Payload:
    # Scanners sometimes append a line end; no format we accept contains one.
    text = text.strip("\r\n\t")
    if not text:
        return UnknownPayload("empty code")
    for prefix in TOKEN_PREFIXES:
        if text.startswith(prefix):
            return _token(text, text[len(prefix) :])
    if text.startswith(PASS_PREFIX):
        # Its signature, claims and use are the exit lane's to judge (lane.auth.passes).
        return EntryPassPayload(text)
    if _DIGITS.fullmatch(text):
        return _payment_code(text)
    if looks_like_cpm(text):
        try:
            return parse_cpm(decode_base64(text))
        except EmvError as exc:
            return UnknownPayload(str(exc))
    return UnknownPayload("not a payment code")


def _payment_code(digits: str) -> Payload:
    n = len(digits)
    head = int(digits[:2])
    if 16 <= n <= 24 and 25 <= head <= 30:
        return PaymentCodePayload(digits, "alipay")
    if n == 18 and 10 <= head <= 15:
        return PaymentCodePayload(digits, "wechat")
    if n == UNIONPAY_DIGITS and digits.startswith(UNIONPAY_PREFIX):
        return PaymentCodePayload(digits, "unionpay")
    return UnknownPayload(f"not a payment code ({n} digits starting {digits[:2]})")


def _token(text: str, body: str) -> Payload:
    problem = base45_problem(body)
    if problem is not None:
        return UnknownPayload(f"bad Base45: {problem}")
    size = len(body) // 3 * 2 + (1 if len(body) % 3 == 2 else 0)
    if size < TOKEN_MIN_BYTES:
        return UnknownPayload(f"token too short ({size} bytes, minimum {TOKEN_MIN_BYTES})")
    if size > TOKEN_MAX_BYTES:
        return UnknownPayload(f"token too long ({size} bytes, maximum {TOKEN_MAX_BYTES})")
    return TokenPayload(text)


def base45_problem(body: str) -> str | None:
    """Why `body` is not canonical Base45 (RFC 9285), or None when it is."""
    if len(body) % 3 == 1:
        return f"length {len(body)} is not 3k or 3k+2"
    for i, ch in enumerate(body):
        if ch not in _B45:
            return f"character {ch!r} at offset {i}"
    for i in range(0, len(body), 3):
        group = body[i : i + 3]
        value = sum(_B45[c] * 45**k for k, c in enumerate(group))
        if value > (0xFFFF if len(group) == 3 else 0xFF):
            return f"group {group!r} at offset {i} out of range"
    return None
