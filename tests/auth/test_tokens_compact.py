"""The compact v2 token ("LT2:"): fits QR version 5-L, verifies beside v1 during the transition."""

from __future__ import annotations

import hashlib

import cbor2
import numpy as np
import pytest
import zxingcpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lane.auth.base45 import ALPHABET, b45decode, b45encode
from lane.auth.cose import Alg, sig_structure, sign
from lane.auth.deny import DenyList
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.tokens import (
    COMPACT_MAX_TEXT,
    Reason,
    TokenAccepted,
    TokenFormat,
    TokenRefused,
    TokenVerdict,
    issue_compact_token,
    qr_ec_level,
    token_format,
    verify_token,
)
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from scanner.payload import TokenPayload, classify

NOW = 1_800_000_000
NO_DENY = DenyList.empty()
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
# issue_compact_token(RFC 8032 test 1 key, kid "k1", sub "acct-42", iat 1800000000, exp +60)
GOLDEN_V2_HEX = (
    "84"  # array of 4, no tag: the "LT2:" prefix says what it is
    "47a2012704426b31"  # bstr(7) protected {1: -8, 4: h'6b31' "k1"}
    "a0"  # unprotected {}
    "56"  # bstr(22) payload
    "a3"  # claims map of 3: no iss (the key set binds the key to its issuer), no cti
    "0267616363742d3432"  # 2 sub: "acct-42"
    "041a6b49d23c"  # 4 exp: 1800000060
    "061a6b49d200"  # 6 iat: 1800000000
    "5840"  # bstr(64) signature
    "9fb73204f44d87907e56c154d7ea70ab9e02b1f9366073cd8946d0ad4a097f44"
    "8e0251c0fcf1eb085e050d0d10eab6752c76a3fa4bb1299985b232bef9bf9c0a"
)


def issuer(alg: Alg = Alg.ED25519, kid: str = "k1", name: str = "wallet.example") -> TokenIssuer:
    return TokenIssuer.generate(alg, kid=kid, issuer=name)


def keys_of(*issuers: TokenIssuer, bind: bool = True) -> KeySet:
    return KeySet.of(NOW - 3600, [i.public(bind_issuer=bind) for i in issuers])


def refused(verdict: object) -> TokenRefused:
    assert isinstance(verdict, TokenRefused), verdict
    return verdict


def compact_raw(who: TokenIssuer, claims: dict[int, object], *, tagged: bool = False) -> str:
    """A v2 text built by hand, for shapes issue_compact_token refuses to make."""
    protected = cbor2.dumps({1: who.alg.cose_id, 4: who.kid})
    payload = cbor2.dumps(claims)
    parts = [protected, {}, payload, sign(who.private_key, sig_structure(protected, payload))]
    item = cbor2.CBORTag(18, parts) if tagged else parts
    return TokenFormat.V2.value + b45encode(cbor2.dumps(item))


def test_golden_compact_token_bytes() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
    text = issue_compact_token(key, "k1", "acct-42", NOW, NOW + 60)
    assert text.startswith("LT2:")
    assert b45decode(text[4:]).hex() == GOLDEN_V2_HEX


@pytest.mark.parametrize("alg", list(Alg))
def test_compact_token_verifies_with_issuer_from_the_key(alg: Alg) -> None:
    who = issuer(alg)
    text = who.compact_token("acct-001", NOW)
    verdict = verify_token(text, keys_of(who), NO_DENY, NOW + 1, 5, CAP)
    assert isinstance(verdict, TokenAccepted)
    assert (verdict.issuer, verdict.account_ref, verdict.exp) == (
        "wallet.example",
        "acct-001",
        NOW + 60,
    )
    # No cti: the id is the hash of the signed bytes, the same whatever the (ES256) signature.
    signed = sig_structure(
        cbor2.dumps({1: alg.cose_id, 4: b"k1"}), cbor2.loads(b45decode(text[4:]))[2]
    )
    assert verdict.token_id == hashlib.sha256(signed).hexdigest()


