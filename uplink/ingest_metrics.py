"""Prometheus `/metrics` of one `lane ingest` worker: the back office's alarms.

Counters mirror `IngestStats` (`lane_ingest_<field>_total`); four gauges are what an operator
alerts on, and each returns to 0 by itself when the cause is gone:

- `lane_ingest_conflicts_open`: records the store refused (same id or seq, other content) and
  does not hold yet; read from the store's `conflicts` table at each scrape;
- `lane_ingest_holes_open`: seqs this worker has seen missing for longer than `--hole-after`;
- `lane_ingest_store_failing`: 1 while the last batch failed in the store for another reason
  than a held lock (the database unreachable or gone silent, a connection lost), until one
  commits;
- `lane_ingest_upgrade_pending`: 1 while an upgrade of the store has rows still to fill (a
  PostgreSQL upgrade stopped between chunks: the next worker to start goes on with it), when
  `lane trips` or `lane refund-trail` is not whole; read from the store at each scrape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from uplink.ingest import Ingest

log = logging.getLogger("lane.uplink.metrics")

HELP = {
    "batches": "Batches stored (committed)",
    "records": "Records inserted",
    "duplicates": "Records already held byte for byte (resends)",
    "rejected": "Batches rejected as malformed, oversized or misaddressed",
    "conflicts": "Records refused: their id or seq is held with other content",
    "epoch_changes": "Lanes seen starting a new queue epoch (a replaced queue file)",
    "store_errors": "Batches not stored (database failure or busy after retries)",
    "busy_retries": "Batches tried again after a lock or statement timeout",
    "acks_sent": "Acks published",
    "ack_failures": "Acks not published (link down; the lane resends)",
    "reorders": "Batches committed ahead of an earlier one (routine)",
    "holes": "Seqs reported missing for longer than hole_after_s",
}


class IngestCollector(Collector):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.open_conflicts = 0
        self.upgrade_pending = False

    def collect(self) -> Iterator[Metric]:
        for name, value in vars(self.ingest.stats).items():
            yield CounterMetricFamily(f"lane_ingest_{name}", HELP[name], value=value)
        yield GaugeMetricFamily(
            "lane_ingest_conflicts_open",
            "Refused records the store does not hold yet (alert when > 0)",
            value=self.open_conflicts,
        )
        yield GaugeMetricFamily(
            "lane_ingest_holes_open",
            "Seqs missing for longer than hole_after_s (alert when > 0)",
            value=self.ingest.holes.open_holes(),
        )
        yield GaugeMetricFamily(
            "lane_ingest_store_failing",
            "The last batch failed in the store: unreachable, connection lost (alert when > 0)",
            value=int(self.ingest.store_failing),
        )
        yield GaugeMetricFamily(
            "lane_ingest_upgrade_pending",
            "A store upgrade has rows to fill: trip or refund figures not whole (alert when > 0)",
            value=int(self.upgrade_pending),
        )


class MetricsServer:
    def __init__(self, ingest: Ingest) -> None:
        self.collector = IngestCollector(ingest)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()  # OSError (port taken) reaches the caller
        self._runner = runner
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        log.info("ingest metrics listening", extra={"address": list(self.address)})

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        store = self.collector.ingest.store
        try:
            self.collector.open_conflicts = len(await asyncio.to_thread(store.conflicts))
            self.collector.upgrade_pending = await asyncio.to_thread(store.upgrade_pending)
        except Exception as exc:  # a scrape still answers, with the last known values
            log.warning("ingest metrics: store not read", extra={"error": str(exc)})
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
