"""A metro gate's tap desk: share the line's taps, and price an exit by the passenger's tap-in.

Every gate of a line with `metro.line` set publishes its approved `tap_in` and `tap_out`
records (the uplink `Record`, encoded) on `line/{line}/taps` once they are durable (QoS 1,
queued while the broker is away), and takes the other gates' ones: a tap-in goes into the
`TapStore` by account, a tap-out marks its tap-in exited in the replay store (`pass:` key,
like a road pass). All offline: an exit gate asks nobody.

`price` answers a `transit-exit` gate's `PriceTrip` (source code): the account of the code
shown (or, asked again after a wallet code was paid, the account of the payer the acquirer
named: `PriceTrip.account_ref`), its latest tap-in and whether it exited, priced by
lane.auth.trip_pricing (`price_tap_out`). `mark_used` answers `MarkPassUsed`: the tap_out
record is durable, the tap-in has exited (a tap-in exits once). `release` answers
`ReleasePass`: that tap-out was refunded (the passenger did not leave), so this gate's mark
goes and the tap-in prices the next tap-out here as a trip again.

Every tap and refund goes out signed with the gate's key and is taken only signed by a lane
of the key set (lane.auth.peers), and once: a genuine record replayed (a tap-in refunded
since, a tap-out reopened since) is not taken again (`Peers.first_hearing`).

A refund of a tap (`paid_not_passed`: the gate never let the passenger through) is shared
like the tap, the refund record itself once durable, and every gate of the line undoes what
the tap told it: a refunded tap-out's tap-in (the refund's `pass_id`) is reopened where the
mark was heard from that gate (`ReplayStore.release(remote=True)`: a mark another gate made
stays, a tap-in pays once), a refunded tap-in (the refund's `record:`) is dropped from the
tap store, so it prices no exit and takes nothing off one.

A tap-in stamped more than `auth.skew_s` after this gate's clock is refused, and
`tap_clock_ahead` names the gate that stamped it until one of its taps is stamped within the
skew again, or none comes stamped ahead for the retention (lane.tap_clocks).

A tap-in the `TapStore` cannot keep (locked, corrupt, an I/O error) leaves its passenger to
pay the maximum fare at this gate's exit (never a free ride): the failed write raises
`taps_store_error`, and `upkeep` probes the store every second while it holds
(`TapStore.probe`, lane.store_watch), clearing it once a write commits. A tap-in the store
cannot read at an exit leaves that exit unpriced (the passenger is refused "Fare not known",
never charged a guess) and raises the same alarm, saying so. A refunded tap-in it cannot drop
is held until dropped (`undropped`: the refund is heard once): `price` skips it when the
refunding gate wrote it, as the drop would (it prices no exit here), and the store's probe
drops it first, so the alarm, which says so, clears once it is dropped. It is kept in the
replay store meanwhile (`ReplayStore.keep_undropped`: the other file, as the tap store keeps
what the replay store owes), so a restart still skips and drops it; while the replay store
cannot keep it either it is in memory only and `replay_store_error` says so (a restart would
forget it: while it is its passenger's latest tap-in it would price their exit here with its
refunded entry fare taken off). A copy behind by a drop only drops it again: no harm.

The replay store is the verifier's, and so is its alarm (`replay_store_error`, the verifier's
`StoreWatch`, whose probe clears it). An exit it cannot read is unpriced, as above. An exit it
cannot mark, this gate's or another gate's heard on the line, is held (`unmarked`): the tap-in
prices as exited here all the same (a trip is never paid twice), and the store's probe writes
the held marks before its alarm clears (`upkeep` those a restart loaded; whether or not the
tap store works), a heard one as heard
from its gate (so that gate's refund reopens it, held or written); the first exit held for a
tap-in stays its gate's, named by the exit heard last unless stamped earlier by more than the
skew (one exit held per tap-in; a refund drops it only as it would give back a mark kept as
one: lane.core.exit_marks `gives_back`). The held
exits are kept in the tap store too (`TapStore.hold`, another file), so a restart before the
replay store heals loads them and still prices those tap-ins as exited; while the tap store
cannot keep them either they are in memory only, a restart would forget them, and
`taps_store_error` says so until a write commits there. A release it cannot write (this
gate's own, or another gate's refund heard on the line) is held the same way (`unreleased`,
kept in the tap store too): the tap-in prices as reopened here (the trip, as the refund said),
the alarm says refunded tap-outs are held until reopened, and the held releases are written
before the held exits; a later exit's mark writes its tap-in's held release first (the mark
would not go in over the old one), and a release gives back only the use of the exit it
refunds, whichever gate made the mark or refunds it: the replay store keeps every exit of a
mark and every refund, and the mark stands while an exit of it is not refunded
(lane.core.exit_marks), so neither a copy loaded late nor a refund heard after a later exit
reopens that exit, in any order the line's messages come in; a mark kept as one is given back
by its exit's time (`made_by`: an exit is marked at its record's time, which the refund
names), so a wall clock stepped back between an exit and its refund keeps no mark. The tap
store's copy of what is held is versioned (lane.held_copy): an older copy never overwrites a
newer one. What the desk holds while a store fails, its copies and the writes it owes are
lane.tap_held's (`HeldWrites`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lane.auth.deny import DenyList
from lane.auth.fares import Tariff
from lane.auth.keys import KeySet
from lane.auth.passes import pass_key
from lane.auth.peers import Ignored, Peers
from lane.auth.replay import ReplayStore, ReplayStoreError, UsedToken
from lane.auth.trip_pricing import ExitLaneRules, code_account, price_tap_out
from lane.auth.trip_rules import tap_in_entry
from lane.core.actions import MarkPassUsed, PriceTrip, ReleasePass
from lane.core.events import TripPriced
from lane.core.exit_marks import ExitMark, Exits, gives_back, mark_of, refunded_by
from lane.core.names import AuthResult, RecordKind
from lane.core.records import FLAG_RECORD, REFUND_FLAG, flag_value, tap_in_trip_id
from lane.store_watch import PROBE_EVERY_S, Alarm, StoreWatch
from lane.tap_clocks import CLOCK_ALARM, GateClocks
from lane.tap_held import (
    REPLAY_UNMARKED,
    REPLAY_UNRELEASED,
    TAPS_UNDROPPED,
    HeldWrites,
)
from lane.tap_store import Held, TapStore, TapStoreError
from lane.transport.mqtt import Incoming, MqttLink
from lane.transport.outbox import Outbox
from lane.wire import topics
from lane.wire.codec import PayloadError
from lane.wire.ids import uuid7_unix_ms
from uplink.records import Record

log = logging.getLogger("lane.tap_desk")

SHARED = (RecordKind.TAP_IN, RecordKind.TAP_OUT)
PAID = (AuthResult.APPROVED, AuthResult.DEFERRED)
STAMP_S = 0.001  # a record id's time resolution (`_stamped`)
STEPPED_BACK = "tap-out refund stamped before its exit: a clock stepped back"
NAMED_AHEAD = (
    "tap-out refund names an exit stamped ahead of this gate's clock: its own time bounds it"
)
# What a failing store stops, as its alarm says it (lane.store_watch).
TAPS_UNREAD = 'tap-outs not priced (passengers refused "Fare not known"): taps store'
REPLAY_UNREAD = 'tap-outs not priced (passengers refused "Fare not known"): replay store'


@dataclass(frozen=True)
class ExitPricing:
    """What a metro exit gate prices with (an entry gate only shares its taps)."""

    rules: ExitLaneRules
    tariff: Tariff
    keys: Callable[[], KeySet]  # the lane's current key set: a token's account is its subject
    deny: Callable[[], DenyList]
    account_key: bytes  # a payment code's account reference, as the authoriser makes it


class TapDesk:
    def __init__(  # noqa: PLR0917 - the desk's stores and link, each its own
        self,
        line: str,
        lane: str,
        retention_s: float,
        store: TapStore,
        replay: ReplayStore,
        link: MqttLink,
        *,
        pricing: ExitPricing | None,
        wall: Callable[[], float],
        replay_watch: StoreWatch,
        peers: Peers,
        skew_s: float,
        alarm: Alarm | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self.lane = lane
        self.clocks = GateClocks(skew_s, retention_s)  # a tap-in later by more: refused
        self.alarm = alarm
        self.topic = topics.line_taps(line)
        self.retention_s = retention_s
        self.store = store
        self.replay = replay
        self.link = link
        self.pricing = pricing
        self.wall = wall
        self.received = 0
        self.peers = peers
        self.replay_watch = replay_watch  # the verifier's: one alarm for the one replay store
        # What the stores owe while they fail, and the copies kept of it (lane.tap_held).
        self.held = HeldWrites(lane, store, replay, wall, replay_watch, alarm)
        # Shared once durable, whenever the broker is there; of use until no gate keeps it.
        self.outbox: Outbox[Record] = Outbox(
            link,
            self.topic,
            lambda record: peers.seal(record.encode()),
            lambda record: record.ts_us / 1e6 + retention_s - wall(),
            lambda record: {"record_id": record.record_id},
            lane=lane,
            max_pending=max_pending,
            max_expiry_s=math.ceil(retention_s),
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self.topic, 1)]

    def handles(self, topic: str) -> bool:
        return topic == self.topic

    # --- sharing ------------------------------------------------------------------------------

    def on_record(self, body: Mapping[str, Any]) -> None:
        """A record of this lane is durable (the runner's record note): share a paid tap, or a
        tap's refund."""
        paid = body.get("auth", {}).get("result") in PAID
        if body.get("kind") not in SHARED or not (paid or REFUND_FLAG in body.get("flags", ())):
            return
        try:
            record = Record.from_map(body)
        except PayloadError as exc:  # our own record: a bug, but the record itself is safe
            log.error(
                "tap not shared",
                extra={"lane": self.lane, "error": str(exc), "record_id": body.get("record_id")},
            )
            return
        self.outbox.put(record)

    async def run(self) -> None:
        """Publish the queued taps, in order, whenever the broker is there."""
        await self.outbox.run()

    async def upkeep(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """While the tap store fails, probe it (writing first what it owes) until a write
        commits; otherwise write what the stores owe (`HeldWrites.write_owed`) and forget the gates
        quiet long enough (lane.tap_clocks)."""
        await self.held.store_watch.run(sleep, self._housekeeping, PROBE_EVERY_S)

    async def _housekeeping(self) -> None:
        said = self.clocks.text()
        self.clocks.forget_quiet(self.wall())
        self._say_clocks(said)
        await self.held.write_owed()

    async def handle(self, msg: Incoming) -> None:
        """Another gate's tap: keep a tap-in by account; a tap-out closes its tap-in here; a
        tap's refund undoes what the tap told."""
        opened = self.peers.open(msg.topic, msg.payload, Record.decode, _lane_of, "tap message")
        if opened is None:
            return
        record = opened.message
        if record.lane == self.lane:
            return  # our own publish coming back
        d = record.draft
        refund = REFUND_FLAG in d.flags
        if d.kind not in SHARED or not (d.auth.result in PAID or refund):
            log.warning(
                "tap message neither a paid tap nor a tap's refund: refused",
                extra={
                    "lane": self.lane,
                    "topic": msg.topic,
                    "record_id": record.record_id,
                    "kind": str(d.kind),
                },
            )
            return
        ahead = self._judge_clock(record)
        if not refund and d.kind != RecordKind.TAP_OUT and ahead:
            # Kept, it would be its account's latest tap-in until long after it: every real
            # tap-in of that account would price as it, or as exited once it had.
            self.peers.ignore(
                Ignored.FUTURE_TAP_IN,
                opened,
                {"topic": msg.topic, "record_id": record.record_id, "from_lane": record.lane,
                 "ts_us": record.ts_us},
            )  # fmt: skip
            return
        until = record.ts_us / 1e6 + self.retention_s  # no gate acts on it any later
        # A tap-out or a refund stamped ahead is taken: kept no later than one stamped now.
        latest = self.wall() + self.clocks.skew_s + self.retention_s
        ids = {"record_id": record.record_id}
        if not await self.peers.first_hearing(opened, until, ids, latest=latest):
            return
        self.received += 1
        if d.kind == RecordKind.TAP_OUT:
            await (self._reopen(record) if refund else self._exited_elsewhere(record))
        else:
            await (self._drop_refunded(record) if refund else self._keep(record, opened.payload))

    def _judge_clock(self, record: Record) -> bool:
        """Is the tap stamped ahead of this gate's clock (lane.tap_clocks)? Its alarm says which
        gates are, when that changed."""
        said = self.clocks.text()
        ahead = self.clocks.heard(record.lane, record.ts_us / 1e6, self.wall())
        self._say_clocks(said)
        return ahead

    def _say_clocks(self, said: str | None) -> None:
        """Raise, update or clear `tap_clock_ahead` when its text is no longer `said`."""
        text = self.clocks.text()
        if text != said and self.alarm is not None:
            self.alarm(CLOCK_ALARM, text)

    async def _keep(self, record: Record, encoded: bytes) -> None:
        """Keep a tap-in by account. One not kept: that passenger pays the maximum fare here
        (flagged), never rides free."""
        d = record.draft
        if d.account_ref is None:
            return  # nobody to find it by
        try:
            trip = tap_in_entry(record).pass_hex
        except ValueError as exc:
            log.warning(
                "tap-in without a trip id",
                extra={"lane": self.lane, "record_id": record.record_id, "error": str(exc)},
            )
            return
        expires = record.ts_us / 1e6 + self.retention_s
        try:
            await asyncio.to_thread(
                self.store.add, trip, d.account_ref, record.ts_us, expires, encoded, self.wall()
            )
        except TapStoreError as exc:
            log.error("tap not kept", extra={"lane": self.lane, "record_id": record.record_id,
                                             "error": str(exc)})  # fmt: skip
            self.held.store_watch.says_held(exc)
            return
        self.held.store_watch.says(None)

    async def _exited_elsewhere(self, record: Record) -> None:
        """Another gate's tap-out: its tap-in has exited, marked like a road pass (kept until
        it expires). A mark the replay store does not take is held as this gate's own."""
        d = record.draft
        if d.pass_id is None:
            return  # it closed no tap-in: priced `pass_used` or `no_pass`
        key = pass_key(d.pass_id)
        exp = math.ceil(record.ts_us / 1e6 + self.retention_s)
        heard = Held(exp, record.lane, record.ts_us / 1e6, record.record_id)
        try:
            await self.held.mark(key, heard)
        except ReplayStoreError as exc:
            self.held.hold_exit(key, heard)
            log.error("tap-in exit held", extra={"lane": self.lane, "from_lane": record.lane,
                      "record_id": record.record_id, "pass_id": d.pass_id,
                      "error": str(exc)})  # fmt: skip
            self.replay_watch.says(exc, REPLAY_UNMARKED)
            await self.held.save_held()
            return
        self.replay_watch.says(None)

    async def _reopen(self, record: Record) -> None:
        """A refunded tap-out of another gate: forget the exited mark heard from it (held or
        in the replay store). One not forgotten leaves the tap-in exited here (the maximum
        fare, flagged)."""
        d = record.draft
        if d.pass_id is None:
            return  # it marked nothing: priced `pass_used` or `no_pass`
        ids = {"lane": self.lane, "record_id": record.record_id, "from_lane": record.lane,
               "pass_id": d.pass_id}  # fmt: skip
        refunded = flag_value(d.flags, FLAG_RECORD) or ""
        latest = self.wall() + self.clocks.skew_s  # what a gate of the line may stamp by now
        made_by = self._made_by(refunded, record.ts_us / 1e6, ids, latest)
        try:
            released = await self._release(
                pass_key(d.pass_id), record.lane, made_by, refunded or None
            )
        except ReplayStoreError as exc:
            log.error("tap's refund held until reopened", extra={**ids, "error": str(exc)})
            self.replay_watch.says(exc, REPLAY_UNRELEASED)
            return
        log.info("refunded tap-out: tap-in reopened", extra={**ids, "released": released})

    async def _drop_refunded(self, record: Record) -> None:
        """A refunded tap-in: dropped from the tap store, so it prices no exit and takes nothing
        off one. One the store does not drop is skipped by `price` and dropped by `upkeep`."""
        d = record.draft
        ids = {"lane": self.lane, "record_id": record.record_id, "from_lane": record.lane}
        refunded = flag_value(d.flags, FLAG_RECORD)
        try:
            trip = tap_in_trip_id(refunded or "", d).hex()
        except ValueError as exc:
            log.warning("tap-in refund without the tap-in's trip id: refused",
                        extra={**ids, "error": str(exc)})  # fmt: skip
            return
        try:
            dropped = await asyncio.to_thread(self.store.drop, trip, record.lane)
        except TapStoreError as exc:
            # Kept until the tap-in would have expired anyway (it was tapped before its refund).
            self.held.undropped[trip] = (record.ts_us / 1e6 + self.retention_s, record.lane)
            self.held.drops_copy.changed()
            log.error("tap's refund not applied: held until dropped",
                      extra={**ids, "pass_id": trip, "error": str(exc)})  # fmt: skip
            self.held.store_watch.says(exc, TAPS_UNDROPPED)
            await self.held.save_drops()
            return
        log.info("refunded tap-in dropped", extra={**ids, "pass_id": trip, "dropped": dropped})
        self.held.store_watch.says(None)

    # --- an exit gate -------------------------------------------------------------------------

    async def price(self, request: PriceTrip) -> TripPriced:
        pricing = self.pricing
        if pricing is None:
            raise LookupError("this gate does not price exits")
        now = self.wall()
        account = request.account_ref or code_account(
            request.code_kind,
            request.pass_text or "",
            pricing.keys(),
            pricing.deny(),
            pricing.account_key,
            now,
            pricing.rules,
        )
        try:
            tap_in, key, used, exits = await asyncio.to_thread(
                self._open_tap,
                account,
                {t: lane for t, (_, lane) in self.held.undropped.items()},
                now,
            )
        except TapStoreError as exc:  # unpriced (the runner answers the core and logs it)
            self.held.store_watch.says_held(exc, TAPS_UNREAD)
            raise
        except ReplayStoreError as exc:
            self.replay_watch.says(exc, REPLAY_UNREAD)
            raise
        exited = key is not None and (
            key in self.held.unmarked or self._stays_marked(key, used, exits)
        )
        answer = price_tap_out(request, tap_in, exited, pricing.tariff, pricing.rules, now)
        log.info(
            "tap-out priced",
            extra={
                "lane": self.lane,
                "trip_id": request.trip_id,
                "outcome": answer.outcome,
                "amount_minor": answer.amount_minor,
                "pass_id": answer.pass_id,
                "entry_plaza": answer.entry_plaza,
                "flags": list(answer.flags),  # entry_paid: what the tap-in already charged
            },
        )
        return answer

    def _open_tap(
        self, account: str | None, undropped: Mapping[str, str], now: float
    ) -> tuple[Record | None, str | None, UsedToken | None, Exits]:
        """The account's latest tap-in, its pass key, the replay store's mark of its exit and
        the exits it keeps."""
        encoded = self.store.latest(account, now, undropped) if account is not None else None
        if encoded is None:
            return None, None, None, Exits()
        record = Record.decode(encoded)
        try:
            trip = tap_in_entry(record).pass_hex
        except ValueError:
            return record, None, None, Exits()  # priced as no tap-in (lane.auth.trip_pricing)
        key = pass_key(trip)
        used = self.replay.get(key)
        return record, key, used, Exits() if used is None else self.replay.exits(key)

    def _stays_marked(self, key: str, used: UsedToken | None, exits: Exits) -> bool:
        """Is the exit marked, and not by a mark a refund held until reopened gives back (its
        exit's, when the mark keeps its exits: lane.core.exit_marks)?"""
        release = self.held.unreleased.get(key)
        if used is None or release is None:
            return used is not None
        if release.exit_id is not None and exits.made:
            return mark_of(refunded_by(exits, release.exit_id)) is not None
        owner = (release.lane, True) if release.lane is not None else (self.lane, False)
        made = gives_back(ExitMark(used.seen_at, used.exit_id), release.exit_id, release.seen_at)
        return (used.lane, used.remote) != owner or not made

    async def mark_used(self, action: MarkPassUsed) -> None:
        # Made at the exit record's time, as a heard exit's mark is: its refund gives back the
        # mark of that exit whatever the wall clock says by then (`_made_by`).
        key = pass_key(action.pass_id)
        own = Held(math.ceil(action.expires_at), None, _stamped(action.record_id), action.record_id)
        # The line learns of the exit from the tap_out record itself (`_exited_elsewhere`), not
        # a used-token message.
        try:
            first = await self.held.mark(key, own)
        except ReplayStoreError as exc:
            self.held.hold_exit(key, own)
            self._replay_failed(exc, REPLAY_UNMARKED, "tap-in exit held", action)
            await self.held.save_held()
            return
        self.replay_watch.says(None)
        log.info(
            "tap-in exited", extra={"lane": self.lane, "pass_id": action.pass_id, "first": first}
        )

    async def release(self, action: ReleasePass) -> None:
        # The line's other gates reopen it from the refund record (`on_record`, `_reopen`).
        ids = {"lane": self.lane, "pass_id": action.pass_id}
        now = self.wall()
        # Not before now: the release before this one marked an exit at the wall clock once
        # its record was durable, after its millisecond; a lane restarted into this release
        # with that passage carried gives its mark back too.
        made_by = max(self._made_by(action.record_id, now, ids), now)
        try:
            released = await self._release(pass_key(action.pass_id), None, made_by,
                                           action.record_id)  # fmt: skip
        except ReplayStoreError as exc:
            self._replay_failed(exc, REPLAY_UNRELEASED, "tap-in held until reopened", action)
            return
        log.info(
            "tap-in reopened",
            extra={"lane": self.lane, "pass_id": action.pass_id, "released": released},
        )

    async def _release(
        self, key: str, lane: str | None, made_by: float, exit_id: str | None
    ) -> bool:
        """Forget the exit record `exit_id` of `key`: its mark, whichever gate made it and
        refunds it (another exit's stays, lane.core.exit_marks), or, held only (the replay
        store never had it), the one exit held, when this gate made it (`lane` None) or heard
        it from `lane`, named `exit_id` and stamped by `made_by` (that gate's clock,
        `_made_by`); True when the mark went. A mark the replay store does not give back is
        held until reopened (`unreleased`) and the error raised."""
        held = self.held.unmarked.get(key)
        if held is not None and held.lane == lane:
            if not gives_back(ExitMark(held.seen_at, held.exit_id), exit_id, made_by):
                return False  # a later exit's, held: it stands, as its mark would
            del self.held.unmarked[key]
            self.held.held_copy.changed()
            await self.held.save_held()
            return True
        # Kept as long as any mark of the tap-in could be (it is older than the refund).
        release = Held(math.ceil(self.wall() + self.retention_s), lane, made_by, exit_id)
        try:
            # Only a mark made by the refunded exit: one made later is a later exit's, heard
            # before this refund.
            released = await self.held.unmark(key, release)
        except ReplayStoreError:
            self.held.unreleased[key] = release  # a later refund of the tap-in is a later exit's
            self.held.held_copy.changed()
            await self.held.save_held()
            raise
        self.replay_watch.says(None)
        return released

    def _made_by(
        self,
        exit_id: str,
        refunded_at: float,
        ids: Mapping[str, object],
        latest: float | None = None,
    ) -> float:
        """The latest time a mark of the refunded exit (record `exit_id`) can have: the end of
        the millisecond its record was stamped in (`_stamped`; a heard exit is marked by its
        record's microsecond). Not the refund's time: a wall clock stepped back between the
        exit and its refund would keep the mark, and that passenger would pay the maximum fare
        at the next exit. An exit record of another form (an id that is no UUIDv7), or named
        stamped after `latest` (another gate's refund: a later exit heard makes the mark no
        later than this gate's clock and the skew, `ReplayStore.mark_remote`, so a buggy gate's
        id named past that would give the later exit back too), is bounded by the refund's
        time (`refunded_at`, the refunding gate's clock)."""
        stamped = _stamped(exit_id)
        if stamped is None:
            return refunded_at
        if latest is not None and stamped > latest:
            log.warning(NAMED_AHEAD, extra={**ids, "exit_record_id": exit_id,
                                            "ahead_s": round(stamped - latest, 3)})  # fmt: skip
            return refunded_at
        if refunded_at < stamped:  # the refunding gate's clock went back since the exit
            log.warning(STEPPED_BACK,
                        extra={**ids, "exit_record_id": exit_id,
                               "behind_s": round(stamped - refunded_at, 3)})  # fmt: skip
        return stamped + STAMP_S

    def _replay_failed(
        self, exc: ReplayStoreError, stops: str, event: str, action: MarkPassUsed | ReleasePass
    ) -> None:
        self.replay_watch.says(exc, stops)
        log.error(event, extra={"lane": self.lane, "pass_id": action.pass_id, "error": str(exc)})


def _lane_of(record: Record) -> str:
    return record.lane


def _stamped(record_id: str) -> float | None:
    """When this lane's record `record_id` was stamped, to the millisecond: its id is the
    UUIDv7 of its time (uplink.queue). None for an id of another form."""
    unix_ms = uuid7_unix_ms(record_id)
    return None if unix_ms is None else unix_ms / 1000
