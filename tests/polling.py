"""The one polling helper of the test suite: wait for a condition, bounded, on an injected clock.

Tests never sleep to measure an outcome: they poll for the condition and fail with a clear text
when it does not hold within the bound. The bound is read on `clock`, which defaults to the
running event loop's clock (`loop.time()`); a test that drives time itself passes its own.
Import it as `from polling import eventually` (tests/ is on the path through its conftest).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

EVERY_S = 0.01


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    within: float = 10.0,
    *,
    every: float = EVERY_S,
    what: str = "",
    clock: Callable[[], float] | None = None,
    between: Callable[[], object] | None = None,
) -> T:
    """Call `check()` (plain or async) until it returns something truthy, and return that.

    `between` runs before each wait (e.g. hold a code in front of the camera once more).
    Raises AssertionError naming `what` and the last value seen when `within` passes first.
    """
    now = clock or asyncio.get_running_loop().time
    deadline = now() + within
    while True:
        got = check()
        value = await got if inspect.isawaitable(got) else got
        if value:
            return value  # type: ignore[return-value]
        if now() > deadline:
            raise AssertionError(
                f"not reached within {within:g} s: {what or check}; last: {value!r}"
            )
        if between is not None:
            between()
        await asyncio.sleep(every)


class ManualClock:
    """A clock a test moves by hand: what depends on time is tested without waiting for it."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
