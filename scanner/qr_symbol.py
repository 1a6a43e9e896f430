"""A QR symbol's module matrix repaired by Reed-Solomon with erasures (pure code).

A thumb over a code hides its modules; a reader that knows which ones it could not see can
give them to Reed-Solomon as erasures, which cost half what unknown errors cost. zxing-cpp
cannot be told, so `repaired` does that part itself, for versions 1-6 (one alignment pattern,
no version information: every payment code and token we read): it reads the format
information (two copies, BCH), unmasks the data modules, deinterleaves the blocks, corrects
each (`scanner.reed_solomon`, with check codewords to spare) and draws the symbol again as it
should be, function patterns included. The repaired matrix is then read by zxing-cpp as a pure
symbol, so segment parsing stays zxing's. Nothing is guessed: a matrix comes back only when
every block decodes with its spare checks passing.

Layout tables and placement rules follow ISO/IEC 18004 (as laid out by Nayuki's qrcodegen).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from scanner.reed_solomon import correct

Matrix = npt.NDArray[np.bool_]

VERSIONS = range(1, 7)
LEVELS = "LMQH"
# Per version 1-6 and level: check codewords per block and the number of blocks.
_CHECKS = {"L": (7, 10, 15, 20, 26, 18), "M": (10, 16, 26, 18, 24, 16),
           "Q": (13, 22, 18, 26, 18, 24), "H": (17, 28, 22, 16, 22, 28)}  # fmt: skip
_BLOCKS = {"L": (1, 1, 1, 1, 1, 2), "M": (1, 1, 1, 2, 2, 4),
           "Q": (1, 1, 2, 2, 4, 4), "H": (1, 1, 2, 4, 4, 4)}  # fmt: skip
_LEVEL_BITS = {"L": 1, "M": 0, "Q": 3, "H": 2}
# Check codewords each block keeps out of the correction, as a pure check (reed_solomon).
SPARE = 6


def size_of(version: int) -> int:
    return 17 + 4 * version


def version_of(size: int) -> int | None:
    version = (size - 17) // 4
    return version if version in VERSIONS and size_of(version) == size else None


def format_word(level: str, mask: int) -> int:
    """The 15 format bits: level and mask, BCH(15,5), XOR 0x5412."""
    data = _LEVEL_BITS[level] << 3 | mask
    rem = data
    for _ in range(10):
        rem = (rem << 1) ^ ((rem >> 9) * 0x537)
    return (data << 10 | rem) ^ 0x5412


def _format_cells(size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(row, col) of format bits 0..14, first copy (top left) and second (split)."""
    first = [(i, 8) for i in range(6)] + [(7, 8), (8, 8), (8, 7)]
    first += [(8, 14 - i) for i in range(9, 15)]
    second = [(8, size - 1 - i) for i in range(8)]
    second += [(size - 15 + i, 8) for i in range(8, 15)]
    return first, second


@lru_cache(maxsize=8)
def _function_patterns(version: int) -> tuple[Matrix, Matrix]:
    """(which modules are function modules, their dark values; format bits left light)."""
    size = size_of(version)
    used = np.zeros((size, size), bool)
    dark = np.zeros((size, size), bool)
    used[6, :] = used[:, 6] = True
    dark[6, ::2] = dark[::2, 6] = True
    centres = [(3, 3), (3, size - 4), (size - 4, 3)]
    for cy, cx in centres:
        for dy in range(-4, 5):
            for dx in range(-4, 5):
                y, x = cy + dy, cx + dx
                if 0 <= y < size and 0 <= x < size:
                    used[y, x] = True
                    dark[y, x] = max(abs(dx), abs(dy)) not in (2, 4)
    if version > 1:
        a = size - 7
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                used[a + dy, a + dx] = True
                dark[a + dy, a + dx] = max(abs(dx), abs(dy)) != 1
    for copy in _format_cells(size):
        for cell in copy:
            used[cell] = True
    used[size - 8, 8] = dark[size - 8, 8] = True  # the dark module
    used.setflags(write=False)
    dark.setflags(write=False)
    return used, dark


