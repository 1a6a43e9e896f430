"""The runner never leaves the core waiting on a record write that failed in an unforeseen way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lane.config import parse_config
from lane.core import events as ev
from lane.core.actions import Authorise
from lane.core.machine import initial_state
from lane.core.state import Phase, phase
from lane.daemon import rules_from
from lane.runner import LaneRunner
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
        for _ in range(200):
            await asyncio.sleep(0.005)
            if phase(runner.state) is not Phase.PERSISTING and not runner._tasks:
                break
        assert phase(runner.state) is not Phase.PERSISTING
        assert "disk_error" in runner.state.faults
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
