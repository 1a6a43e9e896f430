"""The console's MQTT side: subscribes to the lanes' topics, feeds the plaza model, and sends
attendant commands. The only part of the console that talks to the broker."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from barrier.messages import AttendantCommand
from lane.console.model import Plaza
from lane.transport.mqtt import Credentials, Incoming, MqttLink
from lane.transport.tls import CaFile
from lane.wire import topics

log = logging.getLogger("lane.console.feed")

# Everything a lane publishes that the console shows (the lane id takes two levels).
LANE_TOPICS = ("status", "health", "barrier/state", "barrier/cmd", "io/+", "display", "events")


def lane_filter(pattern: str) -> str:
    """`p07/*` -> `p07/+`; `*` -> `+/+` (every lane); a lane id stays itself."""
    parts = ["+" if p in ("*", "+") else p for p in pattern.split("/")]
    if len(parts) == 1:
        parts.append("+")
    partial = any(c in p for p in parts if p != "+" for c in "*+#")  # MQTT has no p0*-style
    if len(parts) != 2 or partial or not all(parts):
        raise ValueError(f"lane pattern must be plaza/lane with * for any, got {pattern!r}")
    return "/".join(parts)


class ConsoleFeed:
    def __init__(
        self,
        plaza: Plaza,
        host: str,
        port: int,
        *,
        lanes: str = "*/*",
        credentials: Credentials | None = None,
        tls: CaFile | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plaza = plaza
        self.wall = wall
        self.monotonic = monotonic
        prefix = f"lane/{lane_filter(lanes)}"
        self.link = MqttLink(
            host,
            port,
            f"console-{secrets.token_hex(4)}",
            [(f"{prefix}/{suffix}", 1) for suffix in LANE_TOPICS],
            self._on_message,
            credentials=credentials,
            tls=tls,
            session_expiry=0,  # a console starting afresh reads the retained state again
        )

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    async def run(self) -> None:
        await self.link.run()

    async def _on_message(self, msg: Incoming) -> None:
        self.plaza.apply(
            msg.topic, msg.payload, self.wall(), self.monotonic(), expiry_s=msg.expiry_s
        )

    async def send(self, lane: str, cmd: AttendantCommand) -> None:
        """Publish an attendant command (QoS 1); LinkDown when the broker is not connected."""
        await self.link.publish(topics.attendant(lane), cmd.encode(), qos=1)
