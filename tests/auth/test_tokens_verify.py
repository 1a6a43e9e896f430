"""verify_token: every refusal reason, the skew edges, key rotation windows, forgeries."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from lane.auth.base45 import b45decode, b45encode
from lane.auth.cose import Alg, sig_structure, sign
from lane.auth.deny import DenyList
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from lane.auth.tokens import (
    MAX_TEXT_LEN,
    PREFIX,
    Reason,
    TokenAccepted,
    TokenRefused,
    issue_token,
    verify_token,
)

NOW = 1_800_000_000
SKEW = 5.0
NO_DENY = DenyList.empty()


def keys_of(*issuers: TokenIssuer) -> KeySet:
    return KeySet.of(NOW - 3600, [i.public() for i in issuers])


def refused(verdict: object) -> TokenRefused:
    assert isinstance(verdict, TokenRefused), verdict
    assert not verdict.detail.startswith("internal"), verdict.detail
    return verdict


def raw_token(
    issuer: TokenIssuer,
    claims: object,
    header: object | None = None,
    unprotected: object | None = None,
) -> str:
    """A token built by hand, for shapes issue_token refuses to make."""
    protected = cbor2.dumps(
        header if header is not None else {1: issuer.alg.cose_id, 4: issuer.kid}
    )
    payload = cbor2.dumps(claims)
    signature = sign(issuer.private_key, sig_structure(protected, payload))
    body = [protected, unprotected if unprotected is not None else {}, payload, signature]
    return PREFIX + b45encode(cbor2.dumps(cbor2.CBORTag(18, body)))


def claims(**over: object) -> dict[int, object]:
    base: dict[int, object] = {1: "wallet.example", 2: "acct-1", 4: NOW + 60, 6: NOW, 7: b"n" * 16}
    names = {"iss": 1, "sub": 2, "exp": 4, "nbf": 5, "iat": 6, "cti": 7}
    for name, value in over.items():
        if value is None:
            base.pop(names[name], None)
        else:
            base[names[name]] = value
    return base


@pytest.mark.parametrize("alg", list(Alg))
def test_accepts_valid_token(alg: Alg) -> None:
    issuer = TokenIssuer.generate(alg, kid="k1")
    text = issuer.token("acct-42", iat=NOW - 10, ttl_s=60, nonce=bytes(range(16)))
    verdict = verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP)
    assert verdict == TokenAccepted(
        token_id=bytes(range(16)).hex(),
        issuer="wallet.example",
        account_ref="acct-42",
        iat=NOW - 10,
        exp=NOW + 50,
        kid=b"k1",
    )


def test_token_is_qr_alphanumeric_and_compact() -> None:
    issuer = TokenIssuer.generate(Alg.ES256)
    text = issuer.token("acct-0001234567", iat=NOW)
    assert set(text) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
    assert len(text) < 260


def test_token_id_without_cti_hashes_signed_bytes_only() -> None:
    issuer = TokenIssuer.generate()
    body = claims(cti=None)
    plain = raw_token(issuer, body)
    # The unprotected header is not signed: changing it must not change the id (replay bypass).
    padded = raw_token(issuer, body, unprotected={99: "anything"})
    first = verify_token(plain, keys_of(issuer), NO_DENY, NOW, SKEW, CAP)
    second = verify_token(padded, keys_of(issuer), NO_DENY, NOW, SKEW, CAP)
    assert isinstance(first, TokenAccepted) and isinstance(second, TokenAccepted)
    assert first.token_id == second.token_id
    protected = cbor2.dumps({1: -8, 4: b"k1"})
    expected = hashlib.sha256(sig_structure(protected, cbor2.dumps(body))).hexdigest()
    assert first.token_id == expected


def test_unknown_key() -> None:
    issuer = TokenIssuer.generate(kid="k1")
    other = TokenIssuer.generate(kid="k2")
    verdict = refused(verify_token(issuer.token("a", NOW), keys_of(other), NO_DENY, NOW, SKEW, CAP))
    assert verdict.reason is Reason.UNKNOWN_KEY
    assert "k1" in verdict.detail


@pytest.mark.parametrize("alg", list(Alg))
def test_forged_with_another_key_same_kid(alg: Alg) -> None:
    genuine = TokenIssuer.generate(alg, kid="k1")
    forger = TokenIssuer.generate(alg, kid="k1")
    text = forger.token("acct-1", NOW)
    verdict = refused(verify_token(text, keys_of(genuine), NO_DENY, NOW, SKEW, CAP))
    assert verdict.reason is Reason.BAD_SIGNATURE


def test_claims_swapped_under_a_genuine_signature() -> None:
    issuer = TokenIssuer.generate()
    good = cbor2.loads(b45decode(issuer.token("acct-1", NOW)[len(PREFIX) :]))
    protected, unprotected, _, signature = good.value
    evil = cbor2.dumps(claims(sub="acct-victim"))
    text = PREFIX + b45encode(
        cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, evil, signature]))
    )
    assert refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP)).reason is (
        Reason.BAD_SIGNATURE
    )


def test_der_signature_is_not_accepted_for_es256() -> None:
    issuer = TokenIssuer.generate(Alg.ES256)
    protected = cbor2.dumps({1: -7, 4: issuer.kid})
    payload = cbor2.dumps(claims())
    assert isinstance(issuer.private_key, ec.EllipticCurvePrivateKey)
    der = issuer.private_key.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA256()))
    text = PREFIX + b45encode(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, der])))
    verdict = refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP))
    assert verdict.reason is Reason.BAD_SIGNATURE


def test_es256_signature_is_raw_r_s() -> None:
    issuer = TokenIssuer.generate(Alg.ES256)
    sign1 = cbor2.loads(b45decode(issuer.token("acct-1", NOW)[len(PREFIX) :])).value
    protected, _, payload, signature = sign1
    assert len(signature) == 64
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public = issuer.private_key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(
        encode_dss_signature(r, s), sig_structure(protected, payload), ec.ECDSA(hashes.SHA256())
    )


def test_wrong_algorithm_unsupported_alg() -> None:
    issuer = TokenIssuer.generate()
    text = raw_token(issuer, claims(), header={1: -35, 4: issuer.kid})  # ES384
    assert refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP)).reason is (
        Reason.WRONG_ALGORITHM
    )


def test_wrong_algorithm_for_the_key() -> None:
    es_issuer = TokenIssuer.generate(Alg.ES256, kid="k1")
    ed_issuer = TokenIssuer.generate(Alg.ED25519, kid="k1")
    text = ed_issuer.token("acct-1", NOW)
    verdict = refused(verify_token(text, keys_of(es_issuer), NO_DENY, NOW, SKEW, CAP))
    assert verdict.reason is Reason.WRONG_ALGORITHM
    assert "es256" in verdict.detail


def test_expired_by_one_second_beyond_skew() -> None:
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", iat=NOW - 60, ttl_s=60)  # exp = NOW
    keys = keys_of(issuer)
    assert isinstance(
        verify_token(text, keys, NO_DENY, NOW + SKEW - 0.001, SKEW, CAP), TokenAccepted
    )
    assert (
        refused(verify_token(text, keys, NO_DENY, NOW + SKEW, SKEW, CAP)).reason is Reason.EXPIRED
    )
    verdict = refused(verify_token(text, keys, NO_DENY, NOW + SKEW + 1, SKEW, CAP))
    assert verdict.reason is Reason.EXPIRED
    assert str(NOW) in verdict.detail


def test_not_yet_valid_beyond_skew() -> None:
    issuer = TokenIssuer.generate()
    keys = keys_of(issuer)
    at_edge = issuer.token("acct-1", iat=NOW + int(SKEW))
    assert isinstance(verify_token(at_edge, keys, NO_DENY, NOW, SKEW, CAP), TokenAccepted)
    early = issuer.token("acct-1", iat=NOW + int(SKEW) + 1)
    assert (
        refused(verify_token(early, keys, NO_DENY, NOW, SKEW, CAP)).reason is Reason.NOT_YET_VALID
    )


def test_not_before_claim() -> None:
    issuer = TokenIssuer.generate()
    text = raw_token(issuer, claims(nbf=NOW + 30))
    verdict = refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP))
    assert verdict.reason is Reason.NOT_YET_VALID
    later = verify_token(text, keys_of(issuer), NO_DENY, NOW + 30, SKEW, CAP)
    assert isinstance(later, TokenAccepted)


def test_denied_account() -> None:
    issuer = TokenIssuer.generate()
    deny = DenyList.of(7, ["acct-bad"])
    keys = keys_of(issuer)
    verdict = refused(verify_token(issuer.token("acct-bad", NOW), keys, deny, NOW, SKEW, CAP))
    assert verdict.reason is Reason.DENIED_ACCOUNT
    assert "generation 7" in verdict.detail
    assert isinstance(
        verify_token(issuer.token("acct-ok", NOW), keys, deny, NOW, SKEW, CAP), TokenAccepted
    )


def test_key_bound_to_another_issuer() -> None:
    issuer = TokenIssuer.generate(issuer="wallet.example")
    impostor = TokenIssuer(issuer.private_key, issuer.kid, "other.example")
    text = impostor.token("acct-1", NOW)
    verdict = refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP))
    assert verdict.reason is Reason.UNKNOWN_KEY
    assert "other.example" in verdict.detail
    unbound = KeySet.of(NOW, [issuer.public(bind_issuer=False)])
    assert isinstance(verify_token(text, unbound, NO_DENY, NOW, SKEW, CAP), TokenAccepted)


def test_key_not_valid_at_iat() -> None:
    issuer = TokenIssuer.generate(not_before=NOW - 100, not_after=NOW + 100)
    keys = keys_of(issuer)
    before = issuer.token("acct-1", iat=NOW - 101, ttl_s=300)
    after = issuer.token("acct-1", iat=NOW + 100, ttl_s=300)
    for text, now in ((before, NOW), (after, NOW + 100)):
        verdict = refused(verify_token(text, keys, NO_DENY, now, SKEW, CAP))
        assert verdict.reason is Reason.KEY_NOT_VALID_AT_IAT


def test_rotation_old_and_new_key_side_by_side() -> None:
    switch = NOW
    old = TokenIssuer.generate(kid="2025", not_before=NOW - 86400, not_after=switch + 600)
    new = TokenIssuer(
        TokenIssuer.generate().private_key, b"2026", "wallet.example", switch - 600, switch + 86400
    )
    keys = KeySet.of(NOW - 1000, [old.public(), new.public()])
    # During the overlap both sign valid tokens.
    for issuer in (old, new):
        text = issuer.token("acct-1", iat=switch)
        assert isinstance(verify_token(text, keys, NO_DENY, switch, SKEW, CAP), TokenAccepted)
    # A token signed by the old key just before its window closed stays good until it expires,
    last = old.token("acct-1", iat=switch + 599, ttl_s=60)
    assert isinstance(verify_token(last, keys, NO_DENY, switch + 640, SKEW, CAP), TokenAccepted)
    # but the old key cannot sign after its window.
    stale = old.token("acct-1", iat=switch + 600)
    assert refused(verify_token(stale, keys, NO_DENY, switch + 601, SKEW, CAP)).reason is (
        Reason.KEY_NOT_VALID_AT_IAT
    )
    assert isinstance(
        verify_token(new.token("acct-1", iat=switch + 601), keys, NO_DENY, switch + 601, SKEW, CAP),
        TokenAccepted,
    )


MALFORMED_TEXTS = [
    "",
    "LT1:",
    "LT2:" + b45encode(b"\xd2\x84"),
    "lt1:BB8",
    "LT1:bb8",
    "LT1:A",
    "LT1:GGW",
    "LT1:" + b45encode(b"\xff\xff\xff"),
    "LT1:" + b45encode(cbor2.dumps([1, 2, 3, 4])),
    "LT1:" + b45encode(cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", {}, b"\xa0"]))),
    "LT1:" + b45encode(cbor2.dumps(cbor2.CBORTag(17, [b"\xa0", {}, b"\xa0", b""]))),
    "LT1:" + b45encode(cbor2.dumps(cbor2.CBORTag(18, [b"\x80", {}, b"\xa0", b""]))),
    "LT1:" + b45encode(cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", [], b"\xa0", b""]))),
    "LT1:" + b45encode(cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", {}, None, b""]))),
    "LT1:" + b45encode(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"\xa0", b""]))),
    "LT1:" + "A" * (MAX_TEXT_LEN + 2),
]


@pytest.mark.parametrize("text", MALFORMED_TEXTS)
def test_malformed_structure(text: str) -> None:
    issuer = TokenIssuer.generate()
    assert refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP)).reason is (
        Reason.MALFORMED
    )


@pytest.mark.parametrize(
    ("header", "unprotected"),
    [
        ({1: -8}, {4: b"k1"}),  # kid only unprotected: our profile wants it signed
        ({4: b"k1"}, {1: -8}),
        ({1: "EdDSA", 4: b"k1"}, None),
        ({1: -8, 4: "k1"}, None),
        ({1: -8, 4: b""}, None),
        ({1: -8, 4: b"k" * 65}, None),
        ({1: True, 4: b"k1"}, None),
        ({1: -8, 4: b"k1", 2: [99]}, None),  # crit
        ([1, -8], None),
    ],
)
def test_malformed_headers(header: object, unprotected: object) -> None:
    issuer = TokenIssuer.generate()
    text = raw_token(issuer, claims(), header=header, unprotected=unprotected)
    assert refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP)).reason is (
        Reason.MALFORMED
    )


SEC = "must be integer unix seconds"
TEXT = "must be 1..256 characters"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (claims(iss=None), f"iss (1) {TEXT}"),
        (claims(sub=None), f"sub (2) {TEXT}"),
        (claims(exp=None), "claims iat (6) and exp (4) are required"),
        (claims(iat=None), "claims iat (6) and exp (4) are required"),
        (claims(sub=""), f"sub (2) {TEXT}"),
        (claims(sub=42), f"sub (2) {TEXT}"),
        (claims(iss="x" * 257), f"iss (1) {TEXT}"),
        (claims(exp=float(NOW + 60)), f"exp (4) {SEC}"),
        (claims(exp=True), f"exp (4) {SEC}"),
        (claims(exp=-1), f"exp (4) {SEC}"),
        (claims(exp=1 << 40), f"exp (4) {SEC}"),
        (claims(exp=1 << 64), f"exp (4) {SEC}"),
        (claims(nbf="soon"), f"nbf (5) {SEC}"),
        (claims(iat=NOW + 61), f"exp {NOW + 60} is not after iat {NOW + 61}"),  # after exp
        (claims(cti="not bytes"), "cti (7) must be 1..64 bytes"),
        (claims(cti=b""), "cti (7) must be 1..64 bytes"),
        (claims(cti=b"x" * 65), "cti (7) must be 1..64 bytes"),
        ([1, 2], "claims must be a CBOR map"),
    ],
)
def test_malformed_claims(body: object, detail: str) -> None:
    issuer = TokenIssuer.generate()
    text = raw_token(issuer, body)
    verdict = refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP))
    assert (verdict.reason, verdict.detail) == (Reason.MALFORMED, detail)


def test_non_text_and_bad_clock_inputs_never_raise() -> None:
    issuer = TokenIssuer.generate()
    keys = keys_of(issuer)
    good = issuer.token("acct-1", NOW)
    assert refused(verify_token(None, keys, NO_DENY, NOW, SKEW, CAP)).reason is Reason.MALFORMED  # type: ignore[arg-type]
    assert refused(verify_token(b"LT1:", keys, NO_DENY, NOW, SKEW, CAP)).reason is Reason.MALFORMED  # type: ignore[arg-type]
    assert refused(verify_token(good, keys, NO_DENY, float("nan"), SKEW, CAP)).reason is (
        Reason.MALFORMED
    )
    assert refused(verify_token(good, keys, NO_DENY, NOW, -1, CAP)).reason is Reason.MALFORMED


def test_trailing_bytes_after_cose_are_malformed() -> None:
    issuer = TokenIssuer.generate()
    raw = b45decode(issuer.token("acct-1", NOW)[len(PREFIX) :])
    text = PREFIX + b45encode(raw + b"\x00")
    verdict = refused(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP))
    assert verdict.reason is Reason.MALFORMED
    assert "trailing" in verdict.detail


def test_trailing_newline_from_scanner_is_tolerated() -> None:
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", NOW) + "\r\n"
    assert isinstance(verify_token(text, keys_of(issuer), NO_DENY, NOW, SKEW, CAP), TokenAccepted)


def test_cwt_tag_around_cose_is_accepted() -> None:
    issuer = TokenIssuer.generate()
    raw = b45decode(issuer.token("acct-1", NOW)[len(PREFIX) :])
    wrapped = PREFIX + b45encode(b"\xd8\x3d" + raw)  # tag 61
    assert isinstance(
        verify_token(wrapped, keys_of(issuer), NO_DENY, NOW, SKEW, CAP), TokenAccepted
    )


def test_issue_token_rejects_nonsense() -> None:
    issuer = TokenIssuer.generate()
    with pytest.raises(ValueError, match="exp"):
        issue_token(issuer.private_key, "k1", "i", "a", NOW, NOW - 1, None)
    with pytest.raises(ValueError, match="non-empty"):
        issue_token(issuer.private_key, "", "i", "a", NOW, NOW, None)
