"""The simulated acquirer: the design's payment API over HTTP, with injectable faults.

API (docs/acquirer.md): POST /v1/payments, GET /v1/payments/{id}, POST /v1/payments/{id}/reverse.
Admin (also served on a second port that outages never touch, so the dashboard can end them):
GET/POST /admin/faults, GET /admin/payments.

Run standalone: `python -m sim.acquirer --port 8099 --latency-ms 300`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from enum import StrEnum
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from lane.auth.acquirer import CURRENCY, PAYMENT_ID
from lane.signals import stop_on_signals
from scanner.payload import UnknownPayload, classify
from sim.acquirer_faults import Faults, FaultsError, OutageMode
from sim.acquirer_ledger import Ledger, Outcome, SimPayment
from sim.http_site import start_site

log = logging.getLogger("sim.acquirer")

MAX_AMOUNT_MINOR = 10**12
MAX_CODE_CHARS = 512


class BadRequestError(Exception):
    """A request the acquirer refuses with HTTP 400."""


class ConflictError(Exception):
    """The same payment id with another request (our API: HTTP 409)."""


class StoppingError(Exception):
    """The server stopped while a request was held (the hang fault)."""


class BillFileFault(StrEnum):
    """What is wrong with a network's bill file download (and nothing else)."""

    NONE = "none"
    # Its status and headers at once, its body a byte every `slow_body_ms` (the faults').
    STALLED = "stalled"
    CUT = "cut"  # its status, headers and half its body, then the connection closed


