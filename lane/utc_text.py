"""A moment as an operator reads it, in UTC: `2026-12-02T10:58:03Z` (pure: the times are
given). For alarms and checks that say since or until when."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(unix_s: float) -> str:
    """The wall-clock moment `unix_s` (seconds since the epoch)."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def since_utc(since: float, now: float, wall: float) -> str:
    """A moment the lane measured on its monotonic clock: `since` and `now` monotonic, `wall`
    the wall time at `now`."""
    return utc_text(wall - (now - since))
