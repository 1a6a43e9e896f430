"""What a metro gate's tap desk holds while a store fails, and the copies it keeps of it: real
SQLite files, locked by another connection or corrupted under the open store, then put right
(tests/auth/test_tap_desk_stores.py holds the faults themselves). A refund whose mark the
replay store did not give back is held until reopened, kept over a restart and written once the
store heals; a refunded tap-in held until dropped is kept in the replay store, the other file;
the copy of what is held never falls behind what the desk holds."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from polling import eventually
from test_metro_pricing import CODES, EXIT_ID, NOW, exit_id, refund_of, signed, tap_in, tap_out_of
from test_tap_desk_stores import ENTRY_PAID, FARE, FARTHEST, Exits, corrupted, locked

from lane.auth.replay import ReplayStoreError
from lane.auth.tokens import issue_compact_token
from lane.core.actions import MarkPassUsed, ReleasePass
from lane.tap_desk import REPLAY_UNREAD, TapDesk
from lane.tap_held import REPLAY_UNHELD, REPLAY_UNMARKED, REPLAY_UNRELEASED, TAPS_UNDROPPED
from lane.tap_store import TapStoreError
from lane.transport.mqtt import Incoming
from lane.wire import topics
from sim.codes import KID
from uplink.records import Record

EXIT_EXP = NOW + 28_800


def _probes(gate: TapDesk) -> list[asyncio.Task[None]]:
    """The replay store's probe (the verifier's upkeep, without its purge) and the taps
    store's upkeep, as the daemon runs them."""
    return [
        asyncio.create_task(gate.replay_watch.run(asyncio.sleep)),
        asyncio.create_task(gate.upkeep(asyncio.sleep)),
    ]


async def _paid_tap_in(gate: TapDesk) -> tuple[Record, str]:
    """A tap-in heard from S01 that paid an entry fare, and its trip id."""
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await gate.handle(Incoming(topics.line_taps("L1"), signed(entered)))
    return entered, uuid.UUID(entered.record_id).hex


async def test_a_refund_the_replay_store_cannot_write_is_held_kept_over_a_restart_and_written(
    tmp_path: Path,
) -> None:
    """A refunded tap-out whose mark the replay store did not give back was only logged: once
    its alarm cleared the tap-in stayed exited, and that passenger's next exit here paid the
    maximum fare with no alarm at all."""
    exits = Exits(tmp_path)
    trip = await exits.tapped_out()
    key = f"pass:{trip}"
    await exits.gate.mark_used(MarkPassUsed(trip, EXIT_EXP, None, EXIT_ID))
    path = tmp_path / "replay.sqlite3"
    with locked(path):
        await exits.gate.release(ReleasePass(trip, EXIT_ID))  # SQLite's wait runs out
        # Seen: the alarm says the refunds are held until reopened, names the file and why.
        assert exits.alarms["replay_store_error"].startswith(
            f"{REPLAY_UNRELEASED} {path}: database is locked"
        )
        # Safe while it lasts: the tap-in prices as reopened (the passenger's trip, as the
        # refund said), and a restart still knows it (the taps store's copy).
        assert await exits.tap_out() == ("charged", FARE, trip)
        exits = exits.restarted()
        assert exits.gate.held.unreleased.keys() == {key}
        assert await exits.tap_out() == ("charged", FARE, trip)
    gate, alarms = exits.gate, exits.alarms
    tasks = _probes(gate)
    try:
        # Clears by itself, and the mark is given back: held nowhere any more.
        await eventually(lambda: "replay_store_error" not in alarms, within=15)
        await eventually(
            lambda: (
                gate.replay.get(key) is None
                and gate.held.unreleased == {} == gate.store.unreleased(NOW)
            ),
            within=10,
        )
    finally:
        for task in tasks:
            task.cancel()
    assert await exits.tap_out_after_restart() == ("charged", FARE, trip)


