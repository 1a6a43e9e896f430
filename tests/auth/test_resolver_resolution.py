"""The resolver against the real simulated acquirer: nothing the lane gave up stays charged."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from polling import eventually

from lane.auth.acquirer import AcquirerClient, PaymentStatus, PayRequest
from lane.auth.resolver import (
    PaymentState,
    ResolutionStore,
    Resolver,
    refund_query_backoff,
)
from lane.checks import check_config
from lane.config import parse_config
from lane.core.backoff import Backoff
from sim.acquirer import AcquirerServer, running_acquirer
from sim.acquirer_faults import Outage

S = PaymentState
FAST = Backoff(first_s=0.01, max_s=0.05)
_codes = itertools.count(2900_0000_0000_0000)


@pytest.fixture
async def acquirer() -> AsyncIterator[AcquirerServer]:
    async with running_acquirer(seed=11) as server:
        yield server


@pytest.fixture
async def client(acquirer: AcquirerServer) -> AsyncIterator[AcquirerClient]:
    async with AcquirerClient(acquirer.url) as c:
        yield c


def make_resolver(path: Path, client: AcquirerClient, **kw: object) -> Resolver:
    kw.setdefault("request_timeout_s", 0.5)
    return Resolver(ResolutionStore(path), client, backoff=FAST, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def resolver(tmp_path: Path, client: AcquirerClient) -> AsyncIterator[Resolver]:
    r = make_resolver(tmp_path / "resolve.db", client)
    await r.start()
    yield r
    await r.stop()


async def begin(resolver: Resolver, pid: str) -> None:
    _, created = await resolver.begin(
        pid,
        auth_id="a-" + pid,
        lane="p01/l01",
        amount_minor=450,
        currency="CNY",
        method="emv",
        network="acquirer",
    )
    assert created


async def begin_and_pay(resolver: Resolver, client: AcquirerClient, pid: str) -> PaymentStatus:
    await begin(resolver, pid)
    result = await client.pay(PayRequest(pid, str(next(_codes)), 450, "CNY", "p01/l01"), 0.5)
    return result.status


async def final(resolver: Resolver, pid: str) -> PaymentState:
    return await asyncio.wait_for(resolver.wait_final(pid), 5)


def charged_not_reversed(acquirer: AcquirerServer) -> list[str]:
    return [p["payment_id"] for p in acquirer.payments() if p["charged"] and not p["reversed"]]


async def test_given_up_success_is_reversed(
    acquirer: AcquirerServer, client: AcquirerClient, resolver: Resolver
) -> None:
    assert await begin_and_pay(resolver, client, "pay_ok") is PaymentStatus.SUCCEEDED
    resolver.charged("pay_ok", None)
    assert charged_not_reversed(acquirer) == ["pay_ok"]
    resolver.give_up("pay_ok", "vehicle_left")
    assert await final(resolver, "pay_ok") is S.REVERSED
    assert charged_not_reversed(acquirer) == []
    row = await resolver.get("pay_ok")
    assert row is not None and row.reason == "reversed:succeeded"


async def test_settled_payment_is_never_reversed(
    tmp_path: Path, acquirer: AcquirerServer, client: AcquirerClient, resolver: Resolver
) -> None:
    await begin_and_pay(resolver, client, "pay_rec")
    resolver.charged("pay_rec", "acq")
    await resolver.settle("pay_rec")
    resolver.give_up("pay_rec", "late abandon")  # refused: the record is on disk
    await asyncio.wait_for(resolver.wait_idle(), 5)
    await resolver.stop()
    # A new run on the same file does not touch it either.
    again = make_resolver(tmp_path / "resolve.db", client)
    assert await again.recover() == 0
    await again.start()
    await asyncio.wait_for(again.wait_idle(), 5)
    await again.stop()
    row = await asyncio.to_thread(ResolutionStore(tmp_path / "resolve.db").get, "pay_rec")
    assert row is not None and row.state is S.SETTLED
    assert charged_not_reversed(acquirer) == ["pay_rec"]


async def test_crash_between_pay_and_record_is_reversed_on_restart(
    tmp_path: Path, acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    path = tmp_path / "crash.db"
    first = make_resolver(path, client)  # never started: the process "dies" after paying
    assert await begin_and_pay(first, client, "pay_crash") is PaymentStatus.SUCCEEDED
    await first.stop()
    del first
    assert charged_not_reversed(acquirer) == ["pay_crash"]

    second = make_resolver(path, client)
    await second.start()
    try:
        assert await final(second, "pay_crash") is S.REVERSED
    finally:
        await second.stop()
    assert charged_not_reversed(acquirer) == []


async def test_recovery_settles_what_the_uplink_queue_holds(
    tmp_path: Path, acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    path = tmp_path / "crash.db"
    first = make_resolver(path, client)
    await begin_and_pay(first, client, "pay_recorded")
    first.charged("pay_recorded", "acq")
    await begin_and_pay(first, client, "pay_not_recorded")
    first.charged("pay_not_recorded", "acq")
    await first.stop()

    async def is_recorded(payment_id: str) -> bool:  # stands in for the uplink queue
        return payment_id == "pay_recorded"

    second = make_resolver(path, client, is_recorded=is_recorded)
    await second.start()
    try:
        assert await final(second, "pay_recorded") is S.SETTLED
        assert await final(second, "pay_not_recorded") is S.REVERSED
    finally:
        await second.stop()
    assert charged_not_reversed(acquirer) == ["pay_recorded"]


async def test_retries_while_the_acquirer_is_down(
    acquirer: AcquirerServer, client: AcquirerClient, resolver: Resolver
) -> None:
    await begin_and_pay(resolver, client, "pay_down")
    acquirer.update_faults(outages=(Outage("refuse"),))
    resolver.give_up("pay_down", "timeout")

    async def retried() -> bool:  # several backoff rounds against a closed port
        row = await resolver.get("pay_down")
        return row is not None and row.state is S.GIVEN_UP and row.attempts >= 2

    await eventually(retried, what="two failed reversal attempts")
    acquirer.update_faults(outages=())
    assert await final(resolver, "pay_down") is S.REVERSED
    assert charged_not_reversed(acquirer) == []


async def test_pending_that_succeeds_late_is_reversed(
    acquirer: AcquirerServer, client: AcquirerClient, resolver: Resolver
) -> None:
    acquirer.update_faults(pending_rate=1.0, pending_ms=80)
    assert await begin_and_pay(resolver, client, "pay_pend") is PaymentStatus.PENDING
    resolver.give_up("pay_pend", "timeout")
    assert await final(resolver, "pay_pend") is S.REVERSED
    payment = acquirer.payment("pay_pend")
    assert payment is not None and payment.previous == "SUCCEEDED"  # it did go through
    assert charged_not_reversed(acquirer) == []


@pytest.mark.parametrize(
    "step_back_s",
    [
        0.0,
        # NTP steps the lane's clock back three hours while the payment waits: its age on the
        # wall clock goes negative. The grace counts on the monotonic clock too, so it is
        # voided after it, not hours later (asking the acquirer four times a second till then).
        3 * 3600.0,
    ],
)
async def test_pending_too_long_is_voided(
    tmp_path: Path, acquirer: AcquirerServer, client: AcquirerClient, step_back_s: float
) -> None:
    acquirer.update_faults(pending_rate=1.0, pending_ms=60_000)
    step = [0.0]
    resolver = make_resolver(
        tmp_path / "r.db", client, pending_grace_s=0.3, clock=lambda: time.time() - step[0]
    )
    await resolver.start()
    try:
        await begin_and_pay(resolver, client, "pay_stuck")
        step[0] = step_back_s
        resolver.give_up("pay_stuck", "timeout")
        assert await final(resolver, "pay_stuck") is S.REVERSED
    finally:
        await resolver.stop()
    payment = acquirer.payment("pay_stuck")
    assert payment is not None and payment.previous == "PENDING" and not payment.charged


async def test_unknown_to_the_acquirer_is_voided(
    acquirer: AcquirerServer, client: AcquirerClient, resolver: Resolver
) -> None:
    await begin(resolver, "pay_lost")
    resolver.give_up("pay_lost", "acquirer_unavailable")
    assert await final(resolver, "pay_lost") is S.REVERSED
    # The void refuses a pay request that was still on its way.
    late = await client.pay(PayRequest("pay_lost", str(next(_codes)), 1, "CNY", "l"), 0.5)
    assert late.status is PaymentStatus.REVERSED
    assert charged_not_reversed(acquirer) == []


async def test_declined_needs_no_reversal(
    acquirer: AcquirerServer, client: AcquirerClient, resolver: Resolver
) -> None:
    acquirer.update_faults(decline_rate=1.0)
    await begin_and_pay(resolver, client, "pay_no")
    resolver.give_up("pay_no", "timeout")
    assert await final(resolver, "pay_no") is S.DECLINED
    payment = acquirer.payment("pay_no")
    assert payment is not None and payment.status == "DECLINED"


async def test_a_decline_wakes_who_waited_before_it(resolver: Resolver) -> None:
    await begin(resolver, "pay_wait")
    waiter = asyncio.create_task(resolver.wait_final("pay_wait"))
    await eventually(lambda: resolver._waiters.get("pay_wait"), what="the waiter is waiting")
    resolver.declined("pay_wait", "insufficient_funds")
    assert await asyncio.wait_for(waiter, 5) is S.DECLINED


def test_refund_queries_wait_a_minute_doubling_to_half_an_hour() -> None:
    assert [refund_query_backoff(60.0).delay(n) for n in (1, 2, 6, 1100)] == [60, 120, 1800, 1800]


async def test_store_failure_does_not_kill_the_worker(
    tmp_path: Path, client: AcquirerClient, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResolutionStore(tmp_path / "r.db")
    resolver = Resolver(store, client, backoff=FAST)
    await resolver.start()
    store.close()  # every write fails from now on
    resolver.give_up("pay_x", "timeout")

    def failures() -> int:
        return sum(r.message.startswith("payment resolution failed") for r in caplog.records)

    await eventually(lambda: failures() >= 2, what="several failed rounds")
    await resolver.stop()  # would re-raise here had the worker died


async def test_a_worker_failing_for_hours_goes_on(
    tmp_path: Path, client: AcquirerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """More failed rounds in a row than a float's power of two holds (1025 at 30 s apart is
    an outage of nine hours): the worker goes on at its longest wait."""
    store = ResolutionStore(tmp_path / "r.db")
    resolver = Resolver(store, client, backoff=Backoff(first_s=1e-6, max_s=1e-4))
    await resolver.start()
    store.close()  # every write fails from now on
    resolver.give_up("pay_x", "timeout")

    def failures() -> int:
        return sum(r.message.startswith("payment resolution failed") for r in caplog.records)

    await eventually(lambda: failures() >= 1100, within=60.0, what="1100 failed rounds")
    await resolver.stop()  # would re-raise here had the worker died


async def test_run_alone_recovers_first(
    tmp_path: Path, acquirer: AcquirerServer, client: AcquirerClient
) -> None:
    path = tmp_path / "crash.db"
    first = make_resolver(path, client)
    await begin_and_pay(first, client, "pay_crash")
    await first.stop()
    second = make_resolver(path, client)
    task = asyncio.create_task(second.run())  # as a TaskGroup would run it, without start()
    try:
        assert await final(second, "pay_crash") is S.REVERSED
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await second.stop()
    assert charged_not_reversed(acquirer) == []


DAY_MS = 86_400_000


def payments_of_every_kind(path: Path) -> ResolutionStore:
    """Final payments made on day 0 (declined, settled, reversed, settled owing a refund) and
    day 9 (settled), and one left charged on day 0."""
    store = ResolutionStore(path)
    for pid, day in (("old_declined", 0), ("old_settled", 0), ("old_reversed", 0)):
        store.begin(pid, auth_id=f"auth-{pid}", lane="p01/l01", amount_minor=450, currency="CNY",
                    method="payment_code", network="acquirer", now_ms=day * DAY_MS)  # fmt: skip
    for pid, day in (("old_owed", 0), ("old_charged", 0), ("new_settled", 9)):
        store.begin(pid, auth_id=f"auth-{pid}", lane="p01/l01", amount_minor=450, currency="CNY",
                    method="payment_code", network="acquirer", now_ms=day * DAY_MS)  # fmt: skip
        store.move(pid, S.CHARGED, day * DAY_MS)
    store.move("old_declined", S.DECLINED, 0, reason="insufficient_funds")
    store.move("old_settled", S.CHARGED, 0)
    store.move("old_settled", S.SETTLED, 0)
    store.move("old_reversed", S.GIVEN_UP, 0, reason="timeout")
    store.move("old_reversed", S.REVERSED, 0)
    store.move("old_owed", S.SETTLED, 0, refund_minor=150)
    store.move("new_settled", S.SETTLED, 9 * DAY_MS)
    return store


KEPT = {"old_owed", "old_charged", "new_settled"}


def ids(store: ResolutionStore) -> set[str]:
    return {row.payment_id for row in store.in_states(set(PaymentState))}


async def test_a_prune_turn_deletes_the_payments_final_for_longer_than_kept(
    tmp_path: Path, client: AcquirerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Day 10, kept 7 days: the day-0 finals go; a refund still owed, a payment not final and
    a day-9 one stay. The turn says how many went."""
    store = payments_of_every_kind(tmp_path / "payments.sqlite3")
    now_s = 10 * DAY_MS / 1000
    resolver = Resolver(store, client, clock=lambda: now_s, keep_days=7)
    with caplog.at_level("INFO", logger="lane.auth.resolver"):
        assert await resolver.prune_turn() == 3
    assert ids(store) == KEPT
    said = [r for r in caplog.records if r.getMessage() == "payments pruned"]
    assert [r.__dict__["pruned"] for r in said] == [3]
    store.refunded("old_owed", 10 * DAY_MS, "SUCCESS")  # made today: kept 7 more days
    store.end_recorded("old_owed", "made:SUCCESS")
    assert await resolver.prune_turn() == 0
    now_s = 17 * DAY_MS / 1000 + 1
    assert await resolver.prune_turn() == 2
    assert ids(store) == {"old_charged"}
    await resolver.stop()


