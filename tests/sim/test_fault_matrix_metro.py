"""The fault matrix's refund faults, on a simulated metro line (`lane sim --mode metro`) driven
through the simulator's HTTP API as an operator's page drives it.

One line serves the module: an entry gate at S02 and an exit gate at S03, each the real lane
daemon with its device emulator and camera, on the simulator's mosquitto, paying wallet codes
through the Alipay and WeChat Pay fakes over HTTP. A passenger taps in with a code of a wallet
(charged the entry's 2.50), rides, and taps out with another code of the same wallet: the exit
charges the maximum fare into S03 (14.00) and refunds down to the rest of the S02 trip (8.00
less 2.50). The dashboard's state shows the exit's transaction as "charged 14.00, refund 8.50"
and where the refund stands; per refund
fault switched on (`POST /api/faults`) the exit gate raises its alarm with its text (in the
lane's health message and on the console), and once the fault is off the refund is made and
the alarm clears by itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from polling import eventually
from test_fault_matrix import in_health

from lane.cli import main as lane_cli
from lane.core.names import AuthResult
from sim.dashboard import Dashboard
from sim.harness import SimOptions, Simulator
from sim.traffic import Driver

SPEED = 30.0
# S02 -> S03 is 8.00, 2.50 of it paid at the tap-in; the most into S03 is 14.00.
CHARGED = "charged 14.00, refund 8.50"
# Real seconds: a refund refused is retried on the lane's back-off (up to 30 s, not scaled);
# one ended unpaid is seen at the network's second answer (2 + 4 s at this speed); one marked
# made by hand when the lane reads its payments file again (within 30 s). Under load, more.
WITHIN_S = 60.0


class Line:
    def __init__(self, sim: Simulator, dashboard: Dashboard, http: aiohttp.ClientSession) -> None:
        self.sim, self.url, self.http = sim, dashboard.url, http
        self.riders = 0

    async def get(self, path: str) -> dict[str, Any]:
        async with self.http.get(self.url + path) as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data

    async def fault(self, fault: str, on: bool, **params: str) -> None:
        body = json.dumps({"fault": fault, "on": on, "params": params})
        async with self.http.post(self.url + "api/faults", data=body) as resp:
            assert resp.status == 200, await resp.text()

    async def ride(self, kind: str) -> str:
        """A passenger taps in with a `kind` wallet code and out with another; the record id
        of the tap-out."""
        self.riders += 1
        exit_gate = self.sim.lanes[1]
        before = len(exit_gate.outcomes)
        driver = Driver(20_000 + self.riders, 0.0, 1, kind, (kind,))
        self.sim.dispatch(driver)
        await eventually(
            lambda: len(exit_gate.outcomes) > before, within=WITHIN_S, what="tapped out"
        )
        assert exit_gate.outcomes[before].passed, exit_gate.outcomes[before]
        records = exit_gate.records_written.values()
        paid = [r for r in records if r.draft.auth.result is AuthResult.APPROVED]
        return paid[-1].record_id  # a tap-out: the exit gate records nothing else

    async def exit_state(self) -> dict[str, Any]:
        lane: dict[str, Any] = (await self.get("api/state"))["lanes"][1]
        return lane

    async def refund(self, record_id: str, text: str) -> dict[str, Any]:
        """The exit's transaction `record_id` once the dashboard shows `text` for its refund."""

        async def shown() -> dict[str, Any] | None:
            lane = await self.exit_state()
            tx = [t for t in lane["transactions"] if t["record_id"] == record_id]
            return lane if tx and tx[0]["refund_text"] == text else None

        found: dict[str, Any] = await eventually(
            shown, within=WITHIN_S, every=0.2, what=f"{record_id}: {text}"
        )
        return found

    async def console_refunds(self) -> dict[str, int]:
        """The exit gate's refunds as the console shows them (from the lane's health)."""
        state = await self.get("console/api/state")
        exit_id = self.sim.lanes[1].lane_id
        refunds: dict[str, int] = next(ln for ln in state["lanes"] if ln["lane"] == exit_id)[
            "refunds"
        ]
        return refunds

    async def on_console(self, code: str) -> str | None:
        """The alarm's text in the console's view of the exit gate, if active there."""
        state = await self.get("console/api/state")
        exit_id = self.sim.lanes[1].lane_id
        active = [a for a in state["alarms"] if a["lane"] == exit_id and a["cleared"] is None]
        texts = [a["message"] for a in active if a["code"] == code]
        return texts[0] if texts else None


