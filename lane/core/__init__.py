"""The pure lane core: events in, actions out, no I/O."""

from lane.core.machine import initial_state, next_deadline, step
from lane.core.state import FlatFares, LaneMode, LaneRules, LaneState, Phase, phase

__all__ = [
    "FlatFares",
    "LaneMode",
    "LaneRules",
    "LaneState",
    "Phase",
    "initial_state",
    "next_deadline",
    "phase",
    "step",
]
