"""The wiring map of a lane I/O controller reached over Modbus TCP (`io.toml`), pure.

Which discrete input carries each limit switch, loop and light curtain; which coils (or which
holding register and values) drive the boom; how often the inputs are read. Loaded once,
validated with every problem listed as `file: section.key: what is wrong` (like lane.toml), and
used to turn a block of input bits into named readings. See deploy/io.example.toml and
docs/lane-io.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lane.toml_model import read_toml, validate

# Everything the bridge reads from discrete inputs; the sensors are published on io/{name}.
SENSORS = ("entry_loop", "safety_loop", "exit_loop", "light_curtain")
SWITCHES = ("open_limit", "closed_limit", "drive_fault")
Address = int


class IoMapError(ValueError):
    """A wiring map that cannot be used, with every problem listed (one per line)."""


class Target(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControllerSection(_Section):
    unit: int = Field(1, ge=0, le=247, description="Modbus unit (slave) id of the controller")
    poll_s: float = Field(0.05, gt=0, le=5, description="How often the inputs are read")
    timeout_s: float = Field(0.5, gt=0, le=10, description="Wait for one answer")
    retry_s: float = Field(1.0, gt=0, le=60, description="Reconnect this often when it is away")
    travel_s: float = Field(8.0, gt=0, le=120, description="A move must reach its limit in this")


class CoilDrive(_Section):
    """One coil per direction, held while moving: writing one clears the other."""

    kind: Literal["coils"] = "coils"
    open_coil: Address = Field(ge=0, le=65535)
    close_coil: Address = Field(ge=0, le=65535)

    @model_validator(mode="after")
    def _distinct(self) -> CoilDrive:
        if self.open_coil == self.close_coil:
            raise ValueError("open_coil and close_coil must differ")
        return self


class RegisterDrive(_Section):
    """One holding register, written with the value of the wanted direction."""

    kind: Literal["register"]
    holding_register: Address = Field(ge=0, le=65535)
    open_value: int = Field(ge=0, le=65535)
    close_value: int = Field(ge=0, le=65535)

    @model_validator(mode="after")
    def _distinct(self) -> RegisterDrive:
        if self.open_value == self.close_value:
            raise ValueError("open_value and close_value must differ")
        return self


class InputsSection(_Section):
    """Discrete input addresses (0-based, as on the wire); optional ones may be left out."""

    open_limit: Address = Field(ge=0, le=65535)
    closed_limit: Address = Field(ge=0, le=65535)
    drive_fault: Address | None = Field(None, ge=0, le=65535)
    entry_loop: Address | None = Field(None, ge=0, le=65535)
    safety_loop: Address | None = Field(None, ge=0, le=65535)
    exit_loop: Address | None = Field(None, ge=0, le=65535)
    light_curtain: Address | None = Field(None, ge=0, le=65535)
    # Inputs wired normally closed (fail-safe: a cut wire reads as occupied or as a fault).
    active_low: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> InputsSection:
        if self.safety_loop is None and self.light_curtain is None:
            raise ValueError("needs safety_loop or light_curtain: nothing may close blind")
        used = {n: a for n, a in self.addresses().items()}
        if len(set(used.values())) != len(used):
            raise ValueError(f"two inputs share an address: {used}")
        unknown = sorted(set(self.active_low) - set(used))
        if unknown:
            raise ValueError(f"active_low names inputs that are not wired: {unknown}")
        return self

    def addresses(self) -> dict[str, Address]:
        names = (*SWITCHES, *SENSORS)
        found = {n: getattr(self, n) for n in names}
        return {n: a for n, a in found.items() if a is not None}


class IoMap(_Section):
    controller: ControllerSection = Field(default_factory=ControllerSection)
    drive: CoilDrive | RegisterDrive = Field(discriminator="kind")
    inputs: InputsSection

    @property
    def sensors(self) -> tuple[str, ...]:
        """The loops and curtains this lane has, in publishing order."""
        wired = self.inputs.addresses()
        return tuple(s for s in SENSORS if s in wired)

    def input_span(self) -> tuple[Address, int]:
        """(first address, count): one read covers every wired input."""
        addresses = self.inputs.addresses().values()
        first = min(addresses)
        return first, max(addresses) - first + 1

    def decode(self, bits: Sequence[bool]) -> dict[str, bool]:
        """Named, active-high values from the bits of one read of `input_span()`."""
        first, count = self.input_span()
        if len(bits) < count:
            raise IoMapError(f"expected {count} input bits, got {len(bits)}")
        low = set(self.inputs.active_low)
        return {
            name: bool(bits[address - first]) != (name in low)
            for name, address in self.inputs.addresses().items()
        }


def observed_state(values: dict[str, bool]) -> str | None:
    """What the limit switches say: "open", "closed", "fault" (both at once), None (between)."""
    opened, closed = values["open_limit"], values["closed_limit"]
    if opened and closed:
        return "fault"
    if opened:
        return "open"
    if closed:
        return "closed"
    return None


def parse_iomap(data: dict[str, object], source: str = "<io map>") -> IoMap:
    return validate(IoMap, data, source, IoMapError, hidden=("coils", "register"))


def load_iomap(path: Path) -> IoMap:
    return parse_iomap(read_toml(path, IoMapError), str(path))
