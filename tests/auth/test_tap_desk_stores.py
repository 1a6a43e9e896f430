"""A metro exit gate's tap desk while its stores fail at run time: real SQLite files, locked
by another connection or corrupted under the open store, then put right. Safe while it lasts
(never a guessed fare, a tap-in exits once), alarmed with a clear text, cleared by itself
(docs/operations.md, "Alarms"; docs/closed-road.md)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from polling import eventually
from test_metro_pricing import (
    CODES,
    EXIT_ID,
    NOW,
    TARIFF,
    ask,
    desk_and_verifier,
    refund_of,
    signed,
    tap_in,
    tap_out_of,
)

from lane.auth.replay import ReplayStoreError
from lane.auth.tokens import issue_compact_token
from lane.core.actions import MarkPassUsed, ReleasePass
from lane.tap_desk import REPLAY_UNREAD, TAPS_UNREAD, TapDesk
from lane.tap_held import REPLAY_UNMARKED, REPLAY_UNRELEASED, TAPS_UNDROPPED, TAPS_UNHELD
from lane.tap_store import TapStoreError
from lane.transport.mqtt import Incoming
from lane.wire import topics
from sim.codes import KID
from uplink.records import Record


def _commit_elsewhere(path: Path) -> None:
    """Another connection commits and checkpoints: the store's own connection then reads the
    file again instead of the pages it holds."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute(f"PRAGMA user_version = {version + 1}")
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@contextmanager
def corrupted(path: Path) -> Iterator[None]:
    """Every page but the first overwritten under the open store (a bad disk, a stray
    write), then put back as it was."""
    _commit_elsewhere(path)
    good = path.read_bytes()
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:
        f.seek(page)
        f.write(b"\xff" * (len(good) - page))
    _commit_elsewhere(path)
    try:
        yield
    finally:
        with path.open("r+b") as f:
            f.write(good)
        _commit_elsewhere(path)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process takes the write lock and keeps it (a stuck backup, a sqlite3 shell)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


FARE = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
FARTHEST = TARIFF.farthest_fare(1, "S03", NOW).amount_minor


class Exits:
    """An exit gate's desk on real store files in `tmp`, its alarms (raised, not cleared), and
    a passenger who tapped in at S01 and taps out, each time with a fresh token."""

    def __init__(self, tmp: Path, clock: float = NOW) -> None:
        self.tmp = tmp
        self.clock = [clock]
        self.alarms: dict[str, str] = {}
        self.gate, self.verifier = desk_and_verifier(tmp, self.clock, self.alarm)

    def restarted(self) -> Exits:
        """The lane stopped (its stores closed, all it held in memory gone) and started again
        on the same data directory."""
        self.close()
        return Exits(self.tmp, self.clock[0])

    async def tap_out_after_restart(self) -> tuple[str, int | None, str | None]:
        """The next exit's outcome at this gate restarted (`restarted`), closed after it."""
        exits = self.restarted()
        try:
            return await exits.tap_out()
        finally:
            exits.close()

    def close(self) -> None:
        self.gate.store.close()
        self.gate.replay.close()

    def alarm(self, code: str, text: str | None) -> None:
        if text is None:
            self.alarms.pop(code, None)
        else:
            self.alarms[code] = text

    async def tapped_in(self) -> Exits:
        tap = signed(tap_in("S01", NOW - 600))
        await self.gate.handle(Incoming(topics.line_taps("L1"), tap))
        return self

    async def tapped_out(self) -> str:
        """Tapped in, then priced out here once: the tap-in's trip id."""
        await self.tapped_in()
        _, _, trip = await self.tap_out()
        assert trip is not None
        return trip

    async def tap_out(self) -> tuple[str, int | None, str | None]:
        self.clock[0] += 1
        token = issue_compact_token(CODES.key, KID, "rider-1", int(self.clock[0]), NOW + 600)
        answer = await self.gate.price(ask(token))
        return answer.outcome, answer.amount_minor, answer.pass_id


def _probe_replay(gate: TapDesk) -> Awaitable[None]:
    return gate.replay_watch.run(asyncio.sleep)  # the verifier's upkeep, without its purge


