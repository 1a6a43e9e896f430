from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.auth.base45 import ALPHABET, Base45Error, b45decode, b45encode

# RFC 9285 section 4.3 and 4.4 examples.
RFC_VECTORS = [
    (b"AB", "BB8"),
    (b"Hello!!", "%69 VD92EX0"),
    (b"base-45", "UJCLQE7W581"),
    (b"ietf!", "QED8WEX0"),
]


@pytest.mark.parametrize(("raw", "text"), RFC_VECTORS)
def test_rfc_examples(raw: bytes, text: str) -> None:
    assert b45encode(raw) == text
    assert b45decode(text) == raw


def test_empty() -> None:
    assert b45encode(b"") == ""
    assert b45decode("") == b""


@given(st.binary(max_size=300))
def test_round_trip(data: bytes) -> None:
    text = b45encode(data)
    assert set(text) <= set(ALPHABET)
    assert len(text) == len(data) // 2 * 3 + len(data) % 2 * 2
    assert b45decode(text) == data


@given(st.text(alphabet=ALPHABET, max_size=60))
def test_decode_is_canonical(text: str) -> None:
    # Whatever decodes must re-encode to the same text: one encoding per byte string.
    try:
        data = b45decode(text)
    except Base45Error:
        return
    assert b45encode(data) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A", "length 1"),
        ("BB8A", "length 4"),
        ("GGW", "exceeds 65535"),  # 16 + 16*45 + 32*2025 = 65536
        (":::", "exceeds 65535"),
        ("BB8::", "final group"),  # 44 + 44*45 > 255
        ("bb8", "not in the Base45 alphabet"),
        ("BB\n", "not in the Base45 alphabet"),
    ],
)
def test_strict_errors(text: str, message: str) -> None:
    with pytest.raises(Base45Error, match=message):
        b45decode(text)


def test_largest_values_decode() -> None:
    assert b45decode("FGW") == b"\xff\xff"
    assert b45decode("U5") == b"\xff"
