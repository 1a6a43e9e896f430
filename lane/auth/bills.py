# ruff: noqa: RUF001 - the networks' bills name their columns with full-width punctuation
"""The payment networks' daily trade bills, parsed into one order per line: pure.

Alipay (`alipay.data.dataservice.bill.downloadurl.query`, bill_type trade): a zip whose
`..._业务明细.csv` member (GBK) holds `#` comment lines around a CSV table; amounts in yuan, a
refund is its own row (业务类型 退款) with a negative amount; Alipay pads ids with a tab so
spreadsheets keep their digits. WeChat Pay (`/v3/bill/tradebill`, bill_type ALL): UTF-8 text,
every field prefixed with a backtick, a charge row (交易状态 SUCCESS) and for a refund a row
with 退款金额; a totals block closes it. Amounts are converted to fen exactly (no float).
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from lane.auth.alipay_wire import minor_from_yuan


class BillError(ValueError):
    """A bill that is not in the network's format; the message says where."""


@dataclass(slots=True)
class BilledOrder:
    """One order on a network's bill, all its rows summed."""

    network: str
    out_trade_no: str
    trade_no: str
    lane: str | None
    charged_minor: int = 0
    refunded_minor: int = 0
    rows: list[int] = field(default_factory=list)  # line numbers, for the operator

    @property
    def net_minor(self) -> int:
        return self.charged_minor - self.refunded_minor


def signed_minor(text: str) -> int:
    text = text.strip()
    if text.startswith("-"):
        return -minor_from_yuan(text[1:])
    return minor_from_yuan(text)


def alipay_csv_from_zip(data: bytes) -> str:
    """The detail table of an Alipay bill zip, decoded from GBK."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = [n for n in zf.namelist() if n.endswith("业务明细.csv")]
            if len(names) != 1:
                raise BillError(f"Alipay bill zip holds {len(names)} detail tables, not one")
            return zf.read(names[0]).decode("gbk")
    except (zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise BillError(f"not an Alipay bill zip: {exc}") from exc


def parse_alipay(text: str) -> dict[str, BilledOrder]:
    orders: dict[str, BilledOrder] = {}
    for line_no, row in _table(text.splitlines(), "支付宝交易号", comment="#"):
        otn, kind = row["商户订单号"], row["业务类型"]
        order = orders.get(otn)
        if order is None:
            order = orders[otn] = BilledOrder(
                "alipay", otn, row["支付宝交易号"], row.get("终端号") or None
            )
        amount = _amount(row, "订单金额（元）", line_no)
        if kind == "交易":
            order.charged_minor += amount
        elif kind == "退款":
            order.refunded_minor += -amount
        else:
            raise BillError(f"line {line_no}: unknown 业务类型 {kind!r}")
        order.rows.append(line_no)
    return orders


def parse_wechat(text: str) -> dict[str, BilledOrder]:
    orders: dict[str, BilledOrder] = {}
    lines = text.splitlines()
    body = []
    for line in lines:
        if line.startswith("总交易单数"):
            break  # the totals block follows
        body.append(line)
    for line_no, row in _table(body, "交易时间", strip="`"):
        otn, state = row["商户订单号"], row["交易状态"]
        order = orders.get(otn)
        if order is None:
            order = orders[otn] = BilledOrder(
                "wechat", otn, row["微信订单号"], row.get("设备号") or None
            )
        if state == "SUCCESS":
            order.charged_minor += _amount(row, "订单金额", line_no)
        elif state in ("REFUND", "REVOKED"):
            order.refunded_minor += _amount(row, "退款金额", line_no)
        else:
            raise BillError(f"line {line_no}: unknown 交易状态 {state!r}")
        order.rows.append(line_no)
    return orders


def _table(
    lines: Iterable[str], first_column: str, *, comment: str | None = None, strip: str = ""
) -> Iterator[tuple[int, dict[str, str]]]:
    header: list[str] | None = None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if comment is not None and line.startswith(comment):
            if header is not None:
                return  # the comment block after the table
            continue
        fields = [f.strip().lstrip(strip).strip() for f in next(csv.reader([line]))]
        if header is None:
            if fields[0] != first_column:
                raise BillError(f"line {line_no}: expected the column header, got {line[:40]!r}")
            header = fields
            continue
        if len(fields) < len(header):
            raise BillError(f"line {line_no}: {len(fields)} fields, the header has {len(header)}")
        yield line_no, dict(zip(header, fields, strict=False))
    if header is None:
        raise BillError(f"no table starting with column {first_column!r}")


def _amount(row: dict[str, str], column: str, line_no: int) -> int:
    try:
        return signed_minor(row[column])
    except (KeyError, ValueError) as exc:
        raise BillError(f"line {line_no}: {column}: {exc}") from exc
