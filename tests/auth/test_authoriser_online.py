"""The authoriser's online path against the real simulated acquirer and a real SQLite store.

Budgets are 0.3 s of real time; nothing here waits longer than a budget or two.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from alarm_kit import Alarms
from polling import eventually
from port_kit import refuses_connections

from lane.auth.acquirer import Acquirer, AcquirerClient
from lane.auth.authoriser import (
    Authoriser,
    AuthRequest,
    Decision,
    OfflineResult,
    payment_id_for,
)
from lane.auth.networks import WatchedAcquirer
from lane.auth.paycodes import online_code
from lane.auth.policy import OfflinePolicy
from lane.auth.resolver import PaymentRow, PaymentState, ResolutionStore, Resolver
from lane.core.backoff import Backoff
from sim.acquirer import AcquirerServer, running_acquirer
from sim.acquirer_faults import Outage
from sim.codes import emv_cpm

S = PaymentState
LANE = "p07/l03"
BUDGET_S = 0.3
KEY = b"lane-secret-for-tests-0123456789"
_codes = itertools.count(2500_0000_0000_0000)
_auths = itertools.count(1)


class Clock:
    """Monotonic time that a test can move forward (the hourly floor window)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class NoTokens:
    async def verify(self, text: str, now_unix: float) -> OfflineResult:
        raise AssertionError("online tests verify no tokens")


@dataclass
class Lane:
    acquirer: AcquirerServer
    client: AcquirerClient
    resolver: Resolver
    clock: Clock
    policy: OfflinePolicy
    auth: Authoriser
    # The operator's alarms as the lane's shell keeps them (code -> text; cleared: absent).
    alarms: dict[str, str]

    def request(
        self,
        code: str | None = None,
        amount: int = 450,
        kind: str = "payment_code",
        budget_s: float = BUDGET_S,
    ) -> AuthRequest:
        return AuthRequest(
            auth_id=f"auth-{next(_auths)}",
            lane=LANE,
            text=code or str(next(_codes)),
            kind=kind,
            amount_minor=amount,
            currency="CNY",
            deadline=self.clock() + budget_s,
        )

    async def final(self, decision: Decision) -> PaymentState:
        assert decision.payment_id is not None
        return await asyncio.wait_for(self.resolver.wait_final(decision.payment_id), 5)

    def charged_not_reversed(self) -> list[str]:
        return [
            p["payment_id"] for p in self.acquirer.payments() if p["charged"] and not p["reversed"]
        ]


async def make_lane(
    tmp_path: Path,
    acquirer: AcquirerServer,
    policy: OfflinePolicy | None = None,
    store: ResolutionStore | None = None,
) -> AsyncIterator[Lane]:
    clock = Clock()
    policy = policy or OfflinePolicy("deny")
    alarms = Alarms()
    async with AcquirerClient(acquirer.url) as client:
        # As the lane wires it (lane.auth.networks.build_acquirer): failures are an alarm.
        watched: Acquirer = WatchedAcquirer(client, "acquirer", alarms)
        resolver = Resolver(
            store or ResolutionStore(tmp_path / "resolve.db"),
            watched,
            backoff=Backoff(first_s=0.01, max_s=0.05),
            request_timeout_s=0.5,
        )
        await resolver.start()
        auth = Authoriser(
            LANE,
            watched,
            resolver,
            NoTokens(),
            policy,
            clock,
            time.time,
            account_key=KEY,
            poll_interval_s=0.02,
        )
        try:
            yield Lane(acquirer, client, resolver, clock, policy, auth, alarms)
        finally:
            await resolver.stop()


@pytest.fixture
async def acquirer() -> AsyncIterator[AcquirerServer]:
    async with running_acquirer(seed=5) as server:
        yield server


@pytest.fixture
async def lane(tmp_path: Path, acquirer: AcquirerServer) -> AsyncIterator[Lane]:
    async for env in make_lane(tmp_path, acquirer):
        yield env