def _probe_taps(gate: TapDesk) -> Awaitable[None]:
    return gate.upkeep(asyncio.sleep)


@pytest.mark.parametrize(
    ("store", "alarm", "said", "error", "upkeep"),
    [
        ("taps.sqlite3", "taps_store_error", TAPS_UNREAD, TapStoreError, _probe_taps),
        ("replay.sqlite3", "replay_store_error", REPLAY_UNREAD, ReplayStoreError, _probe_replay),
    ],
)
async def test_a_store_that_cannot_be_read_leaves_exits_unpriced_says_so_and_clears(  # noqa: PLR0917
    tmp_path: Path,
    store: str,
    alarm: str,
    said: str,
    error: type[Exception],
    upkeep: Callable[[TapDesk], Awaitable[None]],
) -> None:
    """A tap-in (or its exit mark) that could not be read left the passenger refused "Fare
    not known" with only a log line: the gate looked healthy."""
    exits = await Exits(tmp_path).tapped_in()
    gate, alarms = exits.gate, exits.alarms
    probing = asyncio.create_task(upkeep(gate))
    path = tmp_path / store
    try:
        with corrupted(path):
            # Safe: no fare is guessed; the runner answers the core "Fare not known".
            with pytest.raises(error):
                await exits.tap_out()
            # Seen: the alarm says what it stops, names the file and why.
            assert alarms[alarm].startswith(f"{said} {path}: database disk image is malformed")
        # Clears by itself: the store is probed every second while it fails.
        await eventually(lambda: alarm not in alarms, within=15)
        outcome, amount, _ = await exits.tap_out()
        assert (outcome, amount) == ("charged", FARE)
    finally:
        probing.cancel()
        gate.store.close()
        gate.replay.close()


async def test_an_exit_the_replay_store_cannot_mark_is_held_so_the_tap_in_exits_once(
    tmp_path: Path,
) -> None:
    """An exit mark that failed was only logged: the tap-in stayed open and priced the next
    exit as the trip again (the trip paid twice from one tap-in)."""
    exits = await Exits(tmp_path).tapped_in()
    gate, alarms = exits.gate, exits.alarms
    outcome, amount, trip = await exits.tap_out()
    assert (outcome, amount) == ("charged", FARE) and trip is not None
    path = tmp_path / "replay.sqlite3"
    with locked(path):
        await gate.mark_used(
            MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID)
        )  # SQLite's wait runs out
        assert alarms["replay_store_error"].startswith(
            f"{REPLAY_UNMARKED} {path}: database is locked"
        )
        # Safe: the tap-in has exited all the same; the next exit pays the maximum, flagged.
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    tasks = [asyncio.create_task(_probe_replay(gate)), asyncio.create_task(_probe_taps(gate))]
    try:
        # Clears by itself, and the held mark is written once the store takes writes.
        await eventually(lambda: "replay_store_error" not in alarms, within=15)
        # The mark commits in a thread before the loop drops it from memory: wait for both.
        await eventually(
            lambda: gate.replay.get(f"pass:{trip}") is not None and gate.held.unmarked == {},
            within=10,
        )
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    finally:
        for task in tasks:
            task.cancel()
        gate.store.close()
        gate.replay.close()


async def test_a_held_exit_outlives_a_restart_before_the_replay_store_heals(
    tmp_path: Path,
) -> None:
    """A held exit was in memory only: a lane restarted while the replay store still failed
    priced the same tap-in as a trip again (the first trip's entry fare taken off a second
    exit: a cheap or free ride)."""
    exits = await Exits(tmp_path).tapped_in()
    _, _, trip = await exits.tap_out()
    assert trip is not None
    path = tmp_path / "replay.sqlite3"
    with locked(path):
        await exits.gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))
        assert exits.alarms["replay_store_error"].startswith(
            f"{REPLAY_UNMARKED} {path}: database is locked"
        )
        assert "taps_store_error" not in exits.alarms  # the taps store took the held exit
        exits = exits.restarted()
        # Safe over the restart: the tap-in has exited; the next exit pays the maximum.
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
        # The restarted lane tries the replay store: still failing, and said again.
        upkeep = asyncio.create_task(_probe_taps(exits.gate))
        await eventually(lambda: "replay_store_error" in exits.alarms, within=30)
        assert exits.alarms["replay_store_error"].startswith(f"{REPLAY_UNMARKED} {path}")
    tasks = [upkeep, asyncio.create_task(_probe_replay(exits.gate))]
    gate = exits.gate
    try:
        # Clears by itself: the held exit is marked, then no longer held, in memory or file.
        await eventually(lambda: "replay_store_error" not in exits.alarms, within=15)
        await eventually(
            lambda: (
                gate.replay.get(f"pass:{trip}") is not None
                and gate.held.unmarked == {}
                and gate.store.held(NOW) == {}
            ),
            within=10,
        )
    finally:
        for task in tasks:
            task.cancel()
    exits = exits.restarted()
    try:
        assert exits.gate.held.unmarked == {}
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    finally:
        exits.close()


