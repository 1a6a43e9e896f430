"""Actions: everything the lane core can ask the shell to do (notes, one class per note, are in
lane.core.notes; `Note` is their union)."""

from __future__ import annotations

from dataclasses import dataclass

from lane.core.names import PayloadKind
from lane.core.notes import Note, NoteBase
from lane.core.records import RecordDraft


@dataclass(frozen=True)
class ShowOnDisplay:
    lines: tuple[str, ...]
    ttl_s: float = 10.0


@dataclass(frozen=True)
class Authorise:
    auth_id: str
    vehicle_id: str
    text: str
    kind: PayloadKind
    amount_minor: int
    currency: str
    deadline: float


@dataclass(frozen=True)
class Abandon:
    """The lane gave up on an authorisation: whatever it charged must be resolved (reversed)."""

    auth_id: str
    reason: str


@dataclass(frozen=True)
class Settle:
    """The record of this authorisation is durable: it must never be reversed."""

    auth_id: str


@dataclass(frozen=True)
class Persist:
    persist_id: str
    draft: RecordDraft


@dataclass(frozen=True)
class OpenBarrier:
    cmd_id: str
    deadline: float
    attempt: int = 1


@dataclass(frozen=True)
class CloseBarrier:
    cmd_id: str
    deadline: float
    attempt: int = 1


@dataclass(frozen=True)
class QueryDevice:
    """Ask the barrier device for its whole truth; it answers with a DeviceSnapshotted."""

    query_id: str
    reason: str


@dataclass(frozen=True)
class RaiseAlarm:
    code: str
    message: str


@dataclass(frozen=True)
class ClearAlarm:
    code: str


Action = (
    ShowOnDisplay
    | Authorise
    | Abandon
    | Settle
    | Persist
    | OpenBarrier
    | CloseBarrier
    | QueryDevice
    | RaiseAlarm
    | ClearAlarm
    | Note
)

__all__ = [
    "Abandon",
    "Action",
    "Authorise",
    "ClearAlarm",
    "CloseBarrier",
    "Note",
    "NoteBase",
    "OpenBarrier",
    "Persist",
    "QueryDevice",
    "RaiseAlarm",
    "Settle",
    "ShowOnDisplay",
]
