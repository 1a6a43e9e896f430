"""A closed road against the real things: two lane daemons (an entry lane at P01, an exit lane at
P03) on the session mosquitto, device and printer emulators, the SQLite queues, the back
office's ingest and its open-trips query. A vehicle takes a printed ticket at the entry (read
back from the rendered paper by our own decoder), pays the matrix fare at the exit; the same
pass at a second exit is refused as used; the paper-out alarm comes and goes by itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from mqtt_kit import collected, handed_at_once
from polling import eventually
from test_lane_daemon import idle_camera, show

from barrier.device import DeviceEmulator, Timings
from barrier.messages import AttendantCommand
from barrier.peripherals import (
    PlateReading,
    PrintAck,
    PrintError,
    PrinterState,
    PrinterStatus,
    PrintJob,
)
from barrier.printer import PrinterEmulator, render_ticket
from lane.auth.cose import decode_sign1
from lane.auth.fares import load_tariff
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet, keyset_to_json, load_keyset
from lane.auth.passes import EntryPass, pass_key
from lane.auth.plate_binding import BindingKind, PlateBinding, decode_binding, encode_binding
from lane.config import parse_config
from lane.core.road import ENTRY_CAMERA_DARK
from lane.daemon import LaneDaemon, build
from lane.runner import Clocks
from lane.transport.mqtt import MqttLink
from lane.trip_desk import UNSIGNED_DELETE
from lane.wire import topics
from scanner.decoders import ZxingDecoder
from scanner.sources import PushSource
from sim.acquirer import AcquirerServer
from sim.broker import Mosquitto
from sim.camera import frame_for
from sim.codes import CodeFactory
from uplink.ingest import Ingest
from uplink.sqlite_store import SqliteIngestStore
from uplink.trips import open_trips

ROAD = Path(__file__).resolve().parents[2] / "deploy" / "tariff.road.example.toml"


@dataclass
class RoadLane:
    daemon: LaneDaemon
    device: DeviceEmulator
    source: PushSource
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Stops the lane (as SIGTERM does) and its device; the road's end calls it too.
    stop: Callable[[], Awaitable[None]] | None = None

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for n, fields in self.notes if n == name]

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in (f["record"] for f in self.named("record")) if r["kind"] == kind]


# The lanes a road or a metro line of these tests may run (`Road.lane_id`), whose keys the key
# set holds: a lane's messages reach lanes started before it, which read no new key set then.
LANES = ("P01/e", "P02/e", "P03/x", "P03/y", "S01/g", "S02/g", "S02/w", "S02/x", "S03/f",
         "S03/w", "S03/x")  # fmt: skip


@dataclass
class Road:
    tmp: Path
    broker: Mosquitto
    codes: CodeFactory
    keyset: Path
    pass_key: Path
    run_id: str
    stack: contextlib.AsyncExitStack
    # Each printer running, by lane: how to stop it cleanly (its will discarded).
    printer_stops: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def lane_id(self, name: str) -> str:
        return f"{name}{self.run_id}"  # P01/e -> P01/e3fa2c1: unique on the session broker

    async def lane(
        self,
        lane_id: str,
        mode: str,
        rules: dict[str, Any] | None = None,
        clocks: Clocks | None = None,
        source: PushSource | None = None,
        **sections: Any,
    ) -> RoadLane:
        """`rules`: extra [lane] keys; `clocks`: the daemon's (default the real ones);
        `source`: its camera (an idle one by default)."""
        data = self.tmp / lane_id.replace("/", "_")
        # Every lane holds the road's key set and signs with its own key (lane.auth.peers).
        auth = {"keyset": str(self.keyset), **self.codes.lane_auth(self.tmp, lane_id)}
        sections["auth"] = {**auth, **sections.get("auth", {})}
        config = parse_config(
            {
                "lane": {"id": lane_id, "mode": mode, "data_dir": str(data), **(rules or {})},
                "broker": {"port": self.broker.port},
                "camera": {"source": "push"},
                **sections,
            }
        )
        device = DeviceEmulator(lane_id, self.broker.host, self.broker.port, Timings().scaled(20))
        source = source or idle_camera()
        daemon = await build(config, source=source, shutdown_grace_s=2.0, clocks=clocks)
        lane = RoadLane(daemon, device, source)
        daemon.runner.observers.append(lambda note: lane.notes.append((note.name, note.fields())))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(device.run()), asyncio.create_task(daemon.run(stop))]

        async def down() -> None:
            if stop.is_set():
                return  # stopped before the road's end
            stop.set()
            await asyncio.wait_for(tasks[1], 15)
            await device.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

        lane.stop = down
        self.stack.push_async_callback(down)
        await device.wait_connected(5)
        await daemon.link.wait_connected(5)
        await eventually(lambda: daemon.runner.state.barrier == "closed")
        return lane

    async def entry_lane(
        self,
        name: str = "P01/e",
        clocks: Clocks | None = None,
        printer_clock: Callable[[], float] = time.time,
        **sections: Any,
    ) -> tuple[RoadLane, PrinterEmulator]:
        """`sections`: `source`, or extra config sections (`metrics`)."""
        lane_id = self.lane_id(name)
        printer = self.printer(lane_id, printer_clock)
        road = {"pass_key": str(self.pass_key), "pass_kid": "pass-P01", "print_retry_s": 1.0}
        lane = await self.lane(lane_id, "toll-entry", clocks=clocks, road=road, **sections)
        await eventually(lambda: lane.daemon.road.tickets and lane.daemon.road.tickets.state)
        return lane, printer

    def printer(self, lane_id: str, clock: Callable[[], float] = time.time) -> PrinterEmulator:
        """The lane's printer, running; `printer_stops[lane_id]` stops it. A printer started
        again is handed what the broker kept for the session of the one before."""
        printer = PrinterEmulator(lane_id, self.broker.host, self.broker.port, clock)
        task = asyncio.create_task(printer.run())

        async def down() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self.stack.push_async_callback(down)
        self.printer_stops[lane_id] = down
        return printer

    async def exit_lane(
        self,
        name: str = "P03/x",
        rules: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
        **sections: Any,
    ) -> RoadLane:
        """`auth`: extra [auth] keys; `sections`: `source`, or extra config sections."""
        acquirer = AcquirerServer()
        url = await acquirer.start()
        self.stack.push_async_callback(acquirer.stop)
        return await self.lane(
            self.lane_id(name),
            "toll-exit",
            rules,
            auth={"acquirer_url": url, "keyset": str(self.keyset), **(auth or {})},
            fares={"tariff": str(ROAD)},
            **sections,
        )

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish once, retained when it is a plate binding (as an entry lane does)."""
        link = MqttLink(self.broker.host, self.broker.port, f"road-test-{uuid.uuid4().hex[:8]}")
        task = asyncio.create_task(link.run())
        try:
            await link.wait_connected(5)
            await link.publish(topic, payload, qos=1, retain=topics.plate_of(topic) is not None)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def road(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Road]:
    codes = CodeFactory(7)
    run_id = uuid.uuid4().hex[:6]
    lanes = [f"{name}{run_id}" for name in LANES]
    keyset = codes.write_keyset(tmp_path / "keyset.json", int(time.time()), lanes)
    p01 = PlazaPassKey.generate("P01")
    tokens = load_keyset(keyset)
    keyset.write_text(keyset_to_json(KeySet.of(tokens.issued_at, [*tokens.keys.values(),
                                                                   p01.public()])))  # fmt: skip
    pem = tmp_path / "pass-P01.key.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(p01.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        yield Road(tmp_path, mosquitto, codes, keyset, pem, run_id, stack)