@pytest.fixture(scope="module")
async def line(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Line]:
    options = SimOptions(
        seed=5,
        speed=SPEED,
        mode="metro",
        lanes=2,
        conditions="clear",
        frame_size=(640, 360),
        fps=15.0,
        workdir=tmp_path_factory.mktemp("metro"),
    )
    sim = Simulator(options)
    await sim.start()
    dashboard = Dashboard(sim, interval_s=0.2)
    await dashboard.start("127.0.0.1", 0)
    http = aiohttp.ClientSession()
    try:
        yield Line(sim, dashboard, http)
    finally:
        await http.close()
        await dashboard.stop()
        await sim.stop()


def alarms(line: Line) -> dict[str, str]:
    daemon = line.sim.lanes[1].daemon
    assert daemon is not None
    return daemon.runner.alarms


def refund_alarms(line: Line) -> set[str]:
    """The exit gate's refund alarms (the faults here are the refunds')."""
    return set(alarms(line)) & {"refund_failing", "refund_unpaid"}


async def test_a_wallet_passenger_is_charged_the_most_and_refunded_down_to_the_trip(
    line: Line,
) -> None:
    assert [ln.lane_id for ln in line.sim.lanes] == ["S02/g01", "S03/x01"]
    record_id = await line.ride("wechat")
    lane = await line.refund(record_id, f"{CHARGED} (made)")
    tx = next(t for t in lane["transactions"] if t["record_id"] == record_id)
    assert (tx["kind"], tx["amount_minor"], tx["currency"]) == ("tap_out", 550, "CNY")
    assert "entry_paid:250" in tx["flags"]
    entry = (await line.get("api/state"))["lanes"][0]
    assert {t["refund_text"] for t in entry["transactions"]} == {None}  # a tap-in owes nothing
    assert not refund_alarms(line)

    async def made_on_console() -> bool:
        return await line.console_refunds() == {"made": 1}

    await eventually(made_on_console, what="one refund made, on the console")


async def test_refunds_refused_raise_refund_failing_until_the_network_takes_them(
    line: Line,
) -> None:
    await line.fault("refund_refused", True)
    try:
        record_id = await line.ride("alipay")
        await line.refund(record_id, f"{CHARGED} (failing)")
        await eventually(lambda: "refund_failing" in alarms(line), what="refund_failing")
        assert "SELLER_BALANCE_NOT_ENOUGH" in alarms(line)["refund_failing"]
        await eventually(lambda: in_health(line.sim.lanes[1], "refund_failing"), what="health")
        text = await eventually(lambda: line.on_console("refund_failing"), what="on the console")
        assert "850 CNY" in text
        assert (await line.console_refunds()).get("failing") == 1
    finally:
        await line.fault("refund_refused", False)
    await line.refund(record_id, f"{CHARGED} (made)")
    await eventually(lambda: not refund_alarms(line), within=WITHIN_S, what="the alarm cleared")


async def test_a_refund_ended_abnormal_raises_refund_unpaid_until_refunded_by_hand(
    line: Line,
) -> None:
    await line.fault("refund_unpaid", True, mode="abnormal")
    try:
        record_id = await line.ride("wechat")
        await line.refund(record_id, f"{CHARGED} (unpaid (ABNORMAL))")
        text = alarms(line)["refund_unpaid"]
        assert "ABNORMAL" in text and "850 CNY" in text and "by hand" in text
        await eventually(lambda: in_health(line.sim.lanes[1], "refund_unpaid"), what="health")
        await eventually(lambda: line.on_console("refund_unpaid"), what="on the console")
    finally:
        await line.fault("refund_unpaid", False)  # the merchant refunds it by hand
    await line.refund(record_id, f"{CHARGED} (made)")
    await eventually(lambda: not refund_alarms(line), within=WITHIN_S, what="the alarm cleared")


async def test_a_refund_ended_closed_stays_unpaid_until_the_operator_marks_it_made(
    line: Line, tmp_path: Path
) -> None:
    await line.fault("refund_unpaid", True, mode="closed")
    try:
        record_id = await line.ride("wechat")
        await line.refund(record_id, f"{CHARGED} (unpaid (CLOSED))")
    finally:
        await line.fault("refund_unpaid", False)
    assert "CLOSED" in alarms(line)["refund_unpaid"]  # closed stays closed at the network
    # The operator refunded it outside the lane and says so on the lane's host.
    exit_gate = line.sim.lanes[1]
    assert exit_gate.daemon is not None
    config = tmp_path / "lane.toml"
    data_dir = exit_gate.daemon.config.lane.data_dir
    config.write_text(f'[lane]\nid = "{exit_gate.lane_id}"\ndata_dir = "{data_dir}"\n')
    payment_id = exit_gate.records_written[record_id].draft.payment_id
    assert lane_cli(["refunds", "--config", str(config), "--made", str(payment_id)]) == 0
    await line.refund(record_id, f"{CHARGED} (made)")
    # The lane reads its payments file again within 30 s (real: the operator's edit).
    await eventually(lambda: not refund_alarms(line), within=WITHIN_S, what="the alarm cleared")
