"""ESC/POS encoding and decoding (pure), and the closed road's device messages."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barrier.escpos import (
    Align,
    Cut,
    Ecc,
    EscPosError,
    Feed,
    QrCode,
    TextLine,
    Ticket,
    decode,
    encode,
    encode_ticket,
)
from barrier.messages import SensorReading
from barrier.peripherals import (
    PlateReading,
    PrintAck,
    PrintError,
    PrinterState,
    PrinterStatus,
    PrintJob,
)
from barrier.watch import decode as watch_decode
from lane.console.model import Plaza
from lane.wire.codec import PayloadError, pack

PASS_TEXT = "LP1:6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3/XIV0W23NTDEXWK G2EP4J0B"


def test_a_ticket_encodes_to_the_documented_bytes() -> None:
    stream = encode_ticket(Ticket("ENTRY P01", ("Lane l02",), qr="AB1"))
    assert stream.startswith(b"\x1b@\x1ba\x01\x1bE\x01ENTRY P01\n\x1ba\x00\x1bE\x00Lane l02\n")
    # GS ( k: model 2, module 6, ECC M, store "AB1", print; then feeds and a partial cut.
    assert b"\x1d(k\x04\x001A2\x00" in stream
    assert b"\x1d(k\x03\x001C\x06" in stream
    assert b"\x1d(k\x03\x001E1" in stream
    assert b"\x1d(k\x06\x001P0AB1" in stream
    assert b"\x1d(k\x03\x001Q0" in stream
    assert stream.endswith(b"\x1dVB\x00")


def test_decode_reads_back_what_encode_wrote() -> None:
    stream = encode_ticket(Ticket("ENTRY P01", ("Lane l02", "2026-12-01 08:00"), qr=PASS_TEXT))
    assert decode(stream) == [
        TextLine("ENTRY P01", bold=True, align=Align.CENTRE),
        TextLine("Lane l02"),
        TextLine("2026-12-01 08:00"),
        Feed(1),
        QrCode(PASS_TEXT, 6, Ecc.M),
        Feed(1),
        Feed(3),
        Cut(),
    ]


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        (b"\x07", "offset 0: byte 0x07 is not in the printed subset"),
        (b"\x1bt\x00", "offset 0: ESC 0x74"),
        (b"\x1ba\x05", "offset 0: ESC a 5"),
        (b"\x1b", "offset 1: stream ends inside ESC"),
        (b"\x1d(k\x03\x001Q0", "QR print with no stored data"),
        (b"\x1d(k\x04\x001A1\x00", "only QR model 2"),
        (b"\x1d(k\x03\x001C\x20", "module size must be 1..16"),
        (b"\x1d(k\x03\x001E\x01", "error correction must be 48..51"),
        (b"\x1d(k\x09\x001P0", "stream ends inside GS ( k"),
        (b"\x1d(k\x03\x002P0", "not a QR function"),
        (b"\x1d(k\x03\x001\x70\x00", "QR function 0x70"),
        (b"\x1dV\x07", "GS V 7"),
        (b"\x1d!\x00", "GS 0x21"),
    ],
)
def test_streams_outside_the_subset_are_refused(stream: bytes, problem: str) -> None:
    with pytest.raises(EscPosError, match=problem.replace("(", r"\(")):
        decode(stream)


@pytest.mark.parametrize(
    ("ticket", "problem"),
    [
        (Ticket("é"), "not printable ASCII"),
        (Ticket("x" * 49), "a ticket line holds 48"),
        (Ticket("ok", qr=""), "QR data must be"),
        (Ticket("ok", qr="x", module=17), "module size 17"),
    ],
)
def test_the_encoder_refuses_what_no_printer_could_print(ticket: Ticket, problem: str) -> None:
    with pytest.raises(EscPosError, match=problem):
        encode_ticket(ticket)


def test_escape_at_resets_the_printer_state() -> None:
    items = decode(b"\x1bE\x01\x1ba\x02\x1d(k\x03\x001C\x08\x1b@bold?\n")
    assert items == [TextLine("bold?")]
    assert decode(b"tail without LF") == [TextLine("tail without LF")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_raises_nothing_but_its_own_error(stream: bytes) -> None:
    with contextlib.suppress(EscPosError):
        decode(stream)


printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=48)


@settings(max_examples=200, deadline=None)
@given(printable.filter(bool), st.lists(printable, max_size=5),
       st.none() | printable.filter(bool), st.integers(1, 16))  # fmt: skip
def test_every_ticket_round_trips(title: str, lines: list[str], qr: str | None, m: int) -> None:
    items = decode(encode_ticket(Ticket(title, tuple(lines), qr, m)))
    texts = [i.text for i in items if isinstance(i, TextLine)]
    assert texts == [title, *lines]
    assert [i for i in items if isinstance(i, QrCode)] == ([QrCode(qr, m)] if qr else [])
    assert items[-1] == Cut()
    assert encode([*items]) == encode(list(items))  # deterministic


def test_device_messages_round_trip() -> None:
    for msg in (
        PlateReading("浙A·12345", 0.93, 1_800_000_000_000_000, seq=4),
        PrintJob("job-1", b"\x1b@x\n", 1, 3_000_001),
        PrintJob("job-1", b"\x1b@x\n", 1),  # a lane built before deadlines
        PrintAck("job-1", None, "", 2),
        PrintAck("job-1", None, "", 2, not_after_us=3_000_001),
        PrintAck("job-1", PrintError.PAPER_OUT, "no paper", 2),
        PrinterStatus(PrinterState.PAPER_OUT, 3, 7, 9),
        PrinterStatus(PrinterState.READY, 3, 7, 9, "9f2c41d07a3b"),
    ):
        assert type(msg).decode(msg.encode()) == msg
    assert PrintAck("j", None, "", 1).printed


@pytest.mark.parametrize(
    ("cls", "body", "problem"),
    [
        (PlateReading, {"plate": "", "confidence": 0.5, "ts": 1}, "field 'plate'"),
        (PlateReading, {"plate": "A1;DROP", "confidence": 0.5, "ts": 1}, "field 'plate'"),
        (PlateReading, {"plate": "A1", "confidence": 1.5, "ts": 1}, "'confidence' must be 0..1"),
        (PlateReading, {"plate": "A1", "confidence": True, "ts": 1}, "confidence"),
        (PrintJob, {"job_id": "j", "escpos": b"", "ts": 1, "not_after": 2}, "field 'escpos'"),
        (PrintJob, {"job_id": "j", "escpos": "text", "ts": 1, "not_after": 2}, "escpos"),
        (PrintJob, {"job_id": "j", "escpos": b"\n", "ts": 1, "not_after": "soon"}, "not_after"),
        (PrintAck, {"job_id": "j", "error": "jam", "detail": "", "ts": 1}, "field 'error'"),
        (PrinterStatus, {"state": "busy", "printed": 0, "seq": 1, "ts": 1}, "field 'state'"),
    ],
)
def test_device_messages_refuse_bad_fields(
    cls: type, body: dict[str, object], problem: str
) -> None:
    with pytest.raises(PayloadError, match=problem):
        cls.decode(pack(body))


def test_lane_watch_checks_the_closed_road_topics() -> None:
    lane = "p07/e1"
    plate = PlateReading("ZJA12345", 0.9, 1).encode()
    assert watch_decode(f"lane/{lane}/io/plate", plate)["plate"] == "ZJA12345"
    ack = PrintAck("j1", PrintError.BAD_JOB, "offset 2", 3).encode()
    assert watch_decode(f"lane/{lane}/printer/ack", ack)["error"] == "bad_job"
    status = PrinterStatus(PrinterState.READY, 1, 2, 3).encode()
    assert watch_decode(f"lane/{lane}/printer/status", status)["state"] == "ready"
    with pytest.raises(PayloadError, match="field 'escpos'"):
        watch_decode(f"lane/{lane}/printer/print", pack({"job_id": "j", "ts": 1}))
    with pytest.raises(PayloadError, match="field 'plate'"):
        watch_decode(f"lane/{lane}/io/plate", pack({"plate": "", "confidence": 1, "ts": 1}))


def test_the_console_shows_the_last_plate_and_takes_a_bad_one_as_garbage() -> None:
    plaza = Plaza(0.0)
    topic = "lane/p07/e1/io/plate"
    plaza.apply(topic, PlateReading("ZJA12345", 0.9, 1).encode(), 0.0, 0.0)
    [lane] = plaza.snapshot(0.0, 0.0)["lanes"]
    assert lane["plate"] == "ZJA12345" and not lane["garbage"]
    plaza.apply(topic, SensorReading("plate", True, None, 1).encode(), 0.0, 0.0)  # not a plate
    [lane] = plaza.snapshot(0.0, 0.0)["lanes"]
    assert lane["plate"] == "ZJA12345" and lane["garbage"]
