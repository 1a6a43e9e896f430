"""Decoders on generated codes, dark-mode codes and real photos from the corpus."""

from __future__ import annotations

import numpy as np
import pytest
from scanner_testkit import corpus_image, frame_with, load_gray, qr_image

from scanner.decoders import (
    CascadeDecoder,
    PyzbarDecoder,
    ZxingDecoder,
    make_decoder,
    make_pass,
)
from scanner.detection import Detection

CODE = "281234567890123456"


def read(decoder_name: str, image: np.ndarray) -> list[Detection]:
    return make_decoder(decoder_name).decode(image)


@pytest.mark.parametrize("name", ["zxing", "pyzbar", "cascade"])
def test_generated_code_in_a_frame(name: str) -> None:
    code = qr_image(CODE)
    found = read(name, frame_with(code, at=(400, 200)))
    assert [d.text for d in found] == [CODE]
    d = found[0]
    assert d.raw == CODE.encode()
    assert d.decoder == ("zxing" if name == "cascade" else name)
    xs = [p[0] for p in d.polygon]
    ys = [p[1] for p in d.polygon]
    # The polygon lies on the code (which sits at 400..400+w, 200..200+h, quiet zone included).
    assert min(xs) >= 400 and max(xs) <= 400 + code.shape[1]
    assert min(ys) >= 200 and max(ys) <= 200 + code.shape[0]
    assert len(d.polygon) == 4


@pytest.mark.parametrize("name", ["zxing", "pyzbar", "cascade"])
def test_empty_frame_reads_nothing(name: str) -> None:
    assert read(name, frame_with(None)) == []


def test_dark_mode_code() -> None:
    inverted = 255 - qr_image(CODE)
    frame = frame_with(inverted)
    assert [d.text for d in read("zxing", frame)] == [CODE]
    assert [d.text for d in read("cascade", frame)] == [CODE]
    # ZBar alone does not look for light-on-dark codes; an inversion pass fixes that.
    assert read("pyzbar", frame) == []
    cascade = CascadeDecoder(PyzbarDecoder(), [make_pass("pyzbar-invert")])
    found = cascade.decode(frame)
    assert [(d.text, d.decoder) for d in found] == [(CODE, "pyzbar+pyzbar-invert")]


def test_pyzbar_decodes_bytes_itself() -> None:
    # ZBar's own charset guessing turns this UTF-8 into Shift-JIS mojibake; we get it right.
    assert [d.text for d in PyzbarDecoder().decode(qr_image("MECARD:N:測試;;".encode()))] == [
        "MECARD:N:測試;;"
    ]
    latin = b"caf\xe9 cr\xe8me"  # not UTF-8: falls back to ISO-8859-1, the QR default
    found = PyzbarDecoder().decode(qr_image(latin))
    assert [(d.text, d.raw) for d in found] == [("café crème", latin)]


def test_half_size_pass_maps_polygon_back() -> None:
    code = qr_image(CODE, scale=6)
    frame = frame_with(code, at=(600, 100))
    found = make_pass("half").run(frame, [])
    assert [d.text for d in found] == [CODE]
    assert found[0].decoder == "zxing+half"
    xs = [p[0] for p in found[0].polygon]
    assert min(xs) >= 600 and max(xs) <= 600 + code.shape[1]


def test_roi_pass_decodes_candidate_region() -> None:
    code = qr_image(CODE)
    frame = frame_with(code, at=(300, 300))
    h, w = code.shape
    candidate = (
        (300 + 16, 300 + 16),
        (300 + w - 16, 300 + 16),
        (300 + w - 16, 300 + h - 16),
        (300 + 16, 300 + h - 16),
    )
    found = make_pass("roi-global").run(frame, [candidate])
    assert [d.text for d in found] == [CODE]
    assert found[0].decoder == "zxing+roi-global"
    xs = [p[0] for p in found[0].polygon]
    assert min(xs) >= 300 and max(xs) <= 300 + w


def test_corpus_photo_read_by_every_decoder() -> None:
    path, expected = corpus_image("qrcode-1/1.png")
    gray = load_gray(path)
    for name in ("zxing", "pyzbar", "cascade"):
        assert [d.text for d in read(name, gray)] == [expected], name


@pytest.mark.parametrize(
    ("image", "rescued_by"),
    [("qrcode-4/34.png", "zxing+roi-global"), ("qrcode-2/28.png", "zxing+half")],
)
def test_cascade_reads_what_zxing_alone_misses(image: str, rescued_by: str) -> None:
    path, expected = corpus_image(image)
    gray = load_gray(path)
    assert read("zxing", gray) == []
    found = read("cascade", gray)
    assert [(d.text, d.decoder) for d in found] == [(expected, rescued_by)]


def test_control_characters_come_through_plain() -> None:
    path, expected = corpus_image("qrcode-2/33.png")  # starts with SOH DLE
    gray = load_gray(path)
    assert [d.text for d in ZxingDecoder().decode(gray)] == [expected]


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("opencv")
    with pytest.raises(ValueError, match="unknown fallback pass"):
        make_pass("sharpen")
    colour = np.zeros((10, 10, 3), np.uint8)
    for name in ("zxing", "pyzbar", "cascade"):
        with pytest.raises(ValueError, match="2-D uint8"):
            read(name, colour)
