"""The simulated acquirer's book of payments: states, single-use codes, reversals.

A payment is processed in its own task, apart from the HTTP request that created it, so a client
that gives up does not stop the charge: exactly the case the lane must survive (it must query
and reverse). PENDING turns SUCCEEDED lazily, when someone looks after `succeed_at_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Fate = Literal["SUCCEEDED", "DECLINED", "PENDING", "LATE"]


@dataclass(frozen=True)
class Outcome:
    """What will happen to a new payment, drawn when it arrives."""

    fate: Fate
    reason: str | None = None
    pending_s: float = 0.0
    late_s: float = 0.0
    late_max_wait_s: float = 30.0


@dataclass(eq=False)
class SimPayment:
    payment_id: str
    acquirer_ref: str
    request: dict[str, Any] | None  # None: a reversal arrived before any payment (a void)
    created_s: float
    status: str = "PROCESSING"  # PROCESSING (shown as PENDING) | PENDING | SUCCEEDED | ...
    reason: str | None = None
    charged: bool = False
    previous: str | None = None  # status before the reversal
    succeed_at_s: float | None = None
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    processed: asyncio.Future[None] | None = None
    refunds: dict[str, int] = field(default_factory=dict)  # refund id -> amount refunded
    payer: str = ""  # the wallet's stable id (digits), told once the payment is charged

    @property
    def refunded(self) -> int:
        return sum(self.refunds.values())

    def same_request(self, body: dict[str, Any]) -> bool:
        if self.request is None:
            return True
        return all(self.request[k] == body[k] for k in self.request)


class Ledger:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._payments: dict[str, SimPayment] = {}
        self._codes: dict[str, str] = {}  # code -> the payment_id that used it
        self._wallets: dict[str, str] = {}  # code -> the simulated wallet that showed it
        self._tasks: set[asyncio.Task[None]] = set()

    def issue_code(self, wallet: str, prefix: str = "28") -> str:
        """A fresh one-time code of `wallet` (18 digits after `prefix`'s network: 28 Alipay,
        13 WeChat Pay): the network made it, so it knows whose it is, as the real ones do."""
        digest = hashlib.sha256(f"{wallet}/{len(self._wallets)}".encode()).hexdigest()
        code = prefix + str(int(digest, 16))[: 18 - len(prefix)]
        self._wallets[code] = wallet
        return code

    def payer_of(self, code: str) -> str:
        """The payer's stable id (digits), one per wallet; a code no wallet was issued (the
        simulator's own random codes) is its own payer."""
        wallet = self._wallets.get(code, code)
        return str(int(hashlib.sha256(wallet.encode()).hexdigest(), 16))[:12]

    def refund(self, payment_id: str, refund_id: str, amount_minor: int) -> str | None:
        """Refund part of a charged payment; idempotent by `refund_id`. None when done, else
        the refusal: `not_found`, `not_refundable` (not charged, or reversed), `too_much`, or
        `conflict` (the same refund id with another amount)."""
        payment = self.get(payment_id)
        if payment is None or payment.request is None:
            return "not_found"
        if not payment.charged or payment.status != "SUCCEEDED":
            return "not_refundable"
        done = payment.refunds.get(refund_id)
        if done is not None:
            return None if done == amount_minor else "conflict"
        if amount_minor <= 0 or payment.refunded + amount_minor > payment.request["amount_minor"]:
            return "too_much"
        payment.refunds[refund_id] = amount_minor
        return None

    def get(self, payment_id: str) -> SimPayment | None:
        payment = self._payments.get(payment_id)
        if payment is not None:
            self._refresh(payment)
        return payment

    def create(self, body: dict[str, Any], outcome: Outcome, latency_s: float) -> SimPayment:
        payment_id, code = body["payment_id"], body["code"]
        payment = SimPayment(
            payment_id=payment_id,
            acquirer_ref=f"acq-{len(self._payments) + 1:08d}",
            request={k: body[k] for k in ("code", "amount_minor", "currency", "lane")},
            created_s=self._clock(),
            payer=self.payer_of(code),
        )
        if self._codes.setdefault(code, payment_id) != payment_id:
            outcome = Outcome("DECLINED", "code_used")  # single-use: the code paid before
        self._payments[payment_id] = payment
        task = asyncio.create_task(self._process(payment, outcome, latency_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        payment.processed = task
        return payment

    def reverse(self, payment_id: str) -> SimPayment:
        """Reverse (or void) a payment; idempotent. An unknown id is voided in advance, so a pay
        request still on its way is refused when it arrives."""
        payment = self.get(payment_id)
        if payment is None:
            payment = SimPayment(
                payment_id=payment_id,
                acquirer_ref=f"acq-{len(self._payments) + 1:08d}",
                request=None,
                created_s=self._clock(),
                status="REVERSED",
                reason="cancelled",
                previous="NONE",
            )
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            payment.processed = done
            self._payments[payment_id] = payment
        elif payment.status != "REVERSED":
            payment.previous = "PENDING" if payment.status == "PROCESSING" else payment.status
            payment.status = "REVERSED"
            payment.reason = "reversed"
        return payment

    def view(self, payment: SimPayment) -> dict[str, Any]:
        """The API's JSON for a payment."""
        self._refresh(payment)
        doc: dict[str, Any] = {
            "payment_id": payment.payment_id,
            "status": "PENDING" if payment.status == "PROCESSING" else payment.status,
            "acquirer_ref": payment.acquirer_ref,
        }
        if payment.reason is not None:
            doc["reason"] = payment.reason
        if payment.request is not None:
            doc["amount_minor"] = payment.request["amount_minor"]
            doc["currency"] = payment.request["currency"]
        if payment.previous is not None:
            doc["previous"] = payment.previous
        if payment.charged:
            doc["user_id"] = f"u{payment.payer}"
        if payment.refunds:
            doc["refunded_minor"] = payment.refunded
        return doc

    def report(self) -> dict[str, Any]:
        """Every payment (never the raw code) and what is charged and not reversed."""
        rows = []
        net: dict[str, int] = {}
        open_charges = []
        for payment in self._payments.values():
            self._refresh(payment)
            req = payment.request or {}
            reversed_ = payment.status == "REVERSED"
            rows.append(
                {
                    **self.view(payment),
                    "lane": req.get("lane"),
                    "charged": payment.charged,
                    "reversed": reversed_,
                    "created_s": payment.created_s,
                }
            )
            if payment.charged and not reversed_:
                open_charges.append(payment.payment_id)
                net[req["currency"]] = net.get(req["currency"], 0) + req["amount_minor"]
        return {
            "payments": rows,
            "summary": {
                "count": len(rows),
                "charged_not_reversed": open_charges,
                "net_charged_minor": net,
            },
        }

    async def cancel_processing(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _process(self, payment: SimPayment, outcome: Outcome, latency_s: float) -> None:
        await asyncio.sleep(latency_s)
        if outcome.fate == "LATE":
            # Hold the answer until the client has given up, then succeed just after.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(payment.client_gone.wait(), outcome.late_max_wait_s)
            await asyncio.sleep(outcome.late_s)
        if payment.status != "PROCESSING":
            return  # voided while we were processing: nothing is charged
        if outcome.fate == "DECLINED":
            payment.status, payment.reason = "DECLINED", outcome.reason
        elif outcome.fate == "PENDING":
            payment.status = "PENDING"
            payment.succeed_at_s = self._clock() + outcome.pending_s
        else:
            payment.status, payment.charged = "SUCCEEDED", True

    def _refresh(self, payment: SimPayment) -> None:
        if (
            payment.status == "PENDING"
            and payment.succeed_at_s is not None
            and self._clock() >= payment.succeed_at_s
        ):
            payment.status, payment.charged = "SUCCEEDED", True
