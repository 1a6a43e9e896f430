"""The operator's web dashboard of a running simulator (aiohttp; plain HTML/JS, no build step).

Routes:
  GET  /                          the page (sim/static/index.html, app.js, style.css)
  GET  /api/state                 the simulator's snapshot (JSON)
  GET  /api/events                Server-Sent Events: `state` with the snapshot, a few per second
  GET  /api/faults                the fault catalogue and the active faults
  POST /api/faults                {fault, on: bool, lane?: 1-based, params?: {}} -> {done: [...]}
  GET  /api/lanes/{n}/frame.jpg   the frame the lane's scanner decoded last (or, for 3 s after, the
                                  last one it read a code in); headers X-Frame-Id,
                                  X-Frame-Size (WxH) and X-Polygons (JSON outlines of the codes
                                  read in it)
  GET  /api/report                the run's report so far (as `--headless` prints it)
  /console/...                    the operator console (lane/console/server.py), fed over MQTT
                                  by the lanes like against real lanes

It listens on 127.0.0.1 by default: the buttons inject faults, so it is not for open networks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from lane.console.feed import ConsoleFeed
from lane.console.model import Plaza
from lane.console.server import Console
from lane.console.users import User
from sim.faults import FaultError, catalogue
from sim.harness import Simulator
from sim.http_site import start_site

log = logging.getLogger("lane.sim.dashboard")

STATIC = Path(__file__).parent / "static"
# Real seconds the camera view keeps showing the frame a code was read in (with its outline):
# the code is in view for a few frames only, the page asks for a frame now and then.
READ_HOLD_S = 3.0
JPEG_QUALITY = 70
SNAPSHOT_MAX_AGE_S = 0.2  # clients share one snapshot made at most this long ago


class Dashboard:
    def __init__(
        self, sim: Simulator, *, interval_s: float = 0.5, users: dict[str, User] | None = None
    ) -> None:
        self.sim = sim
        self.users = users or {}
        self.console: Console | None = None
        self._feed: asyncio.Task[None] | None = None
        self.interval_s = interval_s
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._snapshot: tuple[float, dict[str, Any]] | None = None
        self._snapshot_lock = asyncio.Lock()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC, append_version=False)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/faults", self._faults_get)
        app.router.add_post("/api/faults", self._faults_post)
        app.router.add_get(r"/api/lanes/{n:\d+}/frame.jpg", self._frame)
        app.router.add_get("/api/report", self._report)
        if self.console is not None:
            self.console.add_routes(app, "/console")
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        broker = self.sim.broker
        if broker is not None:
            plaza = Plaza(time.time())
            feed = ConsoleFeed(plaza, broker.host, broker.port)
            self.console = Console(plaza, feed, self.users, sim_time=self.sim.sim_time)
            self._feed = asyncio.create_task(feed.run(), name="console-feed")
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            _, bound = await start_site(self._runner, host, port)
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.url = f"http://{host}:{bound}/"
        log.info("dashboard listening", extra={"url": self.url})
        return self.url

    async def stop(self) -> None:
        self._closing.set()  # ends the SSE streams, so cleanup does not wait for them
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.gather(self._feed, return_exceptions=True)
            self._feed = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- data -----------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        async with self._snapshot_lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._snapshot[0] > SNAPSHOT_MAX_AGE_S:
                self._snapshot = (now, await self.sim.snapshot())
            return self._snapshot[1]

    # --- handlers -------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(await self.snapshot())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        try:
            await response.write(b"retry: 1000\n\n")
            while not self._closing.is_set():
                data = json.dumps(await self.snapshot(), separators=(",", ":"))
                await response.write(f"event: state\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._closing.wait()
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        return response

    async def _faults_get(self, request: web.Request) -> web.Response:
        return web.json_response({"catalogue": catalogue(), "active": self.sim.faults.snapshot()})

    async def _faults_post(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _bad(f"body is not JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("fault"), str):
            return _bad('expected {"fault": NAME, "on": true|false, "lane": N, "params": {}}')
        unknown = set(body) - {"fault", "on", "lane", "params"}
        if unknown:
            return _bad(f"unknown field(s): {', '.join(sorted(unknown))}")
        on, lane, params = body.get("on", True), body.get("lane"), body.get("params") or {}
        if not isinstance(on, bool):
            return _bad("on must be true or false")
        if lane is not None and (isinstance(lane, bool) or not isinstance(lane, int)):
            return _bad("lane must be a lane number (1-based) or null")
        if not isinstance(params, dict):
            return _bad("params must be an object")
        try:
            done = await self.sim.faults.apply(body["fault"], on, lane, params)
        except FaultError as exc:
            return _bad(str(exc))
        self._snapshot = None  # the next state shows the change at once
        return web.json_response({"done": done, "active": self.sim.faults.snapshot()})

    async def _frame(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if not 1 <= n <= len(self.sim.lanes):
            raise web.HTTPNotFound(text=f"no lane {n}")
        lane = self.sim.lanes[n - 1]
        latest = await lane.latest_frame(JPEG_QUALITY, READ_HOLD_S)
        if latest is None:
            return web.Response(status=204)
        width, height = self.sim.options.frame_size
        polygons = [[list(p) for p in poly] for poly in latest.polygons]
        assert isinstance(latest.image, bytes)
        return web.Response(
            body=latest.image,
            content_type="image/jpeg",
            headers={
                "Cache-Control": "no-store",
                "X-Frame-Id": str(latest.frame_id),
                "X-Frame-Size": f"{width}x{height}",
                "X-Polygons": json.dumps(polygons, separators=(",", ":")),
            },
        )

    async def _report(self, request: web.Request) -> web.Response:
        return web.json_response(await self.sim.report_async())


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
