from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lane.auth.cose import Alg
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import (
    KeySet,
    KeySetError,
    decode_keyset,
    encode_keyset,
    keyset_stale,
    keyset_to_json,
    load_keyset,
    no_token_key_now,
    parse_keyset,
)
from lane.wire.codec import pack
from sim.codes import CodeFactory

ED = TokenIssuer.generate(Alg.ED25519, kid="k-ed", issuer="wallet.example", not_before=1000)
ES = TokenIssuer.generate(Alg.ES256, kid=b"\x00\xff", issuer="bank.example", not_before=1000)


def spki_b64(issuer: TokenIssuer) -> str:
    return base64.b64encode(spki(issuer.private_key.public_key())).decode()


def spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def good_body() -> dict[str, Any]:
    return {
        "v": 1,
        "issued_at": "2027-01-01T00:00:00Z",
        "keys": [
            {
                "kid": "k-ed",
                "alg": "ed25519",
                "issuer": "wallet.example",
                "public_key": spki_b64(ED),
                "not_before": "2026-12-01T00:00:00+00:00",
                "not_after": 1830000000,
            }
        ],
    }


def test_json_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "keyset.json"
    path.write_text(json.dumps(good_body()))
    keyset = load_keyset(path)
    assert keyset.issued_at == 1798761600
    key = keyset.get(b"k-ed")
    assert key is not None
    assert key.alg is Alg.ED25519
    assert key.issuer == "wallet.example"
    assert key.not_before == 1796083200
    assert key.not_after == 1830000000
    assert key.valid_at(1796083200) and not key.valid_at(1830000000)


def test_json_and_msgpack_round_trips(tmp_path: Path) -> None:
    keyset = KeySet.of(1_800_000_000, [ED.public(), ES.public(bind_issuer=False)])
    path = tmp_path / "keyset.json"
    path.write_text(keyset_to_json(keyset))
    text = path.read_text()
    assert '"kid_hex": "00ff"' in text and '"kid": "k-ed"' in text
    for loaded in (load_keyset(path), decode_keyset(encode_keyset(keyset))):
        assert loaded.issued_at == keyset.issued_at
        assert set(loaded.keys) == {b"k-ed", b"\x00\xff"}
        for kid, key in keyset.keys.items():
            other = loaded.keys[kid]
            assert (other.alg, other.issuer, other.not_before, other.not_after) == (
                key.alg,
                key.issuer,
                key.not_before,
                key.not_after,
            )
            assert spki(other.public_key) == spki(key.public_key)