async def test_a_held_exit_the_taps_store_cannot_keep_says_so_and_is_kept_once_it_can(
    tmp_path: Path,
) -> None:
    """With the taps store failing too, the held exit is in memory only: the taps store's
    alarm says a restart would forget it, until a write there keeps it."""
    exits = await Exits(tmp_path).tapped_in()
    _, _, trip = await exits.tap_out()
    assert trip is not None
    taps = tmp_path / "taps.sqlite3"
    with locked(tmp_path / "replay.sqlite3"):
        with corrupted(taps):
            await exits.gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))
            assert exits.alarms["taps_store_error"].startswith(
                f"{TAPS_UNHELD} {taps}: database disk image is malformed"
            )
        # Safe while it lasts: held in memory, the tap-in has exited here.
        assert exits.gate.store.held(NOW) == {}
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
        upkeep = asyncio.create_task(_probe_taps(exits.gate))
        try:
            # Clears by itself once the taps store takes the held exit.
            await eventually(lambda: "taps_store_error" not in exits.alarms, within=15)
            await eventually(lambda: exits.gate.store.held(NOW) != {}, within=10)
        finally:
            upkeep.cancel()
        exits = exits.restarted()  # the replay store still fails: the restart keeps the exit
        try:
            assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
        finally:
            exits.close()


async def test_an_exit_the_taps_store_cannot_keep_leaves_its_undropped_warning(
    tmp_path: Path,
) -> None:
    """While a refunded tap-in is held until dropped, a held exit the taps store cannot keep
    either left the alarm saying only that exits are in memory: the warning that a restart
    would price an exit with a refunded entry fare taken off was gone."""
    exits = await Exits(tmp_path).tapped_in()
    _, _, trip = await exits.tap_out()
    assert trip is not None
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await exits.gate.handle(Incoming(topic, signed(entered)))
    taps = tmp_path / "taps.sqlite3"
    try:
        with locked(tmp_path / "replay.sqlite3"), corrupted(taps):
            await exits.gate.handle(Incoming(topic, signed(refund_of(entered, NOW - 30))))
            await exits.gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))
            assert exits.gate.held.undropped != {}
            assert exits.alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
    finally:
        exits.close()


