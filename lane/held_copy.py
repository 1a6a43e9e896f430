"""A store's copy of what a desk holds in memory, kept in step by a version counter.

The metro tap desk (lane.tap_desk) holds writes a failing store owes (exits not marked,
refunds not applied) in memory, and keeps a copy of them in another store so a restart still
knows them. The desk changes what it holds at any await (`changed`); copies are written one at
a time, each snapshot taken under the lock with the version it had, and `saved` moves to that
version once it is written. So an older copy never overwrites a newer one, and a change made
while a write was in flight leaves the copy `behind` until a later write: a flag reset by that
write said the copy was current, and an exit marked and refunded meanwhile came back held at
the next start. The desk writes the copy at each change, and its upkeep one a failing store
left behind: a change left to the upkeep's next turn was loaded again by a lane restarted
within that second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

S = TypeVar("S")


class HeldCopy(Generic[S]):
    def __init__(self) -> None:
        self.version = 0  # bumped by every change to what is copied
        self.saved = 0  # the version the store's copy has
        self._lock = asyncio.Lock()

    def changed(self) -> None:
        self.version += 1

    @property
    def behind(self) -> bool:
        return self.saved < self.version

    async def save(self, snapshot: Callable[[], S], write: Callable[[S], None]) -> None:
        """Write the current snapshot (`write` blocks: on a worker thread) unless the copy is
        current already; raises what `write` raises, the copy left behind."""
        async with self._lock:
            version = self.version
            if self.saved >= version:
                return
            await asyncio.to_thread(write, snapshot())
            self.saved = version
