"""Online payment codes as the acquirer sees them, and the account reference that stands in for
a code in records.

The shape of a code (wallet digits, EMVCo CPM payload) is judged once, by
`scanner.payload.classify`; this module only insists that a code is of the kind the lane asked
for and turns it into what is sent and what is recorded.

Why a keyed hash for the account reference: a wallet code is a bearer credential for about a
minute, and an EMV payload carries the card number. Records travel uplink, sit in queues, back
office tables and logs; the raw code there would let whoever reads them pay with it, and a plain
hash of an 18-digit structured code (or of a PAN) is cheap to brute-force. HMAC-SHA256 under a
secret the lane shares with the back office makes the reference useless to a reader but lets the
back office find the record of a code a driver shows in a dispute. 64 bits (16 hex) keep
collisions out of any realistic set of records while staying short.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from scanner.payload import EmvPayload, PaymentCodePayload, UnknownPayload, classify

MIN_KEY_BYTES = 16
REF_HEX_CHARS = 16
ONLINE_KINDS = frozenset({"payment_code", "emv"})


class CodeError(ValueError):
    """A code that cannot be sent to the acquirer; `reason` is the short code shown and logged."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class OnlineCode:
    kind: str  # payment_code | emv
    wire: str  # what goes to the acquirer: the digits, or the Base64 payload without line ends
    account_ref: str

    def paid_by(self, user_id: str | None, key: bytes) -> str:
        """The account of a paid wallet code: the network's stable id of its payer, keyed like
        any reference. A wallet code's digits change at every showing, its payer does not, so
        a metro gate finds the passenger's tap-in by it. An EMV card keeps its PAN reference
        (already stable); an answer without a payer id keeps the code's own."""
        if self.kind != "payment_code" or not user_id:
            return self.account_ref
        scheme = self.account_ref.partition(":")[0]
        return _ref(scheme, b"payer\x00" + user_id.encode(), key)


def online_code(kind: str, text: str, key: bytes) -> OnlineCode:
    """Check that `text` is a well-formed code of `kind`; raise CodeError if not."""
    if kind not in ONLINE_KINDS:
        raise CodeError("unsupported_kind", f"{kind!r} is not an online payment code")
    payload = classify(text)
    if isinstance(payload, UnknownPayload):
        raise CodeError("invalid_code", payload.reason)
    if payload.kind != kind:
        raise CodeError("invalid_code", f"a {payload.kind} code where a {kind} was expected")
    if isinstance(payload, PaymentCodePayload):
        # The scheme names the network (alipay:, wechat:, unionpay:), so the daily
        # reconciliation knows whose bill a record belongs on; the keyed part is unchanged.
        subject = b"wallet\x00" + payload.digits.encode()
        return OnlineCode(kind, payload.digits, _ref(payload.wallet, subject, key))
    assert isinstance(payload, EmvPayload)
    # The card number is the stable account; the payload changes with every cryptogram.
    ref = _ref("emv", b"emv-pan\x00" + payload.pan.encode(), key)
    return OnlineCode(kind, text.strip("\r\n\t"), ref)


def _ref(scheme: str, subject: bytes, key: bytes) -> str:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"account key must be at least {MIN_KEY_BYTES} bytes")
    digest = hmac.new(key, subject, hashlib.sha256).hexdigest()
    return f"{scheme}:{digest[:REF_HEX_CHARS]}"