@pytest.fixture
async def floor_lane(tmp_path: Path, acquirer: AcquirerServer) -> AsyncIterator[Lane]:
    policy = OfflinePolicy("floor", floor_limit_minor=500, hourly_limit_minor=1000)
    async for env in make_lane(tmp_path, acquirer, policy):
        yield env


async def test_approved_then_settled(lane: Lane) -> None:
    req = lane.request()
    decision = await lane.auth.authorise(req)
    assert (decision.approved, decision.reason, decision.offline) == (True, "approved", False)
    assert decision.payment_id == payment_id_for(LANE, req.auth_id)
    assert decision.acquirer_ref and decision.method == "payment_code"
    assert 0 <= decision.latency_ms <= BUDGET_S * 1000
    ref = decision.account_ref
    assert ref is not None and ref.startswith("alipay:") and req.text not in ref
    await lane.auth.settle(req.auth_id)
    assert await lane.final(decision) is S.SETTLED
    await lane.auth.abandon(req.auth_id)  # too late: a settled payment stays charged
    await asyncio.wait_for(lane.resolver.wait_idle(), 5)
    assert lane.charged_not_reversed() == [decision.payment_id]


async def test_account_ref_is_keyed_and_stable(lane: Lane, tmp_path: Path) -> None:
    code = str(next(_codes))
    first = await lane.auth.authorise(lane.request(code))
    again = await lane.auth.authorise(lane.request(code))  # declined code_used: no payer named
    assert again.reason == "code_used"
    assert again.account_ref == online_code("payment_code", code, KEY).account_ref
    # Paid, the account is the payer the acquirer names (keyed, never raw): the same for every
    # code of one wallet, whose digits change at every showing.
    wallet = [lane.acquirer.ledger.issue_code("wallet-1") for _ in range(2)]
    paid = [await lane.auth.authorise(lane.request(c)) for c in wallet]
    assert [d.approved for d in paid] == [True, True]
    assert paid[0].account_ref == paid[1].account_ref != first.account_ref
    ref = paid[0].account_ref
    assert ref is not None and ref.startswith("alipay:") and "wallet-1" not in ref
    other_key = Authoriser(
        "x",
        lane.client,
        lane.resolver,
        NoTokens(),
        lane.policy,
        lane.clock,
        time.time,
        account_key=b"another-secret-0123456789abcdef",
    )
    other = await other_key.authorise(lane.request(lane.acquirer.ledger.issue_code("wallet-1")))
    assert other.account_ref != paid[0].account_ref


async def test_declined(lane: Lane) -> None:
    lane.acquirer.update_faults(decline_rate=1.0)
    decision = await lane.auth.authorise(lane.request())
    assert (decision.approved, decision.reason) == (False, "insufficient_funds")
    assert await lane.final(decision) is S.DECLINED


async def test_emv_payload(lane: Lane) -> None:
    first = await lane.auth.authorise(
        lane.request(emv_cpm("4761739001010010", 1, bytes([1]) * 8), kind="emv")
    )
    second = await lane.auth.authorise(
        lane.request(emv_cpm("4761739001010010", 2, bytes([2]) * 8), kind="emv")
    )
    assert first.approved and second.approved and first.method == "emv"
    assert first.account_ref is not None and first.account_ref.startswith("emv:")
    assert first.account_ref == second.account_ref  # the card, not the one-time payload


async def test_pending_then_success_within_budget(lane: Lane) -> None:
    lane.acquirer.update_faults(pending_rate=1.0, pending_ms=60)
    decision = await lane.auth.authorise(lane.request())
    assert decision.approved
    assert decision.latency_ms >= 60


async def test_pending_past_the_deadline_times_out_and_is_reversed(lane: Lane) -> None:
    lane.acquirer.update_faults(pending_rate=1.0, pending_ms=BUDGET_S * 1000 + 100)
    req = lane.request()
    decision = await lane.auth.authorise(req)
    assert (decision.approved, decision.reason) == (False, "timeout")
    assert lane.clock() >= req.deadline
    assert decision.latency_ms <= BUDGET_S * 1000 + 50
    assert await lane.final(decision) is S.REVERSED
    payment = lane.acquirer.payment(decision.payment_id or "")
    assert payment is not None and payment.previous == "SUCCEEDED"  # it went through, late
    assert lane.charged_not_reversed() == []