async def test_an_exit_after_a_held_refund_is_marked_after_it_and_stays(tmp_path: Path) -> None:
    """The refund held for a tap-in goes into the replay store before a later exit's mark:
    written after it, it would give back the exit that followed the refund. And it leaves the
    tap store's copy at once: written again only at the upkeep's next turn (every second), a
    lane restarted in that second loaded the refund again, held until reopened."""
    exits = Exits(tmp_path)
    trip = await exits.tapped_out()
    await exits.gate.mark_used(MarkPassUsed(trip, EXIT_EXP, None, EXIT_ID))
    with corrupted(tmp_path / "replay.sqlite3"):
        await exits.gate.release(ReleasePass(trip, EXIT_ID))
    assert exits.gate.store.unreleased(NOW).keys() == {f"pass:{trip}"}
    # The store works again before its probe has run: the passenger taps out once more.
    assert await exits.tap_out() == ("charged", FARE, trip)
    await exits.gate.mark_used(MarkPassUsed(trip, EXIT_EXP, None, exit_id(exits.clock[0])))
    assert exits.gate.held.unreleased == {} == exits.gate.store.unreleased(NOW)
    exits = exits.restarted()  # before any upkeep ran
    gate = exits.gate
    assert gate.held.unreleased == {}
    tasks = _probes(gate)
    try:
        await eventually(lambda: "replay_store_error" not in exits.alarms, within=15)
        await eventually(lambda: gate.store.unreleased(NOW) == {}, within=10)
    finally:
        for task in tasks:
            task.cancel()
    try:
        assert gate.replay.get(f"pass:{trip}") is not None
        assert await exits.tap_out() == ("pass_used", FARTHEST, trip)
    finally:
        exits.close()


async def test_a_held_copy_written_while_the_held_exits_change_is_written_again(
    tmp_path: Path,
) -> None:
    """The tap store's copy of the held exits was tracked by a flag: a copy in flight (the
    taps store locked) reset it after the upkeep had marked that exit in the replay store, so
    the stale copy stayed; refunded then, the exit came back held at the next start and the
    passenger paid the maximum fare."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    trip = await exits.tapped_out()
    topic = topics.line_taps("L1")
    others = [tap_in("S02", NOW - 300, f"rider-{n}") for n in (2, 3)]
    taps = tmp_path / "taps.sqlite3"
    with corrupted(taps):  # two refunded tap-ins the taps store owes drops of, and says so
        for other in others:
            await gate.handle(Incoming(topic, signed(refund_of(other, NOW - 30))))
    assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
    replay = tmp_path / "replay.sqlite3"
    probes: list[asyncio.Task[None]] = []
    with locked(taps):
        with corrupted(replay):
            # The exit held; its copy's write waits for the taps store's lock.
            saving = asyncio.create_task(
                gate.mark_used(MarkPassUsed(trip, EXIT_EXP, None, EXIT_ID))
            )
            await eventually(gate.store._lock.locked, within=5)
        # The replay store works again (its probe says so first); then the taps store's
        # upkeep marks the held exit there, and its drops wait behind the copy in flight.
        probes = [asyncio.create_task(gate.replay_watch.run(asyncio.sleep))]
        await eventually(lambda: "replay_store_error" not in alarms, within=5)
        probes.append(asyncio.create_task(gate.upkeep(asyncio.sleep)))
        await eventually(lambda: gate.held.unmarked == {}, within=5)
    try:
        await saving
        await eventually(lambda: "taps_store_error" not in alarms, within=15)
        # The copy is what the desk holds: nothing.
        assert gate.store.held(NOW) == gate.held.unmarked == {}
    finally:
        for task in probes:
            task.cancel()
    await gate.release(ReleasePass(trip, EXIT_ID))  # that exit refunded: the tap-in reopened
    assert await exits.tap_out_after_restart() == ("charged", FARE, trip)


async def test_a_refunded_tap_in_held_until_dropped_outlives_a_restart(tmp_path: Path) -> None:
    """A refunded tap-in the taps store could not drop was held in memory only: a lane
    restarted before that store healed priced the passenger's exit with the refunded entry fare
    taken off, and the tap-in stayed in the store for good."""
    exits = Exits(tmp_path)
    topic = topics.line_taps("L1")
    entered = tap_in("S01", NOW - 600, paid=ENTRY_PAID)
    await exits.gate.handle(Incoming(topic, signed(entered)))
    taps = tmp_path / "taps.sqlite3"
    with locked(taps):
        await exits.gate.handle(Incoming(topic, signed(refund_of(entered, NOW - 30))))
        assert exits.alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
        # Kept in the replay store, another file: the restarted lane still skips it.
        exits = exits.restarted()
        assert (await exits.tap_out())[:2] == ("no_pass", FARTHEST)
    gate = exits.gate
    upkeep = asyncio.create_task(gate.upkeep(asyncio.sleep))
    try:
        # Dropped once the taps store takes writes, and no longer held anywhere.
        await eventually(
            lambda: (
                gate.store.latest("rider-1", NOW) is None
                and gate.held.undropped == {} == gate.replay.undropped(NOW)
            ),
            within=10,
        )
    finally:
        upkeep.cancel()
    assert (await exits.tap_out_after_restart())[:2] == ("no_pass", FARTHEST)


async def test_a_refunded_tap_in_the_replay_store_cannot_keep_either_says_so_and_is_kept_later(
    tmp_path: Path,
) -> None:
    """With both stores failing the refunded tap-in is in memory only: the replay store's
    alarm says a restart would forget it, until a write there keeps it."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    topic = topics.line_taps("L1")
    entered, trip = await _paid_tap_in(gate)
    taps, replay = tmp_path / "taps.sqlite3", tmp_path / "replay.sqlite3"
    try:
        with corrupted(taps):
            with corrupted(replay):
                await gate.handle(Incoming(topic, signed(refund_of(entered, NOW - 30))))
                assert alarms["replay_store_error"].startswith(f"{REPLAY_UNHELD} {replay}")
                assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
                # An exit held meanwhile does not hide that warning (a restart would charge
                # that passenger wrongly): it is said after it.
                other = tap_in("S02", NOW - 900, "rider-2")
                out = tap_out_of(other, FARE, "S02/x1", NOW - 60)
                await gate.handle(Incoming(topic, signed(out)))
                assert gate.held.unmarked != {}
                assert alarms["replay_store_error"].startswith(
                    f"{REPLAY_UNHELD}; {REPLAY_UNMARKED} {replay}"
                )
            tasks = _probes(gate)
            try:
                # The replay store works again: it keeps the refunded tap-in, the taps store
                # still failing and still saying it holds it.
                await eventually(lambda: trip in gate.replay.undropped(NOW), within=10)
                await eventually(lambda: "replay_store_error" not in alarms, within=10)
                assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
            finally:
                for task in tasks:
                    task.cancel()
    finally:
        exits.close()


