"""BER-TLV parsing (EMV Book 3 Annex B) for EMVCo consumer-presented QR payloads.

Pure and strict: any structural fault raises `TlvError` naming the byte offset, so a caller
can tell the driver (and the log) exactly why a code was refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

MAX_DEPTH = 4  # CPM nests at most 61 -> 63 (or 62 -> 64); deeper input is garbage
MAX_TAG_BYTES = 3


class TlvError(ValueError):
    """Malformed BER-TLV; `offset` is the byte where the fault starts."""

    def __init__(self, problem: str, offset: int) -> None:
        super().__init__(f"{problem} at offset {offset}")
        self.problem = problem
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    value: bytes
    offset: int
    children: tuple[Tlv, ...] = ()

    @property
    def constructed(self) -> bool:
        return _first_byte(self.tag) & 0x20 != 0

    @property
    def tag_hex(self) -> str:
        return f"{self.tag:X}"

    def find(self, tag: int) -> Tlv | None:
        """First child with `tag` (direct children only)."""
        return next((c for c in self.children if c.tag == tag), None)


def parse(data: bytes, *, base_offset: int = 0, depth: int = 0) -> tuple[Tlv, ...]:
    """Parse a sequence of TLV objects covering all of `data`; constructed ones recursively."""
    if depth > MAX_DEPTH:
        raise TlvError("nesting too deep", base_offset)
    nodes: list[Tlv] = []
    pos = 0
    end = len(data)
    while pos < end:
        start = pos
        tag, pos = _read_tag(data, pos, base_offset)
        length, pos = _read_length(data, pos, base_offset, start)
        if pos + length > end:
            raise TlvError("truncated TLV", base_offset + start)
        value = data[pos : pos + length]
        node = Tlv(tag=tag, value=value, offset=base_offset + start)
        if node.constructed:
            children = parse(value, base_offset=base_offset + pos, depth=depth + 1)
            node = Tlv(tag=tag, value=value, offset=base_offset + start, children=children)
        nodes.append(node)
        pos += length
    return tuple(nodes)


def walk(nodes: tuple[Tlv, ...]) -> Iterator[Tlv]:
    """Every node, depth first, in payload order."""
    for node in nodes:
        yield node
        yield from walk(node.children)


def _first_byte(tag: int) -> int:
    while tag > 0xFF:
        tag >>= 8
    return tag


def _read_tag(data: bytes, pos: int, base: int) -> tuple[int, int]:
    start = pos
    first = data[pos]
    # 00 and FF are never valid first tag bytes (ISO/IEC 7816-4); EMV's "00 padding" has no
    # place in a Base64 QR payload, so we refuse it rather than guess.
    if first in (0x00, 0xFF):
        raise TlvError(f"bad tag {first:02X}", base + start)
    tag = first
    pos += 1
    if first & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise TlvError("truncated TLV", base + start)
            b = data[pos]
            if pos == start + 1 and b == 0x80:
                raise TlvError("bad tag (non-minimal encoding)", base + start)
            tag = (tag << 8) | b
            pos += 1
            if pos - start > MAX_TAG_BYTES:
                raise TlvError("bad tag (too long)", base + start)
            if not b & 0x80:
                break
    return tag, pos


def _read_length(data: bytes, pos: int, base: int, start: int) -> tuple[int, int]:
    if pos >= len(data):
        raise TlvError("truncated TLV", base + start)
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0 or count > 2:  # indefinite form, or longer than any QR could hold
        raise TlvError(f"bad length byte {first:02X}", base + pos - 1)
    if pos + count > len(data):
        raise TlvError("truncated TLV", base + start)
    return int.from_bytes(data[pos : pos + count], "big"), pos + count
