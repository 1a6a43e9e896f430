"""What the lane's reporting parts (ops, the health publisher) read of a running lane.

A Protocol, so they depend on this shape and not on `lane.daemon` (which builds them): the
daemon satisfies it, and no import goes back from them to the daemon.
"""

from __future__ import annotations

from typing import Protocol

from barrier.link import BarrierLink
from lane.auth.resolver import Resolver
from lane.config import LaneConfig
from lane.runner import Clocks, LaneRunner
from lane.transport.mqtt import MqttLink
from lane.verifier import TokenVerifier
from scanner.pipeline import ScanPipeline
from scanner.sources import FrameSource
from uplink.forwarder import Forwarder, UplinkStatus
from uplink.queue_thread import QueueThread


class LaneView(Protocol):
    lane: str
    config: LaneConfig
    clocks: Clocks
    runner: LaneRunner
    link: BarrierLink
    uplink: MqttLink
    queue: QueueThread
    forwarder: Forwarder
    verifier: TokenVerifier
    resolver: Resolver
    pipeline: ScanPipeline
    source: FrameSource
    # The queue's last status read by the daemon's queue loop (None before the first).
    uplink_status: UplinkStatus | None