async def test_what_a_restart_would_lose_stays_said_when_the_failing_stores_fail_again(
    tmp_path: Path,
) -> None:
    """A refunded tap-in held until dropped, said by the taps store's alarm, or held in memory
    only, said by the replay store's: a tap-in the taps store then could not keep, or an exit
    a store could not read, replaced that text with its own, and the operator no longer saw
    that a restart would charge that passenger wrongly. Both are said, the held one first."""
    exits = await Exits(tmp_path).tapped_in()
    gate, alarms = exits.gate, exits.alarms
    topic = topics.line_taps("L1")
    taps, replay = tmp_path / "taps.sqlite3", tmp_path / "replay.sqlite3"
    try:
        with corrupted(taps):
            refunded = tap_in("S02", NOW - 900, "rider-2", paid=ENTRY_PAID)
            await gate.handle(Incoming(topic, signed(refund_of(refunded, NOW - 30))))
            assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
            await gate.handle(Incoming(topic, signed(tap_in("S01", NOW - 60, "rider-3"))))
            assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
            with pytest.raises(TapStoreError):
                await exits.tap_out()
            assert alarms["taps_store_error"].startswith(f"{TAPS_UNDROPPED} {taps}")
        with locked(taps), corrupted(replay):  # the taps store reads, the replay store not
            other = tap_in("S02", NOW - 900, "rider-4", paid=ENTRY_PAID)
            await gate.handle(Incoming(topic, signed(refund_of(other, NOW - 30))))
            assert alarms["replay_store_error"].startswith(f"{REPLAY_UNHELD} {replay}")
            with pytest.raises(ReplayStoreError):
                await exits.tap_out()
            assert alarms["replay_store_error"].startswith(
                f"{REPLAY_UNHELD}; {REPLAY_UNREAD} {replay}"
            )
    finally:
        exits.close()


async def test_the_verifiers_failure_on_the_replay_store_keeps_what_the_desk_holds_said(
    tmp_path: Path,
) -> None:
    """One alarm for the one replay store: an offline token the verifier could not mark
    replaced the tap desk's text with its own ("offline tokens refused"), and the operator no
    longer saw that refunded tap-ins were held in memory only, or refunds held until reopened.
    The alarm says both, what is held first; and clears once the store takes writes."""
    exits = await Exits(tmp_path).tapped_in()
    gate, alarms = exits.gate, exits.alarms
    topic = topics.line_taps("L1")
    taps, replay = tmp_path / "taps.sqlite3", tmp_path / "replay.sqlite3"
    refused = "offline tokens refused: replay store"
    token = issue_compact_token(CODES.key, KID, "rider-9", NOW, NOW + 600)
    with corrupted(taps), corrupted(replay):
        refunded = tap_in("S02", NOW - 900, "rider-2", paid=ENTRY_PAID)
        await gate.handle(Incoming(topic, signed(refund_of(refunded, NOW - 30))))
        assert alarms["replay_store_error"].startswith(f"{REPLAY_UNHELD} {replay}")
        result = await exits.verifier.verify(token, NOW)
        assert (result.approved, result.reason) == (False, "replay_store_error")
        assert alarms["replay_store_error"].startswith(f"{REPLAY_UNHELD}; {refused} {replay}")
    tasks = _probes(gate)
    try:
        await eventually(lambda: "replay_store_error" not in alarms, within=15)
    finally:
        for task in tasks:
            task.cancel()
    # A refund held until reopened is said first too.
    trip = await exits.tapped_out()
    await gate.mark_used(MarkPassUsed(trip, EXIT_EXP, None, EXIT_ID))
    with locked(replay):
        await gate.release(ReleasePass(trip, EXIT_ID))
        await exits.verifier.verify(token, NOW)
        assert alarms["replay_store_error"].startswith(
            f"{REPLAY_UNRELEASED}; {refused} {replay}: database is locked"
        )
    exits.close()


