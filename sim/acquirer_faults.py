"""Fault settings of the simulated acquirer, as data: validated, JSON-able, changeable at runtime.

Pure: nothing here reads a clock or does I/O; random draws come from the caller's seeded
`random.Random`, so a run is reproducible from its seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

OutageMode = Literal["refuse", "503"]
Z99 = 2.3263478740408408  # standard normal quantile at 0.99


class FaultsError(ValueError):
    """A fault setting that makes no sense (unknown key, rate outside 0..1, ...)."""


@dataclass(frozen=True)
class Outage:
    """The acquirer is down from `start_s` for `duration_s` (None: until cleared).

    Times are seconds after the outages were set (changing other faults keeps that clock).
    `refuse` closes the listening socket (clients get connection refused) and drops live
    connections; `503` answers every API call with HTTP 503.
    """

    mode: OutageMode = "refuse"
    start_s: float = 0.0
    duration_s: float | None = None

    def active(self, since_set_s: float) -> bool:
        if since_set_s < self.start_s:
            return False
        return self.duration_s is None or since_set_s < self.start_s + self.duration_s

    def boundaries(self) -> tuple[float, ...]:
        end = () if self.duration_s is None else (self.start_s + self.duration_s,)
        return (self.start_s, *end)


@dataclass(frozen=True)
class Faults:
    """What the acquirer does wrong. Defaults: answers at once, always succeeds."""

    # Latency of every API call: fixed, or lognormal when median and p99 are both given.
    latency_ms: float = 0.0
    latency_median_ms: float | None = None
    latency_p99_ms: float | None = None
    # Share of payments declined, and with which reason.
    decline_rate: float = 0.0
    decline_reason: str = "insufficient_funds"
    # Share answered PENDING, turning SUCCEEDED `pending_ms` later (seen by a query).
    pending_rate: float = 0.0
    pending_ms: float = 500.0
    # Share that succeed only after the client gave up: the server holds the answer until the
    # client disconnects (or `late_max_wait_ms` passes), then records SUCCEEDED
    # `late_success_ms` later. The lane must find these by query and reverse them.
    late_success_rate: float = 0.0
    late_success_ms: float = 1.0
    late_max_wait_ms: float = 30_000.0
    # Share of API calls (pay, query, reverse) answered HTTP 500 without doing anything.
    error_rate: float = 0.0
    # Share of pay calls never answered (until the client gives up) and never processed.
    hang_rate: float = 0.0
    # Share of API answers (every call, processed as usual) whose headers go at once and whose
    # body follows a byte every `slow_body_ms`: a gateway or proxy stalling mid-answer.
    slow_body_rate: float = 0.0
    slow_body_ms: float = 1000.0
    # Share of API answers whose headers and half the body go, then the connection is closed.
    cut_body_rate: float = 0.0
    # Every refund refused with this reason (e.g. the merchant's balance is short), None: made.
    refund_refused: str | None = None
    outages: tuple[Outage, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in (
            "decline_rate",
            "pending_rate",
            "late_success_rate",
            "error_rate",
            "hang_rate",
            "slow_body_rate",
            "cut_body_rate",
        ):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise FaultsError(f"{name} must be within 0..1, not {rate}")
        for name in (
            "latency_ms",
            "pending_ms",
            "late_success_ms",
            "late_max_wait_ms",
            "slow_body_ms",
        ):
            if getattr(self, name) < 0:
                raise FaultsError(f"{name} must not be negative")
        median, p99 = self.latency_median_ms, self.latency_p99_ms
        if (median is None) != (p99 is None):
            raise FaultsError("latency_median_ms and latency_p99_ms go together")
        if median is not None and p99 is not None and not 0 < median <= p99:
            raise FaultsError("lognormal latency needs 0 < median <= p99")
        for outage in self.outages:
            if outage.mode not in ("refuse", "503"):
                raise FaultsError(f"outage mode must be 'refuse' or '503', not {outage.mode!r}")
            if outage.start_s < 0 or (outage.duration_s is not None and outage.duration_s < 0):
                raise FaultsError("outage start and duration must not be negative")

    def latency_s(self, rng: random.Random) -> float:
        if self.latency_median_ms is not None and self.latency_p99_ms is not None:
            mu = math.log(self.latency_median_ms)
            sigma = (math.log(self.latency_p99_ms) - mu) / Z99
            return rng.lognormvariate(mu, sigma) / 1000.0
        return self.latency_ms / 1000.0

    def outage_mode(self, since_set_s: float) -> OutageMode | None:
        """The active outage's mode; `refuse` wins when windows overlap."""
        modes = {o.mode for o in self.outages if o.active(since_set_s)}
        if "refuse" in modes:
            return "refuse"
        return "503" if modes else None

    def next_boundary(self, since_set_s: float) -> float | None:
        later = [b for o in self.outages for b in o.boundaries() if b > since_set_s]
        return min(later, default=None)

    def to_map(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["outages"] = [asdict(o) for o in self.outages]
        return doc

    def merged(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with `changes` (JSON from the dashboard) applied; raise FaultsError if bad."""
        known = {f.name: f for f in fields(self)}
        unknown = set(changes) - set(known)
        if unknown:
            raise FaultsError(f"unknown fault settings: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "outages":
                values[name] = _outages(value)
            elif name == "refund_refused":
                if value is not None and (not isinstance(value, str) or not value):
                    raise FaultsError("refund_refused must be a non-empty string or null")
                values[name] = value
            elif name == "decline_reason":
                if not isinstance(value, str) or not value:
                    raise FaultsError("decline_reason must be a non-empty string")
                values[name] = value
            elif name in ("latency_median_ms", "latency_p99_ms") and value is None:
                values[name] = None
            else:
                values[name] = _number(name, value)
        try:
            return replace(self, **values)
        except TypeError as exc:
            raise FaultsError(str(exc)) from exc


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultsError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _outages(value: Any) -> tuple[Outage, ...]:
    if not isinstance(value, list):
        raise FaultsError("outages must be a list of {mode, start_s, duration_s}")
    result = []
    for item in value:
        if not isinstance(item, dict) or set(item) - {"mode", "start_s", "duration_s"}:
            raise FaultsError(f"bad outage {item!r}: keys are mode, start_s, duration_s")
        duration = item.get("duration_s")
        result.append(
            Outage(
                mode=item.get("mode", "refuse"),
                start_s=_number("start_s", item.get("start_s", 0.0)),
                duration_s=None if duration is None else _number("duration_s", duration),
            )
        )
    return tuple(result)