class AcquirerServer:
    """Serve the acquirer API on `host:port` (0: a free port) and the admin API on `admin_port`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        seed: int = 0,
        *,
        admin_port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._port = port
        self._admin_port = admin_port
        self._faults = faults or Faults()
        self._rng = random.Random(seed)
        self._clock = clock
        self._outages_set_at = clock()
        self.ledger = Ledger(clock)
        self._runner: web.AppRunner | None = None
        self._api_site: web.SockSite | None = None
        self._admin_site: web.SockSite | None = None
        self._faults_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.api_requests = 0  # calls that reached the payment API (not /admin): routing tests
        self.bill_file_fault = BillFileFault.NONE  # the networks' fakes' bill file download
        self.bill_file_requests = 0  # tries of a bill file (tests wait for one)
        self.refund_requests = 0  # refunds asked for, made or refused

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._count, self._body_faults])
        self._api_routes(app)
        app.router.add_get("/admin/faults", self._admin_faults_get)
        app.router.add_post("/admin/faults", self._admin_faults_post)
        app.router.add_get("/admin/payments", self._admin_payments)
        # handler_cancellation: a handler learns that its client gave up (success-after-timeout
        # and hang rely on it); payment processing itself runs in shielded tasks.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        # The API's port is fixed from now on: outages reopen it.
        self._api_site, self._port = await start_site(self._runner, self._host, self._port)
        self._admin_site, self._admin_port = await start_site(
            self._runner, self._host, self._admin_port
        )
        self._outages_set_at = self._clock()
        await self._sync_listener()
        self._supervisor = asyncio.create_task(self._supervise(), name="acquirer-outages")
        log.info("acquirer listening", extra={"url": self.url, "admin_url": self.admin_url})
        return self.url

    def _api_routes(self, app: web.Application) -> None:
        """The payment API; the payment networks' fakes serve their own protocol instead."""
        app.router.add_post("/v1/payments", self._pay)
        app.router.add_get("/v1/payments/{payment_id}", self._get)
        app.router.add_post("/v1/payments/{payment_id}/reverse", self._reverse)
        app.router.add_post("/v1/payments/{payment_id}/refunds", self._refund)

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/admin/"):
            self.api_requests += 1
        return await handler(request)

    @web.middleware
    async def _body_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The answer made as usual, then sent slowly or cut mid-body (`slow_body_rate`,
        `cut_body_rate`): the client has its status and headers and waits for the rest."""
        response = await handler(request)
        faults = self._faults
        admin = request.path.startswith("/admin/")
        if admin or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return response
        cut = bool(faults.cut_body_rate) and self._rng.random() < faults.cut_body_rate
        slow = (
            not cut and bool(faults.slow_body_rate) and self._rng.random() < faults.slow_body_rate
        )
        if not (cut or slow):
            return response
        if slow:
            return await trickle(request, response, faults.slow_body_ms / 1000.0)
        return await cut_short(request, response)

    async def bill_file_answer(
        self, request: web.Request, response: web.Response
    ) -> web.StreamResponse:
        """A bill file's `response`, spoiled as `bill_file_fault` says: the networks serve the
        file from elsewhere than their API, so it can fail while every API call answers."""
        self.bill_file_requests += 1
        fault = self.bill_file_fault
        if fault is BillFileFault.STALLED:
            return await trickle(request, response, self._faults.slow_body_ms / 1000.0)
        if fault is BillFileFault.CUT:
            return await cut_short(request, response)
        return response

    async def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.ledger.cancel_processing()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self._host}:{self._admin_port}"

    # -- faults ----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults, *, restart_outages: bool = True) -> None:
        """Replace the faults; outage windows count from now unless `restart_outages` is off."""
        if restart_outages:
            self._outages_set_at = self._clock()
        self._faults = faults
        self._faults_changed.set()
        log.info("acquirer faults changed", extra={"faults": faults.to_map()})

    def update_faults(self, **changes: Any) -> Faults:
        """Change some faults; outage windows restart only when `outages` is among them."""
        self.set_faults(replace(self._faults, **changes), restart_outages="outages" in changes)
        return self._faults

    def _since_outages_set(self) -> float:
        return self._clock() - self._outages_set_at

    def _outage(self) -> OutageMode | None:
        return self._faults.outage_mode(self._since_outages_set())

    async def _supervise(self) -> None:
        """Open and close the API listener at outage window boundaries."""
        while True:
            self._faults_changed.clear()
            await self._sync_listener()
            now = self._since_outages_set()
            nxt = self._faults.next_boundary(now)
            timeout = None if nxt is None else max(0.0, nxt - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._faults_changed.wait()

    async def _sync_listener(self) -> None:
        refuse = self._outage() == "refuse"
        if refuse and self._api_site is not None:
            await self._api_site.stop()
            self._api_site = None
            log.info("acquirer outage: refusing connections", extra={"port": self._port})
        elif not refuse and self._api_site is None and self._runner is not None:
            self._api_site, _ = await start_site(self._runner, self._host, self._port)
            log.info("acquirer outage over: listening", extra={"port": self._port})

    async def _gate(self, request: web.Request) -> web.Response | None:
        """Outage, injected 5xx and latency common to every API call; None means go on."""
        mode = self._outage()
        if mode == "refuse":  # a live keep-alive connection: drop it, as a crash would
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if mode == "503":
            return _error(503, "unavailable", "acquirer outage")
        if self._faults.error_rate and self._rng.random() < self._faults.error_rate:
            return _error(500, "internal", "injected server error")
        return None

    # -- API handlers ----------------------------------------------------------------------

    async def _pay(self, request: web.Request) -> web.Response:
        try:
            body = _payment_body(await request.read())
        except BadRequestError as exc:
            return _error(400, "bad_request", str(exc))
        if (refused := await self._gate(request)) is not None:
            return refused
        try:
            payment, _ = await self.charge(body)
        except ConflictError as exc:
            return _error(409, "conflict", str(exc))
        except StoppingError:
            return _error(503, "unavailable", "stopping")
        return web.json_response(self.ledger.view(payment))

    async def charge(self, body: dict[str, Any]) -> tuple[SimPayment, bool]:
        """Find or make the payment of a pay request and wait until it is processed.

        Returns (payment, created). Raises ConflictError for the same payment id with another
        request, StoppingError when a hanging request outlives the server. Shared with the
        payment networks' fakes, which speak other protocols over the same book and faults.
        """
        faults = self._faults
        if faults.hang_rate and self._rng.random() < faults.hang_rate:
            await self._stopping.wait()  # until the client gives up (cancels us) or we stop
            raise StoppingError
        existing = self.ledger.get(body["payment_id"])
        if existing is not None and not existing.same_request(body):
            raise ConflictError("payment_id already used with another request")
        created = existing is None
        if existing is None:
            existing = self.ledger.create(body, self._roll(faults), faults.latency_s(self._rng))
        assert existing.processed is not None
        try:
            await asyncio.shield(existing.processed)
        except asyncio.CancelledError:
            existing.client_gone.set()  # the client gave up: a late success may now happen
            raise
        return existing, created

    async def _get(self, request: web.Request) -> web.Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        await asyncio.sleep(self._faults.latency_s(self._rng))
        payment = self.ledger.get(request.match_info["payment_id"])
        if payment is None:
            return _error(404, "not_found", "no such payment")
        return web.json_response(self.ledger.view(payment))

    async def _reverse(self, request: web.Request) -> web.Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        await asyncio.sleep(self._faults.latency_s(self._rng))
        payment_id = request.match_info["payment_id"]
        if not PAYMENT_ID.fullmatch(payment_id):
            return _error(400, "bad_request", "bad payment_id")
        return web.json_response(self.ledger.view(self.ledger.reverse(payment_id)))

    async def _refund(self, request: web.Request) -> web.Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        await asyncio.sleep(self._faults.latency_s(self._rng))
        try:
            body = json.loads(await request.read())
            refund_id, amount = body["refund_id"], body["amount_minor"]
            if not isinstance(refund_id, str) or not PAYMENT_ID.fullmatch(refund_id):
                raise ValueError("bad refund_id")
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise ValueError("amount_minor must be an integer")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, "bad_request", str(exc))
        refusal = self.refuse_refund(request.match_info["payment_id"], refund_id, amount)
        if refusal is not None:
            return _error(409, refusal, "refund refused")
        return web.json_response({"refund_id": refund_id, "status": "SUCCEEDED"})

    def refuse_refund(self, payment_id: str, refund_id: str, amount_minor: int) -> str | None:
        """Make a refund (shared with the networks' fakes); its refusal, or None when made."""
        self.refund_requests += 1
        if self._faults.refund_refused is not None:
            return self._faults.refund_refused
        return self.ledger.refund(payment_id, refund_id, amount_minor)

    def _roll(self, faults: Faults) -> Outcome:
        """Draw the fate of a new payment, in a fixed order so a seed replays a run."""
        if faults.decline_rate and self._rng.random() < faults.decline_rate:
            return Outcome("DECLINED", faults.decline_reason)
        if faults.pending_rate and self._rng.random() < faults.pending_rate:
            return Outcome("PENDING", pending_s=faults.pending_ms / 1000.0)
        if faults.late_success_rate and self._rng.random() < faults.late_success_rate:
            return Outcome(
                "LATE",
                late_s=faults.late_success_ms / 1000.0,
                late_max_wait_s=faults.late_max_wait_ms / 1000.0,
            )
        return Outcome("SUCCEEDED")

    # -- admin -----------------------------------------------------------------------------

    async def _admin_faults_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults.to_map())

    async def _admin_faults_post(self, request: web.Request) -> web.Response:
        """Merge the posted settings into the current faults (omitted keys stay as they are)."""
        try:
            changes = json.loads(await request.read())
            if not isinstance(changes, dict):
                raise FaultsError("expected a JSON object of fault settings")
            faults = self._faults.merged(changes)
            self.set_faults(faults, restart_outages="outages" in changes)
        except (json.JSONDecodeError, UnicodeDecodeError, FaultsError) as exc:
            return _error(400, "bad_faults", str(exc))
        return web.json_response(self._faults.to_map())

    async def _admin_payments(self, request: web.Request) -> web.Response:
        return web.json_response(self.ledger.report())

    def payments(self) -> list[dict[str, Any]]:
        """Every payment's state (as GET /admin/payments lists them)."""
        payments: list[dict[str, Any]] = self.ledger.report()["payments"]
        return payments

    def payment(self, payment_id: str) -> SimPayment | None:
        return self.ledger.get(payment_id)


