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

A tap-in the `TapStore` cannot keep (locked, corrupt, an I/O error) leaves its passenger to
pay the maximum fare at this gate's exit (never a free ride): the failed write raises
`taps_store_error`, and `upkeep` probes the store every second while it holds
(`TapStore.probe`, lane.store_watch), clearing it once a write commits. A tap-in the store
cannot read at an exit leaves that exit unpriced (the passenger is refused "Fare not known",
never charged a guess) and raises the same alarm, saying so. A refunded tap-in it cannot drop
is held until dropped (`undropped`, in memory only: the refund is heard once): `price` skips
it when the refunding gate wrote it, as the drop would (it prices no exit here), and the
store's probe drops it first, so the alarm, which says so, clears once it is dropped. A restart
meanwhile forgets it: while it is its passenger's
latest tap-in it then prices their exit here with its refunded entry fare taken off.

The replay store is the verifier's, and so is its alarm (`replay_store_error`, the verifier's
`StoreWatch`, whose probe clears it). An exit it cannot read is unpriced, as above. An exit it
cannot mark, this gate's or another gate's heard on the line, is held (`unmarked`): the tap-in
prices as exited here all the same (a trip is never paid twice), and `upkeep` writes the held
marks once the store works again (whether or not the tap store does), a heard one as heard
from its gate (so that gate's refund reopens it, held or written); the first exit held for a
tap-in stays, as the replay store keeps the first mark. The held
exits are kept in the tap store too (`TapStore.hold`, another file), so a restart before the
replay store heals loads them and still prices those tap-ins as exited; while the tap store
cannot keep them either they are in memory only, a restart would forget them, and
`taps_store_error` says so until a write commits there. A release it cannot write (this
gate's own, or another gate's refund heard on the line) leaves the mark: that passenger's next
exit here pays the maximum fare, flagged, and the alarm says refunded tap-outs were not
reopened.
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
from lane.auth.peers import Peers
from lane.auth.replay import ReplayStore, ReplayStoreError
from lane.auth.trip_pricing import ExitLaneRules, code_account, price_tap_out
from lane.auth.trip_rules import tap_in_entry
from lane.core.actions import MarkPassUsed, PriceTrip, ReleasePass
from lane.core.events import TripPriced
from lane.core.names import AuthResult, RecordKind
from lane.core.records import FLAG_RECORD, REFUND_FLAG, flag_value, tap_in_trip_id
from lane.store_watch import PROBE_EVERY_S, Alarm, StoreWatch
from lane.tap_store import Held, TapStore, TapStoreError
from lane.transport.mqtt import Incoming, MqttLink
from lane.transport.outbox import Outbox
from lane.wire import topics
from lane.wire.codec import PayloadError
from uplink.records import Record

log = logging.getLogger("lane.tap_desk")

SHARED = (RecordKind.TAP_IN, RecordKind.TAP_OUT)
PAID = (AuthResult.APPROVED, AuthResult.DEFERRED)
TAPS_ALARM = "taps_store_error"
# What a failing store stops, as its alarm says it (lane.store_watch).
TAPS_UNREAD = 'tap-outs not priced (passengers refused "Fare not known"): taps store'
TAPS_UNDROPPED = (
    "refunded tap-ins held until dropped (they price no exit here; a restart meanwhile forgets"
    " them, and one may then price its passenger's exit here, its refunded entry fare taken"
    " off): taps store"
)
REPLAY_UNREAD = 'tap-outs not priced (passengers refused "Fare not known"): replay store'
REPLAY_UNMARKED = (
    "tap-in exits held until marked (kept over a restart in the taps store, unless"
    " taps_store_error says in memory only): replay store"
)
TAPS_UNHELD = "tap-in exits held in memory only (forgotten if the lane restarts): taps store"
REPLAY_UNRELEASED = (
    "refunded tap-outs not reopened (their next exit here pays the maximum fare): replay store"
)


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
        self.skew_s = skew_s  # a tap-in later than the gate's clock by more: refused
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
        # Exited tap-ins the replay store did not take (by pass key), this gate's or heard on
        # the line, kept in the tap store over a restart; `_unsaved` while its copy is behind.
        self.unmarked: dict[str, Held] = store.held(wall())
        self._unsaved = False
        self._saving = asyncio.Lock()
        # Refunded tap-ins the tap store did not drop (trip id: when they expire anyway, the
        # gate that refunded them), in memory only: the refund is heard once.
        self.undropped: dict[str, tuple[float, str]] = {}
        self.store_watch = StoreWatch(
            lane,
            TAPS_ALARM,
            "tap-ins not kept (their exits here pay the maximum fare): taps store",
            self._probe_taps,
            (TapStoreError,),
            alarm,
        )
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
        commits; otherwise write what the stores owe (`_write_owed`)."""
        await self.store_watch.run(sleep, self._write_owed, PROBE_EVERY_S)

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
        if (
            not refund
            and d.kind != RecordKind.TAP_OUT
            and record.ts_us / 1e6 > self.wall() + self.skew_s
        ):
            # Kept, it would be its account's latest tap-in until long after it: every real
            # tap-in of that account would price as it, or as exited once it had.
            log.warning(
                "tap-in from the future: refused",
                extra={"lane": self.lane, "topic": msg.topic, "record_id": record.record_id,
                       "from_lane": record.lane, "ts_us": record.ts_us},
            )  # fmt: skip
            return
        until = record.ts_us / 1e6 + self.retention_s  # no gate acts on it any later
        if not await self.peers.first_hearing(opened, until, {"record_id": record.record_id}):
            return
        self.received += 1
        if d.kind == RecordKind.TAP_OUT:
            await (self._reopen(record) if refund else self._exited_elsewhere(record))
        else:
            await (self._drop_refunded(record) if refund else self._keep(record, opened.payload))

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
            self.store_watch.says(exc)
            return
        self._taps_written()

    async def _exited_elsewhere(self, record: Record) -> None:
        """Another gate's tap-out: its tap-in has exited, marked like a road pass (kept until
        it expires). A mark the replay store does not take is held as this gate's own."""
        d = record.draft
        if d.pass_id is None:
            return  # it closed no tap-in: priced `pass_used` or `no_pass`
        key = pass_key(d.pass_id)
        exp = math.ceil(record.ts_us / 1e6 + self.retention_s)
        heard = Held(exp, record.lane, record.ts_us / 1e6)
        try:
            await asyncio.to_thread(self._mark, key, heard)
        except ReplayStoreError as exc:
            self.unmarked.setdefault(key, heard)  # one held exit is enough to close it here
            log.error("tap-in exit held", extra={"lane": self.lane, "from_lane": record.lane,
                      "record_id": record.record_id, "pass_id": d.pass_id,
                      "error": str(exc)})  # fmt: skip
            self.replay_watch.says(exc, REPLAY_UNMARKED)
            await self._save_held()
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
        try:
            released = await self._release(pass_key(d.pass_id), record.lane)
        except ReplayStoreError as exc:
            log.error("tap's refund not applied", extra={**ids, "error": str(exc)})
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
            self.undropped[trip] = (record.ts_us / 1e6 + self.retention_s, record.lane)
            log.error("tap's refund not applied: held until dropped",
                      extra={**ids, "pass_id": trip, "error": str(exc)})  # fmt: skip
            self.store_watch.says(exc, TAPS_UNDROPPED)
            return
        log.info("refunded tap-in dropped", extra={**ids, "pass_id": trip, "dropped": dropped})
        self._taps_written()

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
            tap_in, exited = await asyncio.to_thread(
                self._open_tap, account, {t: lane for t, (_, lane) in self.undropped.items()}, now
            )
        except TapStoreError as exc:  # unpriced (the runner answers the core and logs it)
            self.store_watch.says(exc, TAPS_UNREAD)
            raise
        except ReplayStoreError as exc:
            self.replay_watch.says(exc, REPLAY_UNREAD)
            raise
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
    ) -> tuple[Record | None, bool]:
        encoded = self.store.latest(account, now, undropped) if account is not None else None
        if encoded is None:
            return None, False
        record = Record.decode(encoded)
        try:
            trip = tap_in_entry(record).pass_hex
        except ValueError:
            return record, False  # priced as no tap-in (lane.auth.trip_pricing)
        key = pass_key(trip)
        return record, key in self.unmarked or self.replay.get(key) is not None

    async def mark_used(self, action: MarkPassUsed) -> None:
        key, own = pass_key(action.pass_id), Held(math.ceil(action.expires_at))
        # The line learns of the exit from the tap_out record itself (`_exited_elsewhere`), not
        # a used-token message.
        try:
            first = await asyncio.to_thread(self._mark, key, own)
        except ReplayStoreError as exc:
            # The first exit held stays, as the replay store keeps the first mark: one heard
            # from another gate is not given back by this gate's refund.
            self.unmarked.setdefault(key, own)
            self._replay_failed(exc, REPLAY_UNMARKED, "tap-in exit held", action)
            await self._save_held()
            return
        self.replay_watch.says(None)
        log.info(
            "tap-in exited", extra={"lane": self.lane, "pass_id": action.pass_id, "first": first}
        )

    async def release(self, action: ReleasePass) -> None:
        # The line's other gates reopen it from the refund record (`on_record`, `_reopen`).
        try:
            released = await self._release(pass_key(action.pass_id), None)
        except ReplayStoreError as exc:
            self._replay_failed(exc, REPLAY_UNRELEASED, "tap-in not reopened", action)
            return
        log.info(
            "tap-in reopened",
            extra={"lane": self.lane, "pass_id": action.pass_id, "released": released},
        )

    def _mark(self, key: str, held: Held) -> bool:
        """Write an exit's mark (this gate's, or one heard from `held.lane`); True when new."""
        if held.lane is None:
            return self.replay.check_and_mark(key, held.exp, self.lane, self.wall())
        return self.replay.mark_remote(key, held.exp, held.lane, held.seen_at, now=self.wall())

    async def _release(self, key: str, lane: str | None) -> bool:
        """Forget the exit of `key` this gate made (`lane` None) or heard from `lane`: held
        only (the replay store never had it), or its mark; True when there was one."""
        held = self.unmarked.get(key)
        if held is not None and held.lane == lane:
            del self.unmarked[key]
            await self._save_held()
            return True
        released = await asyncio.to_thread(self._unmark, key, lane)
        self.replay_watch.says(None)
        return released

    def _unmark(self, key: str, lane: str | None) -> bool:
        """Give back the mark of `key` this gate made (`lane` None) or heard from `lane`."""
        remote = lane is not None
        return self.replay.release(key, lane or self.lane, remote=remote) is not None

    def _replay_failed(
        self, exc: ReplayStoreError, stops: str, event: str, action: MarkPassUsed | ReleasePass
    ) -> None:
        self.replay_watch.says(exc, stops)
        log.error(event, extra={"lane": self.lane, "pass_id": action.pass_id, "error": str(exc)})

    def _taps_written(self) -> None:
        """A write to the taps store committed: its alarm clears, unless it still owes writes
        (held exits not kept, refunded tap-ins not dropped), which its probe makes first."""
        if not self._unsaved and not self.undropped:
            self.store_watch.says(None)

    async def _save_held(self) -> None:
        """Keep the held exits in the tap store, so a restart still knows them; while it cannot,
        `taps_store_error` says they are in memory only, and `upkeep` tries again."""
        try:
            await self._keep_held()
        except TapStoreError as exc:
            self.store_watch.says(exc, self._taps_owed())
            ids = {"lane": self.lane, "held": len(self.unmarked), "error": str(exc)}
            log.error("held tap-in exits not saved", extra=ids)
        else:
            self._taps_written()

    def _taps_owed(self) -> str:
        """What the failing taps store's alarm says it owes: refunded tap-ins held until dropped
        (a restart would charge wrongly) before held exits in memory only."""
        return TAPS_UNDROPPED if self.undropped else TAPS_UNHELD

    async def _keep_held(self) -> None:
        async with self._saving:  # one copy written at a time, the latest last
            held = dict(self.unmarked)
            self._unsaved = True
            await asyncio.to_thread(self.store.hold, held, self.wall())
            self._unsaved = False

    async def _drop_undropped(self) -> None:
        """Drop the refunded tap-ins the taps store did not (forgetting those expired anyway)."""
        now = self.wall()
        for trip, (expires, lane) in list(self.undropped.items()):
            expired = expires < now  # priced by no exit any more: nothing to drop
            if not expired:
                await asyncio.to_thread(self.store.drop, trip, lane)
            self.undropped.pop(trip, None)
            log.info("held refunded tap-in dropped",
                     extra={"lane": self.lane, "pass_id": trip, "expired": expired})  # fmt: skip

    async def _probe_taps(self) -> None:
        """The taps store's probe while it fails: the held exits into the replay store first
        (it may work again before this one), then the writes this store owes (refunded
        tap-ins to drop, held exits to keep), then the probe's own write (an owed write may
        change nothing: a drop of a tap-in never kept); raises TapStoreError until they all
        commit, so the alarm clears once they are applied and the store takes writes."""
        await self._mark_held()  # the replay store may take them before this store heals
        await self._drop_undropped()
        if self._unsaved:
            await self._keep_held()
        await asyncio.to_thread(self.store.probe)

    async def _write_owed(self) -> None:
        """Write what the stores owe once they take writes (at start too: the held exits a
        restart loaded): refunded tap-ins to drop, the held exits into the replay store
        (`_mark_held`, which the taps store's probe makes too), and the tap store's copy of
        them."""
        if self.undropped or self._unsaved:  # owed since the probe cleared the alarm
            try:
                await self._probe_taps()
            except TapStoreError as exc:
                self.store_watch.says(exc, self._taps_owed())
        else:
            await self._mark_held()

    async def _mark_held(self) -> None:
        """Write the held exits into the replay store while it takes writes (whether or not
        the taps store does), then the taps store's copy of them."""
        marked = False
        for key, held in list(self.unmarked.items()):
            if self.replay_watch.text is not None:
                break  # still failing: its probe says when it works
            try:
                await asyncio.to_thread(self._mark, key, held)
                if self.unmarked.get(key) == held:
                    del self.unmarked[key]
                else:  # released meanwhile: give it back
                    await asyncio.to_thread(self._unmark, key, held.lane)
            except ReplayStoreError as exc:
                self.replay_watch.says(exc, REPLAY_UNMARKED)
                break
            marked = True
            log.info("held tap-in exit marked", extra={"lane": self.lane, "key": key})
        if marked and self.store_watch.text is None:
            await self._save_held()
        elif marked:  # the taps store fails: its probe keeps the copy, its alarm's text kept
            self._unsaved = True


def _lane_of(record: Record) -> str:
    return record.lane
