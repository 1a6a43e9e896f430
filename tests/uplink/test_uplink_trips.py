"""The back office answers "which vehicles entered and have not exited" from ingested records."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from uplink_kit import drained, lane_side, start_lane, worker

from lane.cli import COMMANDS
from sim.broker import Mosquitto
from uplink.messages import QueueIdentity
from uplink.records import KINDS, AuthInfo, Record, RecordDraft
from uplink.sqlite_store import SqliteIngestStore
from uplink.store import IngestRecord, IngestStore
from uplink.trips import (
    OpenTrip,
    TripMark,
    TripRole,
    open_trips,
    stored_mark,
    trip_ledger,
)
from uplink.trips_cli import main as trips_main

NO_AUTH = AuthInfo("none")
T0 = int(datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()) * 1_000_000
HOUR_US = 3600 * 1_000_000


def entry(pass_id: str, plaza: str = "P01", plate: str | None = None) -> RecordDraft:
    return RecordDraft("entry", f"v-{pass_id}", 1, 0, "CNY", "none", None, NO_AUTH,
                       entry_plaza=plaza, pass_id=pass_id, plate=plate)  # fmt: skip


def exit_(pass_id: str, amount: int = 4000, flags: tuple[str, ...] = ()) -> RecordDraft:
    return RecordDraft("exit", f"x-{pass_id}", 1, amount, "CNY", "token", "acct-1",
                       AuthInfo("approved", offline=True), entry_plaza="P01", flags=flags,
                       pass_id=pass_id)  # fmt: skip


def blob(draft: RecordDraft, seq: int, lane: str = "P01/e1") -> bytes:
    return Record(f"r-{lane}-{seq}", lane, seq, 1_800_000_000_000_000 + seq, draft).encode()


def test_entry_and_exit_records_round_trip_and_old_records_keep_their_bytes() -> None:
    assert {"entry", "exit"} <= KINDS
    e = Record("r1", "P01/e1", 1, 5, entry("aa" * 8, plate="ZJA12345"))
    assert Record.decode(e.encode()) == e
    toll = Record("r2", "P01/x1", 1, 5, RecordDraft("toll", "v", 1, 5, "CNY", "token", None,
                                                    NO_AUTH))  # fmt: skip
    assert "pass_id" not in toll.to_map() and "plate" not in toll.to_map()


def test_the_ledger_pairs_entries_with_exits() -> None:
    blobs = [
        blob(entry("p1"), 1),
        blob(entry("p2", plate="ZJA1"), 2),
        blob(entry("p3", plaza="P02"), 3, lane="P02/e1"),
        blob(exit_("p1"), 4, lane="P03/x1"),
        blob(exit_("p9"), 5, lane="P03/x1"),  # its entry has not arrived
        blob(exit_("p1", flags=("pass_used", "attendant")), 6, lane="P02/x1"),  # a second showing
        blob(RecordDraft("toll", "v", 1, 5, "CNY", "token", None, NO_AUTH), 7),  # not a trip
        b"\x00garbage",
    ]
    ledger = trip_ledger(blobs)
    assert [t.pass_id for t in ledger.open_trips] == ["p2", "p3"]
    assert ledger.open_trips[0] == OpenTrip(
        "p2", "r-P01/e1-2", "P01/e1", "P01", 1_800_000_000_000_002, 1, "ZJA1"
    )
    assert ledger.closed == 1
    assert ledger.unmatched_exits == ("r-P03/x1-5",)
    assert ledger.unreadable == 1


async def test_open_trips_from_records_ingested_over_the_broker(
    mosquitto: Mosquitto, store_factory: Callable[[], IngestStore], tmp_path: Path
) -> None:
    """Two entry lanes and an exit lane forward their records; the store (SQLite and
    PostgreSQL) then says which passes are still on the road, and which are overdue."""
    store = store_factory()
    tag = uuid.uuid4().hex[:6]
    lanes = {name: f"{tag}{name}" for name in ("P01/e1", "P02/e1", "P03/x1")}
    host, port = mosquitto.host, mosquitto.port
    w = await worker(host, port, store, f"in-{tag}", f"g{tag}").start()
    sides = {
        name: await start_lane(lane_side(host, port, lane, tmp_path / f"{name[:3]}.sqlite"))
        for name, lane in lanes.items()
    }
    try:
        passes = [f"{i:016x}" for i in range(6)]
        plan = [("P01/e1", entry(p)) for p in passes[:4]] + [
            ("P02/e1", entry(p, plaza="P02")) for p in passes[4:]
        ]
        plan += [("P03/x1", exit_(p)) for p in passes[1:5]]  # 0 and 5 stay on the road
        for name, draft in plan:
            side = sides[name]
            rec = await asyncio.to_thread(side.queue.append, draft)
            side.written[rec.seq] = rec.record_id
            side.forwarder.wake()
        for name, side in sides.items():
            await drained(side, store, lanes[name])
        ledger = open_trips(store)
        assert [t.pass_id for t in ledger.open_trips] == [passes[0], passes[5]]
        assert [t.lane for t in ledger.open_trips] == [lanes["P01/e1"], lanes["P02/e1"]]
        assert (ledger.closed, ledger.unmatched_exits, ledger.unreadable) == (4, (), 0)
        first, last = ledger.open_trips
        overdue = open_trips(store, entered_before_us=last.ts_us)
        assert overdue.open_trips == (first,)
    finally:
        for side in sides.values():
            await side.stop()
        await w.stop()


def test_lane_trips_lists_the_vehicles_still_on_the_road(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ingest.sqlite"
    store = SqliteIngestStore(db)
    drafts = [entry("p1", plate="ZJA1"), entry("p2"), exit_("p2"), exit_("p7")]
    records = [Record(f"r{i}", "P01/e1", i + 1, T0 + i * HOUR_US, d) for i, d in enumerate(drafts)]
    batch = [IngestRecord.of(r, r.encode()) for r in records]
    store.store_batch("P01/e1", QueueIdentity("e"), batch, 1)
    store.close()
    assert trips_main(["--db", str(db)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "p1\tentered=2027-01-15T08:00:00Z\tlane=P01/e1\tplaza=P01\tclass=1\tplate=ZJA1",
        "open=1\tclosed=1\tunmatched_exits=1\tunreadable=0",
    ]
    now = T0 / 1e6 + 2 * 3600
    assert trips_main(["--db", str(db), "--overdue-h", "3", "--json"], now=now) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["open_trips"], body["closed"], body["unmatched_exits"]) == ([], 1, ["r3"])
    assert trips_main(["--db", str(tmp_path / "none.sqlite")]) == 1
    assert "no such store file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        trips_main([])
    assert usage.value.code == 2


def test_lane_trips_is_a_lane_command() -> None:
    assert COMMANDS["trips"][:2] == ("uplink.trips_cli", "main")


def test_metro_tap_ins_pair_with_tap_outs_the_same_way() -> None:
    def tap(kind: str, trip: str, station: str) -> RecordDraft:
        return RecordDraft(kind, f"p-{trip}", 1, 0 if kind == "tap_in" else 300, "CNY", "token",
                           "acct", NO_AUTH, entry_plaza=station, pass_id=trip)  # fmt: skip

    ledger = trip_ledger(
        [
            blob(tap("tap_in", "t1", "S01"), 1, lane="S01/g1"),
            blob(tap("tap_in", "t2", "S02"), 2, lane="S02/g1"),
            blob(tap("tap_out", "t1", "S01"), 3, lane="S05/g2"),
        ]
    )
    assert [(t.pass_id, t.entry_plaza) for t in ledger.open_trips] == [("t2", "S02")]
    assert ledger.closed == 1


def test_a_gates_tap_in_opens_a_trip_under_its_record_id_and_declines_count_for_nothing() -> None:
    """A transit-entry gate writes its tap-in with no pass id; the transit-exit gate names the
    tap-in's record id (as hex) in its tap-out (docs/closed-road.md#metro)."""
    tap_in_id = "01a23100-0000-7000-8000-000000000001"
    tap_in = RecordDraft("tap_in", "p1", 1, 250, "CNY", "token", "acct", AuthInfo("approved"))
    refused = replace(tap_in, auth=AuthInfo("declined"))
    tap_out = RecordDraft("tap_out", "p2", 1, 300, "CNY", "token", "acct", AuthInfo("approved"),
                          entry_plaza="S01", pass_id=uuid.UUID(tap_in_id).hex)  # fmt: skip
    declined_out = replace(tap_out, auth=AuthInfo("declined"))
    blobs = [
        Record(tap_in_id, "S01/g1", 1, 10, tap_in).encode(),
        Record("01a23100-0000-7000-8000-000000000002", "S01/g1", 2, 20, refused).encode(),
    ]
    ledger = trip_ledger(blobs)
    assert [(t.pass_id, t.entry_plaza, t.record_id) for t in ledger.open_trips] == [
        (uuid.UUID(tap_in_id).hex, "S01", tap_in_id)
    ]
    still = trip_ledger([*blobs, Record("r3", "S03/g2", 1, 30, declined_out).encode()])
    assert len(still.open_trips) == 1 and still.closed == 0
    done = trip_ledger([*blobs, Record("r4", "S03/g2", 2, 40, tap_out).encode()])
    assert done.open_trips == () and done.closed == 1


