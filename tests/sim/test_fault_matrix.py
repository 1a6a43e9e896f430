"""The fault matrix (issue #11 item 1): every simulator fault switched on, then off, against the
real things (mosquitto, the device emulator, the lane daemon, the acquirer, the back office).

Per fault: while it is on the lane notices it (its alarm, where it has one, with its text in
the lane's health message; a command fault is noticed by the vehicle that meets it), once it is
off the lane is idle again with no alarm left within a bounded simulated time, serves the next
paying vehicle, and no vehicle was ever paid and not let through. A fault that makes the lane
refuse a payment's answer declines the vehicle that meets it, and the payment it left in doubt
is reversed. One simulator serves every case (module scope), in order: a fault left behind by
one case fails that case and the next ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from polling import eventually

from barrier.messages import MAX_TEXT
from lane.auth.wechatpay_certs import MIN_REFRESH_INTERVAL_S
from lane.auth.wechatpay_wire import out_trade_no
from lane.core.names import AuthResult
from lane.transport.refusals import REFUSED_RETRY
from sim.harness import SimOptions, Simulator
from sim.lane import SimLane
from sim.traffic import Driver

SPEED = 10.0
# Simulated seconds: the longest way out of a fault is a probe or a dwell of the lane (a few
# simulated seconds at most) and reconnecting; nothing here may take longer.
HEAL_WITHIN_S = 120.0
NOTICE_WITHIN_S = 60.0


@dataclass(frozen=True)
class Case:
    fault: str
    alarm: str | None  # what the lane raises while the fault lasts, without traffic
    # A vehicle meets the fault (it is only seen by a command), and passes once it is off.
    with_vehicle: str | None = None  # the alarm that vehicle makes the lane raise
    closed: bool = False  # safe while it lasts: the lane takes no payment
    then: str | None = None  # a one-shot fault, applied while this one lasts, that it spoils
    vehicle: str = "token"  # the code the vehicles show
    # Safe while it lasts: the vehicle that meets it is declined, its payment in doubt reversed.
    declined: bool = False
    # Safe while it lasts: a vehicle showing `vehicle` is refused for this reason, not let through.
    refused: str | None = None
    heal_s: float = HEAL_WITHIN_S
    # Alarms judged over a window of payments, which the declined vehicle stays in after the
    # fault is gone (it clears as the window moves on: the lane's rule, tested on its own).
    lingering: frozenset[str] = frozenset()


CASES = [
    Case("barrier_offline", "barrier_offline", closed=True),
    Case("barrier_fault", "barrier_fault", closed=True),
    # The device's words about its boom do not decode: the lane cannot tell where the boom is.
    Case("barrier_garbled", "barrier_unreadable", closed=True),
    Case("barrier_no_ack", None, with_vehicle="barrier_no_ack"),
    Case("barrier_stuck", None, with_vehicle="barrier_stuck"),
    # The vehicle's open works, the close after it does not: the lane takes payments under it.
    Case("barrier_stuck_open", None, with_vehicle="barrier_stuck_open"),
    # Acks 3 s late (not scaled by the speed): later than the lane's ack timeout and retries.
    Case("barrier_slow_ack", None, with_vehicle="barrier_no_ack"),
    # A camera that reads no codes: the lane does not invite drivers to show one.
    Case("camera_blackout", "camera_blackout", closed=True),
    Case("broker_down", "broker_down", closed=True),
    Case("backoffice_offline", None),
    Case("acquirer_outage", None),
    Case("acquirer_slow", None),
    Case("acquirer_declines", None),
    Case("queue_high_water", "queue_high_water"),
    # The broker refuses the lane's records: the vehicle passes, its record waits. The lane
    # tries the topic again at a back-off doubling to REFUSED_RETRY's cap (real seconds).
    Case(
        "publish_refused",
        None,
        with_vehicle="publish_refused",
        heal_s=HEAL_WITHIN_S + REFUSED_RETRY.max_s * SPEED,
    ),
    # The plaza issues a newer key set whose token key has expired: offline tokens are refused
    # for their key alone; off, a good set is issued and adopted.
    Case("keyset_lapsed", "keyset_no_token_key", refused="key_not_valid_at_iat"),
    # Answers stalled mid-body: the vehicle's call ends at its budget (declined), the payment it
    # charged is in doubt and reversed once answers flow again. This and the cases below leave
    # acquirer_unhealthy to its window, which each of them finds and tolerates: they come last.
    Case(
        "acquirer_slow_body",
        None,
        refused="timeout",
        vehicle="wechat",
        declined=True,
        lingering=frozenset({"acquirer_unhealthy"}),
    ),
    # Answers cut mid-body: the network counts as unreachable, the vehicle follows the offline
    # policy (the simulator's passes it, deferred) and its charged attempt is voided.
    Case(
        "acquirer_cut_body",
        None,
        with_vehicle="payment_wechatpay",
        vehicle="wechat",
        lingering=frozenset({"acquirer_unhealthy"}),
    ),
    # WeChat Pay rotates its certificate while the download is broken: the next WeChat Pay
    # answer names a certificate the lane cannot learn. Once the download works, the lane's
    # next try (a retry is allowed every certificate_retry_s, which the simulator scales like
    # the simulated time; the idle lane looks as often) learns it. The refused answer is an
    # acquirer error among the lane's last online payments (acquirer_unhealthy, 5 minutes).
    # Last: it rotates for good, and leaves that alarm to its window.
    Case(
        "wechatpay_certificates_broken",
        None,
        with_vehicle="wechatpay_certificates",
        then="wechatpay_rotation",
        vehicle="wechat",
        declined=True,
        heal_s=HEAL_WITHIN_S + 2 * MIN_REFRESH_INTERVAL_S,
        lingering=frozenset({"acquirer_unhealthy"}),
    ),
]


@pytest.fixture(scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Simulator]:
    workdir: Path = tmp_path_factory.mktemp("matrix")
    options = SimOptions(
        seed=11, speed=SPEED, conditions="clear", frame_size=(640, 360), fps=15.0, workdir=workdir
    )
    simulator = Simulator(options)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def within(sim: Simulator, what: str, cond: Callable[[], bool], sim_s: float) -> None:
    """Poll `cond` for at most `sim_s` simulated seconds."""
    await eventually(cond, within=sim_s / sim.speed, every=0.02, what=f"{what} ({sim_s:g} sim s)")


def alarms(lane: SimLane) -> dict[str, str]:
    assert lane.daemon is not None
    return lane.daemon.runner.alarms


def healthy(lane: SimLane, lingering: frozenset[str] = frozenset()) -> bool:
    assert lane.daemon is not None
    return not set(alarms(lane)) - lingering and lane.daemon.runner.idle() and lane.load == 0


def paying(sim: Simulator, kind: str) -> Driver:
    sim.arrivals += 1
    return Driver(
        index=10_000 + sim.arrivals,
        arrival_s=0.0,
        vehicle_class=1,
        behaviour=kind,
        codes=(kind,),
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.fault)
async def test_each_fault_clears_itself_and_the_next_vehicle_is_served(
    sim: Simulator, case: Case
) -> None:
    lane = sim.lanes[0]
    index = None if sim.faults.lanes_for(case.fault, None) == [None] else 1
    await within(
        sim, "healthy before the fault", lambda: healthy(lane, case.lingering), HEAL_WITHIN_S
    )
    mark = lane.watch.mark
    met = len(lane.outcomes)
    await sim.faults.apply(case.fault, True, index)
    try:
        if case.then is not None:
            await sim.faults.apply(case.then)
        if case.alarm is not None:
            await within(
                sim, f"{case.alarm} raised", lambda: case.alarm in alarms(lane), NOTICE_WITHIN_S
            )
        if case.closed:
            assert lane.daemon is not None
            assert not lane.daemon.runner.state.accepting_payments
        if case.with_vehicle is not None:
            driver = paying(sim, case.vehicle)
            lane.join(driver)
            await within(
                sim,
                f"{case.with_vehicle} raised by a vehicle",
                lambda: case.with_vehicle in alarms(lane),
                NOTICE_WITHIN_S,
            )
        if case.refused is not None:
            refused = len(lane.outcomes)
            lane.join(paying(sim, case.vehicle))
            await lane.drained()
            outcome = lane.outcomes[refused]
            assert not outcome.passed, f"{case.fault}: let through {outcome}"
            assert case.refused in outcome.refusals, f"{case.fault}: {outcome.refusals}"
        for code in (case.alarm, case.with_vehicle):
            if code is not None:  # the operator sees it: in the health message, with its text
                await within(
                    sim, f"{code} in health", lambda c=code: in_health(lane, c), NOTICE_WITHIN_S
                )
    finally:
        await sim.faults.apply(case.fault, False, index)
    await lane.drained()
    if case.declined:
        assert not lane.outcomes[met].passed, f"{case.fault}: {lane.outcomes[met]}"
    await within(
        sim, f"healed after {case.fault}", lambda: healthy(lane, case.lingering), case.heal_s
    )
    # Acquirer faults hit online payments: the next one pays online.
    kind = "alipay" if case.fault.startswith("acquirer") else case.vehicle
    served = len(lane.outcomes)
    lane.join(paying(sim, kind))
    await lane.drained()
    outcome = lane.outcomes[served]
    assert outcome.passed, f"after {case.fault}: {outcome.refusals}"
    await within(
        sim,
        f"idle after a vehicle, {case.fault}",
        lambda: healthy(lane, case.lingering),
        HEAL_WITHIN_S,
    )
    notes = lane.watch.notes[mark - lane.watch.base :]
    assert [f for _, n, f in notes if n == "paid_not_passed"] == []
    assert sim.faults.active == {}
    if case.declined:
        await within(sim, "the payment in doubt reversed", lambda: no_charge_kept(sim, lane), 60.0)


async def test_the_uplink_down_alone_is_safe_seen_and_clears(sim: Simulator) -> None:
    """Only the lane's uplink connection goes down, its barrier link stays up: a vehicle pays
    and passes and its record waits on disk; `uplink_down` names the uplink's broker after its
    grace (1.5 keepalives, real seconds), with no `broker_down` beside it; once the link is
    back the alarm clears by itself and the record reaches the back office."""
    lane = sim.lanes[0]
    lingering = frozenset({"acquirer_unhealthy"})  # a case above may leave its window
    await within(sim, "healthy before the fault", lambda: healthy(lane, lingering), HEAL_WITHIN_S)
    assert lane.daemon is not None and lane.uplink_link is not None
    daemon, where = lane.daemon, f"127.0.0.1:{lane.uplink_link.port}"
    await sim.faults.apply("uplink_down", True, 1)
    try:
        await eventually(lambda: "uplink_down" in alarms(lane), within=30.0, what="uplink_down")
        text = alarms(lane)["uplink_down"]
        assert text.startswith(f"back-office link down: no uplink connection to the broker {where}")
        assert "broker_down" not in alarms(lane) and daemon.link.connected
        await eventually(lambda: in_health(lane, "uplink_down"), within=10.0, what="in health")
        before = set(lane.records_written)
        served = len(lane.outcomes)
        lane.join(paying(sim, "token"))
        await lane.drained()
        assert lane.outcomes[served].passed, lane.outcomes[served]
        (kept,) = set(lane.records_written) - before
        assert (await daemon.forwarder.status()).backlog >= 1
        assert kept not in sim.backoffice.ingested_ids(lane.lane_id)
    finally:
        await sim.faults.apply("uplink_down", False, 1)
    await eventually(lambda: "uplink_down" not in alarms(lane), within=30.0, what="cleared")
    await within(sim, "healed", lambda: healthy(lane, lingering), HEAL_WITHIN_S)
    await eventually(
        lambda: kept in sim.backoffice.ingested_ids(lane.lane_id), within=30.0, what="ingested"
    )
    assert sim.faults.active == {}


def in_health(lane: SimLane, code: str) -> bool:
    """The alarm is active in the lane's health message (lane/{id}/health), with the text the
    lane raised it with (as much of it as the message holds)."""
    assert lane.daemon is not None
    text = alarms(lane).get(code)
    entries = lane.daemon.health.message().alarms
    return bool(text) and any(
        a.code == code and a.active and a.message == text[:MAX_TEXT] for a in entries
    )


def no_charge_kept(sim: Simulator, lane: SimLane) -> bool:
    """Every WeChat Pay charge kept is a paid passage's; the one the lane gave up (its record
    says declined) was reversed."""
    fake = sim.wechatpay()
    assert fake is not None
    paid = {
        out_trade_no(r.draft.payment_id)
        for r in lane.records_written.values()
        if r.draft.payment_id is not None and r.draft.auth.result is AuthResult.APPROVED
    }
    charged = [p for p in fake.payments() if p["charged"]]
    gave_up = [p for p in charged if p["payment_id"] not in paid]
    return bool(gave_up) and all(p["reversed"] for p in gave_up)
