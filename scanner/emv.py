"""EMVCo consumer-presented mode (CPM) QR payloads: Base64 of BER-TLV starting `85 05 CPV01`.

Layout (EMV QRCPS v1.1): payload format indicator 85 = "CPV01"; one or more application
templates 61 (ADF name 4F, label 50, track 2 equivalent 57, PAN 5A, cardholder name 5F20,
language 5F2D, ... and an application specific transparent template 63 holding the
cryptogram 9F26, ATC 9F36, ...); optionally a common data template 62 with the same data
objects shared by all applications and its transparent template 64.

Only the shape is checked here; the cryptogram is verified by the issuer, online.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Literal

from scanner import tlv

PAYLOAD_FORMAT = b"CPV01"
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")

TAG_PFI = 0x85
TAG_APP = 0x61
TAG_COMMON = 0x62
TAG_APP_TRANSPARENT = 0x63
TAG_COMMON_TRANSPARENT = 0x64
TAG_ADF = 0x4F
TAG_LABEL = 0x50
TAG_TRACK2 = 0x57
TAG_PAN = 0x5A
TAG_NAME = 0x5F20
TAG_EXPIRY = 0x5F24
TAG_LANGUAGE = 0x5F2D
TAG_IAD = 0x9F10
TAG_CRYPTOGRAM = 0x9F26
TAG_CID = 0x9F27
TAG_ATC = 0x9F36
TAG_UN = 0x9F37


class EmvError(ValueError):
    """A CPM payload that is not well formed; the message is the human reason."""


@dataclass(frozen=True, slots=True)
class EmvApplication:
    adf_name: str  # hex, e.g. "A0000000555555"
    label: str | None


@dataclass(frozen=True, slots=True)
class EmvPayload:
    """A parsed CPM payload. PAN, track 2 and name are kept out of repr() so logs stay clean."""

    applications: tuple[EmvApplication, ...]
    pan: str = field(repr=False)
    track2: str | None = field(default=None, repr=False)  # digits, "D" separator, no padding
    expiry: str | None = None  # YYMM
    cardholder_name: str | None = field(default=None, repr=False)
    language: str | None = None
    cryptogram: str | None = None  # 9F26, hex
    cryptogram_info: str | None = None  # 9F27, hex
    atc: int | None = None  # 9F36
    unpredictable_number: str | None = None  # 9F37, hex
    issuer_app_data: str | None = None  # 9F10, hex
    # Every primitive data object as (tag hex, value hex), for forwarding to the acquirer.
    tags: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    kind: Literal["emv"] = field(default="emv", init=False)

    @property
    def masked_pan(self) -> str:
        return mask_pan(self.pan)

    @property
    def application_label(self) -> str | None:
        return next((a.label for a in self.applications if a.label), None)

    def __repr__(self) -> str:
        return (
            f"EmvPayload(pan={self.masked_pan!r}, applications={self.applications!r}, "
            f"atc={self.atc!r}, cryptogram={self.cryptogram!r})"
        )


def mask_pan(pan: str) -> str:
    """First six and last four digits visible (PCI DSS display rule); shorter PANs: last four."""
    if len(pan) >= 13:
        return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]
    return "*" * max(0, len(pan) - 4) + pan[-4:]


def looks_like_cpm(text: str) -> bool:
    """Base64 whose first byte is 85 (the payload format indicator tag) starts with "hQ"."""
    return text.startswith("hQ") and _BASE64.fullmatch(text) is not None


def decode_base64(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EmvError(f"EMV: bad Base64 ({exc})") from None


def parse_cpm(data: bytes) -> EmvPayload:
    """Parse decoded CPM bytes; raise EmvError with a human reason on any fault."""
    try:
        nodes = tlv.parse(data)
    except tlv.TlvError as exc:
        raise EmvError(f"EMV: {exc}") from None
    if not nodes or nodes[0].tag != TAG_PFI or nodes[0].value != PAYLOAD_FORMAT:
        raise EmvError("EMV: missing payload format indicator CPV01")
    apps = [n for n in nodes if n.tag == TAG_APP]
    if not apps:
        raise EmvError("EMV: no application template (61)")
    commons = [n for n in nodes if n.tag == TAG_COMMON]
    applications: list[EmvApplication] = []
    for app in apps:
        adf = app.find(TAG_ADF)
        if adf is None or not 5 <= len(adf.value) <= 16:
            raise EmvError(f"EMV: application template at offset {app.offset} lacks ADF name 4F")
        label = app.find(TAG_LABEL)
        applications.append(EmvApplication(adf.value.hex().upper(), _text(label)))

    # Data objects may sit in the first application template or in the common template.
    scopes = [apps[0], *commons]
    transparent = [
        t
        for s in scopes
        for t in s.children
        if t.tag in (TAG_APP_TRANSPARENT, TAG_COMMON_TRANSPARENT)
    ]

    def first(tag: int, where: list[tlv.Tlv]) -> tlv.Tlv | None:
        return next((n for s in where if (n := s.find(tag)) is not None), None)

    track2 = _track2(first(TAG_TRACK2, scopes))
    pan_node = first(TAG_PAN, scopes)
    if pan_node is not None:
        pan = _bcd_digits(pan_node.value, "PAN")
    elif track2 is not None:
        pan = track2.split("D", 1)[0]
    else:
        raise EmvError("EMV: no PAN (5A) or track 2 (57)")
    if not 8 <= len(pan) <= 19:
        raise EmvError(f"EMV: PAN of {len(pan)} digits")

    expiry = None
    exp_node = first(TAG_EXPIRY, scopes)
    if exp_node is not None and len(exp_node.value) == 3:
        expiry = exp_node.value.hex()[:4]
    elif track2 is not None and "D" in track2:
        expiry = track2.split("D", 1)[1][:4] or None

    cryptogram = first(TAG_CRYPTOGRAM, transparent)
    if cryptogram is not None and len(cryptogram.value) != 8:
        raise EmvError(f"EMV: cryptogram 9F26 of {len(cryptogram.value)} bytes, expected 8")
    atc = first(TAG_ATC, transparent)
    if atc is not None and len(atc.value) != 2:
        raise EmvError(f"EMV: ATC 9F36 of {len(atc.value)} bytes, expected 2")

    return EmvPayload(
        applications=tuple(applications),
        pan=pan,
        track2=track2,
        expiry=expiry,
        cardholder_name=_text(first(TAG_NAME, scopes)),
        language=_text(first(TAG_LANGUAGE, scopes)),
        cryptogram=_hex(cryptogram),
        cryptogram_info=_hex(first(TAG_CID, transparent)),
        atc=int.from_bytes(atc.value, "big") if atc is not None else None,
        unpredictable_number=_hex(first(TAG_UN, transparent)),
        issuer_app_data=_hex(first(TAG_IAD, transparent)),
        tags=tuple(
            (n.tag_hex, n.value.hex().upper()) for n in tlv.walk(nodes) if not n.constructed
        ),
    )


def _text(node: tlv.Tlv | None) -> str | None:
    # Labels and names are "ans" (ASCII printable); latin-1 never fails and shows what came.
    return node.value.decode("latin-1").strip() if node is not None else None


def _hex(node: tlv.Tlv | None) -> str | None:
    return node.value.hex().upper() if node is not None else None


def _bcd_digits(value: bytes, what: str) -> str:
    digits = value.hex().upper().rstrip("F")
    if not digits.isdigit():
        raise EmvError(f"EMV: bad {what} digits")
    return digits


def _track2(node: tlv.Tlv | None) -> str | None:
    if node is None:
        return None
    data = node.value.hex().upper().rstrip("F")
    pan, sep, rest = data.partition("D")
    if not sep or not pan.isdigit() or (rest and not rest.isdigit()):
        raise EmvError("EMV: bad track 2 (57)")
    return data
