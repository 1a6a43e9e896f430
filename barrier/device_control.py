"""Bench control of an emulated lane device over MQTT: faults and vehicles, one message each.

`lane device --emulate` subscribes to `lane/{id}/device/control`; an operator, a test or a
script publishes a `DeviceControl` there to inject or clear a fault or to play a vehicle on the
emulated loops. A real device (or the Modbus bridge) never listens to this topic: the shipped
ACL grants it to the `bench` user only. Pure: the message and how it maps onto the emulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Self

from barrier.device import FAULTS, DeviceEmulator
from barrier.messages import MAX_ID, _compact, _count, _Message, _text
from lane.wire.codec import PayloadError, field, optional

PRESENCE_SENSORS = frozenset({"entry_loop", "safety_loop", "exit_loop", "light_curtain"})


def device_control(lane: str) -> str:
    return f"lane/{lane}/device/control"


class ControlOp(StrEnum):
    FAULT = "fault"  # `fault`: one of barrier.device.FAULTS, or absent to clear
    VEHICLE_ENTERS = "vehicle_enters"  # `class`: the classifier's reading, then the entry loop
    VEHICLE_PASSES = "vehicle_passes"  # safety loop, entry clear, safety clear, exit loop
    VEHICLE_BACKS_AWAY = "vehicle_backs_away"  # entry loop clear
    SENSOR = "sensor"  # `sensor` and `occupied`: one presence sensor


@dataclass(frozen=True)
class DeviceControl(_Message):
    """Bench → emulated device: one control action, with an id for the logs."""

    ctl_id: str
    op: ControlOp
    fault: str | None = None
    vehicle_class: int | None = None
    sensor: str | None = None
    occupied: bool | None = None

    def __post_init__(self) -> None:
        _text(self.ctl_id, "ctl_id", limit=MAX_ID)
        if self.op not in set(ControlOp):
            raise PayloadError(f"field 'op' must be one of {sorted(ControlOp)}, got {self.op!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise PayloadError(f"field 'fault' must be one of {sorted(FAULTS)}, got {self.fault!r}")
        if self.op == ControlOp.VEHICLE_ENTERS:
            if self.vehicle_class is None:
                raise PayloadError("vehicle_enters needs field 'class'")
            _count(self.vehicle_class, "class")
        if self.op == ControlOp.SENSOR:
            if self.sensor not in PRESENCE_SENSORS:
                raise PayloadError(
                    f"field 'sensor' must be one of {sorted(PRESENCE_SENSORS)}, got {self.sensor!r}"
                )
            if not isinstance(self.occupied, bool):
                raise PayloadError("sensor needs field 'occupied' (bool)")

    def to_map(self) -> dict[str, Any]:
        return _compact(
            {
                "ctl_id": self.ctl_id,
                "op": str(self.op),
                "fault": self.fault,
                "class": self.vehicle_class,
                "sensor": self.sensor,
                "occupied": self.occupied,
            }
        )

    @classmethod
    def from_map(cls, body: Mapping[str, Any]) -> Self:
        op = field(body, "op", str)
        if op not in set(ControlOp):
            raise PayloadError(f"field 'op' must be one of {sorted(ControlOp)}, got {op!r}")
        return cls(
            ctl_id=field(body, "ctl_id", str),
            op=ControlOp(op),
            fault=optional(body, "fault", str),
            vehicle_class=optional(body, "class", int),
            sensor=optional(body, "sensor", str),
            occupied=optional(body, "occupied", bool),
        )


async def apply(device: DeviceEmulator, control: DeviceControl) -> None:
    """Carry one control out on the emulator."""
    match control.op:
        case ControlOp.FAULT:
            device.set_fault(control.fault)
        case ControlOp.VEHICLE_ENTERS:
            assert control.vehicle_class is not None  # checked in __post_init__
            await device.vehicle_enters(control.vehicle_class)
        case ControlOp.VEHICLE_PASSES:
            await device.vehicle_passes()
        case ControlOp.VEHICLE_BACKS_AWAY:
            await device.vehicle_backs_away()
        case ControlOp.SENSOR:
            assert control.sensor is not None and control.occupied is not None
            await device.set_sensor(control.sensor, control.occupied)
