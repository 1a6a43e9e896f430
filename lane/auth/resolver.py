"""Durable resolution of online payments whose outcome the lane did not get (safety rule 5).

The authoriser records the intent before paying (`begin`), the outcome when it has one
(`charged` / `declined`), and hands over every payment it gives up on (`give_up`). The lane
`settle`s a charged payment once its record is on disk: from then on it is never reversed.
A background worker resolves given-up payments: it queries the acquirer and reverses whatever
succeeded, is still pending after a grace period, or is unknown to the acquirer (a reversal of
an unknown id voids it, so a pay request still on its way is refused when it lands). While the
acquirer is unreachable it retries with backoff; the work survives restarts because it is in
SQLite, and on start every intent left open by a previous run is given up and resolved. Each
payment's network is recorded with its intent: a later run asks that network alone about it.

A payment may be settled owing part of it back (`settle(..., refund_minor)`: a metro exit
charged the maximum fare, then priced the passenger's trip by the tap-in the acquirer's answer
found). The same worker makes that partial refund, with its own idempotency key
(`refund_id_for`), and retries it with the same backoff until the network takes it; while a
refund fails, the alarm `refund_failing` says which and why, and it clears once every refund
owed is made.

Each end a refund reaches (made by the network, made by hand, ended unpaid) is handed to
`record_end` (the shell appends it to the uplink queue as a `refund` record:
lane.auth.refund_ends) and then marked recorded in the store; an end the queue refused is kept
and handed again, under the alarm `refund_unrecorded` until the queue takes it.

The store itself may fail while the lane runs (locked by another process, corrupt, an I/O
error): no payment is asked of a network without its intent committed first, so codes are
declined, and the alarm `payments_store_error` says so from the first failed call. While it
holds the store is probed every second (the write a payment's begin makes, on the store's one
writer thread) and the probe that commits clears it (lane.store_watch, as the lane's other
stores).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from lane.auth.acquirer import (
    Acquirer,
    AcquirerError,
    AcquirerProtocolError,
    AcquirerTimeout,
    AcquirerUnavailable,
    AlarmSink,
    PaymentStatus,
    RefundAnswer,
    RefundRequest,
    RefundState,
)
from lane.auth.network_config import Network
from lane.auth.refund_ends import (
    RecordRefundEnd,
    RefundEnd,
    RefundNotRecorded,
    parse_end_key,
    refund_record_id,
)
from lane.auth.resolution_store import (
    FINAL,
    OPEN,
    IllegalTransition,
    PaymentRow,
    PaymentState,
    ResolutionStore,
    StoreError,
    UnknownPayment,
)
from lane.core.backoff import Backoff
from lane.store_watch import StoreWatch

__all__ = [
    "IllegalTransition",
    "PaymentRow",
    "PaymentState",
    "ResolutionStore",
    "Resolver",
    "StoreError",
    "UnknownPayment",
]

log = logging.getLogger("lane.auth.resolver")
T = TypeVar("T")
# How long a final payment row stays in payments.sqlite3 (auth.payments_keep_days) and how often
# the old ones go: a toll lane writes thousands a day, and a full disk refuses payments.
DEFAULT_KEEP_DAYS = 7
PRUNE_EVERY_S = 3600.0
REFUND_ALARM = "refund_failing"
REFUND_UNPAID_ALARM = "refund_unpaid"
REFUND_UNRECORDED_ALARM = "refund_unrecorded"
STORE_ALARM = "payments_store_error"
# What the operator does about a refund the network ended unpaid, by the network's word.
UNPAID_ACTION = {
    "ABNORMAL": "the payer's account refused it: refund by hand on the WeChat Pay merchant"
    " platform (交易中心) or to another account (异常退款)",
    "CLOSED": "closed unpaid (the merchant balance was short for 7 days): fund it and refund"
    " by hand on the merchant platform",
}


def refund_id_for(payment_id: str) -> str:
    """The one partial refund a payment may owe, named so that asking again refunds once
    (Alipay's out_request_no, WeChat Pay's out_refund_no: 64 characters at most)."""
    return f"{payment_id}-r1"


# An acquirer that did not answer is asked again a quarter second later, doubling to 30 s.
ACQUIRER_RETRY = Backoff(0.25, 30.0)


def refund_query_backoff(first_s: float = 60.0) -> Backoff:
    """When a refund the network took without finishing is asked about: `first_s` after (a
    minute, as WeChat Pay advises), then twice as long each time, up to 30 times that."""
    return Backoff(first_s, 30 * first_s)


class Resolver:
    """Owns the resolution store's writes (one worker thread) and the resolving task.

    `clock` is the wall clock in Unix seconds (row timestamps, which outlive a run);
    `monotonic` times what a run waits for: a payment's age counts on both (the larger), so
    a step of the wall clock back cannot hold a pending payment for hours, and the refund
    queries' back-off is on it alone.
    `is_recorded`, when given, tells recovery whether a payment left open by a crash is in the
    uplink queue after all (the crash fell between writing the record and `settle`): those are
    settled, not reversed. `lane` names the lane in the store alarm's log lines.
    """

    def __init__(
        self,
        store: ResolutionStore,
        client: Acquirer,
        clock: Callable[[], float] = time.time,
        backoff: Backoff = ACQUIRER_RETRY,
        *,
        request_timeout_s: float = 2.0,
        pending_grace_s: float = 30.0,
        is_recorded: Callable[[str], Awaitable[bool]] | None = None,
        alarm: AlarmSink | None = None,
        refund_query: Backoff | None = None,
        keep_days: int = DEFAULT_KEEP_DAYS,
        record_end: RecordRefundEnd | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        lane: str = "",
    ) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._monotonic = monotonic
        # payment_id -> when this run first had it (begun, or met open): its age in this run.
        self._seen: dict[str, float] = {}
        self._backoff = backoff
        self._timeout_s = request_timeout_s
        self._grace_ms = int(pending_grace_s * 1000)
        self._keep_ms = keep_days * 86_400_000
        self._is_recorded = is_recorded
        self._alarm = alarm
        self._record_end = record_end
        # The text each refund alarm last said (None: cleared); absent: not said by this run
        # yet (a restarted lane's sink may still show the old run's alarm).
        self._said: dict[str, str | None] = {}
        # A refund the network is still processing (or ended unpaid) is asked about on this
        # back-off (WeChat Pay: a minute after, then less and less often): payment_id ->
        # (queries so far, when the next is due on the monotonic clock). Memory only: a
        # restart asks at once.
        self._refund_query = refund_query or refund_query_backoff()
        self._refund_checks: dict[str, tuple[int, float]] = {}
        # The refunds owed by stage as the last pass read them, and those this run made.
        self._owed_by_stage: Counter[str] = Counter()
        self._made = 0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resolution-store")
        # `payments_store_error`: raised by a failed call (`_db`), cleared by the probe that
        # commits, run like every call on the store's thread.
        self.store_watch = StoreWatch(
            lane,
            STORE_ALARM,
            "online payments refused: payments store",
            functools.partial(self._db, self._store.probe),
            (StoreError,),
            alarm,
        )
        self._queue: dict[str, str] = {}  # payment_id -> why the lane gave up
        self._mine: set[str] = set()  # begun by this run: never "recovered"
        # Intent writes whose caller was cancelled: held here until they end (asyncio keeps
        # only weak references to tasks).
        self._orphan_writes: set[asyncio.Future[tuple[PaymentRow, bool]]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while the worker has nothing left to resolve
        self._waiters: dict[str, list[asyncio.Future[PaymentState]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._recovered = False

    def refund_tally(self) -> dict[str, int]:
        """The partial refunds owed by stage (`PaymentRow.refund_stage`) as last read, and
        `made`: how many this run made (the lane's health message)."""
        return {**self._owed_by_stage, **({"made": self._made} if self._made else {})}

    # -- what the authoriser calls ---------------------------------------------------------

    async def begin(
        self,
        payment_id: str,
        *,
        auth_id: str,
        lane: str,
        amount_minor: int,
        currency: str,
        method: str,
        network: Network,
    ) -> tuple[PaymentRow, bool]:
        """Commit the intent to pay on `network`; returns (row, created). Pay only when created.

        A caller cancelled meanwhile pays nothing, yet the write goes on in the store's thread
        and may commit the intent: once it has, the payment is given up like any other (a void
        stops a pay request that might still land), or it would stay open until a restart."""
        written = asyncio.ensure_future(
            self._db(
                self._store.begin,
                payment_id,
                auth_id=auth_id,
                lane=lane,
                amount_minor=amount_minor,
                currency=currency,
                method=method,
                network=network,
                now_ms=self._now_ms(),
            )
        )
        try:
            row, created = await asyncio.shield(written)
        except asyncio.CancelledError:
            self._orphan_writes.add(written)
            written.add_done_callback(self._orphan_writes.discard)
            written.add_done_callback(functools.partial(self._begun_unpaid, payment_id, lane))
            raise
        if created:
            self._begun(payment_id)
        return row, created

    def charged(self, payment_id: str, acquirer_ref: str | None) -> None:
        """Note that the payment went through; written in the background, off the decision path.

        Its durability buys nothing: recovery treats `intent` and `charged` alike. The single
        store thread runs writes in submission order, so a later `settle` finds it done.
        """
        self._write_behind(payment_id, PaymentState.CHARGED, acquirer_ref=acquirer_ref)

    def declined(self, payment_id: str, reason: str) -> None:
        """Note a decline; written in the background (a lost one is re-learnt by query)."""
        self._write_behind(payment_id, PaymentState.DECLINED, reason=reason)
        self._finished(payment_id)

    async def settle(self, payment_id: str, refund_minor: int = 0) -> PaymentRow:
        """The record is on disk: never reverse. Raises IllegalTransition if already given up.
        `refund_minor`: the record kept less than was charged; that much is owed back, durably
        from this commit on, and the worker refunds it."""
        row = await self._move(payment_id, PaymentState.SETTLED, refund_minor=refund_minor)
        if row.refund_owed:
            self._idle.clear()
            self._wake.set()
        return row

    async def owe_refund(self, payment_id: str, refund_minor: int) -> None:
        """Part of this charged payment will be owed back once it is settled (written before
        its record, so a crash in between still refunds it)."""
        row = await self._db(self._store.owe_refund, payment_id, refund_minor, self._now_ms())
        if row is not None and row.refund_owed:  # settled meanwhile: the worker makes it now
            self._idle.clear()
            self._wake.set()

    def give_up(self, payment_id: str, reason: str = "gave_up") -> None:
        """The lane will not use this payment: resolve it (reverse if charged) unless settled."""
        self._queue.setdefault(payment_id, reason)
        self._idle.clear()
        self._wake.set()

    async def get(self, payment_id: str) -> PaymentRow | None:
        return await self._db(self._store.get, payment_id)

    async def open_payments(self) -> list[PaymentRow]:
        """Payments not in a final state (for the dashboard and reconciliation)."""
        return await self._db(self._store.in_states, {*OPEN, PaymentState.GIVEN_UP})

    async def wait_final(self, payment_id: str) -> PaymentState:
        """Wait until the payment reaches a final state (settled, reversed, declined)."""
        row = await self.get(payment_id)
        if row is None:
            raise UnknownPayment(payment_id)
        if row.state in FINAL:
            return row.state
        future: asyncio.Future[PaymentState] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(payment_id, []).append(future)
        return await future

    async def wait_idle(self) -> None:
        """Wait until every payment handed over so far is resolved or refused (needs start)."""
        await self._idle.wait()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous run left open, then resolve in the background."""
        await self.recover()
        self._tasks = [
            asyncio.create_task(self.run(), name="payment-resolver"),
            asyncio.create_task(self.prune_every(), name="payments-prune"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await asyncio.to_thread(self._io.shutdown)

    async def recover(self) -> int:
        """Give up every intent a previous run left open (or settle it if it was recorded)."""
        self._recovered = True
        rows = await self._db(self._store.in_states, OPEN)
        count = 0
        for row in rows:
            if row.payment_id in self._mine:
                continue
            if self._is_recorded is not None and await self._is_recorded(row.payment_id):
                if row.state is PaymentState.CHARGED:
                    await self.settle(row.payment_id)
                    log.warning("recovered payment was recorded: settled", extra=_x(row))
                    continue
                log.error("recorded payment was never charged: resolving", extra=_x(row))
            self.give_up(row.payment_id, "recovered")
            log.warning("payment left open by a previous run: resolving", extra=_x(row))
            count += 1
        return count

    async def run(self) -> None:
        """Resolve given-up payments until cancelled (recovering first, if nobody did)."""
        if not self._recovered:
            await self.recover()
        failures = 0
        while True:
            self._wake.clear()
            try:
                await self._absorb_queue()
                rows = await self._db(self._store.in_states, {PaymentState.GIVEN_UP})
                owed = await self._db(self._store.refunds_owed)
                # Ends written by this pass's answers, earlier runs, or `lane refunds --made`.
                unrecorded = await self._record_ends()
                self._owed_by_stage = Counter(r.refund_stage for r in owed)
                if not rows and not owed and not unrecorded:
                    failures = 0
                    # The last made by hand (refunds_cli): nothing owed, neither alarm stands
                    # (one failing to be asked about clears too: it is no longer asked).
                    if self._said.get(REFUND_UNPAID_ALARM) or self._said.get(REFUND_ALARM):
                        self._say_refunds([], owed)
                        self._say_unpaid(owed)
                    if not self._queue:
                        self._idle.set()
                    await self._wake.wait()
                    continue
                failed, pending = await self._resolve_all(rows)
                refund_failed, next_query_s = await self._refund_all(owed)
                if next_query_s is not None:  # the file is read again meanwhile: an operator's
                    next_query_s = min(next_query_s, self._backoff.max_s)  # `lane refunds --made`
                unrecorded = await self._record_ends()  # the ends this pass's answers wrote
                failed |= refund_failed or unrecorded
            except Exception:  # the store failed, or a bug: keep resolving, never die quietly
                log.exception("payment resolution failed; retrying")
                failed, pending, next_query_s = True, False, None
            failures = failures + 1 if failed else 0
            if failed:
                await asyncio.sleep(self._backoff.delay(failures))
                continue
            # Someone is still deciding: look again soon; a refund in progress: when its next
            # query is due; either way at once when woken.
            waits = [self._backoff.first_s] if pending else []
            waits += [] if next_query_s is None else [next_query_s]
            if waits:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(waits)):
                        await self._wake.wait()

    async def prune_every(
        self,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        every_s: float = PRUNE_EVERY_S,
    ) -> None:
        """Prune (`prune_turn`) now and every `every_s` until cancelled. While the store fails,
        probe it every second instead (`ResolutionStore.probe`, the write a payment's begin
        makes; lane.store_watch): the probe that commits clears `payments_store_error`."""
        await self.store_watch.run(sleep, self.prune_turn, every_s)

    async def prune_turn(self) -> int | None:
        """Delete the payments final for longer than the retention (`auth.payments_keep_days`),
        keeping every refund still owed; how many went, None when the store failed (logged:
        the next turn tries again, the lane goes on)."""
        before_ms = self._now_ms() - self._keep_ms
        try:
            count = await self._db(self._store.prune, before_ms)
        except StoreError as exc:  # locked, disk full or failing: nothing lost, retried
            extra = {"before_ms": before_ms, "error": str(exc)}
            log.warning("payments not pruned; retrying at the next turn", extra=extra)
            return None
        log.info("payments pruned", extra={"pruned": count, "before_ms": before_ms})
        return count

    # -- inside the worker -----------------------------------------------------------------

    async def _absorb_queue(self) -> None:
        while self._queue:
            payment_id, reason = next(iter(self._queue.items()))
            try:
                await self._move(payment_id, PaymentState.GIVEN_UP, reason=reason)
            except IllegalTransition as exc:  # settled (recorded) or already final: leave it
                level = logging.ERROR if exc.current is PaymentState.SETTLED else logging.INFO
                log.log(
                    level,
                    "not resolving: payment is %s",
                    exc.current,
                    extra={"payment_id": payment_id, "reason": reason},
                )
            except UnknownPayment:
                log.error("asked to give up an unknown payment", extra={"payment_id": payment_id})
            del self._queue[payment_id]

    async def _resolve_all(self, rows: list[PaymentRow]) -> tuple[bool, bool]:
        """Try each row once; returns (something failed, something still pending)."""
        failed = pending = False
        for row in rows:
            try:
                pending |= not await self._resolve(row)
            except AcquirerError as exc:
                failed = True
                log.warning("could not resolve payment: %s", exc, extra=_x(row))
                await self._db(self._store.note_attempt, row.payment_id, self._now_ms(), str(exc))
                if isinstance(exc, AcquirerUnavailable | AcquirerTimeout):
                    break  # the acquirer is down: no use trying the rest now
        return failed, pending

    async def _refund_all(self, rows: list[PaymentRow]) -> tuple[bool, float | None]:
        """Ask each owed refund once, or about it when the network has it in hand and its query
        is due; returns (one failed: the alarm says which, seconds to the next query due)."""
        failing: list[tuple[PaymentRow, str]] = []
        stands: dict[str, PaymentRow | None] = {r.payment_id: r for r in rows}  # None: made
        now = self._monotonic()
        due: list[float] = []
        for row in rows:
            check = self._refund_checks.get(row.payment_id)
            if row.refund_sent_ms is not None and check is not None and now < check[1]:
                due.append(check[1] - now)
                continue
            if row.network is not None:
                self._client.remember(row.payment_id, row.network)
            ask = RefundRequest(row.payment_id, refund_id_for(row.payment_id), row.refund_minor,
                                row.amount_minor, row.currency)  # fmt: skip
            try:
                if row.refund_sent_ms is None:
                    answer = await self._client.refund(ask, self._timeout_s)
                else:  # taken under its number before (maybe by a previous run): ask about it
                    answer = await self._client.refund_status(ask, self._timeout_s)
            except AcquirerError as exc:
                failing.append((row, str(exc)))
                log.warning("refund not made: %s", exc, extra=_x(row))
                await self._db(self._store.note_attempt, row.payment_id, self._now_ms(), str(exc))
                stands[row.payment_id] = replace(row, attempts=row.attempts + 1)  # as written
                if isinstance(exc, AcquirerUnavailable | AcquirerTimeout):
                    break  # the network is down: no use trying the rest now
                continue
            stands[row.payment_id], wait_s = await self._refund_answered(row, ask, answer)
            if answer.state is RefundState.UNKNOWN:
                failing.append((row, f"no refund {ask.refund_id} at the network: asked again"))
            if wait_s is not None:
                due.append(wait_s)
        owed = [r for r in stands.values() if r is not None]
        self._owed_by_stage = Counter(r.refund_stage for r in owed)
        self._say_refunds(failing, owed)
        self._say_unpaid(owed)
        return bool(failing), min(due, default=None)

    async def _record_ends(self) -> bool:
        """Hand each refund end not recorded yet to `record_end`, then mark it recorded;
        whether one is left (the queue refused it: `refund_unrecorded` says so until it takes
        it). A crash between the two hands it again: its record id makes that a no-op."""
        if self._record_end is None:
            return False
        rows = await self._db(self._store.ends_unrecorded)
        text = None
        for done, row in enumerate(rows):
            assert row.refund_end is not None  # what ends_unrecorded selects
            kind, word = parse_end_key(row.refund_end)
            end = RefundEnd(row.payment_id, refund_id_for(row.payment_id), kind, word,
                            row.refund_minor, row.currency, row.method, row.network)  # fmt: skip
            x = {**_x(row), "refund_id": end.refund_id, "refund_end": end.key,
                 "record_id": refund_record_id(end.refund_id, end.key)}  # fmt: skip
            try:
                await self._record_end(end)
            except RefundNotRecorded as exc:
                log.warning("refund end not recorded: %s", exc, extra=x)
                text = (
                    f"{len(rows) - done} refund end(s) not in the uplink queue, the back office"
                    f" does not know them yet: {row.payment_id} {end.key} ({exc})"
                )
                break  # the queue refuses: the rest would be refused too
            await self._db(self._store.end_recorded, row.payment_id, end.key)
            log.info("refund end recorded", extra=x)
        self._say(REFUND_UNRECORDED_ALARM, text)
        return text is not None

    async def _refund_answered(
        self, row: PaymentRow, ask: RefundRequest, answer: RefundAnswer
    ) -> tuple[PaymentRow | None, float | None]:
        """Write where the refund stands; the row as it now stands (None: owed no more) and the
        seconds until it is asked about again (None: not)."""
        x = {**_x(row), "refund_minor": row.refund_minor, "refund_id": ask.refund_id,
             "refund_status": answer.detail}  # fmt: skip
        now_ms = self._now_ms()
        if answer.state is RefundState.MADE:
            word = answer.detail or answer.state.value
            await self._db(self._store.refunded, row.payment_id, now_ms, word)
            self._made += 1
            self._refund_checks.pop(row.payment_id, None)
            self._client.forget(row.payment_id)
            log.info("refund made", extra=x)
            return None, None
        if answer.state is RefundState.UNKNOWN:  # never taken after all: the same number again
            self._refund_checks.pop(row.payment_id, None)
            unsent = await self._db(self._store.refund_unsent, row.payment_id, now_ms)
            log.warning("refund not found at the network: asked again", extra=x)
            return unsent, None
        stands: PaymentRow | None = row
        if answer.state is RefundState.FAILED and row.refund_failed != answer.detail:
            stands = await self._db(
                self._store.refund_ended_unpaid, row.payment_id, answer.detail, now_ms
            )
            log.error("refund ended unpaid by the network: an operator's case", extra=x)
        elif answer.state is RefundState.PROCESSING and row.refund_sent_ms is None:
            stands = await self._db(self._store.refund_sent, row.payment_id, now_ms)
            log.info("refund taken, still processing: asked about by its number", extra=x)
        # Still in the network's hands, or ended unpaid (WeChat Pay's ABNORMAL turns SUCCESS
        # once the merchant refunds it by hand): asked about again, less and less often.
        queries = self._refund_checks.get(row.payment_id, (0, 0.0))[0] + 1
        wait_s = self._refund_query.delay(queries)
        self._refund_checks[row.payment_id] = (queries, self._monotonic() + wait_s)
        return stands, wait_s

    def _say_refunds(self, failing: list[tuple[PaymentRow, str]], owed: list[PaymentRow]) -> None:
        """`refund_failing` while a refund asked this pass failed: it counts every refund owed
        that the network has not taken (those a network down kept this pass from asking too),
        with the first failure's amount and reason."""
        text = None
        if failing:
            row, why = failing[0]
            count = len({r.payment_id for r, _ in failing}
                        | {r.payment_id for r in owed if r.refund_sent_ms is None})  # fmt: skip
            text = (
                f"{count} refund(s) owed to passengers not made, retried until taken:"
                f" {row.refund_minor} {row.currency} of {row.payment_id} ({why})"
            )
        self._say(REFUND_ALARM, text)

    def _say_unpaid(self, owed: list[PaymentRow]) -> None:
        """`refund_unpaid` while a refund the network ended unpaid is still owed (read from the
        store, so a restarted lane says it too); cleared once each is made."""
        unpaid = [r for r in owed if r.refund_failed]
        text = None
        if unpaid:
            row = unpaid[0]
            word = row.refund_failed or ""
            text = (
                f"refund of {row.refund_minor} {row.currency} of {row.payment_id} ended"
                f" {word} by the network, not asked again:"
                f" {UNPAID_ACTION.get(word, 'refund it by hand')}"
                + (f" (+{len(unpaid) - 1} more)" if len(unpaid) > 1 else "")
            )
        self._say(REFUND_UNPAID_ALARM, text)

    def _say(self, code: str, text: str | None) -> None:
        """Raise `code` with `text` (None: clear it) when the text changed, so health and the
        console show the count and the reason as they are now; and once at first."""
        if (code not in self._said or self._said[code] != text) and self._alarm is not None:
            self._alarm(code, text)
        self._said[code] = text

    async def _resolve(self, row: PaymentRow) -> bool:
        """One step towards a final state; True when the payment is resolved."""
        if row.network is not None:  # the router forgets with a restart; the store does not
            self._client.remember(row.payment_id, row.network)
        answer = await self._client.query(row.payment_id, self._timeout_s)
        if answer.status is PaymentStatus.DECLINED:
            await self._move(row.payment_id, PaymentState.DECLINED, reason=answer.reason)
            return True
        if answer.status is PaymentStatus.REVERSED:
            await self._move(row.payment_id, PaymentState.REVERSED, reason="reversed")
            return True
        rule = self._client.reverse_rule(row.payment_id)
        grace_ms = self._grace_ms if rule.pending_grace_s is None else rule.pending_grace_s * 1000
        seen = self._seen.setdefault(row.payment_id, self._monotonic())
        age_ms = max(self._now_ms() - row.created_ms, (self._monotonic() - seen) * 1000)
        if answer.status is PaymentStatus.PENDING and age_ms < grace_ms:
            return False
        if age_ms < rule.min_age_s * 1000:  # the network refuses a reversal this early
            return False
        # SUCCEEDED after the lane gave up, PENDING for too long, or never seen (NOT_FOUND):
        # reverse. For the last two this is a void that stops a late success.
        reversal = await self._client.reverse(row.payment_id, self._timeout_s)
        if reversal.status is not PaymentStatus.REVERSED:
            raise AcquirerProtocolError(f"reverse answered {reversal.status}, not REVERSED")
        await self._move(
            row.payment_id,
            PaymentState.REVERSED,
            acquirer_ref=reversal.acquirer_ref or answer.acquirer_ref,
            reason=f"reversed:{answer.status.value.lower()}",
        )
        level = logging.WARNING if answer.status is PaymentStatus.SUCCEEDED else logging.INFO
        log.log(level, "payment reversed (was %s)", answer.status.value, extra=_x(row))
        return True

    async def _move(self, payment_id: str, to: PaymentState, **kw: Any) -> PaymentRow:
        row = await self._db(self._store.move, payment_id, to, self._now_ms(), **kw)
        if row.state in FINAL:
            self._finished(payment_id)
            self._wake_waiters(payment_id, row.state)
        return row

    def _wake_waiters(self, payment_id: str, state: PaymentState) -> None:
        for future in self._waiters.pop(payment_id, []):
            if not future.done():
                future.set_result(state)

    def _begun(self, payment_id: str) -> None:
        self._mine.add(payment_id)
        self._seen[payment_id] = self._monotonic()

    def _begun_unpaid(
        self, payment_id: str, lane: str, written: asyncio.Future[tuple[PaymentRow, bool]]
    ) -> None:
        """The write of a cancelled `begin` ended: an intent it committed is given up."""
        if written.cancelled():  # the loop is closing: the next run recovers what committed
            return
        exc = written.exception()
        if exc is not None:  # nothing committed, nothing to resolve (a StoreError: `_db` said)
            log.warning("intent of a cancelled payment not written: %s", exc,
                        extra={"payment_id": payment_id, "lane": lane})  # fmt: skip
            return
        row, created = written.result()
        if created:  # else the row is an earlier attempt's, resolved by that attempt
            self._begun(payment_id)
            self.give_up(payment_id, "cancelled")
            log.warning("payment cancelled while its intent was written: resolving",
                        extra=_x(row))  # fmt: skip

    def _finished(self, payment_id: str) -> None:
        """Final: nothing in memory needs it any more (the store keeps the row). Should
        anything ask again, the router looks for it on each network, or the store's network is
        handed back (`remember`) before a query."""
        self._client.forget(payment_id)
        self._mine.discard(payment_id)  # recovery looks at open rows only
        self._seen.pop(payment_id, None)

    def _write_behind(self, payment_id: str, to: PaymentState, **kw: Any) -> None:
        call = functools.partial(self._store.move, payment_id, to, self._now_ms(), **kw)
        written = asyncio.get_running_loop().run_in_executor(self._io, call)
        written.add_done_callback(functools.partial(self._written, payment_id, to))

    def _written(self, payment_id: str, to: PaymentState, done: asyncio.Future[PaymentRow]) -> None:
        if done.cancelled():
            return
        if done.exception() is None:
            # a decline is final once on disk: a `wait_final` that read the row before it
            # waits for this write, not for a `_move` that never comes
            if done.result().state in FINAL:
                self._wake_waiters(payment_id, done.result().state)
            return
        exc = done.exception()
        if isinstance(exc, IllegalTransition):  # the lane gave up meanwhile: being resolved
            log.warning("payment not marked %s: %s", to, exc, extra={"payment_id": payment_id})
            return
        log.error("payment not marked %s", to, exc_info=exc, extra={"payment_id": payment_id})
        if isinstance(exc, StoreError):
            self.store_watch.says(exc)

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._io, functools.partial(fn, *args, **kwargs))
        except (IllegalTransition, UnknownPayment):  # answers about one payment, not failures
            raise
        except StoreError as exc:  # `payments_store_error` (its text when the error changed)
            self.store_watch.says(exc)
            raise

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _x(row: PaymentRow) -> dict[str, Any]:
    return {
        "payment_id": row.payment_id,
        "auth_id": row.auth_id,
        "lane": row.lane,
        "amount_minor": row.amount_minor,
        "state": row.state.value,
        "network": row.network,
    }
