"""The lane's cap on a token's lifetime (exp - iat), for v1 and compact v2 tokens alike."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lane.auth.base45 import b45encode
from lane.auth.cose import Alg, sig_structure, sign
from lane.auth.deny import DenyList
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.tokens import (
    DEFAULT_MAX_LIFETIME_S,
    Reason,
    TokenAccepted,
    TokenFormat,
    TokenRefused,
    issue_compact_token,
    issue_token,
    verify_token,
)
from lane.metrics import reason_label

NOW = 1_800_000_000
SKEW = 5.0
NO_DENY = DenyList.empty()
WEEK_S = 7 * 86_400
DOCS = Path(__file__).resolve().parents[2] / "docs"

ISSUERS = {alg: TokenIssuer.generate(alg, kid=f"k{i}") for i, alg in enumerate(Alg)}
KEYS = KeySet.of(NOW - 3600, [i.public() for i in ISSUERS.values()])
Issue = Callable[[TokenIssuer, int, int], str]


def v1(who: TokenIssuer, iat: int, exp: int) -> str:
    return issue_token(who.private_key, who.kid, who.issuer, "acct-1", iat, exp, b"n" * 16)


def v2(who: TokenIssuer, iat: int, exp: int) -> str:
    return issue_compact_token(who.private_key, who.kid, "acct-1", iat, exp)


FORMATS: dict[TokenFormat, Issue] = {TokenFormat.V1: v1, TokenFormat.V2: v2}


def signed_claims(who: TokenIssuer, fmt: TokenFormat, claims: dict[int, object]) -> str:
    """A token over claims the issue functions refuse to sign (exp not after iat)."""
    protected = cbor2.dumps({1: who.alg.cose_id, 4: who.kid})
    payload = cbor2.dumps(claims)
    parts = [protected, {}, payload, sign(who.private_key, sig_structure(protected, payload))]
    item = cbor2.CBORTag(18, parts) if fmt is TokenFormat.V1 else parts
    return fmt.value + b45encode(cbor2.dumps(item))


@pytest.mark.parametrize("alg", list(Alg))
@pytest.mark.parametrize("fmt", list(TokenFormat))
@pytest.mark.parametrize(
    ("cap", "lifetime", "accepted"),
    [
        (DEFAULT_MAX_LIFETIME_S, 60, True),  # what issuers make
        (DEFAULT_MAX_LIFETIME_S, DEFAULT_MAX_LIFETIME_S, True),  # exactly at the cap
        (DEFAULT_MAX_LIFETIME_S, DEFAULT_MAX_LIFETIME_S + 1, False),
        (DEFAULT_MAX_LIFETIME_S, 365 * 86_400, False),  # the year-long token of the issue
        (60, 60, True),
        (60, 61, False),
        (WEEK_S, WEEK_S, True),
        (WEEK_S, WEEK_S + 1, False),
    ],
)
def test_lifetime_at_the_cap_is_accepted_and_one_second_more_refused(
    alg: Alg, fmt: TokenFormat, cap: int, lifetime: int, accepted: bool
) -> None:
    iat = NOW - 10  # well inside the validity window of every row: only the lifetime decides
    text = FORMATS[fmt](ISSUERS[alg], iat, iat + lifetime)
    verdict = verify_token(text, KEYS, NO_DENY, NOW, SKEW, cap)
    if accepted:
        assert isinstance(verdict, TokenAccepted), verdict
        assert verdict.exp - verdict.iat == lifetime
        return
    assert isinstance(verdict, TokenRefused), verdict
    assert verdict.reason is Reason.LIFETIME_TOO_LONG
    assert verdict.detail == f"lifetime {lifetime} s (exp - iat), cap {cap} s"


@pytest.mark.parametrize("fmt", list(TokenFormat))
def test_a_long_lived_token_is_refused_for_its_lifetime_before_its_other_faults(
    fmt: TokenFormat,
) -> None:
    """Long-lived and also expired, or not yet valid: the lifetime is what is wrong with it."""
    who = ISSUERS[Alg.ED25519]
    long_lived = FORMATS[fmt](who, NOW - 10, NOW - 10 + DEFAULT_MAX_LIFETIME_S + 1)
    for now in (NOW - 3600, NOW + 86_400):
        verdict = verify_token(long_lived, KEYS, NO_DENY, now, SKEW, DEFAULT_MAX_LIFETIME_S)
        assert isinstance(verdict, TokenRefused) and verdict.reason is Reason.LIFETIME_TOO_LONG


@pytest.mark.parametrize("fmt", list(TokenFormat))
@pytest.mark.parametrize("exp", [NOW, NOW - 1])
def test_exp_not_after_iat_is_malformed(fmt: TokenFormat, exp: int) -> None:
    who = ISSUERS[Alg.ED25519]
    claims: dict[int, object] = {2: "acct-1", 4: exp, 6: NOW}
    if fmt is TokenFormat.V1:
        claims[1] = who.issuer
    verdict = verify_token(signed_claims(who, fmt, claims), KEYS, NO_DENY, NOW, SKEW, 900)
    assert isinstance(verdict, TokenRefused), verdict
    assert verdict.reason is Reason.MALFORMED
    assert verdict.detail == f"exp {exp} is not after iat {NOW}"
    with pytest.raises(ValueError, match="exp must be after iat"):
        FORMATS[fmt](who, NOW, exp)


@pytest.mark.parametrize("cap", [0, -1, float("nan"), float("inf")])
def test_a_cap_that_is_no_number_of_seconds_fails_closed(cap: float) -> None:
    text = v1(ISSUERS[Alg.ED25519], NOW, NOW + 60)
    verdict = verify_token(text, KEYS, NO_DENY, NOW, SKEW, cap)
    assert isinstance(verdict, TokenRefused) and verdict.reason is Reason.MALFORMED
    assert f"max_lifetime_s={cap}" in verdict.detail


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(list(TokenFormat)),
    cap=st.integers(1, WEEK_S),
    lifetime=st.integers(1, 2 * WEEK_S),
    age=st.integers(0, 2 * WEEK_S),
)
def test_every_accepted_token_lives_no_longer_than_the_cap(
    fmt: TokenFormat, cap: int, lifetime: int, age: int
) -> None:
    who = ISSUERS[Alg.ED25519]
    iat = NOW - min(age, lifetime - 1)  # "now" inside [iat, exp): the window never decides
    verdict = verify_token(FORMATS[fmt](who, iat, iat + lifetime), KEYS, NO_DENY, NOW, SKEW, cap)
    if isinstance(verdict, TokenAccepted):
        assert 0 < verdict.exp - verdict.iat <= cap
    else:
        assert lifetime > cap and verdict.reason is Reason.LIFETIME_TOO_LONG


@pytest.mark.parametrize("reason", list(Reason))
def test_every_refusal_reason_is_a_metrics_label_and_in_the_docs_table(reason: Reason) -> None:
    assert reason_label(reason.value) == reason.value
    table = (DOCS / "tokens.md").read_text()
    assert re.search(rf"^\| \d+ \| `{reason.value}` \|", table, re.MULTILINE), reason