def test_v1_and_v2_verify_side_by_side_during_the_transition() -> None:
    who = issuer()
    keys = keys_of(who)
    v1, v2 = who.token("acct-001", NOW), who.compact_token("acct-001", NOW)
    assert (token_format(v1), token_format(v2)) == (TokenFormat.V1, TokenFormat.V2)
    for text in (v1, v2):
        assert isinstance(verify_token(text, keys, NO_DENY, NOW, 5, CAP), TokenAccepted)
        assert isinstance(classify(text), TokenPayload)


def test_compact_token_fits_qr_version_5_at_level_l_and_reads_back() -> None:
    who = issuer(kid="k9")
    text = who.compact_token("12345678", NOW)  # the largest the budget allows with a 2-byte kid
    assert len(text) == COMPACT_MAX_TEXT
    assert qr_ec_level(text) == "L"
    barcode = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level="L")
    # Version 5 is 17 + 4 * 5 = 37 modules, plus the 4-module quiet zone on each side.
    assert np.asarray(zxingcpp.write_barcode_to_image(barcode, scale=1)).shape == (45, 45)
    image = np.asarray(zxingcpp.write_barcode_to_image(barcode, scale=4))
    assert [(b.text, b.ec_level) for b in zxingcpp.read_barcodes(image)] == [(text, "L")]
    v1 = who.token("12345678", NOW)
    assert qr_ec_level(v1) == "M"
    big = zxingcpp.create_barcode(v1, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    assert np.asarray(zxingcpp.write_barcode_to_image(big, scale=1)).shape[0] > 45


def test_compact_token_that_would_not_fit_is_not_issued() -> None:
    who = issuer(kid="k9")
    with pytest.raises(
        ValueError,
        match=r"would be 157 characters, limit 154 \(QR version 5-L\): kid 2 bytes, account 9",
    ):
        who.compact_token("123456789", NOW)
    with pytest.raises(ValueError, match="kid and account_ref must be non-empty"):
        who.compact_token("", NOW)


def test_compact_token_needs_a_key_bound_to_an_issuer() -> None:
    who = issuer()
    verdict = refused(
        verify_token(who.compact_token("a1", NOW), keys_of(who, bind=False), NO_DENY, NOW, 5, CAP)
    )
    assert verdict.reason is Reason.UNKNOWN_KEY
    assert "bound to no issuer" in verdict.detail


def test_compact_token_with_an_iss_must_match_the_key() -> None:
    who = issuer(name="w")  # an iss costs room: only a very short one fits
    base = {2: "a1", 4: NOW + 60, 6: NOW}
    good = compact_raw(who, {1: "w", **base})
    assert isinstance(verify_token(good, keys_of(who), NO_DENY, NOW, 5, CAP), TokenAccepted)
    other = compact_raw(who, {1: "x", **base})
    assert (
        refused(verify_token(other, keys_of(who), NO_DENY, NOW, 5, CAP)).reason
        is Reason.UNKNOWN_KEY
    )


def test_a_v1_without_iss_is_still_malformed() -> None:
    who = issuer()
    body = b45decode(who.compact_token("a1", NOW)[4:])
    # The same signed claims under the v1 prefix, tagged: v1 still requires iss.
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(body)))
    verdict = refused(verify_token("LT1:" + b45encode(tagged), keys_of(who), NO_DENY, NOW, 5, CAP))
    assert (verdict.reason, verdict.detail) == (
        Reason.MALFORMED,
        "iss (1) must be 1..256 characters",
    )


def test_prefix_and_tagging_must_agree() -> None:
    who = issuer()
    keys = keys_of(who)
    tagged_v2 = compact_raw(who, {2: "a1", 4: NOW + 60, 6: NOW}, tagged=True)
    verdict = refused(verify_token(tagged_v2, keys, NO_DENY, NOW, 5, CAP))
    assert (verdict.reason, verdict.detail) == (
        Reason.MALFORMED,
        "an untagged COSE_Sign1 was expected, got CBOR tag 18",
    )
    untagged_v1 = "LT1:" + who.compact_token("a1", NOW)[4:]
    verdict = refused(verify_token(untagged_v1, keys, NO_DENY, NOW, 5, CAP))
    assert verdict.detail == "not a COSE_Sign1 (CBOR tag 18)"