def dropped(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.getMessage().startswith("ticket job dropped") for r in caplog.records)


def status(state: PrinterState) -> bytes:
    """A printer status as its gateway publishes it."""
    return PrinterStatus(state, 0, 0, int(time.time() * 1e6)).encode()


def shown(lane: RoadLane, line: str) -> bool:
    return any(line in n["lines"] for n in lane.named("display"))


async def attendant(road: Road, lane: RoadLane, op: str) -> None:
    cmd = AttendantCommand(op, uuid.uuid4().hex, "", "op7", int(time.time() * 1e6))
    await road.publish(topics.attendant(lane.daemon.lane), cmd.encode())


@dataclass(frozen=True)
class Ticket:
    text: str  # the pass, as our decoder reads it from the paper
    paper: np.ndarray  # the printed ticket, as a camera in front of it sees it (BGR)


async def enter(lane: RoadLane, printer: PrinterEmulator, vehicle_class: int) -> Ticket:
    """A vehicle through the entry lane, with the ticket it was handed."""
    printed = len(printer.printed)
    await lane.device.vehicle_enters(vehicle_class)
    await eventually(lambda: len(printer.printed) > printed, what="the ticket printed")
    ticket = printer.printed[-1]
    paper = render_ticket(ticket.items)
    [seen] = ZxingDecoder().decode(paper)
    assert seen.text == ticket.qr_codes[0] and seen.text.startswith("LP1:")
    await eventually(lambda: len(lane.named("barrier_opened")) > printed, what="entry opened")
    await lane.device.vehicle_passes()
    return Ticket(seen.text, cv2.cvtColor(paper, cv2.COLOR_GRAY2BGR))


def back_office(tmp: Path, broker: Mosquitto) -> tuple[SqliteIngestStore, Ingest, MqttLink]:
    store = SqliteIngestStore(tmp / "ingest.sqlite")
    ingest = Ingest(store, group=f"road-{uuid.uuid4().hex[:6]}")
    return store, ingest, ingest.make_link(broker.host, broker.port, f"bo-{uuid.uuid4().hex[:6]}")


async def running_back_office(road: Road) -> SqliteIngestStore:
    """The back office's ingest, connected, for the rest of the test; its store."""
    store, ingest, bo_link = back_office(road.tmp, road.broker)
    bo = asyncio.create_task(bo_link.run())
    road.stack.push_async_callback(ingest.close)
    road.stack.push_async_callback(lambda: asyncio.gather(bo, return_exceptions=True))
    road.stack.callback(bo.cancel)
    await bo_link.wait_connected(5)
    return store


async def test_a_vehicle_enters_and_exits_paying_the_matrix_fare_once(road: Road) -> None:
    store = await running_back_office(road)
    entry, printer = await road.entry_lane()
    exit_lane = await road.exit_lane()
    other_exit = await road.exit_lane("P03/y")  # another exit lane of the same plaza

    ticket = await enter(entry, printer, 2)
    [record] = entry.records("entry")
    assert (record["amount_minor"], record["vehicle_class"], record["entry_plaza"]) == (0, 2, "P01")
    pass_id = record["pass_id"]
    # The back office sees the vehicle on the road.
    await eventually(lambda: [t.pass_id for t in open_trips(store).open_trips] == [pass_id])

    await exit_lane.device.vehicle_enters(2)
    await eventually(lambda: exit_lane.named("vehicle_arrived"))
    # The driver holds the printed ticket to the exit lane's camera: its scan pipeline reads it.
    await show(exit_lane, ticket.paper, lambda: exit_lane.named("trip_priced"))
    fare = load_tariff(ROAD).trip_fare(2, "P01", "P03", time.time()).amount_minor
    assert exit_lane.named("trip_priced")[0]["amount_minor"] == fare
    token = road.codes.make("token", int(time.time())).text
    await show(exit_lane, token, lambda: exit_lane.named("barrier_opened"))
    [paid] = exit_lane.records("exit")
    assert (paid["amount_minor"], paid["pass_id"], paid["entry_plaza"]) == (fare, pass_id, "P01")
    assert paid["auth"]["result"] == "approved" and "pass_used" not in paid.get("flags", [])
    await exit_lane.device.vehicle_passes()
    await eventually(lambda: exit_lane.daemon.runner.state.passage is None)
    # Exited: no longer on the road in the back office.
    ledger = await eventually_value(lambda: _closed(store))
    assert ledger.open_trips == () and ledger.closed == 1

    # The same pass again (a copy of the ticket) at the plaza's other exit lane: its used-pass
    # store heard of the exit over the plaza topic; refused as used, the attendant confirms
    # the maximum fare, and the record says so.
    await eventually(lambda: other_exit.daemon.replay.get(pass_key(pass_id)) is not None)
    await other_exit.device.vehicle_enters(2)
    await eventually(lambda: other_exit.named("vehicle_arrived"))
    await show(other_exit, ticket.text, lambda: other_exit.named("trip_priced"))
    [second] = other_exit.named("trip_priced")
    farthest = load_tariff(ROAD).farthest_fare(2, "P03", time.time()).amount_minor
    assert (second["outcome"], second["amount_minor"], second["attendant"]) == (
        "pass_used", farthest, True
    )  # fmt: skip
    assert "attendant_needed" in other_exit.daemon.runner.alarms
    token = road.codes.make("token", int(time.time())).text
    await show(other_exit, token, lambda: shown(other_exit, "Attendant coming"))
    assert other_exit.named("barrier_opened") == []  # no payment before the attendant confirms
    await attendant(road, other_exit, "confirm_fare")
    await eventually(lambda: other_exit.named("fare_confirmed"))
    token = road.codes.make("token", int(time.time())).text
    await show(other_exit, token, lambda: other_exit.named("barrier_opened"))
    [again] = other_exit.records("exit")
    assert again["amount_minor"] == farthest
    assert {"pass_used", "attendant"} <= set(again["flags"])
    assert "attendant_needed" not in other_exit.daemon.runner.alarms


