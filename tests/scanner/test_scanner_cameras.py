"""Network cameras through OpenCV's real FFmpeg path: transport, reasons, timeouts, recovery,
credentials, and FFmpeg's own messages."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import pytest
from camera_kit import MjpegCamera, RtspCamera, gstreamer_camera
from scanner_testkit import STICKER, THUMB, TOKEN, FakeClock
from test_scanner_sources import ScriptedCapture, kinds

from lane.doctor import probe_camera
from scanner.camera_net import reachable, redact, redact_text
from scanner.decoders import make_decoder
from scanner.detection import as_gray
from scanner.diagnose import why_not_open
from scanner.health import CaptureSettings, SourceEvent
from scanner.sources import CaptureSource, Frame, Item, open_source
from sim.broker import free_port
from sim.camera import frame_for
from sim.render import render_frame


def events_until(items: Iterator[Item], wanted: str, within_s: float = 20.0) -> list[Item]:
    """Items of a live source until an event of kind `wanted` (bounded)."""
    seen: list[Item] = []
    deadline = time.monotonic() + within_s
    for item in items:
        seen.append(item)
        if isinstance(item, SourceEvent) and item.kind == wanted:
            return seen
        assert time.monotonic() < deadline, f"no {wanted}: {kinds(seen)[-10:]}"
    raise AssertionError(f"stream ended before {wanted}: {kinds(seen)}")


# --- credentials ---------------------------------------------------------------------------------


def test_credentials_are_redacted_from_urls_and_texts() -> None:
    assert redact("rtsp://admin:s3cret@192.0.2.7:8554/stream1") == (
        "rtsp://admin:***@192.0.2.7:8554/stream1"
    )
    assert redact("rtsp://192.0.2.7/stream1") == "rtsp://192.0.2.7/stream1"
    assert redact("0") == "0" and redact(0) == "0"
    line = "[rtsp @ 0x5] Could not open rtsp://admin:s3cret@192.0.2.7/stream1: 401"
    assert (
        redact_text(line) == "[rtsp @ 0x5] Could not open rtsp://admin:***@192.0.2.7/stream1: 401"
    )


async def test_no_password_in_camera_events_logs_or_doctor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/stream1"
    clock = FakeClock()
    source = open_source(url, clock=clock, sleep=clock.sleep)
    with caplog.at_level(logging.INFO):
        items = list(itertools.islice(source.stream(), 2))
    source.close()
    assert source.name == redact(url)
    assert all(isinstance(i, SourceEvent) and i.source == redact(url) for i in items)
    assert caplog.records and {getattr(r, "source", None) for r in caplog.records} == {redact(url)}
    assert "s3cret" not in caplog.text
    probe = await probe_camera(url, 2.0, CaptureSettings(open_timeout_s=1.0))
    assert probe.status == "FAIL" and "s3cret" not in probe.line()
    assert "admin:***@127.0.0.1" in probe.detail and "connection refused" in probe.detail


# --- the real reason, and the RTSP transport ---------------------------------------------------


def test_a_refused_describe_is_named() -> None:
    camera = RtspCamera(describe_status=(400, "Bad Request"))
    try:
        assert why_not_open(camera.url()) == "the camera answered DESCRIBE with 400 Bad Request"
    finally:
        camera.close()


async def test_the_reason_reaches_the_blackout_alarm_and_doctor() -> None:
    camera = RtspCamera(describe_status=(400, "Bad Request"))
    try:
        clock = FakeClock()
        source = open_source(camera.url(), clock=clock, sleep=clock.sleep)
        stream = source.stream()
        blackout = next(i for i in stream if isinstance(i, SourceEvent) and i.kind == "blackout")
        source.close()
        # What the lane's camera_blackout alarm (status, /readyz) says.
        assert blackout.detail == (
            "no frames for 2.0 s (cannot open: the camera answered DESCRIBE with 400 Bad Request)"
        )
        probe = await probe_camera(camera.url(), 2.0, CaptureSettings(open_timeout_s=1.0))
        assert probe.line() == (
            f"FAIL camera   {camera.url()}: cannot open: "
            "the camera answered DESCRIBE with 400 Bad Request"
        )
    finally:
        camera.close()


def test_digest_credentials_are_used_to_ask() -> None:
    camera = RtspCamera(credentials=("admin", "s3cret"))
    try:
        reason = why_not_open(camera.url("admin:s3cret@"), "tcp")
        assert reason.startswith("the camera answers RTSP (DESCRIBE, SETUP over tcp)")
        reason = why_not_open(camera.url("admin:wrong@"), "tcp")
        assert reason == "the camera answered DESCRIBE with 401 Unauthorized"
    finally:
        camera.close()


def test_a_udp_only_camera_gets_the_transport_it_needs() -> None:
    """OpenCV asked every camera for TCP; the transport is now a setting, and a camera that
    refuses it says so (461) in the event, the alarm and doctor, with the fix."""
    camera = RtspCamera(udp_only=True)
    try:
        tcp = CaptureSettings(rtsp_transport="tcp", open_timeout_s=2.0)
        source = open_source(camera.url(), settings=tcp)
        stream = source.stream()
        first = next(stream)
        source.close()
        assert isinstance(first, SourceEvent) and first.kind == "reconnecting"
        assert "refuses RTSP over tcp (461 Unsupported Transport)" in first.detail
        assert "camera.rtsp_transport = 'udp'" in first.detail
        assert camera.setups()[0].startswith("RTP/AVP/TCP")  # what OpenCV asked for

        camera.requests.clear()
        udp = CaptureSettings(rtsp_transport="udp", open_timeout_s=2.0)
        source = open_source(camera.url(), settings=udp)
        next(source.stream())
        source.close()
        opencv_setups = [t for t in camera.setups() if "client_port=50000" not in t]
        assert opencv_setups and all("/TCP" not in t for t in opencv_setups)
        assert "client_port=" in opencv_setups[0]
    finally:
        camera.close()


def test_a_udp_only_gstreamer_camera_streams_its_code_over_udp(tmp_path: Path) -> None:
    """Debian's GStreamer RTSP server, UDP only: TCP is refused with the reason and the fix;
    with rtsp_transport = "udp" the lane gets frames and reads the code in them."""
    image = tmp_path / "phone.png"
    cv2.imwrite(str(image), frame_for("LT1:RTSP-OVER-UDP", "clear", rng=1, size=(640, 360)))
    with gstreamer_camera(image, udp_only=True) as url:
        tcp = open_source(url, settings=CaptureSettings(rtsp_transport="tcp", open_timeout_s=5))
        refused = next(tcp.stream())
        tcp.close()
        assert isinstance(refused, SourceEvent) and refused.kind == "reconnecting"
        assert "refuses RTSP over tcp (461 Unsupported transport)" in refused.detail
        assert "camera.rtsp_transport = 'udp'" in refused.detail
        udp = open_source(url, settings=CaptureSettings(rtsp_transport="udp", open_timeout_s=5))
        items = list(itertools.islice(udp.stream(), 3))
        udp.close()
    assert kinds(items)[0] == "opened"
    frame = items[1]
    assert isinstance(frame, Frame)
    texts = [d.text for d in make_decoder("zxing").decode(as_gray(frame.image))]
    assert texts == ["LT1:RTSP-OVER-UDP"]


def test_a_gstreamer_camera_with_a_sticker_in_view_reads_the_covered_code_beside_it(
    tmp_path: Path,
) -> None:
    """The lane's camera path (RTSP over TCP, FFmpeg's MJPEG decoding): a booth sticker read in
    every frame and, beside it, a phone under a thumb that only the covered pass reads."""
    image = tmp_path / "booth.png"
    cv2.imwrite(str(image), render_frame(replace(THUMB, sticker=STICKER), 1))
    with gstreamer_camera(image) as url:
        source = open_source(url, settings=CaptureSettings(open_timeout_s=5))
        frames = [i for i in itertools.islice(source.stream(), 4) if isinstance(i, Frame)]
        source.close()
    cascade = make_decoder()
    reads = [[(d.text, d.decoder) for d in cascade.decode(as_gray(f.image))] for f in frames]
    assert reads and all(r == [(STICKER, "zxing"), (TOKEN, "zxing+covered")] for r in reads)


# --- open timeout separate from the blackout timeout --------------------------------------------


def test_a_slow_first_frame_opens_without_a_false_blackout() -> None:
    """A first frame 1.5 s after connecting (a long keyframe interval) with a 0.5 s blackout:
    the open waits for it (open_timeout_s), and no blackout is raised after opening."""
    camera = MjpegCamera(first_delay_s=1.5)
    camera.start()
    try:
        settings = CaptureSettings(open_timeout_s=5.0, blackout_s=0.5)
        source = open_source(camera.url, settings=settings)
        items = list(itertools.islice(source.stream(), 6))
        source.close()
        assert kinds(items)[0] == "opened"
        assert all(isinstance(i, Frame) for i in items[1:])
        assert camera.requests == 1
    finally:
        camera.stop()


# --- recovery: fast, without hammering -----------------------------------------------------------


def test_a_camera_that_comes_back_is_reopened_at_once() -> None:
    """The backoff has grown to 4 s, but the probe sees the camera back after 0.5 s of it."""
    clock = FakeClock()
    script = iter([(False, 0), (False, 0), (False, 0), (True, 1)])
    answers = iter([False, False, False, False, False, False, False, True])
    source = CaptureSource(
        "rtsp://192.0.2.7/stream1",
        live=True,
        clock=clock,
        sleep=clock.sleep,
        open_capture=lambda _t: ScriptedCapture(*next(script)),
        probe=lambda: next(answers),
    )
    items = list(itertools.islice(source.stream(), 7))
    source.close()
    assert kinds(items) == [
        "reconnecting", "reconnecting", "reconnecting", "blackout", "opened", "recovered", "frame1"
    ]  # fmt: skip
    # Each wait probes once before it starts, then every 0.5 s: 0.5 s and 1.0 s waited in
    # full; of the 2.0 s wait only 1.0 s: the camera was back, reopened at once.
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5, 0.5]
    # Dead meanwhile: one full open per backoff step, one cheap probe per 0.5 s.
    assert len(clock.sleeps) == 5


def test_a_port_that_answers_but_will_not_stream_is_not_hammered() -> None:
    """Reachable all along (the camera is up but refuses the stream): the backoff holds."""
    clock = FakeClock()
    source = CaptureSource(
        "rtsp://192.0.2.7/stream1",
        live=True,
        clock=clock,
        sleep=clock.sleep,
        open_capture=lambda _t: ScriptedCapture(False, 0),
        probe=lambda: True,
        diagnose=lambda: "the camera answered DESCRIBE with 404 Not Found",
    )
    stream = source.stream()
    items = [next(stream)]
    while kinds(items).count("reconnecting") < 4:
        items.append(next(stream))
    source.close()
    assert sum(clock.sleeps) == 0.5 + 1.0 + 2.0  # the full backoff, probes or not
    assert "404 Not Found" in items[0].detail  # type: ignore[union-attr]


def test_a_real_camera_outage_is_recovered_from(caplog: pytest.LogCaptureFixture) -> None:
    camera = MjpegCamera()
    camera.start()
    settings = CaptureSettings(open_timeout_s=3.0, blackout_s=0.5, retry_max_s=30.0)
    source = open_source(camera.url, settings=settings)
    stream = source.stream()
    try:
        events_until(stream, "opened")
        camera.stop()
        events_until(stream, "lost")
        # Down for three reopen attempts: the next wait would be 2 s, then 4 s.
        for _ in range(3):
            events_until(stream, "reconnecting")
        assert reachable(camera.url) is False
        camera.start()
        with caplog.at_level(logging.INFO, logger="lane.scanner"):
            seen = events_until(stream, "opened")
        # Reopened on the probe's word, not at the end of the 2 s backoff: no attempt between.
        assert "camera answers again: reopening" in caplog.text
        assert kinds(seen) == ["opened"]
        assert source.reconnects == 1
    finally:
        source.close()
        camera.stop()


# --- FFmpeg's and OpenCV's own lines -------------------------------------------------------------

CHILD = """
import cv2, sys
from lane.log import setup_logging
from scanner.native_log import capture_native_stderr, release_native_stderr
setup_logging("INFO", lane="p01/l01")
capture_native_stderr()
cv2.VideoCapture(sys.argv[1], cv2.CAP_FFMPEG)
release_native_stderr()
"""


def test_native_stderr_lines_become_json_events() -> None:
    """In a process of its own, as `lane run` does it: fd 2 carries nothing any more."""
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/stream1"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    events: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    native = [e for e in events if e["event"] == "native stderr"]
    assert native and all(e["logger"] == "lane.native" and e["lane"] == "p01/l01" for e in native)
    assert any("Connection refused" in e["line"] or "WARN" in e["line"] for e in native)
    assert "s3cret" not in done.stdout
