"""Every failure path of the runner, in-process: the real core, a real SQLite queue, a clock the
test moves. Each path must leave the lane answering, never waiting on something that failed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from polling import ManualClock, eventually

from lane.config import parse_config
from lane.core import diagram
from lane.core import events as ev
from lane.core.actions import Authorise, IssuePass, MarkPassUsed, PriceTrip, ReleasePass
from lane.core.machine import initial_state
from lane.core.names import PayloadKind, TripSource
from lane.core.state import FlatFares, LaneRules, Phase, phase
from lane.daemon import rules_from
from lane.runner import Clocks, LaneRunner
from uplink.queue import RecordQueue
from uplink.queue_thread import QueueThread
from uplink.records import Record, RecordDraft

WALL = 1_800_000_000.0


@dataclass
class Barrier:
    commands: list[tuple[str, str]] = field(default_factory=list)

    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None:
        self.commands.append((op, cmd_id))

    async def show(self, lines: tuple[str, ...], ttl_s: float) -> None:
        return None

    async def query(self, query_id: str) -> None:
        return None


@dataclass
class Payments:
    """Answers as the test says: approve, raise, or never answer (`hang`)."""

    mode: str = "approve"
    asked: list[Authorise] = field(default_factory=list)
    abandoned: list[tuple[str, str]] = field(default_factory=list)
    abandon_raises: bool = False
    owed: list[tuple[str, int]] = field(default_factory=list)
    _never: asyncio.Event = field(default_factory=asyncio.Event)

    async def authorise(self, request: Authorise) -> ev.Decided:
        self.asked.append(request)
        if self.mode == "raise":
            raise RuntimeError("acquirer client bug")
        if self.mode == "hang":
            await self._never.wait()
        return ev.Decided(request.auth_id, True, "ok", request.kind, "acct-1")

    async def abandon(self, auth_id: str, reason: str) -> None:
        self.abandoned.append((auth_id, reason))
        if self.abandon_raises:
            raise ConnectionError("resolver store gone")

    async def settle(self, auth_id: str, refund_minor: int = 0) -> None:
        return None

    async def owe_refund(self, auth_id: str, refund_minor: int) -> None:
        self.owed.append((auth_id, refund_minor))


class UnencodableStore:
    """Stands in for the queue failing with an error it does not classify."""

    async def append(
        self, draft: RecordDraft, owes: str | None, ends_owed: str | None, owed_pass: str | None
    ) -> Record:
        raise ValueError("record cannot be encoded")

    async def served(self, record_id: str) -> None:
        pass


@dataclass
class Rig:
    runner: LaneRunner
    payments: Payments
    barrier: Barrier
    clock: ManualClock
    queue: QueueThread

    async def vehicle_shows_a_code(self) -> Authorise:
        self.runner.post(ev.BarrierReported("closed"))
        self.runner.post(ev.SensorChanged("entry_loop", True, "v1"))
        self.runner.post(ev.Scanned("HC1:token", "token", None, self.clock(), "s1"))
        asked: list[Authorise] = await eventually(lambda: self.payments.asked, what="Authorise")
        return asked[0]

    def records(self) -> list[tuple[int, bytes]]:
        return self.queue.sync.batch(0, 100)


@asynccontextmanager
async def rig(
    tmp_path: Path, payments: Payments, *, max_bytes: int = 1 << 20, store: object = None
) -> AsyncIterator[Rig]:
    config = parse_config({"lane": {"id": "p01/l01", "data_dir": str(tmp_path)}})
    clock = ManualClock()
    queue = await QueueThread.open(
        lambda: RecordQueue(tmp_path / "queue.sqlite3", "p01/l01", max_bytes, wall=lambda: WALL)
    )
    barrier = Barrier()
    runner = LaneRunner(
        initial_state(rules_from(config)),
        barrier,
        payments,
        store or queue,  # type: ignore[arg-type]
        clocks=Clocks(monotonic=clock, wall=lambda: WALL),
    )
    task = asyncio.create_task(runner.run())
    try:
        yield Rig(runner, payments, barrier, clock, queue)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await queue.aclose()


def opened(r: Rig) -> list[str]:
    return [cmd for op, cmd in r.barrier.commands if op == "open"]


async def test_a_passed_deadline_is_a_tick_that_abandons_the_payment(tmp_path: Path) -> None:
    async with rig(tmp_path, Payments(mode="hang")) as r:
        request = await r.vehicle_shows_a_code()
        grace = r.runner.state.rules.auth_grace_s
        r.clock.now = request.deadline + grace  # the authoriser never answered
        # The runner sleeps until the deadline on the event loop; any event wakes it early,
        # and it then finds the deadline passed and steps the core with Tick.
        r.runner.post(ev.VehicleClassified(1))
        await eventually(lambda: r.payments.abandoned, what="Abandon")
        assert r.payments.abandoned == [(request.auth_id, "timeout")]
        await eventually(r.records, what="the timeout's decline record")
        assert opened(r) == []
        assert r.runner.state.vehicle is not None and r.runner.state.vehicle.attempt is None


async def test_an_abandon_that_fails_is_logged_and_the_lane_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(tmp_path, Payments(mode="hang", abandon_raises=True)) as r:
        request = await r.vehicle_shows_a_code()
        r.clock.now = request.deadline + r.runner.state.rules.auth_grace_s
        r.runner.post(ev.VehicleClassified(1))

        def failure_logged() -> bool:
            return any(
                rec.message == "lane task failed" and getattr(rec, "task", "") == "abandon"
                for rec in caplog.records
            )

        with caplog.at_level(logging.ERROR, logger="lane.runner"):
            await eventually(failure_logged, what="the failed abandon in the log")
        await eventually(r.records, what="the decline record")
        r.runner.post(ev.SensorChanged("entry_loop", False, "e2"))  # the lane still steps
        await eventually(lambda: r.runner.state.vehicle is None, what="the vehicle leaving")


async def test_an_authoriser_that_raises_is_a_decline_recorded(tmp_path: Path) -> None:
    async with rig(tmp_path, Payments(mode="raise")) as r:
        await r.vehicle_shows_a_code()
        rows = await eventually(r.records, what="the decline record")
        assert len(rows) == 1
        assert b"error: RuntimeError" in rows[0][1]
        assert opened(r) == []
        assert r.runner.state.faults == frozenset()


async def test_a_full_queue_cancels_the_payment_and_keeps_the_barrier_shut(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, Payments(), max_bytes=1) as r:
        await r.vehicle_shows_a_code()
        await eventually(lambda: "queue_full" in r.runner.state.faults, what="queue_full")
        assert [reason for _, reason in r.payments.abandoned] == ["record_failed"]
        assert "queue_full" in r.runner.alarms
        assert opened(r) == []
        assert r.records() == []


async def test_a_queue_error_is_a_disk_error_and_the_barrier_stays_shut(tmp_path: Path) -> None:
    async with rig(tmp_path, Payments()) as r:
        r.queue.sync.close()  # every write now fails inside SQLite, as an I/O error would
        await r.vehicle_shows_a_code()
        await eventually(lambda: "disk_error" in r.runner.state.faults, what="disk_error")
        assert [reason for _, reason in r.payments.abandoned] == ["record_failed"]
        assert opened(r) == []


async def test_an_approved_payment_opens_only_after_the_record_is_durable(
    tmp_path: Path,
) -> None:
    """The control for the failure paths above: the same rig does open when nothing fails."""
    async with rig(tmp_path, Payments()) as r:
        await r.vehicle_shows_a_code()
        await eventually(lambda: opened(r), what="the barrier opening")
        assert len(r.records()) == 1


async def test_an_unexpected_write_error_is_a_persist_failure_not_a_stuck_lane(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, Payments(), store=UnencodableStore()) as r:
        r.runner.post(ev.BarrierReported("closed"))
        r.runner.post(ev.AttendantOpen("cmd-1", "test", "alice"))
        await eventually(lambda: "disk_error" in r.runner.state.faults, what="disk_error")
        assert phase(r.runner.state) is not Phase.PERSISTING


async def test_every_waiter_sees_a_change_and_none_is_lost(tmp_path: Path) -> None:
    """One owner clears the runner's event: two readers (the status loop and a shutdown) both
    wake for one change, and a change made before a reader waits is not missed."""
    async with rig(tmp_path, Payments()) as r:
        seen = r.runner.version
        waiters = [asyncio.create_task(r.runner.wait_changed(seen)) for _ in range(2)]
        await asyncio.sleep(0)  # both are waiting now
        r.runner.alarm("camera_blackout", "camera lost")
        versions = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        assert versions[0] == versions[1] > seen
        before = r.runner.version
        r.runner.alarm("camera_blackout", None)  # changed before anyone waits again
        assert await asyncio.wait_for(r.runner.wait_changed(before), 5) > before


class MemoryStore:
    """Stands in for the queue: every append is durable at once."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    async def append(
        self, draft: RecordDraft, owes: str | None, ends_owed: str | None, owed_pass: str | None
    ) -> Record:
        record = Record(f"rec-{len(self.records) + 1}", "p01/l01", len(self.records) + 1, 0, draft)
        self.records.append(record)
        return record

    async def served(self, record_id: str) -> None:
        pass  # nothing is owed over a restart in memory