async def test_the_replay_store_alarm_clears_only_once_the_held_drops_are_kept_there(
    tmp_path: Path,
) -> None:
    """A refunded tap-in neither store could keep was kept in the replay store by the tap
    desk's upkeep up to a second after the verifier's probe cleared that store's alarm: a lane
    restarted in that gap forgot it, and priced its passenger's exit with the refunded entry
    fare taken off. The probe keeps it first: once the alarm clears, a restart loses nothing."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    topic = topics.line_taps("L1")
    entered, trip = await _paid_tap_in(gate)
    taps, replay = tmp_path / "taps.sqlite3", tmp_path / "replay.sqlite3"
    with locked(taps):
        with corrupted(replay):
            await gate.handle(Incoming(topic, signed(refund_of(entered, NOW - 30))))
            assert alarms["replay_store_error"].startswith(f"{REPLAY_UNHELD} {replay}")
        # The verifier's probe alone: the desk's upkeep would keep it a second later.
        probe = asyncio.create_task(gate.replay_watch.run(asyncio.sleep))
        try:
            await eventually(lambda: "replay_store_error" not in alarms, within=10)
        finally:
            probe.cancel()
        assert trip in gate.replay.undropped(NOW)
        exits = exits.restarted()  # right after the clear, the taps store still failing
        assert trip in exits.gate.held.undropped
        assert (await exits.tap_out())[:2] == ("no_pass", FARTHEST)
    exits.close()


async def test_the_replay_store_alarm_clears_only_once_the_held_exits_are_marked_there(
    tmp_path: Path,
) -> None:
    """An exit the replay store did not mark was marked by the tap desk's upkeep after the
    verifier's probe cleared that store's alarm: the alarm said exits were held until marked,
    and cleared with the exit still held. The probe marks it first, and the taps store's copy
    follows at once: once the alarm clears, the mark is there and held nowhere any more."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    trip = await exits.tapped_out()
    key = f"pass:{trip}"
    replay = tmp_path / "replay.sqlite3"
    with corrupted(replay):
        await gate.mark_used(MarkPassUsed(trip, EXIT_EXP, None, EXIT_ID))
        assert alarms["replay_store_error"].startswith(f"{REPLAY_UNMARKED} {replay}")
    assert gate.store.held(NOW).keys() == {key}
    probe = asyncio.create_task(gate.replay_watch.run(asyncio.sleep))  # the verifier's alone
    try:
        await eventually(lambda: "replay_store_error" not in alarms, within=10)
    finally:
        probe.cancel()
    assert gate.replay.get(key) is not None
    assert gate.held.unmarked == {} == gate.store.held(NOW)
    assert await exits.tap_out_after_restart() == ("pass_used", FARTHEST, trip)


async def test_the_replay_store_alarm_clears_only_once_the_held_refunds_are_written_there(
    tmp_path: Path,
) -> None:
    """A refund held until reopened was written by the tap desk's upkeep after the verifier's
    probe cleared the replay store's alarm, which said it was held. The probe gives its mark
    back first, and the taps store's copy follows at once."""
    exits = Exits(tmp_path)
    gate, alarms = exits.gate, exits.alarms
    trip = await exits.tapped_out()
    key = f"pass:{trip}"
    await gate.mark_used(MarkPassUsed(trip, EXIT_EXP, None, EXIT_ID))
    replay = tmp_path / "replay.sqlite3"
    with corrupted(replay):
        await gate.release(ReleasePass(trip, EXIT_ID))
        assert alarms["replay_store_error"].startswith(f"{REPLAY_UNRELEASED} {replay}")
    probe = asyncio.create_task(gate.replay_watch.run(asyncio.sleep))  # the verifier's alone
    try:
        await eventually(lambda: "replay_store_error" not in alarms, within=10)
    finally:
        probe.cancel()
    assert gate.replay.get(key) is None
    assert gate.held.unreleased == {} == gate.store.unreleased(NOW)
    assert await exits.tap_out_after_restart() == ("charged", FARE, trip)
