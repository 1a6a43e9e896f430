"""Entry passes: issue, verify offline, every refusal reason, properties and fuzzing."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import cbor2
import cv2
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lane.auth.base45 import b45decode, b45encode
from lane.auth.cli import main as cli_main
from lane.auth.cose import Alg, encode_sign1
from lane.auth.deny import DenyList
from lane.auth.issuer import PlazaPassKey, TokenIssuer
from lane.auth.keys import (
    KeySet,
    KeySetError,
    KeyUse,
    decode_keyset,
    encode_keyset,
    keyset_to_json,
    load_keyset,
    parse_keyset,
)
from lane.auth.passes import (
    PREFIX,
    EntryPass,
    PassAccepted,
    PassReason,
    PassRefused,
    issue_pass,
    pass_key,
    pass_valid_until,
    verify_pass,
)
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from lane.auth.tokens import Reason, TokenRefused, verify_token
from scanner.decoders import ZxingDecoder

NOW = 1_800_000_000
DAY = 86_400
P01 = PlazaPassKey.generate("P01")
P02 = PlazaPassKey.generate("P02", alg=Alg.ES256)
WALLET = TokenIssuer.generate(kid="wallet")
RETIRED = dataclasses.replace(PlazaPassKey.generate("P03", kid="old-P03"), not_after=NOW - DAY)
KEYS = KeySet.of(NOW, [P01.public(), P02.public(), WALLET.public(), RETIRED.public()])
ENTRY = EntryPass("P01", "l02", NOW - 3600, 2, bytes(range(12)), "ZJ-A12345")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def verify(text: object, now: float = NOW) -> PassAccepted | PassRefused:
    return verify_pass(text, KEYS, now, skew_s=5, max_age_s=7 * DAY)


def test_issued_pass_verifies_offline_and_is_compact() -> None:
    text = P01.issue(ENTRY)
    assert text.startswith(PREFIX)
    assert len(text) < 200  # fits a small QR on a receipt
    assert verify(text) == PassAccepted(ENTRY, P01.kid)
    es = P02.issue(dataclasses.replace(ENTRY, plaza="P02", plate=None))
    assert isinstance(verify(es), PassAccepted)


def _raw(claims: object, key: PlazaPassKey = P01) -> str:
    return PREFIX + b45encode(encode_sign1(key.private_key, key.kid, cbor2.dumps(claims)))


GOOD_CLAIMS: dict[int, object] = {1: "P01", 2: "l02", 3: NOW - 60, 4: 2, 5: b"\x01" * 8}
REFUSALS = [
    ("not a pass", "hello", PassReason.MALFORMED),
    ("token prefix", "LT1:ABC", PassReason.MALFORMED),
    ("bad base45", PREFIX + "!!!", PassReason.MALFORMED),
    ("not text", b"LP1:", PassReason.MALFORMED),
    ("too long", PREFIX + "A" * 600, PassReason.MALFORMED),
    ("claims not a map", _raw([1, 2]), PassReason.MALFORMED),
    ("unknown claim", _raw({**GOOD_CLAIMS, 9: 1}), PassReason.MALFORMED),
    ("class out of range", _raw({**GOOD_CLAIMS, 4: 1000}), PassReason.MALFORMED),
    ("class a bool", _raw({**GOOD_CLAIMS, 4: True}), PassReason.MALFORMED),
    ("pass id short", _raw({**GOOD_CLAIMS, 5: b"1234567"}), PassReason.MALFORMED),
    ("pass id text", _raw({**GOOD_CLAIMS, 5: "12345678"}), PassReason.MALFORMED),
    ("no time", _raw({k: v for k, v in GOOD_CLAIMS.items() if k != 3}), PassReason.MALFORMED),
    ("empty plaza", _raw({**GOOD_CLAIMS, 1: ""}), PassReason.MALFORMED),
    ("plate too long", _raw({**GOOD_CLAIMS, 6: "X" * 17}), PassReason.MALFORMED),
    ("another plaza's key", _raw({**GOOD_CLAIMS, 1: "P02"}), PassReason.UNKNOWN_KEY),
    ("retired plaza key", _raw({**GOOD_CLAIMS, 1: "P03"}, RETIRED), PassReason.RETIRED_KEY),
    ("entered in the future", _raw({**GOOD_CLAIMS, 3: NOW + 60}), PassReason.NOT_YET_VALID),
    ("older than its life", _raw({**GOOD_CLAIMS, 3: NOW - 8 * DAY}), PassReason.EXPIRED),
]


@pytest.mark.parametrize(("name", "text", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusal_reasons(name: str, text: str, reason: PassReason) -> None:
    verdict = verify(text)
    assert isinstance(verdict, PassRefused), name
    assert verdict.reason is reason, verdict
    assert verdict.detail and not verdict.detail.startswith("internal")


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ([1, 2], "claims must be a CBOR map"),
        ({**GOOD_CLAIMS, 9: 1}, "unknown claim labels ['9']"),
        ({**GOOD_CLAIMS, 1: ""}, "plaza (1) must be 1..32 characters"),
        ({**GOOD_CLAIMS, 2: "l\n2"}, "lane (2) must be 1..32 characters"),  # not printable
        ({**GOOD_CLAIMS, 3: 1 << 40}, f"time (3) must be an integer 0..{(1 << 40) - 1}"),
        (
            {k: v for k, v in GOOD_CLAIMS.items() if k != 3},
            f"time (3) must be an integer 0..{(1 << 40) - 1}",
        ),
        ({**GOOD_CLAIMS, 4: 1000}, "class (4) must be an integer 0..999"),
        ({**GOOD_CLAIMS, 4: True}, "class (4) must be an integer 0..999"),
        ({**GOOD_CLAIMS, 5: b"1234567"}, "pass id (5) must be 8..16 bytes"),
        ({**GOOD_CLAIMS, 6: "X" * 17}, "plate (6) must be 1..16 characters"),
    ],
)
def test_a_claim_refusal_names_the_claim_and_its_bound(claims: object, detail: str) -> None:
    verdict = verify(_raw(claims))
    assert verdict == PassRefused(PassReason.MALFORMED, detail)


def test_unknown_kid_and_token_keys_are_refused() -> None:
    stranger = PlazaPassKey.generate("P01", kid="stranger")
    assert verify(stranger.issue(ENTRY)) == PassRefused(
        PassReason.UNKNOWN_KEY, "no key with kid 'stranger'"
    )
    # A wallet issuer's key signs tokens, never passes: its signature does not make a pass.
    forged = issue_pass(WALLET.private_key, WALLET.kid, ENTRY)
    assert verify(forged) == PassRefused(PassReason.UNKNOWN_KEY, "no key with kid 'wallet'")


def test_a_pass_key_never_verifies_a_payment_token() -> None:
    impostor = TokenIssuer(P01.private_key, P01.kid, "wallet.example")
    verdict = verify_token(impostor.token("acct", NOW), KEYS, DenyList.empty(), NOW, 5, CAP)
    assert isinstance(verdict, TokenRefused) and verdict.reason is Reason.UNKNOWN_KEY


def test_forged_signature_and_wrong_algorithm() -> None:
    raw = bytearray(b45decode(P01.issue(ENTRY)[len(PREFIX) :]))
    raw[-1] ^= 1
    forged = verify(PREFIX + b45encode(bytes(raw)))
    assert isinstance(forged, PassRefused) and forged.reason is PassReason.BAD_SIGNATURE
    p02_with_p01_kid = PlazaPassKey(P02.private_key, P01.kid, "P01")
    verdict = verify(p02_with_p01_kid.issue(ENTRY))
    assert isinstance(verdict, PassRefused) and verdict.reason is PassReason.WRONG_ALGORITHM


def test_skew_and_lifetime_edges() -> None:
    text = P01.issue(dataclasses.replace(ENTRY, entered_at=NOW))
    assert isinstance(verify(text, NOW - 5), PassAccepted)
    assert verify(text, NOW - 6).reason is PassReason.NOT_YET_VALID  # type: ignore[union-attr]
    assert isinstance(verify(text, NOW + 7 * DAY + 5), PassAccepted)
    assert verify(text, NOW + 7 * DAY + 6).reason is PassReason.EXPIRED  # type: ignore[union-attr]
    nan = verify_pass(text, KEYS, float("nan"), 5, DAY)
    assert isinstance(nan, PassRefused) and nan.reason is PassReason.MALFORMED


@settings(max_examples=100, deadline=None)
@given(skew_s=st.integers(0, 600), lifetime_s=st.integers(1, 366 * DAY))
def test_a_pass_is_good_until_pass_valid_until_and_not_a_second_more(
    skew_s: int, lifetime_s: int
) -> None:
    """The used-pass store keeps an id by `pass_valid_until` (lane.auth.replay): the verifier
    must accept the pass up to that moment and call it expired one second after."""
    text = P01.issue(ENTRY)
    until = pass_valid_until(ENTRY.entered_at, skew_s, lifetime_s)
    assert until == ENTRY.entered_at + lifetime_s + skew_s
    assert isinstance(verify_pass(text, KEYS, until, skew_s, lifetime_s), PassAccepted)
    late = verify_pass(text, KEYS, until + 1, skew_s, lifetime_s)
    assert isinstance(late, PassRefused) and late.reason is PassReason.EXPIRED


def test_issue_refuses_what_no_exit_could_read() -> None:
    with pytest.raises(ValueError, match="class"):
        P01.issue(dataclasses.replace(ENTRY, vehicle_class=1000))
    with pytest.raises(ValueError, match="pass id"):
        P01.issue(dataclasses.replace(ENTRY, pass_id=b"short"))


def test_used_pass_ids_have_their_own_namespace() -> None:
    assert pass_key(ENTRY.pass_hex) == "pass:" + bytes(range(12)).hex()


def test_pass_keys_in_the_key_set_round_trip() -> None:
    for again in (
        parse_keyset(json.loads(keyset_to_json(KEYS)), "json"),
        decode_keyset(encode_keyset(KEYS)),
    ):
        key = again.get(P01.kid)
        assert key is not None and key.use is KeyUse.PASS and key.plaza == "P01"
        wallet = again.get(WALLET.kid)
        assert wallet is not None and wallet.use is KeyUse.TOKEN and wallet.plaza is None
    # A token key is written exactly as before passes existed: no `use`, no `plaza`.
    assert '"use"' not in keyset_to_json(KeySet.of(NOW, [WALLET.public()]))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"use": "sign"}, "keys[0].use: unknown use 'sign'"),
        ({"use": "pass"}, "keys[0].plaza: is missing"),
        ({"plaza": "P01"}, "keys[0].plaza: only pass keys"),
    ],
)
def test_key_set_use_errors(change: dict[str, str], problem: str) -> None:
    body = json.loads(keyset_to_json(KeySet.of(NOW, [WALLET.public()])))
    body["keys"][0].update(change)
    body["keys"][0].pop("issuer")
    with pytest.raises(KeySetError, match=re.escape(problem)):
        parse_keyset(body, "ks.json")


entries = st.builds(
    EntryPass,
    plaza=st.just("P01"),
    lane=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=32),
    entered_at=st.integers(NOW - 7 * DAY, NOW),
    vehicle_class=st.integers(0, 999),
    pass_id=st.binary(min_size=8, max_size=16),
    plate=st.none()
    | st.text(st.characters(min_codepoint=48, max_codepoint=90), min_size=1, max_size=16),
)


@FUZZ
@given(entries)
def test_every_issued_pass_verifies_to_itself(entry: EntryPass) -> None:
    assert verify(P01.issue(entry)) == PassAccepted(entry, P01.kid)


@FUZZ
@given(entries, st.data())
def test_no_claim_swap_survives_the_signature(entry: EntryPass, data: st.DataObject) -> None:
    """Claims from one genuine pass under another's signature are refused."""
    other = data.draw(entries.filter(lambda e: e != entry))
    a = b45decode(P01.issue(entry)[len(PREFIX) :])
    b = b45decode(P01.issue(other)[len(PREFIX) :])
    protected, _, payload, _ = cbor2.loads(a).value
    signature = cbor2.loads(b).value[3]
    swapped = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))
    verdict = verify(PREFIX + b45encode(swapped))
    assert isinstance(verdict, PassRefused) and verdict.reason is PassReason.BAD_SIGNATURE


