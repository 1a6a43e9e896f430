"""Offline payment tokens: verify (and, for tools and the simulator, issue) without a network.

QR text = "LT1:" + Base45(COSE_Sign1 bytes); the COSE payload is a CWT claims map.
The compact v2 form, "LT2:" + Base45(untagged COSE_Sign1), leaves out what the lane already
knows (the CBOR tag, the issuer, which the key set binds to the key) so that a token fits a QR
code of version 5 at level L instead of version 8 at level M: bigger modules in the same
4 cm, which is what decides whether a blurred, distant phone reads on the first look
(docs/tokens.md). Both versions are verified during the transition.
Pure: no clock (the caller passes `now`), no I/O. `verify_token` never raises: any input,
however broken, becomes a `TokenRefused` with a reason from `Reason`.

No zlib layer, unlike the EU DCC: a token is ~150 bytes of mostly signature and nonce, which
do not compress (zlib makes it larger), and skipping it removes a decompression step an
attacker could feed. Replay is not decided here: the replay store owns that, keyed by
`TokenAccepted.token_id` until `exp`, which the lifetime cap keeps near.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cbor2

from lane.auth.base45 import b45encode
from lane.auth.cose import PrivateKey, encode_sign1
from lane.auth.deny import DenyList
from lane.auth.keys import IssuerKey, KeySet, KeyUse
from lane.auth.signed import (
    ClaimError,
    OpenFailure,
    SignedTextError,
    claims_map,
    int_claim,
    open_signed,
    qr_text,
    text_claim,
)


class TokenFormat(enum.StrEnum):
    """The QR text prefix of each token version."""

    V1 = "LT1:"  # tagged COSE_Sign1, iss in the claims: ~240 characters, QR version 8-M
    V2 = "LT2:"  # compact: untagged, issuer from the key: <= 154 characters, QR version 5-L


PREFIX = TokenFormat.V1.value
MAX_TEXT_LEN = 2048  # v1 tokens are 200-240 characters; refuse big inputs before decoding
# What QR version 5 holds at level L in alphanumeric mode. A longer v2 token would need a
# bigger symbol (smaller modules), which is what v2 exists to avoid, so it is refused.
COMPACT_MAX_TEXT = 154
MAX_TEXT_CLAIM = 256
MAX_CTI_LEN = 64
MAX_TIME = 1 << 40  # NumericDate bound: keeps times inside SQLite's and msgpack's integers
PHONE_TOKEN_TTL_S = 60  # what issuers make: a phone shows a fresh token every minute
# The lane's cap on exp - iat (auth.max_token_lifetime_s): it bounds what a leaked issuer key
# or an issuer bug can make, and so how long the replay store keeps an id.
DEFAULT_MAX_LIFETIME_S = 900
DEFAULT_SKEW_S = 30  # auth.skew_s: phones' clocks are often that far off

CLAIM_ISS, CLAIM_SUB, CLAIM_EXP, CLAIM_NBF, CLAIM_IAT, CLAIM_CTI = 1, 2, 4, 5, 6, 7


class Reason(enum.StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    DENIED_ACCOUNT = "denied_account"
    KEY_NOT_VALID_AT_IAT = "key_not_valid_at_iat"
    WRONG_ALGORITHM = "wrong_algorithm"
    LIFETIME_TOO_LONG = "lifetime_too_long"


@dataclass(frozen=True)
class TokenAccepted:
    token_id: str  # hex of cti; without cti, SHA-256 hex of the signed bytes
    issuer: str
    account_ref: str
    iat: int
    exp: int
    kid: bytes


@dataclass(frozen=True)
class TokenRefused:
    reason: Reason
    detail: str


TokenVerdict = TokenAccepted | TokenRefused


def token_format(text: str) -> TokenFormat | None:
    """Which token version `text` claims to be (by its prefix), or None."""
    for fmt in TokenFormat:
        if text.startswith(fmt.value):
            return fmt
    return None


def qr_ec_level(text: str) -> Literal["L", "M"]:
    """The error-correction level a phone renders `text` at: a compact token at L (it fits
    version 5 only there; measured in bench/scan.py, the larger modules read better than M's
    extra redundancy), everything else at M."""
    return "L" if token_format(text) is TokenFormat.V2 else "M"


@dataclass(frozen=True)
class Claims:
    issuer: str | None  # None only in a compact token: the key names the issuer
    account_ref: str
    iat: int
    exp: int
    nbf: int | None
    cti: bytes | None


class _RefusedError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.verdict = TokenRefused(reason, detail)


def verify_token(  # noqa: PLR0917 - the token, what it is judged by, and when
    text: str, keys: KeySet, deny: DenyList, now: float, skew_s: float, max_lifetime_s: float
) -> TokenVerdict:
    """Decide whether an offline token is acceptable at `now` (unix seconds UTC).

    `skew_s` is the clock difference tolerated between the issuer's phone and the lane, on
    both ends of the validity window. `max_lifetime_s` caps `exp - iat`: a longer-lived token
    is refused however good its signature.
    """
    try:
        return _verify(text, keys, deny, now, skew_s, max_lifetime_s)
    except _RefusedError as refusal:
        return refusal.verdict
    except Exception as exc:  # belt and braces: the fuzz tests assert this never happens
        return TokenRefused(Reason.MALFORMED, f"internal error {exc.__class__.__name__}: {exc}")


def _verify(  # noqa: PLR0917
    text: str, keys: KeySet, deny: DenyList, now: float, skew_s: float, max_lifetime_s: float
) -> TokenVerdict:
    if not (math.isfinite(now) and 0 <= skew_s < math.inf and 0 < max_lifetime_s < math.inf):
        # A caller bug, but this function never raises: fail closed.
        detail = f"verifier called with now={now} skew_s={skew_s} max_lifetime_s={max_lifetime_s}"
        raise _RefusedError(Reason.MALFORMED, detail)
    try:
        fmt = _format(qr_text(text, MAX_TEXT_LEN))
        opened = open_signed(
            text, fmt.value, MAX_TEXT_LEN, _token_key(keys), tagged=fmt is TokenFormat.V1
        )
    except SignedTextError as exc:
        raise _RefusedError(Reason(exc.failure.value), exc.detail) from None
    key = opened.key
    try:
        claims = _parse_claims(opened.payload, fmt)
    except ClaimError as exc:
        raise _RefusedError(Reason.MALFORMED, str(exc)) from None
    issuer = claims.issuer if claims.issuer is not None else key.issuer
    if issuer is None:
        raise _RefusedError(
            Reason.UNKNOWN_KEY,
            f"compact token without iss, and key {key.kid_text!r} is bound to no issuer",
        )
    if key.issuer is not None and issuer != key.issuer:
        raise _RefusedError(
            Reason.UNKNOWN_KEY,
            f"key {key.kid_text!r} belongs to {key.issuer!r}, token claims {claims.issuer!r}",
        )
    if claims.exp - claims.iat > max_lifetime_s:
        detail = f"lifetime {claims.exp - claims.iat} s (exp - iat), cap {max_lifetime_s:g} s"
        raise _RefusedError(Reason.LIFETIME_TOO_LONG, detail)
    if not key.valid_at(claims.iat):
        raise _RefusedError(
            Reason.KEY_NOT_VALID_AT_IAT,
            f"key {key.kid_text!r} is valid [{key.not_before}, {key.not_after}), iat {claims.iat}",
        )
    if claims.iat > now + skew_s:
        raise _RefusedError(Reason.NOT_YET_VALID, f"issued at {claims.iat}, now {now:.0f}")
    if claims.nbf is not None and claims.nbf > now + skew_s:
        raise _RefusedError(Reason.NOT_YET_VALID, f"not before {claims.nbf}, now {now:.0f}")
    if now >= claims.exp + skew_s:
        raise _RefusedError(Reason.EXPIRED, f"expired at {claims.exp}, now {now:.0f}")
    if deny.denies(claims.account_ref):
        raise _RefusedError(
            Reason.DENIED_ACCOUNT,
            f"account {claims.account_ref!r} is on deny list generation {deny.generation}",
        )
    token_id = claims.cti.hex() if claims.cti else hashlib.sha256(opened.signed).hexdigest()
    return TokenAccepted(token_id, issuer, claims.account_ref, claims.iat, claims.exp, key.kid)


def _token_key(keys: KeySet) -> Callable[[bytes], IssuerKey | None]:
    def lookup(kid: bytes) -> IssuerKey | None:
        key = keys.get(kid)
        # A plaza's pass key never signs a payment token.
        return key if key is not None and key.use is KeyUse.TOKEN else None

    return lookup


def _format(text: str) -> TokenFormat:
    """The version a token's prefix names; SignedTextError(MALFORMED) for none, or for a
    compact token longer than the QR version it exists to fit."""
    fmt = token_format(text)
    if fmt is None:
        prefixes = " or ".join(repr(f.value) for f in TokenFormat)
        raise SignedTextError(OpenFailure.MALFORMED, f"does not start with {prefixes}")
    if fmt is TokenFormat.V2 and len(text) > COMPACT_MAX_TEXT:
        detail = f"compact token of {len(text)} characters, limit {COMPACT_MAX_TEXT}"
        raise SignedTextError(OpenFailure.MALFORMED, detail)
    return fmt


def _parse_claims(payload: bytes, fmt: TokenFormat) -> Claims:
    body = claims_map(payload)
    compact_without_iss = fmt is TokenFormat.V2 and CLAIM_ISS not in body
    issuer = None if compact_without_iss else text_claim(body, CLAIM_ISS, "iss", MAX_TEXT_CLAIM)
    account = text_claim(body, CLAIM_SUB, "sub", MAX_TEXT_CLAIM)
    exp = _time_claim(body, CLAIM_EXP, "exp")
    iat = _time_claim(body, CLAIM_IAT, "iat")
    nbf = _time_claim(body, CLAIM_NBF, "nbf")
    if iat is None or exp is None:
        raise ClaimError("claims iat (6) and exp (4) are required")
    if exp <= iat:
        raise ClaimError(f"exp {exp} is not after iat {iat}")
    cti = body.get(CLAIM_CTI)
    if cti is not None and (not isinstance(cti, bytes) or not 0 < len(cti) <= MAX_CTI_LEN):
        raise ClaimError(f"cti (7) must be 1..{MAX_CTI_LEN} bytes")
    return Claims(issuer, account, iat, exp, nbf, cti)


def _time_claim(body: Mapping[Any, Any], label: int, name: str) -> int | None:
    # RFC 8392 also allows floats; our profile takes integer seconds only. Absent (or null)
    # is None: whether the claim is required is the caller's rule.
    if body.get(label) is None:
        return None
    return int_claim(body, label, name, MAX_TIME - 1, "integer unix seconds")


def issue_token(  # noqa: PLR0917 - the signature tools and the simulator share
    private_key: PrivateKey,
    kid: bytes | str,
    issuer: str,
    account_ref: str,
    iat: int,
    exp: int,
    nonce: bytes | None,
) -> str:
    """Sign a v1 token (tests, the simulator, `lane token issue`); raises ValueError on bad
    input."""
    if not issuer:
        raise ValueError("issuer must be non-empty")
    claims = _claims(issuer, kid, account_ref, iat, exp, nonce)
    raw = encode_sign1(private_key, _kid_bytes(kid), cbor2.dumps(claims))
    return PREFIX + b45encode(raw)


def issue_compact_token(  # noqa: PLR0917 - same arguments as issue_token, less the issuer
    private_key: PrivateKey,
    kid: bytes | str,
    account_ref: str,
    iat: int,
    exp: int,
    nonce: bytes | None = None,
) -> str:
    """Sign a compact v2 token: no iss (the key set binds the key to its issuer), untagged.

    Raises ValueError when it would not fit QR version 5 at level L: with a 1-2 byte kid,
    integer times and no nonce that leaves 8 characters of account reference.
    """
    claims = _claims(None, kid, account_ref, iat, exp, nonce)
    raw = encode_sign1(private_key, _kid_bytes(kid), cbor2.dumps(claims), tagged=False)
    text = TokenFormat.V2.value + b45encode(raw)
    if len(text) > COMPACT_MAX_TEXT:
        raise ValueError(
            f"compact token would be {len(text)} characters, limit {COMPACT_MAX_TEXT} "
            f"(QR version 5-L): kid {len(_kid_bytes(kid))} bytes, account "
            f"{len(account_ref)} characters, nonce {len(nonce or b'')} bytes"
        )
    return text


def _kid_bytes(kid: bytes | str) -> bytes:
    return kid.encode("utf-8") if isinstance(kid, str) else kid


def _claims(  # noqa: PLR0917
    issuer: str | None, kid: bytes | str, account_ref: str, iat: int, exp: int, nonce: bytes | None
) -> dict[int, Any]:
    if not kid or not account_ref:
        raise ValueError("kid and account_ref must be non-empty")
    if exp <= iat:
        raise ValueError("exp must be after iat")
    claims: dict[int, Any] = {} if issuer is None else {CLAIM_ISS: issuer}
    claims.update({CLAIM_SUB: account_ref, CLAIM_EXP: exp, CLAIM_IAT: iat})
    if nonce is not None:
        claims[CLAIM_CTI] = nonce
    return claims
