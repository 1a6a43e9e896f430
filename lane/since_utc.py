"""An alarm's "since" as an operator reads it: the wall clock's UTC time of a moment the lane
measured on its monotonic clock (pure: the times are given)."""

from __future__ import annotations

import time


def since_utc(since: float, now: float, wall: float) -> str:
    """`since` and `now` monotonic, `wall` the wall time at `now`: HH:MM:SS (UTC) of `since`."""
    return time.strftime("%H:%M:%S", time.gmtime(wall - (now - since)))
