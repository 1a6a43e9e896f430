"""What the fault controller and the report read of a running simulator.

A Protocol (`sim.harness.Simulator` is the one implementation), so `sim.faults` and
`sim.report` depend on this shape and no import goes back to the harness that builds them.
"""

from __future__ import annotations

from typing import Protocol

from sim.acquirer import AcquirerServer
from sim.backoffice import BackOffice
from sim.broker import Mosquitto
from sim.lane import SimLane
from sim.options import SimOptions
from sim.wechatpay_fake import WeChatPayFake


class Plaza(Protocol):
    options: SimOptions
    lanes: list[SimLane]
    broker: Mosquitto | None
    started_at: float

    @property
    def backoffice(self) -> BackOffice: ...

    def sim_time(self) -> float: ...

    def payment_servers(self) -> list[AcquirerServer]: ...

    def wechatpay(self) -> WeChatPayFake | None:
        """The WeChat Pay fake, when the lanes' WeChat codes go to it."""
        ...

    def issue_keyset(self, lapsed: bool) -> None:
        """The plaza's key set issued again, newer than the last; `lapsed`: its token keys
        all expired."""
        ...

    def refuse_topic(self, topic: str, refused: bool) -> None:
        """The broker's ACL refuses (or grants again) every publish to `topic`, reloaded."""
        ...

    def burst(self, lane_index: int, count: int, kind: str) -> None: ...