def test_a_pass_entered_twice_is_one_trip_entered_at_the_earlier_whatever_the_order() -> None:
    first = Record("r-b", "P02/e1", 1, 10, entry("p1", plaza="P02"))
    again = Record("r-a", "P01/e1", 1, 20, entry("p1"))
    tie = Record("r-c", "P03/e1", 1, 10, entry("p1", plaza="P03"))
    for blobs in ([first, again, tie], [tie, again, first], [again, tie, first]):
        ledger = trip_ledger(r.encode() for r in blobs)
        assert [(t.record_id, t.entry_plaza) for t in ledger.open_trips] == [("r-b", "P02")]


def test_a_records_mark_is_its_part_in_a_trip() -> None:
    tap_in_id = "01a23100-0000-7000-8000-000000000001"
    tap_in = RecordDraft("tap_in", "p1", 1, 250, "CNY", "token", "acct", AuthInfo("approved"))
    assert stored_mark(blob(entry("p1"), 1)) == TripMark(TripRole.ENTRY, "p1")
    assert stored_mark(blob(exit_("p1"), 2)) == TripMark(TripRole.EXIT, "p1")
    assert stored_mark(Record(tap_in_id, "S01/g1", 1, 1, tap_in).encode()) == TripMark(
        TripRole.ENTRY, uuid.UUID(tap_in_id).hex
    )
    assert stored_mark(Record("not-a-uuid", "S01/g1", 1, 1, tap_in).encode()) is None
    declined = replace(exit_("p1"), auth=AuthInfo("declined"))
    assert stored_mark(blob(declined, 3)) is None
    toll = RecordDraft("toll", "v", 1, 5, "CNY", "token", None, NO_AUTH)
    assert stored_mark(blob(toll, 4)) is None
    # A gate's refund of a tap-in (the passenger held by a fault, not let in): no trip of its
    # own; it closes the tap-in's.
    refund = RecordDraft("tap_in", "p1", 1, 0, "", "none", None, NO_AUTH,
                         flags=("paid_not_passed", f"record:{tap_in_id}"))  # fmt: skip
    assert stored_mark(Record(str(uuid.uuid4()), "S01/g1", 2, 2, refund).encode()) == TripMark(
        TripRole.EXIT, uuid.UUID(tap_in_id).hex
    )
    # An exit's refund (the vehicle not let out) undoes the exit it names: its trip id is
    # that exit's record id; the pass it gives back is only the trip to lock.
    exited = Record("r-x9", "P03/x1", 1, 1, exit_("p1"))
    assert stored_mark(refund_of(exited, 2).encode()) == TripMark(TripRole.UNDO, "r-x9", "p1")
    assert stored_mark(b"\x00garbage") == TripMark(TripRole.UNREADABLE, None)


