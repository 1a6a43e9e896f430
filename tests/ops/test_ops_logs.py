"""Logs: one JSON object per line, with the lane id, and the record id on record events."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_kit import running_lane

from lane.log import JsonFormatter, setup_logging
from sim.broker import Mosquitto


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What `lane run` would print: setup_logging's handler, restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    setup_logging("INFO", stream, lane="p01/l01")
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved


def parse(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_the_lane(json_lines: io.StringIO) -> None:
    log = logging.getLogger("lane.test")
    log.info("record written", extra={"record_id": "r-1", "seq": 7})
    log.warning("two\nlines", extra={"detail": {"nested": [1, 2]}})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = json_lines.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["lane"] == "p01/l01" and first["record_id"] == "r-1" and first["seq"] == 7
    assert first["event"] == "record written" and first["level"] == "info"
    assert first["ts"].endswith("Z") and first["logger"] == "lane.test"
    assert second["event"] == "two\nlines" and second["detail"] == {"nested": [1, 2]}
    assert "ValueError: boom" in third["exc"]


def test_a_field_named_like_ours_does_not_replace_it(json_lines: io.StringIO) -> None:
    # scanner/sources.py logs camera events with extra={"event": kind}, sim/camera.py with "ts".
    logging.getLogger("lane.scanner").warning(
        "camera %s: %s", "blackout", "no frames", extra={"event": "blackout", "ts": 12.5}
    )
    (line,) = parse(json_lines)
    assert line["event"] == "camera blackout: no frames"
    assert line["event_"] == "blackout" and line["ts_"] == 12.5
    assert line["ts"].endswith("Z")


async def test_the_daemons_record_logs_carry_the_record_and_the_lane(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"lane": lane_id}))
    lane_log = logging.getLogger("lane")
    saved_level = lane_log.level
    lane_log.addHandler(handler)
    lane_log.setLevel(logging.INFO)
    try:
        async with running_lane(tmp_path, mosquitto, lane_id) as lane:
            assert await lane.serve("token") == "barrier_opened"
            assert await lane.serve("expired") == "declined"
    finally:
        lane_log.removeHandler(handler)
        lane_log.setLevel(saved_level)
    lines = parse(stream)
    assert lines and all(line["lane"] == lane_id for line in lines)
    written = [line for line in lines if line["event"] == "record written"]
    records = [fields["record"] for fields in lane.named("record")]
    assert len(written) == len(records) == 2
    for line, record in zip(written, records, strict=True):
        assert line["record_id"] == record["record_id"]
        assert line["seq"] == record["seq"]
    assert [line["result"] for line in written] == ["approved", "declined"]
    assert any(line["event"] == "barrier command sent" and "cmd_id" in line for line in lines)
    assert any(line["event"] == "lane starting" for line in lines)
