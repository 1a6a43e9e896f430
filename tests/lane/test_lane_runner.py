"""The runner never leaves the core waiting: a record write that failed in an unforeseen way, a
barrier command that could not be sent (CommandNotSent), an illegal transition."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from lane.config import parse_config
from lane.core import diagram
from lane.core import events as ev
from lane.core.actions import Authorise
from lane.core.machine import initial_state
from lane.core.state import FlatFares, LaneRules, Phase, phase
from lane.daemon import rules_from
from lane.runner import Clocks, LaneRunner
from uplink.records import Record, RecordDraft


class Barrier:
    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None:
        return None

    async def show(self, lines: tuple[str, ...], ttl_s: float) -> None:
        return None

    async def query(self, query_id: str) -> None:
        return None


class Payments:
    async def authorise(self, request: Authorise) -> ev.Decided:
        raise AssertionError("no payment in this test")

    async def abandon(self, auth_id: str, reason: str) -> None:
        return None

    async def settle(self, auth_id: str) -> None:
        return None


class UnencodableStore:
    """Stands in for the queue (another part) failing with an error it does not classify."""

    def append(self, draft: RecordDraft) -> Record:
        raise ValueError("record cannot be encoded")


async def test_an_unexpected_write_error_is_a_persist_failure_not_a_stuck_lane(
    tmp_path: Path,
) -> None:
    config = parse_config({"lane": {"id": "p01/l01", "data_dir": str(tmp_path)}})
    runner = LaneRunner(
        initial_state(rules_from(config)), Barrier(), Payments(), UnencodableStore()
    )
    task = asyncio.create_task(runner.run())
    try:
        runner.post(ev.BarrierReported("closed"))
        runner.post(ev.AttendantOpen("cmd-1", "test", "alice"))
        await until(lambda: "disk_error" in runner.state.faults and not runner._tasks)
        assert phase(runner.state) is not Phase.PERSISTING
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll for a condition, with a bound (the outcome is the condition, not the time)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


class MemoryStore:
    """Stands in for the queue: every append is durable at once."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def append(self, draft: RecordDraft) -> Record:
        record = Record(f"rec-{len(self.records) + 1}", "p01/l01", len(self.records) + 1, 0, draft)
        self.records.append(record)
        return record


class FailingBarrier(Barrier):
    """The broker link is down for the first `failures` commands."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str]] = []

    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None:
        self.sent.append((op, cmd_id))
        if len(self.sent) <= self.failures:
            raise ConnectionError("not connected to the broker")


def frozen_runner(barrier: Barrier) -> LaneRunner:
    # The clock never moves, so no ack timeout ever passes: whatever the core does about a
    # failed send, it does because the runner told it (CommandNotSent).
    lane_rules = LaneRules("p01/l01", FlatFares(((1, 250),)), max_cmd_attempts=3)
    clocks = Clocks(monotonic=lambda: 1000.0, wall=lambda: 1_790_000_000.0)
    return LaneRunner(initial_state(lane_rules), barrier, Payments(), MemoryStore(), clocks=clocks)


async def test_a_failed_barrier_send_is_retried_at_once_then_faults_then_heals() -> None:
    barrier = FailingBarrier(failures=3)
    runner = frozen_runner(barrier)
    task = asyncio.create_task(runner.run())
    try:
        runner.post(ev.BarrierReported("closed"))
        runner.post(ev.AttendantOpen("cmd-1", "test", "alice"))
        # Safe while it lasts: three sends of the same command, then the lane holds it.
        await until(lambda: "barrier_no_ack" in runner.alarms)
        assert barrier.sent == [("open", "cmd-1/open")] * 3
        assert phase(runner.state) is Phase.FAULT
        # Visible: the alarm says the command was not sent, and why.
        assert (
            "not sent: ConnectionError: not connected to the broker"
            in (runner.alarms["barrier_no_ack"])
        )
        # Clears by itself: the barrier is heard from, the same command goes out and is acked.
        runner.post(ev.BarrierReported("closed"))
        await until(lambda: len(barrier.sent) == 4)
        assert barrier.sent[-1] == ("open", "cmd-1/open")
        assert "barrier_no_ack" not in runner.alarms
        runner.post(ev.BarrierAcked("cmd-1/open", True, "open"))
        await until(lambda: phase(runner.state) is Phase.OPEN)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_illegal_transition_leaves_the_state_and_the_runner_running(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runner = frozen_runner(Barrier())
    task = asyncio.create_task(runner.run())
    try:
        monkeypatch.setattr(diagram, "_ALLOWED", frozenset())  # every phase change is illegal
        with caplog.at_level(logging.ERROR, logger="lane.runner"):
            runner.post(ev.SensorChanged("entry_loop", True, "v1"))
            await until(lambda: any(r.message == "illegal transition" for r in caplog.records))
        assert phase(runner.state) is Phase.IDLE and runner.state.vehicle is None
        monkeypatch.undo()
        runner.post(ev.SensorChanged("entry_loop", True, "v2"))
        await until(lambda: phase(runner.state) is Phase.VEHICLE_PRESENT)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
