"""A refund the network takes without finishing it is followed to its end over HTTP: WeChat
Pay's PROCESSING is asked about by its number (`GET /v3/refund/domestic/refunds/{no}`) until
SUCCESS, over a restart too; ABNORMAL or CLOSED stays owed under `refund_unpaid` and is never
asked anew under another number; Alipay's `fund_change` N is confirmed by
`alipay.trade.fastpay.refund.query` before the refund counts as made."""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from alarm_kit import Alarms
from polling import eventually

from lane.auth.acquirer import Acquirer, RefundRequest
from lane.auth.authoriser import Authoriser, AuthRequest
from lane.auth.resolver import PaymentRow, ResolutionStore, Resolver, refund_id_for
from lane.cli import main as lane_cli
from lane.core.backoff import Backoff

KEY = b"lane-secret-for-tests-0123456789"
FAST = Backoff(0.01, 0.05)


@contextlib.asynccontextmanager
async def resolving(
    store: Path,
    client: Acquirer,
    alarms: Alarms,
    refund_query: Backoff = FAST,
    wall: Callable[[], float] = time.time,
) -> AsyncIterator[Resolver]:
    resolver = Resolver(ResolutionStore(store), client, wall, backoff=FAST, request_timeout_s=0.5,
                        alarm=alarms, refund_query=refund_query)  # fmt: skip
    await resolver.start()
    try:
        yield resolver
    finally:
        await resolver.stop()


def lane_config(tmp_path: Path) -> Path:
    """The lane's own file, where `lane refunds --config` finds its payments file
    (`tmp_path/data/payments.sqlite3`)."""
    config = tmp_path / "lane.toml"
    config.write_text('[lane]\nid = "p07/l03"\ndata_dir = "data"\n')
    (tmp_path / "data").mkdir()
    return config


async def paid(resolver: Resolver, client: Acquirer, code: str, amount: int = 450) -> str:
    auth = Authoriser("p07/l03", client, resolver, None, None, time.monotonic, time.time,  # type: ignore[arg-type]
                      account_key=KEY)  # fmt: skip
    request = AuthRequest(f"auth-{uuid.uuid4().hex[:8]}", "p07/l03", code, "payment_code",
                          amount, "CNY", time.monotonic() + 2.0)  # fmt: skip
    decision = await auth.authorise(request)
    assert decision.approved and decision.payment_id is not None
    return decision.payment_id


async def row_when(
    resolver: Resolver, payment_id: str, holds: Callable[[PaymentRow], bool], what: str
) -> PaymentRow:
    async def check() -> PaymentRow | None:
        row = await resolver.get(payment_id)
        return row if row is not None and holds(row) else None

    return await eventually(check, what=what)


async def row_of(resolver: Resolver, payment_id: str) -> PaymentRow:
    row = await resolver.get(payment_id)
    assert row is not None
    return row


async def test_a_processing_refund_is_asked_about_until_success_and_made_once(
    tmp_path: Path, wechat_gateway: Callable[..., Any]
) -> None:
    alarms = Alarms()
    async with (
        wechat_gateway() as (fake, client),
        resolving(tmp_path / "payments.db", client, alarms) as resolver,
    ):
        fake.refund_ends = "SUCCESS"
        payment_id = await paid(resolver, client, fake.ledger.issue_code("w1", "13"))
        await resolver.settle(payment_id, 150)
        done = await row_when(resolver, payment_id, lambda r: r.refunded_ms is not None, "made")
        assert done.refund_sent_ms is not None  # it was PROCESSING first
        assert fake.refund_queries >= 2  # PROCESSING, then SUCCESS
        assert fake.refund_requests == 1  # one refund asked, never a second
        payment = fake.payment(payment_id.removeprefix("pay_"))
        assert payment is not None and payment.refunds == {refund_id_for(payment_id): 150}
        assert "refund_failing" not in alarms and "refund_unpaid" not in alarms


async def test_a_processing_refund_is_asked_about_again_after_the_wall_clock_steps_back(
    tmp_path: Path, wechat_gateway: Callable[..., Any]
) -> None:
    """The next query of a refund in the network's hands is timed on the monotonic clock: a
    wall clock stepped back (here an hour at every reading) once held it for as long."""
    steps = itertools.count()
    start = time.time()

    def wall() -> float:
        return start - 3600.0 * next(steps)

    async with (
        wechat_gateway() as (fake, client),
        resolving(tmp_path / "payments.db", client, Alarms(), wall=wall) as resolver,
    ):
        fake.refund_ends = "SUCCESS"
        payment_id = await paid(resolver, client, fake.ledger.issue_code("w9", "13"))
        await resolver.settle(payment_id, 150)
        done = await row_when(resolver, payment_id, lambda r: r.refunded_ms is not None, "made")
        assert done.refund_sent_ms is not None  # it was PROCESSING first, then asked about
        assert fake.refund_requests == 1