def refund_of(record: Record, seq: int) -> Record:
    """The record a lane writes when the vehicle of `record` is not let through
    (lane.core.recovery.not_passed): an entry's names the pass the entry issued, an exit's
    the pass it gives back."""
    d = record.draft
    undo = RecordDraft(d.kind, d.vehicle_id, d.vehicle_class, 0, "", "none", None, NO_AUTH,
                       flags=("paid_not_passed", f"record:{record.record_id}"),
                       pass_id=d.pass_id if d.kind in ("entry", "exit") else None)  # fmt: skip
    return Record(f"{record.record_id}-refund", record.lane, seq, record.ts_us + 1, undo)


def test_a_refunded_entry_or_tap_in_closes_its_trip_whatever_the_order(
    store_factory: Callable[[], IngestStore],
) -> None:
    """A vehicle a fault held and never let in: the refund of its entry (naming the entry's
    pass) or of its tap-in (naming the tap-in's record) closes the trip the entry opened, in
    the pure ledger and in the store's index, whichever arrives first (counted closed). (A
    refunded exit reopens its trip: test_uplink_trip_index.py.)"""
    tap_in_id = "01a23100-0000-7000-8000-000000000001"
    tap_in = RecordDraft("tap_in", "p9", 1, 250, "CNY", "token", "acct", AuthInfo("approved"))
    entered = Record("r-e1", "P01/e1", 1, T0, entry("p1"))
    tapped = Record(tap_in_id, "S01/g1", 1, T0, tap_in)
    stays = Record("r-e2", "P01/e1", 2, T0 + 5, entry("p2"))
    leaves = Record("r-e3", "P01/e1", 3, T0 + 6, entry("p3"))
    exited = Record("r-x1", "P03/x1", 1, T0 + HOUR_US, exit_("p3"))
    lanes = [
        [entered, stays, leaves, refund_of(entered, 4)],
        [tapped, refund_of(tapped, 2)],
        [exited],
    ]
    ledger = trip_ledger(r.encode() for lane in lanes for r in lane)
    assert [t.pass_id for t in ledger.open_trips] == ["p2"]
    assert (ledger.closed, ledger.unmatched_exits) == (3, ())
    store = store_factory()
    for n, lane in enumerate(reversed(lanes)):  # each lane's refund before its entry
        for record in reversed(lane):
            ingest = IngestRecord.of(record, record.encode())
            store.store_batch(record.lane, QueueIdentity(f"q{n}"), [ingest], 1)
    assert open_trips(store) == ledger
