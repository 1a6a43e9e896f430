"""Faults an operator (dashboard button) or a scenario timeline (TOML) injects into the simulator.

The catalogue is data: each fault has a name, a label, whether it hits the whole plaza (back
office, acquirer) or one lane (barrier, camera), whether it is a one-shot event (a burst of bad
codes) and its parameters with defaults. `check_params` validates parameters the same way for
both callers, so a typo in a scenario file and a bad POST from the dashboard get the same
message. `FaultController` applies faults to a running simulator.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import rsa

from lane.wire import topics
from sim.acquirer_faults import Outage
from sim.plaza import Plaza
from sim.wechatpay_fake import CertificateFault

log = logging.getLogger("lane.sim.faults")

Scope = Literal["plaza", "lane"]
Param = float | str


class FaultError(ValueError):
    """A fault name, lane or parameter that cannot be applied (with what is wrong)."""


@dataclass(frozen=True)
class NumberParam:
    default: float
    low: float
    high: float


@dataclass(frozen=True)
class ChoiceParam:
    default: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class FaultSpec:
    name: str
    label: str
    scope: Scope
    description: str
    one_shot: bool = False
    params: Mapping[str, NumberParam | ChoiceParam] = field(default_factory=dict)


FAULTS: dict[str, FaultSpec] = {
    spec.name: spec
    for spec in (
        FaultSpec(
            "backoffice_offline",
            "Cut back-office link",
            "plaza",
            "the ingest leaves the broker: records pile up in each lane's queue, drain after",
        ),
        FaultSpec(
            "uplink_down",
            "Lane's uplink down",
            "lane",
            "the lane's uplink connection (its road to the back office) goes down, its barrier"
            " link stays up: payments go on, records queue on disk (uplink_down)",
        ),
        FaultSpec(
            "acquirer_outage",
            "Acquirer outage",
            "plaza",
            "the acquirer refuses connections (or answers 503): online codes follow the policy",
            params={"mode": ChoiceParam("refuse", ("refuse", "503"))},
        ),
        FaultSpec(
            "acquirer_slow",
            "Acquirer slow",
            "plaza",
            "lognormal acquirer latency; a tail beyond the 2 s budget times out",
            params={
                "median_ms": NumberParam(1200.0, 1.0, 60_000.0),
                "p99_ms": NumberParam(4000.0, 1.0, 120_000.0),
            },
        ),
        FaultSpec(
            "acquirer_declines",
            "Acquirer declines",
            "plaza",
            "a share of online payments is declined",
            params={"rate": NumberParam(0.3, 0.0, 1.0)},
        ),
        FaultSpec(
            "acquirer_slow_body",
            "Acquirer answers stall",
            "plaza",
            "a share of answers sends its headers, then its body a byte every byte_ms: calls"
            " time out within their budget, payments in doubt are reversed once answers flow",
            params={
                "rate": NumberParam(1.0, 0.0, 1.0),
                "byte_ms": NumberParam(1000.0, 1.0, 60_000.0),
            },
        ),
        FaultSpec(
            "acquirer_cut_body",
            "Acquirer answers cut",
            "plaza",
            "a share of answers sends its headers and half its body, then the connection"
            " closes: the network counts as unreachable (payment_<network>)",
            params={"rate": NumberParam(1.0, 0.0, 1.0)},
        ),
        FaultSpec(
            "wechatpay_rotation",
            "WeChat Pay rotates its certificate",
            "plaza",
            "a new platform certificate signs WeChat Pay's answers; lanes download it once",
            one_shot=True,
            params={"overlap": ChoiceParam("keep", ("keep", "end"))},
        ),
        FaultSpec(
            "wechatpay_certificates_broken",
            "WeChat Pay certificate download broken",
            "plaza",
            "GET /v3/certificates fails or cannot be trusted: a lane that meets a new"
            " certificate refuses its answers (wechatpay_certificates)",
            params={
                "mode": ChoiceParam(
                    "tampered",
                    tuple(m.value for m in CertificateFault if m is not CertificateFault.NONE),
                )
            },
        ),
        FaultSpec(
            "refund_refused",
            "Refunds refused",
            "plaza",
            "every network refuses the metro exits' partial refunds (the merchant's balance is"
            " short): refund_failing, retried until taken",
        ),
        FaultSpec(
            "refund_unpaid",
            "WeChat Pay refunds end unpaid",
            "plaza",
            "WeChat Pay takes each new refund and ends it ABNORMAL (the payer's card is closed)"
            " or CLOSED: refund_unpaid; off, the merchant refunds the ABNORMAL ones by hand",
            params={"mode": ChoiceParam("abnormal", ("abnormal", "closed"))},
        ),
        FaultSpec("barrier_stuck", "Barrier stuck", "lane", "acks commands, never moves"),
        FaultSpec(
            "barrier_stuck_open",
            "Barrier stuck open",
            "lane",
            "the boom rises for the next vehicle and never comes down (closes acked, not done)",
        ),
        FaultSpec("barrier_offline", "Barrier offline", "lane", "the device leaves the broker"),
        FaultSpec("barrier_no_ack", "Barrier no ack", "lane", "commands are ignored"),
        FaultSpec("barrier_slow_ack", "Barrier slow ack", "lane", "acks arrive seconds late"),
        FaultSpec("barrier_fault", "Barrier fault", "lane", "the device reports a fault"),
        FaultSpec(
            "barrier_garbled",
            "Barrier garbled",
            "lane",
            "the device's acks, states and snapshots do not decode (barrier_unreadable)",
        ),
        FaultSpec("camera_blackout", "Camera blackout", "lane", "frames go black"),
        FaultSpec(
            "publish_refused",
            "Broker refuses the lane's records",
            "lane",
            "the broker's ACL, reloaded, refuses the lane's uplink records topic: they are kept"
            " and retried (publish_refused); off, the ACL grants it again",
        ),
        FaultSpec(
            "keyset_lapsed",
            "Key set with lapsed token keys",
            "plaza",
            "the plaza's key set is replaced by a newer one whose token key expired an hour ago:"
            " offline tokens are refused (keyset_no_token_key); off, a good set is issued",
        ),
        FaultSpec(
            "broker_down",
            "Broker down",
            "plaza",
            "the plaza's MQTT broker stops: every lane, device and the back office lose it",
        ),
        FaultSpec(
            "queue_high_water",
            "Queue high water",
            "lane",
            "the lane's record queue quota is cut to just above what it holds (disk pressure)",
        ),
        FaultSpec(
            "code_burst",
            "Burst of bad codes",
            "lane",
            "vehicles showing replayed and forged codes join the queue now",
            one_shot=True,
            params={
                "count": NumberParam(5.0, 1.0, 100.0),
                "kind": ChoiceParam("mixed", ("mixed", "replay", "forged")),
            },
        ),
    )
}
REFUND_REFUSAL = "seller_balance_not_enough"  # the networks' usual no to a refund
BARRIER_FAULTS = {
    "barrier_stuck": "stuck",
    "barrier_stuck_open": "stuck_open",
    "barrier_offline": "offline",
    "barrier_no_ack": "no_ack",
    "barrier_slow_ack": "slow_ack",
    "barrier_fault": "fault",
    "barrier_garbled": "garbled",
}


def spec_of(name: str) -> FaultSpec:
    try:
        return FAULTS[name]
    except KeyError:
        raise FaultError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}") from None


def check_params(name: str, params: Mapping[str, Any]) -> dict[str, Param]:
    """The fault's parameters with defaults filled in; FaultError names the bad one."""
    spec = spec_of(name)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        known = ", ".join(spec.params) or "none"
        raise FaultError(f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {known}")
    out: dict[str, Param] = {}
    for key, rule in spec.params.items():
        value = params.get(key, rule.default)
        if isinstance(rule, NumberParam):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or not rule.low <= value <= rule.high:
                raise FaultError(
                    f"{name}: {key} must be a number within {rule.low:g}..{rule.high:g},"
                    f" not {value!r}"
                )
            out[key] = float(value)
        else:
            if value not in rule.choices:
                raise FaultError(f"{name}: {key} must be one of {', '.join(rule.choices)}")
            out[key] = str(value)
    if name == "acquirer_slow" and float(out["median_ms"]) > float(out["p99_ms"]):
        raise FaultError("acquirer_slow: median_ms must not exceed p99_ms")
    return out


def catalogue() -> list[dict[str, Any]]:
    """The faults as JSON for the dashboard's buttons."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "scope": s.scope,
            "description": s.description,
            "one_shot": s.one_shot,
            "params": {k: p.default for k, p in s.params.items()},
        }
        for s in FAULTS.values()
    ]


@dataclass(frozen=True)
class ActiveFault:
    name: str
    lane: str | None  # None: the plaza
    params: Mapping[str, Param]
    since: float  # simulator time (simulated seconds) when applied


class FaultController:
    """Turns fault names into actions on the running simulator; remembers what is active."""

    def __init__(self, sim: Plaza) -> None:
        self.sim = sim
        self.active: dict[tuple[str, str | None], ActiveFault] = {}
        self.history: list[dict[str, Any]] = []

    def lanes_for(self, name: str, lane: int | None) -> list[int | None]:
        """Lane indexes (0-based) a fault applies to: None for plaza faults, every lane if
        `lane` is None, else the one named (1-based, as shown to operators)."""
        spec = spec_of(name)
        if spec.scope == "plaza":
            return [None]
        n = len(self.sim.lanes)
        if lane is None:
            return list(range(n))
        if not 1 <= lane <= n:
            raise FaultError(f"{name}: lane {lane} does not exist (lanes 1..{n})")
        return [lane - 1]

    async def apply(
        self,
        name: str,
        on: bool = True,
        lane: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Apply (on) or clear (off) a fault; returns a line per thing done. FaultError if bad."""
        spec = spec_of(name)
        values = check_params(name, params or {})
        if spec.one_shot and not on:
            raise FaultError(f"{name} is a one-shot event: there is nothing to clear")
        done = []
        for index in self.lanes_for(name, lane):
            lane_id = None if index is None else self.sim.lanes[index].lane_id
            await self._apply_one(name, on, index, values)
            key = (name, lane_id)
            if spec.one_shot:
                pass
            elif on:
                self.active[key] = ActiveFault(name, lane_id, values, self.sim.sim_time())
            else:
                self.active.pop(key, None)
            what = f"{name} {'on' if on else 'off'}" + (f" at {lane_id}" if lane_id else "")
            done.append(what)
            self.history.append(
                {
                    "t": round(self.sim.sim_time(), 1),
                    "fault": name,
                    "on": on,
                    "lane": lane_id,
                    "params": dict(values),
                }
            )
            log.warning("fault injected", extra={"fault": name, "on": on, "lane": lane_id})
        return done

    async def _apply_one(
        self, name: str, on: bool, index: int | None, values: Mapping[str, Param]
    ) -> None:
        sim = self.sim
        if name == "backoffice_offline":
            if not on:
                # What piled up is on record before the drain starts (the sampler is periodic).
                for lane in sim.lanes:
                    await lane.sample_uplink()
            await (sim.backoffice.cut() if on else sim.backoffice.restore())
        elif name == "broker_down":
            assert sim.broker is not None
            await asyncio.to_thread(sim.broker.stop if on else sim.broker.start)
        elif name == "acquirer_outage":
            outages = (Outage(mode="503" if values["mode"] == "503" else "refuse"),) if on else ()
            for server in sim.payment_servers():
                server.update_faults(outages=outages)
        elif name == "acquirer_slow":
            median = float(values["median_ms"]) if on else None
            p99 = float(values["p99_ms"]) if on else None
            for server in sim.payment_servers():
                server.update_faults(latency_median_ms=median, latency_p99_ms=p99)
        elif name == "acquirer_declines":
            for server in sim.payment_servers():
                server.update_faults(decline_rate=float(values["rate"]) if on else 0.0)
        elif name == "acquirer_slow_body":
            for server in sim.payment_servers():
                server.update_faults(
                    slow_body_rate=float(values["rate"]) if on else 0.0,
                    slow_body_ms=float(values["byte_ms"]),
                )
        elif name == "acquirer_cut_body":
            for server in sim.payment_servers():
                server.update_faults(cut_body_rate=float(values["rate"]) if on else 0.0)
        elif name == "refund_refused":
            for server in sim.payment_servers():
                server.update_faults(refund_refused=REFUND_REFUSAL if on else None)
        elif name == "keyset_lapsed":
            await asyncio.to_thread(sim.issue_keyset, on)
        elif name.startswith("wechatpay_") or name == "refund_unpaid":
            await _wechatpay_fault(sim, name, on, values)
        else:
            assert index is not None
            lane = sim.lanes[index]
            if name in BARRIER_FAULTS:
                assert lane.device is not None
                if on:
                    # The device has one fault at a time: the new one replaces the others.
                    for other in BARRIER_FAULTS:
                        self.active.pop((other, lane.lane_id), None)
                    lane.device.set_fault(BARRIER_FAULTS[name])
                elif lane.device.fault == BARRIER_FAULTS[name]:
                    lane.device.set_fault(None)
            elif name == "camera_blackout":
                assert lane.camera is not None
                lane.camera.blackout(on)
            elif name == "publish_refused":
                topic = topics.uplink_records(lane.lane_id)
                await asyncio.to_thread(sim.refuse_topic, topic, on)
            elif name == "queue_high_water":
                await lane.squeeze_queue(on)
            elif name == "uplink_down":
                await lane.cut_uplink(on)
            elif name == "code_burst":
                sim.burst(index, int(values["count"]), str(values["kind"]))

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"name": f.name, "lane": f.lane, "params": dict(f.params), "since": round(f.since, 1)}
            for f in self.active.values()
        ]