async def test_a_refund_the_replay_store_cannot_write_is_held_says_so_and_clears(
    tmp_path: Path,
) -> None:
    """A refunded tap-out whose release failed was only logged (and a held exit, released,
    must reopen its tap-in without the store). Held until reopened: tests/auth/
    test_tap_desk_held.py."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    trip = await exits.tapped_out()
    path = tmp_path / "replay.sqlite3"
    with locked(path):
        # Held in memory, then refunded: the tap-in reopens with no write at all.
        await gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))
        await gate.release(ReleasePass(trip, EXIT_ID))
        assert gate.held.unmarked == {}
        assert await exits.tap_out() == ("charged", FARE, trip)
    await gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))  # the store works: clears
    assert "replay_store_error" not in alarms
    with locked(path):
        await gate.release(ReleasePass(trip, EXIT_ID))  # SQLite's wait runs out
        assert alarms["replay_store_error"].startswith(
            f"{REPLAY_UNRELEASED} {path}: database is locked"
        )
        # Safe: the refund is held, so the next exit here is priced as the trip it is.
        assert await exits.tap_out() == ("charged", FARE, trip)
    probing = asyncio.create_task(_probe_replay(gate))
    try:
        await eventually(lambda: "replay_store_error" not in alarms, within=15)
    finally:
        probing.cancel()
        gate.store.close()
        gate.replay.close()


ENTRY_PAID = 200


@pytest.mark.parametrize(
    ("refunded", "store", "alarm", "said", "while_it_lasts", "upkeep"),
    [
        # A refunded tap-in not dropped yet prices nothing: the maximum fare, flagged.
        ("tap_in", "taps.sqlite3", "taps_store_error", TAPS_UNDROPPED,
         ("no_pass", FARTHEST), _probe_taps),
        # A refunded tap-out's tap-in is held until reopened: its trip, the entry fare off.
        ("tap_out", "replay.sqlite3", "replay_store_error", REPLAY_UNRELEASED,
         ("charged", FARE - ENTRY_PAID), _probe_replay),
    ],
)  # fmt: skip
async def test_a_refund_heard_on_the_line_a_store_cannot_apply_says_so_and_clears(  # noqa: PLR0917
    tmp_path: Path,
    refunded: str,
    store: str,
    alarm: str,
    said: str,
    while_it_lasts: tuple[str, int],
    upkeep: Callable[[TapDesk], Awaitable[None]],
) -> None:
    """Another gate's refund of a tap that this gate could not apply said "tap-ins not kept"
    (a refunded tap-in not dropped) or nothing at all (a refunded tap-out's tap-in not
    reopened): the operator read of lost tap-ins, or of nothing, while the refund went
    unapplied."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await gate.handle(Incoming(topic, signed(entered)))
    tapped = entered
    if refunded == "tap_out":
        tapped = tap_out_of(entered, FARE - ENTRY_PAID, "S02/x1", NOW - 60)
        await gate.handle(Incoming(topic, signed(tapped)))
    path = tmp_path / store
    probing: asyncio.Task[None] | None = None
    try:
        with locked(path):
            trip = tapped.draft.pass_id
            await gate.handle(Incoming(topic, signed(refund_of(tapped, NOW - 30, trip))))
            # Seen: the alarm names what was not applied, the file and why.
            assert alarms[alarm].startswith(f"{said} {path}: database is locked")
            # What it says: the tap is still in force here.
            outcome, amount, _ = await exits.tap_out()
            assert (outcome, amount) == while_it_lasts
        # Clears by itself: the store is probed every second while it fails.
        probing = asyncio.ensure_future(upkeep(gate))
        await eventually(lambda: alarm not in alarms, within=15)
    finally:
        if probing is not None:
            probing.cancel()
        gate.store.close()
        gate.replay.close()


