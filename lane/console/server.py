"""The console's HTTP side (aiohttp): the page, the plaza snapshot, login, and actions.

Routes, under a prefix (`/console` in the simulator's app, `/` for `lane console`):

  GET  {p}/                the page (lane/console/static/); {p} redirects there
  GET  {p}/api/state       the plaza snapshot (JSON), with who is logged in
  POST {p}/api/login       {user, password} -> sets the session cookie
  POST {p}/api/logout
  POST {p}/api/action      {lane, op, alarm?, reason?, confirm: true}; op is open, close_lane,
                           reopen_lane or ack_alarm. Needs an operator's session: 401 without
                           a login, 403 for a viewer, 400 without confirm, 409 when the alarm
                           is not active, 503 when the broker is away (nothing was sent).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from barrier.messages import ATTENDANT_OPS, AttendantCommand
from lane.console.feed import ConsoleFeed
from lane.console.model import Plaza, alarm_active
from lane.console.users import Sessions, User
from lane.transport.mqtt import LinkDown
from lane.wire.codec import PayloadError
from lane.wire.ids import new_id

log = logging.getLogger("lane.console")

STATIC = Path(__file__).parent / "static"
COOKIE = "lane_console"
SNAPSHOT_MAX_AGE_S = 0.5


class Console:
    def __init__(
        self,
        plaza: Plaza,
        feed: ConsoleFeed,
        users: dict[str, User],
        *,
        wall: Callable[[], float] = time.time,
        sim_time: Callable[[], float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plaza = plaza
        self.feed = feed
        self.users = users
        self.wall = wall
        self.sim_time = sim_time
        self.monotonic = monotonic
        self.sessions = Sessions(monotonic)
        self._snapshot: tuple[float, dict[str, Any]] | None = None

    def add_routes(self, app: web.Application, prefix: str = "/console") -> None:
        p = prefix.rstrip("/")
        if p:
            # The page's relative links (static/, api/) need the trailing slash.
            app.router.add_get(p, self._to_page)
        app.router.add_get(f"{p}/", self._index)
        app.router.add_static(f"{p}/static/", STATIC, append_version=False)
        app.router.add_get(f"{p}/api/state", self._state)
        app.router.add_post(f"{p}/api/login", self._login)
        app.router.add_post(f"{p}/api/logout", self._logout)
        app.router.add_post(f"{p}/api/action", self._action)

    def _user(self, request: web.Request) -> User | None:
        return self.sessions.user(request.cookies.get(COOKIE))

    async def _to_page(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{request.path}/")

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-cache"})

    def snapshot(self) -> dict[str, Any]:
        """The plaza as every browser sees it; browsers polling together share one."""
        now = self.monotonic()
        if self._snapshot is None or now - self._snapshot[0] > SNAPSHOT_MAX_AGE_S:
            body = self.plaza.snapshot(self.wall(), now)
            body["broker"] = self.feed.connected
            body["sim_time_s"] = None if self.sim_time is None else round(self.sim_time(), 1)
            self._snapshot = (now, body)
        return self._snapshot[1]

    async def _state(self, request: web.Request) -> web.Response:
        user = self._user(request)
        who = None if user is None else {"name": user.name, "role": user.role.value}
        return web.json_response({**self.snapshot(), "user": who})

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json(request)
        name, password = body.get("user"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            raise _bad(400, 'expected {"user": NAME, "password": PASSWORD}')
        token = self.sessions.login(self.users, name, password)
        if token is None:
            log.warning("console login refused", extra={"attendant": name[:64]})
            raise _bad(401, "unknown user or wrong password")
        user = self.users[name]
        log.info("console login", extra={"attendant": name, "role": user.role.value})
        response = web.json_response({"name": name, "role": user.role.value})
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        self.sessions.logout(request.cookies.get(COOKIE))
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def _action(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            raise _bad(401, "log in first: actions need an operator")
        if not user.may_act:
            raise _bad(403, f"{user.name} is {user.role.value}: read-only, no actions")
        body = await _json(request)
        unknown = set(body) - {"lane", "op", "alarm", "reason", "confirm"}
        if unknown:
            raise _bad(400, f"unknown field(s): {', '.join(sorted(unknown))}")
        lane, op = body.get("lane"), body.get("op")
        alarm, reason = body.get("alarm"), body.get("reason", "")
        if op not in ATTENDANT_OPS:
            raise _bad(400, f"op must be one of {sorted(ATTENDANT_OPS)}")
        if body.get("confirm") is not True:
            raise _bad(400, "confirmation required: send confirm: true")
        if not isinstance(lane, str) or lane not in self.plaza.lanes:
            raise _bad(404, f"no lane {lane!r} on this console")
        if not isinstance(reason, str):
            raise _bad(400, "reason must be text")
        if op == "ack_alarm":
            if not isinstance(alarm, str) or not alarm_active(self.plaza.lanes[lane], alarm):
                raise _bad(409, f"alarm {alarm!r} is not active on lane {lane}")
            reason = alarm  # the protocol carries the acknowledged alarm's code as the reason
        cmd_id = new_id()
        try:
            cmd = AttendantCommand(op, cmd_id, reason, user.name, int(self.wall() * 1_000_000))
        except PayloadError as exc:
            raise _bad(400, str(exc)) from exc
        try:
            await self.feed.send(lane, cmd)
        except LinkDown as exc:
            log.error(
                "console action not sent",
                extra={"lane": lane, "cmd_id": cmd_id, "op": op, "error": str(exc)},
            )
            raise _bad(503, f"broker not connected, nothing was sent: {exc}") from exc
        log.info(
            "console action",
            extra={"lane": lane, "cmd_id": cmd_id, "op": op, "attendant": user.name},
        )
        return web.json_response({"cmd_id": cmd_id, "lane": lane, "op": op})


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(400, f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _bad(400, "body must be a JSON object")
    return body


def _bad(status: int, message: str) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        503: web.HTTPServiceUnavailable,
    }
    return kinds[status](text=json.dumps({"error": message}), content_type="application/json")
