"""Daily reconciliation: the matching rules (tables and properties), the bill formats (the fakes'
writers against the parsers), and `lane reconcile` end to end against both fakes and a real
SQLite back-office store."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from polling import eventually

from lane.auth import bills
from lane.auth.acquirer import PayRequest
from lane.auth.alipay import AlipayClient
from lane.auth.alipay_wire import beijing_time
from lane.auth.reconcile import Finding, RecordedPayment, reconcile
from lane.auth.refund_ends import RefundEnd, RefundEndKind, refund_draft
from lane.auth.wechatpay import WeChatPayClient
from lane.reconcile_cli import day_of, fetch_wechat, load_records, main
from sim.acquirer import BillFileFault
from sim.alipay_fake import AlipayFake
from sim.network_bills import BillRow, alipay_bill_zip, wechat_bill_text
from sim.wechatpay_fake import WeChatPayFake
from uplink.messages import QueueIdentity
from uplink.pg import PostgresIngestStore
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord

Keys = dict[str, Any]  # name -> conftest.KeyPair
DAY = day_of("2026-11-30")
NOON_US = DAY.start_us + 12 * 3600 * 1_000_000
ROUTES = {"alipay": "alipay", "wechat": "wechatpay", "unionpay": "acquirer", "emv": "acquirer"}


def rec(
    pid: str,
    amount: int = 450,
    result: str = "approved",
    kind: str = "alipay",
    *,
    ts_us: int = NOON_US,
    lane: str = "p07/l03",
) -> RecordedPayment:
    return RecordedPayment(lane, f"r-{pid}", pid, amount, result, f"{kind}:00ff", ts_us)


def order(
    pid: str, charged: int = 450, refunded: int = 0, network: str = "alipay"
) -> bills.BilledOrder:
    otn = pid.removeprefix("pay_") if network == "wechatpay" else pid
    return bills.BilledOrder(network, otn, f"t-{pid}", "p07/l03", charged, refunded)


# -- the rules (pure) --------------------------------------------------------------------------


def test_findings_table() -> None:
    records = [
        rec("pay_ok"),
        rec("pay_wx", kind="wechat"),
        rec("pay_nocharge"),
        rec("pay_mismatch", amount=500),
        rec("pay_declined", result="declined"),
        rec("pay_deferred", result="deferred"),
        rec("pay_union", kind="unionpay"),  # our acquirer's: on no network bill
        rec("pay_yesterday", ts_us=DAY.start_us - 3600 * 1_000_000),
        rec("pay_refunded_after", amount=450),
    ]
    alipay = [
        order("pay_ok"),
        order("pay_mismatch"),
        order("pay_declined"),  # charged though the record says declined: refund
        order("pay_stray"),  # charged, no record at all: refund
        order("pay_reversed", refunded=450),  # the resolver's reversal: fine
        order("pay_refunded_after", refunded=450),
    ]
    wechat = [order("pay_wx", network="wechatpay")]
    reports = reconcile(records, {"alipay": alipay, "wechatpay": wechat}, ROUTES, DAY)
    report = reports["p07/l03"]
    assert (report.matched, report.matched_minor) == (2, 900)
    assert (report.refunded, report.deferred) == (1, 1)
    found = {(d.finding, d.record_id or d.out_trade_no) for d in report.discrepancies}
    assert found == {
        (Finding.APPROVED_WITHOUT_CHARGE, "r-pay_nocharge"),
        (Finding.APPROVED_WITHOUT_CHARGE, "r-pay_refunded_after"),
        (Finding.AMOUNT_MISMATCH, "r-pay_mismatch"),
        (Finding.CHARGED_WITHOUT_RECORD, "r-pay_declined"),
        (Finding.CHARGED_WITHOUT_RECORD, "pay_stray"),
    }


def test_a_charge_just_before_midnight_matches_a_record_just_after() -> None:
    late = rec("pay_late", ts_us=DAY.end_us + 60 * 1_000_000)  # recorded at 00:01 next day
    report = reconcile([late], {"alipay": [order("pay_late")]}, ROUTES, DAY)["p07/l03"]
    assert (report.matched, report.discrepancies) == (1, [])


def test_each_lane_gets_its_own_report() -> None:
    records = [rec("pay_a", lane="p07/l01"), rec("pay_b", lane="p07/l02")]
    stray = bills.BilledOrder("alipay", "pay_c", "t", "p07/l09", 100, 0)
    reports = reconcile(records, {"alipay": [order("pay_a"), stray]}, ROUTES, DAY)
    assert list(reports) == ["p07/l01", "p07/l02", "p07/l09"]
    assert reports["p07/l02"].count(Finding.APPROVED_WITHOUT_CHARGE) == 1
    assert reports["p07/l09"].count(Finding.CHARGED_WITHOUT_RECORD) == 1


@given(st.lists(st.integers(min_value=1, max_value=10**7), max_size=30), st.data())
def test_records_and_their_charges_always_match(amounts: list[int], data: st.DataObject) -> None:
    pids = [f"pay_{i:032x}" for i in range(len(amounts))]
    records = [rec(p, a, kind="wechat") for p, a in zip(pids, amounts, strict=True)]
    orders = [order(p, a, network="wechatpay") for p, a in zip(pids, amounts, strict=True)]
    clean = reconcile(records, {"wechatpay": orders}, ROUTES, DAY)
    assert all(not r.discrepancies for r in clean.values())
    assert sum(r.matched_minor for r in clean.values()) == sum(amounts)
    if pids:  # one changed amount: exactly one mismatch
        i = data.draw(st.integers(0, len(pids) - 1))
        orders[i] = order(pids[i], amounts[i] + 1, network="wechatpay")
        found = [
            d
            for r in reconcile(records, {"wechatpay": orders}, ROUTES, DAY).values()
            for d in r.discrepancies
        ]
        assert [d.finding for d in found] == [Finding.AMOUNT_MISMATCH]


# -- the bill formats --------------------------------------------------------------------------

ROWS = [
    BillRow("pay_" + "a" * 32, "2026113022001", "p07/l03", 450, 1796000000.0),
    BillRow("pay_" + "b" * 32, "2026113022002", "p07/l04", 1, 1796000100.0, refunded=True),
    BillRow("pay_" + "c" * 32, "2026113022003", "p07/l03", 123456789, 1796000200.0),
]


def test_alipay_bill_round_trip() -> None:
    parsed = bills.parse_alipay(bills.alipay_csv_from_zip(alipay_bill_zip("2026-11-30", ROWS)))
    assert {o.out_trade_no: (o.net_minor, o.refunded_minor, o.lane) for o in parsed.values()} == {
        r.out_trade_no: (
            0 if r.refunded else r.amount_minor,
            r.amount_minor if r.refunded else 0,
            r.lane,
        )
        for r in ROWS
    }


def test_wechat_bill_round_trip() -> None:
    parsed = bills.parse_wechat(wechat_bill_text("1900000100", "wx1", ROWS))
    assert {o.out_trade_no: (o.charged_minor, o.refunded_minor) for o in parsed.values()} == {
        r.out_trade_no: (r.amount_minor, r.amount_minor if r.refunded else 0) for r in ROWS
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("hello", "line 1: expected the column header"),
        ("交易时间,商户订单号\n`x", r"line 2: 1 fields"),
        ("", "no table"),
        (
            "交易时间,微信订单号,商户订单号,交易状态,订单金额\n`t,`w,`o,`SUCCESS,`4.5",
            r"line 2: 订单金额: not an amount",
        ),
        ("交易时间,微信订单号,商户订单号,交易状态,订单金额\n`t,`w,`o,`ODD,`4.50", "ODD"),
    ],
)
def test_bad_wechat_bills(text: str, match: str) -> None:
    with pytest.raises(bills.BillError, match=match):
        bills.parse_wechat(text)


def test_not_a_zip() -> None:
    with pytest.raises(bills.BillError, match="not an Alipay bill zip"):
        bills.alipay_csv_from_zip(b"PK?")


# -- lane reconcile, end to end ----------------------------------------------------------------


def ingest_record(r: Record) -> IngestRecord:
    return IngestRecord.of(r, r.encode())


def write_store(path: Path, records: list[Record]) -> None:
    store = SqliteIngestStore(path)
    try:
        by_lane: dict[str, list[IngestRecord]] = {}
        for r in records:
            by_lane.setdefault(r.lane, []).append(ingest_record(r))
        for lane, batch in by_lane.items():
            store.store_batch(lane, QueueIdentity("test"), batch, int(time.time() * 1e6))
    finally:
        store.close()


def record(seq: int, pid: str, amount: int, ref: str, result: str = "approved") -> Record:
    draft = RecordDraft(
        "toll", f"v{seq}", 1, amount, "CNY", "payment_code", ref, AuthInfo(result), payment_id=pid
    )
    return Record(f"rec-{seq}", "p07/l03", seq, int(time.time() * 1e6), draft)


def write_config(
    tmp_path: Path, keys: Keys, ids: dict[str, str], ali: AlipayFake, wx: WeChatPayFake
) -> Path:
    """A `--config` routing Alipay and WeChat Pay codes to the two fakes."""
    cfg = tmp_path / "lane.toml"
    merchant_key, _ = keys["merchant"].write(tmp_path, "merchant")
    _, ali_pub = keys["alipay"].write(tmp_path, "alipay")
    _, wx_pub = keys["wechat"].write(tmp_path, "wechat")
    tables = {
        "auth.routes": {"alipay": "alipay", "wechat": "wechatpay"},
        "auth.alipay": {
            "gateway_url": ali.gateway_url,
            "app_id": ids["app_id"],
            "private_key_file": merchant_key,
            "alipay_public_key_file": ali_pub,
        },
        "auth.wechatpay": {
            "base_url": wx.url,
            **{k: ids[k] for k in ("mchid", "appid", "serial_no", "platform_serial")},
            "private_key_file": merchant_key,
            "platform_public_key_file": wx_pub,
        },
    }
    cfg.write_text(
        "".join(
            f"[{name}]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items())
            for name, table in tables.items()
        )
    )
    return cfg


async def test_lane_reconcile_against_both_fakes(
    tmp_path: Path,
    *,
    network_keys: Keys,
    alipay_gateway: Any,
    wechat_gateway: Any,
    network_ids: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys, ids = network_keys, network_ids
    async with alipay_gateway() as (ali, alic), wechat_gateway() as (wx, wxc):
        paid = [("pay_" + f"{i:032x}", c) for i, c in ((1, alic), (2, alic), (3, wxc), (4, wxc))]
        for n, (pid, client) in enumerate(paid):
            code = f"28{n:016d}" if client is alic else f"13{n:016d}"
            assert (
                await client.pay(PayRequest(pid, code, 450, "CNY", "p07/l03"), 2.0)
            ).acquirer_ref
        records = [
            record(1, paid[0][0], 450, "alipay:01"),  # matched
            record(2, paid[1][0], 500, "alipay:02"),  # amount mismatch
            record(3, paid[2][0], 450, "wechat:03"),  # matched
            record(4, "pay_" + "f" * 32, 450, "wechat:04"),  # approved, never charged
            # paid[3] has no record at all: charged without a record
        ]
        argv = todays_reconcile(tmp_path, records, keys, ids, ali=ali, wx=wx)
        code = await asyncio.to_thread(main, [*argv, "--json"])
        json_out = capsys.readouterr().out
        text_code = await asyncio.to_thread(main, argv)  # the operator's table
        text_out = capsys.readouterr().out
    assert code == 1
    doc = json.loads(json_out)
    assert doc["date"] == argv[argv.index("--date") + 1]
    (lane,) = doc["lanes"]
    assert (lane["lane"], lane["matched"], lane["matched_minor"]) == ("p07/l03", 2, 900)
    found = sorted(
        (d["finding"], d["out_trade_no"] or d["record_id"]) for d in lane["discrepancies"]
    )
    assert found == sorted(
        [
            ("amount_mismatch", paid[1][0]),
            ("approved_without_charge", "rec-4"),
            ("charged_without_record", paid[3][0].removeprefix("pay_")),
        ]
    )
    assert text_code == 1 and "p07/l03" in text_out and "charged_without_record" in text_out


def todays_reconcile(
    tmp_path: Path,
    records: list[Record],
    keys: Keys,
    ids: dict[str, str],
    *,
    ali: AlipayFake,
    wx: WeChatPayFake,
) -> list[str]:
    """`lane reconcile`'s arguments for today's bills against `records`, stored in an ingest
    file, with both networks' fakes configured."""
    write_store(tmp_path / "ingest.sqlite", records)
    cfg = write_config(tmp_path, keys, ids, ali=ali, wx=wx)
    date = beijing_time(time.time())[:10]
    return ["--config", str(cfg), "--date", date, "--db", str(tmp_path / "ingest.sqlite")]


