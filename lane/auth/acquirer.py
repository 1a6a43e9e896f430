"""HTTP client for the acquirer API (docs/acquirer.md): pay, query, reverse.

Every call takes its own timeout (the caller's remaining budget) and ends in exactly one of:
an `AcquirerResult`, `AcquirerTimeout`, `AcquirerUnavailable` (could not connect, connection
dropped, 5xx) or `AcquirerProtocolError` (an answer we cannot trust: bad JSON, wrong schema,
an unexpected 4xx). A pay call that ended in anything but a result has an UNKNOWN outcome:
the caller must hand it to the resolver (design safety rule 5).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self
from urllib.parse import quote

import aiohttp
from yarl import URL

from lane.auth.network_config import Network

log = logging.getLogger("lane.auth.acquirer")

MAX_BODY_BYTES = 64 * 1024
# (alarm code, message or None to clear): the lane shell's `runner.alarm`.
AlarmSink = Callable[[str, str | None], None]
PAYMENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}")
CURRENCY = re.compile(r"[A-Z]{3}")


class PaymentStatus(StrEnum):
    SUCCEEDED = "SUCCEEDED"
    PENDING = "PENDING"
    DECLINED = "DECLINED"
    REVERSED = "REVERSED"
    # Client-side only: the acquirer answered 404 to a query (it never saw this payment).
    NOT_FOUND = "NOT_FOUND"


WIRE_STATUSES = frozenset(s.value for s in PaymentStatus) - {PaymentStatus.NOT_FOUND.value}


@dataclass(frozen=True)
class AcquirerResult:
    payment_id: str
    status: PaymentStatus
    reason: str | None = None
    acquirer_ref: str | None = None
    # The network's stable id of the payer (Alipay `buyer_user_id`/`buyer_open_id`, WeChat Pay
    # `payer.openid`, our API's `user_id`): the same for every code the wallet shows, so a metro
    # gate finds the tap-in of a passenger whose code digits change at every showing.
    user_id: str | None = None


@dataclass(frozen=True)
class RefundRequest:
    """Give back `amount_minor` of a settled payment of `total_minor` (a partial refund).
    `refund_id` is the idempotency key (Alipay's `out_request_no`, WeChat Pay's
    `out_refund_no`): the same refund asked again is made once."""

    payment_id: str
    refund_id: str
    amount_minor: int
    total_minor: int
    currency: str

    def __post_init__(self) -> None:
        _check_id(self.payment_id)
        _check_id(self.refund_id)
        if not 0 < self.amount_minor <= self.total_minor:
            raise ValueError("a refund is more than nothing and at most the payment")
        if not CURRENCY.fullmatch(self.currency):
            raise ValueError(f"currency must be three capital letters, not {self.currency!r}")


class RefundState(StrEnum):
    """Where a refund stands at its network. MADE: the money went back. PROCESSING: taken,
    not finished (WeChat Pay's PROCESSING, Alipay's `fund_change` N until its query confirms):
    asked about again by its number, never asked anew. FAILED: the network ended it without
    paying (WeChat Pay's ABNORMAL or CLOSED): an operator decides what follows. UNKNOWN: the
    network has no refund under that number: it may be asked again under the same number."""

    MADE = "MADE"
    PROCESSING = "PROCESSING"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class RefundAnswer:
    state: RefundState
    detail: str = ""  # the network's own word for it (`ABNORMAL`, `CLOSED`, `fund_change N`)


@dataclass(frozen=True)
class ReverseRule:
    """When the resolver may reverse a given-up payment, counted from its intent.

    `min_age_s`: not before this age (WeChat Pay asks for some seconds after the order was
    placed). `pending_grace_s`: how long a PENDING payment is left to finish before it is
    reversed; None means the resolver's own setting.
    """

    min_age_s: float = 0.0
    pending_grace_s: float | None = None


@dataclass(frozen=True)
class PayRequest:
    """One payment as the lane asks every network for it; `payment_id` is the idempotency key
    (each network derives its own order number from it). Refuses what no network could take."""

    payment_id: str
    code: str
    amount_minor: int
    currency: str
    lane: str

    def __post_init__(self) -> None:
        _check_id(self.payment_id)
        amount = self.amount_minor
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError("amount_minor must be a non-negative int of minor units")
        if not CURRENCY.fullmatch(self.currency):
            raise ValueError(f"currency must be three capital letters, not {self.currency!r}")


class Acquirer(Protocol):
    """The port the authoriser and the resolver pay through: our acquirer API or a network.

    Every call ends in an `AcquirerResult` or one of the `AcquirerError`s below.
    """

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult: ...

    async def query(self, payment_id: str, timeout_s: float) -> AcquirerResult: ...

    async def reverse(self, payment_id: str, timeout_s: float) -> AcquirerResult: ...

    async def refund(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        """Refund part of a settled payment: MADE, PROCESSING (taken, to be asked about with
        `refund_status`) or FAILED. `RefundRefused`: the network said no (the payment is not
        refundable, the merchant's balance is short ...): asking again may not help."""
        ...

    async def refund_status(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        """Where the refund numbered `request.refund_id` stands (WeChat Pay's `GET
        /v3/refund/domestic/refunds/{out_refund_no}`, Alipay's
        `alipay.trade.fastpay.refund.query`)."""
        ...

    def reverse_rule(self, payment_id: str) -> ReverseRule: ...

    def network_for(self, code: str) -> Network:
        """The network that takes this code: recorded with the intent, before paying."""
        ...

    def remember(self, payment_id: str, network: Network) -> None:
        """A previous run recorded that `network` took this payment: ask only it about it."""
        ...

    def forget(self, payment_id: str) -> None:
        """The payment is final (settled, declined, reversed): drop what is held about it."""
        ...


class OneNetwork:
    """What a client of a single network answers about routing: every code goes to it."""

    network: ClassVar[Network]

    def network_for(self, code: str) -> Network:
        return self.network

    def remember(self, payment_id: str, network: Network) -> None:
        """Nothing to remember: this client asks its one network whatever was recorded."""

    def forget(self, payment_id: str) -> None:
        """Nothing held: see `remember`."""


class AcquirerError(Exception):
    """Base of everything the client raises about the acquirer."""


class AcquirerUnavailable(AcquirerError):  # noqa: N818 - the name the design uses
    """Could not reach the acquirer, the connection dropped, or it answered 5xx."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class RefundRefused(AcquirerError):  # noqa: N818 - the network's answer, not a failure of ours
    """The network refused the refund; `reason` is its code (lower-cased)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"refund refused: {reason} {detail}".strip())
        self.reason = reason


class AcquirerTimeout(AcquirerError):  # noqa: N818 - the name the design uses
    """No answer within the caller's timeout."""


class AcquirerProtocolError(AcquirerError):
    """The acquirer answered something we cannot trust (bad JSON, wrong schema, 4xx)."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


class RequestFailure(StrEnum):
    """Why a request got no answer, as the lane's metrics count it."""

    TIMEOUT = "timeout"  # no whole answer in time (a body stalled after its headers too)
    CONNECTION = "connection"  # refused, dropped, or the body cut short
    OTHER = "other"


# Told of each request once it ends: method, URL (query included: Alipay's names its call),
# seconds from sending to the last byte of the body, and the HTTP status or the failure. A
# request the lane cancels is not told: the lane gave up, not the acquirer.
RequestObserver = Callable[[str, URL, float, int | RequestFailure], None]


class HttpClient:
    """What every acquirer and network client does with HTTP: use a shared `session` or own one
    (then close it), turn one request into an answer or one of the errors above, and tell
    `observe` how each went (lane/metrics.py)."""

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        observe: RequestObserver | None = None,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._observe = observe

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        timeout_s: float,
        max_bytes: int = MAX_BODY_BYTES,
        **request: Any,
    ) -> HttpAnswer:
        """One request within `timeout_s`. Any answer below 500 is returned for the caller to
        judge; no time left or no answer in time is AcquirerTimeout; connection errors and 5xx
        are AcquirerUnavailable; an answer over `max_bytes` is AcquirerProtocolError."""
        if timeout_s <= 0:
            raise AcquirerTimeout(f"{what}: no time left")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        # Measured here, not by a session trace: aiohttp's trace ends a request at its headers,
        # so an answer stalled or cut mid-body would count as a quick success.
        clock = asyncio.get_running_loop().time
        started = clock()

        def seen(outcome: int | RequestFailure) -> None:
            if self._observe is not None:
                target = URL(url).extend_query(request.get("params"))
                self._observe(method, target, clock() - started, outcome)

        try:
            async with self._session.request(
                method, url, timeout=aiohttp.ClientTimeout(total=timeout_s), **request
            ) as resp:
                raw = await _read_capped(resp, max_bytes)
                answer = HttpAnswer(resp.status, dict(resp.headers), raw)
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError subclasses
            seen(RequestFailure.TIMEOUT)
            raise AcquirerTimeout(f"{what}: no answer within {timeout_s:.3f} s") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            seen(RequestFailure.CONNECTION)
            raise AcquirerUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError:
            seen(RequestFailure.OTHER)
            raise
        seen(answer.status)
        if answer.status >= 500:
            raise AcquirerUnavailable(f"{what}: HTTP {answer.status}", http_status=answer.status)
        if len(raw) > max_bytes:
            raise AcquirerProtocolError(f"{what}: answer larger than {max_bytes} B")
        return answer


class AcquirerClient(HttpClient, OneNetwork):
    """Our acquirer API at one endpoint."""

    network = "acquirer"

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession | None = None,
        observe: RequestObserver | None = None,
    ) -> None:
        super().__init__(session, observe)
        self._base = base_url.rstrip("/")

    def reverse_rule(self, payment_id: str) -> ReverseRule:
        return ReverseRule()

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult:
        body = dataclasses.asdict(request)
        return await self._call("POST", "/v1/payments", body, request.payment_id, timeout_s)

    async def query(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        _check_id(payment_id)
        path = f"/v1/payments/{quote(payment_id, safe='')}"
        return await self._call("GET", path, None, payment_id, timeout_s)

    async def reverse(self, payment_id: str, timeout_s: float) -> AcquirerResult:
        _check_id(payment_id)
        path = f"/v1/payments/{quote(payment_id, safe='')}/reverse"
        return await self._call("POST", path, {}, payment_id, timeout_s)

    async def refund(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        """Our API makes a refund before it answers: 200 is MADE, never PROCESSING."""
        path = f"/v1/payments/{quote(request.payment_id, safe='')}/refunds"
        body = {"refund_id": request.refund_id, "amount_minor": request.amount_minor,
                "currency": request.currency}  # fmt: skip
        what = f"POST {path}"
        answer = await self._send("POST", self._base + path, what, timeout_s, json=body)
        doc = _decode(answer.body, what, answer.status)
        if answer.status == 409:  # our API's business refusal (not refundable, too much ...)
            raise RefundRefused(str(doc.get("error", "refused")), str(doc.get("detail", "")))
        made = doc.get("refund_id") == request.refund_id and doc.get("status") == "SUCCEEDED"
        if answer.status != 200 or not made:
            raise AcquirerProtocolError(f"{what}: HTTP {answer.status}: {doc}", answer.status)
        return RefundAnswer(RefundState.MADE)

    async def refund_status(self, request: RefundRequest, timeout_s: float) -> RefundAnswer:
        """Our API has no refund in between (see `refund`): asking again under the same
        refund id is its query, and refunds once."""
        return await self.refund(request, timeout_s)

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        payment_id: str,
        timeout_s: float,
    ) -> AcquirerResult:
        what = f"{method} {path}"
        answer = await self._send(method, self._base + path, what, timeout_s, json=body)
        status = answer.status
        doc = _decode(answer.body, what, status)
        # Only the API's own "no such payment" counts: a 404 from a wrong URL is no answer.
        if status == 404 and method == "GET" and doc.get("error") == "not_found":
            return AcquirerResult(payment_id=payment_id, status=PaymentStatus.NOT_FOUND)
        if status != 200:
            error = doc.get("error", "?")
            raise AcquirerProtocolError(
                f"{what}: HTTP {status}: {error}: {doc.get('detail', '')}", http_status=status
            )
        return _result(doc, payment_id, what)


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body, or its first max_bytes + 1 bytes when it is longer (then refused)."""
    raw = bytearray()
    async for chunk in resp.content.iter_chunked(16 * 1024):
        raw += chunk
        if len(raw) > max_bytes:
            break
    return bytes(raw)


def _check_id(payment_id: str) -> None:
    if not PAYMENT_ID.fullmatch(payment_id):
        raise ValueError(f"payment_id must match {PAYMENT_ID.pattern}, not {payment_id!r}")


def _decode(raw: bytes, what: str, status: int) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AcquirerProtocolError(
            f"{what}: HTTP {status} with a body that is not JSON ({exc}): {raw[:80]!r}", status
        ) from exc
    if not isinstance(doc, dict):
        raise AcquirerProtocolError(f"{what}: JSON answer is not an object", status)
    return doc


def _result(doc: dict[str, Any], payment_id: str, what: str) -> AcquirerResult:
    status = doc.get("status")
    if status not in WIRE_STATUSES:
        raise AcquirerProtocolError(f"{what}: unknown status {status!r}", 200)
    if doc.get("payment_id") != payment_id:
        raise AcquirerProtocolError(
            f"{what}: answer is for payment {doc.get('payment_id')!r}, not {payment_id!r}", 200
        )
    for name in ("reason", "acquirer_ref", "user_id"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise AcquirerProtocolError(f"{what}: {name} must be a string", 200)
    if "amount_minor" in doc and (
        isinstance(doc["amount_minor"], bool) or not isinstance(doc["amount_minor"], int)
    ):
        raise AcquirerProtocolError(f"{what}: amount_minor must be an integer", 200)
    return AcquirerResult(
        payment_id=payment_id,
        status=PaymentStatus(status),
        reason=doc.get("reason"),
        acquirer_ref=doc.get("acquirer_ref"),
        user_id=doc.get("user_id") or None,
    )