def test_compact_text_over_the_qr_budget_is_refused_before_decoding() -> None:
    verdict = refused(verify_token("LT2:" + "0" * 151, KeySet(0), NO_DENY, NOW, 5, CAP))
    assert verdict.detail == "compact token of 155 characters, limit 154"
    unknown = refused(verify_token("LT3:" + "0" * 150, KeySet(0), NO_DENY, NOW, 5, CAP))
    assert unknown.detail == "does not start with 'LT1:' or 'LT2:'"


@pytest.mark.parametrize(
    ("now", "deny", "reason"),
    [
        (NOW + 65, NO_DENY, Reason.EXPIRED),
        (NOW - 6, NO_DENY, Reason.NOT_YET_VALID),
        (NOW, DenyList(1, frozenset({"a1"})), Reason.DENIED_ACCOUNT),
    ],
)
def test_compact_token_refusals_are_those_of_v1(now: int, deny: DenyList, reason: Reason) -> None:
    who = issuer()
    assert (
        refused(verify_token(who.compact_token("a1", NOW), keys_of(who), deny, now, 5, CAP)).reason
        is reason
    )


def test_every_bit_flip_of_a_compact_token_is_refused() -> None:
    who = issuer()
    keys = keys_of(who)
    text = who.compact_token("a1", NOW)
    raw = b45decode(text[4:])
    for i in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[i // 8] ^= 1 << (i % 8)
        verdict = verify_token("LT2:" + b45encode(bytes(flipped)), keys, NO_DENY, NOW, 5, CAP)
        assert isinstance(verdict, TokenRefused), i
        assert not verdict.detail.startswith("internal"), verdict.detail


FUZZ_ISSUER = issuer()
FUZZ_KEYS = keys_of(FUZZ_ISSUER)
FUZZ_GOOD = FUZZ_ISSUER.compact_token("acct-1", NOW)
FUZZ_EXPECTED = verify_token(FUZZ_GOOD, FUZZ_KEYS, NO_DENY, NOW, 5, CAP)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> TokenVerdict:
    verdict = verify_token(text, FUZZ_KEYS, NO_DENY, NOW, 5, CAP)
    if isinstance(verdict, TokenRefused):
        assert not verdict.detail.startswith("internal"), verdict.detail
    else:
        assert verdict == FUZZ_EXPECTED and text == FUZZ_GOOD, text
    return verdict


@FUZZ
@given(
    position=st.integers(min_value=0, max_value=200),
    edit=st.sampled_from(["replace", "insert", "delete"]),
    char=st.sampled_from(ALPHABET),
)
def test_single_edits_of_a_compact_token(position: int, edit: str, char: str) -> None:
    text = FUZZ_GOOD
    i = position % len(text)
    if edit == "replace":
        check(text[:i] + char + text[i + 1 :])
    elif edit == "insert":
        check(text[:i] + char + text[i:])
    else:
        check(text[:i] + text[i + 1 :])


@FUZZ
@given(st.text(alphabet=ALPHABET, max_size=160))
def test_random_base45_after_the_compact_prefix(text: str) -> None:
    check("LT2:" + text)


@FUZZ
@given(claims=st.dictionaries(st.integers(-1, 9), st.one_of(
    st.none(), st.integers(NOW - 100, NOW + 100), st.integers(NOW - 3 * CAP, NOW - CAP),
    st.text(max_size=10), st.binary(max_size=20)
), max_size=6))  # fmt: skip
def test_signed_random_claims_in_a_compact_token(claims: dict[int, object]) -> None:
    # A genuine signature over arbitrary claims: the claims parser alone must hold the line.
    text = compact_raw(FUZZ_ISSUER, claims)
    verdict = verify_token(text, FUZZ_KEYS, NO_DENY, NOW, 5, CAP)
    if isinstance(verdict, TokenRefused):
        assert not verdict.detail.startswith("internal"), verdict.detail
        if verdict.reason is Reason.LIFETIME_TOO_LONG:
            assert claims[4] - claims[6] > CAP  # type: ignore[operator]
        return
    assert verdict.issuer == "wallet.example"
    assert claims.get(1, "wallet.example") == "wallet.example"
    assert isinstance(verdict.account_ref, str) and verdict.iat < verdict.exp <= verdict.iat + CAP
