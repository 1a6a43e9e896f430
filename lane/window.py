"""Figures over a sliding window of timestamped samples (pure: the caller passes the time).

Used by the lane (acquirer health over the last minutes) and by the console (latency
percentiles and throughput over the last 5 / 15 / 60 minutes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of values (nearest rank on the sorted list); None when empty."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(ordered[-1], 1)}


@dataclass
class Window(Generic[T]):
    """Samples `(t, value)` in time order, at most `span_s` old and at most `limit` of them."""

    span_s: float
    limit: int = 100_000
    _samples: deque[tuple[float, T]] = field(default_factory=deque)

    def add(self, t: float, value: T) -> None:
        self._samples.append((t, value))
        while len(self._samples) > self.limit:
            self._samples.popleft()

    def prune(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.span_s:
            self._samples.popleft()

    def since(self, start: float) -> Iterator[T]:
        """The values of the samples taken at or after `start`."""
        return (v for t, v in self._samples if t >= start)

    def timed(self) -> list[tuple[float, T]]:
        return list(self._samples)

    def values(self) -> list[T]:
        return [v for _, v in self._samples]

    def __len__(self) -> int:
        return len(self._samples)