@contextlib.asynccontextmanager
async def running_acquirer(
    faults: Faults | None = None, seed: int = 0, **kwargs: Any
) -> AsyncIterator[AcquirerServer]:
    """An AcquirerServer on free ports for the duration of the block."""
    server = AcquirerServer(faults=faults, seed=seed, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def trickle(
    request: web.Request, response: web.Response, byte_s: float
) -> web.StreamResponse:
    """`response` with its status and headers at once and its body a byte every `byte_s`: a
    gateway or proxy stalling mid-answer (the client waits for the rest)."""
    assert isinstance(response.body, bytes)  # made whole by the handler
    body = response.body
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    for byte in body:
        await asyncio.sleep(byte_s)
        await stream.write(bytes([byte]))
    await stream.write_eof()
    return stream


async def cut_short(request: web.Request, response: web.Response) -> web.StreamResponse:
    """`response` with its status, headers and half its body, then the connection closed."""
    assert isinstance(response.body, bytes)  # made whole by the handler
    body = response.body
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return stream


def _error(status: int, error: str, detail: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def _payment_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("body must be a JSON object")
    expected = {"payment_id", "code", "amount_minor", "currency", "lane"}
    if set(body) != expected:
        raise BadRequestError(f"fields must be exactly {sorted(expected)}")
    payment_id, code, amount = body["payment_id"], body["code"], body["amount_minor"]
    if not isinstance(payment_id, str) or not PAYMENT_ID.fullmatch(payment_id):
        raise BadRequestError(f"payment_id must match {PAYMENT_ID.pattern}")
    # Money is an integer of minor units: 100.0 and "100" are both refused.
    if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT_MINOR:
        raise BadRequestError("amount_minor must be a non-negative integer of minor units")
    if not isinstance(body["currency"], str) or not CURRENCY.fullmatch(body["currency"]):
        raise BadRequestError("currency must be an ISO 4217 code (three capital letters)")
    if not isinstance(body["lane"], str) or not 0 < len(body["lane"]) <= 64:
        raise BadRequestError("lane must be a non-empty string")
    if not isinstance(code, str) or not 0 < len(code) <= MAX_CODE_CHARS:
        raise BadRequestError("code must be a non-empty string")
    payload = classify(code)
    if payload.kind not in ("payment_code", "emv"):
        reason = payload.reason if isinstance(payload, UnknownPayload) else payload.kind
        raise BadRequestError(f"code is neither a wallet code nor an EMV payload: {reason}")
    return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated acquirer (lane payment API)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default="{}", help="JSON, e.g. '{\"decline_rate\": 0.1}'")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        changes = {"latency_ms": args.latency_ms, **json.loads(args.faults)}
        faults = Faults().merged(changes)
    except (json.JSONDecodeError, FaultsError) as exc:
        parser.error(f"--faults: {exc}")
    asyncio.run(_serve(args.host, args.port, args.admin_port, args.seed, faults))


async def _serve(host: str, port: int, admin_port: int, seed: int, faults: Faults) -> None:
    server = AcquirerServer(host, port, faults, seed, admin_port=admin_port)
    url = await server.start()
    print(f"acquirer {url} admin {server.admin_url}", flush=True)
    stop = stop_on_signals()
    try:
        await stop.wait()
    finally:
        await server.stop()


if __name__ == "__main__":
    main()
