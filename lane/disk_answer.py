"""Whether the data directory answers the record queue (pure: the times are given).

A disk that hangs (a frozen file system, a dead NFS server, an SD card or USB stick that stops
answering) raises no error: a write or fsync just never returns, and the thread making it waits
with every later call in line behind it. The record queue (uplink.queue_thread) and the disk
probe (lane.disk_probe) say since when their oldest unanswered call waits; past `after_s` the
lane raises `disk_not_answering`, a payment fault, with the text made here, and clears it once
no call has waited that long for `hold_s` (`clear_after_s`). Clearing as soon as the late call
answers would flap on a slow disk whose every write takes a little longer than `after_s` but
ends: each clear let a payment start, each raise closed the lane again. Meanwhile the alarm
says so (`DiskPhase.AGAIN`): the disk answers, and when the lane reopens unless it stalls again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lane.wire.utc import clock_utc, since_utc


def clear_after_s(after_s: float, clear_s: float) -> float:
    """The hold-off before the fault clears: `clear_s` (`lane.disk_clear_s`), never shorter
    than the limit itself, so a disk late every `after_s` or so never reopens the lane."""
    return max(after_s, clear_s)


class DiskPhase(StrEnum):
    """What the alarm says while the fault holds."""

    LATE = "late"  # a call waits past the limit now
    AGAIN = "again"  # the disk answers; the hold-off runs


@dataclass(frozen=True)
class DiskAnswers:
    """One health tick's judgement: `late_at`, the monotonic time a call was last seen waiting
    past the limit (the next tick's input), None once the hold-off is over; `late`, the
    alarm's text while a call waits past the limit now; `again`, its text while the hold-off
    runs after the disk answered."""

    late_at: float | None
    late: str | None
    again: str | None = None

    @property
    def holds(self) -> bool:
        """The fault holds: raised by a late call, not yet cleared by the hold-off."""
        return self.late_at is not None

    @property
    def phase(self) -> DiskPhase | None:
        """None while the fault does not hold."""
        if self.late is not None:
            return DiskPhase.LATE
        return DiskPhase.AGAIN if self.holds else None


def judged(
    data_dir: Path,
    since: float | None,
    now: float,
    wall: float,
    *,
    after_s: float,
    hold_s: float,
    late_at: float | None,
) -> DiskAnswers:
    """The fault holds while the oldest unanswered call (made at monotonic `since`) has waited
    `after_s` or more, and `hold_s` after the last tick that saw one (`late_at`); it is raised
    only by a call late now, with that call's text."""
    text = not_answering(data_dir, since, now, wall, after_s)
    if text is not None:
        return DiskAnswers(now, text)
    if late_at is None or now - late_at >= hold_s:
        return DiskAnswers(None, None)
    return DiskAnswers(late_at, None, answers_again(data_dir, late_at + hold_s, now, wall))


def answers_again(data_dir: Path, reopens: float, now: float, wall: float) -> str:
    """The alarm's detail while the hold-off runs: the lane reopens at monotonic `reopens`
    (the health tick that sees it over comes within a second of it: rounded up)."""
    at = clock_utc(math.ceil(wall + reopens - now))
    return f"{data_dir}: the lane reopens at {at} unless it stalls again"


def not_answering(
    data_dir: Path, since: float | None, now: float, wall: float, after_s: float
) -> str | None:
    """The alarm's detail while the oldest unanswered call (made at monotonic `since`; `now`
    is monotonic too, `wall` the wall time at `now`) has waited `after_s` or more; else None."""
    if since is None or now - since < after_s:
        return None
    return (
        f"{data_dir}: a read or write unanswered for {now - since:.0f} s"
        f" (since {since_utc(since, now, wall)}); no payments until it answers"
    )
