"""The one owner of lane state: events in from one queue, actions out to the ports.

The runner reads one event queue and wakes at the next event or at the core's next deadline,
calls `step`, and hands each action to an adapter. Slow actions (authorisation, disk, MQTT)
run as tasks that post their outcome back as events, so the state is only ever touched here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, assert_never

from lane.auth.trip_pricing import unpriced
from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    Action,
    Authorise,
    ClearAlarm,
    CloseBarrier,
    DropLatch,
    IssuePass,
    KeepLatch,
    MarkPassUsed,
    NoteBase,
    OpenBarrier,
    PassageServed,
    Persist,
    PriceTrip,
    QueryDevice,
    RaiseAlarm,
    ReleasePass,
    Settle,
    ShowOnDisplay,
)
from lane.core.machine import IllegalTransitionError, next_deadline, step
from lane.core.metro import refund_of
from lane.core.names import Alarm, PersistError
from lane.core.notes import BarrierSelfTest, PaidCarriedNote, ScanIgnored
from lane.core.records import RecordDraft
from lane.core.state import LaneState, Phase, phase
from lane.notification import Notification, Observer, ShellNote
from lane.notification import ShellNoteName as Shell
from uplink.queue import (
    QueueCorrupt,
    QueueDiskFull,
    QueueError,
    QueueFull,
    QueueIOError,
    QueueLocked,
    QueueReadOnly,
)
from uplink.records import Record

log = logging.getLogger("lane.runner")

# What a failed record write was, for the core's `disk_error` text (lane.core.alarms).
QUEUE_FAILURES: tuple[tuple[type[QueueError], PersistError], ...] = (
    (QueueDiskFull, PersistError.DISK_FULL),
    (QueueLocked, PersistError.LOCKED),
    (QueueReadOnly, PersistError.READ_ONLY),
    (QueueIOError, PersistError.IO_ERROR),
    (QueueCorrupt, PersistError.CORRUPT),
)
OS_FAILURES = {
    errno.ENOSPC: PersistError.DISK_FULL,
    errno.EDQUOT: PersistError.DISK_FULL,
    errno.EROFS: PersistError.READ_ONLY,
    errno.EACCES: PersistError.READ_ONLY,
    errno.EIO: PersistError.IO_ERROR,
}


def persist_error(exc: QueueError | OSError) -> PersistError:
    """The class of a failed record write (any other is a plain `disk_error`)."""
    if isinstance(exc, OSError):
        return OS_FAILURES.get(exc.errno or 0, PersistError.DISK_ERROR)
    return next((e for cls, e in QUEUE_FAILURES if isinstance(exc, cls)), PersistError.DISK_ERROR)


class BarrierPort(Protocol):
    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None: ...
    async def show(self, lines: tuple[str, ...], ttl_s: float) -> None: ...
    async def query(self, query_id: str) -> None: ...


class PaymentsPort(Protocol):
    async def authorise(self, request: Authorise) -> ev.Decided: ...
    async def abandon(self, auth_id: str, reason: str) -> None: ...
    async def settle(self, auth_id: str, refund_minor: int = 0) -> None: ...
    async def owe_refund(self, auth_id: str, refund_minor: int) -> None: ...


class RoadPort(Protocol):
    """A closed road's lane devices (lane.road_port.RoadDesks)."""

    def issue(self, request: IssuePass) -> AsyncIterator[ev.TicketIssued]: ...
    async def price(self, request: PriceTrip) -> ev.TripPriced: ...
    async def mark_used(self, action: MarkPassUsed) -> None: ...
    async def release(self, action: ReleasePass) -> None: ...


class LatchStore(Protocol):
    """Where the barrier's kept faults outlive the process (lane.barrier_latches)."""

    def keep(self, fault: Alarm, since: float, detail: str) -> None: ...
    def drop(self, fault: Alarm) -> None: ...


