"""The lane's operations shell: metrics collection and the HTTP endpoints of one LaneDaemon.

`LaneOps(lane, metrics)` reads a running lane (`lane.view.LaneView`); the daemon builds the
metrics first and wires them in itself (runner observer, `TimedBarrier` around the barrier
port, acquirer request tracing), so nothing is patched after construction. `run()` (a task
of the daemon's TaskGroup) measures the event loop's heartbeat, refreshes the adapters' figures
every second (the queue's from the daemon's last read; the data directory's free space on a
thread of its own, never waited for past a heartbeat) and, when
`[metrics] port` is set, serves:

    GET /metrics   Prometheus text exposition of this lane's own registry
    GET /healthz   liveness: 200 while the event loop turns and the runner task is alive
    GET /readyz    readiness: 200 only when camera, broker, barrier and queue are usable

The checks are computed by lane.health; `status_links()` puts the same readiness checks into
the retained MQTT lane status, so an operator sees there what a load balancer sees here.
A metrics port that cannot be bound is logged, never fatal: the lane serves vehicles anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from barrier.messages import BarrierAck
from lane import health
from lane.core.road import entry_camera
from lane.health import Check
from lane.metrics import LaneMetrics, Snapshot
from lane.runner import BarrierPort
from lane.view import LaneView
from uplink.forwarder import UplinkStatus

log = logging.getLogger("lane.ops")

HEARTBEAT_S = 0.5
REFRESH_S = 1.0


class TimedBarrier:
    """The runner's barrier port, noting when each command leaves (for the round-trip time)."""

    def __init__(self, inner: BarrierPort, metrics: LaneMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None:
        self.metrics.barrier_sent(cmd_id, op)
        await self.inner.command(op, cmd_id, deadline_us, expiry_s)

    async def show(self, lines: tuple[str, ...], ttl_s: float) -> None:
        await self.inner.show(lines, ttl_s)

    async def query(self, query_id: str) -> None:
        await self.inner.query(query_id)


class LaneOps:
    def __init__(
        self, daemon: LaneView, metrics: LaneMetrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.daemon = daemon
        self.lane = daemon.lane
        self._clock = clock
        self.metrics = metrics
        self.runner_task: asyncio.Task[None] | None = None  # set by the daemon when it starts
        self.uplink: UplinkStatus | None = None
        self.disk: tuple[bool, int | None] = (False, None)  # data dir writable, bytes free
        self.loop_lag_s: float | None = None
        self.address: tuple[str, int] | None = None  # where the HTTP endpoint listens
        # Set once the endpoint listens, could not be bound, or is not configured (`address`
        # then says which): a supervisor told the address learns it only after that.
        self.http_settled = asyncio.Event()
        self._site: web.AppRunner | None = None
        # Not the loop's default pool: calls stuck in a hung disk (the replay store's, a peer
        # message's mark) may fill that one, and /metrics must answer through a hung disk.
        self._disk_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lane-disk-facts")
        self._disk_read: asyncio.Future[tuple[bool, int | None]] | None = None

    # --- hooks the daemon calls ---------------------------------------------------------------

    def barrier_acked(self, ack: BarrierAck) -> None:
        self.metrics.barrier_acked(ack.cmd_id)

    def status_links(self) -> dict[str, bool]:
        return health.as_links(self.readiness())

    # --- health ---------------------------------------------------------------------------------

    def readiness(self) -> list[Check]:
        d = self.daemon
        pipeline = d.pipeline
        writable, free = self.disk
        return health.readiness(
            health.ReadinessFacts(
                camera_running=not pipeline.stats().source_ended,
                broker_connected=d.link.connected,
                barrier_state=d.runner.state.barrier,
                queue_bytes=None if self.uplink is None else self.uplink.bytes_used,
                queue_max_bytes=d.queue.max_bytes,
                data_dir_writable=writable,
                disk_free_bytes=free,
                alarms=dict(d.runner.alarms),
                camera_held=d.source.finite and not pipeline.started,
                camera_closes=not entry_camera(d.runner.state),
            )
        )

    def liveness(self) -> list[Check]:
        task = self.runner_task
        return health.liveness(
            health.LivenessFacts(self.loop_lag_s, task is not None and not task.done())
        )

    # --- collection -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the adapters (queue, disk: off the loop) and update the metrics."""
        d = self.daemon
        self.uplink = d.uplink_status
        await self._read_disk()
        keys = d.verifier.keys
        self.metrics.update(
            Snapshot(
                scan=d.pipeline.stats(),
                mqtt={
                    "barrier": (d.link.connected, d.link.mqtt.reconnects),
                    "uplink": (d.uplink.connected.is_set(), d.uplink.reconnects),
                },
                uplink=self.uplink,
                queue_max_bytes=d.queue.max_bytes,
                keyset_age_s=max(0.0, d.clocks.wall() - keys.issued_at) if keys.keys else None,
                trust_refused={
                    (kind.value, reason.value): n
                    for (kind, reason), n in d.verifier.refused_counts.items()
                },
                alarms=dict(d.runner.alarms),
                barrier_state=d.runner.state.barrier,
                readiness=self.readiness(),
                loop_lag_s=self.loop_lag_s,
            )
        )

    async def run(self) -> None:
        """Heartbeat, periodic refresh and (when configured) the HTTP endpoint; cancel to stop."""
        cfg = self.daemon.config.metrics
        if cfg.port is not None:
            await self.start_http(cfg.host, cfg.port)
        self.http_settled.set()
        try:
            next_refresh = 0.0
            while True:
                before = self._clock()
                if before >= next_refresh:
                    next_refresh = before + REFRESH_S
                    try:
                        await self.refresh()
                    except Exception:  # figures may go stale; the lane must not stop for it
                        log.exception("metrics refresh failed", extra={"lane": self.lane})
                    before = self._clock()
                await asyncio.sleep(HEARTBEAT_S)
                self.loop_lag_s = max(0.0, self._clock() - before - HEARTBEAT_S)
        finally:
            await self.stop_http()
            # A read stuck in a hung disk keeps its thread until the disk answers: not waited.
            self._disk_io.shutdown(wait=False, cancel_futures=True)

    async def _read_disk(self) -> None:
        """`disk` read again, waited for one heartbeat at most: a read stuck in a hung disk
        (statvfs on a dead NFS server) leaves the last figures standing, and no second read
        starts beside it."""
        if self._disk_read is None:
            data_dir = self.daemon.config.lane.data_dir
            loop = asyncio.get_running_loop()
            self._disk_read = loop.run_in_executor(self._disk_io, disk_facts, data_dir)
        done, _ = await asyncio.wait({self._disk_read}, timeout=HEARTBEAT_S)
        if done:
            read, self._disk_read = self._disk_read, None
            self.disk = read.result()

    # --- HTTP -----------------------------------------------------------------------------------

    async def start_http(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            log.error(
                "metrics endpoint not started",
                extra={"lane": self.lane, "host": host, "port": port, "error": str(exc)},
            )
            return
        self._site = runner
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        log.info(
            "metrics endpoint listening", extra={"lane": self.lane, "address": list(self.address)}
        )

    async def stop_http(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            await site.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        try:
            await self.refresh()
        except Exception:
            log.exception("metrics refresh failed", extra={"lane": self.lane})
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return _checks_response(self.liveness())

    async def _readyz(self, _request: web.Request) -> web.Response:
        return _checks_response(self.readiness())


def _checks_response(checks: list[Check]) -> web.Response:
    body = health.report(checks)
    return web.Response(
        text=json.dumps(body), status=200 if body["ok"] else 503, content_type="application/json"
    )


def disk_facts(data_dir: os.PathLike[str]) -> tuple[bool, int | None]:
    """Whether the data directory is writable, and the bytes free on its file system (blocking)."""
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        return False, None
    return os.access(data_dir, os.W_OK), free