async def test_pruning_turns_hourly_and_a_locked_store_is_retried_each_second_under_its_alarm(
    tmp_path: Path, client: AcquirerClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The first turn finds the store locked by another writer: logged, `payments_store_error`
    raised, and the store probed a second later (by the sleep it is given), which clears the
    alarm; the next prune an hour later."""
    caplog.set_level(logging.INFO, logger="lane.auth.resolver")
    path = tmp_path / "payments.sqlite3"
    store = payments_of_every_kind(path)
    now_s = 10 * DAY_MS / 1000
    said: list[tuple[str, str | None]] = []
    resolver = Resolver(
        store, client, clock=lambda: now_s, keep_days=7, alarm=lambda c, t: said.append((c, t))
    )
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the file
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            other.execute("ROLLBACK")  # the writer is done before the next try
        elif len(slept) == 3602:
            raise asyncio.CancelledError  # the hourly turn after the retry is enough

    with pytest.raises(asyncio.CancelledError):
        await resolver.prune_every(sleep)
    other.close()
    assert set(slept) == {1.0}
    events = [r.getMessage() for r in caplog.records]
    assert events.count("payments not pruned; retrying at the next turn") == 1
    assert events.count("payments pruned") == 1  # an hour later
    assert [code for code, _ in said] == ["payments_store_error", "payments_store_error"]
    assert f"payments store {path}: database is locked" in str(said[0][1])
    assert said[1][1] is None
    assert ids(store) == KEPT
    await resolver.stop()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "greater than or equal to 1"),
        ("367", "less than or equal to 366"),
        ("7.5", "valid integer"),
        ('"7"', "valid integer"),
        ("true", "valid integer"),
    ],
)
def test_the_payments_retention_is_whole_days_from_one_to_a_year(
    tmp_path: Path, value: str, problem: str
) -> None:
    path = tmp_path / "lane.toml"
    path.write_text(f"[auth]\npayments_keep_days = {value}\n")
    found = check_config(path)
    assert [p for p in found.problems if "auth.payments_keep_days" in p and problem in p]
    # Alone (no plaza sharing): no lane key to have.
    path.write_text("[auth]\npayments_keep_days = 30\nshare_used_tokens = false\n")
    assert check_config(path).problems == []
    assert parse_config({}).auth.payments_keep_days == 7
