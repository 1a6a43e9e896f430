"""The simulator's control topic to a lane in a process of its own (`lane sim --lane-processes`).

`sim/{lane}/control`, QoS 1, never retained, JSON: what the simulator's world does to the booth
beyond the lane's own topics. A driver holds a code up to the camera or takes it away, and the
faults that reach into a lane (camera blackout, queue quota) are switched on and off.

    {"op": "show", "text": "...", "conditions": "realistic"}
    {"op": "hide"}
    {"op": "blackout", "on": true}
    {"op": "quota", "on": true}
    {"op": "frame", "quality": 70, "hold_s": 3.0}

`frame` asks for the frame the lane's scanner decoded last (the dashboard's camera view); the
booth answers on `sim/{lane}/frame` (QoS 0, msgpack: `frame_id`, `polygons`, `jpeg`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from lane.wire.codec import PayloadError, pack, unpack
from scanner.pipeline import LatestFrame

CONDITIONS = frozenset({"clear", "realistic", "hard"})


class ControlOp(StrEnum):
    SHOW = "show"  # a phone with `text` in front of the camera, posed from `conditions`
    HIDE = "hide"  # the window is empty
    BLACKOUT = "blackout"  # camera fault on or off
    QUOTA = "quota"  # the lane queue's bound cut to its high water, or given back
    FRAME = "frame"  # send the frame the scanner decoded last, as JPEG of `quality`


class ControlError(ValueError):
    """A control message that is not one of the above."""


@dataclass(frozen=True)
class Control:
    op: ControlOp
    text: str = ""
    conditions: str = "realistic"
    on: bool = False
    quality: int = 70
    hold_s: float = 0.0  # the last frame a code was read in, for this long after it was read

    def encode(self) -> bytes:
        body: dict[str, object] = {"op": self.op.value}
        if self.op is ControlOp.SHOW:
            body |= {"text": self.text, "conditions": self.conditions}
        elif self.op in (ControlOp.BLACKOUT, ControlOp.QUOTA):
            body["on"] = self.on
        elif self.op is ControlOp.FRAME:
            body |= {"quality": self.quality, "hold_s": self.hold_s}
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Control:
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ControlError(f"not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ControlError("not a JSON object")
        try:
            op = ControlOp(str(body.get("op")))
        except ValueError as exc:
            raise ControlError(f"unknown op {body.get('op')!r}") from exc
        if op is ControlOp.SHOW:
            text, conditions = body.get("text"), body.get("conditions")
            if not isinstance(text, str) or not text:
                raise ControlError("show needs a non-empty 'text'")
            if conditions not in CONDITIONS:
                raise ControlError(f"show needs 'conditions' in {sorted(CONDITIONS)}")
            return cls(op, text=text, conditions=conditions)
        if op in (ControlOp.BLACKOUT, ControlOp.QUOTA):
            on = body.get("on")
            if not isinstance(on, bool):
                raise ControlError(f"{op} needs a boolean 'on'")
            return cls(op, on=on)
        if op is ControlOp.FRAME:
            quality, hold_s = body.get("quality"), body.get("hold_s")
            if not isinstance(quality, int) or not 1 <= quality <= 100:
                raise ControlError("frame needs 'quality' within 1..100")
            if not isinstance(hold_s, int | float) or not 0 <= hold_s <= 60:
                raise ControlError("frame needs 'hold_s' within 0..60")
            return cls(op, quality=quality, hold_s=float(hold_s))
        return cls(op)


def control_topic(lane: str) -> str:
    return f"sim/{lane}/control"


def frame_topic(lane: str) -> str:
    return f"sim/{lane}/frame"


def encode_frame(frame: LatestFrame) -> bytes:
    if not isinstance(frame.image, bytes):
        raise TypeError("a frame goes out as JPEG bytes")
    polygons = [[list(point) for point in polygon] for polygon in frame.polygons]
    return pack({"frame_id": frame.frame_id, "polygons": polygons, "jpeg": frame.image})


def decode_frame(payload: bytes) -> LatestFrame:
    """A booth's frame; PayloadError when it is not one."""
    body = unpack(payload)
    frame_id, polygons, jpeg = body.get("frame_id"), body.get("polygons"), body.get("jpeg")
    if not isinstance(frame_id, int) or not isinstance(jpeg, bytes):
        raise PayloadError("a frame needs an int 'frame_id' and bytes 'jpeg'")
    if not isinstance(polygons, list):
        raise PayloadError("a frame needs a list 'polygons'")
    try:
        outlines = tuple(tuple((int(x), int(y)) for x, y in polygon) for polygon in polygons)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"a frame's polygons must be lists of [x, y]: {exc}") from exc
    return LatestFrame(frame_id, jpeg, outlines)


READY = "ready"  # the line a booth prints on stdout once its lane is connected and its camera runs
OPS = "ops "  # the line before it: where the lane's /metrics, /healthz, /readyz are served
NOT_SERVED = "-"


def ops_line(address: tuple[str, int] | None) -> str:
    """The booth's ops line: its lane's HTTP endpoint (lane/ops.py), or that there is none."""
    return OPS + (NOT_SERVED if address is None else f"http://{address[0]}:{address[1]}")


def ops_url(line: str) -> str | None:
    """The endpoint an ops line names (None: not served); ValueError for another line."""
    if not line.startswith(OPS):
        raise ValueError(f"not an ops line: {line!r}")
    url = line.removeprefix(OPS)
    return None if url == NOT_SERVED else url
