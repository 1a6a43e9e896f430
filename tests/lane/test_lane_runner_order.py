"""The vehicle's path before the observers: a task a step starts (the token check, the barrier
command) takes its first step before the observers see that step's notes, so the publishing
they do never holds up a hand-off. The real core and a real SQLite queue; the ports note when
they are called."""

from __future__ import annotations

import asyncio
from pathlib import Path

from polling import ManualClock, eventually

from lane.config import parse_config
from lane.core import events as ev
from lane.core.actions import Authorise
from lane.core.machine import initial_state
from lane.daemon import rules_from
from lane.notification import Notification, ShellNote, ShellNoteName
from lane.runner import Clocks, LaneRunner
from uplink.queue import RecordQueue
from uplink.queue_thread import QueueThread

WALL = 1_800_000_000.0


class Ports:
    """Barrier and payments ports that write down when each call starts."""

    def __init__(self, order: list[str]) -> None:
        self.order = order

    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None:
        self.order.append(f"command {op}")

    async def show(self, lines: tuple[str, ...], ttl_s: float) -> None:
        return None

    async def query(self, query_id: str) -> None:
        return None

    async def authorise(self, request: Authorise) -> ev.Decided:
        self.order.append("authorise")
        return ev.Decided(request.auth_id, True, "ok", request.kind, "acct-1")

    async def abandon(self, auth_id: str, reason: str) -> None:
        return None

    async def settle(self, auth_id: str, refund_minor: int = 0) -> None:
        return None

    async def owe_refund(self, auth_id: str, refund_minor: int) -> None:
        return None


def note_name(note: Notification) -> str:
    if isinstance(note, ShellNote) and note.name is ShellNoteName.PHASE:
        return f"phase {note.fields()['to']}"
    return str(note.name)


async def test_a_started_task_goes_before_the_notes_of_its_step(tmp_path: Path) -> None:
    config = parse_config({"lane": {"id": "p01/l01", "data_dir": str(tmp_path)}})
    clock = ManualClock()
    queue = await QueueThread.open(
        lambda: RecordQueue(tmp_path / "queue.sqlite3", "p01/l01", 1 << 20, wall=lambda: WALL)
    )
    order: list[str] = []
    ports = Ports(order)
    runner = LaneRunner(
        initial_state(rules_from(config)),
        ports,
        ports,
        queue,
        clocks=Clocks(monotonic=clock, wall=lambda: WALL),
        observers=[lambda note: order.append(note_name(note))],
    )
    task = asyncio.create_task(runner.run())
    try:
        runner.post(ev.BarrierReported("closed"))
        runner.post(ev.SensorChanged("entry_loop", True, "v1"))
        runner.post(ev.Scanned("HC1:token", "token", None, clock(), "s1"))
        await eventually(lambda: "command open" in order and "record" in order, what="the open")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await queue.aclose()
    # The step that starts the payment also notes the phase; the task starts first.
    assert order.index("authorise") < order.index("phase authorising"), order
    # The record on disk is noted after the runner took Persisted and sent the open.
    assert order.index("command open") < order.index("record"), order
