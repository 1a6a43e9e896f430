"""Tell a true hole in a lane's seqs from routine reordering (pure: the clock is a parameter).

With several workers, and resends after a timeout, batches of one lane commit out of order all
the time: for a moment seq 101..200 is held while 1..100 is still in another worker's
transaction. That is not worth a line above debug. A hole is worth an operator's attention
only when the same seq is still missing `after_s` seconds after it was first seen missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class HoleState(StrEnum):
    REORDERED = "reordered"  # missing for now: another batch is probably in flight
    HOLE = "hole"  # missing for longer than after_s: reported once
    FILLED = "filled"  # a reported hole is now held


@dataclass(frozen=True)
class HoleEvent:
    state: HoleState
    lane: str
    epoch: str
    missing_from: int
    held_upto: int
    missing_for_s: float


@dataclass
class _Open:
    missing_from: int
    held_upto: int
    since: float
    reported: bool = False


class HoleWatch:
    def __init__(self, after_s: float) -> None:
        if after_s <= 0:
            raise ValueError("after_s must be positive")
        self.after_s = after_s
        self._open: dict[tuple[str, str], _Open] = {}

    def observe(
        self, lane: str, epoch: str, contiguous: int, max_seq: int, now: float
    ) -> list[HoleEvent]:
        """Note an epoch's prefix after a commit; return what changed."""
        key = (lane, epoch)
        out: list[HoleEvent] = []
        old = self._open.get(key)
        if old is not None and contiguous >= old.missing_from:
            if old.reported:
                out.append(self._event(HoleState.FILLED, key, old, now))
            del self._open[key]
            old = None
        if contiguous < max_seq:
            if old is None:
                old = self._open[key] = _Open(contiguous + 1, max_seq, now)
                out.append(self._event(HoleState.REORDERED, key, old, now))
            old.held_upto = max(old.held_upto, max_seq)
        return out + self.due(now)

    def open_keys(self) -> list[tuple[str, str]]:
        """The (lane, epoch) pairs with a seq missing: what a periodic check should refresh
        (another worker may have filled the hole since this one last saw the epoch)."""
        return list(self._open)

    def due(self, now: float) -> list[HoleEvent]:
        """Holes that have now been missing for `after_s` (each reported once)."""
        out = []
        for key, o in self._open.items():
            if not o.reported and now - o.since >= self.after_s:
                o.reported = True
                out.append(self._event(HoleState.HOLE, key, o, now))
        return out

    def open_holes(self) -> int:
        """Holes reported and not filled yet."""
        return sum(1 for o in self._open.values() if o.reported)

    def _event(self, state: HoleState, key: tuple[str, str], o: _Open, now: float) -> HoleEvent:
        return HoleEvent(
            state, key[0], key[1], o.missing_from, o.held_upto, round(now - o.since, 3)
        )
