"""What a metro gate's tap desk (lane.tap_desk) holds while its stores fail, and where it
keeps it: the exits the replay store did not mark (`unmarked`) and the refunds whose marks it
did not give back (`unreleased`), copied into the tap store (`TapStore.hold`), and the refunded
tap-ins the tap store did not drop (`undropped`), copied into the replay store
(`ReplayStore.keep_undropped`): each store keeps what the other owes, so a restart while one
fails still knows it. Each copy is versioned (lane.held_copy) and written at each change; the
desk's upkeep writes what is owed once a store takes writes again (`write_owed`). Each thing
held is owed to its store (lane.store_watch `owes`): the tap store's alarm (`store_watch`,
probed by `probe_taps`) and the replay store's (the verifier's) say it first, their probes write
it first, and neither clears while it is held, so a restart right after the clear loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from lane.auth.plaza import mark_used, release_mark
from lane.auth.replay import ReplayStore, ReplayStoreError
from lane.core.exit_marks import ExitMark, names_mark
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
        # The most pressing first: refunded tap-ins held until dropped in memory only (a
        # restart would charge wrongly), refunds held until reopened, exits held until marked.
        replay_watch.owes(
            lambda: bool(self.undropped) and self.drops_copy.behind, self.keep_drops, REPLAY_UNHELD
        )
        replay_watch.owes(lambda: bool(self.unreleased), self.write_unreleased, REPLAY_UNRELEASED)
        replay_watch.owes(lambda: bool(self.unmarked), self.write_unmarked, REPLAY_UNMARKED)
        self.store_watch = StoreWatch(
            lane,
            TAPS_ALARM,
            "tap-ins not kept (their exits here pay the maximum fare): taps store",
            self.probe_taps,
            (TapStoreError,),
            alarm,
        )
        self.store_watch.owes(lambda: bool(self.undropped), self.drop_undropped, TAPS_UNDROPPED)
        self.store_watch.owes(lambda: self.held_copy.behind, self.keep_held, TAPS_UNHELD)

    def hold_exit(self, key: str, held: Held) -> None:
        """Hold an exit the replay store did not mark. The first exit held stays its gate's,
        as the replay store keeps the first mark's lane: one heard from another gate is not
        given back by this gate's refund. One exit is held per tap-in (the replay store keeps
        them all): a later exit names it, and makes it that late when heard
        (lane.core.exit_marks `names_mark`): the refund of the first exit then gives back
        nothing, and the refund of the one named drops it."""
        first = self.unmarked.get(key)
        if first is None:
            self.unmarked[key] = held
        else:
            mark = ExitMark(first.seen_at, first.exit_id)
            named = held.exit_id is not None and names_mark(
                mark, held.seen_at, self.replay.bounds.skew_s
            )
            seen = first.seen_at
            if held.lane is not None and held.seen_at is not None:
                seen = held.seen_at if seen is None else max(seen, held.seen_at)
            kept = first._replace(seen_at=seen, exit_id=held.exit_id if named else first.exit_id)
            if kept == first:
                return
            self.unmarked[key] = kept
        self.held_copy.changed()

    async def mark(self, key: str, held: Held) -> bool:
        """Write an exit's mark (this gate's, or one heard from `held.lane`), after the refund
        held for its tap-in (an earlier exit's: the mark would not go in over it); True when
        new."""
        release = self.unreleased.get(key)
        if release is not None and await self._give_back(key, release):
            # At once, not at the upkeep's next turn: a restart meanwhile loaded it again.
            await self.save_held()
        remote = held.lane is not None
        return await mark_used(self.replay, None, key, held.exp, held.lane or self.lane,
                               self.wall(), remote=remote, seen_at=held.seen_at,
                               exit_id=held.exit_id)  # fmt: skip

    async def _give_back(self, key: str, release: Held) -> bool:
        """Give back the mark of a held refund, which is then held no more unless another
        refund of `key` took its place meanwhile; True when it is let go."""
        await self.unmark(key, release)
        if self.unreleased.get(key) != release:
            return False
        del self.unreleased[key]
        self.held_copy.changed()
        return True

    async def unmark(self, key: str, release: Held) -> bool:
        """Give back the mark of `key` this gate made (`release.lane` None) or heard from
        `release.lane`, made by `release.seen_at` by the exit `release.exit_id` (whoever made
        it; another exit's stays), the refund kept until `release.exp`."""
        remote = release.lane is not None
        return await release_mark(self.replay, None, key, release.lane or self.lane, self.wall(),
                                  remote=remote, made_by=release.seen_at,
                                  exit_id=release.exit_id, exp=release.exp)  # fmt: skip

    async def save_held(self) -> None:
        """Keep the held exits and refunds in the tap store, so a restart still knows them;
        while it cannot, `taps_store_error` says they are in memory only, and the desk's
        upkeep tries again."""
        try:
            await self.keep_held()
        except TapStoreError as exc:
            self.store_watch.says_held(exc)
            ids = {"lane": self.lane, "held": len(self.unmarked),
                   "unreleased": len(self.unreleased), "error": str(exc)}  # fmt: skip
            log.error("held tap-in exits not saved", extra=ids)
        else:
            self.store_watch.says(None)

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

    async def keep_drops(self) -> None:
        """Write the replay store's copy of the refunded tap-ins held until dropped when it is
        behind (lane.held_copy)."""
        now = self.wall()
        await self.drops_copy.save(
            lambda: dict(self.undropped), lambda copy: self.replay.keep_undropped(copy, now)
        )

    async def save_drops(self) -> None:
        """Keep the refunded tap-ins held until dropped in the replay store, so a restart still
        skips and drops them; while it cannot, `replay_store_error` says they are in memory
        only, and its probe tries again."""
        try:
            await self.keep_drops()
        except ReplayStoreError as exc:
            self.replay_watch.says(exc, REPLAY_UNHELD)
            log.error("held refunded tap-ins not saved", extra={"lane": self.lane,
                      "undropped": len(self.undropped), "error": str(exc)})  # fmt: skip

    async def probe_taps(self) -> None:
        """The taps store's probe while it fails, after the writes it is owed (lane.store_watch
        `settle`): what the replay store owes first (it may work again before this one, and
        the verifier's probe writes it only while that store's alarm holds: not what a restart
        loaded), the copy of what that changed, then the probe's own write (an owed write may
        change nothing: a drop of a tap-in never kept); raises TapStoreError until they all
        commit."""
        await self.write_held()
        await self.keep_held()
        await asyncio.to_thread(self.store.probe)

    async def write_owed(self) -> None:
        """Write what the stores owe while they take writes (at start too: what a restart
        loaded): the held refunds and exits into the replay store (`write_held`, which the
        taps store's probe makes too), then what the taps store is owed."""
        await self.write_held()
        try:
            await self.store_watch.settle()
        except TapStoreError as exc:
            self.store_watch.says_held(exc)

    async def write_held(self) -> None:
        """Write what the replay store owes while it takes writes (whether or not the taps
        store does; while it fails, its probe writes them): its copy of the refunded tap-ins
        held until dropped, the held refunds (their marks given back), then the held exits."""
        if self.replay_watch.text is not None:
            return  # still failing: its probe says when it works
        # A copy behind by drops only is owed nothing (a restart drops them again), but kept in
        # step here.
        await self.save_drops()
        if self.replay_watch.text is not None:
            return
        try:
            await self.replay_watch.settle()
        except ReplayStoreError as exc:
            self.replay_watch.says_held(exc)
            log.error("held writes not made to the replay store", extra={"lane": self.lane,
                      "held": len(self.unmarked), "unreleased": len(self.unreleased),
                      "undropped": len(self.undropped), "error": str(exc)})  # fmt: skip

    async def write_unreleased(self) -> None:
        """Give back the marks of the held refunds, then keep the taps store's copy in step
        (unless that store fails: its probe keeps the copy, its alarm's text kept)."""
        try:
            for key, release in list(self.unreleased.items()):
                await self._give_back(key, release)
                log.info("held tap-in reopening written", extra={"lane": self.lane, "key": key})
        finally:
            await self._copy_held()

    async def write_unmarked(self) -> None:
        """Mark the held exits, then keep the taps store's copy in step (`write_unreleased`)."""
        try:
            for key, held in list(self.unmarked.items()):
                await self.mark(key, held)
                if self.unmarked.get(key) == held:
                    del self.unmarked[key]
                    self.held_copy.changed()
                else:  # released meanwhile: give it back
                    await self.unmark(key, Held(held.exp, held.lane, exit_id=held.exit_id))
                log.info("held tap-in exit marked", extra={"lane": self.lane, "key": key})
        finally:
            await self._copy_held()

    async def _copy_held(self) -> None:
        """At once, not at the taps store's upkeep's next turn: a lane restarted meanwhile
        would load what was just written as held again."""
        if self.held_copy.behind and self.store_watch.text is None:
            await self.save_held()
