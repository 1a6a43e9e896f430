"""What a metro gate's tap desk (lane.tap_desk) holds while its stores fail, and where it
keeps it: the exits the replay store did not mark (`unmarked`) and the refunds whose marks it
did not give back (`unreleased`), copied into the tap store (`TapStore.hold`), and the refunded
tap-ins the tap store did not drop (`undropped`), copied into the replay store
(`ReplayStore.keep_undropped`): each store keeps what the other owes, so a restart while one
fails still knows it. Each copy is versioned (lane.held_copy) and written at each change; the
desk's upkeep writes what is owed once a store takes writes again (`write_owed`), and the tap
store's alarm (`store_watch`, probed by `probe_taps`) and the replay store's (the verifier's,
`replay_owed` said first in it) say what is held in memory only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lane.auth.plaza import mark_used, release_mark
from lane.auth.replay import ReplayStore, ReplayStoreError
from lane.held_copy import HeldCopy
from lane.store_watch import Alarm, StoreWatch
from lane.tap_store import Held, TapStore, TapStoreError

log = logging.getLogger("lane.tap_desk")  # its lines are the desk's events

TAPS_ALARM = "taps_store_error"
# What a failing store stops, as its alarm says it (lane.store_watch).
TAPS_UNDROPPED = (
    "refunded tap-ins held until dropped (they price no exit here; kept over a restart in the"
    " replay store, unless replay_store_error says in memory only): taps store"
)
REPLAY_UNMARKED = (
    "tap-in exits held until marked (kept over a restart in the taps store, unless"
    " taps_store_error says in memory only): replay store"
)
REPLAY_UNHELD = (
    "refunded tap-ins held until dropped in memory only (forgotten if the lane restarts; one"
    " may then price its passenger's exit here, its refunded entry fare taken off): replay store"
)
TAPS_UNHELD = (
    "tap-in exits and refunds held in memory only (forgotten if the lane restarts): taps store"
)
REPLAY_UNRELEASED = (
    "refunded tap-outs held until reopened (their tap-ins price as reopened here; kept over a"
    " restart in the taps store, unless taps_store_error says in memory only): replay store"
)


class HeldWrites:
    def __init__(  # noqa: PLR0917 - the two stores, their alarms and the clock
        self,
        lane: str,
        store: TapStore,
        replay: ReplayStore,
        wall: Callable[[], float],
        replay_watch: StoreWatch,
        alarm: Alarm | None,
    ) -> None:
        self.lane = lane
        self.store = store
        self.replay = replay
        self.wall = wall
        self.replay_watch = replay_watch  # the verifier's: one alarm for the one replay store
        # Exited tap-ins the replay store did not take (by pass key), this gate's or heard on
        # the line, and refunded exits whose marks it did not give back: kept in the tap store
        # over a restart (`held_copy`, versioned).
        self.unmarked: dict[str, Held] = store.held(wall())
        self.unreleased: dict[str, Held] = store.unreleased(wall())
        self.held_copy: HeldCopy[tuple[dict[str, Held], dict[str, Held]]] = HeldCopy()
        # Refunded tap-ins the tap store did not drop (trip id: when they expire anyway, the
        # gate that refunded them): the refund is heard once, so they are kept in the replay
        # store over a restart (`drops_copy`, versioned), not in the failing one.
        self.undropped: dict[str, tuple[float, str]] = replay.undropped(wall())
        self.drops_copy: HeldCopy[dict[str, tuple[float, str]]] = HeldCopy()
        replay_watch.holds(self.replay_owed)
        self.store_watch = StoreWatch(
            lane,
            TAPS_ALARM,
            "tap-ins not kept (their exits here pay the maximum fare): taps store",
            self.probe_taps,
            (TapStoreError,),
            alarm,
        )

    def hold_exit(self, key: str, held: Held) -> None:
        """Hold an exit the replay store did not mark. The first exit held stays, as the replay
        store keeps the first mark: one heard from another gate is not given back by this
        gate's refund."""
        if key not in self.unmarked:
            self.unmarked[key] = held
            self.held_copy.changed()

    async def mark(self, key: str, held: Held) -> bool:
        """Write an exit's mark (this gate's, or one heard from `held.lane`), after the refund
        held for its tap-in (an earlier exit's: the mark would not go in over it); True when
        new."""
        release = self.unreleased.get(key)
        if release is not None:
            await self.unmark(key, release)
            if self.unreleased.get(key) == release:
                del self.unreleased[key]
                self.held_copy.changed()
                # At once, not at the upkeep's next turn: a restart meanwhile loaded it again.
                await self.save_held()
        remote = held.lane is not None
        return await mark_used(self.replay, None, key, held.exp, held.lane or self.lane,
                               self.wall(), remote=remote, seen_at=held.seen_at)  # fmt: skip

    async def unmark(self, key: str, release: Held) -> bool:
        """Give back the mark of `key` this gate made (`release.lane` None) or heard from
        `release.lane`, made by `release.seen_at` (a later one stays)."""
        remote = release.lane is not None
        return await release_mark(self.replay, None, key, release.lane or self.lane, self.wall(),
                                  remote=remote, made_by=release.seen_at)  # fmt: skip

    def taps_written(self) -> None:
        """A write to the taps store committed: its alarm clears, unless it still owes writes
        (a copy of the held exits and refunds behind, refunded tap-ins not dropped), which its
        probe makes first."""
        if not self.held_copy.behind and not self.undropped:
            self.store_watch.says(None)

    async def save_held(self) -> None:
        """Keep the held exits and refunds in the tap store, so a restart still knows them;
        while it cannot, `taps_store_error` says they are in memory only, and the desk's
        upkeep tries again."""
        try:
            await self.keep_held()
        except TapStoreError as exc:
            self.store_watch.says(exc, self.taps_owed())
            ids = {"lane": self.lane, "held": len(self.unmarked),
                   "unreleased": len(self.unreleased), "error": str(exc)}  # fmt: skip
            log.error("held tap-in exits not saved", extra=ids)
        else:
            self.taps_written()

    def taps_owed(self, stops: str | None = TAPS_UNHELD) -> str | None:
        """What the failing taps store's alarm says: what it owes, refunded tap-ins held until
        dropped (a restart would charge wrongly) before held exits and refunds in memory only,
        before what this failure stops (None: the usual text)."""
        if self.undropped:
            return TAPS_UNDROPPED
        return TAPS_UNHELD if self.held_copy.behind else stops

    async def keep_held(self) -> None:
        """Write the copy of the held exits and refunds when it is behind (one at a time, the
        newest last: lane.held_copy)."""
        now = self.wall()
        await self.held_copy.save(
            lambda: (dict(self.unmarked), dict(self.unreleased)),
            lambda copy: self.store.hold(*copy, now),
        )

    async def drop_undropped(self) -> None:
        """Drop the refunded tap-ins the taps store did not (forgetting those expired anyway)."""
        now = self.wall()
        for trip, (expires, lane) in list(self.undropped.items()):
            expired = expires < now  # priced by no exit any more: nothing to drop
            if not expired:
                await asyncio.to_thread(self.store.drop, trip, lane)
            self.undropped.pop(trip, None)
            self.drops_copy.changed()  # a copy behind drops it again at a restart: no harm
            log.info("held refunded tap-in dropped",
                     extra={"lane": self.lane, "pass_id": trip, "expired": expired})  # fmt: skip

    def replay_owed(self) -> str | None:
        """What this desk holds until the replay store takes writes, the most pressing first:
        refunded tap-ins held until dropped in memory only (a restart would charge wrongly),
        refunds held until reopened, exits held until marked. Said first in its alarm whoever
        failed on the store (lane.store_watch: the verifier's offline tokens too)."""
        if self.undropped and self.drops_copy.behind:
            return REPLAY_UNHELD
        if self.unreleased:
            return REPLAY_UNRELEASED
        return REPLAY_UNMARKED if self.unmarked else None

    async def save_drops(self) -> None:
        """Keep the refunded tap-ins held until dropped in the replay store, so a restart still
        skips and drops them; while it cannot, `replay_store_error` says they are in memory
        only, and the desk's upkeep tries again (`write_held`)."""
        now = self.wall()
        try:
            await self.drops_copy.save(
                lambda: dict(self.undropped), lambda copy: self.replay.keep_undropped(copy, now)
            )
        except ReplayStoreError as exc:
            self.replay_watch.says(exc, REPLAY_UNHELD)
            log.error("held refunded tap-ins not saved", extra={"lane": self.lane,
                      "undropped": len(self.undropped), "error": str(exc)})  # fmt: skip

    async def probe_taps(self) -> None:
        """The taps store's probe while it fails: what the replay store owes first (it may work
        again before this one), then the writes this store owes (refunded tap-ins to drop, the
        copy of the held exits and refunds), then the probe's own write (an owed write may
        change nothing: a drop of a tap-in never kept); raises TapStoreError until they all
        commit, so the alarm clears once they are applied and the store takes writes."""
        await self.write_held()  # the replay store may take them before this store heals
        await self.drop_undropped()
        await self.keep_held()
        await asyncio.to_thread(self.store.probe)

    async def write_owed(self) -> None:
        """Write what the stores owe once they take writes (at start too: what a restart
        loaded): refunded tap-ins to drop, the held refunds and exits into the replay store
        (`write_held`, which the taps store's probe makes too), and the tap store's copy of
        them."""
        if self.undropped or self.held_copy.behind:  # owed since the probe cleared the alarm
            try:
                await self.probe_taps()
            except TapStoreError as exc:
                self.store_watch.says(exc, self.taps_owed())
        else:
            await self.write_held()

    async def write_held(self) -> None:
        """Write what the replay store owes while it takes writes (whether or not the taps
        store does): its copy of the refunded tap-ins held until dropped, the held refunds
        (their marks given back), then the held exits; then the taps store's copy of them,
        unless that store fails (its probe keeps the copy, its alarm's text kept)."""
        if self.replay_watch.text is not None:
            return  # still failing: its probe says when it works
        await self.save_drops()
        if self.replay_watch.text is not None:
            return
        stops = REPLAY_UNRELEASED
        try:
            for key, release in list(self.unreleased.items()):
                await self.unmark(key, release)
                if self.unreleased.get(key) == release:
                    del self.unreleased[key]
                    self.held_copy.changed()
                log.info("held tap-in reopening written", extra={"lane": self.lane, "key": key})
            stops = REPLAY_UNMARKED
            for key, held in list(self.unmarked.items()):
                await self.mark(key, held)
                if self.unmarked.get(key) == held:
                    del self.unmarked[key]
                    self.held_copy.changed()
                else:  # released meanwhile: give it back
                    await self.unmark(key, Held(held.exp, held.lane))
                log.info("held tap-in exit marked", extra={"lane": self.lane, "key": key})
        except ReplayStoreError as exc:
            self.replay_watch.says(exc, stops)
        if self.held_copy.behind and self.store_watch.text is None:
            await self.save_held()
