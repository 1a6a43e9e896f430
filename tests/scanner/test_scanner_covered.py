"""The covered pass: a code partly hidden (a thumb) read with the hidden modules as erasures,
and never a wrong code: Reed-Solomon with spare checks, real symbols from zxing-cpp, real
photos from the corpus and the simulator's camera."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import zxingcpp
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scanner_testkit import THUMB, TOKEN, corpus_image, load_gray, thumb_over

from scanner.common_words import KEEP, MIN_SHARED, CommonWords
from scanner.covered import CoveredRetry, encoded_stream
from scanner.decoders import DEFAULT_PASSES, CascadeDecoder, ZxingDecoder, make_decoder, make_pass
from scanner.detection import GrayImage, as_gray
from scanner.qr_symbol import SPARE, Matrix, read_blocks, repaired
from scanner.reed_solomon import correct, syndromes
from sim.codes import CodeFactory
from sim.render import render_frame
from sim.scene import Scene

OTHER_TOKEN = CodeFactory(8).make("token", 1_800_000_000).text
# Two more tokens of TOKEN's issuer: their header (the first data codewords) is TOKEN's.
ISSUER_TOKENS = [CodeFactory(7).make("token", 1_800_000_100 + i).text for i in range(2)]


def uncovered() -> CascadeDecoder:
    """The default cascade without this pass."""
    return CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in DEFAULT_PASSES if p != "covered"])


def symbol(text: str, level: str = "L") -> Matrix:
    """The module matrix (no quiet zone) zxing-cpp writes for `text`."""
    code = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level=level)
    image = np.asarray(zxingcpp.write_barcode_to_image(code, scale=1, add_quiet_zones=False))
    return image < 128


def a_block(text: str = TOKEN) -> tuple[list[int], int]:
    read = read_blocks(symbol(text), np.zeros((37, 37), bool))
    assert read is not None and read.version == 5 and read.level == "L"
    return read.blocks[0], read.checks


def test_a_clean_block_has_zero_syndromes_and_comes_back_as_it_is() -> None:
    block, checks = a_block()
    assert (len(block), checks) == (134, 26)
    assert not any(syndromes(block, checks))
    assert correct(block, checks, [], SPARE) == bytes(block)


@given(st.data())
def test_erasures_and_errors_within_the_budget_are_corrected(data: st.DataObject) -> None:
    block, checks = a_block()
    budget = checks - SPARE
    erased = data.draw(st.lists(st.integers(0, 133), max_size=budget, unique=True))
    errors = data.draw(
        st.lists(
            st.integers(0, 133).filter(lambda p: p not in erased),
            unique=True,
            max_size=(budget - len(erased)) // 2,
        )
    )
    damaged = list(block)
    for p in [*erased, *errors]:
        damaged[p] ^= data.draw(st.integers(1, 255))
    assert correct(damaged, checks, erased, SPARE) == bytes(block)


@given(st.data())
def test_damage_beyond_the_budget_is_refused_never_miscorrected(data: st.DataObject) -> None:
    block, checks = a_block()
    erased = data.draw(st.lists(st.integers(0, 133), max_size=checks, unique=True))
    # One error more than the budget leaves room for, up to many more.
    least = max(1, (checks - SPARE - len(erased)) // 2 + 1)
    errors = data.draw(
        st.lists(
            st.integers(0, 133).filter(lambda p: p not in erased),
            unique=True,
            min_size=least,
            max_size=least + 40,
        )
    )
    damaged = list(block)
    for p in [*erased, *errors]:
        damaged[p] ^= data.draw(st.integers(1, 255))
    assert correct(damaged, checks, erased, SPARE) is None


DIGITS = st.text("0123456789", min_size=1, max_size=30)
PAYLOADS = st.one_of(
    DIGITS, st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60)
)


@settings(max_examples=300)
@given(st.data())
def test_blocks_of_every_version_and_level_decode_right_or_refuse(data: st.DataObject) -> None:
    """Random payloads in real symbols (zxing-cpp's encoder: versions 1-6, levels L-H, one to
    four blocks): any block damaged within the budget comes back exactly; one error beyond it,
    up to many more, is refused, never corrected into another codeword."""
    clean = symbol(data.draw(PAYLOADS), data.draw(st.sampled_from("LMQH")))
    read = read_blocks(clean, np.zeros_like(clean))
    assume(read is not None)
    assert read is not None
    block = read.blocks[data.draw(st.integers(0, len(read.blocks) - 1))]
    n, budget = len(block), read.checks - SPARE
    beyond = data.draw(st.booleans())
    count = data.draw(st.integers(0, read.checks if beyond else budget))
    erased = data.draw(st.lists(st.integers(0, n - 1), unique=True, min_size=count, max_size=count))
    fewest = max(1, (budget - count) // 2 + 1) if beyond else 0
    most = fewest + n // 3 if beyond else (budget - count) // 2
    errors = data.draw(
        st.lists(
            st.integers(0, n - 1).filter(lambda p: p not in erased),
            unique=True,
            min_size=min(fewest, n - len(erased)),
            max_size=min(most, n - len(erased)),
        )
    )
    damaged = list(block)
    for p in [*erased, *errors]:
        damaged[p] ^= data.draw(st.integers(1, 255))
    fixed = correct(damaged, read.checks, erased, SPARE)
    if 2 * len(errors) + len(erased) <= budget:
        assert fixed == bytes(block)
    else:
        assert fixed is None


def _digits_near(draw: st.DrawFn, code: str) -> str:
    out = list(code)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(2, len(out) - 1))] = draw(st.sampled_from("0123456789"))
    return "".join(out)


@settings(max_examples=300)
@given(st.data())
def test_wallet_codes_learned_never_fill_in_another_wallet_code(data: st.DataObject) -> None:
    """Wallet codes carry no signature: a number read wrong charges another account. The lane
    read two wallet codes sharing a prefix; the next one differs from one of them in a few
    digits, and a thumb of any size hides its first codewords, which the learned pattern fills
    with the previous codes' values: read as itself, or refused (with no spare check
    codewords, this reads a fabricated number about once in a hundred)."""
    prefix = "28" + data.draw(st.text("0123456789", min_size=3, max_size=14))
    rest = st.text("0123456789", min_size=18 - len(prefix), max_size=18 - len(prefix))
    learned = [prefix + data.draw(rest), prefix + data.draw(rest)]
    shown = _digits_near(data.draw, data.draw(st.sampled_from(learned)))
    assume(shown not in learned)
    common = CommonWords()
    for text in learned:
        stream = encoded_stream(text)
        assert stream is not None
        common.learn(stream)
    clean = symbol(shown, data.draw(st.sampled_from("LMQH")))
    side = data.draw(st.integers(3, clean.shape[0] - 8))
    covered = np.zeros_like(clean)
    covered[-side:, -side:] = True
    seen = np.where(covered, data.draw(st.booleans()), clean)
    for known in ({}, *common.patterns()):
        fixed = repaired(seen, covered, known=known)
        assert fixed is None or (fixed == clean).all()


def test_a_symbol_is_repaired_from_its_uncovered_modules_only() -> None:
    clean = symbol(TOKEN)
    covered = np.zeros_like(clean)
    covered[-11:, -11:] = True  # 9% of the symbol, the alignment pattern included
    seen = np.where(covered, False, clean)
    fixed = repaired(seen, covered)
    assert fixed is not None and (fixed == clean).all()
    covered[-15:, -15:] = True  # 16%: more codewords than the budget
    assert repaired(np.where(covered, False, clean), covered) is None


@pytest.mark.parametrize("level", ["M", "Q", "H"])
def test_multi_block_symbols_are_repaired(level: str) -> None:
    text = "https://example.org/lane/p07/l03?ticket=0123456789"
    clean = symbol(text, level)
    covered = np.zeros_like(clean)
    covered[-7:, -7:] = True
    fixed = repaired(np.where(covered, True, clean), covered)
    assert fixed is not None and (fixed == clean).all()


def test_two_codes_spliced_are_never_read_as_either_or_a_mix() -> None:
    """Frames stacked across two phones, or a code pasted over another: the top of one symbol
    with the bottom of the other, the seam erased, is refused."""
    a, b = symbol(TOKEN), symbol(OTHER_TOKEN)
    assert a.shape == b.shape
    for seam in range(9, 30, 4):
        spliced = np.vstack([a[:seam], b[seam:]])
        erased = np.zeros_like(a)
        erased[seam - 1 : seam + 1] = True
        assert repaired(spliced, erased) is None, seam


# Real photos, versions 3-6, levels L and M, one and several blocks; the thumb just big
# enough that zxing-cpp (and the cascade before this pass) no longer reads them.
@pytest.mark.parametrize(
    ("image", "radius"),
    [("qrcode-1/1.png", 0.5), ("qrcode-3/26.png", 0.4), ("qrcode-2/15.png", 0.45),
     ("qrcode-3/10.png", 0.45)],
)  # fmt: skip
def test_corpus_photos_with_a_thumb_are_read_by_the_cascade(image: str, radius: float) -> None:
    path, expected = corpus_image(image)
    gray = load_gray(path)
    [code] = zxingcpp.read_barcodes(gray, formats=zxingcpp.BarcodeFormat.QRCodeModel2)
    p = code.position
    polygon = tuple((q.x, q.y) for q in (p.top_left, p.top_right, p.bottom_right, p.bottom_left))
    covered = thumb_over(gray, polygon, radius)
    found, candidates = ZxingDecoder().locate(covered)
    assert found == [] and candidates, "zxing-cpp sees the symbol and fails its checksum"
    assert uncovered().decode(covered) == []
    read = make_decoder("cascade").decode(covered)
    assert [(d.text, d.decoder) for d in read] == [(expected, "zxing+covered")]
    # Covered further than the error correction reaches: nothing, not a guess.
    assert CoveredRetry().run(thumb_over(gray, polygon, 0.6), [polygon]) == []


def test_a_simulated_thumb_is_read_and_a_thumb_over_too_much_is_not() -> None:
    gray = as_gray(render_frame(THUMB, 1))
    found, candidates = ZxingDecoder().locate(gray)
    assert found == [] and candidates
    assert uncovered().decode(gray) == []
    read = make_decoder("cascade").decode(gray)
    assert [(d.text, d.decoder) for d in read] == [(TOKEN, "zxing+covered")]
    assert "covered" in DEFAULT_PASSES
    heavy = Scene(TOKEN, distance=1.4, angle_deg=20.0, occlusion=0.25)
    gray = as_gray(render_frame(heavy, 1))
    assert CoveredRetry().run(gray, ZxingDecoder().locate(gray)[1]) == []


def test_another_code_pasted_over_the_corner_is_never_read() -> None:
    """The corner of another phone's code over this one at the same pose (a textured cover,
    not a thumb): the pass reads neither code, nor a mix of the two."""
    mine = as_gray(render_frame(Scene(TOKEN, distance=1.2), 1))
    theirs = as_gray(render_frame(Scene(OTHER_TOKEN, distance=1.2), 1))
    [code] = ZxingDecoder().decode(mine)
    x, y = code.polygon[2]
    w = round(float(np.hypot(*np.subtract(code.polygon[1], code.polygon[0]))) * 0.4)
    spliced = mine.copy()
    spliced[y - w : y, x - w : x] = theirs[y - w : y, x - w : x]
    found, candidates = ZxingDecoder().locate(spliced)
    assert found == []
    assert CoveredRetry().run(spliced, [*candidates, code.polygon]) == []


def test_successive_reads_teach_only_the_codewords_they_share() -> None:
    common = CommonWords()
    first = tuple(range(40))
    common.learn(first)
    assert common.patterns() == [], "one code alone says nothing about the next"
    common.learn(first)
    assert common.patterns() == [], "the same code again: nothing shared with another"
    second = (*first[: MIN_SHARED + 2], *(v + 100 for v in first[MIN_SHARED + 2 :]))
    common.learn(second)
    assert common.patterns() == [{i: i for i in range(MIN_SHARED + 2)}]
    common.learn((*second[: MIN_SHARED - 1], *(v + 200 for v in first[MIN_SHARED - 1 :])))
    assert len(common.patterns()) == 1, "fewer codewords in common than a header: chance"
    for issuer in range(2 * KEEP):  # two tokens of each: a header each, the rest their own
        for token in range(2):
            common.learn(
                (issuer,) * MIN_SHARED
                + tuple(range(1000 * (2 * issuer + token), 1000 * (2 * issuer + token) + 30))
            )
    assert common.patterns()[0] == {i: 2 * KEEP - 1 for i in range(MIN_SHARED)}, "latest first"
    assert len(common.patterns()) == KEEP
    between = CommonWords()
    for stream in (first, tuple(range(500, 540)), second):
        between.learn(stream)
    assert between.patterns() == [{i: i for i in range(MIN_SHARED + 2)}], "a code read between"


def held_by_thumb(text: str, occlusion: float) -> GrayImage:
    return as_gray(render_frame(replace(THUMB, code_text=text, occlusion=occlusion), 1))


def test_a_bigger_thumb_is_read_once_the_lane_has_read_two_tokens_of_the_issuer() -> None:
    """The first data codewords sit in the corner a thumb covers; a token's issuer header
    fills them. Read after two other tokens of the issuer, not before."""
    gray = held_by_thumb(TOKEN, 0.15)
    fresh = make_decoder("cascade")
    assert fresh.decode(gray) == []
    cascade = make_decoder("cascade")
    for text in ISSUER_TOKENS:
        [read] = cascade.decode(as_gray(render_frame(Scene(text, distance=1.2), 1)))
        assert (read.text, read.decoder) == (text, "zxing")
    found = cascade.decode(gray)
    assert [(d.text, d.decoder) for d in found] == [(TOKEN, "zxing+covered")]


@pytest.mark.parametrize(
    "shown", [OTHER_TOKEN, "https://pay.example.com/q/5K2H7Q9W3M", "283746519203847561"]
)
def test_what_the_lane_learned_never_reads_as_another_code(shown: str) -> None:
    """After two tokens of an issuer, a code under a thumb (a token of another account, a URL,
    a wallet code) is read as itself or not at all: never a learned code, never a mix."""
    for occlusion in (0.1, 0.15, 0.2, 0.25, 0.3):
        cascade = make_decoder("cascade")
        for text in ISSUER_TOKENS:
            assert [d.text for d in cascade.decode(as_gray(render_frame(Scene(text), 1)))] == [text]
        assert {d.text for d in cascade.decode(held_by_thumb(shown, occlusion))} <= {shown}


def test_a_spot_where_nothing_was_read_waits_a_few_frames() -> None:
    """A phone held still under a thumb shows the same hidden modules frame after frame: its
    spot is tried once in `retry_after + 1` frames, not on each (~4-10 ms a try); another spot
    is tried at once."""
    zxing = ZxingDecoder()
    covered = CoveredRetry(retry_after=3)
    heavy = as_gray(render_frame(replace(THUMB, occlusion=0.25), 1))
    assert covered.run(heavy, zxing.locate(heavy)[1]) == []
    light = [as_gray(render_frame(THUMB, f)) for f in range(2, 7)]
    reads = [[d.text for d in covered.run(g, zxing.locate(g)[1])] for g in light]
    assert reads == [[], [], [], [TOKEN], [TOKEN]], "the thumb moved: read 4 frames later"
    elsewhere = as_gray(render_frame(replace(THUMB, distance=1.2, angle_deg=-10.0), 1))
    assert covered.run(heavy, zxing.locate(heavy)[1]) == []
    assert [d.text for d in covered.run(elsewhere, zxing.locate(elsewhere)[1])] == [TOKEN]
    with pytest.raises(ValueError, match="retry_after"):
        CoveredRetry(retry_after=-1)


def test_a_spot_is_tried_again_at_once_when_the_lane_learned_a_pattern() -> None:
    gray = held_by_thumb(TOKEN, 0.15)
    cascade = make_decoder("cascade")
    assert cascade.decode(gray) == []
    for text in ISSUER_TOKENS:
        assert [d.text for d in cascade.decode(as_gray(render_frame(Scene(text), 1)))] == [text]
    assert [(d.text, d.decoder) for d in cascade.decode(gray)] == [(TOKEN, "zxing+covered")]


def test_a_code_always_in_view_does_not_keep_the_lane_from_learning() -> None:
    """A sticker on the booth (or a second phone) read in every frame beside each driver's
    token: the issuer's header is still learned from the tokens, not from the sticker."""
    sticker = as_gray(render_frame(Scene("https://example.org/help/booth-7", distance=1.2), 1))
    cascade = make_decoder("cascade")
    for text in ISSUER_TOKENS:
        for frame in (1, 2):
            token = as_gray(render_frame(Scene(text, distance=1.2), frame))
            read = {d.text for d in cascade.decode(np.hstack([sticker, token]))}
            assert read == {text, "https://example.org/help/booth-7"}
    found = cascade.decode(held_by_thumb(TOKEN, 0.15))
    assert [(d.text, d.decoder) for d in found] == [(TOKEN, "zxing+covered")]
