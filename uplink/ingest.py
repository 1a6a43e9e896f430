"""The back-office ingest: MQTT batches in, one store transaction per batch, then the ack.

Workers share the load through an MQTT 5 shared subscription (`$share/{group}/uplink/...`);
they hold no state of their own but the hole watch, so any number can run side by side and a
record resent by the lane lands on whichever worker, where the record-id key collapses it. A
batch is acknowledged only after its transaction committed, and the ack names each record the
store holds byte for byte (seq, id, SHA-256; see uplink.store): the lane deletes only those.
Records the store refused (their id or seq is held with other content) are named as refused:
the lane keeps them. Garbage, oversized and unstorable batches are logged, counted and not
acknowledged; the lane keeps those records and sends them again.

A worker is a pipeline (`receive`): it decodes the next batch while the one before is in its
transaction and the one before that waits for the broker to take its ack.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from lane.core.backoff import Backoff
from lane.transport.mqtt import Credentials, Incoming, LinkDown, MqttLink
from lane.wire.codec import PayloadError
from lane.wire.topics import is_lane_id, uplink_acks
from uplink.holes import HoleEvent, HoleState, HoleWatch
from uplink.messages import Ack, Batch, Held, decode_batch, encode_ack, lane_of
from uplink.records import Record
from uplink.store import (
    IngestRecord,
    IngestStore,
    IngestStoreError,
    SchemaNewerError,
    StoreBusyError,
    StoreResult,
)

log = logging.getLogger("lane.uplink.ingest")

# A batch counts only on a lane id's records topic (`is_lane_id`): a client whose user name is not
# a lane id can never be granted one by the per-lane ACL pattern `uplink/%u/records`.
RECORD_FILTERS = ("uplink/+/+/records",)


def shared_filters(group: str) -> list[tuple[str, int]]:
    return [(f"$share/{group}/{f}", 1) for f in RECORD_FILTERS]


def parse_batch(topic: str, payload: bytes) -> tuple[Batch, list[IngestRecord]]:
    """Decode and check one batch message; any inconsistency raises PayloadError."""
    lane = lane_of(topic, "records")
    if lane is None or not is_lane_id(lane):
        raise PayloadError(f"not a lane's uplink records topic: {topic!r}")
    batch = decode_batch(payload)
    if batch.lane != lane:
        raise PayloadError(f"batch names lane {batch.lane!r} but came on {topic!r}")
    out: list[IngestRecord] = []
    for offset, raw in enumerate(batch.records):
        try:
            rec = Record.decode(raw)
        except PayloadError as exc:
            raise PayloadError(f"record at seq {batch.first_seq + offset}: {exc}") from exc
        if rec.lane != lane or rec.seq != batch.first_seq + offset:
            raise PayloadError(
                f"record {rec.record_id} is {rec.lane}#{rec.seq}, expected"
                f" {lane}#{batch.first_seq + offset}"
            )
        out.append(IngestRecord.of(rec, raw))
    return batch, out


@dataclass
class IngestStats:
    batches: int = 0
    records: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0  # records refused: their id or seq is held with other content
    epoch_changes: int = 0
    store_errors: int = 0
    busy_retries: int = 0
    acks_sent: int = 0
    ack_failures: int = 0
    reorders: int = 0
    holes: int = 0


class Ingest:
    """`hole_after_s`: a seq still missing this long after it was first seen missing is
    reported as a hole; `busy_retries`: how often a batch that met a lock or statement timeout
    is tried again (after `busy_backoff_s`, doubling) before it is left to the lane's resend;
    `depth`: batches past decoding (being stored or acknowledged) before `receive` waits."""

    def __init__(
        self,
        store: IngestStore,
        *,
        group: str = "ingest",
        hole_after_s: float = 60.0,
        busy_retries: int = 3,
        busy_backoff_s: float = 0.5,
        depth: int = 4,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.group = group
        self.stats = IngestStats()
        self.holes = HoleWatch(hole_after_s)
        self.busy_retries = busy_retries
        self.busy_backoff_s = busy_backoff_s
        self._wall = wall
        self._clock = clock
        self._sleep = sleep
        self._link: MqttLink | None = None
        self._slots = asyncio.Semaphore(depth)
        self._store_turn = asyncio.Lock()
        self._inflight: set[asyncio.Task[None]] = set()
        # Whether the last batch met a store failure other than a held lock (the database
        # unreachable, a connection lost): `lane_ingest_store_failing`, until one commits.
        self.store_failing = False
        # Set by the first batch whose write found the store's schema newer than this release
        # (a newer release upgraded it while this worker ran): it takes no batch after, and
        # `lane ingest` exits 1.
        self.schema_newer = asyncio.Event()

    @property
    def subscriptions(self) -> Sequence[tuple[str, int]]:
        return shared_filters(self.group)

    def make_link(
        self,
        host: str,
        port: int,
        client_id: str,
        credentials: Credentials | None = None,
    ) -> MqttLink:
        """An MqttLink subscribed to the shared filters and wired to this ingest's pipeline
        (`receive`); run it, and `close()` the ingest after it."""
        link = MqttLink(
            host, port, client_id, self.subscriptions, self.receive, credentials=credentials
        )
        self.attach(link)
        return link

    def attach(self, link: MqttLink) -> None:
        """Use `link` to publish acks (its owner routes record messages to `receive`)."""
        self._link = link

    async def handle(self, msg: Incoming) -> None:
        """One batch from start to finish: decode, store, ack; returns when it is acked."""
        parsed = self._parse(msg)
        if parsed is not None:
            result = await self._store(*parsed)
            if result is not None:
                await self._settle(parsed[0], result)

    async def receive(self, msg: Incoming) -> None:
        """The pipelined `handle`: returns once the batch is decoded and queued, so the next
        one is decoded while this one is stored and the one before is acknowledged. Batches
        are stored one at a time in arrival order (the worker's one connection) and each is
        acked after its own commit; at most `depth` are past decoding, then this waits."""
        parsed = self._parse(msg)
        if parsed is None:
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._through(*parsed))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _through(self, batch: Batch, records: list[IngestRecord]) -> None:
        try:
            # asyncio.Lock wakes its waiters in order: stores keep the batches' arrival order.
            async with self._store_turn:
                result = await self._store(batch, records)
            if result is not None:
                await self._settle(batch, result)
        except Exception:
            log.exception("uplink batch failed", extra=_ctx(batch))
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Stop the batches still in the pipeline. One cut off is either committed without an
        ack or not committed: the lane resends it either way."""
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)

    def _parse(self, msg: Incoming) -> tuple[Batch, list[IngestRecord]] | None:
        try:
            return parse_batch(msg.topic, msg.payload)
        except PayloadError as exc:
            self.stats.rejected += 1
            log.error(
                "uplink batch rejected",
                extra={"topic": msg.topic, "bytes": len(msg.payload), "error": str(exc)},
            )
            return None

    async def _settle(self, batch: Batch, result: StoreResult) -> None:
        self.stats.batches += 1
        self.stats.records += result.inserted
        self.stats.duplicates += result.duplicates
        self._report(batch, result)
        refused = tuple(
            Held(c.seq, c.record_id, bytes.fromhex(c.offered_digest)) for c in result.conflicts
        )
        if result.held or refused:
            await self._ack(
                Ack(batch.lane, batch.queue.epoch, batch.batch_id, result.held, refused)
            )

    async def _store(self, batch: Batch, records: list[IngestRecord]) -> StoreResult | None:
        if self.schema_newer.is_set():
            return None  # left to the lane's resend, which a worker of the new release takes
        # No cap: `busy_retries` bounds the waits.
        backoff = Backoff(self.busy_backoff_s, math.inf)
        for attempt in range(1, self.busy_retries + 2):
            now_us = int(self._wall() * 1_000_000)
            try:
                result = await asyncio.to_thread(
                    self.store.store_batch, batch.lane, batch.queue, records, now_us
                )
            except StoreBusyError as exc:
                last = attempt > self.busy_retries
                delay = backoff.delay(attempt)
                self.stats.busy_retries += 0 if last else 1
                log.warning(
                    "uplink store busy",
                    extra={
                        **_ctx(batch),
                        "attempt": attempt,
                        "error": str(exc),
                        "retry_s": None if last else delay,
                    },
                )
                if last:
                    break
                await self._sleep(delay)
            except SchemaNewerError as exc:
                self._newer_met(exc, _ctx(batch))
                break
            except IngestStoreError as exc:
                log.error("uplink batch not stored", extra={**_ctx(batch), "error": str(exc)})
                self.store_failing = True
                break
            else:
                self.store_failing = False
                return result
        # Not acknowledged: the lane keeps the batch and sends it again.
        self.stats.store_errors += 1
        return None

    def _newer_met(self, exc: SchemaNewerError, ctx: dict[str, object]) -> None:
        """A write found the store's schema newer than this release: the worker stops (one
        line, whichever write met it first)."""
        if not self.schema_newer.is_set():
            log.error("ingest store schema newer, worker stops", extra={**ctx, "error": str(exc)})
        self.schema_newer.set()

    def _report(self, batch: Batch, result: StoreResult) -> None:
        for c in result.conflicts:
            self.stats.conflicts += 1
            log.error(
                "uplink record conflict",
                extra={
                    **_ctx(batch),
                    "seq": c.seq,
                    "record_id": c.record_id,
                    "held_record_id": c.held_record_id,
                    "stored_digest": c.stored_digest,
                    "offered_digest": c.offered_digest,
                },
            )
        if result.new_epoch and result.other_epochs:
            self.stats.epoch_changes += 1
            log.warning(
                "uplink lane queue epoch changed",
                extra={
                    **_ctx(batch),
                    "base": batch.queue.base,
                    "previous_epochs": list(result.other_epochs),
                },
            )
        events = self.holes.observe(
            batch.lane, batch.queue.epoch, result.contiguous, result.max_seq, self._clock()
        )
        self._log_holes(events)

    async def check_holes(self) -> None:
        """Report holes that have now been missing for `hole_after_s` (call periodically).

        Each open hole is first refreshed from the store: with several workers, the batch that
        fills a hole is often committed by another worker, and this one must not report it."""
        events: list[HoleEvent] = []
        for lane, epoch in self.holes.open_keys():
            try:
                infos = await asyncio.to_thread(self.store.epochs, lane)
            except SchemaNewerError as exc:
                # Reading a hole's epoch walks its prefix on, a write: a quiet lane sends no
                # batch that would stop the worker.
                self._newer_met(exc, {"lane": lane, "epoch": epoch})
                return
            except IngestStoreError as exc:
                log.warning(
                    "uplink hole check failed",
                    extra={"lane": lane, "epoch": epoch, "error": str(exc)},
                )
                continue
            for e in infos:
                if e.epoch == epoch:
                    events += self.holes.observe(
                        lane, epoch, e.contiguous, e.max_seq, self._clock()
                    )
        self._log_holes(events + self.holes.due(self._clock()))

    def _log_holes(self, events: list[HoleEvent]) -> None:
        for e in events:
            fields = {
                "lane": e.lane,
                "epoch": e.epoch,
                "missing_from": e.missing_from,
                "held_upto": e.held_upto,
                "missing_for_s": e.missing_for_s,
            }
            if e.state is HoleState.REORDERED:
                self.stats.reorders += 1
                log.debug("uplink batch out of order", extra=fields)
            elif e.state is HoleState.HOLE:
                self.stats.holes += 1
                log.warning("uplink sequence hole", extra=fields)
            else:
                log.info("uplink sequence hole filled", extra=fields)

    async def _ack(self, ack: Ack) -> None:
        if self._link is None:
            raise RuntimeError("Ingest has no link: call make_link() or attach() first")
        try:
            await self._link.publish(uplink_acks(ack.lane), encode_ack(ack), qos=1)
        except LinkDown as exc:
            # Committed but not acknowledged: the lane resends and the duplicate collapses.
            self.stats.ack_failures += 1
            log.warning(
                "uplink ack not sent",
                extra={"lane": ack.lane, "batch_id": ack.batch_id, "error": str(exc)},
            )
            return
        self.stats.acks_sent += 1


def _ctx(batch: Batch) -> dict[str, object]:
    return {
        "lane": batch.lane,
        "epoch": batch.queue.epoch,
        "batch_id": batch.batch_id,
        "first_seq": batch.first_seq,
        "last_seq": batch.last_seq,
    }
