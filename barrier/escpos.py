"""ESC/POS for receipt printers: encode a ticket (text lines and a QR code), and read it back.

Pure bytes in, bytes out. The encoder writes the small subset every Epson-compatible 58/80 mm
receipt printer understands; the decoder accepts exactly that subset and refuses anything
else with `EscPosError` naming the offset, so the printer emulator (barrier/printer.py) prints
what a real printer would, and a stream it does not understand is an error, not a guess.

| bytes | command |
|---|---|
| `1B 40` | ESC @: initialise |
| `1B 61 n` | ESC a: align (0 left, 1 centre, 2 right) |
| `1B 45 n` | ESC E: bold off/on |
| `1B 64 n` | ESC d: print and feed n lines |
| `0A` | LF: print the line |
| `1D 28 6B pL pH 31 fn ...` | GS ( k: QR (fn 41 model, 43 size, 45 ECC, 50 store, 51 print) |
| `1D 56 m [n]` | GS V: cut (m 0/1/48/49; 65/66 take a feed n) |

Text is printable ASCII: ticket texts are plaza names, times and amounts, and code page
selection differs between printer makes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

ESC, GS, LF = 0x1B, 0x1D, 0x0A
QR_CN = 0x31
QR_MODEL, QR_SIZE, QR_ECC, QR_STORE, QR_PRINT = 0x41, 0x43, 0x45, 0x50, 0x51
QR_MODEL_2 = 0x32
MAX_QR_DATA = 7089 - 3  # the QR store function's own limit (pL pH counts cn fn m too)
MODULE_SIZES = range(1, 17)
MAX_LINE = 48  # characters of an 80 mm printer's line in font A


class Align(enum.IntEnum):
    LEFT = 0
    CENTRE = 1
    RIGHT = 2


class Ecc(enum.IntEnum):
    """QR error correction levels as GS ( k fn 45 numbers them."""

    L = 48
    M = 49
    Q = 50
    H = 51


class EscPosError(ValueError):
    """A stream (or a ticket) outside the subset we print."""


@dataclass(frozen=True)
class TextLine:
    text: str
    bold: bool = False
    align: Align = Align.LEFT


@dataclass(frozen=True)
class QrCode:
    data: str
    module: int = 6
    ecc: Ecc = Ecc.M


@dataclass(frozen=True)
class Feed:
    lines: int


@dataclass(frozen=True)
class Cut:
    pass


Item = TextLine | QrCode | Feed | Cut


@dataclass(frozen=True)
class Ticket:
    """What a ticket shows: a bold centred title, lines, a centred QR code, then a cut."""

    title: str
    lines: tuple[str, ...] = ()
    qr: str | None = None
    module: int = 6


def encode_ticket(ticket: Ticket) -> bytes:
    items: list[Item] = [TextLine(ticket.title, bold=True, align=Align.CENTRE)]
    items += [TextLine(line) for line in ticket.lines]
    if ticket.qr is not None:
        items += [Feed(1), QrCode(ticket.qr, ticket.module), Feed(1)]
    items += [Feed(3), Cut()]
    return encode(items)


def encode(items: list[Item]) -> bytes:
    """The ESC/POS stream of `items`; EscPosError for what no printer could print."""
    out = bytearray([ESC, 0x40])
    for item in items:
        if isinstance(item, TextLine):
            _check_text(item.text)
            out += bytes([ESC, 0x61, item.align, ESC, 0x45, int(item.bold)])
            out += item.text.encode("ascii") + bytes([LF])
        elif isinstance(item, QrCode):
            out += _qr(item)
        elif isinstance(item, Feed):
            if not 0 <= item.lines <= 255:
                raise EscPosError(f"feed of {item.lines} lines")
            out += bytes([ESC, 0x64, item.lines])
        else:
            out += bytes([GS, 0x56, 66, 0])  # feed to the cutter, then a partial cut
    return bytes(out)


def _check_text(text: str) -> None:
    if len(text) > MAX_LINE:
        raise EscPosError(f"line of {len(text)} characters, a ticket line holds {MAX_LINE}")
    if not (text.isascii() and text.isprintable()):
        raise EscPosError(f"line {text!r} is not printable ASCII")


def _gs_k(fn: int, params: bytes) -> bytes:
    size = len(params) + 2  # cn and fn count
    return bytes([GS, 0x28, 0x6B, size & 0xFF, size >> 8, QR_CN, fn]) + params


def _qr(qr: QrCode) -> bytes:
    data = qr.data.encode("ascii", errors="strict") if qr.data.isascii() else b""
    if not data or len(data) > MAX_QR_DATA:
        raise EscPosError(f"QR data must be 1..{MAX_QR_DATA} ASCII characters")
    if qr.module not in MODULE_SIZES:
        raise EscPosError(f"QR module size {qr.module}, printers take 1..16")
    return (
        bytes([ESC, 0x61, Align.CENTRE])
        + _gs_k(QR_MODEL, bytes([QR_MODEL_2, 0]))
        + _gs_k(QR_SIZE, bytes([qr.module]))
        + _gs_k(QR_ECC, bytes([qr.ecc]))
        + _gs_k(QR_STORE, b"\x30" + data)
        + _gs_k(QR_PRINT, b"\x30")
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise EscPosError(f"offset {self.pos}: stream ends inside {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]


@dataclass
class _State:
    align: Align = Align.LEFT
    bold: bool = False
    module: int = 3  # the printers' power-on defaults
    ecc: Ecc = Ecc.L
    stored: str | None = None

    def reset(self) -> None:
        """ESC @: back to the power-on state (a stored QR code is forgotten too)."""
        fresh = _State()
        self.align, self.bold, self.module = fresh.align, fresh.bold, fresh.module
        self.ecc, self.stored = fresh.ecc, fresh.stored


def decode(stream: bytes) -> list[Item]:
    """What a printer would print from `stream`, item by item; EscPosError otherwise."""
    return list(_items(_Reader(bytes(stream)), _State()))


def _items(r: _Reader, state: _State) -> Iterator[Item]:
    line = bytearray()
    while r.pos < len(r.data):
        at = r.pos
        b = r.byte("a command")
        if 0x20 <= b <= 0x7E:
            line.append(b)
        elif b == LF:
            yield TextLine(line.decode("ascii"), state.bold, state.align)
            line.clear()
        elif b == ESC:
            yield from _esc(r, state, at)
        elif b == GS:
            yield from _gs(r, state, at)
        else:
            raise EscPosError(f"offset {at}: byte 0x{b:02x} is not in the printed subset")
    if line:
        yield TextLine(line.decode("ascii"), state.bold, state.align)  # printers flush at end


def _esc(r: _Reader, state: _State, at: int) -> Iterator[Item]:
    cmd = r.byte("ESC")
    if cmd == 0x40:
        state.reset()
    elif cmd == 0x61:
        n = r.byte("ESC a")
        if n not in {0, 1, 2, 48, 49, 50}:
            raise EscPosError(f"offset {at}: ESC a {n}")
        state.align = Align(n % 48)
    elif cmd == 0x45:
        state.bold = bool(r.byte("ESC E") & 1)
    elif cmd == 0x64:
        yield Feed(r.byte("ESC d"))
    else:
        raise EscPosError(f"offset {at}: ESC 0x{cmd:02x} is not in the printed subset")


def _gs(r: _Reader, state: _State, at: int) -> Iterator[Item]:
    cmd = r.byte("GS")
    if cmd == 0x56:
        m = r.byte("GS V")
        if m in {65, 66}:
            r.byte("GS V feed")
        elif m not in {0, 1, 48, 49}:
            raise EscPosError(f"offset {at}: GS V {m}")
        yield Cut()
        return
    if cmd != 0x28 or r.byte("GS (") != 0x6B:
        raise EscPosError(f"offset {at}: GS 0x{cmd:02x} is not in the printed subset")
    low, high = r.take(2, "GS ( k length")
    body = r.take(low + 256 * high, "GS ( k")
    if len(body) < 2 or body[0] != QR_CN:
        raise EscPosError(f"offset {at}: GS ( k is not a QR function (cn 49)")
    yield from _qr_function(body[1], body[2:], state, at)


def _qr_function(fn: int, params: bytes, state: _State, at: int) -> Iterator[Item]:
    if fn == QR_MODEL:
        if params[:1] != bytes([QR_MODEL_2]):
            raise EscPosError(f"offset {at}: only QR model 2 is printed")
    elif fn == QR_SIZE:
        if len(params) != 1 or params[0] not in MODULE_SIZES:
            raise EscPosError(f"offset {at}: QR module size must be 1..16")
        state.module = params[0]
    elif fn == QR_ECC:
        if len(params) != 1 or params[0] not in set(Ecc):
            raise EscPosError(f"offset {at}: QR error correction must be 48..51")
        state.ecc = Ecc(params[0])
    elif fn == QR_STORE:
        data = params[1:]
        if params[:1] != b"\x30" or not data or not data.isascii():
            raise EscPosError(f"offset {at}: QR store needs m=48 and ASCII data")
        state.stored = data.decode("ascii")
    elif fn == QR_PRINT:
        if state.stored is None:
            raise EscPosError(f"offset {at}: QR print with no stored data")
        yield QrCode(state.stored, state.module, state.ecc)
    else:
        raise EscPosError(f"offset {at}: QR function 0x{fn:02x} is not in the printed subset")
