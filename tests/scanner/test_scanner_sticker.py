"""A code read in every frame (a QR sticker on the booth, an ad) must not blind the cascade's
fallback passes to the driver's code beside it: the simulator's camera with a sticker in
view, and real corpus photos with a printed sticker beside them."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import zxingcpp
from scanner_testkit import (
    BLURRED,
    STICKER,
    THUMB,
    TOKEN,
    corpus_image,
    frame_with,
    load_gray,
    qr_image,
    thumb_over,
)
from test_scanner_deblur import CountingDecoder

from scanner.deblur import MIN_TEXTURE, Deblur, texture_peak
from scanner.decoders import ZxingDecoder, make_decoder
from scanner.detection import GrayImage, as_gray
from sim.render import render_frame
from sim.scene import Scene


def read(frames: list[GrayImage]) -> list[list[tuple[str, str]]]:
    """What one default cascade reads in each of the frames, in turn (one camera)."""
    cascade = make_decoder()
    return [[(d.text, d.decoder) for d in cascade.decode(g)] for g in frames]


def test_a_thumb_covered_token_beside_a_sticker_is_read_by_the_covered_pass() -> None:
    gray = as_gray(render_frame(replace(THUMB, sticker=STICKER), 1))
    found, unread = ZxingDecoder().locate(gray)
    # zxing-cpp reads the sticker and sees the token without reading it; the covered pass,
    # which works on what zxing-cpp saw, reads the token beside the sticker.
    assert [d.text for d in found] == [STICKER] and unread
    assert read([gray]) == [[(STICKER, "zxing"), (TOKEN, "zxing+covered")]]


def test_a_blurred_phone_beside_a_sticker_is_read_by_the_deblur_pass() -> None:
    # Nobody locates this phone (no outline), so the deblur pass's texture map must look past
    # the sticker it would otherwise find first.
    frames = [as_gray(render_frame(replace(BLURRED, sticker=STICKER), f)) for f in range(4)]
    assert [ZxingDecoder().locate(g)[1] for g in frames] == [[]] * 4
    reads = read(frames)
    assert all(r[0] == (STICKER, "zxing") for r in reads)
    assert (TOKEN, "zxing+deblur") in [d for r in reads for d in r[1:]]


def test_the_texture_map_looks_past_a_code_read() -> None:
    empty = as_gray(render_frame(Scene(None, sticker=STICKER), 1))
    [sticker] = ZxingDecoder().decode(empty)
    assert texture_peak(empty)[0] >= MIN_TEXTURE  # the sticker is code-like texture
    # The rest of the empty view is not: the deblur pass makes no attempt on it.
    assert texture_peak(empty, [sticker.polygon])[0] < MIN_TEXTURE
    assert read([empty] * 8) == [[(STICKER, "zxing")]] * 8


def test_an_outline_at_no_place_is_no_code_seen() -> None:
    # Beside a code it reads, zxing-cpp also reports a format error with every corner at 0,0:
    # nothing for a pass to retry, and not a code seen (the change gate keys on those).
    gray = as_gray(render_frame(replace(THUMB, sticker=STICKER), 0))
    errors = zxingcpp.read_barcodes(
        gray, formats=zxingcpp.BarcodeFormat.QRCodeModel2, return_errors=True
    )
    assert any(not b.valid and b.position.top_left.x == b.position.bottom_right.x for b in errors)
    assert all(len(set(p)) == 4 for p in ZxingDecoder().locate(gray)[1])


def test_corpus_photos_with_a_thumb_beside_a_printed_sticker_are_read() -> None:
    sticker = qr_image(STICKER, scale=4)
    for image, radius in (("qrcode-1/1.png", 0.5), ("qrcode-3/26.png", 0.4)):
        path, expected = corpus_image(image)
        photo = load_gray(path)
        [code] = zxingcpp.read_barcodes(photo, formats=zxingcpp.BarcodeFormat.QRCodeModel2)
        p = code.position
        corners = (p.top_left, p.top_right, p.bottom_right, p.bottom_left)
        covered = thumb_over(photo, tuple((q.x, q.y) for q in corners), radius)
        # The photo and, beside it on the same wall, the sticker.
        h, w = covered.shape
        scene = np.full((max(h, sticker.shape[0]), w + sticker.shape[1] + 40), 200, np.uint8)
        scene[:h, :w] = covered
        scene[: sticker.shape[0], w + 40 :] = sticker
        assert [d.text for d in ZxingDecoder().decode(scene)] == [STICKER], image
        assert read([scene]) == [[(STICKER, "zxing"), (expected, "zxing+covered")]], image


def test_a_fruitless_spot_beside_a_sticker_waits_like_any_other() -> None:
    """A grille's texture beside a sticker: the deblur region holds the sticker, which the
    stacked frames read as they are. Read again, it passed for the attempt's success and the
    spot never waited: an attempt on every frame the pass looks at, for as long as both stay."""
    sticker = qr_image(STICKER, scale=2)
    view = frame_with(sticker, at=(500, 300))
    rng = np.random.default_rng(4)
    for _ in range(200):
        x, y = int(rng.integers(592, 620)), int(rng.integers(300, 360))
        cv2.rectangle(view, (x, y), (x + 5, y + 5), int(rng.integers(0, 255)), -1)
    found, unread = ZxingDecoder().locate(view)
    assert [d.text for d in found] == [STICKER] and not unread
    read = [d.polygon for d in found]
    assert texture_peak(view, read)[0] >= MIN_TEXTURE  # the grille, the region's centre
    decoder = CountingDecoder()
    deblur = Deblur("deblur", decoder, every=1, retry_after=2, forget_after=8)
    attempts = []
    for _ in range(24):
        before = decoder.calls
        assert deblur.run(view, [], read) == []
        attempts.append(decoder.calls > before)
    # Tried on the first frame, then again only once `forget_after` frames have gone by.
    assert attempts == ([True] + [False] * 7) * 3