async def test_success_one_millisecond_after_the_deadline_is_reversed(lane: Lane) -> None:
    lane.acquirer.update_faults(late_success_rate=1.0, late_success_ms=1)
    decision = await lane.auth.authorise(lane.request())
    assert (decision.approved, decision.reason) == (False, "timeout")
    assert await lane.final(decision) is S.REVERSED
    payment = lane.acquirer.payment(decision.payment_id or "")
    assert payment is not None and payment.charged and payment.previous == "SUCCEEDED"
    assert lane.charged_not_reversed() == []


async def test_hang_times_out_and_the_payment_is_voided(lane: Lane) -> None:
    lane.acquirer.update_faults(hang_rate=1.0)
    decision = await lane.auth.authorise(lane.request())
    assert decision.reason == "timeout"
    assert await lane.final(decision) is S.REVERSED
    lane.acquirer.update_faults(hang_rate=0.0)
    payment = lane.acquirer.payment(decision.payment_id or "")
    assert payment is not None and payment.previous == "NONE"


async def test_an_answer_whose_body_stalls_times_out_and_is_reversed_once_it_flows(
    lane: Lane,
) -> None:
    # Headers at once, then a byte a second: only a timeout on the whole exchange (not on
    # connecting, nor on each read) answers the driver within the budget.
    lane.acquirer.update_faults(slow_body_rate=1.0)
    async with asyncio.timeout(10 * BUDGET_S):
        decision = await lane.auth.authorise(lane.request())
    assert (decision.approved, decision.reason) == (False, "timeout")
    pid = decision.payment_id or ""
    payment = lane.acquirer.payment(pid)
    assert payment is not None and payment.charged  # the acquirer took it: in doubt
    # The resolver's queries stall the same way: it asks again and again, never stuck on one.
    asked = lane.acquirer.api_requests
    await eventually(lambda: lane.acquirer.api_requests >= asked + 3, within=5, what="queries")
    row = await lane.resolver.get(pid)
    assert row is not None and row.state is S.GIVEN_UP
    lane.acquirer.update_faults(slow_body_rate=0.0)
    assert await lane.final(decision) is S.REVERSED
    assert lane.charged_not_reversed() == []


async def test_an_answer_cut_mid_body_is_unavailable_alarmed_and_reversed_once_whole(
    lane: Lane,
) -> None:
    lane.acquirer.update_faults(cut_body_rate=1.0)
    async with asyncio.timeout(10 * BUDGET_S):
        decision = await lane.auth.authorise(lane.request())
    assert (decision.approved, decision.reason) == (False, "acquirer_unavailable")
    text = lane.alarms.get("payment_acquirer", "")
    assert "the acquirer unreachable" in text and "not completed" in text, text
    payment = lane.acquirer.payment(decision.payment_id or "")
    assert payment is not None and payment.charged  # the retry found the same payment: once
    assert len(lane.acquirer.payments()) == 1
    lane.acquirer.update_faults(cut_body_rate=0.0)
    assert await lane.final(decision) is S.REVERSED
    assert lane.charged_not_reversed() == []
    assert "payment_acquirer" not in lane.alarms  # cleared by the first whole answer


@pytest.mark.parametrize("fault", ["5xx", "refuse", "503"])
async def test_unavailable_with_deny_policy(lane: Lane, fault: str) -> None:
    if fault == "5xx":
        lane.acquirer.update_faults(error_rate=1.0)
    else:
        lane.acquirer.update_faults(outages=(Outage(fault),))  # type: ignore[arg-type]
    if fault == "refuse":  # a 5xx or a 503 answers from the next request on
        await eventually(lambda: refuses_connections(lane.acquirer.url), what="listener closed")
    decision = await lane.auth.authorise(lane.request())
    assert (decision.approved, decision.reason, decision.flags) == (
        False,
        "acquirer_unavailable",
        (),
    )
    assert decision.latency_ms < BUDGET_S * 1000
    lane.acquirer.update_faults(error_rate=0.0, outages=())
    assert await lane.final(decision) is S.REVERSED  # voided, in case it got through
    assert lane.charged_not_reversed() == []