async def test_a_refunded_tap_in_the_taps_store_cannot_drop_prices_nothing_and_is_dropped_later(
    tmp_path: Path,
) -> None:
    """A refunded tap-in the taps store could not drop was not tried again (the refund is heard
    once): while it was the passenger's latest it priced their exit here with its refunded
    entry fare taken off, and for good."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await gate.handle(Incoming(topic, signed(entered)))
    path = tmp_path / "taps.sqlite3"
    with locked(path):
        await gate.handle(Incoming(topic, signed(refund_of(entered, NOW - 30))))
        assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {path}: database is locked")
        # Safe: held until dropped, the refunded tap-in prices nothing here.
        assert (await exits.tap_out())[:2] == ("no_pass", FARTHEST)
    upkeep = asyncio.create_task(_probe_taps(gate))
    try:
        # Clears by itself, once the drop is applied (not merely once the store takes a write).
        await eventually(lambda: "taps_store_error" not in alarms, within=15)
        assert gate.held.undropped == {}
        assert gate.store.latest("rider-1", NOW) is None
    finally:
        upkeep.cancel()
    assert (await exits.tap_out_after_restart())[:2] == ("no_pass", FARTHEST)


async def test_another_gates_refund_of_a_tap_in_the_taps_store_cannot_apply_hides_nothing(
    tmp_path: Path,
) -> None:
    """Only the gate that wrote a tap-in refunds it (`TapStore.drop`): another gate's refund
    naming it, heard while the taps store cannot write, was held as undropped all the same, and
    `price` skipped the tap-in: the passenger paid the maximum fare until the store healed."""
    exits = Exits(tmp_path)
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await exits.gate.handle(Incoming(topic, signed(entered)))
    forged = refund_of(entered, NOW - 30)
    forged = Record(forged.record_id, "S02/g1", forged.seq, forged.ts_us, forged.draft)
    try:
        with locked(tmp_path / "taps.sqlite3"):
            await exits.gate.handle(Incoming(topic, signed(forged)))
            outcome, amount, _ = await exits.tap_out()
            assert (outcome, amount) == ("charged", FARE - ENTRY_PAID)
    finally:
        exits.close()


async def test_an_exit_heard_on_the_line_the_replay_store_cannot_mark_is_held_then_marked(
    tmp_path: Path,
) -> None:
    """Another gate's tap-out the replay store could not mark was only logged: its tap-in
    stayed open here, and the passenger's next exit here was priced as the trip again, its
    entry fare taken off once more (one tap-in, two trips)."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await gate.handle(Incoming(topic, signed(entered)))
    out = tap_out_of(entered, FARE - ENTRY_PAID, "S02/x1", NOW - 60)
    trip = out.draft.pass_id
    path = tmp_path / "replay.sqlite3"
    with locked(path):
        await gate.handle(Incoming(topic, signed(out)))  # SQLite's wait runs out
        assert alarms["replay_store_error"].startswith(
            f"{REPLAY_UNMARKED} {path}: database is locked"
        )
        # Safe: held as this gate's own, the tap-in has exited; the maximum fare, flagged.
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
        assert gate.store.held(NOW) == gate.held.unmarked != {}
    tasks = [asyncio.create_task(_probe_replay(gate)), asyncio.create_task(_probe_taps(gate))]
    try:
        # Clears by itself; the mark is written as heard from its gate.
        await eventually(lambda: "replay_store_error" not in alarms, within=15)
        await eventually(lambda: gate.held.unmarked == {} and gate.store.held(NOW) == {}, within=10)
    finally:
        for task in tasks:
            task.cancel()
    used = gate.replay.get(f"pass:{trip}")
    assert used is not None and (used.lane, used.remote) == ("S02/x1", True)
    # So that gate's refund of the tap-out gives it back here, as a mark heard at once would.
    await gate.handle(Incoming(topic, signed(refund_of(out, NOW - 30, trip))))
    try:
        assert await exits.tap_out() == ("charged", FARE - ENTRY_PAID, trip)
    finally:
        exits.close()


async def test_an_exit_heard_on_the_line_and_held_outlives_a_restart_and_its_refund(
    tmp_path: Path,
) -> None:
    """A held exit heard from another gate is kept over a restart (with the gate it came
    from), and that gate's refund reopens the tap-in with the replay store still failing."""
    exits = Exits(tmp_path)
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await exits.gate.handle(Incoming(topic, signed(entered)))
    out = tap_out_of(entered, FARE - ENTRY_PAID, "S02/x1", NOW - 60)
    trip = out.draft.pass_id
    with locked(tmp_path / "replay.sqlite3"):
        await exits.gate.handle(Incoming(topic, signed(out)))
        exits = exits.restarted()
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
        # Its gate's refund: the held exit goes, no replay store write needed.
        await exits.gate.handle(Incoming(topic, signed(refund_of(out, NOW - 30, trip))))
        assert exits.gate.held.unmarked == {} == exits.gate.store.held(NOW)
        assert await exits.tap_out() == ("charged", FARE - ENTRY_PAID, trip)
    exits.close()


