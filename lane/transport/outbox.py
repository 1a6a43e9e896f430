"""Messages for one topic that a local event must never wait for: queued at once, published
in order at QoS 1 whenever the broker is there (used tokens shared in a plaza, a metro line's
taps). Bounded: when the queue is full the oldest message is dropped (logged). A message whose
useful life is over when its turn comes is not sent; one in flight is sent with an MQTT
expiry of what is left of it, so a broker holding it for an absent subscriber drops it then.
A message the broker refuses (its ACL) is kept too, and tried again after the link's
refusal back-off (lane.transport.refusals), which logs the refusal once and alarms.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Generic, TypeVar

from lane.transport.mqtt import LinkDown, MqttLink, PublishRefused

log = logging.getLogger("lane.transport.outbox")

T = TypeVar("T")


class Outbox(Generic[T]):
    def __init__(
        self,
        link: MqttLink,
        topic: str,
        encode: Callable[[T], bytes],
        left_s: Callable[[T], float],
        name: Callable[[T], dict[str, str]],
        *,
        lane: str,
        max_pending: int = 10_000,
        max_expiry_s: int = 3600,
    ) -> None:
        """`left_s(msg)`: how long the message is still of use (<= 0: drop it); `name(msg)`:
        the log fields that name it (its id); `max_expiry_s`: the longest a broker keeps it."""
        self.link = link
        self.topic = topic
        self.encode = encode
        self.left_s = left_s
        self.name = name
        self.lane = lane
        self.max_expiry_s = max_expiry_s
        self.published = 0
        self.dropped = 0
        self.expired_unsent = 0
        self._pending: asyncio.Queue[T] = asyncio.Queue(max_pending)

    @property
    def backlog(self) -> int:
        return self._pending.qsize()

    def put(self, msg: T) -> None:
        """On the loop only (asyncio.Queue is not thread-safe)."""
        if self._pending.full():
            old = self._pending.get_nowait()
            self.dropped += 1
            log.warning(
                "backlog full, dropped oldest",
                extra={"lane": self.lane, "topic": self.topic, **self.name(old)},
            )
        self._pending.put_nowait(msg)

    async def run(self, retry_s: float = 0.2) -> None:
        while True:
            msg = await self._pending.get()
            while True:
                left = self.left_s(msg)
                if left <= 0:
                    self.expired_unsent += 1  # of no use to anyone any more
                    break
                await self.link.connected.wait()
                try:
                    await self.link.publish(
                        self.topic,
                        self.encode(msg),
                        qos=1,
                        expiry_s=max(1, min(self.max_expiry_s, math.ceil(left))),
                    )
                except PublishRefused:
                    # Not an outage: the broker says no until its ACL changes (the link
                    # logged it once and alarms): try again after the refusal's back-off.
                    await asyncio.sleep(self.link.refusals.wait_s(self.topic))
                    continue
                except LinkDown as exc:
                    log.warning(
                        "publish failed, will retry",
                        extra={
                            "lane": self.lane,
                            "topic": self.topic,
                            "error": str(exc),
                            **self.name(msg),
                        },
                    )
                    await asyncio.sleep(retry_s)
                    continue
                self.published += 1
                break
