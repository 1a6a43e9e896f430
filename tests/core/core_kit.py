"""Helpers for the lane core tests: a driver that steps the machine by hand, a safety monitor
that checks the lane's invariants after every step, and a source of plausible random events.

Every step a test takes goes through `LaneDriver.feed`, so every unit test is also checked
against the safety rules and against the declared transition table of `lane.core.diagram`.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lane.core import carried, diagram, metro, static_codes
from lane.core import events as ev
from lane.core.actions import (
    Abandon,
    Action,
    Authorise,
    ClearAlarm,
    CloseBarrier,
    DropLatch,
    IssuePass,
    KeepLatch,
    MarkPassUsed,
    OpenBarrier,
    PassageServed,
    Persist,
    PriceTrip,
    QueryDevice,
    RaiseAlarm,
    ReleasePass,
    Settle,
    ShowOnDisplay,
)
from lane.core.display import LANE_CLOSED
from lane.core.machine import initial_state, next_deadline, step
from lane.core.names import KEPT_LATCHES, Alarm, DeviceWords
from lane.core.records import credential_of
from lane.core.state import FlatFares, LaneMode, LaneRules, LaneState, Paying, Phase, phase
from lane.core.trip import Priced, TapOut, Ticket

T = TypeVar("T")

CODE = "281234567890123456"
FARES = FlatFares(((1, 250), (2, 480), (3, 1275)), currency="EUR")
SAFETY_SENSORS = ("safety_loop", "light_curtain")
PASSAGE_RESULTS = frozenset({"approved", "deferred", "manual"})
# A closed road's entry lane opens for an `entry` record (result none, amount 0).
FREE_PASSAGE = ("entry", "none")
EXITS = ("exit", "tap_out")  # the record kinds that mark a pass (a metro tap-in) used
# A code reaches the core this long after its frame was taken (the decode).
FRAME_AGE_S = 0.05
SINCE = "2026-12-01T10:00:00.000000Z"  # when a fault carried over a restart was raised
# What each kept fault's file says of it (lane.barrier_latches).
KEPT_DETAILS = {
    Alarm.BARRIER_STUCK: "commanded open, device reports closed after 4 s",
    Alarm.BARRIER_NO_ACK: "open v1/open",
}
# A payment carried over a restart (lane.core.carried): its code is one the random runs show.
CARRIED_TEXT = "HC1:token-a"
CARRIED_RECORD = "rec-carried"


# Every event the core can be told: each class lane.core.events defines (not a hand list, so
# a new event the walks do not draw fails tests/core/test_invariants.py's coverage test).
EVENT_TYPES = frozenset(
    kind
    for kind in vars(ev).values()
    if isinstance(kind, type) and dataclasses.is_dataclass(kind) and kind.__module__ == ev.__name__
)


def rules(mode: LaneMode = LaneMode.TOLL, **overrides: Any) -> LaneRules:
    overrides.setdefault("lane_id", "p01/l01")
    return LaneRules(fares=FARES, mode=mode, **overrides)


def code_of(vehicle_id: str | None) -> str:
    """The kit's payment code of a driver: each holds their own (the code the vehicle before
    paid with is not the next one's: lane.core.before_arrival), the first one's, v1's (or with
    nobody at the pay point) being CODE."""
    if vehicle_id in (None, "v1"):
        return CODE
    return f"28{zlib.crc32(str(vehicle_id).encode()):016d}"


def of_type(actions: Sequence[Action], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def one(actions: Sequence[Action], kind: type[T]) -> T:
    found = of_type(actions, kind)
    assert len(found) == 1, f"expected one {kind.__name__}, got {found} in {actions}"
    return found[0]


def displayed(actions: Sequence[Action]) -> list[str]:
    return [line for a in of_type(actions, ShowOnDisplay) for line in a.lines]


# --- the safety monitor ----------------------------------------------------------------------


@dataclass
class AuthTrack:
    approved_persist: bool = False
    record: str = "none"  # of the approved record: none | pending | failed | durable
    declined_persist: bool = False
    settled: bool = False
    abandoned: bool = False


@dataclass
class SafetyMonitor:
    """Checks the lane's safety rules on every step; raises AssertionError on a breach."""

    persists: dict[str, list[Persist]] = field(default_factory=dict)
    durable_vehicles: set[str] = field(default_factory=set)
    sensors: dict[str, bool] = field(default_factory=dict)
    auths: dict[str, AuthTrack] = field(default_factory=dict)
    cmd_owner: dict[str, tuple[str, str]] = field(default_factory=dict)
    finished_cmds: set[str] = field(default_factory=set)
    transitions: set[tuple[Phase, str, Phase]] = field(default_factory=set)
    tries: dict[str, int] = field(default_factory=dict)
    authorised: dict[str, Authorise] = field(default_factory=dict)
    declined_codes: set[tuple[str, str]] = field(default_factory=set)
    alarms: set[str] = field(default_factory=set)
    exited_passes: set[str] = field(default_factory=set)  # exit records durable
    marked: set[str] = field(default_factory=set)  # MarkPassUsed sent
    priced: dict[str, int | None] = field(default_factory=dict)
    no_ack_carried: bool = False  # barrier_no_ack raised by a LatchCarried, not acked since
    # Paid records the lane owes a passage (durable, or carried over a restart) until the
    # vehicle is through (PassageServed) or refunded (a Persist that ends it).
    owed: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    owes: dict[str, str] = field(default_factory=dict)  # persist id -> credential, pending
    passages: dict[tuple[str, str], int] = field(default_factory=dict)  # passages per record
    # A paid exit's record id -> the pass whose used mark is its own (not priced pass_used).
    own_marks: dict[str, str] = field(default_factory=dict)
    # A transit-entry tap-in on record, not refunded: record id -> (account, when durable).
    tap_ins: dict[str, tuple[str, float]] = field(default_factory=dict)

    def observe(
        self,
        before: LaneState,
        event: ev.Event,
        now: float,
        after: LaneState,
        actions: list[Action],
    ) -> None:
        self._take_event(before, event, after)
        self._check_given_back(before, event, now, actions)
        for action in actions:
            self._take_action(action, after)
        self._check_deadline(before, event, now, after)
        # Every pass whose exit record became durable is marked used in that same step.
        assert self.exited_passes <= self.marked, self.exited_passes - self.marked
        if "attendant_needed" in self.alarms:
            waiting = after.vehicle
            assert waiting is not None, "attendant_needed raised for a vehicle no longer there"
            out_of_tries = waiting.tries >= after.rules.max_tries
            no_fare = waiting.amount_minor is None and not waiting.implicit
            trip = waiting.trip
            suspect = isinstance(trip, Priced) and trip.waits_for_attendant
            no_pass = isinstance(trip, Ticket) and trip.pass_id is None and trip.printer_error
            assert (out_of_tries or no_fare or suspect or no_pass) and not waiting.manual, waiting
            assert not waiting.committed or out_of_tries, f"waits for nobody: {waiting}"
        waiting = after.vehicle
        if waiting is not None and waiting.record_id is not None and after.blocked:
            # Paid, and a fault keeps the barrier from opening for it: it waits, paid; told to
            # use another lane it would drive off owed.
            assert LANE_CLOSED not in actions, f"a paid vehicle told the lane is closed: {after}"
        self._check_trip(after)
        self._check_carried(before, event, after, actions)
        self._check_latch(before, event, after, actions)
        self._check_stuck_open(before, event, now, after)
        self._check_no_ack(before, event, after, actions)
        self._check_static(before, event, after, actions)
        self._check_health(before, event, after, actions)
        passenger = after.vehicle
        if passenger is not None and passenger.implicit:
            # A fare-gate passenger exists only while their code is in hand; else the gate jams.
            # A metro exit's passenger waits for its tap-in to be looked up (lane.core.metro).
            busy = not isinstance(passenger.stage, Paying) or isinstance(passenger.trip, TapOut)
            assert busy, f"idle implicit passenger left at the gate: {passenger}"
        label = diagram.event_label(event)
        transition = (phase(before), label, phase(after))
        assert diagram.allows(*transition), f"transition not in the diagram table: {transition}"
        self.transitions.add(transition)

    def _check_trip(self, after: LaneState) -> None:
        """Exit lanes: the fare a vehicle pays is the one priced for its trip, never another."""
        vehicle = after.vehicle
        trip = vehicle.trip if vehicle is not None else None
        if vehicle is not None and isinstance(trip, Priced):
            assert vehicle.amount_minor == self.priced[trip.trip_id], (vehicle, trip)
        priced_exit = after.rules.mode == "toll-exit" or metro.priced_gate(after)
        if vehicle is not None and priced_exit and not vehicle.manual:
            # Nothing is charged before the trip is priced.
            assert isinstance(trip, Priced) or vehicle.amount_minor is None, vehicle

    def _check_kept(self, event: ev.Decided, was: Priced, trip: object) -> None:
        """A wallet code charged the maximum, priced again by its payer: the fare kept is that
        trip's, never above what was charged, and charged - refunded = kept."""
        if not isinstance(trip, Priced) or trip.by_payer or event.repriced is None:
            return  # not this passenger's answer, or declined: nothing kept, nothing refunded
        charged = self.priced[was.trip_id]
        assert charged is not None
        fare = event.repriced.amount_minor
        kept = charged if fare is None or not event.repriced.found else min(charged, fare)
        assert (trip.amount_minor, trip.refund_minor) == (kept, charged - kept), (event, trip)
        self.priced[trip.trip_id] = kept

    def _check_carried(
        self, before: LaneState, event: ev.Event, after: LaneState, actions: list[Action]
    ) -> None:
        """One passage per paid record (never two for one payment, a carried one included);
        a carried payment is honoured without a charge or a record of its own."""
        passage = after.passage
        if passage is not None and (
            before.passage is None or before.passage.record_id != passage.record_id
        ):
            # (A test's made-up record ids may repeat across vehicles: keyed by both.)
            key = (passage.record_id, passage.vehicle_id)
            n = self.passages[key] = self.passages.get(key, 0) + 1
            assert n == 1, f"a second passage for record {passage.record_id}: {after}"
        if isinstance(event, ev.PaidCarried) and after.carried != before.carried:
            # Owed from now on, whatever this run did with that record before: the shell says
            # so at a start only, an arbitrary run may say it of a record it ended already.
            self.owed.add(event.record_id)
            self.ended.discard(event.record_id)
            self.durable_vehicles.add(carried.lane_vehicle_id(event))
        claimed = set(before.carried) - set(after.carried)
        if claimed and isinstance(event, ev.Scanned):
            # Claimed: opened for (or waiting with) its own record, nothing charged or written.
            assert not of_type(actions, Authorise) and not of_type(actions, Persist), actions
            (owed,) = claimed
            waiting = after.vehicle.record_id if after.vehicle is not None else None
            assert owed.record_id in (waiting, passage and passage.record_id), after

    def _check_latch(
        self, before: LaneState, event: ev.Event, after: LaneState, actions: list[Action]
    ) -> None:
        """A boom that failed to open: the alarm holds, and nobody is charged meanwhile."""
        if after.latch is not None:
            assert "barrier_stuck" in after.faults, f"latched without its alarm: {after}"
        # The latch on disk follows the one in memory: kept as it latches, dropped as it clears.
        latched = before.latch is None and after.latch is not None
        cleared = before.latch is not None and after.latch is None
        _check_kept(Alarm.BARRIER_STUCK, latched, cleared, event, actions)
        if before.latch is not None or after.latch is not None:
            assert not _charged(actions), f"charged while barrier_stuck is latched: {actions}"

    def _check_stuck_open(
        self, before: LaneState, event: ev.Event, now: float, after: LaneState
    ) -> None:
        """A boom that did not close: `barrier_stuck_open` is raised iff a close was not reached
        in `move_s` and the boom was not seen closed since (a later open "reached" under the
        boom that is up does not clear it). A notice: the lane goes on taking payments."""
        code = Alarm.BARRIER_STUCK_OPEN
        held, holds = code in before.notices, code in after.notices
        assert code not in after.faults, f"barrier_stuck_open refuses payments: {after}"
        assert holds == (after.stuck_open is not None), f"alarm and state disagree: {after}"
        if holds:
            assert after.barrier != "closed", f"stuck open with the boom seen closed: {after}"
        if held and not holds:
            assert after.barrier == "closed", f"barrier_stuck_open cleared by {event}: {after}"
        close = before.expect
        missed = (
            isinstance(event, ev.Tick)
            and close is not None
            and close.target == "closed"
            and not close.overdue
            and now >= close.by
        )
        if holds and not held:
            assert missed, f"barrier_stuck_open raised by {event}, no close missed: {before}"
        if missed and after.barrier != "closed":
            assert holds, f"a close missed and no barrier_stuck_open: {after}"

    def _check_static(
        self, before: LaneState, event: ev.Event, after: LaneState, actions: list[Action]
    ) -> None:
        """A code printed at the booth (lane.core.static_codes) is nobody's try: the vehicle
        present keeps its tries and refused codes, no passenger is made for it, nothing is
        authorised or refused (what else the step does, a dwell or a barrier, is the lane's)."""
        if not (isinstance(event, ev.Scanned) and static_codes.ignores(event)):
            return
        was, now = before.vehicle, after.vehicle
        if now is not None and (was is None or now.vehicle_id != was.vehicle_id):
            raise AssertionError(f"a passenger made for a static code: {now}")
        if was is not None and now is not None:
            assert (now.tries, now.refused_texts) == (was.tries, was.refused_texts), (was, now)
        assert not of_type(actions, Authorise), actions
        assert "Payment refused" not in displayed(actions), actions
        declined = [a for a in of_type(actions, Persist) if a.draft.auth.result == "declined"]
        assert not declined, declined

    def _check_no_ack(
        self, before: LaneState, event: ev.Event, after: LaneState, actions: list[Action]
    ) -> None:
        """barrier_no_ack ends only with an ack of the command the lane waited for: a device
        that answers queries or reports its state may still drop every command. It is kept on
        disk while it holds, and one carried over a restart charges nobody until that ack."""
        held, holds = Alarm.BARRIER_NO_ACK in before.faults, Alarm.BARRIER_NO_ACK in after.faults
        if held and not holds:
            cmd = before.command
            assert isinstance(event, ev.BarrierAcked), f"barrier_no_ack cleared by {event}"
            assert cmd is not None and cmd.cmd_id == event.cmd_id, (cmd, event)
        _check_kept(Alarm.BARRIER_NO_ACK, holds and not held, held and not holds, event, actions)
        if isinstance(event, ev.LatchCarried) and holds and not held:
            self.no_ack_carried = True
            # Nothing waited at start-up: a test close does, its ack what clears the fault.
            test = after.command
            assert before.command is not None or (test is not None and test.op == "close"), after
        if self.no_ack_carried:
            assert not _charged(actions), f"charged under a carried barrier_no_ack: {actions}"
        if held or holds:
            assert of_type(actions, Authorise) == [], f"authorised under barrier_no_ack: {actions}"
        if not holds:
            self.no_ack_carried = False

    def _check_health(
        self, before: LaneState, event: ev.Event, after: LaneState, actions: list[Action]
    ) -> None:
        """The device's words unreadable: `barrier_unreadable` holds exactly while one kind
        is, and nobody is charged meanwhile. Nothing is authorised while the lane takes no
        payments. The disk answering again in its hold-off tells a held alarm's new text and
        does nothing else: it neither raises nor clears the fault, the lane stays closed."""
        code = Alarm.BARRIER_UNREADABLE
        assert (code in after.faults) == bool(after.unreadable), f"alarm and state: {after}"
        if before.unreadable and after.unreadable:
            assert not _charged(actions), f"charged while the device does not read: {actions}"
        if of_type(actions, Authorise):
            assert after.accepting_payments, f"authorised at a lane closed to it: {after}"
        if isinstance(event, ev.DiskAnswersAgain):
            # (The step's own work still runs: a dwell's end, a notice its time raises, ...)
            assert after.faults == before.faults, f"{event} raised or cleared: {after}"
            told = [a.code for a in of_type(actions, RaiseAlarm) if a.code in after.faults]
            held = Alarm.DISK_NOT_ANSWERING in before.faults
            assert told == ([Alarm.DISK_NOT_ANSWERING] if held else []), actions

    def _take_event(self, before: LaneState, event: ev.Event, after: LaneState) -> None:
        if isinstance(event, ev.SensorChanged) and event.sensor in SAFETY_SENSORS:
            self.sensors[event.sensor] = event.occupied
        if isinstance(event, ev.DeviceSnapshotted):
            self.sensors.update((s, on) for s, on in event.sensors if s in SAFETY_SENSORS)
        if isinstance(event, ev.Persisted | ev.PersistFailed):
            track = self.auths.get(event.persist_id)
            if track is not None and track.record == "pending":
                track.record = "durable" if isinstance(event, ev.Persisted) else "failed"
        if isinstance(event, ev.Persisted) and event.persist_id in self.owes:
            waiting = before.vehicle
            if waiting is not None and waiting.pending_persist == event.persist_id:
                self.owed.add(event.record_id)  # durable: its passage is owed from now on
        if isinstance(event, ev.Persisted):
            for persist in self.persists.get(event.persist_id, []):
                d = persist.draft
                if d.auth.result in PASSAGE_RESULTS or (d.kind, d.auth.result) == FREE_PASSAGE:
                    self.durable_vehicles.add(d.vehicle_id)
                pending = before.vehicle is not None and (
                    before.vehicle.pending_persist == event.persist_id
                )
                paid = d.auth.result in ("approved", "deferred")
                if d.kind in ("exit", "tap_out") and paid and d.pass_id and pending:
                    self.exited_passes.add(d.pass_id)
        trip = after.vehicle.trip if after.vehicle is not None else None
        accepted = isinstance(trip, Priced) and trip.trip_id == getattr(event, "trip_id", None)
        if isinstance(event, ev.TripPriced) and accepted:
            self.priced.setdefault(event.trip_id, event.amount_minor)
        was = before.vehicle.trip if before.vehicle is not None else None
        if isinstance(event, ev.Decided) and isinstance(was, Priced) and was.by_payer:
            self._check_kept(event, was, trip)
        if isinstance(event, ev.BarrierAcked) and event.ok:
            cmd = before.command
            if cmd is not None and cmd.cmd_id == event.cmd_id and not cmd.acked:
                self.finished_cmds.add(cmd.cmd_id)

    def _take_action(self, action: Action, after: LaneState) -> None:
        if isinstance(action, Authorise):
            assert action.auth_id not in self.auths, f"auth_id reused: {action}"
            _check_amount(action.amount_minor)
            assert action.amount_minor > 0, f"authorising nothing: {action}"
            self.auths[action.auth_id] = AuthTrack()
            code = (action.vehicle_id, action.text)
            assert code not in self.declined_codes, f"declined code sent again: {action}"
            self.authorised[action.auth_id] = action
            tries = self.tries[action.vehicle_id] = self.tries.get(action.vehicle_id, 0) + 1
            assert tries <= after.rules.max_tries, f"try {tries} for one vehicle: {action}"
        elif isinstance(action, PassageServed):
            assert action.record_id not in self.ended, f"served twice: {action}"
            self.owed.discard(action.record_id)
            self.ended.add(action.record_id)
        elif isinstance(action, Persist):
            _check_amount(action.draft.amount_minor)
            paid = action.draft.auth.result in ("approved", "deferred")
            assert (action.owes is not None) == paid, f"owed iff a payment: {action}"
            if action.owes is not None:
                self.owes[action.persist_id] = action.owes
            if action.ends_owed is not None:
                assert "paid_not_passed" in action.draft.flags, action
                assert action.ends_owed not in self.ended, f"ended twice: {action}"
                self.owed.discard(action.ends_owed)
                self.ended.add(action.ends_owed)
            self.persists.setdefault(action.persist_id, []).append(action)
            track = self.auths.get(action.persist_id)
            result = action.draft.auth.result
            if track is not None and result in ("approved", "deferred"):
                assert not track.abandoned, f"approved record after Abandon: {action}"
                assert not track.approved_persist, f"approved record persisted twice: {action}"
                track.approved_persist = True
                track.record = "pending"
            elif track is not None and result == "declined":
                track.declined_persist = True
                sent = self.authorised[action.persist_id]
                self.declined_codes.add((sent.vehicle_id, sent.text))
        elif isinstance(action, Settle):
            track = self.auths.get(action.auth_id)
            assert track is not None, f"Settle for an authorisation never made: {action}"
            assert track.record == "durable", f"Settle before the record is durable: {action}"
            assert not track.abandoned, f"Settle after Abandon: {action}"
            assert not track.settled, f"Settle twice: {action}"
            track.settled = True
        elif isinstance(action, Abandon):
            track = self.auths.get(action.auth_id)
            if track is not None:
                # Once an approved record is on its way to disk the payment is the passage's:
                # only a failed write may give it up.
                assert track.record in ("none", "failed"), (
                    f"Abandon of a recorded payment: {action}"
                )
                track.abandoned = True
        elif isinstance(action, OpenBarrier | CloseBarrier):
            self._take_command(action, after)
        elif isinstance(action, MarkPassUsed):
            # A pass is marked exited only once its exit record is durable, and only once.
            assert action.pass_id in self.exited_passes, f"marked before its record: {action}"
            self.marked.add(action.pass_id)
        elif isinstance(action, RaiseAlarm):
            self.alarms.add(action.code)
        elif isinstance(action, ClearAlarm):
            self.alarms.discard(action.code)

    def _take_command(self, action: OpenBarrier | CloseBarrier, after: LaneState) -> None:
        op = "open" if isinstance(action, OpenBarrier) else "close"
        vehicle_id, _, suffix = action.cmd_id.rpartition("/")
        assert suffix == op, f"cmd_id does not name its op: {action}"
        owner = self.cmd_owner.setdefault(action.cmd_id, (op, vehicle_id))
        assert owner == (op, vehicle_id), f"cmd_id reused for another op/vehicle: {action}"
        assert action.cmd_id not in self.finished_cmds, f"completed command sent again: {action}"
        assert 1 <= action.attempt <= after.rules.max_cmd_attempts, (
            f"attempt out of range: {action}"
        )
        if op == "open" and vehicle_id.endswith("/selftest"):
            # A self-test of a latched boom: at an empty lane, never a paid passage's open.
            latch = after.latch
            occupied = [s for s, on in self.sensors.items() if on]
            assert latch is not None and latch.test_id == vehicle_id, f"stray test: {action}"
            assert after.passage is None and after.vehicle is None and not occupied, after
        elif op == "open":
            # Rule 1: the record of this passage is durably on disk.
            assert vehicle_id in self.durable_vehicles, f"open without a durable record: {action}"
        else:
            # Rule 3: never command a close over an occupied safety loop or light curtain.
            occupied = [s for s, on in self.sensors.items() if on]
            assert not occupied, f"close while {occupied} occupied: {action}"
            # Nor in front of the vehicle the boom is up for: a close waits until it is through.
            passage = after.passage
            assert passage is None or passage.left, f"close before {passage} is through: {action}"

    def _check_given_back(
        self, before: LaneState, event: ev.Event, now: float, actions: list[Action]
    ) -> None:
        """A refund gives back what its record spent: a refunded tap-in counts for no passback,
        the pass its exit marked used is released in the refund's step (and only then), a
        carried payment's too: the owed passage keeps the pass its exit marks."""
        if isinstance(event, ev.PaidCarried) and event.marked_pass is not None:
            self.own_marks.setdefault(event.record_id, event.marked_pass)
        for persist in of_type(actions, Persist):
            d = persist.draft
            marks = d.kind in EXITS and d.pass_id and "pass_used" not in d.flags
            kept = d.pass_id if persist.owes is not None and marks else None
            assert persist.owed_pass == kept, f"owed pass {persist.owed_pass} for {persist}"
        waiting = before.vehicle
        if (
            isinstance(event, ev.Persisted)
            and waiting
            and waiting.pending_persist == event.persist_id
        ):
            for persist in self.persists.get(event.persist_id, []):
                d = persist.draft
                paid = d.auth.result in ("approved", "deferred")
                if paid and d.kind in EXITS and d.pass_id and "pass_used" not in d.flags:
                    self.own_marks[event.record_id] = d.pass_id
                if paid and d.kind == "tap_in" and d.account_ref is not None:
                    self.tap_ins[event.record_id] = (d.account_ref, now)
        refunded = {p.ends_owed for p in of_type(actions, Persist) if p.ends_owed is not None}
        released = [r.pass_id for r in of_type(actions, ReleasePass)]
        due = sorted(self.own_marks.pop(r) for r in refunded if r in self.own_marks)
        assert sorted(released) == due, f"released {released} for the refunds of {due}"
        for record_id in refunded:
            self.tap_ins.pop(record_id, None)
        window = before.rules.passback_window_s
        for persist in of_type(actions, Persist):
            account = persist.draft.account_ref
            if "passback" in persist.draft.flags:
                taps = [t for a, t in self.tap_ins.values() if a == account and now - t < window]
                assert taps, f"passback with no unrefunded tap-in of {account}: {persist}"

    def _check_deadline(
        self, before: LaneState, event: ev.Event, now: float, after: LaneState
    ) -> None:
        deadline = next_deadline(after)
        if deadline is None or deadline > now:
            return
        # A Tick handles everything due; any other event may leave an overdue deadline only if
        # one was already overdue before it (the shell will Tick straight away).
        assert not isinstance(event, ev.Tick), f"Tick at {now} left deadline {deadline} due"
        previous = next_deadline(before)
        assert previous is not None and previous <= now, f"new deadline {deadline} in the past"

    def check_let_through_or_refunded(self, state: LaneState) -> None:
        """After a blocking fault lasted longer than any paid vehicle's wait: every one is
        through (something crossed, or the device said open for it: the lane cannot hear it
        leave while the fault lasts) or refunded, none held for as long as the fault lasts."""
        p = state.passage
        through = p is not None and (p.seen_open or p.crossings > 0 or p.left)
        left = self.owed - ({p.record_id} if p is not None and through else set())
        assert not left and not state.carried, f"paid, held by the fault: {sorted(left)} {state}"

    def check_outcomes(self) -> None:
        """Every authorisation ended: approved + settled, or declined / abandoned; never both.
        Every paid vehicle (a carried one too) went through or has its refund record."""
        for auth_id, track in self.auths.items():
            paid = track.record == "durable" and track.settled
            refused = track.declined_persist or track.abandoned
            assert paid != refused, f"{auth_id}: {track}"
        assert not self.owed, f"paid, neither through nor refunded: {sorted(self.owed)}"