def _closed(store: SqliteIngestStore) -> Any:
    ledger = open_trips(store)
    return ledger if ledger.closed == 1 else None


async def eventually_value(get: Any, within: float = 10.0) -> Any:
    found: list[Any] = []
    await eventually(lambda: found.append(get()) or found[-1] is not None, within=within)
    return found[-1]


async def test_paper_out_is_an_alarm_the_lane_stays_safe_and_it_clears(road: Road) -> None:
    entry, printer = await road.entry_lane()
    printer.set_paper(False)
    alarms = entry.daemon.runner.alarms
    await eventually(lambda: "printer_paper_out" in alarms, what="the paper-out alarm")
    # No plate read: no ticket, no way to prove the entry: the vehicle waits, the boom stays.
    await entry.device.vehicle_enters(1)
    await eventually(lambda: shown(entry, "Ticket printer fault"), what="the fault displayed")
    assert entry.records("entry") == [] and entry.named("barrier_opened") == []
    printer.set_paper(True)
    await eventually(lambda: "printer_paper_out" not in alarms, what="the alarm cleared")
    await eventually(lambda: entry.named("barrier_opened"), what="the ticket printed, opened")
    assert len(printer.printed) == 1  # the same job, printed once
    [record] = entry.records("entry")
    assert record.get("flags", []) == []
    await entry.device.vehicle_passes()
    await eventually(lambda: entry.daemon.runner.state.passage is None)

    # Paper out again, and this vehicle's plate is read: it opens on the plate binding.
    printer.set_paper(False)
    await eventually(lambda: "printer_paper_out" in alarms)
    plate = PlateReading(f"ZJ{road.run_id.upper()}", 0.97, int(time.time() * 1e6))
    await road.publish(topics.io(entry.daemon.lane, topics.PLATE), plate.encode())
    await eventually(lambda: entry.daemon.runner.state.next_plate == plate.plate)
    await entry.device.vehicle_enters(1)
    await eventually(lambda: len(entry.named("barrier_opened")) == 2, what="opened on the plate")
    second = entry.records("entry")[1]
    assert (second["plate"], second["flags"]) == (plate.plate, ["no_ticket"])
    await road.publish(topics.road_plate(plate.plate), b"")  # no exit here: leave no binding
    assert len(printer.printed) == 1
    await entry.device.vehicle_passes()
    await eventually(lambda: entry.daemon.runner.state.passage is None)
    printer.set_paper(True)
    await eventually(lambda: "printer_paper_out" not in alarms)
    # The next vehicle's ticket is the next one printed: the plate-bound one's job was dropped.
    third = (await enter(entry, printer, 1)).text
    assert [t.job_id for t in printer.printed] == [
        f"{v['vehicle_id']}/pass" for v in entry.named("vehicle_arrived")[0::2]
    ]
    assert third == printer.printed[-1].qr_codes[0]


