"""What the lane may accept without the acquirer: the offline (floor limit) policy.

Pure budget tracker: no clock reads, time comes in as `now` (any monotonic seconds).
`deny` refuses every payment the acquirer could not authorise; `floor` lets one through, flagged
`deferred` for later collection, when its amount is within the per-vehicle floor limit and the
deferred total of the last hour stays within the hourly limit (the lane's exposure to loss
during an outage is then bounded by `hourly_limit_minor` an hour).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

PolicyMode = Literal["deny", "floor"]


@dataclass
class OfflinePolicy:
    mode: PolicyMode = "deny"
    floor_limit_minor: int = 0  # the most one vehicle may pass for, deferred
    hourly_limit_minor: int = 0  # the most deferred within any sliding window
    window_s: float = 3600.0
    _granted: deque[tuple[float, int]] = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("deny", "floor"):
            raise ValueError(f"offline policy mode must be 'deny' or 'floor', not {self.mode!r}")
        for name in ("floor_limit_minor", "hourly_limit_minor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int of minor units")

    def spent(self, now: float) -> int:
        """Deferred total within the window ending at `now`."""
        self._expire(now)
        return sum(amount for _, amount in self._granted)

    def refusal(self, amount_minor: int, now: float) -> str | None:
        """Why `amount_minor` may not be deferred at `now`, or None if it may."""
        if self.mode == "deny":
            return "acquirer_unavailable"
        if amount_minor > self.floor_limit_minor:
            return "over_floor_limit"
        if self.spent(now) + amount_minor > self.hourly_limit_minor:
            return "offline_limit_reached"
        return None

    def take(self, amount_minor: int, now: float) -> str | None:
        """Defer `amount_minor` if allowed (and count it); else return the refusal reason."""
        why = self.refusal(amount_minor, now)
        if why is None:
            self._granted.append((now, amount_minor))
        return why

    def _expire(self, now: float) -> None:
        while self._granted and self._granted[0][0] <= now - self.window_s:
            self._granted.popleft()
