"""A time as the lane writes it for people and in its files: UTC to the second, RFC 3339
(`2026-12-01T04:00:00Z`): key sets and deny lists, the CLIs, log and alarm texts."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def since_utc(since: float, now: float, wall: float) -> str:
    """A moment the lane measured on its monotonic clock: `since` and `now` monotonic, `wall`
    the wall time at `now`."""
    return utc_text(wall - (now - since))


def clock_utc(unix_s: float) -> str:
    """A moment read while it is near (within the day), to the second: `10:58:50 UTC`."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%H:%M:%S UTC")
