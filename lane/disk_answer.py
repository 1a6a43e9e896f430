"""Whether the data directory answers the record queue (pure: the times are given).

A disk that hangs (a frozen file system, a dead NFS server, an SD card or USB stick that stops
answering) raises no error: a write or fsync just never returns, and the thread making it waits
with every later call in line behind it. The record queue (uplink.queue_thread) and the disk
probe (lane.disk_probe) say since when their oldest unanswered call waits; past `after_s` the
lane raises `disk_not_answering`, a payment fault, with the text made here, and clears it once
no call has waited that long for `hold_s` (`clear_after_s`). Clearing as soon as the late call
answers would flap on a slow disk whose every write takes a little longer than `after_s` but
ends: each clear let a payment start, each raise closed the lane again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lane.wire.utc import since_utc


def clear_after_s(after_s: float, clear_s: float) -> float:
    """The hold-off before the fault clears: `clear_s` (`lane.disk_clear_s`), never shorter
    than the limit itself, so a disk late every `after_s` or so never reopens the lane."""
    return max(after_s, clear_s)


@dataclass(frozen=True)
class DiskAnswers:
    """One health tick's judgement: `late_at`, the monotonic time a call was last seen waiting
    past the limit (the next tick's input), None once the hold-off is over; `late`, the
    alarm's text while a call waits past the limit now."""

    late_at: float | None
    late: str | None

    @property
    def holds(self) -> bool:
        """The fault holds: raised by a late call, not yet cleared by the hold-off."""
        return self.late_at is not None


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
    return DiskAnswers(late_at, None)


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
