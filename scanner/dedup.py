"""Report each code once while it stays in view. Pure: time is the frame's timestamp."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable


class Deduplicator:
    """A text seen again within `window_s` of its last sighting is a repeat.

    Every sighting renews the window, so a phone held up to the camera for ten seconds is one
    code, while the same code shown again after `window_s` out of view is reported again (the
    lane core refuses real replays; this only spares it a flood of identical frames).
    """

    def __init__(self, window_s: float = 2.0, max_entries: int = 256) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._since = -math.inf  # the last clear's `since`

    def first_sighting(self, text: str, now: float) -> bool:
        """True when `text` should be reported; records the sighting either way, but for one in
        a frame taken by the last `clear(since=...)`: neither reported nor recorded."""
        if now <= self._since:
            return False
        self._forget_older_than(now - self.window_s)
        previous = self._last_seen.pop(text, None)
        # Workers finish out of order: never move a sighting back in time.
        self._last_seen[text] = now if previous is None else max(previous, now)
        while len(self._last_seen) > self.max_entries:
            self._last_seen.popitem(last=False)
        return previous is None or now - previous > self.window_s

    def clear(self, keep: Callable[[str], bool] | None = None, since: float | None = None) -> None:
        """Forget every sighting (but those of the texts `keep` says to keep): the next person
        at the lane is reported even with the same code (a screenshot of the previous driver's
        code must reach the lane's replay check).

        `since` (frame time): sightings in frames taken by then, decoded late, are the person
        before's and stay unreported. Not recorded either: a frame of the next person's phone
        taken just before the clear, unreported, must not make its next frames repeats."""
        for text in [t for t in self._last_seen if keep is None or not keep(t)]:
            del self._last_seen[text]
        if since is not None:
            self._since = max(self._since, since)

    def _forget_older_than(self, cutoff: float) -> None:
        while self._last_seen:
            text, seen = next(iter(self._last_seen.items()))
            if seen >= cutoff:
                break
            del self._last_seen[text]
