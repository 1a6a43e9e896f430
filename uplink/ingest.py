"""The back-office ingest: MQTT batches in, one store transaction per batch, then the ack.

Workers share the load through an MQTT 5 shared subscription (`$share/{group}/uplink/...`);
they hold no state of their own, so any number can run side by side and a record resent by the
lane lands on whichever worker, where the record-id key collapses it. A batch is acknowledged
only after its transaction committed, and the ack names the lane's contiguous prefix in the
store (see uplink.store): the lane deletes everything <= upto, so upto never covers a seq the
store does not hold. Garbage, conflicting or unstorable batches are logged, counted and not
acknowledged; the lane keeps those records and sends them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from barrier.mqtt import Credentials, Incoming, LinkDown, MqttLink
from barrier.topics import uplink_acks
from barrier.wire import PayloadError
from uplink.messages import Ack, Batch, decode_batch, encode_ack, lane_of
from uplink.records import Record
from uplink.store import IngestRecord, IngestStore, IngestStoreError, SeqConflictError

log = logging.getLogger("lane.uplink.ingest")

# Lane ids are `plaza/lane` (two topic levels); one-level ids are accepted too. The two filters
# match disjoint topics, so a shared group receives each batch once.
RECORD_FILTERS = ("uplink/+/records", "uplink/+/+/records")


def shared_filters(group: str) -> list[tuple[str, int]]:
    return [(f"$share/{group}/{f}", 1) for f in RECORD_FILTERS]


def parse_batch(topic: str, payload: bytes) -> tuple[Batch, list[IngestRecord]]:
    """Decode and check one batch message; any inconsistency raises PayloadError."""
    lane = lane_of(topic, "records")
    if lane is None:
        raise PayloadError(f"not an uplink records topic: {topic!r}")
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
        d = rec.draft
        out.append(
            IngestRecord(
                record_id=rec.record_id,
                lane=lane,
                seq=rec.seq,
                ts_us=rec.ts_us,
                kind=d.kind,
                amount_minor=d.amount_minor,
                currency=d.currency,
                data=raw,
            )
        )
    return batch, out


@dataclass
class IngestStats:
    batches: int = 0
    records: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0
    store_errors: int = 0
    acks_sent: int = 0
    ack_failures: int = 0
    gap_reports: int = 0


class Ingest:
    def __init__(
        self,
        store: IngestStore,
        *,
        group: str = "ingest",
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.group = group
        self.stats = IngestStats()
        self._wall = wall
        self._link: MqttLink | None = None

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
        """An MqttLink subscribed to the shared filters and wired to this ingest (run it)."""
        link = MqttLink(
            host, port, client_id, self.subscriptions, self.handle, credentials=credentials
        )
        self.attach(link)
        return link

    def attach(self, link: MqttLink) -> None:
        """Use `link` to publish acks (its owner routes record messages to `handle`)."""
        self._link = link

    async def handle(self, msg: Incoming) -> None:
        try:
            batch, records = parse_batch(msg.topic, msg.payload)
        except PayloadError as exc:
            self.stats.rejected += 1
            log.error("uplink batch rejected", extra={"topic": msg.topic, "error": str(exc)})
            return
        now_us = int(self._wall() * 1_000_000)
        try:
            result = await asyncio.to_thread(self.store.store_batch, batch.lane, records, now_us)
        except SeqConflictError as exc:
            self.stats.conflicts += 1
            log.error("uplink batch conflicts", extra={**_ctx(batch), "error": str(exc)})
            return
        except IngestStoreError as exc:
            self.stats.store_errors += 1
            log.error("uplink batch not stored", extra={**_ctx(batch), "error": str(exc)})
            return
        self.stats.batches += 1
        self.stats.records += result.inserted
        self.stats.duplicates += result.duplicates
        if result.contiguous < batch.last_seq:
            self.stats.gap_reports += 1
            log.warning(
                "uplink sequence gap",
                extra={
                    **_ctx(batch),
                    "missing_from": result.contiguous + 1,
                    "held_upto": result.max_seq,
                },
            )
        if result.contiguous >= 1:
            await self._ack(Ack(batch.lane, result.contiguous, batch.batch_id))

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
                extra={"lane": ack.lane, "upto": ack.upto, "error": str(exc)},
            )
            return
        self.stats.acks_sent += 1


def _ctx(batch: Batch) -> dict[str, object]:
    return {
        "lane": batch.lane,
        "batch_id": batch.batch_id,
        "first_seq": batch.first_seq,
        "last_seq": batch.last_seq,
    }