def _check(text: object) -> None:
    verdict = verify(text)
    assert isinstance(verdict, PassAccepted | PassRefused)
    if isinstance(verdict, PassRefused):
        assert not verdict.detail.startswith("internal"), verdict.detail


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=100) | st.integers() | st.none())
def test_fuzz_never_raises(value: object) -> None:
    _check(value)
    if isinstance(value, str):
        _check(PREFIX + value)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_cose_bytes_never_raise(raw: bytes) -> None:
    _check(PREFIX + b45encode(raw))


def test_every_bit_flip_and_truncation_is_refused() -> None:
    text = P01.issue(ENTRY)
    for cut in range(len(text)):
        assert isinstance(verify(text[:cut]), PassRefused)
    raw = b45decode(text[len(PREFIX) :])
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            verdict = verify(PREFIX + b45encode(bytes(flipped)))
            # Only a change in the (unsigned, empty) unprotected header could pass; none here.
            assert isinstance(verdict, PassRefused), (i, bit)


def test_lane_keys_new_makes_a_plaza_pass_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["keys", "new", "--kid", "pass-P01", "--alg", "ed25519", "--out", str(tmp_path)]
    assert cli_main([*args, "--plaza", "P01"]) == 0
    keyset = load_keyset(tmp_path / "keyset.json")
    key = keyset.get(b"pass-P01")
    assert key is not None and (key.use, key.plaza) == (KeyUse.PASS, "P01")
    private = serialization.load_pem_private_key(
        (tmp_path / "pass-P01.key.pem").read_bytes(), password=None
    )
    plaza = PlazaPassKey(private, b"pass-P01", "P01")  # type: ignore[arg-type]
    entry = dataclasses.replace(ENTRY, entered_at=int(time.time()))
    assert verify_pass(plaza.issue(entry), keyset, time.time(), 5, DAY) == PassAccepted(
        entry, b"pass-P01"
    )
    assert cli_main(["keys", "check", str(tmp_path / "keyset.json")]) == 0
    assert "pass-P01: ed25519 pass key of plaza P01" in capsys.readouterr().out
    both = [*args[:3], "pass-P02", *args[4:], "--plaza", "P02", "--issuer", "x"]
    assert cli_main(both) == 2
    assert "--plaza makes a pass key" in capsys.readouterr().err


