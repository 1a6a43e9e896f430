"""Whether the data directory answers the record queue (pure: the times are given).

A disk that hangs (a frozen file system, a dead NFS server, an SD card or USB stick that stops
answering) raises no error: a write or fsync just never returns, and the thread making it waits
with every later call in line behind it. The record queue (uplink.queue_thread) and the disk
probe (lane.disk_probe) say since when their oldest unanswered call waits; past `after_s` the
lane raises `disk_not_answering`, a payment fault, with the text made here, and clears it once
nothing waits that long (the disk answered: the calls in line are done).
"""

from __future__ import annotations

from pathlib import Path

from lane.wire.utc import since_utc


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
