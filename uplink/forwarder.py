"""The lane's uplink forwarder: queue -> MQTT (QoS 1) -> back office, deleting only on its ack.

Records leave in seq order, in batches, with at most `window` batches awaiting an ack. The back
office answers on `uplink/{lane}/acks` after committing, naming each record it holds by seq, id
and content digest; only then does the forwarder delete, and only the records whose own id and
digest the ack names (`queue.ack(held)`): a replayed, forged or confused ack deletes nothing the
store does not hold. A batch without an ack is sent again after `ack_timeout`, backing
off exponentially with jitter; a publish that fails (link down) is retried the same way. Resends
are harmless because the ingest is idempotent by record id. Nothing is kept across restarts but
the queue itself: the forwarder starts again from the oldest record on disk.

Acks reach the forwarder through the owner of the MqttLink: route messages on `ack_topic` to
`handle_ack(payload)` (or feed decoded `Ack`s into the `acks` queue passed in). An ack it cannot
take (garbage, another lane's, another queue epoch's) is logged the first of its kind in
`REFUSAL_LOG_EVERY_S`, the others counted; `say_counted()`, from the lane's health loop, says
how many once that time has passed (every window's as the lane stops: lane.refusal_log): a
flood writes a few lines a minute.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from lane.core.backoff import Backoff
from lane.refusal_log import RefusalLog
from lane.transport.mqtt import LinkDown
from lane.wire.codec import PayloadError
from lane.wire.ids import new_id
from lane.wire.topics import uplink_acks, uplink_records
from uplink.messages import MAX_BATCH_RECORDS, Ack, Held, decode_ack, encode_batch
from uplink.queue import QueueError
from uplink.queue_thread import QueueThread

log = logging.getLogger("lane.uplink.forwarder")


class AckRefusal(StrEnum):
    """Why an ack on `uplink/{lane}/acks` was not taken: its log line."""

    BAD = "uplink bad ack"
    OTHER_LANE = "uplink ack for another lane"
    OTHER_EPOCH = "uplink ack for another queue epoch"


class PublishLink(Protocol):
    """What the forwarder needs of lane.transport.mqtt.MqttLink (which satisfies it)."""

    connected: asyncio.Event
    reconnects: int

    async def publish(self, topic: str, payload: bytes, *, qos: int = ...) -> None: ...


@dataclass(frozen=True)
class UplinkStatus:
    backlog: int
    oldest_age_s: float | None
    bytes_used: int
    high_water_reached: bool
    link_up: bool
    last_ack_wall: float | None
    inflight_batches: int
    sent_batches: int
    resent_batches: int
    refused: int = 0  # records the back office refused (a conflict): kept, offered again later


@dataclass
class _Inflight:
    batch_id: str
    first_seq: int
    last_seq: int
    payload: bytes
    pending: set[int]  # seqs of this batch not acknowledged yet
    due: float  # monotonic time at which it is (re)sent
    attempts: int = 0


class Forwarder:
    def __init__(
        self,
        queue: QueueThread,
        link: PublishLink,
        lane: str,
        *,
        acks: asyncio.Queue[Ack] | None = None,
        batch_size: int = 100,
        window: int = 4,
        ack_timeout: float = 5.0,
        backoff_min: float = 0.1,
        backoff_max: float = 30.0,
        poll_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch_size {batch_size} is not within 1..{MAX_BATCH_RECORDS}")
        self.queue = queue
        self.link = link
        self.lane = lane
        self.acks: asyncio.Queue[Ack] = acks if acks is not None else asyncio.Queue()
        self.batch_size = batch_size
        self.window = window
        self.ack_timeout = ack_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rand = rand
        self._kick = asyncio.Event()
        self._inflight: list[_Inflight] = []
        self._sent_upto = 0  # highest seq sent by this process: the next batch starts after it
        self._refused: set[int] = set()
        self._reoffer_at: float | None = None  # when refused records are offered again
        self._link_epoch = -1
        self._last_ack_wall: float | None = None
        # The oldest unsent record's ts_us and when (monotonic) this run first saw it oldest.
        self._oldest: tuple[int, float] | None = None
        self.sent_batches = 0
        self.resent_batches = 0
        self.refusal_log = RefusalLog()

    @property
    def ack_topic(self) -> str:
        return uplink_acks(self.lane)

    def subscriptions(self) -> list[tuple[str, int]]:
        """What the MqttLink owner must subscribe to and route to `handle_ack`."""
        return [(self.ack_topic, 1)]

    def wake(self) -> None:
        """Send now (call after an append) instead of waiting for the next timer."""
        self._kick.set()

    def handle_ack(self, payload: bytes) -> None:
        """Feed one message from `uplink/{lane}/acks`; one it cannot take is logged (unless
        counted: `refusal_log`) and ignored."""
        try:
            ack = decode_ack(payload)
        except PayloadError as exc:
            self._refuse(AckRefusal.BAD, {"error": str(exc)})
            return
        if ack.lane != self.lane:
            self._refuse(AckRefusal.OTHER_LANE, {"ack": ack.lane})
            return
        if ack.epoch != self.queue.identity.epoch:
            # An ack of a queue file this lane no longer has (restored or replaced): it cannot
            # name our records, whatever its seqs say.
            self._refuse(AckRefusal.OTHER_EPOCH, {"epoch": ack.epoch, "batch_id": ack.batch_id})
            return
        self.acks.put_nowait(ack)

    def _refuse(self, why: AckRefusal, extra: dict[str, object]) -> None:
        if self.refusal_log.admit(self.ack_topic, why, self._wall()):
            log.warning(why, extra={"lane": self.lane, "topic": self.ack_topic, **extra})

    def say_counted(self, *, stopping: bool = False) -> None:
        """One line per kind of ack refused and counted, not logged, in a window that passed
        (`stopping`: in every window)."""
        refusals = self.refusal_log
        for counted in refusals.rest() if stopping else refusals.counted(self._wall()):
            log.warning(
                f"{counted.reason}, more counted",
                extra={"lane": self.lane, "topic": counted.what, "refused": counted.count,
                       "since": counted.since},
            )  # fmt: skip

    async def status(self) -> UplinkStatus:
        b = await self.queue.backlog()
        return UplinkStatus(
            backlog=b.count,
            oldest_age_s=self._oldest_age(b.oldest_ts_us),
            bytes_used=b.bytes_used,
            high_water_reached=b.high_water_reached,
            link_up=self.link.connected.is_set(),
            last_ack_wall=self._last_ack_wall,
            inflight_batches=len(self._inflight),
            sent_batches=self.sent_batches,
            resent_batches=self.resent_batches,
            refused=len(self._refused),
        )

    def _oldest_age(self, ts_us: int | None) -> float | None:
        """The oldest unsent record's age: by its own wall time (which outlives a restart), or
        by how long this run has seen it oldest, whichever is more. A wall clock stepped back
        puts the record in the future; on the wall clock alone a back office that takes
        nothing would go unseen (`uplink_stalled`) for as long as the step."""
        if ts_us is None:
            self._oldest = None
            return None
        now = self._clock()
        if self._oldest is None or self._oldest[0] != ts_us:
            self._oldest = (ts_us, now)
        return max(0.0, self._wall() - ts_us / 1e6, now - self._oldest[1])

    async def run(self) -> None:
        """Forward forever (run as a task; cancel to stop)."""
        getter: asyncio.Task[Ack] | None = None
        backoff = Backoff(self.backoff_min, self.backoff_max)
        failures = 0  # in a row
        try:
            while True:
                try:
                    await self._apply_acks()
                    if self.link.connected.is_set():
                        self._note_reconnect()
                        await self._send_due()
                        await self._fill_window()
                    failures = 0
                except (LinkDown, QueueError) as exc:
                    failures += 1
                    wait = backoff.jittered(failures, self._rand())
                    log.warning(
                        "uplink forward failed",
                        extra={"lane": self.lane, "error": str(exc), "retry_s": round(wait, 3)},
                    )
                    await self._sleep(wait)
                    continue
                if getter is None:
                    getter = asyncio.ensure_future(self.acks.get())
                await self._wait(getter)
                if getter.done():
                    self.acks.put_nowait(getter.result())
                    getter = None
        finally:
            if getter is not None:
                getter.cancel()

    async def _wait(self, getter: asyncio.Task[Ack]) -> None:
        waits: set[asyncio.Future[Any]] = {getter, asyncio.ensure_future(self._kick.wait())}
        if not self.link.connected.is_set():
            waits.add(asyncio.ensure_future(self.link.connected.wait()))
            timeout = None
        else:
            timeout = self._next_due()
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if w is not getter:
                    w.cancel()
        self._kick.clear()

    def _next_due(self) -> float:
        # The poll is a safety net for appends nobody announced with wake() (another process).
        dues = [b.due for b in self._inflight]
        if self._reoffer_at is not None:
            dues.append(self._reoffer_at)
        if not dues:
            return self.poll_interval
        return max(0.0, min(min(dues) - self._clock(), self.poll_interval))

    def _note_reconnect(self) -> None:
        epoch = self.link.reconnects
        if epoch != self._link_epoch:
            # After a (re)connect the broker may have lost what it held (no persistence):
            # everything unacknowledged goes out again now.
            if self._link_epoch != -1:
                now = self._clock()
                for b in self._inflight:
                    b.due = now
            self._link_epoch = epoch

    async def _apply_acks(self) -> None:
        held: list[Held] = []
        refused: list[Held] = []
        while not self.acks.empty():
            ack = self.acks.get_nowait()
            held.extend(ack.stored)
            refused.extend(ack.refused)
        if not held and not refused:
            return
        deleted = set(await self.queue.ack(held)) if held else set()
        self._last_ack_wall = self._wall()
        self._refused -= deleted
        done = deleted | {h.seq for h in refused}
        for b in self._inflight:
            b.pending -= done
        self._inflight = [b for b in self._inflight if b.pending]
        if refused:
            self._note_refused(refused)
        log.debug(
            "uplink acked",
            extra={"lane": self.lane, "named": len(held), "deleted": len(deleted)},
        )

    def _note_refused(self, refused: list[Held]) -> None:
        # The back office holds other content under these ids or seqs: the records stay in the
        # queue (never deleted), leave the window so the rest of the lane's records flow, and
        # are offered again after backoff_max, so they go through once the cause is resolved.
        self._refused |= {h.seq for h in refused}
        if self._reoffer_at is None:
            self._reoffer_at = self._clock() + self.backoff_max
        log.warning(
            "uplink records refused by the back office",
            extra={
                "lane": self.lane,
                "seqs": sorted(h.seq for h in refused)[:20],
                "count": len(refused),
                "refused_total": len(self._refused),
                "reoffer_s": self.backoff_max,
            },
        )

    async def _send_due(self) -> None:
        for b in self._inflight:
            if b.due <= self._clock():
                await self._publish(b)

    async def _fill_window(self) -> None:
        if self._reoffer_at is not None and self._clock() >= self._reoffer_at:
            # Start again from the oldest record on disk: the refused ones (and any still in
            # flight, a harmless duplicate) go out again.
            self._reoffer_at = None
            self._sent_upto = 0
        while len(self._inflight) < self.window:
            rows = await self.queue.batch(self._sent_upto, self.batch_size)
            if not rows:
                return
            batch_id = new_id()
            b = _Inflight(
                batch_id=batch_id,
                first_seq=rows[0][0],
                last_seq=rows[-1][0],
                payload=encode_batch(self.lane, self.queue.identity, batch_id, rows),
                pending={seq for seq, _ in rows},
                due=self._clock(),
            )
            self._inflight.append(b)
            self._sent_upto = b.last_seq
            await self._publish(b)

    async def _publish(self, b: _Inflight) -> None:
        # Set the retry time before trying, so a LinkDown leaves the batch due again later.
        resend = Backoff(self.ack_timeout, self.backoff_max)
        b.due = self._clock() + resend.jittered_within(b.attempts + 1, self._rand())
        try:
            await self.link.publish(uplink_records(self.lane), b.payload, qos=1)
        except LinkDown:
            b.due = self._clock()  # not sent at all: due again as soon as the link allows
            raise
        b.attempts += 1
        if b.attempts == 1:
            self.sent_batches += 1
        else:
            self.resent_batches += 1
            log.info(
                "uplink batch resent",
                extra={
                    "lane": self.lane,
                    "batch_id": b.batch_id,
                    "attempt": b.attempts,
                    "first_seq": b.first_seq,
                    "last_seq": b.last_seq,
                },
            )
