"""The ticket printer over a real mosquitto: an entry pass printed, read back, verified; the
paper-out fault (safe, visible, clears); duplicates and bad jobs; the plate on the I/O topics."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from test_barrier_deploy import acl_broker, creds, needs_passwd, tasks
from test_barrier_protocol import until

from barrier.escpos import Ticket, encode_ticket
from barrier.link import BarrierLink
from barrier.peripherals import (
    PlateReading,
    PrintAck,
    PrintError,
    PrinterState,
    PrinterStatus,
    PrintJob,
)
from barrier.printer import PrinterEmulator, render_ticket
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet
from lane.auth.passes import EntryPass, PassAccepted, verify_pass
from lane.transport.broker_link import BrokerLink
from lane.transport.mqtt import Credentials, Incoming, MqttLink
from lane.wire import topics
from lane.wire.codec import pack
from scanner.decoders import ZxingDecoder
from sim.broker import Mosquitto

WAIT = 5.0


class Controller:
    """The lane's side of the printer protocol, as the next session's entry lane will be."""

    def __init__(
        self, broker: Mosquitto, lane: str, credentials: Credentials | None = None
    ) -> None:
        self.acks: asyncio.Queue[PrintAck] = asyncio.Queue()
        self.statuses: asyncio.Queue[PrinterStatus] = asyncio.Queue()
        self.seen: list[PrintAck] = []  # every ack, in order
        self.lane = lane

        async def handle(msg: Incoming) -> None:
            if msg.topic == topics.printer_ack(lane):
                ack = PrintAck.decode(msg.payload)
                self.seen.append(ack)
                self.acks.put_nowait(ack)
            elif msg.payload:
                self.statuses.put_nowait(PrinterStatus.decode(msg.payload))

        subs = [(topics.printer_ack(lane), 1), (topics.printer_status(lane), 1)]
        self.link = MqttLink(
            broker.host, broker.port, f"ctl-{lane}", subs, handle, credentials=credentials
        )

    async def print(self, job: PrintJob) -> PrintAck:
        await self.link.publish(topics.printer_print(self.lane), job.encode(), qos=1)
        return await until(self.acks, lambda a: a.job_id == job.job_id)


@pytest.fixture
def lane() -> str:
    return f"r{uuid.uuid4().hex[:6]}/e1"


def job(stream: bytes, life_s: float = WAIT) -> PrintJob:
    now_us = int(time.time() * 1e6)
    return PrintJob(uuid.uuid4().hex, stream, now_us, now_us + int(life_s * 1e6))


async def test_an_entry_pass_is_printed_read_back_and_verified(
    mosquitto: Mosquitto, lane: str
) -> None:
    key = PlazaPassKey.generate("P01")
    now = int(time.time())
    entry = EntryPass("P01", "e1", now, 2, uuid.uuid4().bytes[:12], "ZJA12345")
    text = key.issue(entry)
    printer = PrinterEmulator(lane, mosquitto.host, mosquitto.port)
    ctl = Controller(mosquitto, lane)
    async with tasks(printer.run(), ctl.link.run()):
        await printer.link.wait_connected(WAIT)
        await ctl.link.wait_connected(WAIT)
        ticket = Ticket("ENTRY P01", ("Lane e1", "Class 2", "Keep this ticket"), qr=text)
        ack = await ctl.print(job(encode_ticket(ticket)))
        assert ack.printed and ack.error is None
        await until(ctl.statuses, lambda s: s.printed == 1 and s.state is PrinterState.READY)
    [printed] = printer.printed
    assert printed.qr_codes == [text]
    assert printed.lines == ["ENTRY P01", "Lane e1", "Class 2", "Keep this ticket"]
    # The exit lane's camera path: our decoder on the rendered paper, then offline verify.
    [seen] = ZxingDecoder().decode(render_ticket(printed.items))
    assert seen.text == text
    keys = KeySet.of(now, [key.public()])
    assert verify_pass(seen.text, keys, now + 60, 5, 86_400) == PassAccepted(entry, key.kid)


async def test_paper_out_is_safe_visible_and_clears(mosquitto: Mosquitto, lane: str) -> None:
    printer = PrinterEmulator(lane, mosquitto.host, mosquitto.port)
    ctl = Controller(mosquitto, lane)
    stream = encode_ticket(Ticket("ENTRY P01", qr="LP1:X"))
    async with tasks(printer.run(), ctl.link.run()):
        await printer.link.wait_connected(WAIT)
        await ctl.link.wait_connected(WAIT)
        await until(ctl.statuses, lambda s: s.state is PrinterState.READY)
        printer.set_paper(False)
        await until(ctl.statuses, lambda s: s.state is PrinterState.PAPER_OUT)  # visible
        first = job(stream)
        refused = await ctl.print(first)
        assert refused.error is PrintError.PAPER_OUT and not refused.printed  # safe: said so
        assert printer.printed == []
        printer.set_paper(True)
        await until(ctl.statuses, lambda s: s.state is PrinterState.READY)  # clears by itself
        again = await ctl.print(first)  # the same job, retried once paper is in
        assert again.printed
        assert [t.job_id for t in printer.printed] == [first.job_id]


async def test_a_job_prints_once_and_a_bad_stream_is_refused(
    mosquitto: Mosquitto, lane: str
) -> None:
    printer = PrinterEmulator(lane, mosquitto.host, mosquitto.port)
    ctl = Controller(mosquitto, lane)
    async with tasks(printer.run(), ctl.link.run()):
        await printer.link.wait_connected(WAIT)
        await ctl.link.wait_connected(WAIT)
        once = job(encode_ticket(Ticket("ENTRY P01")))
        assert (await ctl.print(once)).printed
        assert (await ctl.print(once)).printed  # a redelivery: acked again, not printed again
        bad = await ctl.print(job(b"\x1b@\x07"))
        assert bad.error is PrintError.BAD_JOB and "0x07" in bad.detail
        await ctl.link.publish(topics.printer_print(lane), b"garbage", qos=1)  # ignored, logged
        assert (await ctl.print(job(encode_ticket(Ticket("NEXT"))))).printed
    assert [t.lines[0] for t in printer.printed] == ["ENTRY P01", "NEXT"]


async def test_the_printer_will_says_offline(mosquitto: Mosquitto, lane: str) -> None:
    ctl = Controller(mosquitto, lane)
    async with tasks(ctl.link.run()):
        await ctl.link.wait_connected(WAIT)
        printer = PrinterEmulator(lane, mosquitto.host, mosquitto.port)
        async with tasks(printer.run()):
            first = await until(ctl.statuses, lambda s: s.state is PrinterState.READY)
            await printer.link.drop()  # as if it crashed: the broker publishes the will
            will = await until(ctl.statuses, lambda s: s.state is PrinterState.OFFLINE)
            # The will names the session it ends; connected again, the printer is in a new one.
            again = await until(ctl.statuses, lambda s: s.state is PrinterState.READY)
    assert first.session and will.session == first.session
    assert again.session and again.session != first.session


async def test_a_job_past_its_deadline_is_dropped_unanswered(
    mosquitto: Mosquitto, lane: str
) -> None:
    """Held by a frozen printer until after its deadline, a job is not printed and not
    answered; one within its deadline, held alike, prints, its ack naming the copy answered."""
    ctl = Controller(mosquitto, lane)
    printer = PrinterEmulator(lane, mosquitto.host, mosquitto.port)
    async with tasks(printer.run(), ctl.link.run()):
        await printer.link.wait_connected(WAIT)
        await ctl.link.wait_connected(WAIT)
        printer.freeze()
        late, due = (
            job(encode_ticket(Ticket("LATE", ())), 0.0),
            job(encode_ticket(Ticket("DUE", ()))),
        )
        await ctl.link.publish(topics.printer_print(lane), late.encode(), qos=1)
        printer.thaw()
        ack = await ctl.print(due)
    assert (ack.printed, ack.not_after_us) == (True, due.not_after_us)
    assert printer.expired == [late.job_id]
    assert [t.job_id for t in printer.printed] == [due.job_id]
    assert [a.job_id for a in ctl.seen] == [due.job_id]


async def test_a_job_from_a_lane_built_before_deadlines_is_printed_once(
    mosquitto: Mosquitto, lane: str
) -> None:
    """A job without `not_after` (a lane not yet upgraded: a plaza upgrades lane by lane) is
    printed, once, and answered without a deadline, as before deadlines were: dropped as
    garbage, the lane was never answered, said `printer_offline` and left every vehicle
    without a plate read at a shut boom."""
    ctl = Controller(mosquitto, lane)
    printer = PrinterEmulator(lane, mosquitto.host, mosquitto.port)
    job_id = uuid.uuid4().hex
    older = pack({"job_id": job_id, "escpos": encode_ticket(Ticket("OLD", ())), "ts": 1})
    async with tasks(printer.run(), ctl.link.run()):
        await printer.link.wait_connected(WAIT)
        await ctl.link.wait_connected(WAIT)
        for _ in range(2):  # sent again, its ack not heard in time
            await ctl.link.publish(topics.printer_print(lane), older, qos=1)
            ack = await until(ctl.acks, lambda a: a.job_id == job_id)
            assert (ack.printed, ack.not_after_us) == (True, None)
    assert [t.job_id for t in printer.printed] == [job_id] and printer.expired == []


async def test_a_plate_on_the_io_topics_reaches_the_lane_and_is_not_garbage(
    mosquitto: Mosquitto, lane: str
) -> None:
    plates: asyncio.Queue[PlateReading] = asyncio.Queue()
    garbage: list[tuple[str, str]] = []
    link = BarrierLink(
        lane, BrokerLink(mosquitto.host, mosquitto.port),
        on_ack=print, on_state=print, on_sensor=print, on_attendant=print,
        on_garbage=lambda topic, error: garbage.append((topic, error)),
        on_plate=plates.put_nowait,
    )  # fmt: skip
    camera = MqttLink(mosquitto.host, mosquitto.port, f"anpr-{lane}")
    async with tasks(link.run(), camera.run()):
        await link.wait_connected(WAIT)
        await camera.wait_connected(WAIT)
        reading = PlateReading("ZJA12345", 0.97, int(time.time() * 1e6), seq=1)
        plate_topic = topics.io(lane, topics.PLATE)
        await camera.publish(plate_topic, pack({"confidence": 0.5, "ts": 1}))  # no plate
        await camera.publish(plate_topic, reading.encode())
        assert await until(plates, lambda p: True) == reading
    assert garbage == [(plate_topic, "missing field 'plate'")]


__all__ = ["acl_broker"]  # the deploy tests' broker with the shipped ACL, as a fixture here


@needs_passwd
async def test_the_shipped_acl_lets_printer_and_anpr_do_their_part_only(
    acl_broker: Mosquitto,
) -> None:
    lane = "p07/e1"
    host, port = acl_broker.host, acl_broker.port
    printer = PrinterEmulator(lane, host, port, credentials=creds("printer"))
    ctl = Controller(acl_broker, lane, creds("controller"))
    plates: asyncio.Queue[PlateReading] = asyncio.Queue()
    link = BarrierLink(
        lane, BrokerLink(host, port, creds("controller")),
        on_ack=print, on_state=print, on_sensor=print, on_attendant=print,
        on_garbage=lambda topic, error: None, on_plate=plates.put_nowait,
        client_id="controller-plates",
    )  # fmt: skip
    anpr = MqttLink(host, port, "anpr-cam", credentials=creds("anpr"))
    async with tasks(printer.run(), ctl.link.run(), link.run(), anpr.run()):
        for client in (printer.link, ctl.link, link.mqtt, anpr):
            await client.wait_connected(WAIT)
        assert (await ctl.print(job(encode_ticket(Ticket("ENTRY P07"))))).printed
        # The camera may not answer for the printer: a forged ack never arrives.
        forged = PrintAck("forged", None, "", 1)
        with contextlib.suppress(Exception):  # refused or silently dropped: both are fine
            await anpr.publish(topics.printer_ack(lane), forged.encode())
        reading = PlateReading("ZJA12345", 0.9, 1)
        await anpr.publish(topics.io(lane, topics.PLATE), reading.encode())
        assert await until(plates, lambda p: True) == reading
        assert (await ctl.print(job(encode_ticket(Ticket("NEXT"))))).printed
    # The NEXT ack came after the forged publish on the same broker: had the broker let the
    # forgery through, it would have arrived first.
    assert [a.job_id for a in ctl.seen if a.job_id == "forged"] == []
    assert len(ctl.seen) == 2
