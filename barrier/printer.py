"""A receipt printer on the lane's broker, emulated: it prints what a real one would print.

The device side of a closed road's entry lane drives an ESC/POS receipt printer (the entry
pass ticket). A real printer gateway writes the stream of each `PrintJob` to the printer;
this emulator decodes it with barrier.escpos instead, keeps every ticket it printed, and can
render one as an image (so tests read the pass back with our own scanner). It acks each job
once (a QoS 1 redelivery of the same job id is acknowledged again, never printed twice),
drops a job past its deadline (`not_after`) unanswered, publishes its retained
`PrinterStatus` (with a session token drawn before each connection), and leaves `offline` as
its will.

Faults: `paper_out` (jobs are refused with PAPER_OUT and the status says so, until paper is
loaded: `set_paper(True)`), and a stream it cannot print is refused as BAD_JOB (as is every
job while `refusing` names why: a gateway whose printer model takes another dialect), and
`freeze()` holds every job unhandled, the connection kept, until `thaw()` (a gateway process
stopped and resumed: it then finds the jobs the broker handed it meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np
import zxingcpp

from barrier.escpos import Cut, EscPosError, Feed, Item, QrCode, TextLine, decode
from barrier.peripherals import PrintAck, PrintError, PrinterState, PrinterStatus, PrintJob
from lane.transport.mqtt import Credentials, Incoming, LinkDown, MqttLink, WillSpec
from lane.wire import topics
from lane.wire.codec import PayloadError

log = logging.getLogger("lane.barrier.printer")

PAPER_PX = 384  # a 58 mm printer's dots per line
LINE_PX = 28
QUIET_MODULES = 4
_ECC_LEVEL = {48: "L", 49: "M", 50: "Q", 51: "H"}


@dataclass(frozen=True)
class PrintedTicket:
    job_id: str
    items: tuple[Item, ...]
    ts_us: int

    @property
    def lines(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, TextLine)]

    @property
    def qr_codes(self) -> list[str]:
        return [i.data for i in self.items if isinstance(i, QrCode)]


def render_ticket(items: tuple[Item, ...] | list[Item]) -> np.ndarray:
    """The ticket as the paper shows it: black on white, PAPER_PX wide (grayscale uint8)."""
    blocks: list[np.ndarray] = []
    for item in items:
        if isinstance(item, TextLine):
            block = np.full((LINE_PX, PAPER_PX), 255, np.uint8)
            weight = 2 if item.bold else 1
            cv2.putText(block, item.text, (4, LINE_PX - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0,
                        weight, cv2.LINE_AA)  # fmt: skip
            blocks.append(block)
        elif isinstance(item, QrCode):
            blocks.append(_qr_block(item))
        elif isinstance(item, Feed) and item.lines:
            blocks.append(np.full((LINE_PX * item.lines, PAPER_PX), 255, np.uint8))
        elif isinstance(item, Cut):
            blocks.append(np.zeros((2, PAPER_PX), np.uint8))  # the cut line
    if not blocks:
        return np.full((LINE_PX, PAPER_PX), 255, np.uint8)
    width = max(b.shape[1] for b in blocks)  # a QR too big for the paper widens the image
    return np.vstack([cv2.copyMakeBorder(b, 0, 0, 0, width - b.shape[1], cv2.BORDER_CONSTANT,
                                         value=255) for b in blocks])  # fmt: skip


def _qr_block(item: QrCode) -> np.ndarray:
    barcode = zxingcpp.create_barcode(
        item.data, zxingcpp.BarcodeFormat.QRCode, ec_level=_ECC_LEVEL[item.ecc]
    )
    image = np.asarray(zxingcpp.write_barcode_to_image(barcode, scale=1))
    image = cv2.resize(image, None, fx=item.module, fy=item.module, interpolation=cv2.INTER_NEAREST)
    quiet = QUIET_MODULES * item.module
    width = max(PAPER_PX, image.shape[1] + 2 * quiet)
    block = np.full((image.shape[0] + 2 * quiet, width), 255, np.uint8)
    left = (width - image.shape[1]) // 2  # ESC a 1: centred
    block[quiet : quiet + image.shape[0], left : left + image.shape[1]] = image
    return block


class PrinterEmulator:
    def __init__(
        self,
        lane: str,
        host: str,
        port: int,
        clock: Callable[[], float] = time.time,
        *,
        credentials: Credentials | None = None,
        client_id: str | None = None,
        memory: int = 1024,
    ) -> None:
        self.lane = lane
        self.printed: list[PrintedTicket] = []
        self.expired: list[str] = []  # the job ids of the copies dropped past their deadline
        self.paper = True
        self.refusing: str | None = None  # a reason: every job is refused as BAD_JOB with it
        self._clock = clock
        self._seq = 0
        self._session: str | None = None  # until it first connects
        self._next_session = secrets.token_hex(6)
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._memory = memory
        self._acks: OrderedDict[str, PrintAck] = OrderedDict()  # job_id -> its ack
        self._outbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
        self._status_topic = topics.printer_status(lane)
        self.link = MqttLink(
            host,
            port,
            client_id or f"printer-{lane}",
            [(topics.printer_print(lane), 1)],
            handler=self._on_message,
            on_connect=self._on_connect,
            will=self._will(self._next_session),
            credentials=credentials,
        )

    @property
    def state(self) -> PrinterState:
        return PrinterState.READY if self.paper else PrinterState.PAPER_OUT

    async def run(self) -> None:
        """Serve until cancelled."""
        tasks = [asyncio.create_task(self.link.run()), asyncio.create_task(self._send())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def flushed(self) -> None:
        await self._outbox.join()

    def set_paper(self, loaded: bool) -> None:
        """Paper out (False) or loaded again (True): the retained status follows at once."""
        if loaded == self.paper:
            return
        self.paper = loaded
        log.warning("printer paper", extra={"lane": self.lane, "state": self.state.value})
        self._publish_status()

    def freeze(self) -> None:
        """Hold every job unhandled from now on, connected all the same (a stopped process)."""
        self._thawed.clear()

    def thaw(self) -> None:
        """Handle the jobs held, in the order they came, on the clock of now."""
        self._thawed.set()

    async def _on_connect(self) -> None:
        # Each connection is a session of its own; the will registered for it names it.
        self._session, self._next_session = self._next_session, secrets.token_hex(6)
        self.link.will = self._will(self._next_session)
        self._publish_status()

    def _will(self, session: str) -> WillSpec:
        offline = PrinterStatus(PrinterState.OFFLINE, 0, 0, self._now_us(), session)
        return WillSpec(self._status_topic, offline.encode())

    async def _on_message(self, msg: Incoming) -> None:
        await self._thawed.wait()
        try:
            job = PrintJob.decode(msg.payload)
        except PayloadError as exc:
            log.warning(
                "garbage print job",
                extra={"lane": self.lane, "topic": msg.topic, "error": str(exc)},
            )
            return
        if job.not_after_us is not None and self._now_us() > job.not_after_us:
            # Its vehicle may be gone: a ticket now would be nobody's. Unanswered, as a late
            # barrier command is: the lane's wait for the ack has ended, and it sends the job
            # again, with a new deadline, while the vehicle still waits.
            self.expired.append(job.job_id)
            log.warning(
                "print job past its deadline dropped",
                extra={"lane": self.lane, "job_id": job.job_id, "not_after": job.not_after_us},
            )
            return
        ack = self._acks.get(job.job_id) or self._print(job)
        answer = replace(ack, not_after_us=job.not_after_us)  # the copy answered
        self._queue(topics.printer_ack(self.lane), answer.encode(), retain=False)

    def _print(self, job: PrintJob) -> PrintAck:
        if not self.paper:
            return PrintAck(job.job_id, PrintError.PAPER_OUT, "no paper", self._now_us())
        try:
            if self.refusing is not None:
                raise EscPosError(self.refusing)
            items = tuple(decode(job.escpos))
        except EscPosError as exc:
            log.warning(
                "print job refused",
                extra={"lane": self.lane, "job_id": job.job_id, "error": str(exc)},
            )
            ack = PrintAck(job.job_id, PrintError.BAD_JOB, str(exc)[:200], self._now_us())
        else:
            self.printed.append(PrintedTicket(job.job_id, items, self._now_us()))
            ack = PrintAck(job.job_id, None, "", self._now_us())
            self._publish_status()
        # Only final answers are remembered: a job refused for paper prints once paper is in.
        self._acks[job.job_id] = ack
        while len(self._acks) > self._memory:
            self._acks.popitem(last=False)
        return ack

    def _publish_status(self) -> None:
        self._seq += 1
        status = PrinterStatus(
            self.state, len(self.printed), self._seq, self._now_us(), self._session
        )
        self._queue(self._status_topic, status.encode(), retain=True)

    def _queue(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self._outbox.put_nowait((topic, payload, retain))

    async def _send(self) -> None:
        """One publisher, in order: an ack goes out before the status it changed."""
        while True:
            topic, payload, retain = await self._outbox.get()
            try:
                while True:
                    await self.link.connected.wait()
                    try:
                        await self.link.publish(topic, payload, qos=1, retain=retain)
                        break
                    except LinkDown as exc:
                        log.warning(
                            "printer publish failed, will retry",
                            extra={"lane": self.lane, "topic": topic, "error": str(exc)},
                        )
                        await asyncio.sleep(0.1)
            finally:
                self._outbox.task_done()

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)
