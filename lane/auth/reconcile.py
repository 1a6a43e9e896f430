"""Daily reconciliation (对账): the back office's records against the networks' bills, pure.

An order on a bill and a record meet by out_trade_no: each network's order number is our
payment id (Alipay) or the payment id without `pay_` (WeChat Pay), so both are keyed by the
payment id's 32 hex digits. A record's network is the scheme of its account reference
(`alipay:`, `wechat:`, `unionpay:`, `emv:`) routed as the lane routes it (`[auth.routes]`).

Per lane it reports: matched (recorded approved, charged that amount), charged without an
approved record (to refund), approved without a charge, amount mismatches; refunded orders with
no approved record are fine (the resolver reversed them) and are only counted. Records paid
`deferred` (approved offline, their attempt voided) are counted, not expected on any bill.
A record is reported as lacking a charge only if it falls inside the bill's day (Beijing time);
the records of a margin around the day are still used to match charges near midnight.
Everything is dicts and sums: linear in records plus bill rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lane.auth.bills import BilledOrder


class Finding(StrEnum):
    CHARGED_WITHOUT_RECORD = "charged_without_record"
    APPROVED_WITHOUT_CHARGE = "approved_without_charge"
    AMOUNT_MISMATCH = "amount_mismatch"


@dataclass(frozen=True, slots=True)
class RecordedPayment:
    """What reconciliation needs of one back-office record that names a payment."""

    lane: str
    record_id: str
    payment_id: str
    amount_minor: int
    result: str  # approved | declined | deferred | ...
    account_ref: str | None
    ts_us: int

    @property
    def code_kind(self) -> str | None:
        """alipay | wechat | unionpay | emv, from the account reference's scheme."""
        if self.account_ref is None or ":" not in self.account_ref:
            return None
        return self.account_ref.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class Discrepancy:
    finding: Finding
    lane: str
    network: str
    out_trade_no: str | None
    trade_no: str | None
    record_id: str | None
    recorded_minor: int | None
    charged_minor: int  # net of refunds


@dataclass
class LaneReport:
    lane: str
    matched: int = 0
    matched_minor: int = 0
    refunded: int = 0  # charged and refunded, no approved record: the resolver's work
    deferred: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    def count(self, finding: Finding) -> int:
        return sum(1 for d in self.discrepancies if d.finding is finding)


@dataclass(frozen=True, slots=True)
class Day:
    """The bill's day as [start_us, end_us) in Unix microseconds, and the matching margin."""

    start_us: int
    end_us: int
    margin_us: int = 15 * 60 * 1_000_000

    def holds(self, ts_us: int) -> bool:
        return self.start_us <= ts_us < self.end_us

    def near(self, ts_us: int) -> bool:
        return self.start_us - self.margin_us <= ts_us < self.end_us + self.margin_us


def key(order_no: str) -> str:
    return order_no.removeprefix("pay_")


def reconcile(
    records: Iterable[RecordedPayment],
    bills: Mapping[str, Iterable[BilledOrder]],
    routes: Mapping[str, str],
    day: Day,
) -> dict[str, LaneReport]:
    """Reports per lane. `bills`: network -> its orders; `routes`: code kind -> network."""
    reports: dict[str, LaneReport] = {}

    def lane(name: str) -> LaneReport:
        report = reports.get(name)
        if report is None:
            report = reports[name] = LaneReport(name)
        return report

    recorded: dict[str, RecordedPayment] = {}
    for rec in records:
        if not day.near(rec.ts_us):
            continue
        kept = recorded.get(key(rec.payment_id))
        if kept is None or (rec.result == "approved" and kept.result != "approved"):
            recorded[key(rec.payment_id)] = rec
    seen: set[str] = set()
    for network, orders in bills.items():
        for order in orders:
            k = key(order.out_trade_no)
            seen.add(k)
            match = recorded.get(k)
            _judge(order, match, network, lane(match.lane if match else order.lane or "?"))
    for k, rec in recorded.items():
        if k in seen or not day.holds(rec.ts_us):
            continue
        routed = routes.get(rec.code_kind or "")
        if rec.result == "deferred":
            lane(rec.lane).deferred += 1
        elif rec.result == "approved" and routed is not None and routed in bills:
            lane(rec.lane).discrepancies.append(
                Discrepancy(
                    Finding.APPROVED_WITHOUT_CHARGE,
                    rec.lane,
                    routed,
                    None,
                    None,
                    rec.record_id,
                    rec.amount_minor,
                    0,
                )
            )
    return dict(sorted(reports.items()))


def _judge(
    order: BilledOrder, rec: RecordedPayment | None, network: str, report: LaneReport
) -> None:
    approved = rec is not None and rec.result == "approved"
    net = order.net_minor
    if not approved and net == 0:
        report.refunded += 1
        return
    finding: Finding | None
    if not approved:
        finding = Finding.CHARGED_WITHOUT_RECORD
    elif net == 0:
        finding = Finding.APPROVED_WITHOUT_CHARGE  # charged, then refunded after all
    elif rec is not None and net != rec.amount_minor:
        finding = Finding.AMOUNT_MISMATCH
    else:
        report.matched += 1
        report.matched_minor += net
        return
    report.discrepancies.append(
        Discrepancy(
            finding,
            report.lane,
            network,
            order.out_trade_no,
            order.trade_no,
            rec.record_id if rec is not None else None,
            rec.amount_minor if rec is not None else None,
            net,
        )
    )
