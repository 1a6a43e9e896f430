"""A real lane (daemon, mosquitto, device emulator, SQLite) deletes the online payments final
for longer than `auth.payments_keep_days` from its payments.sqlite3 as it starts, and keeps the
rest."""

from __future__ import annotations

import time
from pathlib import Path

from ops_kit import running_lane
from polling import eventually

from lane.auth.resolution_store import PaymentState, ResolutionStore
from sim.broker import Mosquitto

DAY_MS = 86_400_000


async def test_a_lane_prunes_the_payments_final_for_longer_than_its_config_keeps(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    (tmp_path / "lane").mkdir()
    path = tmp_path / "lane" / "payments.sqlite3"
    store = ResolutionStore(path)
    now_ms = int(time.time() * 1000)
    for pid, age_days in (("pay_two_days", 2), ("pay_half_a_day", 0.5)):
        at = now_ms - int(age_days * DAY_MS)
        store.begin(pid, auth_id=f"auth-{pid}", lane=lane_id, amount_minor=450, currency="CNY",
                    method="payment_code", network="acquirer", now_ms=at)  # fmt: skip
        store.move(pid, PaymentState.DECLINED, at, reason="insufficient_funds")
    store.close()
    extra = {"auth": {"payments_keep_days": 1}}
    async with running_lane(tmp_path, mosquitto, lane_id, extra=extra) as lane:
        payments = lane.daemon.payments_store
        await eventually(lambda: payments.get("pay_two_days") is None, what="the old one pruned")
        assert payments.get("pay_half_a_day") is not None
