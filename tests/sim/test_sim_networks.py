"""The simulator's traffic pays Alipay and WeChat Pay codes through the networks' fakes (real
signatures both ways), UnionPay and EMV through our acquirer; every charge ends recorded or
reversed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sim.harness import SimOptions, Simulator
from sim.traffic import Mix
from sim.wechatpay_fake import CertificateFault

FAST = {"speed": 20.0, "conditions": "clear", "frame_size": (640, 360), "fps": 20.0}


async def test_wallet_codes_are_paid_through_the_networks(tmp_path: Path) -> None:
    sim = Simulator(SimOptions(seed=11, workdir=tmp_path, **FAST))  # type: ignore[arg-type]
    await sim.start()
    try:
        shares = {"alipay": 0.35, "wechat": 0.35, "unionpay": 0.15, "emv": 0.15}
        await sim.drive_for(600, Mix(arrivals_per_hour=3600, behaviours=shares), limit=10)
        report = await sim.report_async()
        assert sim.networks is not None and sim.acquirer is not None
        alipay = sim.networks.alipay.payments() if sim.networks.alipay else []
        wechat = sim.networks.wechatpay.payments() if sim.networks.wechatpay else []
        assert alipay and wechat, "both networks were paid through"
        assert report["paying_passed"] == report["paying_vehicles"] == 10
        on_acquirer = [p for p in sim.acquirer.payments() if p["charged"]]
        assert on_acquirer, "UnionPay and EMV codes are paid through our acquirer"
        charged = sum(p["charged"] and not p["reversed"] for p in alipay + wechat)
        charged += sum(p["charged"] and not p["reversed"] for p in sim.acquirer.payments())
        assert charged == report["passed"], "each passage charged once, nothing else charged"
    finally:
        await asyncio.wait_for(sim.stop(), 30)


async def test_a_wechat_pay_certificate_rotation_mid_run_is_learned(tmp_path: Path) -> None:
    """The scenario control rotates the fake's platform certificate: the lanes learn it from
    /v3/certificates and every WeChat Pay code after it is paid as before, with no alarm."""
    sim = Simulator(SimOptions(seed=12, workdir=tmp_path, **FAST))  # type: ignore[arg-type]
    await sim.start()
    try:
        only_wechat = Mix(arrivals_per_hour=3600, behaviours={"wechat": 1.0})
        await sim.drive_for(600, only_wechat, limit=3)
        fake = sim.wechatpay()
        assert fake is not None
        before = fake.platform_serial
        assert fake.certificate_downloads >= 1, "the lanes' first idle look (their upkeep task)"
        await sim.faults.apply("wechatpay_rotation", params={"overlap": "keep"})
        assert fake.platform_serial != before
        downloads = fake.certificate_downloads
        await sim.drive_for(600, only_wechat, limit=3)
        report = await sim.report_async()
        assert report["paying_passed"] == report["paying_vehicles"] == 6
        assert fake.certificate_downloads > downloads, "the new certificate was downloaded"
        alarms = {code for lane in sim.lanes for code in lane.snapshot(0)["alarms"]}
        assert "wechatpay_certificates" not in alarms and "payment_wechatpay" not in alarms
        # The other control breaks the download (a tampered one here) until cleared.
        await sim.faults.apply("wechatpay_certificates_broken", params={"mode": "tampered"})
        assert fake.certificate_fault is CertificateFault.TAMPERED
        await sim.faults.apply("wechatpay_certificates_broken", on=False)
        assert fake.certificate_fault is CertificateFault.NONE
    finally:
        await asyncio.wait_for(sim.stop(), 30)
