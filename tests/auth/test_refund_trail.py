"""How a refund ended reaches the lane's record queue as a `refund` record, against each
network's fake over HTTP: made by the network, ended unpaid and then made (by the network or by
hand), each end once, whatever restart falls between the network's answer and the record."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from test_payer_refund import PREFIX, network, our_acquirer  # noqa: F401 - the fixture
from test_refund_processing import Alarms, paid

from lane.auth.acquirer import Acquirer
from lane.auth.refund_ends import RefundEnd, RefundEndKind, refund_draft, refund_record_id
from lane.auth.resolution_store import SCHEMA_VERSION, PaymentState
from lane.auth.resolver import PaymentRow, ResolutionStore, Resolver, refund_id_for
from lane.cli import main as lane_cli
from lane.core.backoff import Backoff
from lane.core.names import RecordKind
from lane.refund_records import RefundRecords
from uplink.messages import Held, digest
from uplink.queue import RecordQueue
from uplink.queue_thread import QueueThread
from uplink.records import Record

FAST = Backoff(0.01, 0.05)
LANE = "p07/l03"


@contextlib.asynccontextmanager
async def trail(
    payments: Path, queue_path: Path, client: Acquirer, alarms: Alarms, max_bytes: int = 10**7
) -> AsyncIterator[tuple[Resolver, QueueThread]]:
    """A resolver whose refund ends go into a real queue file, as the daemon wires it."""
    queue = await QueueThread.open(lambda: RecordQueue(queue_path, LANE, max_bytes))
    woken: list[int] = []
    resolver = Resolver(ResolutionStore(payments), client, backoff=FAST, request_timeout_s=0.5,
                        alarm=alarms, refund_query=FAST,
                        record_end=RefundRecords(queue, lambda: woken.append(1)))  # fmt: skip
    await resolver.start()
    try:
        yield resolver, queue
    finally:
        await resolver.stop()
        await queue.aclose()


async def refund_records(queue: QueueThread) -> list[Record]:
    return [
        record
        for _, data in await queue.batch(0, 1000)
        if (record := Record.decode(data)).draft.kind is RecordKind.REFUND
    ]


async def row_when(resolver: Resolver, payment_id: str, recorded: str) -> PaymentRow:
    async def check() -> PaymentRow | None:
        row = await resolver.get(payment_id)
        return row if row is not None and row.refund_recorded == recorded else None

    return await eventually(check, what=f"{payment_id} recorded {recorded}")


async def records_when(queue: QueueThread, count: int) -> list[Record]:
    async def check() -> list[Record] | None:
        found = await refund_records(queue)
        return found if len(found) >= count else None

    return await eventually(check, what=f"{count} refund record(s)")


async def test_a_refund_made_by_each_network_is_one_record_in_the_queue(
    tmp_path: Path,
    network: tuple[str, Callable[..., Any]],  # noqa: F811 - the fixture imported above
) -> None:
    name, gateway = network
    alarms = Alarms()
    async with (
        gateway() as (fake, client),
        trail(tmp_path / "payments.sqlite3", tmp_path / "queue.sqlite3", client, alarms) as (
            resolver,
            queue,
        ),
    ):
        if name == "wechatpay":
            fake.refund_ends = "SUCCESS"  # PROCESSING first, then SUCCESS when asked about
        payment_id = await paid(resolver, client, fake.ledger.issue_code("w9", PREFIX[name]))
        await resolver.settle(payment_id, 150)
        (record,) = await records_when(queue, 1)
        number = refund_id_for(payment_id)
        d = record.draft
        word = {"acquirer": "MADE", "alipay": "fund_change Y", "wechatpay": "SUCCESS"}[name]
        assert record.record_id == refund_record_id(number, f"made:{word}")
        assert (record.lane, d.payment_id, d.amount_minor, d.currency) == (
            LANE, payment_id, 150, "CNY"
        )  # fmt: skip
        assert d.flags == ("refund:made", f"refund_id:{number}", f"network:{name}",
                           f"word:{word}")  # fmt: skip
        assert str(d.auth.result) == "none"  # never taken for a payment made
        row = await resolver.get(payment_id)
        assert row is not None and row.refund_recorded == f"made:{word}"
        assert alarms.get("refund_unrecorded") is None


@pytest.mark.parametrize("end", ["ABNORMAL", "CLOSED"])
async def test_a_refund_ended_unpaid_is_a_record_and_so_is_its_making_after(
    tmp_path: Path, wechat_gateway: Callable[..., Any], end: str
) -> None:
    """Unpaid, then made: two records. ABNORMAL turns SUCCESS once refunded by hand on the
    merchant platform (the network's word); CLOSED stays closed and the operator says it was
    made (`lane refunds --made`, another process: the lane reads its file again)."""
    alarms = Alarms()
    config = tmp_path / "lane.toml"
    config.write_text(f'[lane]\nid = "{LANE}"\ndata_dir = "data"\n')
    data = tmp_path / "data"
    data.mkdir()
    async with (
        wechat_gateway() as (fake, client),
        trail(data / "payments.sqlite3", data / "queue.sqlite3", client, alarms) as (
            resolver,
            queue,
        ),
    ):
        fake.refund_ends = end
        payment_id = await paid(resolver, client, fake.ledger.issue_code("w8", "13"))
        await resolver.settle(payment_id, 150)
        (unpaid,) = await records_when(queue, 1)
        number = refund_id_for(payment_id)
        assert unpaid.record_id == refund_record_id(number, f"unpaid:{end}")
        assert unpaid.draft.flags[0] == "refund:unpaid" and f"word:{end}" in unpaid.draft.flags
        if end == "ABNORMAL":
            fake.refund_by_hand(number)
            made_as = ("refund:made", "word:SUCCESS")
        else:
            assert lane_cli(["refunds", "--config", str(config), "--made", payment_id]) == 0
            made_as = ("refund:made_by_hand", "word:by_hand")
        first, made = await records_when(queue, 2)
        assert first == unpaid
        assert (made.draft.flags[0], made.draft.flags[3]) == made_as
        assert made.draft.payment_id == payment_id and made.draft.amount_minor == 150


async def test_a_restart_between_the_answer_and_the_record_records_it_once(
    tmp_path: Path, wechat_gateway: Callable[..., Any]
) -> None:
    """The first run has the network's answer but its queue refuses the record (a bound too
    small: full): `refund_unrecorded` says so and the end stays in the payments file. The
    second run appends the record, and dies before noting it (the state it leaves: the
    record in the queue, the end not marked). The third appends nothing more and marks it."""
    alarms = Alarms()
    payments, queue_path = tmp_path / "payments.sqlite3", tmp_path / "queue.sqlite3"
    async with wechat_gateway() as (fake, client):
        fake.refund_ends = "SUCCESS"
        async with trail(payments, queue_path, client, alarms, max_bytes=1) as (first, queue):
            payment_id = await paid(first, client, fake.ledger.issue_code("w7", "13"))
            await first.settle(payment_id, 120)
            await eventually(lambda: "refund_unrecorded" in alarms, what="the alarm")
            assert payment_id in alarms["refund_unrecorded"]
            assert await refund_records(queue) == []
        store = ResolutionStore(payments)
        (row,) = store.ends_unrecorded()
        assert (row.payment_id, row.refund_end, row.refund_recorded) == (
            payment_id, "made:SUCCESS", None
        )  # fmt: skip
        assert store.prune(before_ms=1 << 62) == 0  # kept until recorded, however old
        store.close()

        # The second run's record is on disk; it died before `end_recorded`.
        second = await QueueThread.open(lambda: RecordQueue(queue_path, LANE, 10**7))
        end = RefundRecords(second, lambda: None)
        await end(RefundEnd(payment_id, refund_id_for(payment_id), RefundEndKind.MADE,
                            "SUCCESS", 120, "CNY", "payment_code", "wechatpay"))  # fmt: skip
        await second.aclose()

        async with trail(payments, queue_path, client, alarms) as (third, queue):
            await eventually(lambda: "refund_unrecorded" not in alarms, what="cleared")
            marked = await third.get(payment_id)
            assert marked is not None and marked.refund_recorded == "made:SUCCESS"
            (record,) = await refund_records(queue)
            assert record.record_id == refund_record_id(refund_id_for(payment_id), "made:SUCCESS")
            assert fake.refund_requests == 1


async def test_a_queue_appends_a_keyed_record_once_even_after_it_was_forwarded(
    tmp_path: Path,
) -> None:
    end = RefundEnd("pay_1", "pay_1-r1", RefundEndKind.UNPAID, "CLOSED", 90, "CNY",
                    "payment_code", "wechatpay")  # fmt: skip
    rid = refund_record_id(end.refund_id, end.key)
    with RecordQueue(tmp_path / "queue.sqlite3", LANE, 10**7) as queue:
        record = queue.append_once(refund_draft(end), rid)
        assert record is not None and record.record_id == rid
        assert queue.append_once(refund_draft(end), rid) is None
        queue.ack([Held(record.seq, rid, digest(record.encode()))])  # forwarded, deleted
        assert queue.batch(0, 10) == []
        assert queue.append_once(refund_draft(end), rid) is None  # still known: not again
    with RecordQueue(tmp_path / "queue.sqlite3", LANE, 10**7) as queue:
        assert queue.append_once(refund_draft(end), rid) is None
        assert queue.last_seq() == 1


def test_refund_ends_reached_before_the_upgrade_are_recorded_after_it(tmp_path: Path) -> None:
    """A payments file of schema 4 with a refund made and one ended unpaid: after the upgrade
    both ends are to be recorded (the word of the made one was not kept)."""
    path = tmp_path / "payments.sqlite3"
    store = ResolutionStore(path)
    for pid in ("made", "unpaid", "owed"):
        store.begin(pid, auth_id=pid, lane=LANE, amount_minor=450, currency="CNY",
                    method="payment_code", network="wechatpay", now_ms=1000)  # fmt: skip
        store.move(pid, PaymentState.CHARGED, 1100)
        store.move(pid, PaymentState.SETTLED, 1200, refund_minor=150)
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP INDEX payments_refund_ends")
    db.execute("ALTER TABLE payments DROP COLUMN refund_end")
    db.execute("ALTER TABLE payments DROP COLUMN refund_recorded")
    db.execute("UPDATE payments SET refunded_ms = 2000 WHERE payment_id = 'made'")
    db.execute("UPDATE payments SET refund_failed = 'ABNORMAL' WHERE payment_id = 'unpaid'")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION - 1}")
    db.close()
    store = ResolutionStore(path)
    assert [(r.payment_id, r.refund_end) for r in store.ends_unrecorded()] == [
        ("made", "made:"), ("unpaid", "unpaid:ABNORMAL")
    ]  # fmt: skip
    store.close()


# A lane's resolver in a process of its own, against our acquirer's fake at argv[3], that is
# killed (SIGKILL: no close, nothing flushed) either before the refund's record is appended
# (`before`) or right after, before the payments file notes it (`after`).
KILLED_AT_THE_RECORD = """
import asyncio, os, signal, sys
from lane.auth.acquirer import AcquirerClient
from lane.core.backoff import Backoff
from lane.auth.resolver import ResolutionStore, Resolver
from lane.refund_records import RefundRecords
from uplink.queue import RecordQueue
from uplink.queue_thread import QueueThread

