"""verify_token never raises and never accepts altered content, whatever it is fed."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lane.auth.base45 import ALPHABET, b45decode, b45encode
from lane.auth.cose import Alg, sig_structure, sign
from lane.auth.deny import DenyList
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from lane.auth.tokens import (
    PREFIX,
    Reason,
    TokenAccepted,
    TokenRefused,
    TokenVerdict,
    verify_token,
)

NOW = 1_800_000_000
ISSUERS = {alg: TokenIssuer.generate(alg, kid=alg.value) for alg in Alg}
KEYS = KeySet.of(NOW, [i.public() for i in ISSUERS.values()])
GOOD = {alg: i.token("acct-1", NOW, nonce=b"0123456789abcdef") for alg, i in ISSUERS.items()}
EXPECTED = {alg: verify_token(t, KEYS, DenyList.empty(), NOW, 5, CAP) for alg, t in GOOD.items()}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str, original: TokenVerdict | None = None) -> TokenVerdict:
    verdict = verify_token(text, KEYS, DenyList.empty(), NOW, 5, CAP)
    if isinstance(verdict, TokenRefused):
        assert not verdict.detail.startswith("internal"), verdict.detail
    else:
        # Only a change outside the signed bytes (the unprotected header) may still pass,
        # and then it must be the very same token.
        assert verdict == original, text
    return verdict


def test_valid_tokens_are_accepted() -> None:
    assert all(isinstance(v, TokenAccepted) for v in EXPECTED.values())


@pytest.mark.parametrize("alg", list(Alg))
def test_every_truncation_is_refused(alg: Alg) -> None:
    text = GOOD[alg]
    for cut in range(len(text)):
        assert isinstance(check(text[:cut]), TokenRefused)


@pytest.mark.parametrize("alg", list(Alg))
def test_every_bit_flip_is_refused(alg: Alg) -> None:
    raw = b45decode(GOOD[alg][len(PREFIX) :])
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            assert isinstance(check(PREFIX + b45encode(bytes(flipped))), TokenRefused), (i, bit)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    check(text)


@FUZZ
@given(st.text(alphabet=ALPHABET, max_size=400))
def test_random_base45_after_prefix(text: str) -> None:
    check(PREFIX + text)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_after_prefix(data: bytes) -> None:
    check(PREFIX + b45encode(data))


CBOR_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.binary(max_size=40),
    st.text(max_size=20),
)
CBOR_VALUES = st.recursive(
    CBOR_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.integers(-10, 10), st.text(max_size=4)), inner, max_size=5),
        st.builds(cbor2.CBORTag, st.integers(0, 300), inner),
    ),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    protected=st.one_of(CBOR_VALUES, st.dictionaries(st.integers(-3, 8), CBOR_VALUES, max_size=4)),
    unprotected=CBOR_VALUES,
    payload=st.one_of(CBOR_VALUES, st.dictionaries(st.integers(-2, 9), CBOR_VALUES, max_size=8)),
    signature=st.one_of(st.binary(min_size=64, max_size=64), CBOR_VALUES),
    encode_inner=st.booleans(),
)
def test_cose_shaped_garbage(
    protected: object, unprotected: object, payload: object, signature: object, encode_inner: bool
) -> None:
    try:
        if encode_inner:
            protected, payload = cbor2.dumps(protected), cbor2.dumps(payload)
        raw = cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, signature]))
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        return
    check(PREFIX + b45encode(raw))


@FUZZ
@given(
    alg=st.sampled_from(list(Alg)),
    position=st.integers(min_value=0, max_value=400),
    edit=st.sampled_from(["replace", "insert", "delete"]),
    char=st.sampled_from(ALPHABET),
)
def test_single_edits_of_a_valid_token(alg: Alg, position: int, edit: str, char: str) -> None:
    text = GOOD[alg]
    i = position % len(text)
    if edit == "replace":
        mutated = text[:i] + char + text[i + 1 :]
    elif edit == "insert":
        mutated = text[:i] + char + text[i:]
    else:
        mutated = text[:i] + text[i + 1 :]
    check(mutated, EXPECTED[alg] if mutated == text else None)


@FUZZ
@given(
    alg=st.sampled_from(list(Alg)),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_byte_overwrites_of_a_valid_token(alg: Alg, edits: list[tuple[int, int]]) -> None:
    raw = bytearray(b45decode(GOOD[alg][len(PREFIX) :]))
    for position, value in edits:
        raw[position % len(raw)] = value
    check(PREFIX + b45encode(bytes(raw)), EXPECTED[alg])


# Times near now, and far enough before it that an exp near now makes a lifetime over the cap.
TIMES = st.integers(NOW - 100, NOW + 100) | st.integers(NOW - 3 * CAP, NOW - CAP)
CLAIM_VALUES = st.one_of(CBOR_LEAVES, TIMES, st.just("acct-1"), st.binary(max_size=70))


@FUZZ
@given(claims=st.dictionaries(st.integers(-1, 9), CLAIM_VALUES, max_size=8))
def test_signed_random_claims(claims: dict[int, object]) -> None:
    # A genuine signature over arbitrary claims: the claims parser alone must hold the line.
    issuer = ISSUERS[Alg.ED25519]
    protected = cbor2.dumps({1: -8, 4: issuer.kid})
    payload = cbor2.dumps(claims)
    signature = sign(issuer.private_key, sig_structure(protected, payload))
    text = PREFIX + b45encode(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))
    verdict = verify_token(text, KEYS, DenyList.empty(), NOW, 5, CAP)
    if isinstance(verdict, TokenRefused):
        assert not verdict.detail.startswith("internal"), verdict.detail
        if verdict.reason is Reason.LIFETIME_TOO_LONG:
            assert claims[4] - claims[6] > CAP  # type: ignore[operator]
        return
    assert isinstance(verdict.account_ref, str) and isinstance(verdict.exp, int)
    assert verdict.iat < verdict.exp <= verdict.iat + CAP and verdict.exp + 5 > NOW
