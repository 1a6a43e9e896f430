"""Reconciliation benchmark: a day of a 200-lane road (prints figures, asserts nothing).

    .venv/bin/python -m bench.reconcile [n=100000] [lanes=200]

Builds n approved records (half Alipay, half WeChat Pay) in a SQLite back-office store and both
networks' bills in their formats (one charge in 200 without a record, one in 500 refunded),
then times what `lane reconcile` does: reading and decoding the day's records from the store,
parsing each bill, and matching. Also checks the answer is exact (every planted discrepancy
found, nothing else).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import args as bench_args
from lane.auth import bills
from lane.auth.reconcile import Finding, RecordedPayment, reconcile
from lane.reconcile_cli import day_of
from sim.network_bills import BillRow, alipay_bill_zip, wechat_bill_text
from uplink.messages import QueueIdentity
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord

DATE = "2026-11-30"
ROUTES = {"alipay": "alipay", "wechat": "wechatpay", "unionpay": "acquirer", "emv": "acquirer"}


def main() -> None:
    parser = bench_args.parser(__doc__)
    parser.add_argument("n", type=int, nargs="?", default=100_000, help="transactions of the day")
    parser.add_argument("lanes", type=int, nargs="?", default=200, help="lanes of the road")
    args = parser.parse_args()
    n, lanes = args.n, args.lanes
    day = day_of(DATE)
    step_us = (day.end_us - day.start_us) // n
    ali_rows, wx_rows, stored = [], [], []
    for i in range(n):
        lane, pid = f"p{i % lanes // 10:02d}/l{i % 10:02d}", f"pay_{i:032x}"
        ts_us, amount, wallet = (
            day.start_us + i * step_us,
            100 + i % 900,
            ("alipay", "wechat")[i % 2],
        )
        row = BillRow(
            pid if wallet == "alipay" else pid[4:],
            f"t{i}",
            lane,
            amount,
            ts_us / 1e6,
            refunded=i % 500 == 7,
        )
        (ali_rows if wallet == "alipay" else wx_rows).append(row)
        if i % 200 == 3 or i % 500 == 7:
            continue  # charged without a record / refunded by the resolver
        draft = RecordDraft(
            "toll",
            f"v{i}",
            1,
            amount,
            "CNY",
            "payment_code",
            f"{wallet}:{i:016x}",
            AuthInfo("approved"),
            payment_id=pid,
        )
        record = Record(f"r{i}", lane, i + 1, ts_us, draft)
        stored.append(IngestRecord.of(record, record.encode()))
    ali_zip = alipay_bill_zip(DATE, ali_rows)
    wx_text = wechat_bill_text("1900000100", "wx1", wx_rows)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteIngestStore(Path(tmp) / "ingest.sqlite")
        by_lane: dict[str, list[IngestRecord]] = {}
        for rec in stored:
            by_lane.setdefault(rec.lane, []).append(rec)
        for lane, batch in by_lane.items():
            batch.sort(key=lambda r: r.seq)
            for j, rec in enumerate(batch):  # the ingest wants each lane's seqs 1, 2, 3, ...
                batch[j] = replace(rec, seq=j + 1)
            store.store_batch(lane, QueueIdentity("bench"), batch, 0)
        t0 = time.perf_counter()
        blobs = store.records_between(day.start_us - day.margin_us, day.end_us + day.margin_us)
        t1 = time.perf_counter()
        records = []
        for blob in blobs:
            r = Record.decode(blob)
            d = r.draft
            assert d.payment_id is not None
            records.append(
                RecordedPayment(
                    r.lane,
                    r.record_id,
                    d.payment_id,
                    d.amount_minor,
                    d.auth.result,
                    d.account_ref,
                    r.ts_us,
                )
            )
        t2 = time.perf_counter()
        store.close()
    ali = list(bills.parse_alipay(bills.alipay_csv_from_zip(ali_zip)).values())
    t3 = time.perf_counter()
    wx = list(bills.parse_wechat(wx_text).values())
    t4 = time.perf_counter()
    reports = reconcile(records, {"alipay": ali, "wechatpay": wx}, ROUTES, day)
    t5 = time.perf_counter()
    found = [d.finding for r in reports.values() for d in r.discrepancies]
    planted = sum(1 for i in range(n) if i % 200 == 3 and i % 500 != 7)
    assert found == [Finding.CHARGED_WITHOUT_RECORD] * planted, "reconciliation is not exact"
    print(f"reconcile: {n} transactions, {lanes} lanes, {len(reports)} lane reports")
    print(f"  read records (SQLite)   {(t1 - t0) * 1000:8.0f} ms")
    print(f"  decode records          {(t2 - t1) * 1000:8.0f} ms")
    print(f"  parse Alipay bill       {(t3 - t2) * 1000:8.0f} ms  ({len(ali_zip) // 1024} KiB zip)")
    print(f"  parse WeChat Pay bill   {(t4 - t3) * 1000:8.0f} ms  ({len(wx_text) // 1024} KiB)")
    print(f"  match                   {(t5 - t4) * 1000:8.0f} ms")
    print(f"  total                   {(t5 - t0) * 1000:8.0f} ms; {planted} planted, all found")


if __name__ == "__main__":
    main()
