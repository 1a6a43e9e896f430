"""Reed-Solomon decoding of one QR error-correction block with erasures (pure code).

QR codes use RS over GF(256) (primitive polynomial 0x11D, generator roots a^0 .. a^(n-k-1)).
A reader that knows which codewords it could not see (a thumb over the code) can mark them as
erasures: each costs one check codeword where an unknown error costs two. `correct` decodes
with the erasures it is given and any errors it finds, but keeps `spare` check codewords out of
the correction (2 * errors + erasures <= checks - spare): those stay a pure check, so that a
block too damaged to decode is refused instead of "corrected" into another valid block (for a
random word, a chance of about 256**-spare). The result is verified once more from scratch:
every syndrome of the corrected block must be zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_PRIMITIVE = 0x11D
_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= _PRIMITIVE
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    return 0 if a == 0 else _EXP[(_LOG[a] - _LOG[b]) % 255]


def _power(exponent: int) -> int:
    """a ** exponent (a = 2, the field's generator)."""
    return _EXP[exponent % 255]


def syndromes(block: Sequence[int], checks: int) -> list[int]:
    """S_i = block(a^i), i < checks; block[0] is the highest-degree coefficient."""
    out = []
    for i in range(checks):
        x, y = _power(i), 0
        for c in block:
            y = _mul(y, x) ^ c
        out.append(y)
    return out


def _berlekamp_massey(s: Sequence[int]) -> list[int]:
    """The shortest LFSR generating s: its connection polynomial, lowest degree first."""
    c, b = [1], [1]
    length, gap, last = 0, 1, 1
    for n, value in enumerate(s):
        d = value
        for i in range(1, length + 1):
            d ^= _mul(c[i], s[n - i])
        if d == 0:
            gap += 1
            continue
        coef = _div(d, last)
        previous = list(c)
        c += [0] * max(0, len(b) + gap - len(c))
        for i, bi in enumerate(b):
            c[i + gap] ^= _mul(coef, bi)
        if 2 * length <= n:
            length, b, last, gap = n + 1 - length, previous, d, 1
        else:
            gap += 1
    return c[: length + 1]


def _eval_low_first(poly: Sequence[int], x: int) -> int:
    y = 0
    for c in reversed(poly):
        y = _mul(y, x) ^ c
    return y


def _solve(rows: list[list[int]], rhs: list[int]) -> list[int] | None:
    """Gaussian elimination over GF(256); None when singular."""
    n = len(rhs)
    m = [[*row, v] for row, v in zip(rows, rhs, strict=True)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if m[r][col]), None)
        if pivot is None:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        inv = _div(1, m[col][col])
        m[col] = [_mul(v, inv) for v in m[col]]
        for r in range(n):
            if r != col and m[r][col]:
                f = m[r][col]
                m[r] = [v ^ _mul(f, p) for v, p in zip(m[r], m[col], strict=True)]
    return [m[r][n] for r in range(n)]


def correct(block: Sequence[int], checks: int, erasures: Sequence[int], spare: int) -> bytes | None:
    """The block (data and check codewords) corrected, or None when it cannot be decoded with
    `spare` check codewords left over. `erasures` are indices into `block`."""
    n = len(block)
    erased = sorted(set(erasures))
    if len(erased) > checks - spare or any(not 0 <= p < n for p in erased):
        return None
    s = syndromes(block, checks)
    if not any(s):
        return bytes(block)
    # Forney's modified syndromes take the erasures out; what is left is the errors' LFSR.
    gamma = [1]
    for p in erased:
        x = _power(n - 1 - p)
        gamma = [a ^ _mul(x, b) for a, b in zip([*gamma, 0], [0, *gamma], strict=True)]
    modified = [
        _xor_sum(_mul(gamma[k], s[i - k]) for k in range(len(gamma)) if i - k >= 0)
        for i in range(checks)
    ]
    locator = _berlekamp_massey(modified[len(erased) :])
    errors = len(locator) - 1
    if 2 * errors + len(erased) > checks - spare:
        return None
    found = [
        p
        for p in range(n)
        if p not in erased and _eval_low_first(locator, _power(-(n - 1 - p))) == 0
    ]
    if len(found) != errors:
        return None  # the locator's roots are not all positions in the block
    positions = erased + found
    xs = [_power(n - 1 - p) for p in positions]
    rows = [[_power(_LOG[x] * i) for x in xs] for i in range(len(xs))]
    values = _solve(rows, s[: len(xs)])
    if values is None:
        return None
    fixed = list(block)
    for p, v in zip(positions, values, strict=True):
        fixed[p] ^= v
    if any(syndromes(fixed, checks)):
        return None
    return bytes(fixed)


def _xor_sum(values: Iterable[int]) -> int:
    total = 0
    for v in values:
        total ^= v
    return total
