"""Adversarial checks of the offline-token path and the payment book (rules 4 and 5).

Each test is an attack or a failing world; the assertion is the defence that must hold.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import cbor2
import pytest

from lane.auth.acquirer import AcquirerClient
from lane.auth.authoriser import Authoriser, AuthRequest
from lane.auth.base45 import b45decode, b45encode
from lane.auth.cose import Alg, sig_structure, sign
from lane.auth.deny import DenyList
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.plaza import UsedTokenMsg, decode_used_token, encode_used_token
from lane.auth.policy import OfflinePolicy
from lane.auth.replay import ReplayStore
from lane.auth.resolution_store import (
    FINAL,
    TRANSITIONS,
    IllegalTransition,
    PaymentState,
    ResolutionStore,
    StoreError,
)
from lane.auth.resolver import Resolver
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from lane.auth.tokens import PREFIX, Reason, TokenAccepted, TokenRefused, verify_token
from lane.verifier import TokenVerifier
from lane.wire.codec import PayloadError, pack

S = PaymentState
NOW = 1_800_000_000
SKEW = 5.0
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 order
KEY = b"lane-secret-for-tests-0123456789"


def keys_of(*issuers: TokenIssuer) -> KeySet:
    return KeySet.of(NOW - 3600, [i.public() for i in issuers])


def sign1_parts(text: str) -> list[object]:
    return list(cbor2.loads(b45decode(text[len(PREFIX) :])).value)


def rebuild(parts: list[object]) -> str:
    return PREFIX + b45encode(cbor2.dumps(cbor2.CBORTag(18, parts)))


def hand_token(issuer: TokenIssuer, claims: dict[int, object]) -> str:
    protected = cbor2.dumps({1: issuer.alg.cose_id, 4: issuer.kid})
    payload = cbor2.dumps(claims)
    return rebuild(
        [protected, {}, payload, sign(issuer.private_key, sig_structure(protected, payload))]
    )


def verifier(tmp_path: Path, issuer: TokenIssuer, lane: str = "p07/l01") -> TokenVerifier:
    store = ReplayStore(tmp_path / "replay.sqlite")
    return TokenVerifier(lane, keys_of(issuer), DenyList.empty(), store, SKEW)


# -- rule 4: one code pays once, whatever the attacker does to the text ---------------------


async def test_malleated_es256_signature_is_still_the_same_token(tmp_path: Path) -> None:
    """(r, s) and (r, n - s) both verify under ECDSA: without a cti the id must not change."""
    issuer = TokenIssuer.generate(Alg.ES256)
    text = issuer.token("acct-1", NOW, ttl_s=60, nonce=None)
    parts = sign1_parts(text)
    sig = cast(bytes, parts[3])
    r, s = sig[:32], int.from_bytes(sig[32:], "big")
    parts[3] = r + (N - s).to_bytes(32, "big")
    twin = rebuild(parts)
    assert twin != text
    assert isinstance(
        verify_token(twin, keys_of(issuer), DenyList.empty(), NOW, SKEW, CAP), TokenAccepted
    )
    v = verifier(tmp_path, issuer)
    assert (await v.verify(text, NOW)).approved
    again = await v.verify(twin, NOW)
    assert (again.approved, again.reason) == (False, "replayed")


async def test_unsigned_header_and_cwt_tag_do_not_make_a_new_token(tmp_path: Path) -> None:
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", NOW, ttl_s=60, nonce=b"n" * 16)
    parts = sign1_parts(text)
    parts[1] = {99: "x" * 50}
    padded = rebuild(parts)
    tagged = PREFIX + b45encode(
        cbor2.dumps(cbor2.CBORTag(61, cbor2.CBORTag(18, sign1_parts(text))))
    )
    v = verifier(tmp_path, issuer)
    assert (await v.verify(text, NOW)).approved
    for variant in (padded, tagged, text + "\r\n", text + "\n"):
        result = await v.verify(variant, NOW)
        assert (result.approved, result.reason) == (False, "replayed"), variant


async def test_same_token_at_two_lanes_sharing_a_replay_file(tmp_path: Path) -> None:
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", NOW, nonce=b"m" * 16)
    a = TokenVerifier(
        "p07/l01", keys_of(issuer), DenyList.empty(), ReplayStore(tmp_path / "r"), SKEW
    )
    b = TokenVerifier(
        "p07/l02", keys_of(issuer), DenyList.empty(), ReplayStore(tmp_path / "r"), SKEW
    )
    results = [await a.verify(text, NOW), await b.verify(text, NOW + 0.001)]
    assert [r.approved for r in results] == [True, False]


async def test_a_refused_token_is_not_burnt(tmp_path: Path) -> None:
    """Refusals (deny list, clock) must not mark the token used: the driver may retry."""
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", NOW, nonce=b"r" * 16)
    v = verifier(tmp_path, issuer)
    v.deny = DenyList.of(1, ["acct-1"])
    assert (await v.verify(text, NOW)).reason == "denied_account"
    assert (await v.verify(text, NOW - 3600)).reason == "not_yet_valid"  # a clock gone backwards
    v.deny = DenyList.empty()
    assert (await v.verify(text, NOW)).approved


async def test_a_clock_going_backwards_does_not_reopen_a_used_token(tmp_path: Path) -> None:
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", NOW, ttl_s=60, nonce=b"c" * 16)
    v = verifier(tmp_path, issuer)
    assert (await v.verify(text, NOW + 30)).approved
    assert (await v.verify(text, NOW + 1)).reason == "replayed"
    v.replay.purge(NOW + 10)  # a purge run at a bad time keeps what could still be accepted
    assert (await v.verify(text, NOW + 1)).reason == "replayed"


async def test_a_wall_clock_jump_forward_then_corrected_never_readmits_a_used_token(
    tmp_path: Path,
) -> None:
    """Issue #11 item 7: the clock jumps ~15 min ahead, the periodic purge runs during the jump,
    then NTP steps it back. The token is still within its life and must stay used."""
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", NOW, ttl_s=60, nonce=b"j" * 16)
    v = verifier(tmp_path, issuer)
    assert (await v.verify(text, NOW + 5)).approved
    jumped = NOW + 5 + 15 * 60
    assert (await v.verify(text, jumped)).reason == "expired"  # during the jump: refused, not burnt
    v.replay.purge(jumped)
    v.replay.purge(jumped + 3600)  # however far it went
    for corrected in (NOW + 6, NOW + 30, NOW + 60 + SKEW - 1):
        assert (await v.verify(text, corrected)).reason == "replayed"


async def test_a_broken_replay_store_fails_closed(tmp_path: Path) -> None:
    issuer = TokenIssuer.generate()
    v = verifier(tmp_path, issuer)
    v.replay.close()
    result = await v.verify(issuer.token("acct-1", NOW, nonce=b"z" * 16), NOW)
    assert (result.approved, result.reason) == (False, "replay_store_error")
    assert v.replay_error is not None and "offline tokens refused" in v.replay_error


async def test_the_authoriser_refuses_when_the_replay_store_breaks(tmp_path: Path) -> None:
    issuer = TokenIssuer.generate()
    v = verifier(tmp_path, issuer)
    v.replay.close()
    auth = Authoriser(
        "p07/l01",
        cast(AcquirerClient, None),  # the token path never goes online
        cast(Resolver, None),
        v,
        OfflinePolicy("deny"),
        time.monotonic,
        lambda: float(NOW),
        account_key=KEY,
    )
    req = AuthRequest(
        "a1",
        "p07/l01",
        issuer.token("acct-1", NOW, nonce=b"y" * 16),
        "token",
        0,
        "CNY",
        time.monotonic() + 1,
    )
    decision = await auth.authorise(req)
    assert (decision.approved, decision.reason) == (False, "replay_store_error")


@pytest.mark.parametrize(
    "over",
    [
        {4: 1 << 40},  # past the NumericDate bound
        {4: (1 << 64) - 1},
        {4: -1},
        {6: -5},
        {4: float(NOW + 60)},
        {4: True},
        {4: NOW - 1, 6: NOW},  # exp before iat
        {2: ""},
        {2: "a" * 257},
        {2: 7},
        {1: b"wallet.example"},
        {7: b""},
        {7: "text-cti"},
        {7: b"x" * 65},
    ],
)
def test_claim_edge_values_are_malformed(over: dict[int, object]) -> None:
    issuer = TokenIssuer.generate()
    claims: dict[int, object] = {1: issuer.issuer, 2: "acct-1", 4: NOW + 60, 6: NOW, 7: b"n" * 8}
    claims.update(over)
    verdict = verify_token(
        hand_token(issuer, claims), keys_of(issuer), DenyList.empty(), NOW, SKEW, CAP
    )
    assert isinstance(verdict, TokenRefused) and verdict.reason is Reason.MALFORMED, verdict


def test_unicode_lookalike_account_is_a_different_account() -> None:
    """The deny list matches exact account refs: a lookalike is another account (signed by the
    issuer, so a driver cannot pick it), never an error."""
    issuer = TokenIssuer.generate()
    deny = DenyList.of(1, ["acct-1"])
    for sub in ("acct\u20111", "acct-1\u200b", "\uff41cct-1", "acct-1\x00"):
        text = issuer.token(sub, NOW, nonce=sub.encode()[:16])
        verdict = verify_token(text, keys_of(issuer), deny, NOW, SKEW, CAP)
        assert isinstance(verdict, TokenAccepted) and verdict.account_ref == sub


def test_nonsense_clock_values_never_accept() -> None:
    issuer = TokenIssuer.generate()
    text = issuer.token("acct-1", NOW, nonce=b"q" * 16)
    for now, skew in ((float("nan"), SKEW), (float("inf"), SKEW), (NOW, -1.0), (NOW, float("inf"))):
        assert isinstance(
            verify_token(text, keys_of(issuer), DenyList.empty(), now, skew, CAP), TokenRefused
        )


@pytest.mark.parametrize(
    "body",
    [
        {"token_id": "t", "exp": 1 << 40, "lane": "p/l", "ts": 1.0},
        {"token_id": "t", "exp": -1, "lane": "p/l", "ts": 1.0},
        {"token_id": "t", "exp": True, "lane": "p/l", "ts": 1.0},
        {"token_id": "", "exp": 1, "lane": "p/l", "ts": 1.0},
        {"token_id": "t" * 129, "exp": 1, "lane": "p/l", "ts": 1.0},
        {"token_id": "t", "exp": 1, "lane": "", "ts": 1.0},
        {"token_id": "t", "exp": 1, "lane": "p/l", "ts": float("nan")},
    ],
)
def test_plaza_messages_out_of_range_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(PayloadError):
        decode_used_token(pack(body))
    assert decode_used_token(encode_used_token(UsedTokenMsg("t", 1, "p/l", 1.0))).exp == 1


# -- rule 5: a payment is settled or reversed, never both, never neither ---------------------


def test_the_payment_book_never_goes_from_settled_to_reversed_or_back() -> None:
    def reachable(start: PaymentState) -> set[PaymentState]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable(S.SETTLED) == {S.SETTLED}
    assert reachable(S.REVERSED) == {S.REVERSED}
    assert S.SETTLED not in reachable(S.GIVEN_UP)
    for state in PaymentState:
        assert reachable(state) & FINAL, f"{state} can never be resolved"


def test_begin_twice_never_pays_twice_and_moves_are_checked(tmp_path: Path) -> None:
    store = ResolutionStore(tmp_path / "book.db")
    kw = {"auth_id": "a", "lane": "p/l", "amount_minor": 0, "currency": "CNY", "method": "emv"}
    kw["network"] = "acquirer"
    _, first = store.begin("pay_1", now_ms=1, **kw)  # type: ignore[arg-type]
    _, second = store.begin("pay_1", now_ms=2, **kw)  # type: ignore[arg-type]
    assert (first, second) == (True, False)
    store.move("pay_1", S.CHARGED, 3)
    store.move("pay_1", S.GIVEN_UP, 4)
    with pytest.raises(IllegalTransition):
        store.move("pay_1", S.SETTLED, 5)  # given up: the record may no longer claim it
    store.move("pay_1", S.REVERSED, 6)
    with pytest.raises(IllegalTransition):
        store.move("pay_1", S.SETTLED, 7)
    row = store.get("pay_1")
    assert row is not None and row.state is S.REVERSED
    # A negative amount never enters the book.
    with pytest.raises(StoreError):
        store.begin("pay_2", now_ms=1, **{**kw, "amount_minor": -1})  # type: ignore[arg-type]
    store.close()


@pytest.mark.parametrize("amount", [-1, True, 1.5, "450"])
def test_auth_request_refuses_bad_amounts(amount: object) -> None:
    with pytest.raises(ValueError):
        AuthRequest("a", "p/l", "x", "payment_code", amount, "CNY", 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("currency", ["cny", "CN", "CNYY", "C1Y", "", "\uff23\uff2e\uff39"])
def test_auth_request_refuses_bad_currencies(currency: str) -> None:
    with pytest.raises(ValueError):
        AuthRequest("a", "p/l", "x", "payment_code", 1, currency, 1.0)
