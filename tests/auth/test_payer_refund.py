"""A wallet's payer and a partial refund, against each network's fake over HTTP (our acquirer
API, Alipay, WeChat Pay): the account of a paid wallet code is the payer the network names
(the same for every one-time code of one wallet, keyed), and a payment settled owing part of
it back is refunded once, durably (a restarted lane still makes it), retried while the network
refuses, under the `refund_failing` alarm that clears by itself."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from test_refund_processing import Alarms, paid, resolving

from lane.auth.acquirer import AcquirerClient, RefundRefused, RefundRequest
from lane.auth.authoriser import Authoriser, AuthRequest
from lane.auth.resolver import ResolutionStore, Resolver, refund_id_for
from lane.core.backoff import Backoff
from sim.acquirer import AcquirerServer, running_acquirer
from sim.acquirer_faults import Outage

KEY = b"lane-secret-for-tests-0123456789"  # as the auth tests' net_lane keys accounts
PREFIX = {"acquirer": "28", "alipay": "28", "wechatpay": "13"}


@contextlib.asynccontextmanager
async def our_acquirer() -> AsyncIterator[tuple[AcquirerServer, AcquirerClient]]:
    async with running_acquirer(seed=5) as fake, AcquirerClient(fake.url) as client:
        yield fake, client


@pytest.fixture(params=["acquirer", "alipay", "wechatpay"])
def network(
    request: Any, alipay_gateway: Any, wechat_gateway: Any
) -> tuple[str, Callable[..., Any]]:
    maker = {"acquirer": our_acquirer, "alipay": alipay_gateway, "wechatpay": wechat_gateway}
    return request.param, maker[request.param]


async def pay(lane: Any, code: str, amount: int = 450) -> Any:
    decision = await lane.auth.authorise(lane.request(code, amount, budget_s=2.0))
    assert decision.approved, decision
    return decision


async def test_one_wallet_is_one_payer_and_a_partial_refund_is_made_once(
    network: tuple[str, Callable[..., Any]], net_lane: Any
) -> None:
    name, gateway = network
    async with gateway() as (fake, client), net_lane(client, fake) as lane:
        issue = fake.ledger.issue_code
        first = await pay(lane, issue("wallet-1", PREFIX[name]))
        second = await pay(lane, issue("wallet-1", PREFIX[name]))
        other = await pay(lane, issue("wallet-2", PREFIX[name]))
        assert first.account_ref == second.account_ref != other.account_ref
        assert first.account_ref.split(":")[0] in ("alipay", "wechat")  # the code's scheme

        # Settled owing 150 of 450 back: the resolver refunds it through the network.
        await lane.resolver.settle(first.payment_id, 150)
        # WeChat Pay's order number is the payment id without `pay_`.
        order = first.payment_id.removeprefix("pay_") if name == "wechatpay" else first.payment_id
        payment = fake.payment(order)
        assert payment is not None
        await eventually(lambda: payment.refunded == 150, what="the refund made")
        row = await lane.resolver.get(first.payment_id)
        assert row is not None and row.refunded_ms is not None and not row.refund_owed
        # Asked again under the same refund id (a retry after a lost answer): refunded once.
        again = RefundRequest(first.payment_id, refund_id_for(first.payment_id), 150, 450, "CNY")
        await client.refund(again, 2.0)
        assert payment.refunded == 150
        # More than was paid in all is the network's no, never an overdraft.
        await client.refund(RefundRequest(second.payment_id, "refund-2", 300, 450, "CNY"), 2.0)
        with pytest.raises(RefundRefused):
            await client.refund(RefundRequest(second.payment_id, "refund-3", 300, 450, "CNY"), 2.0)


async def test_a_refused_refund_is_retried_alarmed_and_survives_a_restart(tmp_path: Path) -> None:
    alarms = Alarms()
    store = tmp_path / "payments.db"
    async with our_acquirer() as (fake, client):
        fake.update_faults(refund_refused="seller_balance_not_enough")
        first = Resolver(ResolutionStore(store), client, backoff=Backoff(0.01, 0.05),
                         request_timeout_s=0.5, alarm=alarms)  # fmt: skip
        await first.start()
        auth = Authoriser("p07/l03", client, first, None, None, time.monotonic, time.time,  # type: ignore[arg-type]
                          account_key=KEY)  # fmt: skip
        code = fake.ledger.issue_code("wallet-3")
        request = AuthRequest(f"auth-{uuid.uuid4().hex[:8]}", "p07/l03", code, "payment_code",
                              800, "CNY", time.monotonic() + 2.0)  # fmt: skip
        decision = await auth.authorise(request)
        assert decision.approved and decision.payment_id is not None
        await auth.settle(request.auth_id, refund_minor=500)
        await eventually(lambda: "refund_failing" in alarms, what="the alarm")
        assert "500 CNY" in alarms["refund_failing"]
        assert "seller_balance_not_enough" in alarms["refund_failing"]
        tries = fake.refund_requests
        await eventually(lambda: fake.refund_requests > tries + 2, what="retried")
        await first.stop()  # the lane stops with the refund still owed

        fake.update_faults(refund_refused=None)
        restarted = Resolver(ResolutionStore(store), client, backoff=Backoff(0.01, 0.05),
                             request_timeout_s=0.5, alarm=alarms)  # fmt: skip
        await restarted.start()
        payment = fake.payment(decision.payment_id)
        assert payment is not None
        await eventually(lambda: payment.refunded == 500, what="refunded after the restart")
        await eventually(lambda: "refund_failing" not in alarms, what="the alarm cleared")
        await restarted.stop()


async def test_a_refund_owed_before_the_record_is_made_after_a_crash_before_the_settle(
    tmp_path: Path,
) -> None:
    """The runner writes the refund owed with the charged payment before the record: a lane
    dying after its record is durable and before the settle is settled by recovery (the
    record says it was taken) with the refund; one dying before its record is reversed whole,
    nothing refunded on top."""
    store = tmp_path / "payments.db"
    fast = Backoff(0.01, 0.05)
    async with our_acquirer() as (fake, client):
        first = Resolver(ResolutionStore(store), client, backoff=fast, request_timeout_s=0.5)
        await first.start()
        auth = Authoriser("p07/l03", client, first, None, None, time.monotonic, time.time,  # type: ignore[arg-type]
                          account_key=KEY)  # fmt: skip
        paid = []
        for wallet in ("wallet-4", "wallet-5"):
            request = AuthRequest(f"auth-{wallet}", "p07/l03", fake.ledger.issue_code(wallet),
                                  "payment_code", 800, "CNY", time.monotonic() + 2.0)  # fmt: skip
            decision = await auth.authorise(request)
            assert decision.approved and decision.payment_id is not None
            await auth.owe_refund(request.auth_id, 500)
            paid.append(decision.payment_id)
        await first.stop()  # the lane dies: neither is settled

        recorded, unrecorded = paid

        async def is_recorded(payment_id: str) -> bool:
            return payment_id == recorded

        restarted = Resolver(ResolutionStore(store), client, backoff=fast,
                             request_timeout_s=0.5, is_recorded=is_recorded)  # fmt: skip
        await restarted.start()
        kept, gone = fake.payment(recorded), fake.payment(unrecorded)
        assert kept is not None and gone is not None
        await eventually(lambda: kept.refunded == 500, what="the recorded one refunded")
        await eventually(lambda: gone.status == "REVERSED", what="the unrecorded one reversed")
        assert gone.refunded == 0
        await restarted.stop()


async def test_the_refund_alarm_says_how_many_as_that_changes(tmp_path: Path) -> None:
    """A second refund refused while the first still is: the alarm's text (health, console)
    says 2, not the 1 it said when it was raised."""
    alarms = Alarms()
    async with (
        our_acquirer() as (fake, client),
        resolving(tmp_path / "payments.db", client, alarms) as resolver,
    ):
        fake.update_faults(refund_refused="seller_balance_not_enough")
        first = await paid(resolver, client, fake.ledger.issue_code("wallet-6"), 800)
        second = await paid(resolver, client, fake.ledger.issue_code("wallet-7"), 800)
        await resolver.settle(first, 500)
        await eventually(lambda: alarms.get("refund_failing", "").startswith("1 refund(s)"),
                         what="one refund failing")  # fmt: skip
        await resolver.settle(second, 300)
        await eventually(lambda: alarms.get("refund_failing", "").startswith("2 refund(s)"),
                         what="the text says two")  # fmt: skip
        assert "500 CNY" in alarms["refund_failing"]  # the oldest's
        fake.update_faults(refund_refused=None)
        await eventually(lambda: "refund_failing" not in alarms, what="the alarm cleared")


async def test_a_network_down_alarm_counts_every_refund_owed_not_the_one_tried(
    tmp_path: Path,
) -> None:
    """The network refusing connections stops a pass at its first refund; the alarm still
    counts the three owed (from the store), and clears once the network takes them all."""
    alarms = Alarms()
    async with (
        our_acquirer() as (fake, client),
        resolving(tmp_path / "payments.db", client, alarms) as resolver,
    ):
        wallets = ("wallet-8", "wallet-9", "wallet-10")
        owed = [await paid(resolver, client, fake.ledger.issue_code(w), 800) for w in wallets]
        fake.update_faults(outages=(Outage("refuse"),))
        for payment_id in owed:
            await resolver.settle(payment_id, 500)
        await eventually(lambda: alarms.get("refund_failing", "").startswith("3 refund(s)"),
                         what="the alarm counts all three")  # fmt: skip
        fake.update_faults(outages=())
        await eventually(lambda: "refund_failing" not in alarms, what="the alarm cleared")
        for payment_id in owed:
            payment = fake.payment(payment_id)
            assert payment is not None and payment.refunded == 500