async def test_a_held_exit_is_marked_once_the_replay_store_heals_with_the_taps_store_failing(
    tmp_path: Path,
) -> None:
    """Held exits were written into the replay store only by the taps store's housekeeping,
    which does not run while that store fails: with both stores failed (one disk) and only the
    replay store healed, the exit stayed in memory only, a restart away from being forgotten
    (the tap-in then priced a second exit as a trip)."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    trip = await exits.tapped_out()
    taps = tmp_path / "taps.sqlite3"
    with corrupted(taps):
        with locked(tmp_path / "replay.sqlite3"):
            await gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))
            assert alarms["taps_store_error"].startswith(f"{TAPS_UNHELD} {taps}")
            assert "replay_store_error" in alarms
            # And another rider's tap-in refunded, which the taps store cannot drop either.
            other = tap_in("S02", NOW - 300, "rider-2")
            await gate.handle(Incoming(topics.line_taps("L1"), signed(refund_of(other, NOW - 30))))
            assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
        tasks = [asyncio.create_task(_probe_replay(gate)), asyncio.create_task(_probe_taps(gate))]
        try:
            # The replay store works again: the held exit is marked there, and its alarm
            # clears, not always in the turn of the mark (under load it said the copy of the
            # refunded tap-in held was in memory only a while longer, until a probe wrote it);
            # the taps store still failing and still saying what it owes.
            await eventually(
                lambda: (
                    gate.replay.get(f"pass:{trip}") is not None
                    and gate.held.unmarked == {}
                    and "replay_store_error" not in alarms
                ),
                within=10,
                what="the held exit marked, nothing held, replay_store_error cleared",
            )
            assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
        finally:
            for task in tasks:
                task.cancel()
    upkeep = asyncio.create_task(_probe_taps(gate))
    try:
        await eventually(lambda: "taps_store_error" not in alarms, within=15)
    finally:
        upkeep.cancel()
    exits = exits.restarted()  # the exit is the replay store's now
    try:
        assert exits.gate.held.unmarked == {}
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    finally:
        exits.close()


async def test_a_heard_exit_held_is_not_given_back_by_this_gates_refund(tmp_path: Path) -> None:
    """This gate's own exit held replaced a heard one held for the same tap-in, so refunding
    this gate's tap-out reopened a tap-in the other gate had let out (a second trip from one
    tap-in): the replay store keeps the first mark, so must the held exits."""
    exits = Exits(tmp_path)
    gate = exits.gate
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await gate.handle(Incoming(topic, signed(entered)))
    _, _, trip = await exits.tap_out()  # priced here before the other gate's exit is heard
    out = tap_out_of(entered, FARE - ENTRY_PAID, "S02/x1", NOW - 60)
    assert trip is not None and trip == out.draft.pass_id
    with locked(tmp_path / "replay.sqlite3"):
        await gate.handle(Incoming(topic, signed(out)))
        await gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))
        assert gate.held.unmarked[f"pass:{trip}"].lane == "S02/x1"
        await gate.release(ReleasePass(trip, EXIT_ID))  # this gate's tap-out refunded
        # The other gate's exit stands: the tap-in stays exited, the maximum fare, flagged.
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    exits.close()


async def test_a_held_exit_is_named_by_a_later_exit_and_an_earlier_exits_refund_keeps_it(
    tmp_path: Path,
) -> None:
    """While the replay store failed, S02's exit was held, then a later one at S01/x1 (its
    clock behind: stamped earlier) was not (the first held stays), and S02's refund of its
    own exit dropped the held one: the tap-in priced a third exit as a trip, though S01/x1 had
    let its passenger out. A held exit is named by a later exit as a mark in the replay store
    is (lane.core.exit_marks), and a refund gives back only the held exit it names."""
    exits = Exits(tmp_path)
    gate = exits.gate
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await gate.handle(Incoming(topic, signed(entered)))
    first = tap_out_of(entered, FARE - ENTRY_PAID, "S02/x1", NOW - 50)
    later = tap_out_of(entered, FARE - ENTRY_PAID, "S01/x1", NOW - 55)
    trip = first.draft.pass_id
    with locked(tmp_path / "replay.sqlite3"):
        for record in (first, later, refund_of(first, NOW - 40, trip)):
            await gate.handle(Incoming(topic, signed(record)))
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    tasks = [asyncio.create_task(_probe_replay(gate)), asyncio.create_task(_probe_taps(gate))]
    try:
        await eventually(lambda: gate.held.unmarked == {} == gate.store.held(NOW), within=15)
    finally:
        for task in tasks:
            task.cancel()
    try:
        used = gate.replay.get(f"pass:{trip}")
        assert used is not None and (used.lane, used.exit_id) == ("S02/x1", later.record_id)
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    finally:
        exits.close()
