"""Which refused inputs get a log line of their own (pure: the time is a parameter).

A flood of garbage or forgeries on a topic the lane listens to would write a line per message:
the first refusal of a kind (what was refused and why) is logged, the next ones within
`every_s` only counted, and `counted` hands back their number once that time has passed (`rest`
every window's, when its owner stops); the next refusal of that kind after it is logged again.
Its users keep the kinds few (the lane's message names times their reasons, a link's topics):
bounded whatever comes. Peers' messages (lane.auth.peers), the barrier link's garbage
(barrier.link) and the acks the uplink cannot take (uplink.forwarder) go through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

REFUSAL_LOG_EVERY_S = 60.0  # a kind of refusal is logged once per this; the rest counted


@dataclass(frozen=True)
class RefusalsCounted:
    """Refusals of one kind not logged one by one: `count` of them since `since` (unix s)."""

    what: str  # what was refused, in the log line (`used-token message`, a topic, ...)
    reason: str
    count: int
    since: float


@dataclass
class RefusalLog:
    every_s: float = REFUSAL_LOG_EVERY_S
    # (what, reason) -> when its line was logged and how many refused of it since then
    windows: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def admit(self, what: str, reason: str, now: float) -> bool:
        """True: log this refusal; False: it is counted."""
        window = self.windows.get((what, reason))
        # A window with refusals counted closes in `counted` only: their number is said first.
        if window is None or (window[1] == 0 and passed(window[0], now, self.every_s)):
            self.windows[(what, reason)] = (now, 0)
            return True
        self.windows[(what, reason)] = (window[0], window[1] + 1)
        return False

    def counted(self, now: float) -> list[RefusalsCounted]:
        """The refusals counted in each window that has passed (its kind is logged in full
        again at the next one)."""
        said = []
        for (what, reason), (since, count) in list(self.windows.items()):
            if passed(since, now, self.every_s):
                del self.windows[(what, reason)]
                if count:
                    said.append(RefusalsCounted(what, reason, count, since))
        return said

    def rest(self) -> list[RefusalsCounted]:
        """The refusals counted in every window, passed or not: its owner stops, and a count
        not said then is never said."""
        return self.counted(math.inf)


def passed(since: float, now: float, every_s: float) -> bool:
    """`every_s` has passed since `since` (a clock set back counts as passed)."""
    return not 0 <= now - since < every_s
