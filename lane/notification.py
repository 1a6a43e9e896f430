"""What the runner tells its observers: the core's notes (lane.core.notes), and what the shell
itself reports (`ShellNote`): the display, alarms, records written, phase changes.

Observers receive one typed value and dispatch on its type (`match`); a consumer that only
forwards (the events topic, the simulator's dashboard) uses `.name` and `.fields()`, which every
notification has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lane.core.notes import Note


class ShellNoteName(StrEnum):
    DISPLAY = "display"  # fields: lines
    ALARM = "alarm"  # fields: code, active, message (when raised)
    RECORD = "record"  # fields: record (the record's wire map)
    PHASE = "phase"  # fields: from, to


@dataclass(frozen=True)
class ShellNote:
    name: ShellNoteName
    body: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        return self.body


Notification = Note | ShellNote
Observer = Callable[[Notification], None]
