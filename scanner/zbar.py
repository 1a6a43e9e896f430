"""ZBar QR scanning with raw bytes (binary mode) through pyzbar's ctypes bindings.

`pyzbar.decode` returns ZBar's text after its charset guessing, which turns UTF-8 Chinese into
Shift-JIS mojibake (and vice versa). ZBar >= 0.23 has a BINARY option that hands back the bytes
as stored; we set it and decode the bytes ourselves. Each call builds its own scanner, so calls
from several threads never share ZBar state; ctypes drops the GIL during the scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import c_void_p, string_at
from typing import Any

import numpy as np
from pyzbar import wrapper as zb

from scanner.detection import GrayImage, Point, check_gray

_Y800 = int.from_bytes(b"Y800", "little")  # 8-bit gray
_CFG_BINARY = 4  # ZBAR_CFG_BINARY in zbar.h >= 0.23; pyzbar's enum predates it


class ZbarError(RuntimeError):
    """libzbar refused the image or the configuration."""


def scan_qr(gray: GrayImage) -> list[tuple[bytes, tuple[Point, ...]]]:
    """(raw bytes, corner points) of every QR code ZBar finds in `gray`."""
    check_gray(gray)
    pixels = np.ascontiguousarray(gray)  # ZBar reads this buffer in place: keep it alive
    height, width = pixels.shape
    found: list[tuple[bytes, tuple[Point, ...]]] = []
    with _scanner() as scanner, _image() as image:
        zb.zbar_image_set_format(image, _Y800)
        zb.zbar_image_set_size(image, width, height)
        zb.zbar_image_set_data(image, pixels.ctypes.data_as(c_void_p), pixels.nbytes, None)
        if zb.zbar_scan_image(scanner, image) < 0:
            raise ZbarError("zbar_scan_image failed")
        symbol = zb.zbar_image_first_symbol(image)
        while symbol:
            if symbol.contents.type == zb.ZBarSymbol.QRCODE:
                data = string_at(
                    zb.zbar_symbol_get_data(symbol), zb.zbar_symbol_get_data_length(symbol)
                )
                corners = tuple(
                    (zb.zbar_symbol_get_loc_x(symbol, i), zb.zbar_symbol_get_loc_y(symbol, i))
                    for i in range(zb.zbar_symbol_get_loc_size(symbol))
                )
                found.append((data, corners))
            symbol = zb.zbar_symbol_next(symbol)
    return found


@contextmanager
def _scanner() -> Iterator[Any]:
    scanner = zb.zbar_image_scanner_create()
    if not scanner:
        raise ZbarError("zbar_image_scanner_create failed")
    try:
        # Symbology 0 (ZBAR_NONE) addresses all of them: switch everything off, then QR on.
        zb.zbar_image_scanner_set_config(scanner, 0, zb.ZBarConfig.CFG_ENABLE, 0)
        zb.zbar_image_scanner_set_config(scanner, zb.ZBarSymbol.QRCODE, zb.ZBarConfig.CFG_ENABLE, 1)
        if zb.zbar_image_scanner_set_config(scanner, zb.ZBarSymbol.QRCODE, _CFG_BINARY, 1):
            raise ZbarError("libzbar too old for binary mode (needs 0.23)")
        yield scanner
    finally:
        zb.zbar_image_scanner_destroy(scanner)


@contextmanager
def _image() -> Iterator[Any]:
    image = zb.zbar_image_create()
    if not image:
        raise ZbarError("zbar_image_create failed")
    try:
        yield image
    finally:
        zb.zbar_image_destroy(image)