async def test_unavailable_with_floor_policy(floor_lane: Lane) -> None:
    lane = floor_lane
    lane.acquirer.update_faults(outages=(Outage("refuse"),))
    await eventually(lambda: refuses_connections(lane.acquirer.url), what="listener closed")
    # The policy is judged here, not the budget: a refused connection answers at once, but a
    # loaded machine may stall past 0.3 s (the resolver's fsync), and a decision past its
    # deadline is a timeout, never the policy's (seen once: "timeout", not the floor's).
    ask = functools.partial(lane.request, budget_s=30.0)
    first = await lane.auth.authorise(ask(amount=400))
    assert (first.approved, first.offline, first.flags) == (True, True, ("deferred",))
    assert first.account_ref is not None and first.account_ref.startswith("alipay:")
    over = await lane.auth.authorise(ask(amount=501))
    assert (over.approved, over.reason) == (False, "over_floor_limit")
    second = await lane.auth.authorise(ask(amount=400))
    assert second.approved
    third = await lane.auth.authorise(ask(amount=400))  # 1200 > 1000 this hour
    assert (third.approved, third.reason) == (False, "offline_limit_reached")
    lane.clock.offset += 3600  # an hour later the window is empty again
    fourth = await lane.auth.authorise(ask(amount=400))
    assert fourth.approved and fourth.flags == ("deferred",)
    await lane.auth.settle(first.auth_id)  # nothing charged to settle: no error
    lane.acquirer.update_faults(outages=())
    for decision in (first, over, second, third, fourth):
        assert await lane.final(decision) is S.REVERSED
    assert lane.charged_not_reversed() == []


async def test_one_5xx_is_retried_with_the_same_payment_id(tmp_path: Path) -> None:
    # A seed whose first error draw fails the first attempt and whose second lets it through.
    seed = next(s for s in range(1000) if _draws(s, 2) == (True, False))
    async with running_acquirer(seed=seed) as acquirer:
        acquirer.update_faults(error_rate=0.5)
        async for lane in make_lane(tmp_path, acquirer):
            # A lane's whole budget: a retry is made only while budget is left, and on a loaded
            # machine the failed first call alone took most of the short one (a CI run).
            decision = await lane.auth.authorise(lane.request(budget_s=3.0))
            assert decision.approved
            assert [p["payment_id"] for p in acquirer.payments()] == [decision.payment_id]


def _draws(seed: int, n: int) -> tuple[bool, ...]:
    rng = random.Random(seed)
    return tuple(rng.random() < 0.5 for _ in range(n))


async def test_repeated_authorisation_never_pays_twice(lane: Lane) -> None:
    req = lane.request()
    first = await lane.auth.authorise(req)
    again = await lane.auth.authorise(req)
    assert first.approved and (again.approved, again.reason) == (False, "duplicate_auth")
    assert len(lane.acquirer.payments()) == 1


async def test_abandoned_after_approval_is_reversed(lane: Lane) -> None:
    req = lane.request()
    decision = await lane.auth.authorise(req)
    assert decision.approved
    await lane.auth.abandon(req.auth_id)  # e.g. the record could not be written
    assert await lane.final(decision) is S.REVERSED
    assert lane.charged_not_reversed() == []


def in_flight(lane: Lane, auth_id: str) -> bool:
    """The acquirer holds the authorisation's pay request (and answers it after its latency)."""
    return lane.acquirer.payment(payment_id_for(LANE, auth_id)) is not None


def processed(lane: Lane, payment_id: str) -> bool:
    """The acquirer has decided the payment (charged or not): no late charge follows."""
    payment = lane.acquirer.payment(payment_id)
    return payment is not None and payment.processed is not None and payment.processed.done()


