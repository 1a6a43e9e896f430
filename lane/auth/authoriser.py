"""The authorisation shell: one request in, one decision out, within the request's deadline.

Tokens are verified offline (no network). Wallet codes and EMV payloads go to the acquirer:
the intent is committed first, the pay call's timeout is what is left of the budget, a PENDING
answer is polled until the deadline, and at the deadline the payment is handed to the resolver
(query; reverse if it went through after all) and the decision is `timeout`. When the acquirer
cannot be reached, the offline policy decides: deny, or approve within floor limits, flagged
`deferred`.

The payment id is derived from (lane, auth id): a retried authorisation reuses it, so the
acquirer's idempotency protects the driver from paying twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from lane.auth.acquirer import (
    CURRENCY,
    Acquirer,
    AcquirerProtocolError,
    AcquirerResult,
    AcquirerTimeout,
    AcquirerUnavailable,
    PaymentStatus,
    PayRequest,
)
from lane.auth.paycodes import MIN_KEY_BYTES, CodeError, OnlineCode, online_code
from lane.auth.policy import OfflinePolicy
from lane.auth.resolution_store import FINAL, StoreError
from lane.auth.resolver import Resolver

log = logging.getLogger("lane.auth")

KINDS = frozenset({"token", "payment_code", "emv"})


@dataclass(frozen=True)
class AuthRequest:
    auth_id: str
    lane: str
    text: str
    kind: str  # token | payment_code | emv
    amount_minor: int
    currency: str
    deadline: float  # a value of the authoriser's monotonic clock

    def __post_init__(self) -> None:
        amount = self.amount_minor
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError("amount_minor must be a non-negative int of minor units")
        if not CURRENCY.fullmatch(self.currency):
            raise ValueError(f"currency must be an ISO 4217 code, not {self.currency!r}")


@dataclass(frozen=True)
class Decision:
    auth_id: str
    approved: bool
    reason: str
    method: str
    account_ref: str | None
    payment_id: str | None
    acquirer_ref: str | None
    latency_ms: int
    offline: bool
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class OfflineResult:
    approved: bool
    reason: str
    account_ref: str | None
    token_id: str | None


class OfflineVerifier(Protocol):
    async def verify(self, text: str, now_unix: float) -> OfflineResult:
        """Decide a token; whatever blocks (the replay mark's fsync) runs off the loop."""
        ...


def payment_id_for(lane: str, auth_id: str) -> str:
    """The acquirer idempotency key of an authorisation: stable, URL-safe, 36 characters."""
    digest = hashlib.blake2b(f"{lane}\x00{auth_id}".encode(), digest_size=16).hexdigest()
    return f"pay_{digest}"


class Authoriser:
    def __init__(  # noqa: PLR0917 - the lane shell wires these seven ports in this order
        self,
        lane: str,
        online: Acquirer,
        resolver: Resolver,
        offline: OfflineVerifier,
        policy: OfflinePolicy,
        clock: Callable[[], float],
        wall: Callable[[], float],
        *,
        account_key: bytes,
        poll_interval_s: float = 0.05,
        pay_attempts: int = 2,
        retry_pause_s: float = 0.02,
    ) -> None:
        self._lane = lane
        self._online = online
        self._resolver = resolver
        self._offline = offline
        self._policy = policy
        self._clock = clock
        self._wall = wall
        if len(account_key) < MIN_KEY_BYTES:
            raise ValueError(f"account_key must be at least {MIN_KEY_BYTES} random bytes")
        self._key = account_key
        if pay_attempts < 1:
            raise ValueError("pay_attempts must be at least 1")
        self._poll_s = poll_interval_s
        self._pay_attempts = pay_attempts
        self._retry_pause_s = retry_pause_s
        self._inflight: set[str] = set()
        self._abandoned: set[str] = set()  # abandoned while in flight
        self._deferred: set[str] = set()  # deferred approvals awaiting settle or abandon

    async def authorise(self, req: AuthRequest) -> Decision:
        start = self._clock()
        self._inflight.add(req.auth_id)
        try:
            if req.kind == "token":
                decision = await self._token(req, start)
            elif req.kind in KINDS:
                decision = await self._paid_online(req, start)
            else:
                decision = self._decided(req, start, False, "unsupported_kind")
        except (StoreError, ValueError) as exc:
            log.exception("authorisation failed: %s", exc, extra={"auth_id": req.auth_id})
            decision = self._decided(req, start, False, "internal_error")
        finally:
            self._inflight.discard(req.auth_id)
            abandoned = req.auth_id in self._abandoned
            self._abandoned.discard(req.auth_id)
        if abandoned and decision.approved:  # the lane will not record it: reverse, say no
            await self.abandon(req.auth_id)
            decision = replace(decision, approved=False, reason="abandoned", flags=())
        log.info(
            "decision %s %s",
            "approved" if decision.approved else "declined",
            decision.reason,
            extra={
                "auth_id": req.auth_id,
                "lane": req.lane,
                "method": decision.method,
                "payment_id": decision.payment_id,
                "latency_ms": decision.latency_ms,
                "flags": decision.flags,
            },
        )
        return decision

    async def abandon(self, auth_id: str) -> None:
        """The lane gave up on this authorisation: reverse its payment unless it is settled."""
        if auth_id in self._inflight:
            self._abandoned.add(auth_id)
        self._deferred.discard(auth_id)
        payment_id = payment_id_for(self._lane, auth_id)
        row = await self._resolver.get(payment_id)
        if row is not None and row.state not in FINAL:
            self._resolver.give_up(payment_id, "abandoned")

    async def settle(self, auth_id: str, refund_minor: int = 0) -> None:
        """The record of this authorisation is on disk: its payment must never be reversed.
        `refund_minor`: the record kept that much less than was charged (a metro exit priced
        after the answer): owed back to the payer, durably with the settle."""
        if auth_id in self._deferred:
            self._deferred.discard(auth_id)  # nothing was charged: the attempt is being voided
            return
        payment_id = payment_id_for(self._lane, auth_id)
        if await self._resolver.get(payment_id) is not None:  # tokens have no payment
            await self._resolver.settle(payment_id, refund_minor)

    async def owe_refund(self, auth_id: str, refund_minor: int) -> None:
        """Part of this approved payment will be owed back to the payer (a metro exit priced
        after the answer): written with the charged payment, before its record."""
        payment_id = payment_id_for(self._lane, auth_id)
        if auth_id not in self._deferred and await self._resolver.get(payment_id) is not None:
            await self._resolver.owe_refund(payment_id, refund_minor)

    # -- offline tokens ----------------------------------------------------------------------

    async def _token(self, req: AuthRequest, start: float) -> Decision:
        try:
            # Awaited, not sent to a thread here: the verifier checks the signature on the loop
            # and takes only its fsynced replay mark off it (one thread hop, lane/verifier.py).
            result = await self._offline.verify(req.text, self._wall())
        except Exception:  # a verifier bug must cost one decision, not the lane
            log.exception("offline verifier failed", extra={"auth_id": req.auth_id})
            return self._decided(req, start, False, "verifier_error", offline=True)
        return self._decided(
            req, start, result.approved, result.reason, ref=result.account_ref, offline=True
        )

    # -- online payments ---------------------------------------------------------------------

    async def _paid_online(self, req: AuthRequest, start: float) -> Decision:
        if start >= req.deadline:
            return self._decided(req, start, False, "timeout")
        try:
            code = online_code(req.kind, req.text, self._key)
        except CodeError as exc:
            log.info("code refused: %s", exc.detail, extra={"auth_id": req.auth_id})
            return self._decided(req, start, False, exc.reason)
        payment_id = payment_id_for(self._lane, req.auth_id)
        _, created = await self._resolver.begin(
            payment_id,
            auth_id=req.auth_id,
            lane=self._lane,
            amount_minor=req.amount_minor,
            currency=req.currency,
            method=req.kind,
            network=self._online.network_for(code.wire),
        )
        if not created:  # paid (or tried) before: never a second charge for one authorisation
            log.warning("authorisation repeated", extra={"auth_id": req.auth_id})
            return self._decided(
                req, start, False, "duplicate_auth", ref=code.account_ref, pid=payment_id
            )
        try:
            return await self._pay(req, start, payment_id, code)
        except BaseException:
            # Cancelled or failed with the outcome unknown: the resolver finds out and reverses.
            self._resolver.give_up(payment_id, "authoriser_failed")
            raise

    async def _pay(self, req: AuthRequest, start: float, pid: str, code: OnlineCode) -> Decision:
        ref = code.account_ref
        answer: AcquirerResult | None = None
        pay = PayRequest(pid, code.wire, req.amount_minor, req.currency, self._lane)
        for attempt in range(1, self._pay_attempts + 1):
            try:
                answer = await self._online.pay(pay, self._left(req))
                break
            except AcquirerTimeout:
                return self._give_up(req, start, pid, ref, "timeout")
            except AcquirerProtocolError as exc:
                log.error("acquirer answer unusable: %s", exc, extra={"payment_id": pid})
                return self._give_up(req, start, pid, ref, "acquirer_error")
            except AcquirerUnavailable as exc:
                log.warning(
                    "acquirer unavailable (attempt %d): %s",
                    attempt,
                    exc,
                    extra={"auth_id": req.auth_id, "payment_id": pid},
                )
                if attempt == self._pay_attempts or self._left(req) <= self._retry_pause_s:
                    return self._unavailable(req, start, pid, ref)
                await asyncio.sleep(self._retry_pause_s)
        assert answer is not None
        while answer.status in (PaymentStatus.PENDING, PaymentStatus.NOT_FOUND):
            await asyncio.sleep(max(0.0, min(self._poll_s, self._left(req))))
            try:
                answer = await self._online.query(pid, self._left(req))
            except AcquirerTimeout:
                return self._give_up(req, start, pid, ref, "timeout")
            except (AcquirerUnavailable, AcquirerProtocolError) as exc:  # keep polling
                log.warning("query failed: %s", exc, extra={"payment_id": pid})
                if self._left(req) <= 0:
                    return self._give_up(req, start, pid, ref, "timeout")
        if answer.status is PaymentStatus.SUCCEEDED:
            self._resolver.charged(pid, answer.acquirer_ref)
            ref = code.paid_by(answer.user_id, self._key)
            return self._decided(
                req, start, True, "approved", ref=ref, pid=pid, acq=answer.acquirer_ref
            )
        if answer.status is PaymentStatus.DECLINED:
            reason = answer.reason or "declined"
            self._resolver.declined(pid, reason)
            return self._decided(
                req, start, False, reason, ref=ref, pid=pid, acq=answer.acquirer_ref
            )
        return self._give_up(req, start, pid, ref, "reversed")  # voided under us

    def _unavailable(self, req: AuthRequest, start: float, pid: str, ref: str) -> Decision:
        self._resolver.give_up(pid, "acquirer_unavailable")  # it may have got through
        why = self._policy.take(req.amount_minor, self._clock())
        if why is not None:
            return self._decided(req, start, False, why, ref=ref, pid=pid)
        self._deferred.add(req.auth_id)
        return self._decided(
            req, start, True, "approved", ref=ref, pid=pid, offline=True, flags=("deferred",)
        )

    def _give_up(self, req: AuthRequest, start: float, pid: str, ref: str, reason: str) -> Decision:
        self._resolver.give_up(pid, reason)
        return self._decided(req, start, False, reason, ref=ref, pid=pid)

    def _left(self, req: AuthRequest) -> float:
        return req.deadline - self._clock()

    def _decided(
        self,
        req: AuthRequest,
        start: float,
        approved: bool,
        reason: str,
        *,
        ref: str | None = None,
        pid: str | None = None,
        acq: str | None = None,
        offline: bool = False,
        flags: tuple[str, ...] = (),
    ) -> Decision:
        return Decision(
            auth_id=req.auth_id,
            approved=approved,
            reason=reason,
            method=req.kind,
            account_ref=ref,
            payment_id=pid,
            acquirer_ref=acq,
            latency_ms=max(0, round((self._clock() - start) * 1000)),
            offline=offline,
            flags=flags,
        )
