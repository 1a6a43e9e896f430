"""A toll-entry lane's ticket desk: sign the entry pass, print it, bind it to the plate.

The core asks `IssuePass(issue_id, ...)`; `TicketDesk.issue` answers with `TicketIssued`
events (an async iterator: the runner posts each one):

1. The pass is signed with the plaza's key (`PlazaPassKey`) at the wall clock's time of entry.
2. With a plate read, the pass text is published retained on `road/plates/{plate}`, as a
   plate binding signed with the lane's key (lane.auth.plate_binding, lane.auth.peers): an
   exit lane prices a ticketless vehicle from it (lane.trip_desk).
3. The ticket is published as a `PrintJob` (job id = issue_id: a printer prints a job id once)
   on `lane/{id}/printer/print`, with a deadline (`not_after`: now + `retry_s`, each copy its
   own) past which the printer drops it, and the desk waits for its `PrintAck` as long. An ack
   that comes past the deadline of the copy it names is no ticket (the printer printed it
   late, or its answer is stale). Printed: answered.
   Not printed (paper out, printer offline or silent): the core is told at once; with a plate
   bound that opens the barrier (flag no_ticket) and the desk stops (a ticket printed later
   would be for nobody); without one the vehicle waits, and the same job is sent again once
   the printer says `ready` (or every `retry_s`), for as long as the core says that vehicle
   still waits for it (`waiting`): however long the printer is out, the ticket prints once it
   is back, and a vehicle gone (backed out, let through by hand, the next one's turn) gets no
   ticket printed after it. A job the broker refuses (its ACL) is sent again after the link's
   refusal back-off instead (lane.transport.refusals: logged once, alarmed).

The printer's retained status raises `printer_paper_out` / `printer_offline` (and a job not
acknowledged raises `printer_offline`), each cleared by itself when the printer is ready (an
ack clears `printer_offline` too: it answers; not one heard after its status said `offline`, a
late ack of a job from before). A printer whose clock is `retry_s` or more ahead of the
lane's drops every job as past its deadline as it comes, connected and `ready` all the same:
a job unanswered while the printer's latest status or ack was stamped over half `retry_s`
ahead of the lane's clock on arrival (a message cannot arrive before it is sent) raises
`printer_offline` with a text naming the clock, which clears as ever once a job is answered.
A job refused for its data (`bad_job`) raises `printer_refused_job`, with the printer's
reason: it is the printer's fault, not the job's (a gateway taking another dialect refuses
every job), so it stays over the vehicles served without a ticket until a job prints, the
printer's status changes or it connects again (a new session in its status: a gateway
restarted, reconnected or mended, whatever state it reports). A long failure is logged when
it starts (and when its reason changes), not on every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable

from barrier.escpos import Ticket, encode_ticket
from barrier.peripherals import PrintAck, PrintError, PrinterState, PrinterStatus, PrintJob
from lane.auth.issuer import PlazaPassKey
from lane.auth.passes import EntryPass
from lane.auth.peers import Peers
from lane.auth.plate_binding import PlateBinding, encode_binding
from lane.auth.trip_rules import normalise_plate
from lane.core.actions import IssuePass
from lane.core.events import TicketIssued
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics
from lane.wire.codec import PayloadError
from lane.wire.utc import utc_text

log = logging.getLogger("lane.ticket_desk")

PASS_ID_BYTES = 12
PAPER_OUT = "printer_paper_out"
PRINTER_OFFLINE = "printer_offline"
PRINTER_REFUSED_JOB = "printer_refused_job"
ALARM_TEXT = {
    PAPER_OUT: "ticket printer out of paper: vehicles without a plate read wait",
    PRINTER_OFFLINE: "ticket printer offline: vehicles without a plate read wait",
}


def clock_ahead_text(ahead_s: float, retry_s: float) -> str:
    return (f"ticket printer answers no job: its clock is {ahead_s:.0f} s ahead of this lane's, "
            f"so each job is past its deadline (road.print_retry_s, {retry_s:g} s) as it comes: "
            "vehicles without a plate read wait; check both clocks' time sync")  # fmt: skip


def refused_job_text(job_id: str, detail: str) -> str:
    return (f"ticket printer refuses its jobs ({detail or 'no reason given'}; the last: {job_id}): "
            "vehicles without a plate read wait; open by hand")  # fmt: skip


class TicketDesk:
    def __init__(
        self,
        lane: str,
        key: PlazaPassKey,
        link: MqttLink,
        *,
        peers: Peers,
        alarm: Callable[[str, str | None], None],
        waiting: Callable[[str], bool],
        wall: Callable[[], float],
        retry_s: float = 3.0,
    ) -> None:
        """`waiting(issue_id)`: the vehicle of that issue is still at the entry without its
        ticket (the core's state, read when a job is to be sent again)."""
        self.lane = lane
        self.key = key
        self.link = link
        self.peers = peers
        self.alarm = alarm
        self.waiting = waiting
        self.wall = wall
        self.retry_s = retry_s
        self.state: PrinterState | None = None  # None: no status heard yet
        self._session: str | None = None  # the printer's connection its last status names
        # How far the printer's latest status or ack was stamped ahead of our clock on arrival.
        self._ahead_us = 0
        self._ready = asyncio.Event()
        self._refusing = False  # the printer refused a job's data: it refuses the next too
        self._acks: dict[str, asyncio.Future[PrintAck]] = {}
        # A job lives at the broker only as long as the desk waits for its ack: one queued for
        # a printer gone (its persistent session) is sent again while its vehicle waits, and
        # otherwise is nobody's: the broker drops it rather than print it once the printer is back.
        self._job_life_s = max(1, math.ceil(retry_s))
        self._ack_topic = topics.printer_ack(lane)
        self._status_topic = topics.printer_status(lane)

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(self._ack_topic, 1), (self._status_topic, 1)]

    def handles(self, topic: str) -> bool:
        return topic in (self._ack_topic, self._status_topic)

    def handle(self, msg: Incoming) -> None:
        """A printer ack or status (garbage is logged and dropped: the job is sent again)."""
        try:
            if msg.topic == self._ack_topic:
                ack = PrintAck.decode(msg.payload)
                self._ahead_us = ack.ts_us - self._now_us()
                self._on_ack(ack)
            elif msg.payload:
                status = PrinterStatus.decode(msg.payload)
                self._ahead_us = status.ts_us - self._now_us()
                self._on_status(status)
        except PayloadError as exc:
            log.warning(
                "garbage from the printer", extra={"lane": self.lane, "topic": msg.topic,
                                                   "error": str(exc)},
            )  # fmt: skip

    def _on_ack(self, ack: PrintAck) -> None:
        waiter = self._acks.get(ack.job_id)
        if ack.not_after_us is not None and self._now_us() > ack.not_after_us:
            # Printed, if it says so, after its vehicle may have gone (a printer frozen and
            # thawed, a clock behind ours): no ticket for whoever waits now. A copy sent again
            # is answered on time (a printed job id is acked again, never printed twice).
            log.warning(
                "printer ack past its job's deadline ignored",
                extra={"lane": self.lane, "issue_id": ack.job_id, "printed": ack.printed,
                       "late_ms": (self._now_us() - ack.not_after_us) // 1000},
            )  # fmt: skip
        elif waiter is not None and not waiter.done():
            waiter.set_result(ack)
        if ack.printed:
            self._set_refusing(None)
        if self.state is not PrinterState.OFFLINE:
            # It answers, whatever it says; after its will, only a job sent before it could.
            self._set_alarm(PRINTER_OFFLINE, False)

    def _on_status(self, status: PrinterStatus) -> None:
        reconnected = status.session is not None and status.session != self._session
        if reconnected or status.state is not self.state:
            self._set_refusing(None)  # restarted, reloaded: the next job says whether it refuses
        self.state = status.state
        self._session = status.session
        log.info("printer status", extra={"lane": self.lane, "state": status.state.value})
        ready = status.state is PrinterState.READY
        self._set_alarm(PAPER_OUT, status.state is PrinterState.PAPER_OUT)
        self._set_alarm(PRINTER_OFFLINE, status.state is PrinterState.OFFLINE)
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def _set_alarm(self, code: str, on: bool) -> None:
        self.alarm(code, ALARM_TEXT[code] if on else None)

    def _set_refusing(self, text: str | None) -> None:
        if text is not None or self._refusing:
            self._refusing = text is not None
            self.alarm(PRINTER_REFUSED_JOB, text)

    # --- issuing -------------------------------------------------------------------------

    async def issue(self, request: IssuePass) -> AsyncIterator[TicketIssued]:
        extra = {"lane": self.lane, "issue_id": request.issue_id}
        entered = int(self.wall())
        plaza, _, lane = self.lane.partition("/")
        entry = EntryPass(plaza, lane or plaza, entered, request.vehicle_class,
                          os.urandom(PASS_ID_BYTES), request.plate)  # fmt: skip
        try:
            text = self.key.issue(entry)
        except ValueError as exc:
            log.error("pass not signed", extra={**extra, "error": str(exc)})
            yield TicketIssued(request.issue_id, None, False, f"pass not signed: {exc}")
            return
        log.info("pass issued", extra={**extra, "pass_id": entry.pass_hex})
        if request.plate is not None:
            await self._bind(request.plate, text, extra)
        escpos = encode_ticket(ticket_of(entry, text))
        told = False
        said: str | None = None  # the failure last logged: a long paper-out logs it once
        tries = 0
        # No deadline: a desk that gave up while the vehicle waited would leave it at a closed
        # boom after the printer came back, its alarm cleared (a stuck lane looking healthy).
        while self.waiting(request.issue_id):
            tries += 1
            error = await self._print(request.issue_id, escpos)
            if error is None:
                log.info(
                    "ticket printed", extra={**extra, "pass_id": entry.pass_hex, "tries": tries}
                )
                yield TicketIssued(request.issue_id, entry.pass_hex, True)
                return
            refused_s = self.link.refusals.wait_s(topics.printer_print(self.lane))
            if error != said and not (told and refused_s):  # a refusal is logged by the link
                log.warning("ticket not printed", extra={**extra, "error": error, "tries": tries})
            else:
                log.debug("ticket not printed again", extra={**extra, "error": error,
                                                             "tries": tries})  # fmt: skip
            said = error
            if not told:
                told = True
                yield TicketIssued(request.issue_id, entry.pass_hex, False, error)
            if request.plate is not None:
                return  # opened on the plate: a ticket printed later would be nobody's
            if refused_s:
                # The broker's ACL, not the printer: a `ready` mends nothing. Back off.
                await asyncio.sleep(refused_s)
                continue
            # Wait for the printer to say `ready` after this failure (paper loaded: the same job
            # goes again at once), else retry_s: a stale `ready` never makes a busy loop.
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_s):
                    await self._ready.wait()
        dropped = {**extra, "tries": tries}
        log.info("ticket job dropped: its vehicle no longer waits", extra=dropped)

    async def _print(self, job_id: str, escpos: bytes) -> str | None:
        """Send the job and wait for its ack until its deadline: None when printed, else why
        not."""
        if self.state in (PrinterState.PAPER_OUT, PrinterState.OFFLINE):
            return self.state.value  # the printer said so: sending would only be refused
        now_us = self._now_us()
        life_us = int(self.retry_s * 1_000_000)
        job = PrintJob(job_id, escpos, now_us, now_us + life_us)
        waiter = asyncio.get_running_loop().create_future()
        self._acks[job.job_id] = waiter
        try:
            await self.link.publish(
                topics.printer_print(self.lane), job.encode(), qos=1, expiry_s=self._job_life_s
            )
            async with asyncio.timeout(self.retry_s):
                ack = await waiter
        except ConnectionError as exc:
            return f"not sent: {exc}"
        except TimeoutError:
            if 2 * self._ahead_us > life_us:
                # Not offline: it hears every job and drops it (its log says so), so "check its
                # power and link" would send the operator the wrong way.
                self.alarm(PRINTER_OFFLINE, clock_ahead_text(self._ahead_us / 1e6, self.retry_s))
            else:
                self._set_alarm(PRINTER_OFFLINE, True)
            return "no answer from the printer"
        finally:
            self._acks.pop(job.job_id, None)
        if ack.error is PrintError.BAD_JOB:
            # Its data refused: sent again it is refused again, so only a hand opens the lane.
            self._set_refusing(refused_job_text(job.job_id, ack.detail))
            return f"{ack.error.value}: {ack.detail}"
        return None if ack.error is None else ack.error.value

    async def _bind(self, plate: str, text: str, extra: dict[str, str]) -> None:
        normalised = normalise_plate(plate)
        binding = PlateBinding(normalised, text, self.lane, self.wall())
        payload = self.peers.seal(encode_binding(binding))
        try:
            await self.link.publish(topics.road_plate(normalised), payload, qos=1, retain=True)
        except ConnectionError as exc:
            # The ticket still carries the pass; only a ticketless exit needs the binding.
            log.warning("plate binding not published", extra={**extra, "error": str(exc)})

    def _now_us(self) -> int:
        return int(self.wall() * 1_000_000)


def ticket_of(entry: EntryPass, text: str) -> Ticket:
    lines = [f"Entry {entry.plaza} lane {entry.lane}", utc_text(entry.entered_at),
             f"Class {entry.vehicle_class}"]  # fmt: skip
    if entry.plate is not None:
        # The printer prints ASCII: a plate's other letters (浙A12345) show as '?'.
        plate = "".join(c if c.isascii() else "?" for c in normalise_plate(entry.plate))
        lines.append(f"Plate {plate}")
    lines.append("Show this code at the exit")
    return Ticket("ENTRY PASS", tuple(lines), text)
