"""Topics the broker refuses to take (a PUBACK reason of 0x80 or more: its ACL, a quota).

A refusal is not an outage that passes by itself: the broker says no to that topic, and keeps
saying it, until someone changes its ACL. Retried at a reconnect's pace, a publisher asked it
ten times a second and logged each no. So a link keeps here which of its topics are refused
and why: each publisher that keeps its message for a retry waits `wait_s(topic)` (`backoff`:
doubling with each refusal), one line is logged when a topic is refused
(or refused for another reason) and one when it is accepted again, and `on_change` hears that
its refused topics changed. A lane has several links (barrier, uplink) and one alarm for them
all: `alarm_on_refusals` gives it, at each change of any of them, the text naming each link
with a refused topic (its client id), every refused topic and the broker's reason, or None
once none is left.
No clock is read: the waits are the publishers' to sleep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lane.core.backoff import Backoff

log = logging.getLogger("lane.transport.refusals")

PUBLISH_REFUSED = "publish_refused"  # the lane's alarm while any of its links has refused topics


@dataclass
class _Refused:
    reason: str
    times: int


# A refused topic is tried again after 0.2 s, doubling to 30 s: an ACL is fixed by hand.
REFUSED_RETRY = Backoff(0.2, 30.0)


class Refusals:
    def __init__(self, client: str, backoff: Backoff = REFUSED_RETRY) -> None:
        self.client = client
        self.backoff = backoff
        self.on_change: Callable[[], None] | None = None
        self._topics: dict[str, _Refused] = {}

    def refused(self, topic: str, reason: str) -> None:
        before = self._topics.get(topic)
        times = 1 if before is None else before.times + 1
        self._topics[topic] = _Refused(reason, times)
        if before is None or before.reason != reason:
            log.error(
                "publish refused by the broker, kept for retry",
                extra={"client": self.client, "topic": topic, "reason": reason},
            )
            self._changed()

    def accepted(self, topic: str) -> None:
        if self._topics.pop(topic, None) is not None:
            log.info("publish accepted again", extra={"client": self.client, "topic": topic})
            self._changed()

    def wait_s(self, topic: str) -> float:
        """How long a publisher waits before it tries `topic` again (0: it is not refused)."""
        refused = self._topics.get(topic)
        if refused is None:
            return 0.0
        return self.backoff.delay(refused.times)

    def part(self) -> str | None:
        """This link's part of the alarm text: its client id and what it may not publish."""
        if not self._topics:
            return None
        topics = ", ".join(f"{t} ({r.reason})" for t, r in sorted(self._topics.items()))
        return f"{self.client} publishing {topics}"

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def refused_text(links: Iterable[Refusals]) -> str | None:
    """One alarm text for the topics the broker refuses any of `links` (None: none)."""
    parts = [part for part in (link.part() for link in links) if part is not None]
    if not parts:
        return None
    return f"the broker refuses {'; '.join(parts)}: kept and retried; check the broker's ACL"


def alarm_on_refusals(links: Sequence[Refusals], alarm: Callable[[str | None], None]) -> None:
    """`alarm` hears, at each change of any of `links`, the text for all of them: one alarm
    that names each link still refused and clears once none is."""

    def changed() -> None:
        alarm(refused_text(links))

    for link in links:
        link.on_change = changed
