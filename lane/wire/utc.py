"""A time as the lane writes it for people and in its files: UTC to the second, RFC 3339
(`2026-12-01T04:00:00Z`): key sets and deny lists, the CLIs, log and alarm texts."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
