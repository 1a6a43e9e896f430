"""COSE_Sign1 (RFC 9052) as the offline tokens use it: decode, encode, sign, verify.

Only what our token profile needs: tag 18, an attached payload, a protected header that is a
byte string holding a CBOR map, external_aad empty, and two algorithms: EdDSA over Ed25519
(-8) and ECDSA P-256 with SHA-256 (-7). COSE carries ECDSA signatures as raw r||s (32 + 32
bytes), not the DER that `cryptography` produces, so both directions convert here.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

COSE_SIGN1_TAG = 18
CWT_TAG = 61
HEADER_ALG = 1
HEADER_CRIT = 2
HEADER_KID = 4
SIGNATURE_LEN = 64
# Deep nesting buys an attacker recursion; our structures are three levels deep.
MAX_DEPTH = 16

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


class Alg(enum.Enum):
    """The signature algorithms a key may use; the value is the name used in files."""

    ED25519 = "ed25519"
    ES256 = "es256"

    @property
    def cose_id(self) -> int:
        return -8 if self is Alg.ED25519 else -7

    @classmethod
    def from_cose(cls, ident: int) -> Alg | None:
        return {-8: cls.ED25519, -7: cls.ES256}.get(ident)


class CoseError(ValueError):
    """Bytes that are not a COSE_Sign1 of our profile."""


@dataclass(frozen=True)
class Sign1:
    protected: bytes  # the serialized protected header, exactly as signed
    header: Mapping[Any, Any]  # its decoded map
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected, self.payload)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes a COSE_Sign1 signature covers: ["Signature1", protected, aad=b"", payload]."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def loads_strict(data: bytes) -> Any:
    """Decode exactly one CBOR item: no trailing bytes, no duplicate map keys, bounded depth."""
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp, max_depth=MAX_DEPTH, allow_duplicate_keys=False, allow_indefinite=False
        )
        item = decoder.decode()
    except Exception as exc:  # cbor2 raises several unrelated types for garbage
        raise CoseError(f"not CBOR: {exc.__class__.__name__}: {exc}") from exc
    if fp.tell() != len(data):
        raise CoseError(f"{len(data) - fp.tell()} trailing bytes after the CBOR item")
    return item


def decode_sign1(data: bytes, *, tagged: bool = True) -> Sign1:
    """`tagged=False` reads the untagged form (RFC 9052 section 2), for a context that already
    says what the bytes are (the compact token's prefix); a tag is then refused."""
    item = loads_strict(data)
    if tagged:
        if isinstance(item, cbor2.CBORTag) and item.tag == CWT_TAG:
            # RFC 8392 lets a CWT carry its own tag around the COSE one; accept, never emit.
            item = item.value
        if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
            raise CoseError("not a COSE_Sign1 (CBOR tag 18)")
        parts = item.value
    elif isinstance(item, cbor2.CBORTag):
        raise CoseError(f"an untagged COSE_Sign1 was expected, got CBOR tag {item.tag}")
    else:
        parts = item
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise CoseError("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = parts
    if not isinstance(protected, bytes) or not protected:
        raise CoseError("protected header must be a non-empty byte string")
    if not isinstance(unprotected, Mapping):
        raise CoseError("unprotected header must be a map")
    if not isinstance(payload, bytes):
        raise CoseError("payload must be an attached byte string")
    if not isinstance(signature, bytes):
        raise CoseError("signature must be a byte string")
    header = loads_strict(protected)
    if not isinstance(header, Mapping):
        raise CoseError("protected header must hold a CBOR map")
    if HEADER_CRIT in header:
        raise CoseError("critical header parameters are not supported")
    return Sign1(protected, header, unprotected, payload, signature)


def encode_sign1(
    private_key: PrivateKey, kid: bytes, payload: bytes, *, tagged: bool = True
) -> bytes:
    alg = alg_of_private(private_key)
    protected = cbor2.dumps({HEADER_ALG: alg.cose_id, HEADER_KID: kid})
    signature = sign(private_key, sig_structure(protected, payload))
    parts = [protected, {}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, parts) if tagged else parts)


def alg_of_private(private_key: PrivateKey) -> Alg:
    if isinstance(private_key, Ed25519PrivateKey):
        return Alg.ED25519
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
        private_key.curve, ec.SECP256R1
    ):
        return Alg.ES256
    raise CoseError(f"unsupported private key type {type(private_key).__name__}")


def alg_of_public(public_key: object) -> Alg | None:
    if isinstance(public_key, Ed25519PublicKey):
        return Alg.ED25519
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return Alg.ES256
    return None


def sign(private_key: PrivateKey, data: bytes) -> bytes:
    if isinstance(private_key, Ed25519PrivateKey):
        return private_key.sign(data)
    der = private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public_key: PublicKey, signature: bytes, data: bytes) -> bool:
    """True when `signature` (64 bytes, raw r||s for ECDSA) is valid for `data`."""
    if len(signature) != SIGNATURE_LEN:
        return False
    try:
        if isinstance(public_key, Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        # ValueError: r or s out of range for the curve, which is just another bad signature.
        return False
    return True
