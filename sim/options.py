"""What a simulator run is asked for: seed, speed, traffic mix, lanes, camera, acquirer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sim import metro
from sim.acquirer_faults import Faults
from sim.traffic import Mix


@dataclass
class SimOptions:
    seed: int = 1
    speed: float = 1.0
    mix: Mix = field(default_factory=Mix)
    conditions: str = "realistic"
    fps: float = 30.0
    frame_size: tuple[int, int] = (1280, 720)
    lane_id: str = "p01/l01"  # the first lane; more lanes count on from it (p01/l02, ...)
    lanes: int = 1
    mode: str = "toll"  # toll | transit-entry | transit-exit | metro (sim/metro.py)
    workdir: Path | None = None
    reaction_s: float = 0.6  # from stopping at the pay point to the phone in front of the camera
    move_up_s: float = 1.0  # from the vehicle ahead leaving the entry loop to the next on it
    max_tries: int = 3
    acquirer: Faults = field(default_factory=Faults)  # the acquirer's everyday behaviour
    decode_workers: int = 2
    change_gate: bool = True  # the scanner's change gate ([camera] change_gate)
    lane_processes: bool = False  # each lane daemon a process of its own (sim/lane_process.py)

    def lane_ids(self) -> list[str]:
        if self.mode == "metro":
            return metro.gate_ids(self.lanes)
        plaza, first = self.lane_id.split("/", 1)
        digits = "".join(c for c in first if c.isdigit())
        stem = first[: len(first) - len(digits)] if digits else first
        start = int(digits) if digits else 1
        if self.lanes == 1:
            return [self.lane_id]
        return [f"{plaza}/{stem}{start + i:02d}" for i in range(self.lanes)]