async def test_a_vehicle_waiting_out_a_long_paper_out_gets_its_ticket_once_paper_is_in(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """No plate read, paper out for an hour: the boom stays down and the alarm stays up all
    along, and once paper is loaded the same job prints and the lane opens. (The desk gave up
    after ten minutes before: the alarm then cleared with paper in, the vehicle left at a
    closed boom under `Ticket printer fault` for good.)"""
    caplog.set_level(logging.DEBUG, logger="lane.ticket_desk")
    ahead = [0.0]  # the daemon's monotonic clock, moved on as an hour's wait would
    clocks = Clocks(monotonic=lambda: time.monotonic() + ahead[0])
    entry, printer = await road.entry_lane(clocks=clocks)
    alarms = entry.daemon.runner.alarms
    printer.set_paper(False)
    await eventually(lambda: "printer_paper_out" in alarms, what="the paper-out alarm")
    await entry.device.vehicle_enters(1)
    await eventually(lambda: shown(entry, "Ticket printer fault"), what="the fault displayed")

    def tries() -> int:
        return sum(r.getMessage().startswith("ticket not printed") for r in caplog.records)

    ahead[0] = 3600.0
    after = tries()
    await eventually(lambda: tries() >= after + 2, what="the job tried again after an hour")
    assert entry.records("entry") == [] and entry.named("barrier_opened") == []
    assert "printer_paper_out" in alarms

    printer.set_paper(True)
    await eventually(lambda: entry.named("barrier_opened"), what="the ticket printed, opened")
    assert "printer_paper_out" not in alarms
    assert [t.job_id for t in printer.printed] == [entry.named("vehicle_arrived")[0]["vehicle_id"]
                                                   + "/pass"]  # fmt: skip
    [record] = entry.records("entry")
    assert record.get("flags", []) == []
    # Every try is counted, but the paper-out is said once at the warning level, not per retry.
    said = [r for r in caplog.records if r.levelno >= logging.WARNING
            and r.getMessage() == "ticket not printed"]  # fmt: skip
    assert [r.__dict__["error"] for r in said] == ["paper_out"]
    [printed] = [r for r in caplog.records if r.getMessage() == "ticket printed"]
    assert printed.__dict__["tries"] > after + 2


async def test_a_printer_refusing_jobs_is_an_alarm_naming_why_until_a_ticket_prints(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """The printer refuses the ESC/POS data (`bad_job`): a vehicle without a plate read waits at
    the shut boom, and an alarm names the printer's reason. It is the printer's fault, so it stays
    once that vehicle is opened by hand (it cleared with each vehicle served before: an alarm
    flapping per vehicle, gone while the printer refused every job); a ticket printed clears it."""
    caplog.set_level(logging.INFO, logger="lane.ticket_desk")
    entry, printer = await road.entry_lane()
    alarms = entry.daemon.runner.alarms
    printer.refusing = "unsupported command 0x1d 0x28"
    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_refused_job" in alarms, what="the refused-job alarm")
    assert "unsupported command 0x1d 0x28" in alarms["printer_refused_job"]
    await eventually(lambda: shown(entry, "Ticket printer fault"), what="the fault displayed")
    assert entry.records("entry") == [] and entry.named("barrier_opened") == []
    assert "printer_offline" not in alarms  # it answers: a refusal is not a printer gone

    await attendant(road, entry, "open")
    await eventually(lambda: entry.named("barrier_opened"), what="opened by hand")
    await entry.device.vehicle_passes()
    await eventually(lambda: entry.daemon.runner.state.passage is None)
    await eventually(lambda: dropped(caplog), what="the refused job dropped, its vehicle gone")
    assert "printer_refused_job" in alarms  # the printer still refuses: the next vehicle waits
    assert printer.printed == []  # the refused job is not printed after its vehicle left

    printer.refusing = None
    await enter(entry, printer, 1)
    assert "printer_refused_job" not in alarms


async def test_a_printer_refusing_jobs_is_believed_mended_when_its_status_changes(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarted (its will, then `ready`) the printer may take the lane's jobs again: the alarm
    clears, and the next job it refuses raises it again."""
    caplog.set_level(logging.INFO, logger="lane.ticket_desk")
    entry, printer = await road.entry_lane()
    alarms = entry.daemon.runner.alarms
    printer.refusing = "unsupported command 0x1d 0x28"
    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_refused_job" in alarms, what="the refused-job alarm")
    await attendant(road, entry, "open")
    await entry.device.vehicle_passes()
    await eventually(lambda: entry.daemon.runner.state.passage is None)
    await eventually(lambda: dropped(caplog), what="the refused job dropped, its vehicle gone")
    assert "printer_refused_job" in alarms
    printer.refusing = None
    await road.publish(topics.printer_status(entry.daemon.lane), status(PrinterState.OFFLINE))
    await road.publish(topics.printer_status(entry.daemon.lane), status(PrinterState.READY))
    await eventually(lambda: "printer_refused_job" not in alarms, what="cleared on its restart")
    await enter(entry, printer, 1)


async def test_a_printer_refusing_jobs_restarted_keeping_its_status_is_believed_mended(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """The printer's gateway restarts cleanly (no will: its retained status stays `ready`) and
    says `ready` again, in a new session: the refused-job alarm clears (it stayed until a ticket
    printed). Still refusing, the next vehicle's job raises it again and the vehicle waits at the
    shut boom; mended and restarted, the printer prints that vehicle's ticket."""
    caplog.set_level(logging.INFO, logger="lane.ticket_desk")
    entry, printer = await road.entry_lane()
    alarms = entry.daemon.runner.alarms
    lane = entry.daemon.lane
    reason = "unsupported command 0x1d 0x28"
    printer.refusing = reason
    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_refused_job" in alarms, what="the refused-job alarm")
    await attendant(road, entry, "open")
    await entry.device.vehicle_passes()
    await eventually(lambda: entry.daemon.runner.state.passage is None)
    await eventually(lambda: dropped(caplog), what="the refused job dropped, its vehicle gone")
    # Its status heard again in the same session (as the lane's own reconnection hears the
    # retained copy) is no restart.
    [kept] = await handed_at_once(road.broker, f"peek-{road.run_id}", topics.printer_status(lane))
    await road.publish(topics.printer_status(lane), kept.payload)
    await road.publish(topics.printer_ack(lane), b"after it")  # heard once the status is
    await eventually(lambda: any(r.getMessage() == "garbage from the printer"
                                 for r in caplog.records), what="the status handled")  # fmt: skip
    assert "printer_refused_job" in alarms

    await road.printer_stops[lane]()
    restarted = road.printer(lane)
    restarted.refusing = reason  # the same gateway, the same dialect: it still refuses
    await eventually(lambda: "printer_refused_job" not in alarms, what="cleared on its restart")
    states = [r.__dict__["state"] for r in caplog.records if r.getMessage() == "printer status"]
    assert set(states) == {"ready"}  # it never said anything else

    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_refused_job" in alarms, what="refused again: raised again")
    assert len(entry.named("barrier_opened")) == 1 and entry.records("entry") == []
    await road.printer_stops[lane]()
    mended = road.printer(lane)
    await eventually(lambda: len(entry.named("barrier_opened")) == 2, what="its ticket printed")
    assert [t.job_id for t in mended.printed] == [
        f"{entry.named('vehicle_arrived')[1]['vehicle_id']}/pass"
    ]
    assert "printer_refused_job" not in alarms


async def test_a_frozen_printer_thawed_prints_no_ticket_for_a_vehicle_gone(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """The printer freezes, still connected: the copies of a job the broker hands it wait in it,
    past any broker expiry. The vehicle (no plate read) waits at the shut boom under
    `printer_offline`, then backs away. Thawed a minute on, the printer drops every copy past its
    deadline (it printed the first before: a valid pass in the slot for the next driver); the
    next vehicle's ticket is the only one printed, and the alarm clears with it."""
    caplog.set_level(logging.INFO, logger="lane.ticket_desk")
    ahead = [0.0]  # the printer's clock: moved on as a minute's freeze would
    entry, printer = await road.entry_lane(printer_clock=lambda: time.time() + ahead[0])
    alarms = entry.daemon.runner.alarms
    printer.freeze()
    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_offline" in alarms, what="no answer: printer offline")
    await eventually(lambda: shown(entry, "Ticket printer fault"), what="the fault displayed")
    await entry.device.vehicle_backs_away()
    await eventually(lambda: dropped(caplog), what="the job dropped with its vehicle")
    assert entry.named("barrier_opened") == [] and entry.records("entry") == []
    [drop] = [r for r in caplog.records if r.getMessage().startswith("ticket job dropped")]
    ahead[0] = 60.0
    printer.thaw()
    sent = drop.__dict__["tries"]  # each try sent a copy: its status said `ready` all along
    await eventually(lambda: len(printer.expired) == sent, what="every copy dropped")
    ahead[0] = 0.0
    assert printer.printed == []

    await enter(entry, printer, 1)
    arrived = [v["vehicle_id"] for v in entry.named("vehicle_arrived")]
    assert [t.job_id for t in printer.printed] == [f"{arrived[1]}/pass"]
    assert "printer_offline" not in alarms


async def test_a_printer_clock_ahead_drops_every_job_and_the_alarm_names_its_clock(
    road: Road,
) -> None:
    """The printer's clock is 10 s ahead of the lane's: connected and `ready`, it drops every
    job as past its deadline. The vehicle waits at the shut boom under `printer_offline`, whose
    text names the clock, not a printer gone ("check its power and link" would mislead); the
    printer's clock set right, the job sent again prints, the vehicle goes, the alarm clears."""
    ahead = [10.0]
    entry, printer = await road.entry_lane(printer_clock=lambda: time.time() + ahead[0])
    alarms = entry.daemon.runner.alarms
    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_offline" in alarms, what="no answer: the alarm")
    assert "clock is 10 s ahead of this lane's" in alarms["printer_offline"]
    assert printer.expired and printer.printed == []
    assert entry.named("barrier_opened") == []

    ahead[0] = 0.0
    await eventually(lambda: entry.named("barrier_opened"), what="its ticket printed, opened")
    assert len(printer.printed) == 1
    assert "printer_offline" not in alarms


async def test_a_printed_ack_past_its_jobs_deadline_lets_no_vehicle_on(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """A printed ack that reaches the lane after the deadline of the copy it names (a printer
    that printed it late, a stale answer): the waiting vehicle is not let on by it, the job is
    sent again, and the ticket the printer prints on time, thawed, opens the lane."""
    entry, printer = await road.entry_lane()
    lane = entry.daemon.lane
    watcher = f"jobs-{road.run_id}"
    async with collected(road.broker, watcher, topics.printer_print(lane), PrintJob.decode) as jobs:
        printer.freeze()
        await entry.device.vehicle_enters(1)
        # Sent again: the first copy's deadline is past on the lane's clock.
        await eventually(lambda: len(jobs) >= 2, what="the job sent twice")
        first = jobs[0]
        late = PrintAck(first.job_id, None, "", int(time.time() * 1e6), first.not_after_us)
        await road.publish(topics.printer_ack(lane), late.encode())
        await eventually(
            lambda: any(r.getMessage() == "printer ack past its job's deadline ignored"
                        for r in caplog.records), what="the late ack handled",
        )  # fmt: skip
        copies = len(jobs)
        await eventually(lambda: len(jobs) > copies, what="sent again: the ack was no ticket")
        assert entry.named("barrier_opened") == [] and entry.records("entry") == []
        printer.thaw()
        await eventually(lambda: entry.named("barrier_opened"), what="its ticket printed, opened")
    assert [t.job_id for t in printer.printed] == [first.job_id]
    [record] = entry.records("entry")
    assert record.get("flags", []) == []


async def test_no_ticket_is_printed_for_a_vehicle_that_backed_away(road: Road) -> None:
    """Paper out, a vehicle without a plate read waits, then backs away: once paper is in,
    its job is not printed (a ticket left in the slot would be nobody's, or the next
    driver's); the next vehicle's ticket is the only one printed."""
    entry, printer = await road.entry_lane()
    alarms = entry.daemon.runner.alarms
    printer.set_paper(False)
    await eventually(lambda: "printer_paper_out" in alarms, what="the paper-out alarm")
    await entry.device.vehicle_enters(1)
    await eventually(lambda: shown(entry, "Ticket printer fault"), what="the fault displayed")
    await entry.device.vehicle_backs_away()
    await eventually(lambda: entry.daemon.runner.state.vehicle is None, what="the vehicle gone")
    printer.set_paper(True)
    await eventually(lambda: "printer_paper_out" not in alarms, what="the alarm cleared")
    await enter(entry, printer, 1)
    arrived = [v["vehicle_id"] for v in entry.named("vehicle_arrived")]
    assert [t.job_id for t in printer.printed] == [f"{arrived[1]}/pass"]
    assert entry.named("barrier_opened") and len(entry.records("entry")) == 1


async def test_a_job_left_at_the_broker_for_a_printer_gone_is_not_printed_when_it_is_back(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """The printer drops off the broker (its status still `ready`); a vehicle without a plate
    read waits, its job kept at the broker for the printer's session, then backs away. Once the
    printer is back, that job has expired there: only the next vehicle's ticket is printed."""
    caplog.set_level(logging.INFO, logger="lane.ticket_desk")
    entry, _ = await road.entry_lane()
    alarms = entry.daemon.runner.alarms
    await road.printer_stops[entry.daemon.lane]()  # gone, its retained status still `ready`
    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_offline" in alarms, what="no answer: printer offline")
    await entry.device.vehicle_backs_away()
    await eventually(
        lambda: any(r.getMessage().startswith("ticket job dropped") for r in caplog.records),
        what="the job dropped with its vehicle",
    )
    printer = road.printer(entry.daemon.lane)
    await eventually(lambda: "printer_offline" not in alarms, what="the printer back, ready")
    await entry.device.vehicle_enters(1)
    await eventually(lambda: entry.named("barrier_opened"), what="the next vehicle's entry")
    arrived = [v["vehicle_id"] for v in entry.named("vehicle_arrived")]
    assert [t.job_id for t in printer.printed] == [f"{arrived[1]}/pass"]
    assert len(entry.records("entry")) == 1


async def test_printer_offline_for_a_job_unanswered_clears_on_any_answer_from_the_printer(
    road: Road,
) -> None:
    """A job unanswered raises `printer_offline`; the printer's gateway then answers a job, if
    only to say it has no paper, without a new status: it is not offline, the alarm clears
    (it stayed until a ticket printed before)."""
    entry, _ = await road.entry_lane()
    alarms = entry.daemon.runner.alarms
    await road.printer_stops[entry.daemon.lane]()  # gone, its retained status still `ready`
    await entry.device.vehicle_enters(1)
    await eventually(lambda: "printer_offline" in alarms, what="no answer: printer offline")
    [arrived] = entry.named("vehicle_arrived")
    ack = PrintAck(f"{arrived['vehicle_id']}/pass", PrintError.PAPER_OUT, "no paper",
                   int(time.time() * 1e6))  # fmt: skip
    await road.publish(topics.printer_ack(entry.daemon.lane), ack.encode())
    await eventually(lambda: "printer_offline" not in alarms, what="answered: not offline")
    assert entry.named("barrier_opened") == []


async def test_a_late_ack_of_a_job_from_before_leaves_printer_offline_raised(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """The printer's will said `offline`; an ack of a job sent before it, delivered late, does
    not clear the alarm (any ack cleared it: the printer gone, the console showed it well)."""
    entry, _ = await road.entry_lane()
    alarms = entry.daemon.runner.alarms
    lane = entry.daemon.lane
    await road.printer_stops[lane]()
    await road.publish(topics.printer_status(lane), status(PrinterState.OFFLINE))
    await eventually(lambda: "printer_offline" in alarms, what="its will: offline")
    late = PrintAck("p01/e1-0/pass", None, "", int(time.time() * 1e6))
    await road.publish(topics.printer_ack(lane), late.encode())
    await road.publish(topics.printer_ack(lane), b"after it")  # heard once the late ack is
    await eventually(lambda: any(r.getMessage() == "garbage from the printer"
                                 for r in caplog.records), what="the late ack handled")  # fmt: skip
    assert "printer_offline" in alarms


async def test_a_ticketless_vehicle_exits_on_its_plate_binding(road: Road) -> None:
    """Paper out at the entry, the plate read: the exit lane prices the trip from the binding
    the entry lane published, and empties it once the pass has exited, there and at the other
    exit lane, which takes the tombstone the first signs and leaves retained in its place."""
    entry, printer = await road.entry_lane()
    exit_lane = await road.exit_lane()
    other = (await road.exit_lane("P03/y")).daemon.road.trips
    assert other is not None
    plate = f"ZJ{road.run_id.upper()}"[:16]
    printer.set_paper(False)
    await eventually(lambda: "printer_paper_out" in entry.daemon.runner.alarms)
    reading = PlateReading(plate, 0.97, int(time.time() * 1e6))
    await road.publish(topics.io(entry.daemon.lane, topics.PLATE), reading.encode())
    await eventually(lambda: entry.daemon.runner.state.next_plate == plate)
    await entry.device.vehicle_enters(3)
    await eventually(lambda: entry.named("barrier_opened"), what="opened on the plate")
    [record] = entry.records("entry")
    assert (record["plate"], record["flags"], printer.printed) == (plate, ["no_ticket"], [])
    await entry.device.vehicle_passes()
    trips = exit_lane.daemon.road.trips
    assert trips is not None
    await eventually(lambda: plate in trips.bound, what="the binding at the exit lane")

    await road.publish(topics.io(exit_lane.daemon.lane, topics.PLATE), reading.encode())
    await eventually(lambda: exit_lane.daemon.runner.state.next_plate == plate)
    await exit_lane.device.vehicle_enters(3)
    await eventually(lambda: exit_lane.named("trip_priced"), what="priced from the plate")
    fare = load_tariff(ROAD).trip_fare(3, "P01", "P03", time.time()).amount_minor
    assert exit_lane.named("trip_priced")[0]["amount_minor"] == fare
    token = road.codes.make("token", int(time.time())).text
    await show(exit_lane, token, lambda: exit_lane.named("barrier_opened"))
    [paid] = exit_lane.records("exit")
    assert (paid["pass_id"], paid["plate"], paid["amount_minor"]) == (
        record["pass_id"],
        plate,
        fare,
    )
    await eventually(lambda: plate not in trips.bound, what="the binding emptied")
    await eventually(lambda: plate not in other.bound, what="emptied at the other exit lane")
    async with collected(
        road.broker,
        f"late-{road.run_id}",
        topics.road_plate(plate),
        lambda data: decode_binding(decode_sign1(data).payload),
    ) as got:
        await eventually(lambda: got, what="the retained tombstone")  # fmt: skip
    assert (got[0].kind, got[0].lane) == (BindingKind.EXITED, exit_lane.daemon.lane)


async def test_an_exit_refunded_under_a_fault_leaves_its_pass_to_exit_once_more(road: Road) -> None:
    """The exit lane's device drops commands as the driver pays: the boom never rises, the
    exit is refunded `pass_dwell_s` after its open (paid_not_passed). The driver did not leave,
    so the pass is not spent: shown again once the device is back it prices as a trip (no
    `Entry pass already used`, no attendant) and the driver pays it once. The plaza's other
    exit lane heard the use and hears the release: it forgets the mark too."""
    entry, printer = await road.entry_lane()
    exit_lane = await road.exit_lane(rules={"pass_dwell_s": 3.0, "probe_s": 0.5})
    other = (await road.exit_lane("P03/y")).daemon.replay
    runner, device = exit_lane.daemon.runner, exit_lane.device
    ticket = await enter(entry, printer, 1)
    [record] = entry.records("entry")
    pass_id = record["pass_id"]
    await device.vehicle_enters(1)
    await eventually(lambda: exit_lane.named("vehicle_arrived"))
    await show(exit_lane, ticket.text, lambda: exit_lane.named("trip_priced"))
    fare = load_tariff(ROAD).trip_fare(1, "P01", "P03", time.time()).amount_minor
    assert exit_lane.named("trip_priced")[0]["amount_minor"] == fare
    device.set_fault("no_ack")
    token = road.codes.make("token", int(time.time())).text
    await show(exit_lane, token, lambda: exit_lane.records("exit"))
    await eventually(lambda: exit_lane.daemon.replay.get(pass_key(pass_id)) is not None)
    await eventually(lambda: other.get(pass_key(pass_id)) is not None, what="the use heard")
    await eventually(lambda: exit_lane.named("paid_not_passed"), within=15)
    await eventually(lambda: exit_lane.daemon.replay.get(pass_key(pass_id)) is None)
    await eventually(lambda: other.get(pass_key(pass_id)) is None, what="the release heard")
    # The device acks again: the lane's test close clears barrier_no_ack.
    device.set_fault(None)
    await eventually(lambda: "barrier_no_ack" not in runner.alarms, within=10)
    await device.vehicle_backs_away()
    await device.vehicle_enters(1)
    await eventually(lambda: len(exit_lane.named("vehicle_arrived")) == 2)
    await show(exit_lane, ticket.text, lambda: len(exit_lane.named("trip_priced")) == 2)
    again = exit_lane.named("trip_priced")[1]
    assert (again["outcome"], again["amount_minor"], again["attendant"]) == ("charged", fare, False)
    token = road.codes.make("token", int(time.time())).text
    await show(exit_lane, token, lambda: exit_lane.named("barrier_opened"))
    paid = [r for r in exit_lane.records("exit") if r["auth"]["result"] == "approved"]
    assert [(r["amount_minor"], r["pass_id"]) for r in paid] == [(fare, pass_id)] * 2
    assert "pass_used" not in paid[1].get("flags", [])
    await device.vehicle_passes()
    # Exited this time: the pass is spent.
    await eventually(lambda: exit_lane.daemon.replay.get(pass_key(pass_id)) is not None)


async def test_an_exit_carried_over_a_restart_and_refunded_releases_its_pass_here_and_there(
    road: Road,
) -> None:
    """The exit lane stops between the driver's paid exit and the open (its device drops the
    open) and starts again owing the passage. Nobody shows the code within what is left of the
    wait: the refund (`carried`) names the pass and releases it as a live refund does, at this
    lane and at the plaza's other exit lane, which hears the release: shown again, the pass
    prices as a trip with no attendant."""
    entry, printer = await road.entry_lane()
    exit_lane = await road.exit_lane(rules={"pass_dwell_s": 60.0})
    other = (await road.exit_lane("P03/y")).daemon.replay
    ticket = await enter(entry, printer, 1)
    [record] = entry.records("entry")
    pass_id = record["pass_id"]
    await exit_lane.device.vehicle_enters(1)
    await eventually(lambda: exit_lane.named("vehicle_arrived"))
    await show(exit_lane, ticket.text, lambda: exit_lane.named("trip_priced"))
    exit_lane.device.set_fault("no_ack")  # the open is dropped: the driver waits
    token = road.codes.make("token", int(time.time())).text
    await show(exit_lane, token, lambda: exit_lane.records("exit"))
    [paid] = exit_lane.records("exit")
    assert paid["pass_id"] == pass_id
    await eventually(lambda: exit_lane.daemon.replay.get(pass_key(pass_id)) is not None)
    await eventually(lambda: other.get(pass_key(pass_id)) is not None, what="the use heard")
    assert exit_lane.stop is not None
    await exit_lane.stop()  # owing the driver its passage
    assert exit_lane.named("paid_not_passed") == []

    restarted = await road.exit_lane(rules={"pass_dwell_s": 3.0, "probe_s": 0.5})
    await eventually(lambda: restarted.named("paid_not_passed"), within=15)
    await eventually(lambda: restarted.records("exit"), what="the refund record")
    [refund] = restarted.records("exit")
    assert refund["flags"] == ["paid_not_passed", f"record:{paid['record_id']}", "carried"]
    assert refund["pass_id"] == pass_id
    await eventually(lambda: restarted.daemon.replay.get(pass_key(pass_id)) is None)
    await eventually(lambda: other.get(pass_key(pass_id)) is None, what="the release heard")
    runner = restarted.daemon.runner
    # barrier_no_ack, kept on disk, clears at the device's first ack of the lane's test close.
    await eventually(lambda: "barrier_no_ack" not in runner.alarms, within=10)
    await restarted.device.vehicle_enters(1)
    await eventually(lambda: restarted.named("vehicle_arrived"))
    await show(restarted, ticket.text, lambda: restarted.named("trip_priced"))
    fare = load_tariff(ROAD).trip_fare(1, "P01", "P03", time.time()).amount_minor
    again = restarted.named("trip_priced")[0]
    assert (again["outcome"], again["amount_minor"], again["attendant"]) == ("charged", fare, False)


async def test_a_forged_or_stale_plate_binding_is_refused_at_the_exit_lane(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """The plate's binding, signed by the entry lane, stands against one published unsigned
    in that lane's name (a genuine pass of a cheaper trip, say), an older genuine binding of
    the plate replayed, and a genuine binding of another plate put on this plate's topic
    (docs/closed-road.md, "Plate bindings")."""
    exit_lane = await road.exit_lane()
    trips = exit_lane.daemon.road.trips
    assert trips is not None
    entry_id = road.lane_id("P01/e")
    plaza_key = PlazaPassKey.load(road.pass_key, "pass-P01", "P01")
    plate = f"ZJ{road.run_id.upper()}"[:16]
    now = int(time.time())

    def pass_of(n: int, at: int) -> str:
        return plaza_key.issue(EntryPass("P01", entry_id.split("/")[1], at, 1, bytes([n]) * 12,
                                         plate))  # fmt: skip

    def bound(text: str, at: float, to: str = plate) -> bytes:
        return encode_binding(PlateBinding(to, text, entry_id, at))

    current = pass_of(1, now - 60)
    await road.publish(topics.road_plate(plate), road.codes.lane_key(entry_id).seal(
        bound(current, now - 60)))  # fmt: skip
    await eventually(lambda: trips.bound.get(plate) == current, what="the binding")
    caplog.set_level(logging.INFO)
    for payload in (
        road.codes.lane_key(entry_id).seal(bound(pass_of(3, now - 3600), now - 3600)),  # stale
        road.codes.lane_key(entry_id).seal(bound(pass_of(4, now - 10), now - 10, "OTHER1")),
        bound(pass_of(2, now - 30), now - 30),  # unsigned, in the entry lane's name
    ):
        await road.publish(topics.road_plate(plate), payload)
    topic = topics.road_plate(plate)

    def refused() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.__dict__.get("topic") == topic and r.levelname == "WARNING"]  # fmt: skip

    await eventually(lambda: len(refused()) == 3, what=f"three refusals: {refused()}")
    assert refused() == [
        "plate binding older than the plate's: refused",
        "plate binding for another plate: refused",
        "plate binding refused: unsigned",
    ]
    assert trips.bound[plate] == current
    alarms = exit_lane.daemon.runner.alarms
    await eventually(lambda: entry_id in alarms.get("peer_messages_refused", ""), what="alarm")


async def test_a_plate_binding_deleted_under_the_upgrade_switch_is_taken_and_alarmed(
    road: Road,
) -> None:
    """While `auth.accept_unsigned_peers` is on, an MQTT delete of a plate's binding (how an
    exit lane of the release before empties it) is taken, unsigned as it is, and says so as
    any unsigned message taken does: `unsigned_peer_messages`, naming no lane (a delete names
    none)."""
    exit_lane = await road.exit_lane(auth={"accept_unsigned_peers": True})
    trips = exit_lane.daemon.road.trips
    assert trips is not None
    entry_id = road.lane_id("P01/e")
    plaza_key = PlazaPassKey.load(road.pass_key, "pass-P01", "P01")
    plate, now = f"ZD{road.run_id.upper()}"[:16], int(time.time())
    text = plaza_key.issue(EntryPass("P01", entry_id.split("/")[1], now - 60, 1,
                                     bytes([5]) * 12, plate))  # fmt: skip
    binding = encode_binding(PlateBinding(plate, text, entry_id, now - 60))
    topic = topics.road_plate(plate)
    await road.publish(topic, road.codes.lane_key(entry_id).seal(binding))
    await eventually(lambda: trips.bound.get(plate) == text, what="the binding")
    alarms = exit_lane.daemon.runner.alarms

    def unsigned() -> str:
        # Other lanes' unsigned bindings, retained by earlier tests of the road, may be named too.
        return alarms.get("unsigned_peer_messages", "")

    assert UNSIGNED_DELETE not in unsigned()  # signed
    await road.publish(topic, b"")
    await eventually(lambda: plate not in trips.bound, what="emptied")
    await eventually(lambda: UNSIGNED_DELETE in unsigned(), what=f"alarmed: {unsigned()!r}")
    assert unsigned().startswith("unsigned messages taken from ")


async def test_an_exit_lane_restarted_still_refuses_a_plates_emptied_binding_replayed(
    road: Road, caplog: pytest.LogCaptureFixture
) -> None:
    """A plate's binding emptied (its pass exited at the other exit lane, whose tombstone is
    retained in its place), then replayed retained by anybody with the broker password while
    this exit lane is down: the lane that starts again takes the broker's retained binding only
    by the plate's time it kept in its replay store, so it refuses it, and the plate's next
    vehicle is never priced from a pass that exited (the farthest fare, `pass_used`)."""
    exit_lane = await road.exit_lane()
    trips = exit_lane.daemon.road.trips
    assert trips is not None and exit_lane.stop is not None
    entry_id, elsewhere = road.lane_id("P01/e"), road.lane_id("P03/y")
    plaza_key = PlazaPassKey.load(road.pass_key, "pass-P01", "P01")
    plate, now = f"ZR{road.run_id.upper()}"[:16], int(time.time())
    entry = EntryPass("P01", entry_id.split("/")[1], now - 60, 1, bytes([7]) * 12, plate)
    text = plaza_key.issue(entry)

    def signed(binding: PlateBinding) -> bytes:
        return road.codes.lane_key(binding.lane).seal(encode_binding(binding))

    bound = signed(PlateBinding(plate, text, entry_id, now - 60))
    topic = topics.road_plate(plate)
    await road.publish(topic, bound)
    await eventually(lambda: trips.bound.get(plate) == text, what="the binding")
    await road.publish(topic, signed(PlateBinding(plate, text, elsewhere, now - 60,
                                                  BindingKind.EXITED)))  # fmt: skip
    await eventually(lambda: plate not in trips.bound, what="emptied")
    await exit_lane.stop()
    await road.publish(topic, bound)  # replayed, retained in the tombstone's place
    caplog.set_level(logging.INFO)
    restarted = (await road.exit_lane()).daemon.road.trips
    assert restarted is not None

    def refused() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.__dict__.get("topic") == topic and r.levelname == "WARNING"]  # fmt: skip

    await eventually(refused, what="the replay refused")
    # (The broker may hand the retained binding more than once: each is refused.)
    assert set(refused()) == {"plate binding older than the plate's: refused"}
    assert plate not in restarted.bound
    await road.publish(topic, b"")  # leave the broker no binding (the lanes refuse a delete)


async def test_a_dark_camera_is_a_warning_at_the_entry_lane_and_closes_the_exit_lane(
    road: Road,
) -> None:
    """The entry lane takes no codes: its dark camera is a minor alarm saying the lane still
    issues tickets, and it stays ready (/readyz 200). The exit lane's closes it to payments: a
    critical alarm, /readyz 503. Both clear by themselves once the cameras see again."""
    metrics = {"host": "127.0.0.1", "port": 0}
    entry, printer = await road.entry_lane(source=PushSource(blackout_after_s=0.5), metrics=metrics)
    exit_lane = await road.exit_lane(source=PushSource(blackout_after_s=0.5), metrics=metrics)
    black = np.zeros((720, 1280, 3), np.uint8)  # a covered lens
    lanes = ((entry, "minor", 200), (exit_lane, "critical", 503))

    def dark(lane: RoadLane) -> bool:
        return "camera_blackout" in lane.daemon.runner.alarms

    def put(picture: np.ndarray) -> None:
        for lane, _, _ in lanes:
            lane.source.put(picture)

    await eventually(lambda: all(dark(lane) for lane, _, _ in lanes), between=lambda: put(black))
    # Readiness fails on a queue not read yet: only the camera's check is judged here.
    await eventually(lambda: all(lane.daemon.ops.uplink for lane, _, _ in lanes), what="queue read")
    async with aiohttp.ClientSession() as http:
        for lane, severity, status in lanes:
            alarms = [a for a in lane.daemon.health.message().alarms if a.active]
            assert [(a.code, a.severity) for a in alarms] == [("camera_blackout", severity)]
            address = lane.daemon.ops.address
            assert address is not None
            async with http.get(f"http://127.0.0.1:{address[1]}/readyz") as resp:
                assert resp.status == status, await resp.text()
    said = entry.daemon.runner.alarms["camera_blackout"]
    assert said.startswith(ENTRY_CAMERA_DARK + ": camera blackout: black frames")
    assert entry.daemon.runner.state.accepting_payments
    assert not exit_lane.daemon.runner.state.accepting_payments
    # The entry lane goes on issuing tickets meanwhile.
    await enter(entry, printer, 1)
    lit = frame_for(None, "clear", rng=1)
    await eventually(lambda: not any(dark(lane) for lane, _, _ in lanes), between=lambda: put(lit))
    assert exit_lane.daemon.runner.state.accepting_payments
