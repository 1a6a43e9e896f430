from __future__ import annotations

import json
from pathlib import Path

import pytest

from lane.auth.deny import (
    DenyList,
    DenyListError,
    decode_deny_list,
    deny_list_to_json,
    encode_deny_list,
    load_deny_list,
    parse_deny_list,
)
from lane.auth.trust import Verdict, judge_deny
from lane.wire.codec import pack


def newer_deny_list(current: DenyList, incoming: DenyList) -> DenyList:
    """The list a lane holds after `incoming` arrives (the bounds: test_trust_bounds.py)."""
    judged = judge_deny(current, incoming, now=2e9, skew_s=30, max_step=1000)
    return incoming if judged.verdict is Verdict.ADOPT else current


def test_file_and_payload_round_trip(tmp_path: Path) -> None:
    deny = DenyList.of(5, ["acct-2", "acct-1"], issued_at=1_800_000_000)
    path = tmp_path / "deny.json"
    path.write_text(deny_list_to_json(deny))
    assert json.loads(path.read_text())["accounts"] == ["acct-1", "acct-2"]
    assert load_deny_list(path) == deny
    assert decode_deny_list(encode_deny_list(deny)) == deny
    assert deny.denies("acct-1") and not deny.denies("acct-3")


def test_generation_ordering() -> None:
    empty = DenyList.empty()
    g1 = DenyList.of(1, ["a"])
    g2 = DenyList.of(2, ["a", "b"])
    g2_again = DenyList.of(2, [])
    held = newer_deny_list(empty, g1)
    assert held is g1
    held = newer_deny_list(held, g2)
    assert held is g2
    # An older list (a late retained message, an old file) never replaces a newer one,
    assert newer_deny_list(held, g1) is g2
    # and neither does another list claiming the same generation.
    assert newer_deny_list(held, g2_again) is g2


def test_generation_ordering_through_payloads() -> None:
    held = DenyList.empty()
    for generation in (3, 1, 4, 2):
        incoming = decode_deny_list(encode_deny_list(DenyList.of(generation, [f"g{generation}"])))
        held = newer_deny_list(held, incoming)
    assert held.generation == 4
    assert held.accounts == frozenset({"g4"})


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ({"generation": 1, "accounts": []}, "v", "is missing"),
        ({"v": 9, "generation": 1, "accounts": []}, "v", "newer than this lane"),
        ({"v": 1, "accounts": []}, "generation", "is missing"),
        ({"v": 1, "generation": 0, "accounts": []}, "generation", "must be >= 1"),
        ({"v": 1, "generation": "7", "accounts": []}, "generation", "must be an integer"),
        ({"v": 1, "generation": 1, "accounts": "acct-1"}, "accounts", "must be a list"),
        ({"v": 1, "generation": 1, "accounts": ["a", 5]}, "accounts[1]", "non-empty string"),
        ({"v": 1, "generation": 1, "accounts": [""]}, "accounts[0]", "non-empty string"),
        ({"v": 1, "generation": 1, "issued_at": "soon", "accounts": []}, "issued_at", "RFC 3339"),
    ],
)
def test_errors(body: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(DenyListError) as info:
        parse_deny_list(body, "deny.json")
    assert (info.value.source, info.value.key) == ("deny.json", key)
    assert problem in info.value.problem


def test_file_and_payload_errors(tmp_path: Path) -> None:
    with pytest.raises(DenyListError, match="cannot read"):
        load_deny_list(tmp_path / "none.json")
    path = tmp_path / "deny.json"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DenyListError, match="not JSON"):
        load_deny_list(path)
    with pytest.raises(DenyListError, match="mqtt deny: not msgpack"):
        decode_deny_list(b"\xc1")
    with pytest.raises(DenyListError, match="generation: is missing"):
        decode_deny_list(pack({"accounts": []}))