payments, queue_path, url, when = sys.argv[1:5]

async def main():
    queue = await QueueThread.open(lambda: RecordQueue(queue_path, "p07/l03", 10**7))
    records = RefundRecords(queue, lambda: None)

    async def record_end(end):
        if when == "after":
            await records(end)
        os.kill(os.getpid(), signal.SIGKILL)

    async with AcquirerClient(url) as client:
        resolver = Resolver(ResolutionStore(payments), client, backoff=Backoff(0.01, 0.05),
                            request_timeout_s=0.5, record_end=record_end)
        await resolver.start()
        await asyncio.sleep(30)

asyncio.run(main())
"""


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_lane_killed_between_the_answer_and_the_record_records_it_once(
    tmp_path: Path, when: str
) -> None:
    """The refund is made by the network (our acquirer's fake over HTTP) and the lane process
    is killed before its record is in the queue, or after it is but before the payments file
    says so. The next run writes the one record: none lost, none twice."""
    payments, queue_path = tmp_path / "payments.sqlite3", tmp_path / "queue.sqlite3"
    alarms = Alarms()
    async with our_acquirer() as (fake, client):
        owing = Resolver(ResolutionStore(payments), client)  # not started: nothing refunded
        payment_id = await paid(owing, client, fake.ledger.issue_code("w6", "28"))
        await owing.settle(payment_id, 130)
        await owing.stop()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILLED_AT_THE_RECORD, str(payments), str(queue_path),
            fake.url, when, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(child.communicate(), 30)
        assert child.returncode == -9, err.decode()
        row = ResolutionStore(payments).get(payment_id)
        assert row is not None and row.refunded_ms is not None  # the network's answer is kept
        assert (row.refund_end, row.refund_recorded) == ("made:MADE", None)
        async with trail(payments, queue_path, client, alarms) as (restarted, queue):
            marked = await row_when(restarted, payment_id, "made:MADE")
            assert marked.refund_recorded == "made:MADE"
            (record,) = await refund_records(queue)
            assert record.record_id == refund_record_id(refund_id_for(payment_id), "made:MADE")
            assert record.draft.amount_minor == 130
        assert fake.refund_requests == 1  # refunded once, recorded once
