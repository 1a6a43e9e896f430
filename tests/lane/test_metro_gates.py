"""A metro line against the real things: two lane daemons on the session mosquitto (a
`transit-entry` gate at station S01 and a `transit-exit` gate at S03, both on one line), device
emulators, the SQLite queues, tap stores and replay stores, and the back office's ingest. A
passenger taps in at S01 with a token (charged the entry gate's flat fare) and out at S03 with
another token of the same account: charged the matrix fare less what the tap-in charged, so
the two pay the trip's fare; the tap_out record names S01, the tap-in's trip id and what the
tap-in paid. The same
tap-in cannot exit twice; a passenger with no tap-in pays the maximum fare, flagged. A passenger
paying with a dynamic wallet code (new digits at every showing) through the simulated acquirer
over HTTP pays the maximum fare at the exit, then is refunded down to the trip's fare once the
acquirer names the payer; a refund the acquirer refuses is retried, alarmed, and clears. The
back office hears how each refund ended (a `refund` record) and lists the one still owed
(`lane refund-trail`) until it is made. A gate's refund of a tap (a passenger it never let
through) is heard by the line's other gates (a third gate, an exit at S02): the tap-in its
tap-out closed is open again there, a refunded tap-in prices nothing. A demo folder read to its
end closes an exit gate only once the code it held for pricing is decided."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import pytest
from mqtt_kit import sender
from polling import eventually
from test_lane_daemon import show
from test_lane_peers import REFUSED
from test_road_lanes import Road, RoadLane, eventually_value, road, running_back_office

from lane.auth.fares import load_tariff
from lane.auth.passes import pass_key
from lane.auth.tokens import issue_compact_token
from lane.core.names import AuthResult, Method, RecordKind
from lane.core.records import AuthInfo, RecordDraft
from lane.tap_desk import TapDesk
from lane.transport.mqtt import MqttLink
from scanner.sources import ImageFolderSource
from sim.acquirer import AcquirerServer
from sim.camera import frame_for
from sim.codes import KID, CodeFactory
from uplink.records import Record
from uplink.refunds import RefundTrail, open_refunds
from uplink.sqlite_store import SqliteIngestStore
from uplink.trips import open_trips

__all__ = ["road"]  # the fixture, shared with the closed road's test

METRO = Path(__file__).resolve().parents[2] / "deploy" / "tariff.metro.example.toml"
# The entry gates charge their built-in flat fare, in the line's currency.
ENTRY_FARES = {"currency": "CNY"}


def token(road: Road, account: str, iat: int) -> str:
    """A token of `account` (the phone refreshes it: another iat, another token)."""
    return issue_compact_token(road.codes.key, KID, account, iat, iat + 60)


async def gates(road: Road) -> tuple[RoadLane, RoadLane]:
    line = {"line": f"L{road.run_id}"}
    auth = {"keyset": str(road.keyset)}
    entry = await road.lane(
        road.lane_id("S01/g"), "transit-entry", auth=auth, metro=line, fares=ENTRY_FARES
    )
    exit_gate = await road.lane(
        road.lane_id("S03/x"), "transit-exit", auth=auth, metro=line, fares={"tariff": str(METRO)}
    )
    return entry, exit_gate


async def through(gate: RoadLane, code: str) -> dict[str, Any]:
    """The passenger shows `code` until the gate opens, walks through; returns the record."""
    opened = len(gate.named("barrier_opened"))
    await show(gate, code, lambda: len(gate.named("barrier_opened")) > opened)
    await gate.device.set_sensor("light_curtain", True)
    await gate.device.set_sensor("light_curtain", False)
    await eventually(lambda: gate.daemon.runner.state.passage is None, what="the gate closed")
    paid = [r for r in (f["record"] for f in gate.named("record"))
            if r["auth"]["result"] == "approved"]  # fmt: skip
    return paid[-1]


def ingested(store: SqliteIngestStore, kind: str) -> list[Record]:
    records = (Record.decode(data) for data in store.records_between(0, 2**62))
    return [r for r in records if r.draft.kind == kind]


async def test_a_passenger_pays_the_fare_from_the_tap_in_station_once(road: Road) -> None:
    store = await running_back_office(road)
    entry, exit_gate = await gates(road)
    taps = exit_gate.daemon.road.taps
    assert taps is not None
    tariff = load_tariff(METRO)
    now = int(time.time())

    tap_in = await through(entry, token(road, "rider-1", now))
    assert (tap_in["kind"], tap_in["account_ref"]) == ("tap_in", "rider-1")
    await eventually(lambda: taps.store.count() == 1, what="the tap-in heard at the exit gate")

    tap_out = await through(exit_gate, token(road, "rider-1", now - 1))
    fare = tariff.trip_fare(1, "S01", "S03", time.time()).amount_minor
    paid_in = tap_in["amount_minor"]
    assert 0 < paid_in < fare
    trip = uuid.UUID(tap_in["record_id"]).hex
    # In and out together pay the trip's fare, once.
    assert (tap_out["kind"], tap_out["amount_minor"], tap_out["entry_plaza"]) == (
        "tap_out", fare - paid_in, "S01"
    )  # fmt: skip
    assert tap_out["pass_id"] == trip and tap_out["flags"] == [f"entry_paid:{paid_in}"]
    # The first pricing is this tap-out's (the code, still held up while the passenger walks
    # through, may be read and priced again: its token is then refused as used).
    priced = exit_gate.named("trip_priced")[0]
    assert (priced["outcome"], priced["amount_minor"]) == ("charged", fare - paid_in)

    # Out again with the same account and no new tap-in: that tap-in has exited.
    again = await through(exit_gate, token(road, "rider-1", now - 2))
    farthest = tariff.farthest_fare(1, "S03", time.time()).amount_minor
    assert (again["amount_minor"], again["pass_id"]) == (farthest, trip)
    assert "pass_used" in again["flags"]

    # A passenger who never tapped in: the maximum fare from this station, flagged.
    stranger = await through(exit_gate, token(road, "rider-2", now))
    assert (stranger["amount_minor"], stranger["entry_plaza"], stranger.get("pass_id")) == (
        farthest, None, None
    )  # fmt: skip
    assert "no_pass" in stranger["flags"]

    # The back office has the tap-in and the tap-outs, the first naming S01 and the trip.
    outs = await eventually_value(lambda: _outs(store, 3))
    assert [(r.draft.entry_plaza, r.draft.pass_id) for r in outs[:1]] == [("S01", trip)]
    assert [r.record_id for r in ingested(store, "tap_in")] == [tap_in["record_id"]]
    ledger = open_trips(store)  # `lane trips`: nobody is left inside
    assert (ledger.open_trips, ledger.closed) == ((), 1)


async def test_a_locked_taps_store_charges_the_maximum_says_so_and_clears_when_released(
    road: Road,
) -> None:
    """A tap-in the exit gate could not keep was only logged: its passenger paid the maximum
    fare at the exit and the gate looked healthy."""
    entry, exit_gate = await gates(road)
    taps = exit_gate.daemon.road.taps
    assert taps is not None
    alarms = exit_gate.daemon.runner.alarms
    path = exit_gate.daemon.config.lane.data_dir / "taps.sqlite3"
    farthest = load_tariff(METRO).farthest_fare(1, "S03", time.time()).amount_minor
    now = int(time.time())
    # Another process takes the write lock and keeps it (a stuck backup, a sqlite3 shell).
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        await through(entry, token(road, "rider-1", now))
        # Seen: SQLite's own wait runs out and the alarm names the file and why.
        await eventually(lambda: "taps_store_error" in alarms, within=30)
        assert alarms["taps_store_error"].startswith(
            f"tap-ins not kept (their exits here pay the maximum fare): taps store {path}:"
            " database is locked"
        )
        # Safe: the passenger whose tap-in was lost pays the maximum fare, flagged, never less.
        out = await through(exit_gate, token(road, "rider-1", now - 1))
        assert (out["amount_minor"], out["flags"]) == (farthest, ["no_pass"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Clears by itself: the gate writes to the store every second while it fails.
    await eventually(lambda: "taps_store_error" not in alarms, within=15)
    assert taps.store.count() == 0  # the probe leaves nothing behind
    # And keeps the next tap-in.
    await through(entry, token(road, "rider-2", now))
    await eventually(lambda: taps.store.count() == 1, what="the next tap-in kept")


async def test_a_demo_folder_s_last_code_held_while_its_trip_is_priced_still_pays(
    road: Road, tmp_path: Path
) -> None:
    """An exit gate reading an image folder (a demo source): its last code is held while the
    trip is priced, and its tap store is slow to answer (another process holds its write lock,
    and a tap-in heard from the line waits on it). The folder's end must not close the gate
    before that code is decided: priced under the fault, it would be refused though read."""
    line = {"line": f"L{road.run_id}"}
    auth = {"keyset": str(road.keyset)}
    entry = await road.lane(
        road.lane_id("S01/g"), "transit-entry", auth=auth, metro=line, fares=ENTRY_FARES
    )
    now = int(time.time())
    folder = tmp_path / "exit-camera"
    folder.mkdir()
    cv2.imwrite(str(folder / "a-empty.png"), frame_for(None, "clear", rng=1))
    cv2.imwrite(str(folder / "b-phone.png"), frame_for(token(road, "rider-1", now - 1), "clear"))
    shown = threading.Event()  # the folder waits after its first image until the test says

    def pace(_s: float) -> None:
        shown.wait(30)

    source = ImageFolderSource(folder, fps=1.0, sleep=pace)
    exit_gate = await road.lane(road.lane_id("S03/x"), "transit-exit", auth=auth, metro=line,
                                fares={"tariff": str(METRO)}, source=source)  # fmt: skip
    daemon = exit_gate.daemon
    holder = sqlite3.connect(daemon.config.lane.data_dir / "taps.sqlite3", isolation_level=None)
    try:
        await eventually(lambda: daemon.pipeline.stats().frames_in == 1, within=15)
        holder.execute("BEGIN IMMEDIATE")
        # A tap-in heard at the exit gate waits on the lock, holding the store (SQLite's 10 s).
        await through(entry, token(road, "rider-1", now))
        shown.set()  # the passenger's code, then the folder's end
        await eventually(lambda: daemon.pipeline.stats().source_ended)
        await eventually(lambda: exit_gate.named("trip_priced"), within=20)
        holder.execute("ROLLBACK")
        # The code held is decided: paid, the gate opens for the passenger.
        await eventually(lambda: exit_gate.named("barrier_opened"), within=10)
        alarms = daemon.runner.alarms
        ended = "camera reads no codes: camera source ended: end of folder"
        await eventually(lambda: alarms.get("camera_blackout", "").startswith(ended))
    finally:
        shown.set()
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


def _outs(store: SqliteIngestStore, n: int) -> list[Any] | None:
    """The approved tap-outs (a code read again after its gate opened is refused and recorded
    declined)."""
    approved = (r for r in ingested(store, "tap_out") if r.draft.auth.result == "approved")
    outs = sorted(approved, key=lambda r: r.ts_us)
    return outs if len(outs) == n else None


def approved(gate: RoadLane) -> list[dict[str, Any]]:
    records = (f["record"] for f in gate.named("record"))
    return [r for r in records if r["auth"]["result"] == "approved"]


async def refunded(gate: RoadLane, code: str) -> None:
    """The gate drops commands as the passenger pays: it never opens, and `pass_dwell_s` after
    its open the payment is refunded (paid_not_passed); then the gate works again."""
    paid = len(approved(gate))
    gate.device.set_fault("no_ack")
    await show(gate, code, lambda: len(approved(gate)) > paid)
    await eventually(lambda: gate.named("paid_not_passed"), within=15)
    gate.device.set_fault(None)
    runner = gate.daemon.runner
    await eventually(lambda: "barrier_no_ack" not in runner.alarms and runner.idle(), within=10)
    gate.notes.clear()


async def slow_gates(road: Road) -> tuple[RoadLane, RoadLane, RoadLane]:
    """An entry gate at S01 and exit gates at S03 and S02, each refunding a passenger it has
    not let through within 3 s."""
    line = {"line": f"L{road.run_id}"}
    auth = {"keyset": str(road.keyset)}
    rules = {"pass_dwell_s": 3.0, "probe_s": 0.5}
    exit_fares = {"tariff": str(METRO)}
    entry = await road.lane(road.lane_id("S01/g"), "transit-entry", rules, auth=auth, metro=line,
                            fares=ENTRY_FARES)  # fmt: skip
    exit_gate = await road.lane(road.lane_id("S03/x"), "transit-exit", rules, auth=auth,
                                metro=line, fares=exit_fares)  # fmt: skip
    other = await road.lane(road.lane_id("S02/x"), "transit-exit", rules, auth=auth, metro=line,
                            fares=exit_fares)  # fmt: skip
    return entry, exit_gate, other


def desk(gate: RoadLane) -> TapDesk:
    taps = gate.daemon.road.taps
    assert taps is not None
    return taps


async def test_a_passenger_refunded_at_either_gate_is_not_held_to_what_the_refund_undid(
    road: Road,
) -> None:
    """Refunded at the entry gate (not let in), the passenger taps in again there: not refused
    as passback. Refunded at the exit gate (not let out), they tap out again there: priced
    from their tap-in, not `Tap-in already used` at the maximum fare. The back office's
    ledger (`lane trips`) agrees: the refunded tap-out left the trip open, the second one
    closed it, and no tap-out is unmatched."""
    store = await running_back_office(road)
    entry, exit_gate, _ = await slow_gates(road)
    taps = desk(exit_gate)
    now = int(time.time())
    await refunded(entry, token(road, "rider-1", now))
    tap_in = await through(entry, token(road, "rider-1", now - 1))
    assert "passback" not in tap_in["flags"]
    # The tap-in, its refund (the tap-in dropped) and the second tap-in.
    await eventually(lambda: taps.received == 3 and taps.store.count() == 1,
                     what="the tap-ins and the refund heard at the exit gate")  # fmt: skip

    fare = load_tariff(METRO).trip_fare(1, "S01", "S03", time.time()).amount_minor
    trip = uuid.UUID(tap_in["record_id"]).hex
    await refunded(exit_gate, token(road, "rider-1", now - 2))
    # The tap-out and its refund ingested: the passenger is still inside.
    await eventually(lambda: len(ingested(store, "tap_out")) == 2, what="the refund ingested")
    ledger = open_trips(store)
    assert ([t.pass_id for t in ledger.open_trips], ledger.unmatched_exits) == ([trip], ())
    tap_out = await through(exit_gate, token(road, "rider-1", now - 3))
    paid_in = tap_in["amount_minor"]
    assert (tap_out["amount_minor"], tap_out["pass_id"], tap_out["flags"]) == (
        fare - paid_in, trip, [f"entry_paid:{paid_in}"]
    )  # fmt: skip
    await eventually(lambda: len(ingested(store, "tap_out")) == 3, what="the tap-out ingested")
    ledger = open_trips(store)  # out once: the refunded entry's trip and this one, closed
    assert (ledger.open_trips, ledger.unmatched_exits, ledger.closed) == ((), (), 2)


async def test_a_refund_is_heard_by_every_gate_of_the_line(road: Road) -> None:
    """A gate's refund of a tap was known at that gate only: refunded at S03's exit (not let
    out), the passenger tapping out at S02 paid the maximum (`Tap-in already used`); refunded
    at the entry (not let in) and let through by hand, an exit took the refunded entry fare
    off a trip that never began."""
    entry, exit_gate, other = await slow_gates(road)
    tariff = load_tariff(METRO)
    now = int(time.time())
    # (a) Not let out at S03: out at S02 instead, the trip from S01 less the entry's part.
    tap_in = await through(entry, token(road, "rider-1", now))
    await eventually(lambda: desk(exit_gate).store.count() == 1, what="the tap-in heard")
    await refunded(exit_gate, token(road, "rider-1", now - 1))
    # The tap-in, the tap-out and its refund.
    await eventually(lambda: desk(other).received == 3, what="the refund heard at S02")
    tap_out = await through(other, token(road, "rider-1", now - 2))
    paid_in = tap_in["amount_minor"]
    fare = tariff.trip_fare(1, "S01", "S02", time.time()).amount_minor
    assert (tap_out["amount_minor"], tap_out["pass_id"], tap_out["flags"]) == (
        fare - paid_in, uuid.UUID(tap_in["record_id"]).hex, [f"entry_paid:{paid_in}"]
    )  # fmt: skip
    # Still a tap-in pays once: out at S03 now, the maximum.
    farthest = tariff.farthest_fare(1, "S03", time.time()).amount_minor
    # (A gate's own taps coming back are not counted.)
    await eventually(lambda: desk(exit_gate).received == 2, what="S02's tap-out heard at S03")
    again = await through(exit_gate, token(road, "rider-1", now - 3))
    assert (again["amount_minor"], again["flags"]) == (farthest, ["pass_used"])

    # (b) Not let in at S01 (refunded), let through by hand: no tap-in, the maximum in full.
    await refunded(entry, token(road, "rider-2", now))
    await eventually(lambda: desk(exit_gate).received == 4 and desk(exit_gate).store.count() == 1,
                     what="the tap-in and its refund heard at S03")  # fmt: skip
    out = await through(exit_gate, token(road, "rider-2", now - 1))
    assert (out["amount_minor"], out["flags"]) == (farthest, ["no_pass"])


async def test_a_flat_fare_gate_without_a_line_still_charges_its_flat_fare(road: Road) -> None:
    gate = await road.lane(road.lane_id("S03/f"), "transit-exit", auth={"keyset": str(road.keyset)})
    assert gate.daemon.road.taps is None
    record = await through(gate, token(road, "rider-3", int(time.time())))
    assert record["amount_minor"] == gate.daemon.runner.state.rules.fares.fare_for(1)[0]
    assert gate.named("trip_priced") == []


async def wallet_gates(road: Road) -> tuple[RoadLane, RoadLane, AcquirerServer]:
    """Both gates pay wallet codes through one simulated acquirer, over HTTP, with the line's
    account secret (the payer's account is keyed alike at every gate)."""
    acquirer = AcquirerServer()
    url = await acquirer.start()
    road.stack.push_async_callback(acquirer.stop)
    line = {"line": f"W{road.run_id}"}
    auth = {"keyset": str(road.keyset), "acquirer_url": url, "account_secret": "line-secret-" * 3}
    entry = await road.lane(
        road.lane_id("S02/w"), "transit-entry", auth=auth, metro=line, fares=ENTRY_FARES
    )
    exit_gate = await road.lane(
        road.lane_id("S03/w"), "transit-exit", auth=auth, metro=line, fares={"tariff": str(METRO)}
    )
    return entry, exit_gate, acquirer


async def test_a_dynamic_wallet_code_pays_the_trip_fare_through_a_partial_refund(
    road: Road,
) -> None:
    store = await running_back_office(road)
    entry, exit_gate, acquirer = await wallet_gates(road)
    taps = exit_gate.daemon.road.taps
    assert taps is not None
    tariff = load_tariff(METRO)
    fare = tariff.trip_fare(1, "S02", "S03", time.time()).amount_minor
    farthest = tariff.farthest_fare(1, "S03", time.time()).amount_minor
    assert fare < farthest

    # In with one code of the wallet, out with another: the digits differ, the payer does not.
    tap_in = await through(entry, acquirer.ledger.issue_code("wallet-1"))
    await eventually(lambda: taps.store.count() == 1, what="the tap-in heard at the exit gate")
    out = await through(exit_gate, acquirer.ledger.issue_code("wallet-1"))
    trip = uuid.UUID(tap_in["record_id"]).hex
    assert out["account_ref"] == tap_in["account_ref"]
    # The tap-in paid part of the trip: the exit keeps the rest, and owes back the remainder.
    paid_in = tap_in["amount_minor"]
    assert 0 < paid_in < fare
    due, back = fare - paid_in, farthest - (fare - paid_in)
    assert (out["amount_minor"], out["entry_plaza"], out["pass_id"]) == (due, "S02", trip)
    assert out["flags"] == [f"entry_paid:{paid_in}", f"charged:{farthest}", f"refunded:{back}"]
    payment = acquirer.payment(out["payment_id"])
    assert payment is not None
    await eventually(lambda: payment.refunded == back, what="the refund made")
    assert payment.request is not None and payment.request["amount_minor"] == farthest
    entry_payment = acquirer.payment(tap_in["payment_id"])
    assert entry_payment is not None and entry_payment.request is not None
    # What the rider's wallet paid in all, through the acquirer: the trip's fare.
    assert entry_payment.request["amount_minor"] + farthest - payment.refunded == fare
    made = await eventually_value(lambda: ingested(store, "refund") or None)
    assert [(r.draft.payment_id, r.draft.amount_minor, r.draft.flags[0]) for r in made] == [
        (out["payment_id"], back, "refund:made")
    ]
    assert open_refunds(store) == RefundTrail((), ())

    # A refund the acquirer refuses: the record keeps the trip's fare, the refund is owed
    # durably, retried, alarmed; once the acquirer takes refunds again it is made and clears.
    acquirer.update_faults(refund_refused="seller_balance_not_enough")
    await through(entry, acquirer.ledger.issue_code("wallet-2"))
    await eventually(lambda: taps.store.count() == 2, what="the second tap-in heard")
    second = await through(exit_gate, acquirer.ledger.issue_code("wallet-2"))
    assert second["amount_minor"] == due
    alarms = exit_gate.daemon.runner.alarms
    await eventually(lambda: "refund_failing" in alarms, what="the refund alarm")
    assert "seller_balance_not_enough" in alarms["refund_failing"]
    owed = acquirer.payment(second["payment_id"])
    assert owed is not None and owed.refunded == 0
    tries = acquirer.refund_requests
    await eventually(lambda: acquirer.refund_requests > tries + 1, what="the refund retried")
    # The back office has the tap-out and no end of its refund: owed, not made.
    trail = await eventually_value(lambda: open_refunds(store).owed or None)
    assert [(r.payment_id, r.owed_minor) for r in trail] == [(second["payment_id"], back)]
    acquirer.update_faults(refund_refused=None)
    await eventually(lambda: owed.refunded == back, within=15, what="the refund made")
    await eventually(lambda: "refund_failing" not in alarms, what="the alarm cleared")
    await eventually(lambda: open_refunds(store) == RefundTrail((), ()), what="none owed")
    assert len(ingested(store, "refund")) == 2


def answers_to_a_reread(gate: RoadLane) -> int:
    """The gate's answers to a code shown again: ignored as read again, or declined."""
    again = [n for n in gate.named("scan_ignored") if n["reason"] == "read again"]
    return len(again) + len(gate.named("declined"))


async def test_a_wallet_code_still_held_up_after_its_gate_opened_is_not_charged_again(
    road: Road,
) -> None:
    """Each passenger keeps the phone up after walking through, at either gate: the code read
    again reaches no acquirer and makes no record; nothing is declined, and the exit gate does
    not raise `acquirer_declines` (docs/core.md, "A code read again at a fare gate")."""
    entry, exit_gate, acquirer = await wallet_gates(road)
    taps = exit_gate.daemon.road.taps
    assert taps is not None
    riders = ("wallet-r1", "wallet-r2", "wallet-r3")
    for n, wallet in enumerate(riders, start=1):
        for gate in (entry, exit_gate):
            code = acquirer.ledger.issue_code(wallet)
            await through(gate, code)
            answered = answers_to_a_reread(gate)
            await show(gate, code, lambda g=gate, a=answered: answers_to_a_reread(g) > a)
        await eventually(lambda n=n: taps.store.count() == n, what="the tap-in heard")
    for gate in (entry, exit_gate):
        records = [f["record"] for f in gate.named("record")]
        assert [r["auth"]["result"] for r in records] == ["approved"] * len(riders)
        assert gate.named("declined") == []
    # One charge per showing of a code: 3 tap-ins and 3 tap-outs, none refused as used.
    assert len(acquirer.payments()) == 2 * len(riders)
    health = exit_gate.daemon.health
    await eventually(lambda: health.message().acquirer.samples >= len(riders),
                     what="the exit gate's payments counted")  # fmt: skip
    assert health.message().acquirer.decline_rate == 0.0
    assert "acquirer_declines" not in exit_gate.daemon.runner.alarms


async def test_a_tap_out_carried_over_a_restart_and_refunded_reopens_its_tap_in_everywhere(
    road: Road,
) -> None:
    """The exit gate at S03 stops between a passenger's paid tap-out and the open (its device
    drops the open; the gate stops before the ack's wait ends) and starts again owing the
    passage. Nobody shows the code within what is left of the wait: the refund (`carried`)
    names the tap-in and reopens it as a live refund does, at this gate and at the line's
    other exit gate (S02), which hears the refund: the passenger tapping out again pays the
    trip from S01 (less the tap-in's part), with no attendant, not `Tap-in already used` at
    the maximum."""
    line = {"line": f"L{road.run_id}"}
    auth = {"keyset": str(road.keyset)}
    fares = {"tariff": str(METRO)}
    entry = await road.lane(road.lane_id("S01/g"), "transit-entry", auth=auth, metro=line,
                            fares=ENTRY_FARES)  # fmt: skip
    other = await road.lane(road.lane_id("S02/x"), "transit-exit", auth=auth, metro=line,
                            fares=fares)  # fmt: skip
    exit_id = road.lane_id("S03/x")
    exit_gate = await road.lane(exit_id, "transit-exit", {"pass_dwell_s": 60.0}, auth=auth,
                                metro=line, fares=fares, barrier={"ack_timeout_s": 10})  # fmt: skip
    now = int(time.time())
    tap_in = await through(entry, token(road, "rider-1", now))
    trip = uuid.UUID(tap_in["record_id"]).hex
    await eventually(lambda: desk(exit_gate).store.count() == 1, what="the tap-in heard")

    exit_gate.device.set_fault("no_ack")  # the open is dropped: the passenger waits
    await show(exit_gate, token(road, "rider-1", now - 1), lambda: approved(exit_gate))
    [paid] = approved(exit_gate)
    assert paid["pass_id"] == trip
    await eventually(lambda: any(c.op == "open" for c in exit_gate.device.received))
    await eventually(lambda: desk(exit_gate).replay.get(pass_key(trip)) is not None,
                     what="the tap-in marked exited here")  # fmt: skip
    await eventually(lambda: desk(other).replay.get(pass_key(trip)) is not None,
                     what="the tap-out heard at S02")  # fmt: skip
    assert exit_gate.stop is not None
    await exit_gate.stop()  # owing the passenger its passage
    assert exit_gate.named("paid_not_passed") == []

    restarted = await road.lane(exit_id, "transit-exit", {"pass_dwell_s": 3.0, "probe_s": 0.5},
                                auth=auth, metro=line, fares=fares)  # fmt: skip
    await eventually(lambda: restarted.named("paid_not_passed"), within=15)
    await eventually(lambda: restarted.records("tap_out"), what="the refund record")
    [refund] = restarted.records("tap_out")
    assert refund["flags"] == ["paid_not_passed", f"record:{paid['record_id']}", "carried"]
    assert refund["pass_id"] == trip
    # Reopened here and, from the shared refund record, at S02.
    await eventually(lambda: desk(restarted).replay.get(pass_key(trip)) is None,
                     what="the tap-in reopened here")  # fmt: skip
    await eventually(lambda: desk(other).replay.get(pass_key(trip)) is None,
                     what="the tap-in reopened at S02")  # fmt: skip

    again = await through(restarted, token(road, "rider-1", now - 2))
    fare = load_tariff(METRO).trip_fare(1, "S01", "S03", time.time()).amount_minor
    paid_in = tap_in["amount_minor"]
    assert (again["amount_minor"], again["pass_id"], again["flags"]) == (
        fare - paid_in, trip, [f"entry_paid:{paid_in}"]
    )  # fmt: skip
    assert restarted.named("trip_priced")[0]["outcome"] == "charged"
    assert "attendant_needed" not in restarted.daemon.runner.alarms


async def test_bad_taps_on_the_line_are_refused_and_the_passenger_pays_from_the_real_tap_in(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, a record that is no tap, and a tap-in of the same account stamped a day ahead
    (a gate's clock far off, or a forged message) on the line's topic: each refused (the first
    of each kind with a line naming the topic); the passenger's real tap-in prices the exit
    (docs/operations.md)."""
    entry, exit_gate = await gates(road)
    taps = exit_gate.daemon.road.taps
    assert taps is not None
    topic = taps.topic
    now = int(time.time())
    approved = AuthInfo(AuthResult.APPROVED)
    ahead = RecordDraft(RecordKind.TAP_IN, "v1", 1, 0, "CNY", Method.TOKEN, "rider-1", approved)
    toll = RecordDraft(RecordKind.TOLL, "v2", 1, 100, "CNY", Method.TOKEN, "rider-1", approved)
    bad = [
        b"\xc1",
        b"\x00" * 1_000_000,
        Record(str(uuid.uuid4()), road.lane_id("S02/g"), 1, (now + 86_400) * 10**6, ahead).encode(),
        Record(str(uuid.uuid4()), road.lane_id("S02/g"), 1, now * 10**6, toll).encode(),
    ]
    noise = MqttLink(road.broker.host, road.broker.port, f"noise-{road.run_id}")
    task = asyncio.create_task(noise.run())
    try:
        await noise.wait_connected(5)
        for payload in bad:
            await noise.publish(topic, payload)
        tap_in = await through(entry, token(road, "rider-1", now))
        await eventually(lambda: taps.store.count() == 1, what="the tap-in heard at the exit gate")
        tap_out = await through(exit_gate, token(road, "rider-1", now - 1))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (tap_out["entry_plaza"], tap_out["pass_id"]) == (
        "S01",
        uuid.UUID(tap_in["record_id"]).hex,
    )
    for gate in (entry, exit_gate):  # every gate of the line refuses each one
        fields = [r.__dict__ for r in caplog.records if r.levelno >= logging.WARNING]
        lines = [
            f["msg"] for f in fields if (f.get("topic"), f.get("lane")) == (topic, gate.daemon.lane)
        ]
        # The first of each kind logged, the second counted (said a minute later).
        assert lines == ["tap message refused: malformed", "tap message refused: unsigned"]


async def test_a_forged_tap_out_or_refund_is_refused_and_the_passenger_pays_from_the_real_tap_in(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """With the line's broker account anybody can publish on `line/{line}/taps` in a gate's
    name: a tap-out closing the passenger's tap-in (unsigned, or signed with a key the key set
    does not hold) or a refund dropping it (signed by another gate's key): each refused with a
    line naming the topic, the gate it claims and why, and `peer_messages_refused`; the exit
    prices the real tap-in's trip (docs/closed-road.md, "Sharing the taps")."""
    entry, exit_gate = await gates(road)
    taps = exit_gate.daemon.road.taps
    assert taps is not None
    now = int(time.time())
    tap_in = await through(entry, token(road, "rider-1", now))
    await eventually(lambda: taps.store.count() == 1, what="the tap-in heard at the exit gate")
    entered = Record.from_map(tap_in)
    trip = uuid.UUID(entered.record_id).hex
    elsewhere = road.lane_id("S02/x")
    paid = AuthInfo(AuthResult.APPROVED)
    closing = RecordDraft(RecordKind.TAP_OUT, "v9", 1, 500, "CNY", Method.TOKEN, "rider-1", paid,
                          entry_plaza="S01", pass_id=trip)  # fmt: skip
    out = Record(str(uuid.uuid4()), elsewhere, 1, now * 10**6, closing).encode()
    undo = RecordDraft(RecordKind.TAP_IN, "v9", 1, 0, "", Method.NONE, None,
                       AuthInfo(AuthResult.NONE),
                       flags=("paid_not_passed", f"record:{entered.record_id}"))  # fmt: skip
    refund = Record(str(uuid.uuid4()), entry.daemon.lane, 9, now * 10**6, undo).encode()
    forged = [
        out,
        CodeFactory(99).lane_key(elsewhere).seal(out),
        road.codes.lane_key(road.lane_id("S02/g")).seal(refund),
    ]
    caplog.set_level(logging.INFO)
    async with sender(road.broker, f"forger-{road.run_id}") as link:
        for payload in forged:
            await link.publish(taps.topic, payload)
        alarms = exit_gate.daemon.runner.alarms
        await eventually(lambda: entry.daemon.lane in alarms.get(REFUSED, ""), what="alarmed")
    assert elsewhere in alarms[REFUSED]
    lines = [r.__dict__ for r in caplog.records if r.getMessage().startswith("tap message refused")
             and r.__dict__["lane"] == exit_gate.daemon.lane]  # fmt: skip
    assert [(f["topic"], f["from_lane"], f["reason"]) for f in lines] == [
        (taps.topic, elsewhere, "unsigned"),
        (taps.topic, elsewhere, "bad_signature"),
        (taps.topic, entry.daemon.lane, "wrong_lane"),
    ]
    tap_out = await through(exit_gate, token(road, "rider-1", now - 1))
    assert (tap_out["entry_plaza"], tap_out["pass_id"]) == ("S01", trip)
    assert not {"pass_used", "no_pass"} & set(tap_out["flags"])  # the trip, from its tap-in
