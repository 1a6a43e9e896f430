"""Base45 (RFC 9285): bytes as text in the 45-character QR alphanumeric alphabet.

QR codes store this alphabet in "alphanumeric mode" at 5.5 bits a character, so Base45 text
(1.5 characters a byte) costs about 8.25 bits a byte in the symbol: almost as dense as byte
mode, and unlike Base64 every character is legal in that mode. Pure functions, strict decoding:
anything that is not the canonical encoding of some bytes raises `Base45Error`.
"""

from __future__ import annotations

import struct

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_INVALID = 0xFF
# bytes.translate table: ASCII code of a character -> its Base45 value, anything else -> 0xFF.
_VALUES = bytes(ALPHABET.index(chr(c)) if chr(c) in ALPHABET else _INVALID for c in range(256))


class Base45Error(ValueError):
    """Text that is not valid Base45."""


def b45encode(data: bytes) -> str:
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        n, c = divmod(n, 45)
        e, d = divmod(n, 45)
        out += (ALPHABET[c], ALPHABET[d], ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += (ALPHABET[c], ALPHABET[d])
    return "".join(out)


def b45decode(text: str) -> bytes:
    if len(text) % 3 == 1:
        raise Base45Error(f"length {len(text)} is not a valid Base45 length (3k or 3k+2)")
    if not text.isascii():
        bad = next(ch for ch in text if not ch.isascii())
        raise Base45Error(f"character {bad!r} is not in the Base45 alphabet")
    v = text.encode("ascii").translate(_VALUES)
    if _INVALID in v:
        raise Base45Error(f"character {text[v.index(_INVALID)]!r} is not in the Base45 alphabet")
    full = len(v) - len(v) % 3
    groups = [v[i] + v[i + 1] * 45 + v[i + 2] * 2025 for i in range(0, full, 3)]
    if groups and max(groups) > 0xFFFF:
        i = next(k for k, n in enumerate(groups) if n > 0xFFFF) * 3
        raise Base45Error(f"group {text[i : i + 3]!r} at {i} exceeds 65535")
    out = struct.pack(f">{len(groups)}H", *groups)
    if full < len(v):
        n = v[full] + v[full + 1] * 45
        if n > 0xFF:
            raise Base45Error(f"final group {text[full:]!r} exceeds 255")
        out += bytes((n,))
    return out
