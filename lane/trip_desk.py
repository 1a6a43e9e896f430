"""A toll-exit lane's trip desk: price a trip offline, and mark its pass used once it exited.

`price` answers the core's `PriceTrip`: the evidence is the pass text the driver showed, the
pass bound to the plate the ANPR read (the retained `road/plates/{plate}` the entry lanes
publish; none bound: `found` False, the lane waits for the pass), or none (the attendant's
no_pass). The pass is verified by signature with the key set's pass keys, the used-pass
store (the replay store's `pass:` namespace, shared with the plaza like used tokens) says
whether it already exited, and lane.auth.trip_pricing decides the fare. Nothing asks the
back office.

`mark_used` answers `MarkPassUsed`: the exit record is durable, so the pass is recorded as
exited (and shared with the plaza's other lanes), and its plate binding is emptied.
`release` answers `ReleasePass`: that exit was refunded (the vehicle never left), so this
lane's own mark goes and the pass shown here again prices as a trip; the release is shared
with the plaza like the use (lane.auth.plaza), so the other lanes forget the mark they heard
from this one and price the pass as a trip too. The plate binding stays emptied.

A binding is taken only signed by a lane of the key set (lane.auth.peers: refused with a log
line and `peer_messages_refused` otherwise), for the plate of its topic, and only when it is
later than the binding the plate holds here (a replayed older binding never replaces the
plate's current trip). The empty retained message that clears a binding is an MQTT delete and
cannot be signed: taken as it is. A forged one only makes this lane forget the binding, and
the vehicle is then priced from the ticket it shows, as one whose plate the entry lane did not
read; it never prices anybody's trip from another entry: the forgotten binding's time is kept
(`forgotten`, for `road.max_trip_s`), so the plate's earlier binding replayed after the delete
is refused as older still (docs/closed-road.md, "Plate bindings"). Each binding's time taken
is kept in the replay store too (`plate_times`) and loaded at start as forgotten: a restart
forgets no plate's time, and the retained binding the broker hands the lane then is taken
only when no older than it. A time the store did not take is written with the next binding's
(`replay_store_error` says so meanwhile: a restart before then would forget it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lane.auth.fares import Tariff
from lane.auth.keys import KeySet
from lane.auth.passes import EntryPass, pass_key
from lane.auth.peers import Peers
from lane.auth.plate_binding import PlateBinding, decode_binding
from lane.auth.plaza import UsedTokenSharing, mark_used, release_mark
from lane.auth.replay import ReplayStore, ReplayStoreError
from lane.auth.trip_pricing import ExitLaneRules, evidence_of, not_found, price_trip
from lane.auth.trip_rules import normalise_plate
from lane.core.actions import MarkPassUsed, PriceTrip, ReleasePass
from lane.core.events import TripPriced
from lane.core.names import TripSource
from lane.store_watch import StoreWatch
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics

log = logging.getLogger("lane.trip_desk")

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
        self._bound_at: dict[str, float] = {}  # normalised plate -> its binding's signed time
        self.replay_watch = replay_watch  # the verifier's: one alarm for the one replay store
        # Plate -> the signed time of the binding a delete emptied (or taken before the lane
        # started), oldest first: kept while a trip may last, so an older binding stays refused.
        self.forgotten = replay.plate_times(wall() - rules.road.max_trip_s)
        self._unkept: dict[str, float] = {}  # binding times the replay store did not take
        # pass id -> the plate its entry bound and the pass text (to clear only that binding)
        self._entry_plates: dict[str, tuple[str, str]] = {}

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(topics.ROAD_PLATES, 1)]

    def handles(self, topic: str) -> bool:
        return topics.plate_of(topic) is not None

    async def handle(self, msg: Incoming) -> None:
        """A plate binding from an entry lane (retained); empty: the pass has exited."""
        plate = topics.plate_of(msg.topic)
        if plate is None:
            return
        if not msg.payload:
            self._forget(plate)
            return
        opened = self.peers.open(msg.topic, msg.payload, decode_binding, _lane_of, "plate binding")
        if opened is None:
            return
        binding = opened.message
        ids = {"lane": self.rules.lane, "topic": msg.topic, "plate": plate,
               "from_lane": binding.lane}  # fmt: skip
        if opened.signed and binding.plate != plate:
            log.warning("plate binding for another plate: refused",
                        extra={**ids, "bound_plate": binding.plate})  # fmt: skip
            return
        held = self._bound_at.get(plate, self.forgotten.get(plate, -1.0))
        if binding.ts < held:
            log.warning("plate binding older than the plate's: refused",
                        extra={**ids, "ts": binding.ts})  # fmt: skip
            return
        self.bound[plate] = binding.pass_text
        self._bound_at[plate] = binding.ts
        self.forgotten.pop(plate, None)
        await self._keep_time(plate, binding.ts, ids)

    async def _keep_time(self, plate: str, ts: float, ids: dict[str, str]) -> None:
        """Keep the binding's time over a restart, with those the store did not take before
        (a trip as long as any may be ago or less: an older one is refused by nobody)."""
        self._unkept[plate] = max(ts, self._unkept.get(plate, ts))
        cutoff = self.wall() - self.rules.road.max_trip_s
        for old in [held for held, at in self._unkept.items() if at < cutoff]:
            del self._unkept[old]
        owed = dict(self._unkept)
        try:
            await asyncio.to_thread(self.replay.keep_plate_times, owed, cutoff)
        except ReplayStoreError as exc:
            log.error("plate binding time not kept", extra={**ids, "error": str(exc)})
            self.replay_watch.says(exc, REPLAY_PLATES)
            return
        for held, at in owed.items():
            if self._unkept.get(held) == at:  # not taken again later meanwhile
                del self._unkept[held]
        self.replay_watch.says(None)

    def _forget(self, plate: str) -> None:
        """An empty retained binding (the pass exited, or anybody with the broker password: a
        delete is not signed). Its time stays until the binding is older than any trip may be:
        else the plate's earlier binding, replayed next, would price this trip from that entry
        (its pass exited: the farthest fare). A binding that old prices over time anyway."""
        self.bound.pop(plate, None)
        at = self._bound_at.pop(plate, None)
        if at is not None:
            self.forgotten.pop(plate, None)
            self.forgotten[plate] = at
        cutoff = self.wall() - self.rules.road.max_trip_s
        # Deletes come roughly in the order of their bindings' times; one out of order only
        # delays the prune of those behind it.
        while self.forgotten and next(iter(self.forgotten.values())) < cutoff:
            del self.forgotten[next(iter(self.forgotten))]

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
        plate = binding[0]
        try:
            await self.link.publish(topics.road_plate(plate), b"", qos=1, retain=True)
        except ConnectionError as exc:
            # The binding stays until the next exit of that plate overwrites it: that pass is
            # marked used, so it prices as pass_used, never twice as a trip.
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