class RecordStore(Protocol):
    """The queue (uplink.queue_thread.QueueThread): append returns once the record is on disk,
    with the passage it owes (or ends) in the same commit; `served` forgets owed passages."""

    async def append(
        self, draft: RecordDraft, owes: str | None, ends_owed: str | None, owed_pass: str | None
    ) -> Record: ...
    async def served(self, record_id: str) -> None: ...


@dataclass
class Clocks:
    """Monotonic time for deadlines; wall time (UTC) only where it goes on the wire."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class LaneRunner:
    def __init__(
        self,
        state: LaneState,
        barrier: BarrierPort,
        payments: PaymentsPort,
        store: RecordStore,
        *,
        clocks: Clocks | None = None,
        observers: Sequence[Observer] = (),
        road: RoadPort | None = None,
        latch: LatchStore | None = None,
    ) -> None:
        self.state = state
        self.latch = latch  # None: a latch dies with the process (tests of other things)
        self.road = road
        self.barrier = barrier
        self.payments = payments
        self.store = store
        self.clocks = clocks or Clocks()
        self.lane = state.rules.lane_id
        self.events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self.alarms: dict[str, str] = {}
        # The one way out: every note (phase, alarm, record, display, ...) reaches each observer.
        self.observers: list[Observer] = list(observers)
        # Bumped on every change an outside reader may care about (state, alarms, tasks);
        # `wait_changed` is the only reader of the event, so it is the only one to clear it.
        self.version = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- inputs ---------------------------------------------------------------------------

    def post(self, event: ev.Event) -> None:
        self.events.put_nowait(event)

    def post_threadsafe(self, loop: asyncio.AbstractEventLoop, event: ev.Event) -> None:
        loop.call_soon_threadsafe(self.events.put_nowait, event)

    def alarm(self, code: str, message: str | None) -> None:
        """Raise (message) or clear (None) an alarm the shell itself detected (camera, keys)."""
        if message is None:
            self._clear_alarm(code)
        else:
            self._raise_alarm(code, message)
        self._bump()

    def _raise_alarm(self, code: str, message: str) -> None:
        self.alarms[code] = message
        log.warning("alarm raised", extra={"lane": self.lane, "alarm": code, "detail": message})
        self._notify(ShellNote(Shell.ALARM, {"code": code, "message": message, "active": True}))

    def _clear_alarm(self, code: str) -> None:
        if self.alarms.pop(code, None) is not None:
            log.info("alarm cleared", extra={"lane": self.lane, "alarm": code})
            self._notify(ShellNote(Shell.ALARM, {"code": code, "active": False}))

    async def wait_changed(self, seen: int) -> int:
        """Wait until `version` is past `seen`; return the new version (bound it with a timeout).

        No change is lost: the version moves before the event is set, and between the check
        and the wait nothing else runs."""
        while self.version == seen:
            self._changed.clear()
            await self._changed.wait()
        return self.version

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                deadline = next_deadline(self.state)
                timeout = None if deadline is None else max(0.0, deadline - self.clocks.monotonic())
                event: ev.Event
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                    async with asyncio.timeout(timeout):
                        event = await self.events.get()
                except TimeoutError:
                    event = ev.Tick()
                self.handle(event)
        finally:
            await self.drain(grace_s=2.0)

    def handle(self, event: ev.Event) -> None:
        before = phase(self.state)
        try:
            self.state, actions = step(self.state, event, self.clocks.monotonic())
        except IllegalTransitionError:
            # A bug in the core: the state stands, the event is dropped, the lane runs on.
            log.exception(
                "illegal transition", extra={"lane": self.lane, "event": type(event).__name__}
            )
            return
        for action in actions:
            self._execute(action)
        after = phase(self.state)
        if after != before:
            self._notify(ShellNote(Shell.PHASE, {"from": before.value, "to": after.value}))
        self._bump()

    def idle(self) -> bool:
        """Nothing in progress that a shutdown should wait for."""
        quiet = phase(self.state) in (Phase.IDLE, Phase.FAULT, Phase.CLOSED, Phase.DENIED)
        return quiet and not self._tasks

    async def drain(self, grace_s: float) -> None:
        """Give in-flight work (records being written, payments resolving) time to finish."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)

    # --- actions -> I/O -------------------------------------------------------------------

    def _execute(self, action: Action) -> None:
        match action:
            case ShowOnDisplay(lines=lines, ttl_s=ttl):
                self._spawn("display", self.barrier.show(lines, ttl))
                self._notify(ShellNote(Shell.DISPLAY, {"lines": list(lines), "ttl_s": ttl}))
            case Authorise():
                self._spawn("authorise", self._authorise(action))
            case Abandon(auth_id=auth_id, reason=reason):
                log.info(
                    "payment abandoned",
                    extra={"lane": self.lane, "auth_id": auth_id, "reason": reason},
                )
                self._spawn("abandon", self.payments.abandon(auth_id, reason))
            case Settle(auth_id=auth_id, refund_minor=refund):
                self._spawn("settle", self.payments.settle(auth_id, refund))
            case Persist():
                self._spawn("persist", self._persist(action))
            case PassageServed(record_id=record_id):
                self._spawn("passage served", self._served(record_id))
            case OpenBarrier() | CloseBarrier():
                self._spawn("barrier", self._command(action))
            case QueryDevice(query_id=query_id, reason=reason):
                self._spawn("query", self._query(query_id, reason))
            case IssuePass():
                self._spawn("issue pass", self._issue(action))
            case PriceTrip():
                self._spawn("price trip", self._price(action))
            case MarkPassUsed() | ReleasePass():
                self._spawn("pass used mark", self._pass_mark(action))
            case KeepLatch() | DropLatch():
                self._keep_latch(action)
            case RaiseAlarm(code=code, message=message):
                self._raise_alarm(code, message)
            case ClearAlarm(code=code):
                self._clear_alarm(code)
            case BarrierSelfTest(step=test_step, cmd=cmd):
                # The self-test leaves no record (it charges nobody): its log line is its trace.
                extra = {"lane": self.lane, "self_test": str(test_step), "cmd_id": cmd}
                log.info("barrier self-test", extra=extra)
                self._notify(action)
            case PaidCarriedNote(vehicle_id=vehicle_id, record_id=record_id, step=carried):
                # A payment honoured with no record of its own: its log line is its trace.
                extra = {"lane": self.lane, "record_id": record_id, "vehicle_id": vehicle_id}
                log.info("paid vehicle carried", extra={**extra, "step": str(carried)})
                self._notify(action)
            case ScanIgnored(vehicle_id=vehicle_id, reason=reason, record_id=record_id):
                # Nothing shown, nothing written, no try spent: its log line is its trace (a
                # code the vehicle before paid with names that payment's record).
                extra = {"lane": self.lane, "vehicle_id": vehicle_id, "reason": reason}
                log.info("scan ignored", extra={**extra, "record_id": record_id})
                self._notify(action)
            case NoteBase():
                self._notify(action)
            case _:
                assert_never(action)

    def _keep_latch(self, action: KeepLatch | DropLatch) -> None:
        """On the loop, not in a task: a tiny file, rarely written, and a keep followed by its
        drop must reach the disk in that order."""
        if self.latch is None:
            return
        what = "kept" if isinstance(action, KeepLatch) else "dropped"
        extra = {"lane": self.lane, "alarm": str(action.fault), "latch": what}
        try:
            if isinstance(action, KeepLatch):
                self.latch.keep(action.fault, self.clocks.wall(), action.detail)
            else:
                self.latch.drop(action.fault)
        except OSError as exc:
            # The alarm stands either way; only a restart would see a stale or missing latch.
            log.error("latch not written", extra={**extra, "error": str(exc)})
            return
        log.info("latch written", extra=extra)

    async def _authorise(self, action: Authorise) -> None:
        try:
            decision = await self.payments.authorise(action)
        except Exception as exc:
            log.exception("authoriser failed", extra={"lane": self.lane, "auth_id": action.auth_id})
            decision = ev.Decided(
                action.auth_id, False, f"error: {exc.__class__.__name__}", action.kind
            )
        if action.reprice is not None and decision.approved and decision.account_ref is not None:
            ask = dataclasses.replace(action.reprice, account_ref=decision.account_ref)
            repriced = await self._price_again(ask)
            if repriced is not None:
                await self._owe_refund(action, refund_of(action.amount_minor, repriced))
            decision = dataclasses.replace(decision, repriced=repriced)
        self.post(decision)

    async def _owe_refund(self, action: Authorise, refund: int) -> None:
        """Owed before the record is written (the core settles the same amount once it is
        durable): a crash in between still refunds the payer. A failed write is logged; the
        settle writes it all the same."""
        if refund <= 0:
            return
        try:
            await self.payments.owe_refund(action.auth_id, refund)
        except Exception:
            log.exception("refund owed not written", extra={"lane": self.lane,
                                                            "auth_id": action.auth_id})  # fmt: skip

    async def _price_again(self, ask: PriceTrip) -> ev.TripPriced | None:
        """A metro exit's trip priced by the payer the acquirer named (lane.core.metro); None
        keeps the fare charged (the maximum), with the error logged."""
        try:
            if self.road is None:
                raise LookupError("no trip desk")
            return await self.road.price(ask)
        except Exception:
            log.exception("trip not priced by payer", extra={"lane": self.lane,
                                                             "trip_id": ask.trip_id})  # fmt: skip
            return None

    async def _issue(self, action: IssuePass) -> None:
        if self.road is None:
            self.post(ev.TicketIssued(action.issue_id, None, False, "no ticket desk"))
            return
        try:
            async for ticket in self.road.issue(action):
                self.post(ticket)
        except Exception as exc:
            # The vehicle waits at the entry: it must hear why (and an attendant is called).
            log.exception("pass not issued", extra={"lane": self.lane, "issue_id": action.issue_id})
            self.post(ev.TicketIssued(action.issue_id, None, False, f"error: {exc}"))

    async def _price(self, action: PriceTrip) -> None:
        try:
            if self.road is None:
                raise LookupError("no trip desk")
            answer = await self.road.price(action)
        except Exception as exc:
            # The core waits for exactly one answer: an unpriced trip calls the attendant.
            log.exception("trip not priced", extra={"lane": self.lane, "trip_id": action.trip_id})
            answer = unpriced(action.trip_id, "Fare not known", f"{exc.__class__.__name__}: {exc}")
        self.post(answer)

    async def _pass_mark(self, action: MarkPassUsed | ReleasePass) -> None:
        if self.road is None:
            return
        try:
            if isinstance(action, MarkPassUsed):
                await self.road.mark_used(action)
            else:
                await self.road.release(action)
        except Exception:
            # The exit record (or its refund) is durable and names the pass; the back office
            # still sees it.
            what = (
                "pass not marked used" if isinstance(action, MarkPassUsed) else "pass not released"
            )
            log.exception(what, extra={"lane": self.lane, "pass_id": action.pass_id})

    async def _persist(self, action: Persist) -> None:
        try:
            record = await self.store.append(
                action.draft, action.owes, action.ends_owed, action.owed_pass
            )
        except QueueFull as exc:
            log.error(
                "queue full",
                extra={"lane": self.lane, "persist_id": action.persist_id, "error": str(exc)},
            )
            self.post(ev.PersistFailed(action.persist_id, PersistError.QUEUE_FULL))
            return
        except (QueueError, OSError) as exc:
            log.error(
                "record write failed",
                extra={"lane": self.lane, "persist_id": action.persist_id, "error": str(exc)},
            )
            self.post(ev.PersistFailed(action.persist_id, persist_error(exc)))
            return
        except Exception:
            # Anything else (a record that cannot be encoded, a bug) must still answer the core:
            # it waits in `persisting` with no timer, so silence would hold the lane forever.
            log.exception(
                "record write failed", extra={"lane": self.lane, "persist_id": action.persist_id}
            )
            self.post(ev.PersistFailed(action.persist_id, PersistError.DISK_ERROR))
            return
        log.info(
            "record written",
            extra={
                "lane": self.lane,
                "record_id": record.record_id,
                "seq": record.seq,
                "kind": record.draft.kind,
                "result": record.draft.auth.result,
            },
        )
        self.post(ev.Persisted(action.persist_id, record.record_id, record.seq))
        note = ShellNote(Shell.RECORD, {"record": {"v": record.v, **record.to_map()}})
        try:
            # One turn of the loop: the runner takes Persisted and starts the open before the
            # observers hear of the record (the forwarder's send, the events topic).
            await asyncio.sleep(0)
        finally:
            self._notify(note)

    async def _served(self, record_id: str) -> None:
        """Off the vehicle's path: the delete is not fsynced (RecordQueue.served), so the next
        vehicle's record, behind it on the queue's one thread, waits for a WAL write, not an
        fsync. A failure only means a later restart would still owe it a passage (its code
        would open once more, or a refund record would follow)."""
        extra = {"lane": self.lane, "record_id": record_id}
        try:
            await self.store.served(record_id)
        except (QueueError, OSError) as exc:
            log.error("owed passage not cleared", extra={**extra, "error": str(exc)})
            return
        log.info("passage served", extra=extra)

    async def _command(self, action: OpenBarrier | CloseBarrier) -> None:
        op = "open" if isinstance(action, OpenBarrier) else "close"
        remaining = max(0.0, action.deadline - self.clocks.monotonic())
        deadline_us = int((self.clocks.wall() + remaining) * 1_000_000)
        expiry_s = max(1, int(remaining + 0.999))
        extra = {"lane": self.lane, "cmd_id": action.cmd_id, "op": op, "attempt": action.attempt}
        try:
            await self.barrier.command(op, action.cmd_id, deadline_us, expiry_s)
        except ConnectionError as exc:
            log.warning("barrier command not sent", extra={**extra, "error": str(exc)})
            # The core sends it again at once (same cmd_id), or faults after the last attempt.
            self.post(ev.CommandNotSent(action.cmd_id, f"{exc.__class__.__name__}: {exc}"))
            return
        except Exception as exc:
            log.exception("barrier command not sent", extra=extra)
            self.post(ev.CommandNotSent(action.cmd_id, f"{exc.__class__.__name__}: {exc}"))
            return
        log.info("barrier command sent", extra=extra)

    async def _query(self, query_id: str, reason: str) -> None:
        extra = {"lane": self.lane, "query_id": query_id, "reason": reason}
        try:
            await self.barrier.query(query_id)
        except ConnectionError as exc:
            # The lane asks again after every reconnect and at every dwell it outlives.
            log.warning("device query not sent", extra={**extra, "error": str(exc)})
            return
        log.info("device queried", extra=extra)

    # --- plumbing -------------------------------------------------------------------------

    def _spawn(self, what: str, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(what, t))

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()

    def _done(self, what: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._bump()  # idle() may have become true
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "lane task failed",
                extra={
                    "lane": self.lane,
                    "task": what,
                    "error": f"{exc.__class__.__name__}: {exc}",
                },
            )

    def _notify(self, notification: Notification) -> None:
        """Hand a note to the observers once the loop has started what is already due.

        Observers publish (events topic, forwarder, dashboard): run at once, that work would
        come before the first step of a task this step just started — the token check, the
        record append, the barrier command — and hold up its hand-off to a thread or the
        broker. Deferred by one turn of the loop (order kept), the vehicle's path goes first."""
        asyncio.get_running_loop().call_soon(self._deliver, notification)

    def _deliver(self, notification: Notification) -> None:
        for observer in self.observers:
            try:
                observer(notification)
            except Exception:
                log.exception(
                    "observer failed", extra={"lane": self.lane, "note": notification.name}
                )