def test_pem_public_key_is_accepted() -> None:
    body = good_body()
    body["keys"][0]["public_key"] = (
        ED.private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert parse_keyset(body, "x").get(b"k-ed") is not None


def broken(path: str, value: object) -> dict[str, Any]:
    body = good_body()
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    index: Any = int(last) if last.isdigit() else last
    if value is DELETE:
        del target[index]
    else:
        target[index] = value
    return body


DELETE = object()
OTHER_CURVE = (
    ec.generate_private_key(ec.SECP384R1())
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)


@pytest.mark.parametrize(
    ("path", "value", "key", "problem"),
    [
        ("v", DELETE, "v", "is missing"),
        ("v", 2, "v", "newer than this lane"),
        ("issued_at", "2027-01-01T00:00:00", "issued_at", "no UTC offset"),
        ("issued_at", "yesterday", "issued_at", "not an RFC 3339 time"),
        ("issued_at", 1.5, "issued_at", "must be an integer"),
        ("keys", {}, "keys", "must be a list"),
        ("keys.0", "k", "keys[0]", "must be a table"),
        ("keys.0.kid", "", "keys[0].kid", "non-empty"),
        ("keys.0.kid", "k" * 65, "keys[0].kid", "at most 64"),
        ("keys.0.alg", "rsa", "keys[0].alg", "unknown algorithm 'rsa' (use ed25519, es256)"),
        ("keys.0.alg", "es256", "keys[0].public_key", "holds an ed25519 key but alg says es256"),
        ("keys.0.public_key", "not base64!", "keys[0].public_key", "is not a public key"),
        ("keys.0.public_key", base64.b64encode(b"junk").decode(), "keys[0].public_key", "not a"),
        (
            "keys.0.public_key",
            base64.b64encode(OTHER_CURVE).decode(),
            "keys[0].public_key",
            "unsupported key type",
        ),
        ("keys.0.public_key", 42, "keys[0].public_key", "must be base64"),
        ("keys.0.not_after", "2026-01-01T00:00:00Z", "keys[0].not_after", "later than not_before"),
        ("keys.0.not_before", DELETE, "keys[0].not_before", "is missing"),
        ("keys.0.issuer", 7, "keys[0].issuer", "non-empty string"),
        ("keys.0.kid_hex", "zz", "keys[0].kid_hex", "hex"),
    ],
)
def test_errors_name_file_key_and_problem(path: str, value: object, key: str, problem: str) -> None:
    with pytest.raises(KeySetError) as info:
        parse_keyset(broken(path, value), "/etc/lane/keyset.json")
    err = info.value
    assert err.source == "/etc/lane/keyset.json"
    assert err.key == key
    assert problem in err.problem
    assert str(err).startswith(f"/etc/lane/keyset.json: {key}: ")


def test_duplicate_kid() -> None:
    body = good_body()
    body["keys"].append(dict(body["keys"][0]))
    with pytest.raises(KeySetError, match=r"keys\[1\]\.kid: duplicate kid 'k-ed'"):
        parse_keyset(body, "f")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KeySetError, match="cannot read"):
        load_keyset(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KeySetError, match=f"{bad}: not JSON"):
        load_keyset(bad)
    bad.write_text("[]")
    with pytest.raises(KeySetError, match="must hold a JSON object"):
        load_keyset(bad)
    # Two values for one key, at any depth: refused, never read as the last one.
    bad.write_text('{"v": 1, "issued_at": 1, "keys": [], "issued_at": 4611686018427387904}')
    with pytest.raises(KeySetError, match="duplicate key 'issued_at'"):
        load_keyset(bad)
    bad.write_text('{"v": 1, "issued_at": 1, "keys": [{"kid": "a", "kid": "b"}]}')
    with pytest.raises(KeySetError, match="duplicate key 'kid'"):
        load_keyset(bad)


def test_msgpack_errors() -> None:
    with pytest.raises(KeySetError, match="mqtt lane/p1/keys: not msgpack"):
        decode_keyset(b"\xc1garbage", "mqtt lane/p1/keys")
    with pytest.raises(KeySetError, match="missing schema version"):
        decode_keyset(msgpack.packb({"keys": []}))
    with pytest.raises(KeySetError, match="issued_at: is missing"):
        decode_keyset(pack({"keys": []}))


def test_stale_and_supersedes() -> None:
    older = KeySet(1000)
    newer = KeySet(2000)
    assert not keyset_stale(newer, now=2000 + 3600, max_age_s=3600)
    assert keyset_stale(newer, now=2000 + 3601, max_age_s=3600)
    assert newer.supersedes(older)
    assert not older.supersedes(newer)
    assert not newer.supersedes(KeySet(2000))  # a retained re-delivery changes nothing


def test_a_set_whose_token_keys_are_none_valid_now_says_so_and_which() -> None:
    """Every token key expired or not valid yet: each offline token would be refused for its
    key alone. Named, each with why; a set holding no token key at all says nothing."""
    old = TokenIssuer.generate(Alg.ED25519, kid="old", not_before=1000, not_after=2000).public()
    new = TokenIssuer.generate(Alg.ED25519, kid="new", not_before=3000).public()
    both = KeySet.of(1500, [old, new])
    assert no_token_key_now(both, 1500) is None  # `old` is valid
    text = no_token_key_now(both, 2500)
    assert text is not None and "old expired" in text and "new not valid yet" in text
    assert no_token_key_now(both, 3000) is None  # `new`'s time came
    lane_only = KeySet.of(1500, [CodeFactory(1).lane_key("p1/l1").public(0, 10**10)])
    assert no_token_key_now(lane_only, 2500) is None
    assert no_token_key_now(KeySet(0), 2500) is None