@pytest.mark.parametrize("end", ["ABNORMAL", "CLOSED"])
async def test_a_refund_ended_unpaid_is_alarmed_not_asked_anew_and_clears_when_made(
    tmp_path: Path, wechat_gateway: Callable[..., Any], end: str, capsys: Any
) -> None:
    alarms = Alarms()
    config = lane_config(tmp_path)
    async with (
        wechat_gateway() as (fake, client),
        resolving(tmp_path / "data" / "payments.sqlite3", client, alarms) as resolver,
    ):
        fake.refund_ends = end
        payment_id = await paid(resolver, client, fake.ledger.issue_code("w2", "13"))
        await resolver.settle(payment_id, 150)
        await eventually(lambda: "refund_unpaid" in alarms, what="the alarm")
        text = alarms["refund_unpaid"]
        assert f"150 CNY of {payment_id}" in text and end in text and "by hand" in text
        row = await row_of(resolver, payment_id)
        assert (row.refund_failed, row.refunded_ms) == (end, None) and row.refund_owed
        # Still asked about (the merchant may refund it by hand), never refunded anew.
        seen = fake.refund_queries
        await eventually(lambda: fake.refund_queries > seen + 2, what="asked about again")
        assert fake.refund_requests == 1
        number = refund_id_for(payment_id)
        assert "refund_failing" not in alarms
        # Only a refund ended unpaid can be marked made by hand: not one still processing.
        assert lane_cli(["refunds", "--config", str(config)]) == 0
        assert f"{payment_id} wechatpay {number} 150 CNY unpaid ({end})" in capsys.readouterr().out
        if end == "ABNORMAL":  # refunded by hand on the merchant platform: SUCCESS from now
            fake.refund_by_hand(number)
        else:  # CLOSED stays closed: the operator refunded outside the lane and says so
            assert lane_cli(["refunds", "--config", str(config), "--made", payment_id]) == 0
        await eventually(lambda: "refund_unpaid" not in alarms, what="the alarm cleared")
        row = await row_of(resolver, payment_id)
        assert row.refunded_ms is not None and row.refund_failed == end  # the trail stays
        assert fake.refund_requests == 1


async def test_refund_failing_clears_once_the_last_refund_owed_is_made_by_hand(
    tmp_path: Path, wechat_gateway: Callable[..., Any]
) -> None:
    """A refund ended unpaid (CLOSED) whose query then fails (the network answering 500s)
    raises `refund_failing`; the operator makes it by hand (`lane refunds --made`, another
    process) while the network still fails: nothing is owed any more, so both alarms clear."""
    alarms = Alarms()
    config = lane_config(tmp_path)
    async with (
        wechat_gateway() as (fake, client),
        resolving(tmp_path / "data" / "payments.sqlite3", client, alarms) as resolver,
    ):
        fake.refund_ends = "CLOSED"
        payment_id = await paid(resolver, client, fake.ledger.issue_code("w5", "13"))
        await resolver.settle(payment_id, 150)
        await eventually(lambda: "refund_unpaid" in alarms, what="ended unpaid")
        fake.update_faults(error_rate=1.0)
        await eventually(lambda: "refund_failing" in alarms, what="its query failing")
        assert lane_cli(["refunds", "--config", str(config), "--made", payment_id]) == 0
        await eventually(lambda: "refund_unpaid" not in alarms, what="refund_unpaid cleared")
        await eventually(lambda: "refund_failing" not in alarms, what="refund_failing cleared")


async def test_a_restart_while_a_refund_is_processing_asks_about_it_again(
    tmp_path: Path, wechat_gateway: Callable[..., Any]
) -> None:
    alarms = Alarms()
    config = tmp_path / "lane.toml"
    config.write_text('[lane]\nid = "p07/l03"\ndata_dir = "data"\n')
    (tmp_path / "data").mkdir()
    store = tmp_path / "data" / "payments.sqlite3"
    async with wechat_gateway() as (fake, client):
        fake.refund_ends = "SUCCESS"
        # The first run would ask about it in an hour: it stops before.
        async with resolving(store, client, alarms, Backoff(3600.0, 3600.0)) as first:
            payment_id = await paid(first, client, fake.ledger.issue_code("w3", "13"))
            await first.settle(payment_id, 200)
            await row_when(first, payment_id, lambda r: r.refund_sent_ms is not None, "taken")
        assert fake.refund_queries == 0
        # Still in WeChat Pay's hands: not the operator's to mark made (it could pay twice).
        assert lane_cli(["refunds", "--config", str(config), "--made", payment_id]) == 1
        async with resolving(store, client, alarms) as restarted:
            done = await row_when(restarted, payment_id, lambda r: r.refunded_ms is not None, "")
            assert done.refund_minor == 200
        assert fake.refund_requests == 1  # asked about, not asked anew
        assert fake.refund_queries >= 2


async def test_alipay_fund_change_n_is_confirmed_by_the_refund_query(
    tmp_path: Path, alipay_gateway: Callable[..., Any]
) -> None:
    alarms = Alarms()
    async with (
        alipay_gateway() as (fake, client),
        resolving(tmp_path / "payments.db", client, alarms) as resolver,
    ):
        payment_id = await paid(resolver, client, fake.ledger.issue_code("w4", "28"))
        # A refund made under its number whose answer was lost: the lane's ask is a repeat,
        # answered fund_change N (no money moved now), and only the query says it was made.
        ask = RefundRequest(payment_id, refund_id_for(payment_id), 150, 450, "CNY")
        await client.refund(ask, 2.0)
        await resolver.settle(payment_id, 150)
        done = await row_when(resolver, payment_id, lambda r: r.refunded_ms is not None, "made")
        assert done.refund_sent_ms is not None  # fund_change N: asked about, then made
        payment = fake.payment(payment_id)
        assert payment is not None and payment.refunded == 150