class FailingBarrier(Barrier):
    """The broker link is down for the first `failures` commands."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str]] = []

    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None:
        self.sent.append((op, cmd_id))
        if len(self.sent) <= self.failures:
            raise ConnectionError("not connected to the broker")


def frozen_runner(barrier: Barrier, clock: ManualClock | None = None) -> LaneRunner:
    # The clock moves only by hand, so no ack timeout passes unless the test says so: whatever
    # the core does about a failed send, it does because the runner told it (CommandNotSent).
    lane_rules = LaneRules("p01/l01", FlatFares(((1, 250),)), max_cmd_attempts=3)
    clocks = Clocks(monotonic=clock or ManualClock(), wall=lambda: 1_790_000_000.0)
    return LaneRunner(initial_state(lane_rules), barrier, Payments(), MemoryStore(), clocks=clocks)


async def test_a_failed_barrier_send_is_retried_at_once_then_faults_then_heals() -> None:
    barrier = FailingBarrier(failures=3)
    clock = ManualClock()
    runner = frozen_runner(barrier, clock)
    task = asyncio.create_task(runner.run())
    try:
        runner.post(ev.BarrierReported("closed"))
        runner.post(ev.AttendantOpen("cmd-1", "test", "alice"))
        # Safe while it lasts: three sends of the same command, then the lane holds it.
        await eventually(lambda: "barrier_no_ack" in runner.alarms)
        assert barrier.sent == [("open", "cmd-1/open")] * 3
        assert phase(runner.state) is Phase.FAULT
        # Visible: the alarm says the command was not sent, and why.
        assert (
            "not sent: ConnectionError: not connected to the broker"
            in (runner.alarms["barrier_no_ack"])
        )
        # A report alone does not clear it (a device may report and still drop commands).
        runner.post(ev.BarrierReported("closed"))
        await eventually(lambda: runner.state.barrier == "closed")
        assert "barrier_no_ack" in runner.alarms and len(barrier.sent) == 3
        # Clears by itself: at the next probe the same command goes out, and its ack clears it.
        clock.now += runner.state.rules.probe_s
        runner.post(ev.Tick())
        await eventually(lambda: len(barrier.sent) == 4)
        assert barrier.sent[-1] == ("open", "cmd-1/open")
        runner.post(ev.BarrierAcked("cmd-1/open", True, "open"))
        await eventually(lambda: phase(runner.state) is Phase.OPEN)
        assert "barrier_no_ack" not in runner.alarms
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
            await eventually(lambda: any(r.message == "illegal transition" for r in caplog.records))
        assert phase(runner.state) is Phase.IDLE and runner.state.vehicle is None
        monkeypatch.undo()
        runner.post(ev.SensorChanged("entry_loop", True, "v2"))
        await eventually(lambda: phase(runner.state) is Phase.VEHICLE_PRESENT)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class PayerTrips:
    """A metro exit's desk: the payer's account finds a tap-in at S02 (fare 300)."""

    def __init__(self) -> None:
        self.asked: list[PriceTrip] = []

    def issue(self, request: IssuePass) -> AsyncIterator[ev.TicketIssued]:
        raise NotImplementedError

    async def price(self, request: PriceTrip) -> ev.TripPriced:
        self.asked.append(request)
        return ev.TripPriced(request.trip_id, True, "charged", 300, "CNY", 1, "S02", "0a" * 16)

    async def mark_used(self, action: MarkPassUsed) -> None:
        return None

    async def release(self, action: ReleasePass) -> None:
        return None


async def test_a_wallet_code_repriced_by_its_payer_owes_its_refund_before_the_decision(
    tmp_path: Path,
) -> None:
    """The refund is written with the charged payment before the core hears the decision (so
    before any record): a crash between the record and its settle still refunds the payer."""
    async with rig(tmp_path, Payments()) as r:
        trips = PayerTrips()
        r.runner.road = trips
        again = PriceTrip("s1/trip/payer", "s1", 1, TripSource.CODE, "28" + "1" * 16, None,
                          PayloadKind.PAYMENT_CODE)  # fmt: skip
        ask = Authorise("s1/a1", "s1", "28" + "1" * 16, PayloadKind.PAYMENT_CODE, 500, "CNY",
                        r.clock.now + 2.0, reprice=again)  # fmt: skip
        await r.runner._authorise(ask)
        assert [a.account_ref for a in trips.asked] == ["acct-1"]  # the answer's account
        assert r.payments.owed == [("s1/a1", 200)]
