# ruff: noqa: RUF001 - the networks' bills use full-width punctuation, byte for byte
"""The daily trade bills the payment networks' fakes serve, in the networks' own formats.

Alipay: a zip holding `<date>_业务明细.csv`, GBK, `#` comment lines around a CSV table with
amounts in yuan; a refund is a row of its own (业务类型 退款) with a negative amount. WeChat Pay:
UTF-8 text, every field prefixed with a backtick, a charge row (交易状态 SUCCESS) and a refund row
(REFUND, 退款金额) per refunded order, and a totals block at the end. Both are parsed by
`lane.reconcile_bills`.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

from lane.auth.alipay_wire import beijing_time, yuan

ALIPAY_COLUMNS = (
    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,"
    "对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,"
    "商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,"
    "退款批次号/请求号,服务费（元）,分润（元）,备注"
)
WECHAT_COLUMNS = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
    "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
    "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)


@dataclass(frozen=True)
class BillRow:
    out_trade_no: str
    trade_no: str
    lane: str
    amount_minor: int
    placed: float  # Unix seconds
    refunded: bool = False


def alipay_bill_zip(date: str, rows: Sequence[BillRow]) -> bytes:
    lines = [
        "#支付宝业务明细查询",
        "#账号：[20880000000000000156]",
        f"#起始日期：[{date} 00:00:00]   终止日期：[{date} 23:59:59]",
        "#-----------------------------------------业务明细列表----------------------------------------",
        ALIPAY_COLUMNS,
    ]
    total = 0
    for row in rows:
        when = beijing_time(row.placed)
        for kind, sign in (("交易", ""), ("退款", "-")) if row.refunded else (("交易", ""),):
            amount = f"{sign}{yuan(row.amount_minor)}"
            total += -row.amount_minor if sign else row.amount_minor
            lines.append(
                f"{row.trade_no}\t,{row.out_trade_no}\t,{kind},lane {row.lane},{when},{when},,,,"
                f"{row.lane},,{amount},{amount},0.00,0.00,0.00,0.00,0.00,,0.00,0.00,,0.00,0.00,"
            )
    lines += [
        "#-----------------------------------------业务明细列表结束------------------------------------",
        f"#交易合计：{len(rows)}笔，商家实收共{_signed_yuan(total)}元",
        f"#导出时间：[{date} 23:59:59]",
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"20880000000000000156_{date}_业务明细.csv", "\r\n".join(lines).encode("gbk"))
    return buf.getvalue()


def wechat_bill_text(mchid: str, appid: str, rows: Sequence[BillRow]) -> str:
    lines = [WECHAT_COLUMNS]
    settled = refunded = 0
    for row in rows:
        when = beijing_time(row.placed)
        amount = yuan(row.amount_minor)
        states = (
            (("SUCCESS", "0.00"), ("REFUND", amount)) if row.refunded else (("SUCCESS", "0.00"),)
        )
        for state, refund in states:
            settled += row.amount_minor if state == "SUCCESS" else 0
            refunded += row.amount_minor if state == "REFUND" else 0
            fields = (
                when, appid, mchid, "0", row.lane, row.trade_no, row.out_trade_no, "oUser",
                "MICROPAY", state, "OTHERS", "CNY", amount, "0.00",
                "0" if state == "SUCCESS" else f"R{row.trade_no}",
                "0" if state == "SUCCESS" else f"R{row.out_trade_no}",
                refund, "0.00", "", "", f"lane {row.lane}", "", "0.00000", "0.60%", amount,
                refund, "",
            )  # fmt: skip
            lines.append(",".join(f"`{f}" for f in fields))
    lines += [
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额",
        f"`{len(rows)},`{yuan(settled)},`{yuan(refunded)},`0.00,`0.00000,`{yuan(settled)},"
        f"`{yuan(refunded)}",
    ]
    return "\r\n".join(lines) + "\r\n"


def _signed_yuan(minor: int) -> str:
    return ("-" if minor < 0 else "") + yuan(abs(minor))