async def pay_both(alic: AlipayClient, wxc: WeChatPayClient) -> list[Record]:
    """Two payments on each fake, each with its approved record."""
    records = []
    for n, client in enumerate((alic, alic, wxc, wxc), start=1):
        pid = "pay_" + f"{n:032x}"
        code = f"28{n:016d}" if client is alic else f"13{n:016d}"
        assert (await client.pay(PayRequest(pid, code, 450, "CNY", "p07/l03"), 2.0)).acquirer_ref
        records.append(record(n, pid, 450, f"{'alipay' if client is alic else 'wechat'}:0{n}"))
    return records


async def test_a_stalled_bill_download_is_bounded_and_says_which_bill_and_why(
    tmp_path: Path,
    *,
    network_keys: Keys,
    alipay_gateway: Any,
    wechat_gateway: Any,
    network_ids: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with alipay_gateway() as (ali, alic), wechat_gateway() as (wx, wxc):
        argv = todays_reconcile(
            tmp_path, await pay_both(alic, wxc), network_keys, network_ids, ali=ali, wx=wx
        )
        tries = ["--timeout-s", "0.3", "--tries", "2", "--retry-s", "0.05"]
        for stalled, name in ((ali, "Alipay"), (wx, "WeChat Pay")):
            stalled.update_faults(slow_body_rate=1.0)  # headers at once, then a byte a second
            async with asyncio.timeout(10.0):  # two tries of 0.3 s, not the bodies' hours
                code = await asyncio.to_thread(main, [*argv, *tries])
            stalled.update_faults(slow_body_rate=0.0)
            captured = capsys.readouterr()
            assert code == 2 and captured.out == ""  # no report made of a bill not whole
            assert f"{name} bill not fetched: the download stalls" in captured.err, captured.err
            assert "no answer within 0.300 s" in captured.err
            assert (
                "tried 2 times" in captured.err and "bill download failed; retrying" in captured.err
            )


async def test_a_bill_download_stalled_then_answering_is_retried_whole(
    tmp_path: Path,
    *,
    network_keys: Keys,
    alipay_gateway: Any,
    wechat_gateway: Any,
    network_ids: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both downloads stall until each has been tried once: the run tries again by itself and
    reconciles every charge of both bills."""
    async with alipay_gateway() as (ali, alic), wechat_gateway() as (wx, wxc):
        argv = todays_reconcile(
            tmp_path, await pay_both(alic, wxc), network_keys, network_ids, ali=ali, wx=wx
        )
        tries = ["--timeout-s", "0.5", "--tries", "6", "--retry-s", "0.2", "--json"]
        seen = {fake: fake.api_requests for fake in (ali, wx)}
        for fake in (ali, wx):
            fake.update_faults(slow_body_rate=1.0)
        run = asyncio.create_task(asyncio.to_thread(main, [*argv, *tries]))
        for fake in (ali, wx):  # Alipay's bill is fetched first, then WeChat Pay's
            await eventually(lambda f=fake: f.api_requests > seen[f], what="a stalled try")
            fake.update_faults(slow_body_rate=0.0)
        async with asyncio.timeout(20.0):
            code = await run
        captured = capsys.readouterr()
    assert code == 0, captured.err
    (lane,) = json.loads(captured.out)["lanes"]
    assert (lane["matched"], lane["matched_minor"], lane["discrepancies"]) == (4, 1800, [])
    retried = [line for line in captured.err.splitlines() if "retrying" in line]
    assert any("Alipay" in line for line in retried) and any("WeChat" in line for line in retried)


@pytest.mark.parametrize("network", ["Alipay", "WeChat Pay"])
@pytest.mark.parametrize(
    ("fault", "how"), [(BillFileFault.STALLED, "stalls"), (BillFileFault.CUT, "fails")]
)
async def test_a_bill_file_failing_alone_is_retried_then_names_the_bill(
    tmp_path: Path,
    network: str,
    fault: BillFileFault,
    how: str,
    *,
    network_keys: Keys,
    alipay_gateway: Any,
    wechat_gateway: Any,
    network_ids: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every signed call answers; only the file (Alipay's zip, WeChat Pay's download_url)
    stalls or is cut mid-body: each try is bounded, the file is tried again, and no report is
    made of a part of it."""
    async with alipay_gateway() as (ali, alic), wechat_gateway() as (wx, wxc):
        argv = todays_reconcile(
            tmp_path, await pay_both(alic, wxc), network_keys, network_ids, ali=ali, wx=wx
        )
        tries = ["--timeout-s", "0.5", "--tries", "3", "--retry-s", "0.05"]
        failing = ali if network == "Alipay" else wx
        failing.bill_file_fault = fault
        async with asyncio.timeout(15.0):  # three tries of 0.5 s, not the body's minutes
            code = await asyncio.to_thread(main, [*argv, *tries])
        captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured.err  # no report of a bill not whole
    assert f"{network} bill not fetched: the download {how}" in captured.err, captured.err
    assert "tried 3 times" in captured.err and "bill download failed; retrying" in captured.err
    assert failing.bill_file_requests == 3  # the file itself was what was tried again


@pytest.mark.parametrize("network", ["Alipay", "WeChat Pay"])
async def test_a_bill_file_stalled_once_then_answering_gives_the_whole_report(
    tmp_path: Path,
    network: str,
    *,
    network_keys: Keys,
    alipay_gateway: Any,
    wechat_gateway: Any,
    network_ids: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with alipay_gateway() as (ali, alic), wechat_gateway() as (wx, wxc):
        argv = todays_reconcile(
            tmp_path, await pay_both(alic, wxc), network_keys, network_ids, ali=ali, wx=wx
        )
        tries = ["--timeout-s", "0.5", "--tries", "3", "--retry-s", "0.2", "--json"]
        failing = ali if network == "Alipay" else wx
        failing.bill_file_fault = BillFileFault.STALLED
        run = asyncio.create_task(asyncio.to_thread(main, [*argv, *tries]))
        await eventually(lambda: failing.bill_file_requests > 0, what="a stalled file")
        failing.bill_file_fault = BillFileFault.NONE
        async with asyncio.timeout(15.0):
            code = await run
        captured = capsys.readouterr()
    assert code == 0, captured.err
    (lane,) = json.loads(captured.out)["lanes"]
    assert (lane["matched"], lane["matched_minor"], lane["discrepancies"]) == (4, 1800, [])
    assert failing.bill_file_requests == 2
    assert any(network in line for line in captured.err.splitlines() if "retrying" in line)


def test_lane_reconcile_refuses_what_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--date", "2026-13-01"]) == 2
    assert "is not YYYY-MM-DD" in capsys.readouterr().err
    assert main(["--date", "2026-11-30", "--db", str(tmp_path / "i.sqlite")]) == 2
    assert "no bill: route a network" in capsys.readouterr().err
    empty = tmp_path / "w.csv"
    empty.write_text(wechat_bill_text("1900000100", "wx1", []))
    argv = ["--date", "2026-11-30", "--wechat-bill", str(empty)]
    assert main([*argv, "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no such back-office store" in capsys.readouterr().err
    bad = tmp_path / "bill.zip"
    bad.write_bytes(b"junk")
    assert main(["--date", "2026-11-30", "--alipay-bill", str(bad)]) == 2
    assert "Alipay bill: not an Alipay bill zip" in capsys.readouterr().err
    for bad_bound in (["--timeout-s", "inf"], ["--retry-s", "0"], ["--tries", "0"]):
        with pytest.raises(SystemExit) as exit_:  # no try unbounded, none made of nothing
            main(["--date", "2026-11-30", *bad_bound])
        assert exit_.value.code == 2


def test_a_refund_record_is_not_taken_for_its_payments_record(tmp_path: Path) -> None:
    """The tap_out of pay_x fell before the day's margin, its refund record inside: the bill's
    charge of pay_x has no record that day, not one of the refund's amount."""
    end = RefundEnd("pay_x", "pay_x-r1", RefundEndKind.MADE, "SUCCESS", 150, "CNY",
                    "payment_code", "alipay")  # fmt: skip
    paid = record(2, "pay_y", 450, "alipay:01").draft
    refund = Record("refund-1", "p07/l03", 1, NOON_US, refund_draft(end))
    write_store(tmp_path / "i.sqlite", [refund, Record("rec-2", "p07/l03", 2, NOON_US + 1, paid)])
    args = argparse.Namespace(dsn=None, db=str(tmp_path / "i.sqlite"))
    assert [r.payment_id for r in load_records(args, DAY)] == ["pay_y"]


def test_lane_reconcile_from_bill_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    date = "2026-11-30"
    noon = DAY.start_us / 1e6 + 12 * 3600
    rows = [BillRow("pay_" + "a" * 32, "t1", "p07/l03", 450, noon)]
    (tmp_path / "a.zip").write_bytes(alipay_bill_zip(date, rows))
    (tmp_path / "w.csv").write_text(wechat_bill_text("1900000100", "wx1", []))
    rec1 = record(1, "pay_" + "a" * 32, 450, "alipay:01")
    write_store(tmp_path / "i.sqlite", [Record(rec1.record_id, rec1.lane, 1, NOON_US, rec1.draft)])
    argv = [
        "--date",
        date,
        "--db",
        str(tmp_path / "i.sqlite"),
        "--alipay-bill",
        str(tmp_path / "a.zip"),
        "--wechat-bill",
        str(tmp_path / "w.csv"),
    ]
    assert main(argv) == 0
    assert "p07/l03" in capsys.readouterr().out


async def test_a_bill_larger_than_an_api_answer_is_fetched(wechat_gateway: Any) -> None:
    async with wechat_gateway() as (_, client):
        n = 450  # about 190 bytes a row: more than the 64 KiB an API answer may be
        await asyncio.gather(
            *(
                client.pay(
                    PayRequest(f"pay_{i:032x}", f"13{i:016d}", 100 + i, "CNY", "p07/l03"), 10.0
                )
                for i in range(n)
            )
        )
        text = await fetch_wechat(client, beijing_time(time.time())[:10], 10.0)
    assert len(text.encode()) > 64 * 1024
    orders = bills.parse_wechat(text)
    assert len(orders) == n
    assert sum(o.charged_minor for o in orders.values()) == sum(100 + i for i in range(n))


def test_lane_reconcile_reads_a_postgresql_back_office(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_dsn: str
) -> None:
    store = PostgresIngestStore(pg_dsn)
    try:
        paid = [record(i, f"pay_{i:032x}", 450, f"wechat:{i:02d}") for i in (1, 2)]
        recs = [Record(r.record_id, r.lane, r.seq, NOON_US, r.draft) for r in paid]
        store.store_batch("p07/l03", QueueIdentity("test"), [ingest_record(r) for r in recs], 0)
        rows = [BillRow(f"{1:032x}", "t1", "p07/l03", 450, NOON_US / 1e6)]  # the second: none
        bill = tmp_path / "w.csv"
        bill.write_text(wechat_bill_text("1900000100", "wx1", rows))
        argv = ["--date", "2026-11-30", "--dsn", pg_dsn, "--json"]
        assert main([*argv, "--wechat-bill", str(bill)]) == 1
        (lane,) = json.loads(capsys.readouterr().out)["lanes"]
        assert lane["matched"] == 1
        assert [d["record_id"] for d in lane["discrepancies"]] == ["rec-2"]
    finally:
        store.close()