def _check_kept(
    fault: Alarm, raised: bool, cleared: bool, event: ev.Event, actions: Sequence[Action]
) -> None:
    """The fault on disk follows the one in memory: kept as it is raised (not when carried
    over a restart: it is on disk already), dropped as it clears, and only then."""
    kept = [a for a in actions if isinstance(a, KeepLatch) and a.fault == fault]
    dropped = [a for a in actions if isinstance(a, DropLatch) and a.fault == fault]
    assert len(kept) == (raised and not isinstance(event, ev.LatchCarried)), actions
    assert len(dropped) == cleared, actions


def _charged(actions: Sequence[Action]) -> list[Action]:
    """An authorisation asked for, or a record that takes the driver's money."""
    return [
        a
        for a in actions
        if isinstance(a, Authorise)
        or (isinstance(a, Persist) and a.draft.auth.result in ("approved", "deferred"))
    ]


def _check_amount(amount: object) -> None:
    assert type(amount) is int, f"amount is not an int: {amount!r}"
    assert amount >= 0, f"negative amount {amount}"


# --- the driver --------------------------------------------------------------------------------


class LaneDriver:
    """Steps the machine by hand: time moves only when a test says so."""

    def __init__(self, lane_rules: LaneRules | None = None, now: float = 1000.0) -> None:
        self.state = initial_state(lane_rules or rules())
        self.now = now
        self.monitor = SafetyMonitor()
        self.log: list[tuple[float, ev.Event, list[Action]]] = []
        self.actions: list[Action] = []  # every action so far
        self._ids = 0

    def phase(self) -> Phase:
        return phase(self.state)

    def feed(self, event: ev.Event, dt: float = 0.0) -> list[Action]:
        self.now += dt
        before = self.state
        self.state, actions = step(self.state, event, self.now)
        self.monitor.observe(before, event, self.now, self.state, actions)
        self.log.append((self.now, event, actions))
        self.actions += actions
        return actions

    def fresh(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    # time
    def tick(self, dt: float = 0.0) -> list[Action]:
        return self.feed(ev.Tick(), dt)

    def tick_at_deadline(self) -> list[Action]:
        deadline = next_deadline(self.state)
        assert deadline is not None, "no deadline to tick at"
        return self.feed(ev.Tick(), max(0.0, deadline - self.now))

    # sensors
    def sensor(self, sensor: str, occupied: bool, dt: float = 0.0) -> list[Action]:
        return self.feed(ev.SensorChanged(sensor, occupied, self.fresh("e")), dt)

    def arrive(self, vehicle_id: str = "v1", dt: float = 0.0) -> list[Action]:
        return self.feed(ev.SensorChanged("entry_loop", True, vehicle_id), dt)

    def leave_pay_point(self) -> list[Action]:
        return self.sensor("entry_loop", False)

    def cross(self) -> list[Action]:
        """The vehicle drives under the barrier, clears it, and leaves the exit loop."""
        actions = self.sensor("safety_loop", True)
        actions += self.sensor("safety_loop", False)
        actions += self.sensor("exit_loop", True)
        actions += self.sensor("exit_loop", False)
        return actions

    # payment
    def scan(
        self,
        text: str | None = None,
        kind: str = "payment_code",
        reason: str | None = None,
        static: bool = False,
        taken: float | None = None,
    ) -> list[Action]:
        """The code in a frame taken at `taken`: by default FRAME_AGE_S before the scan, but
        not before the entry loop was last cleared, since the kit's vehicles arrive with no time
        passing (an earlier frame is the vehicle before's: lane.core.before_arrival). By default
        the code of the driver at the pay point (`code_of`)."""
        if text is None:
            text = code_of(self.state.vehicle.vehicle_id if self.state.vehicle else None)
        if taken is None:
            cleared = self.state.entry_cleared_at
            taken = self.now - FRAME_AGE_S
            taken = taken if cleared is None else max(taken, cleared)
        return self.feed(ev.Scanned(text, kind, reason, taken, self.fresh("s"), static))

    def decide(
        self, auth_id: str | None = None, approved: bool = True, dt: float = 0.3, **kw: Any
    ) -> list[Action]:
        auth = auth_id or self.last(Authorise).auth_id
        kw.setdefault("method", "payment_code")
        kw.setdefault("reason", "ok" if approved else "insufficient_funds")
        kw.setdefault("account_ref", "acct-1")
        return self.feed(ev.Decided(auth, approved, **kw), dt)

    def persisted(self, persist_id: str | None = None, dt: float = 0.004) -> list[Action]:
        pid = persist_id or self.last(Persist).persist_id
        return self.feed(ev.Persisted(pid, self.fresh("rec-"), self._ids), dt)

    def ack(
        self, cmd_id: str | None = None, ok: bool = True, error: str | None = None, dt: float = 0.05
    ) -> list[Action]:
        cmd = cmd_id or self.last_command().cmd_id
        state = "open" if cmd.endswith("/open") else "closed"
        actions = self.feed(ev.BarrierAcked(cmd, ok, state if ok else "closed", error), dt)
        if ok and self.state.barrier not in ("offline", "fault"):
            # A working device reaches the position and says so (else: barrier_stuck).
            actions += self.feed(ev.BarrierReported(state))
        return actions

    def report(self, barrier_state: str, dt: float = 0.0) -> list[Action]:
        return self.feed(ev.BarrierReported(barrier_state), dt)

    # start-up
    def carried(self, fault: Alarm, detail: str, since: str = SINCE) -> list[Action]:
        """The shell's first event: `fault` was kept on disk when the lane last stopped."""
        return self.feed(ev.LatchCarried(fault, since, detail, self.fresh("start")))

    def paid_carried(
        self,
        text: str = CARRIED_TEXT,
        age_s: float = 0.0,
        record_id: str = CARRIED_RECORD,
        marked_pass: str | None = None,
    ) -> list[Action]:
        """The shell's first event: a paid vehicle was owed its passage when the lane stopped
        (`marked_pass`: the pass its exit record marked used)."""
        start = self.fresh("start")
        event = ev.PaidCarried(record_id, "v0", 1, credential_of(text), age_s, start, marked_pass)
        return self.feed(event)

    # lookups
    def last(self, kind: type[T]) -> T:
        found = of_type(self.actions, kind)
        assert found, f"no {kind.__name__} yet"
        return found[-1]

    def last_command(self) -> OpenBarrier | CloseBarrier:
        found = [a for a in self.actions if isinstance(a, OpenBarrier | CloseBarrier)]
        assert found, "no barrier command yet"
        return found[-1]

    # whole paths
    def pay(self, vehicle_id: str = "v1", text: str | None = None) -> list[Action]:
        """Arrive, pay, persist: returns the actions of the step that opened the barrier."""
        self.arrive(vehicle_id)
        self.scan(text)
        self.decide()
        return self.persisted()

    def through(self, vehicle_id: str = "v1", text: str | None = None) -> None:
        """One vehicle from arrival to a closed barrier."""
        self.pay(vehicle_id, text)
        self.ack()
        self.leave_pay_point()
        self.cross()
        self.ack()
        assert self.phase() is Phase.IDLE, self.phase()


# --- random plausible events -------------------------------------------------------------------


class Chooser:
    """Where the random choices come from: hypothesis' data.draw or a seeded random.Random."""

    def __init__(self, pick: Callable[[Sequence[Any]], Any]) -> None:
        self._pick = pick

    def pick(self, options: Sequence[T]) -> T:
        return self._pick(options)  # type: ignore[no-any-return]

    def chance(self, n: int) -> bool:
        """True about once in n."""
        return self.pick(range(n)) == 0

    @classmethod
    def seeded(cls, seed: int) -> Chooser:
        rng = random.Random(seed)
        return cls(lambda options: rng.choice(list(options)))


TEXTS = ("281111111111111111", "282222222222222222", "HC1:token-a", "HC1:token-b", "junk")
KINDS = ("payment_code", "payment_code", "token", "emv", "unknown", "barcode")
# A closed road's lanes also read entry passes (the other modes' draws stay as they were).
ROAD_TEXTS = (*TEXTS, "LP1:pass-a")
ROAD_KINDS = (*KINDS, "entry_pass", "entry_pass")
PLATES = ("ZJA123", "ZJB456")
PASS_IDS = ("0a0b0c0d0e0f1011", "1112131415161718")
# What a shell's trip rules may answer (outcome, attendant, amount): any cell or exception.
TRIP_ANSWERS = (
    ("charged", False, 4000), ("no_pass", True, 8000), ("pass_used", True, 8000),
    ("u_turn", False, 1500), ("over_time", False, 8000), ("unpriced", True, None),
)  # fmt: skip
# A metro exit's wallet code finds no tap-in under its one-time digits: the usual first answer.
METRO_NO_TAP_IN = (("no_pass", False, 8000),) * 4
METHODS = ("payment_code", "token", "emv", "bogus")
ACCOUNTS = ("acct-1", "acct-2", None)
STEPS = (0.0, 0.001, 0.05, 0.3, 0.7, 2.0, 3.0, 700.0)
# The barrier device's words the lane may fail to decode (lane.daemon's on_garbage).
GARBLED = (
    ("lane/p01/l01/barrier/ack", DeviceWords.ACKS),
    ("lane/p01/l01/barrier/state", DeviceWords.REPORTS),
    ("lane/p01/l01/barrier/snapshot", DeviceWords.REPORTS),
)
DATA_DIR = "/var/lib/lane"
# What a restart hands over first: the barrier faults kept on disk ...
RESTARTS = ((), (), (), *((f,) for f in KEPT_LATCHES), KEPT_LATCHES)
# ... and a paid vehicle owed its passage, its record this old (None: none owed).
CARRIED_AGES = (None, None, 0.0, 30.0, 90.0)


def start_up(driver: LaneDriver, choose: Chooser) -> None:
    """A walk's first events, as a restarting shell hands them over: sometimes barrier faults
    kept on disk (a carried barrier_no_ack must charge nobody before an ack, a carried latch
    nobody before it clears), sometimes a paid vehicle owed its passage (its code is among those
    the walks show: never two passages for it, never left without a passage or its refund
    record, never a close in front of it). The shell hands the faults over first; the core
    takes either order."""
    faults = choose.pick(RESTARTS)
    age = choose.pick(CARRIED_AGES)
    paid_first = choose.chance(2)
    if age is not None and paid_first:
        driver.paid_carried(age_s=age)
    for fault in faults:
        driver.carried(fault, KEPT_DETAILS[fault])
    if age is not None and not paid_first:
        driver.paid_carried(age_s=age)


class EventSource:
    """Draws the next event: sensors, scans and operator input at random; replies (Decided,
    Persisted, BarrierAcked) mostly for ids the machine really emitted, sometimes stale,
    duplicated or made up."""

    def __init__(self, choose: Chooser) -> None:
        self.c = choose
        self.auth_ids: list[str] = []
        self.persist_ids: list[str] = []
        self.cmd_ids: list[str] = []
        self.attendant_ids: list[str] = []
        self.issue_ids: list[str] = []
        self.trip_ids: list[str] = []
        self.road = False  # the lane is a closed road's: its events are drawn too
        self.metro = False  # a metro exit: its wallet codes' no_pass (priced again) drawn often
        self.n = 0

    def learn(self, actions: Sequence[Action]) -> None:
        for a in actions:
            if isinstance(a, Authorise):
                self.auth_ids.append(a.auth_id)
            elif isinstance(a, Persist):
                self.persist_ids.append(a.persist_id)
            elif isinstance(a, OpenBarrier | CloseBarrier):
                self.cmd_ids.append(a.cmd_id)
            elif isinstance(a, IssuePass):
                self.issue_ids.append(a.issue_id)
            elif isinstance(a, PriceTrip):
                self.trip_ids.append(a.trip_id)

    def _id(self, known: list[str], stale: str) -> str:
        if known and not self.c.chance(8):
            # Mostly the newest (the one the machine waits for), sometimes an older one.
            return known[-1] if not self.c.chance(3) else self.c.pick(known)
        return stale

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def next(self, state: LaneState, now: float) -> tuple[float, ev.Event]:
        """The time step and the event."""
        dt = self.c.pick(STEPS)
        kinds = (
            "sensor", "sensor", "sensor", "arrive", "scan", "scan", "decided", "decided",
            "persisted", "persisted", "ack", "ack", "tick", "tick", "other", "health",
        )  # fmt: skip
        self.metro = metro.priced_gate(state)
        self.road = state.rules.mode in ("toll-entry", "toll-exit") or self.metro
        # A lane of another mode hears a closed road's inputs too, rarely (a stray plate read,
        # a desk's answer to a lane that asked nothing): it must take them and change nothing.
        kind = self.c.pick((*kinds, "road", "road") if self.road else (*kinds, "road"))
        if kind == "tick":
            deadline = next_deadline(state)
            if deadline is not None and deadline > now and self.c.chance(2):
                dt = deadline - now
            return dt, ev.Tick()
        if kind == "health":
            return dt, self._health(state)
        return dt, getattr(self, f"_{kind}")(now + dt)

    def _sensor(self, now: float) -> ev.Event:
        sensor = self.c.pick(("entry_loop", "exit_loop", "safety_loop", "light_curtain", "x"))
        return ev.SensorChanged(sensor, self.c.chance(2), self.fresh("e"))

    def _arrive(self, now: float) -> ev.Event:
        return ev.SensorChanged("entry_loop", True, self.fresh("v"))

    def _scan(self, now: float) -> ev.Event:
        kind = self.c.pick(ROAD_KINDS if self.road else KINDS)
        reason = "not a payment code" if kind == "unknown" else None
        text = self.c.pick(ROAD_TEXTS if self.road else TEXTS)
        # A code the scanner knows is printed at the booth (a sticker seen again).
        static = kind == "unknown" and self.c.chance(2)
        return ev.Scanned(text, kind, reason, now - FRAME_AGE_S, self.fresh("s"), static)

    def _decided(self, now: float) -> ev.Event:
        approved = not self.c.chance(3)
        flags = ("deferred",) if self.c.chance(6) else ()
        repriced = None
        if self.c.chance(2):  # a metro exit's trip priced again by the payer (else ignored)
            outcome, fare = self.c.pick((("charged", 400), ("u_turn", 200), ("no_pass", 800),
                                         ("charged", 900), ("unpriced", None)))  # fmt: skip
            repriced = ev.TripPriced("zz/trip/payer", True, outcome, fare, "CNY", 1, "A",
                                     "0a" * 16, 2e9, (outcome,), False, (outcome,))  # fmt: skip
        return ev.Decided(
            self._id(self.auth_ids, "zz/a1"),
            approved,
            "ok" if approved else "declined",
            self.c.pick(METHODS),
            account_ref=self.c.pick(ACCOUNTS),
            latency_ms=120,
            flags=flags,
            repriced=repriced,
        )

    def _persisted(self, now: float) -> ev.Event:
        pid = self._id(self.persist_ids, "zz/a9")
        if self.c.chance(6):
            return ev.PersistFailed(pid, self.c.pick(("queue_full", "disk_error", "weird")))
        self.n += 1
        return ev.Persisted(pid, f"rec-r{self.n}", self.n)  # never a driver's own rec-N

    def _ack(self, now: float) -> ev.Event:
        cmd = self._id(self.cmd_ids, "zz/open")
        if self.c.chance(7):
            return ev.CommandNotSent(cmd, "broker connection lost")
        ok = not self.c.chance(6)
        error = None if ok else self.c.pick(("safety_loop_occupied", "jammed"))
        return ev.BarrierAcked(cmd, ok, "open" if ok else "closed", error)

    def _other(self, now: float) -> ev.Event:
        what = self.c.pick(
            (
                "class", "class", "report", "report", "attendant", "close", "reopen", "queue",
                "link", "snapshot", "snapshot",
            )
        )  # fmt: skip
        if what == "class":
            return ev.VehicleClassified(self.c.pick((1, 2, 3, 7)))
        if what == "report":
            return ev.BarrierReported(
                self.c.pick(("closed", "open", "opening", "closing", "fault", "offline"))
            )
        if what == "snapshot":
            return self.snapshot()
        if what == "attendant":
            if self.attendant_ids and self.c.chance(3):
                cmd = self.c.pick(self.attendant_ids)  # an MQTT redelivery
            else:
                cmd = self.fresh("att")
                self.attendant_ids.append(cmd)
            return ev.AttendantOpen(cmd, "help", "op1")
        if what == "close":
            return ev.AttendantCloseLane("maintenance")
        if what == "reopen":
            return ev.AttendantReopenLane("done")
        if what == "queue":
            return ev.QueueChanged(self.c.chance(3), self.c.chance(2))
        return ev.LinkChanged(not self.c.chance(3))

    def _health(self, state: LaneState) -> ev.Event:
        """What the shell's watches say of the disk, the camera and the device's words: mostly
        what follows from the faults held (a disk that answers again in its hold-off, a device
        read again), sometimes out of turn."""
        what = self.c.pick(("disk", "disk", "camera", "camera", "garbled", "garbled"))
        if what == "disk":
            held = Alarm.DISK_NOT_ANSWERING in state.faults
            if (held and not self.c.chance(3)) or self.c.chance(6):
                return ev.DiskAnswersAgain(f"{DATA_DIR} answers again; lane reopens in 5 s")
            return ev.DiskAnswering(not self.c.chance(2), f"{DATA_DIR} since 10:00:00Z")
        if what == "camera":
            return ev.CameraSees(not self.c.chance(2), "camera blackout: no frames for 2.0 s")
        if state.unreadable and self.c.chance(2):
            return self.snapshot()  # the device asked while its words did not read
        topic, words = self.c.pick(GARBLED)
        return ev.DeviceUnreadable(topic, self.c.pick(("not msgpack", "unsupported v9")), words)

    def _road(self, now: float) -> ev.Event:
        """A closed road's inputs: plates, tickets, priced trips, the attendant's road ops."""
        what = self.c.pick(("plate", "ticket", "ticket", "priced", "priced", "no_pass", "confirm"))
        if what == "plate":
            return ev.PlateRead(self.c.pick(PLATES))
        if what == "ticket":
            printed = not self.c.chance(3)
            pass_id = None if self.c.chance(8) else self.c.pick(PASS_IDS)
            error = None if printed else self.c.pick(("paper_out", "offline"))
            return ev.TicketIssued(self._id(self.issue_ids, "zz/pass"), pass_id, printed, error)
        if what == "priced":
            trip_id = self._id(self.trip_ids, "zz/trip1")
            if self.c.chance(5):
                return ev.TripPriced(trip_id, found=False)
            answers = (*TRIP_ANSWERS, *METRO_NO_TAP_IN) if self.metro else TRIP_ANSWERS
            outcome, attendant, amount = self.c.pick(answers)
            pass_id = None if outcome == "no_pass" else self.c.pick(PASS_IDS)
            return ev.TripPriced(
                trip_id, True, outcome, amount, "CNY", self.c.pick((1, 2, 3)), "P01", pass_id,
                now + 86_400, (outcome,), attendant, (outcome, "Fare CNY 40.00"),
            )  # fmt: skip
        cmd = self.fresh("road")
        if what == "no_pass":
            return ev.AttendantNoPass(cmd, "op1")
        return ev.AttendantConfirmFare(cmd, "op1")

    def snapshot(self) -> ev.DeviceSnapshotted:
        """What a device might say when asked: any position, any sensors it knows."""
        barrier = self.c.pick(("closed", "open", "opening", "closing", "fault", "offline"))
        sensors = tuple(
            (name, self.c.chance(3))
            for name in ("entry_loop", "exit_loop", "light_curtain", "safety_loop")
            if not self.c.chance(5)
        )
        return ev.DeviceSnapshotted(barrier, sensors, self.fresh("snap"))


def metro_answer(trip_id: str) -> ev.TripPriced:
    """A metro exit's trip priced as the shell would: no tap-in, the maximum fare."""
    return ev.TripPriced(trip_id, True, "no_pass", 800, "CNY", 1, None, None, None, ("no_pass",),
                         False, ("No tap-in", "Maximum fare CNY 8.00"))  # fmt: skip


def random_walk(
    driver: LaneDriver,
    source: EventSource,
    steps: int,
    until: Callable[[LaneState], bool] | None = None,
) -> None:
    """`steps` random events, or fewer: the walk stops where `until` holds."""
    for _ in range(steps):
        if until is not None and until(driver.state):
            return
        dt, event = source.next(driver.state, driver.now)
        source.learn(driver.feed(event, dt))


def recording(state: LaneState) -> bool:
    """A record the lane committed to is on its way to disk (a payment approved, a pass, an
    attendant's open): a fault that comes now holds a vehicle whose record becomes durable."""
    return state.vehicle is not None and state.vehicle.pending_persist is not None


# Blocking faults that last until the world changes (no answer of the lane's clears them).
LASTING_FAULTS = (
    ev.BarrierReported("offline"),
    ev.BarrierReported("fault"),
    ev.LinkChanged(up=False),
)


def fault_lasts(driver: LaneDriver, fault: ev.Event) -> None:
    """`fault` comes and stays for three `pass_dwell_s`: the record queue still writes what the
    lane asks, nothing else answers. Every paid vehicle must end through or refunded meanwhile,
    not wait for the fault to clear."""
    driver.feed(fault)
    end = driver.now + 3 * driver.state.rules.pass_dwell_s
    for _ in range(1000):
        vehicle = driver.state.vehicle
        pending = vehicle.pending_persist if vehicle is not None else None
        deadline = next_deadline(driver.state)
        if pending is not None:
            driver.feed(ev.Persisted(pending, driver.fresh("rec-"), driver._ids), 0.004)
        elif deadline is not None and deadline <= end:
            driver.tick_at_deadline()
        else:
            driver.monitor.check_let_through_or_refunded(driver.state)
            return
    raise AssertionError(f"no end to the deadlines under {fault}: {driver.state}")


def heal(driver: LaneDriver, rounds: int = 12) -> None:
    """The world gets well and answers everything; the lane must come back to IDLE, with every
    payment it started ended (settled, declined or abandoned)."""
    feed = driver.feed
    world_is_well: list[ev.Event] = [
        ev.LinkChanged(up=True),
        ev.QueueChanged(full=False, high_water=False),
        ev.DiskAnswering(answering=True),
        ev.CameraSees(seeing=True),
        ev.BarrierReported("closed"),
        ev.AttendantReopenLane("healed"),
        *(ev.SensorChanged(s, False, driver.fresh("e")) for s in SAFETY_SENSORS),
    ]
    for event in world_is_well:
        feed(event)
    for _ in range(rounds):
        state = driver.state
        if phase(state) is Phase.IDLE and not state.carried:
            break
        cmd, vehicle, passage = state.command, state.vehicle, state.passage
        if passage is not None and passage.opened_at is not None and not passage.left:
            driver.cross()  # first: a held close (a carried no_ack's test close) waits for it
        elif cmd is not None and not cmd.acked:
            if cmd.ack_deadline is None:
                driver.tick(1.0)  # a refused close waits for its retry time
            else:
                feed(ev.BarrierAcked(cmd.cmd_id, True, "open" if cmd.op == "open" else "closed"))
        elif state.unreadable:
            # The device's words read again: it answers a query readably.
            feed(ev.DeviceSnapshotted("closed", (), driver.fresh("d")))
        elif vehicle is not None and isinstance(vehicle.trip, TapOut) and not vehicle.committed:
            feed(metro_answer(vehicle.trip.asked))  # the shell always answers a PriceTrip
        elif vehicle is not None and vehicle.attempt is not None:
            driver.tick(10.0)  # the authoriser never answers: the lane gives up
        elif vehicle is not None and vehicle.pending_persist is not None:
            feed(ev.Persisted(vehicle.pending_persist, driver.fresh("rec-"), driver._ids))
        elif vehicle is not None and vehicle.record_id is None:
            driver.leave_pay_point()
        elif state.latch is not None:
            self_test(driver)
        elif state.carried:
            driver.tick_at_deadline()  # nobody comes back for it: refunded
        else:
            driver.tick(1.0)
    assert phase(driver.state) is Phase.IDLE, f"lane did not recover: {driver.state}"
    driver.monitor.check_outcomes()


def self_test(driver: LaneDriver, limit: int = 40) -> None:
    """Time passes at an empty lane with a latched boom; the device answers every query (all
    clear, boom down) until the lane starts its self-test."""
    for _ in range(limit):
        if driver.state.latch is None or driver.state.command is not None:
            return
        if any(isinstance(a, QueryDevice) for a in driver.tick_at_deadline()):
            driver.feed(ev.DeviceSnapshotted("closed", (), driver.fresh("d")))
    raise AssertionError(f"no self-test in {limit} deadlines: {driver.state}")
