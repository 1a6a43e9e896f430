"""Opening a signed QR text: prefix, Base45, COSE_Sign1, key lookup and signature check;
then reading its claims map.

Shared by everything a lane verifies offline: payment tokens (both versions) and entry
passes. Each caller checks its own prefixes, and names its own claims and their bounds; a
claim outside them is a `ClaimError`, which each caller refuses as its `malformed`. Pure: no
clock, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lane.auth.base45 import Base45Error, b45decode
from lane.auth.cose import (
    HEADER_ALG,
    HEADER_KID,
    Alg,
    CoseError,
    decode_sign1,
    loads_strict,
    verify,
)
from lane.auth.keys import MAX_KID_LEN, IssuerKey, kid_text


class OpenFailure(enum.StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    WRONG_ALGORITHM = "wrong_algorithm"
    BAD_SIGNATURE = "bad_signature"


class SignedTextError(ValueError):
    """The text did not open; `failure` says which step refused it."""

    def __init__(self, failure: OpenFailure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True)
class Opened:
    key: IssuerKey
    payload: bytes  # verified: signed by `key`
    signed: bytes  # the Sig_structure bytes, for ids derived from the whole signed content


def qr_text(text: object, max_len: int) -> str:
    """The scanned text as the lane reads it, or SignedTextError(MALFORMED) before decoding."""
    if not isinstance(text, str):
        raise SignedTextError(OpenFailure.MALFORMED, f"expected text, got {type(text).__name__}")
    text = text.rstrip("\r\n")  # scanners may add a line ending; not in the Base45 alphabet
    if len(text) > max_len:
        raise SignedTextError(OpenFailure.MALFORMED, f"{len(text)} characters, limit {max_len}")
    return text


def open_signed(
    text: object,
    prefix: str,
    max_len: int,
    lookup: Callable[[bytes], IssuerKey | None],
    *,
    tagged: bool = True,
) -> Opened:
    """The verified payload of `prefix + Base45(COSE_Sign1)`, or SignedTextError.

    `lookup` maps a kid to the key allowed for this kind of text (None: unknown); `tagged`
    False reads the untagged COSE_Sign1 of a text whose prefix already says what it is."""
    text = qr_text(text, max_len)
    if not text.startswith(prefix):
        raise SignedTextError(OpenFailure.MALFORMED, f"does not start with {prefix!r}")
    try:
        sign1 = decode_sign1(b45decode(text[len(prefix) :]), tagged=tagged)
    except (Base45Error, CoseError) as exc:
        raise SignedTextError(OpenFailure.MALFORMED, str(exc)) from None
    alg_id = sign1.header.get(HEADER_ALG)
    kid = sign1.header.get(HEADER_KID)
    if isinstance(alg_id, bool) or not isinstance(alg_id, int):
        raise SignedTextError(OpenFailure.MALFORMED, "protected header has no integer alg (1)")
    if not isinstance(kid, bytes) or not 0 < len(kid) <= MAX_KID_LEN:
        detail = f"protected header needs a kid (4) of 1..{MAX_KID_LEN} bytes"
        raise SignedTextError(OpenFailure.MALFORMED, detail)
    alg = Alg.from_cose(alg_id)
    if alg is None:
        detail = f"alg {alg_id} is not EdDSA (-8) or ES256 (-7)"
        raise SignedTextError(OpenFailure.WRONG_ALGORITHM, detail)
    key = lookup(kid)
    if key is None:
        raise SignedTextError(OpenFailure.UNKNOWN_KEY, f"no key with kid {kid_text(kid)!r}")
    if key.alg is not alg:
        detail = f"signed as {alg.value} but key {key.kid_text!r} is {key.alg.value}"
        raise SignedTextError(OpenFailure.WRONG_ALGORITHM, detail)
    signed = sign1.to_be_signed()
    if not verify(key.public_key, sign1.signature, signed):
        detail = f"signature does not verify with {key.kid_text!r}"
        raise SignedTextError(OpenFailure.BAD_SIGNATURE, detail)
    return Opened(key, sign1.payload, signed)


class ClaimError(ValueError):
    """A signed payload whose claims are outside the caller's profile; the text says which."""


def claims_map(payload: bytes) -> Mapping[Any, Any]:
    """The verified payload as a CBOR map of claims, or ClaimError."""
    try:
        body = loads_strict(payload)
    except CoseError as exc:
        raise ClaimError(f"claims: {exc}") from None
    if not isinstance(body, Mapping):
        raise ClaimError("claims must be a CBOR map")
    return body


def text_claim(
    body: Mapping[Any, Any], label: int, name: str, limit: int, *, printable: bool = False
) -> str:
    """Claim `label` as text of 1..`limit` characters (`printable`: no control characters)."""
    value = body.get(label)
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= limit
        or (printable and not value.isprintable())
    ):
        raise ClaimError(f"{name} ({label}) must be 1..{limit} characters")
    return value


def int_claim(
    body: Mapping[Any, Any], label: int, name: str, maximum: int, rule: str | None = None
) -> int:
    """Claim `label` as an integer 0..`maximum` (a bool is not one); `rule` is what the
    refusal says it must be, by default "an integer 0..maximum"."""
    value = body.get(label)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ClaimError(f"{name} ({label}) must be {rule or f'an integer 0..{maximum}'}")
    return value