@lru_cache(maxsize=8)
def _data_cells(version: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows and columns of the data modules in placement order (up and down column pairs
    from the right, skipping the vertical timing pattern)."""
    size = size_of(version)
    used, _ = _function_patterns(version)
    rows: list[int] = []
    cols: list[int] = []
    right = size - 1
    while right >= 1:
        if right == 6:
            right = 5
        upward = (right + 1) & 2 == 0
        for vert in range(size):
            y = size - 1 - vert if upward else vert
            for x in (right, right - 1):
                if not used[y, x]:
                    rows.append(y)
                    cols.append(x)
        right -= 2
    return np.array(rows), np.array(cols)


def _mask(pattern: int, rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp]) -> Matrix:
    y, x = rows, cols
    flips: tuple[Matrix, ...] = (
        (x + y) % 2 == 0,
        y % 2 == 0,
        x % 3 == 0,
        (x + y) % 3 == 0,
        (x // 3 + y // 2) % 2 == 0,
        x * y % 2 + x * y % 3 == 0,
        (x * y % 2 + x * y % 3) % 2 == 0,
        ((x + y) % 2 + x * y % 3) % 2 == 0,
    )
    return flips[pattern]


def function_agreement(dark: Matrix, erased: Matrix) -> float:
    """The share of visible finder, timing and alignment modules that are as they should be:
    how well a grid of this size sits on the symbol."""
    version = version_of(dark.shape[0])
    if version is None:
        return 0.0
    used, ideal = _function_patterns(version)
    first, second = _format_cells(dark.shape[0])
    fixed = used.copy()
    for cell in first + second:
        fixed[cell] = False
    seen = fixed & ~erased
    total = int(seen.sum())
    return float((dark[seen] == ideal[seen]).sum()) / total if total else 0.0


def read_format(dark: Matrix, erased: Matrix) -> tuple[str, int] | None:
    """(level, mask) from both format copies, erased bits left out; None unless one word is
    within 3 bits of what was seen and no other is as close."""
    first, second = _format_cells(dark.shape[0])
    seen = [(i, bool(dark[c])) for copy in (first, second) for i, c in enumerate(copy)
            if not erased[c]]  # fmt: skip
    scored = sorted(
        (sum(bit != bool(word >> i & 1) for i, bit in seen), level, mask)
        for level in LEVELS
        for mask in range(8)
        for word in (format_word(level, mask),)
    )
    (best, level, mask), runner_up = scored[0], scored[1][0]
    if best > 3 or runner_up == best or len(seen) < 15:
        return None
    return level, mask


def _block_layout(version: int, level: str) -> tuple[int, list[int]]:
    """(check codewords per block, data codewords of each block)."""
    raw = len(_data_cells(version)[0]) // 8
    checks = _CHECKS[level][version - 1]
    blocks = _BLOCKS[level][version - 1]
    short = blocks - raw % blocks
    short_len = raw // blocks - checks
    return checks, [short_len + (j >= short) for j in range(blocks)]


def _interleaved(data_lengths: list[int], checks: int) -> list[tuple[int, int]]:
    """(block, index in block) of each codeword in the order placed in the symbol."""
    order = [(j, i) for i in range(max(data_lengths)) for j, n in enumerate(data_lengths) if i < n]
    order += [(j, n + i) for i in range(checks) for j, n in enumerate(data_lengths)]
    return order


@dataclass(frozen=True)
class Blocks:
    """A symbol's codewords as read: per block its data and check codewords and the indices
    of those with a module not seen."""

    version: int
    level: str
    mask: int
    checks: int
    blocks: list[list[int]]
    erased: list[list[int]]


def read_blocks(dark: Matrix, erased: Matrix) -> Blocks | None:
    """The codewords of a size x size module matrix (dark modules True), None when its size or
    format information cannot be read."""
    version = version_of(dark.shape[0])
    fmt = read_format(dark, erased) if version else None
    if version is None or fmt is None:
        return None
    level, pattern = fmt
    rows, cols = _data_cells(version)
    flips = _mask(pattern, rows, cols)
    checks, lengths = _block_layout(version, level)
    order = _interleaved(lengths, checks)
    used_bits = len(order) * 8
    words = np.packbits((dark[rows, cols] ^ flips)[:used_bits].reshape(-1, 8), axis=1)[:, 0]
    lost = erased[rows, cols][:used_bits].reshape(-1, 8).sum(axis=1) > 0
    blocks: list[list[int]] = [[0] * (n + checks) for n in lengths]
    gaps: list[list[int]] = [[] for _ in lengths]
    for k, (j, i) in enumerate(order):
        blocks[j][i] = int(words[k])
        if lost[k]:
            gaps[j].append(i)
    return Blocks(version, level, pattern, checks, blocks, gaps)


def repaired(
    dark: Matrix, erased: Matrix, spare: int = SPARE, known: Mapping[int, int] | None = None
) -> Matrix | None:
    """The symbol drawn again with every block corrected (erased modules as erasures), or None
    when its size, format or any block cannot be read. `dark` and `erased` are size x size.

    `known`: data codewords by their index in the data stream (the blocks' data in block
    order) that are likely, e.g. a token issuer's header: an erased codeword there is taken as
    that value instead of an erasure. A wrong guess is one more error for Reed-Solomon to find
    (or refuse), never a wrong read."""
    read = read_blocks(dark, erased)
    if read is None:
        return None
    known = known or {}
    fixed = []
    start = 0
    for block, gaps in zip(read.blocks, read.erased, strict=True):
        data = len(block) - read.checks
        guessed = {i: known[start + i] for i in gaps if i < data and start + i in known}
        for i, value in guessed.items():
            block[i] = value
        unknown = [i for i in gaps if i not in guessed]
        fixed.append(correct(block, read.checks, unknown, spare))
        start += data
    if any(b is None for b in fixed):
        return None
    return drawn(read.version, read.level, read.mask, [list(b or b"") for b in fixed])


def data_stream(matrix: Matrix) -> tuple[int, ...] | None:
    """The data codewords of a clean symbol, blocks in order (what `known` indexes)."""
    read = read_blocks(matrix, np.zeros_like(matrix))
    if read is None:
        return None
    return tuple(v for block in read.blocks for v in block[: len(block) - read.checks])


def drawn(version: int, level: str, mask: int, blocks: list[list[int]]) -> Matrix:
    """The module matrix of a symbol with these blocks (data then check codewords each)."""
    size = size_of(version)
    rows, cols = _data_cells(version)
    checks, lengths = _block_layout(version, level)
    order = _interleaved(lengths, checks)
    words = np.array([blocks[j][i] for j, i in order], np.uint8)
    bits = np.zeros(len(rows), bool)
    bits[: len(order) * 8] = np.unpackbits(words).astype(bool)
    _, ideal = _function_patterns(version)
    out = ideal.copy()
    out[rows, cols] = bits ^ _mask(mask, rows, cols)
    word = format_word(level, mask)
    for copy in _format_cells(size):
        for i, cell in enumerate(copy):
            out[cell] = bool(word >> i & 1)
    return out