async def test_abandoned_while_in_flight(lane: Lane) -> None:
    lane.acquirer.update_faults(latency_ms=50)
    req = lane.request()
    task = asyncio.create_task(lane.auth.authorise(req))
    await eventually(lambda: in_flight(lane, req.auth_id), what="the pay request at the acquirer")
    await lane.auth.abandon(req.auth_id)
    decision = await task
    assert not decision.approved
    assert await lane.final(decision) is S.REVERSED
    assert lane.charged_not_reversed() == []


async def test_cancelled_authorisation_is_resolved(lane: Lane) -> None:
    lane.acquirer.update_faults(latency_ms=50)
    req = lane.request()
    task = asyncio.create_task(lane.auth.authorise(req))
    await eventually(lambda: in_flight(lane, req.auth_id), what="the pay request at the acquirer")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = payment_id_for(LANE, req.auth_id)
    # The outcome, not how soon: the resolver's retries outlast 5 s on a loaded machine.
    assert await asyncio.wait_for(lane.resolver.wait_final(pid), 60) is S.REVERSED
    await eventually(lambda: processed(lane, pid), what="the acquirer done with the payment")
    assert lane.charged_not_reversed() == []


class HeldBegin(ResolutionStore):
    """The real store, whose `begin` waits in the store's thread until the test lets it write:
    a cancel lands exactly while a payment's intent is being written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def begin(self, payment_id: str, **kw: Any) -> tuple[PaymentRow, bool]:
        self.entered.set()
        self.release.wait(60)  # bounded: a failing test must not hold the thread for ever
        return super().begin(payment_id, **kw)


async def test_cancelled_while_its_intent_is_written_is_resolved(
    tmp_path: Path, acquirer: AcquirerServer
) -> None:
    """The cancel hits `begin` while its write is in the thread: the write commits after the
    authorisation is gone, and that intent is still resolved, not left open until a restart."""
    store = HeldBegin(tmp_path / "resolve.db")
    async for lane in make_lane(tmp_path, acquirer, store=store):
        req = lane.request()
        task = asyncio.create_task(lane.auth.authorise(req))
        await eventually(store.entered.is_set, what="begin in the store's thread")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.release.set()
        pid = payment_id_for(LANE, req.auth_id)
        assert await asyncio.wait_for(lane.resolver.wait_final(pid), 60) is S.REVERSED
        assert lane.charged_not_reversed() == []


async def test_bad_codes_never_reach_the_acquirer(lane: Lane) -> None:
    for text, kind in [
        ("12345", "payment_code"),
        ("hello", "payment_code"),
        ("hQVDUFYwMQ==", "emv"),  # CPV01 and nothing else
        (str(next(_codes)), "emv"),  # a wallet code sent as EMV
    ]:
        decision = await lane.auth.authorise(lane.request(text, kind=kind))
        assert (decision.approved, decision.reason) == (False, "invalid_code"), text
        assert decision.payment_id is None
    unknown = await lane.auth.authorise(lane.request("x", kind="cash"))
    assert unknown.reason == "unsupported_kind"
    assert lane.acquirer.payments() == []
    assert await lane.resolver.open_payments() == []


async def test_no_budget_left_means_no_payment(lane: Lane) -> None:
    req = lane.request()
    late = AuthRequest(**{**req.__dict__, "deadline": lane.clock() - 0.001})
    decision = await lane.auth.authorise(late)
    assert (decision.approved, decision.reason, decision.payment_id) == (False, "timeout", None)
    assert lane.acquirer.payments() == []


async def test_garbage_answer_is_an_acquirer_error(tmp_path: Path) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", garbage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    fake = _UrlOnly(f"http://127.0.0.1:{port}")
    try:
        async for lane in make_lane(tmp_path, fake):  # type: ignore[arg-type]
            decision = await lane.auth.authorise(lane.request())
            assert (decision.approved, decision.reason) == (False, "acquirer_error")
            row = await lane.resolver.get(decision.payment_id or "")
            assert row is not None and row.state in (S.INTENT, S.GIVEN_UP)  # still to resolve
    finally:
        await runner.cleanup()


@dataclass
class _UrlOnly:
    url: str