def test_lane_pass_issue_png_scan_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = ["keys", "new", "--kid", "pass-P02", "--alg", "es256", "--out", str(tmp_path)]
    assert cli_main([*new, "--plaza", "P02", "--not-before", str(NOW - DAY)]) == 0
    capsys.readouterr()
    key, keys, png = tmp_path / "pass-P02.key.pem", tmp_path / "keyset.json", tmp_path / "p.png"
    issue = ["pass", "issue", "--key", str(key), "--kid", "pass-P02", "--plaza", "P02"]
    assert cli_main([*issue, "--lane", "e3", "--class", "2", "--plate", "ZJA1",
                     "--at", str(NOW - 60), "--png", str(png)]) == 0  # fmt: skip
    text = capsys.readouterr().out.strip()
    [seen] = ZxingDecoder().decode(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE))
    assert seen.text == text
    verify = ["pass", "verify", "--keys", str(keys), "--now", str(NOW)]
    assert cli_main([*verify, text]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accepted: pass_id=") and "plaza=P02 lane=e3" in out
    assert "entered=2027-01-15T07:59:00Z class=2 plate=ZJA1 kid=pass-P02" in out
    assert cli_main([*verify, text[:-4]]) == 1
    assert capsys.readouterr().out.startswith("refused: ")
    assert cli_main([*verify, "--max-age-days", "0", text]) == 1
    assert capsys.readouterr().out.startswith("refused: expired: ")
    assert cli_main([*issue, "--lane", "e3", "--class", "1000"]) == 2
    assert "error: not a valid pass: class (4)" in capsys.readouterr().err
