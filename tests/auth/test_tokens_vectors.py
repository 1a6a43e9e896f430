"""Known vectors: RFC 8392's signed CWT through our COSE layer, and a pinned golden token."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lane.auth.base45 import b45decode, b45encode
from lane.auth.cose import Alg, decode_sign1, verify
from lane.auth.deny import DenyList
from lane.auth.keys import IssuerKey, KeySet
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from lane.auth.tokens import PREFIX, Reason, TokenAccepted, TokenRefused, issue_token, verify_token

# RFC 8392 appendix A.3 (signed CWT) and A.2.3 (its ECDSA P-256 key).
RFC8392_A3 = bytes.fromhex(
    "d28443a10126a104524173796d6d657472696345434453413235365850a70175"
    "636f61703a2f2f61732e6578616d706c652e636f6d02656572696b7703781863"
    "6f61703a2f2f6c696768742e6578616d706c652e636f6d041a5612aeb0051a56"
    "10d9f0061a5610d9f007420b7158405427c1ff28d23fbad1f29c4c7c6a555e60"
    "1d6fa29f9179bc3d7438bacaca5acd08c8d4d4f96131680c429a01f85951ecee"
    "743a52b9b63632c57209120e1c9e30"
)
RFC8392_X = 0x143329CCE7868E416927599CF65A34F3CE2FFDA55A7ECA69ED8919A394D42F0F
RFC8392_Y = 0x60F7F1A780D8A783BFB7A2DD6B2796E8128DBBCEF9D3D168DB9529971A36E7B9

# RFC 8032 section 7.1, test 1 secret key: Ed25519 signatures are deterministic.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
GOLDEN_HEX = (
    "d2"  # tag 18, COSE_Sign1
    "84"  # array of 4
    "47a2012704426b31"  # bstr(7) protected {1: -8, 4: h'6b31' "k1"}
    "a0"  # unprotected {}
    "5838"  # bstr(56) payload
    "a5"  # claims map of 5
    "016e77616c6c65742e6578616d706c65"  # 1 iss: "wallet.example"
    "0267616363742d3432"  # 2 sub: "acct-42"
    "041a6b49d23c"  # 4 exp: 1800000060
    "061a6b49d200"  # 6 iat: 1800000000
    "0750000102030405060708090a0b0c0d0e0f"  # 7 cti: 16 bytes
    "5840"  # bstr(64) signature
    "02bb81fa4832895f02bc8b737f5d261ba7a396064ec3864a25abfef863822df8"
    "8105841b36f81c985bcf47b1afffb0ef24db261402f05348555bc661d59bea01"
)


def rfc8392_public() -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicNumbers(RFC8392_X, RFC8392_Y, ec.SECP256R1()).public_key()


def test_rfc8392_signed_cwt_verifies_in_cose_layer() -> None:
    sign1 = decode_sign1(RFC8392_A3)
    assert dict(sign1.header) == {1: -7}
    assert dict(sign1.unprotected) == {4: b"AsymmetricECDSA256"}
    assert verify(rfc8392_public(), sign1.signature, sign1.to_be_signed())
    flipped = bytes([sign1.signature[0] ^ 1]) + sign1.signature[1:]
    assert not verify(rfc8392_public(), flipped, sign1.to_be_signed())


def test_rfc8392_token_is_outside_our_profile() -> None:
    # Its kid sits in the unprotected header; our profile requires it protected (signed).
    keys = KeySet.of(0, [IssuerKey(b"AsymmetricECDSA256", Alg.ES256, rfc8392_public(), 0, 1 << 32)])
    verdict = verify_token(
        PREFIX + b45encode(RFC8392_A3), keys, DenyList.empty(), 1443944944, 5, CAP
    )
    assert isinstance(verdict, TokenRefused)
    assert verdict.reason is Reason.MALFORMED


def test_golden_ed25519_token_bytes() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
    text = issue_token(
        key, "k1", "wallet.example", "acct-42", 1800000000, 1800000060, bytes(range(16))
    )
    assert text.startswith("LT1:")
    assert b45decode(text[4:]).hex() == GOLDEN_HEX
    keys = KeySet.of(0, [IssuerKey(b"k1", Alg.ED25519, key.public_key(), 0, 1 << 32)])
    verdict = verify_token(text, keys, DenyList.empty(), 1800000010, 5, CAP)
    assert isinstance(verdict, TokenAccepted)
    assert verdict.token_id == "000102030405060708090a0b0c0d0e0f"
