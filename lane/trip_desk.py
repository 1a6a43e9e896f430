"""A toll-exit lane's trip desk: price a trip offline, and mark its pass used once it exited.

`price` answers the core's `PriceTrip`: the evidence is the pass text the driver showed, the
pass bound to the plate the ANPR read (the retained `road/plates/{plate}` the entry lanes
publish; none bound: `found` False, the lane waits for the pass), or none (the attendant's
no_pass). The pass is verified by signature with the key set's pass keys, the used-pass
store (the replay store's `pass:` namespace, shared with the plaza like used tokens) says
whether it already exited, and lane.auth.trip_pricing decides the fare. Nothing asks the
back office.

`mark_used` answers `MarkPassUsed`: the exit record is durable, so the pass is recorded as
exited (and shared with the plaza's other lanes), and its plate binding is emptied: here at
once, and at every exit lane by the binding's tombstone, signed, retained in its place.
`release` answers `ReleasePass`: that exit was refunded (the vehicle never left), so this
lane's own mark goes and the pass shown here again prices as a trip; the release is shared
with the plaza like the use (lane.auth.plaza), so the other lanes forget the mark they heard
from this one and price the pass as a trip too. The plate binding stays emptied.

A binding is taken only signed by a lane of the key set (lane.auth.peers: refused with a log
line and `peer_messages_refused` otherwise), for the plate of its topic, and only when it is
no older than the binding the plate holds here (a replayed older binding never replaces the
plate's current trip; the broker hands the current one again on every reconnect). A tombstone
(lane.auth.plate_binding) is taken the same way, signed by the exit lane that sent it, and
empties the binding of its time or an older one, never the plate's next. An MQTT delete
(empty) cannot be signed: refused with a line, unless `auth.accept_unsigned_peers` (an exit
lane of the release before sends one). The emptied binding's time is kept (`forgotten`, for
`road.max_trip_s`), so that binding or an earlier one of the plate replayed after it is
refused (docs/closed-road.md, "Plate bindings"). Each plate's time, bound or emptied, is kept
in the replay store too (`plate_times`) and loaded at start: a restart forgets none, and a
binding the broker hands the lane then is taken by the same rules. A time the store did not
take is written with the next one, or by the replay store's probe (lane.store_watch, `owes`):
`replay_store_error` says so until one of them writes it (a restart before then would forget
it).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from lane.auth.fares import Tariff
from lane.auth.keys import KeySet
from lane.auth.passes import EntryPass, pass_key
from lane.auth.peer_messages import PeerRefusal, PeerRefused
from lane.auth.peers import Ignored, Peers
from lane.auth.plate_binding import BindingKind, PlateBinding, decode_binding, encode_binding
from lane.auth.plaza import UsedTokenSharing, mark_used, release_mark
from lane.auth.replay import PlateTime, ReplayStore, ReplayStoreError
from lane.auth.trip_pricing import ExitLaneRules, evidence_of, not_found, price_trip
from lane.auth.trip_rules import normalise_plate
from lane.core.actions import MarkPassUsed, PriceTrip, ReleasePass
from lane.core.events import TripPriced
from lane.core.names import TripSource
from lane.store_watch import StoreWatch
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics

log = logging.getLogger("lane.trip_desk")
# Who sent an MQTT delete taken unsigned, in `unsigned_peer_messages`: it names no lane.
UNSIGNED_DELETE = "whoever deleted plate bindings"

# The replay store's alarm while a binding's time it did not take is held in memory only.
REPLAY_PLATES = (
    "plate binding times held in memory only (a restart before the store takes them lets a"
    " plate's earlier binding, replayed after its current one was emptied, price its trip):"
    " replay store"
)


class TripDesk:
    def __init__(
        self,
        rules: ExitLaneRules,
        tariff: Tariff,
        keys: Callable[[], KeySet],
        replay: ReplayStore,
        link: MqttLink,
        *,
        sharing: UsedTokenSharing | None,
        peers: Peers,
        wall: Callable[[], float],
        replay_watch: StoreWatch,
    ) -> None:
        self.rules = rules
        self.tariff = tariff
        self.keys = keys  # the lane's current key set (files and retained updates)
        self.replay = replay
        self.link = link
        self.sharing = sharing
        self.peers = peers
        self.wall = wall
        self.bound: dict[str, str] = {}  # normalised plate -> the pass text bound to it
        self.replay_watch = replay_watch  # the verifier's: one alarm for the one replay store
        # Normalised plate -> its binding's signed time (loaded at start: the bindings held
        # then, until the broker hands them again), and the time of the binding emptied (its
        # pass exited, or loaded so), oldest first: kept while a trip may last, so no binding
        # older than the one held, nor the emptied one or older, is taken.
        self._bound_at: dict[str, float] = {}
        self.forgotten: dict[str, float] = {}
        for plate, at in replay.plate_times(wall() - rules.road.max_trip_s).items():
            (self.forgotten if at.emptied else self._bound_at)[plate] = at.ts
        self._unkept: dict[str, PlateTime] = {}  # binding times the replay store did not take
        replay_watch.owes(lambda: bool(self._unkept), self._write_held, REPLAY_PLATES)
        # pass id -> the plate its entry bound and the pass text (to clear only that binding)
        self._entry_plates: dict[str, tuple[str, str]] = {}

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(topics.ROAD_PLATES, 1)]

    def handles(self, topic: str) -> bool:
        return topics.plate_of(topic) is not None

    async def handle(self, msg: Incoming) -> None:
        """A plate binding from an entry lane (retained), or its tombstone from the exit lane
        the pass left by; empty: an exit lane of the release before emptied it (unsigned)."""
        plate = topics.plate_of(msg.topic)
        if plate is None:
            return
        if not msg.payload:
            await self._deleted(msg.topic, plate)
            return
        opened = self.peers.open(msg.topic, msg.payload, decode_binding, _lane_of, "plate binding")
        if opened is None:
            return
        binding = opened.message
        ids = {"lane": self.rules.lane, "topic": msg.topic, "plate": plate,
               "from_lane": binding.lane, "kind": binding.kind.value}  # fmt: skip
        if opened.signed and binding.plate != plate:
            self.peers.ignore(Ignored.ANOTHER_PLATE, opened, {**ids, "bound_plate": binding.plate})
            return
        if self._stale(plate, binding):
            self.peers.ignore(Ignored.OLDER_BINDING, opened, {**ids, "ts": binding.ts})
            return
        # The broker hands every retained binding and tombstone again at each connect (a
        # day's vehicles): one heard again has its time kept (written, or held for the probe)
        # and is not written again, an fsync apiece with the peer messages waiting behind.
        if binding.kind is BindingKind.EXITED:
            if self.forgotten.get(plate) != binding.ts:
                log.info("plate binding emptied: its pass exited", extra={**ids, "ts": binding.ts})
                await self._empty(plate, ids, binding.ts)
            return
        again = self._bound_at.get(plate) == binding.ts
        self.bound[plate] = binding.pass_text
        self._bound_at[plate] = binding.ts
        self.forgotten.pop(plate, None)
        if not again:
            await self._keep_time(plate, PlateTime(binding.ts, emptied=False), ids)

    def _stale(self, plate: str, binding: PlateBinding) -> bool:
        """Older than the plate's binding here; a binding no later than the one emptied (that
        one replayed: its pass has exited); a tombstone older than the emptied one too (it
        empties a binding of its time or older, never the plate's next)."""
        bound = self._bound_at.get(plate, -1.0)
        emptied = self.forgotten.get(plate, -1.0)
        if binding.kind is BindingKind.EXITED:
            return binding.ts < max(bound, emptied)
        return binding.ts < bound or binding.ts <= emptied

    async def _keep_time(self, plate: str, at: PlateTime, ids: dict[str, str]) -> None:
        """Keep the plate's time over a restart, with those the store did not take before."""
        self._unkept[plate] = max(at, self._unkept.get(plate, at))
        try:
            await self._write_unkept()
        except ReplayStoreError as exc:
            log.error("plate binding time not kept", extra={**ids, "error": str(exc)})
            self.replay_watch.says(exc, REPLAY_PLATES)
            return
        self.replay_watch.says(None)

    async def _write_unkept(self) -> None:
        """Write the plates' times the replay store did not take (a trip as long as any may be
        ago or less: an older one is refused by nobody). Raises ReplayStoreError."""
        cutoff = self.wall() - self.rules.road.max_trip_s
        for old in [held for held, kept in self._unkept.items() if kept.ts < cutoff]:
            del self._unkept[old]
        owed = dict(self._unkept)
        await asyncio.to_thread(self.replay.keep_plate_times, owed, cutoff)
        for held, kept in owed.items():
            if self._unkept.get(held) == kept:  # not taken again later meanwhile
                del self._unkept[held]

    async def _write_held(self) -> None:
        """The replay store's probe's first write while it fails (`_write_unkept`)."""
        held = len(self._unkept)
        await self._write_unkept()
        log.info("held plate binding times kept", extra={"lane": self.rules.lane, "plates": held})

    async def _deleted(self, topic: str, plate: str) -> None:
        """An MQTT delete is not signed: anybody with the broker password can send one. Taken
        only while unsigned messages are (an exit lane of the release before empties the
        binding so); refused otherwise (the tombstone is what empties a binding)."""
        if self.peers.accept_unsigned:
            self.peers.took_unsigned(UNSIGNED_DELETE)
            ids = {"lane": self.rules.lane, "topic": topic, "plate": plate}
            await self._empty(plate, ids)
            return
        refused = PeerRefused(PeerRefusal.UNSIGNED, "an MQTT delete is not signed")
        self.peers.refuse(topic, "plate binding delete", refused, self.wall())

    async def _empty(self, plate: str, ids: dict[str, str], exited_at: float = -1.0) -> None:
        """The plate's binding emptied (its pass exited; `exited_at`: the time of the binding
        its tombstone empties). Its time stays until the binding is older than any trip may
        be: else the plate's earlier binding, or that one, replayed next, would price this
        trip from that entry (its pass exited: the farthest fare). A binding that old prices
        over time anyway."""
        self.bound.pop(plate, None)
        at = max(self._bound_at.pop(plate, -1.0), self.forgotten.pop(plate, -1.0), exited_at)
        cutoff = self.wall() - self.rules.road.max_trip_s
        # Bindings empty roughly in the order of their times; one out of order only delays
        # the prune of those behind it.
        while self.forgotten and next(iter(self.forgotten.values())) < cutoff:
            del self.forgotten[next(iter(self.forgotten))]
        if at >= cutoff:
            self.forgotten[plate] = at
            await self._keep_time(plate, PlateTime(at, emptied=True), ids)

    async def price(self, request: PriceTrip) -> TripPriced:
        text = request.pass_text
        if request.source is TripSource.PLATE:
            bound = self.bound.get(normalise_plate(request.plate or ""))
            if bound is None:
                return not_found(request)
            text = bound
        elif request.source is TripSource.LOST:
            text = None
        now = self.wall()
        evidence = evidence_of(text, self.keys(), now, self.rules)
        used = False
        if isinstance(evidence, EntryPass):
            key = pass_key(evidence.pass_hex)
            used = await asyncio.to_thread(self.replay.get, key) is not None
            if evidence.plate is not None and text is not None:
                plate = normalise_plate(evidence.plate)
                self._entry_plates[evidence.pass_hex] = (plate, text)
        answer = price_trip(request, evidence, used, self.tariff, self.rules, now)
        log.info(
            "trip priced",
            extra={
                "lane": self.rules.lane,
                "trip_id": request.trip_id,
                "source": request.source.value,
                "outcome": answer.outcome,
                "amount_minor": answer.amount_minor,
                "pass_id": answer.pass_id,
            },
        )
        return answer

    async def mark_used(self, action: MarkPassUsed) -> None:
        key = pass_key(action.pass_id)
        exp = int(action.expires_at) + 1
        now = self.wall()
        first = await mark_used(self.replay, self.sharing, key, exp, self.rules.lane, now)
        log.info(
            "pass exited",
            extra={"lane": self.rules.lane, "pass_id": action.pass_id, "first": first},
        )
        binding = self._entry_plates.pop(action.pass_id, None)
        if binding is None or self.bound.get(binding[0]) != binding[1]:
            return  # not bound, or bound to the plate's next trip since
        plate, text = binding
        exited = PlateBinding(plate, text, self.rules.lane, self._bound_at[plate],
                              BindingKind.EXITED)  # fmt: skip
        await self._empty(plate, {"lane": self.rules.lane, "plate": plate,
                                  "pass_id": action.pass_id})  # fmt: skip
        try:
            # Retained in the binding's place, and dropped once no trip is that long.
            await self.link.publish(topics.road_plate(plate),
                                    self.peers.seal(encode_binding(exited)), qos=1, retain=True,
                                    expiry_s=math.ceil(self.rules.road.max_trip_s))  # fmt: skip
        except ConnectionError as exc:
            # The binding stays at the other exit lanes until the plate's next binding
            # replaces it: that pass is marked used, so it prices as pass_used, never twice.
            log.warning(
                "plate binding not cleared", extra={"lane": self.rules.lane, "error": str(exc)}
            )

    async def release(self, action: ReleasePass) -> None:
        key = pass_key(action.pass_id)
        released = await release_mark(self.replay, self.sharing, key, self.rules.lane, self.wall())
        log.info(
            "pass released",
            extra={"lane": self.rules.lane, "pass_id": action.pass_id, "released": released},
        )


def _lane_of(binding: PlateBinding) -> str:
    return binding.lane