async def _wechatpay_fault(sim: Plaza, name: str, on: bool, values: Mapping[str, Param]) -> None:
    fake = sim.wechatpay()
    if fake is None:
        raise FaultError(f"{name}: this simulator routes no code to WeChat Pay")
    if name == "refund_unpaid":
        fake.refund_ends = str(values["mode"]).upper() if on else None
        if not on:
            fake.refund_abnormal_by_hand()
    elif name == "wechatpay_rotation":
        key = await asyncio.to_thread(rsa.generate_private_key, 65537, 2048)  # ~0.1 s of CPU
        fake.rotate_certificate(key)
        if values["overlap"] == "end":  # lanes that missed it cannot learn it (bootstrap rule)
            fake.retire_old_certificates()
    else:
        fake.certificate_fault = (
            CertificateFault(str(values["mode"])) if on else CertificateFault.NONE
        )


@dataclass(frozen=True)
class TimelineStep:
    """At `at_s` simulated seconds apply `fault`; clear it at `clear_at_s` if given."""

    at_s: float
    fault: str
    clear_at_s: float | None = None
    lane: int | None = None  # 1-based; None: every lane (lane faults) or the plaza
    params: Mapping[str, Any] = field(default_factory=dict)


async def play_timeline(
    controller: FaultController, steps: list[TimelineStep], speed: float
) -> None:
    """Apply and clear faults at their simulated times (run as a task; cancel to stop)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    actions: list[tuple[float, int, TimelineStep, bool]] = []
    for i, step in enumerate(steps):
        actions.append((step.at_s, i, step, True))
        if step.clear_at_s is not None:
            actions.append((step.clear_at_s, i, step, False))
    actions.sort(key=lambda a: (a[0], a[1], a[3]))
    for at_s, _, step, on in actions:
        wait = start + at_s / speed - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            await controller.apply(step.fault, on, step.lane, step.params)
        except FaultError as exc:  # validated up front; a lane that vanished is still logged
            log.error("timeline fault not applied", extra={"fault": step.fault, "error": str(exc)})
