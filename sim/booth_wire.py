"""The simulator's control topic to a lane in a process of its own (`lane sim --lane-processes`).

`sim/{lane}/control`, QoS 1, never retained, JSON: what the simulator's world does to the booth
beyond the lane's own topics. A driver holds a code up to the camera or takes it away, and the
faults that reach into a lane (camera blackout, queue quota) are switched on and off.

    {"op": "show", "text": "...", "conditions": "realistic"}
    {"op": "hide"}
    {"op": "blackout", "on": true}
    {"op": "quota", "on": true}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

CONDITIONS = frozenset({"clear", "realistic", "hard"})


class ControlOp(StrEnum):
    SHOW = "show"  # a phone with `text` in front of the camera, posed from `conditions`
    HIDE = "hide"  # the window is empty
    BLACKOUT = "blackout"  # camera fault on or off
    QUOTA = "quota"  # the lane queue's bound cut to its high water, or given back


class ControlError(ValueError):
    """A control message that is not one of the above."""


@dataclass(frozen=True)
class Control:
    op: ControlOp
    text: str = ""
    conditions: str = "realistic"
    on: bool = False

    def encode(self) -> bytes:
        body: dict[str, object] = {"op": self.op.value}
        if self.op is ControlOp.SHOW:
            body |= {"text": self.text, "conditions": self.conditions}
        elif self.op in (ControlOp.BLACKOUT, ControlOp.QUOTA):
            body["on"] = self.on
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
        return cls(op)


def control_topic(lane: str) -> str:
    return f"sim/{lane}/control"


READY = "ready"  # the line a booth prints on stdout once its lane is connected and its camera runs
