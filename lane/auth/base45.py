"""Base45 (RFC 9285): bytes as text in the 45-character QR alphanumeric alphabet.

QR codes store this alphabet in "alphanumeric mode" at 5.5 bits a character, so Base45 text
(1.5 characters a byte) costs about 8.25 bits a byte in the symbol: almost as dense as byte
mode, and unlike Base64 every character is legal in that mode. Pure functions, strict decoding:
anything that is not the canonical encoding of some bytes raises `Base45Error`.
"""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}


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
    try:
        values = [_VALUE[ch] for ch in text]
    except KeyError as exc:
        raise Base45Error(f"character {exc.args[0]!r} is not in the Base45 alphabet") from None
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i : i + 3]
        if len(chunk) == 3:
            n = chunk[0] + chunk[1] * 45 + chunk[2] * 2025
            if n > 0xFFFF:
                raise Base45Error(f"group {text[i : i + 3]!r} at {i} exceeds 65535")
            out += n.to_bytes(2, "big")
        else:
            n = chunk[0] + chunk[1] * 45
            if n > 0xFF:
                raise Base45Error(f"final group {text[i : i + 2]!r} exceeds 255")
            out.append(n)
    return bytes(out)
