"""The authoriser's offline path (tokens, no network) and the floor-limit policy (pure)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lane.auth.acquirer import AcquirerClient
from lane.auth.authoriser import Authoriser, AuthRequest, OfflineResult
from lane.auth.policy import OfflinePolicy
from lane.auth.resolver import ResolutionStore, Resolver
from sim.broker import free_port

KEY = b"lane-secret-for-tests-0123456789"
WALL = 1_790_000_000.0


class Tokens:
    """Stands in for the token helper's verifier (another part): approves tokens saying 'ok'."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    async def verify(self, text: str, now_unix: float) -> OfflineResult:
        self.seen.append((text, now_unix))
        if text == "boom":
            raise RuntimeError("verifier bug")
        if text.endswith("ok"):
            return OfflineResult(True, "approved", "acct:42", "tok-1")
        return OfflineResult(False, "expired", None, "tok-2")


@pytest.fixture
async def offline_lane(tmp_path: Path) -> AsyncIterator[tuple[Authoriser, Tokens, Resolver]]:
    # Nothing listens on this port: any network use would show up as acquirer_unavailable.
    async with AcquirerClient(f"http://127.0.0.1:{free_port()}") as client:
        resolver = Resolver(ResolutionStore(tmp_path / "r.db"), client)
        tokens = Tokens()
        auth = Authoriser(
            "p01/l01",
            client,
            resolver,
            tokens,
            OfflinePolicy(),
            time.monotonic,
            lambda: WALL,
            account_key=KEY,
        )
        yield auth, tokens, resolver
        await resolver.stop()


def token_request(text: str, auth_id: str = "a1") -> AuthRequest:
    return AuthRequest(auth_id, "p01/l01", text, "token", 0, "CNY", time.monotonic() + 0.3)


async def test_token_is_decided_offline(
    offline_lane: tuple[Authoriser, Tokens, Resolver],
) -> None:
    auth, tokens, resolver = offline_lane
    decision = await auth.authorise(token_request("LT1:ok"))
    assert (decision.approved, decision.reason, decision.offline) == (True, "approved", True)
    assert (decision.method, decision.account_ref, decision.payment_id) == (
        "token",
        "acct:42",
        None,
    )
    assert tokens.seen == [("LT1:ok", WALL)]  # verified against the wall clock
    await auth.settle("a1")  # no payment behind a token: nothing to do
    await auth.abandon("a1")
    assert await resolver.open_payments() == []


async def test_token_refusal_keeps_its_reason(
    offline_lane: tuple[Authoriser, Tokens, Resolver],
) -> None:
    auth, _, _ = offline_lane
    decision = await auth.authorise(token_request("LT1:old"))
    assert (decision.approved, decision.reason, decision.offline) == (False, "expired", True)


async def test_verifier_bug_costs_one_decision(
    offline_lane: tuple[Authoriser, Tokens, Resolver],
) -> None:
    auth, _, _ = offline_lane
    decision = await auth.authorise(token_request("boom"))
    assert (decision.approved, decision.reason) == (False, "verifier_error")
    assert (await auth.authorise(token_request("LT1:ok", "a2"))).approved


def test_request_refuses_float_money() -> None:
    with pytest.raises(ValueError, match="minor units"):
        AuthRequest("a", "l", "t", "token", 4.5, "CNY", 0.0)  # type: ignore[arg-type]


async def test_short_account_key_is_refused(tmp_path: Path) -> None:
    async with AcquirerClient("http://127.0.0.1:9") as client:
        resolver = Resolver(ResolutionStore(tmp_path / "r.db"), client)
        with pytest.raises(ValueError, match="account_key"):
            Authoriser(
                "l",
                client,
                resolver,
                Tokens(),
                OfflinePolicy(),
                time.monotonic,
                time.time,
                account_key=b"short",
            )
        await resolver.stop()


# -- the floor-limit policy, pure: time is a parameter --------------------------------------


def test_deny_policy_defers_nothing() -> None:
    policy = OfflinePolicy("deny", floor_limit_minor=1000, hourly_limit_minor=10_000)
    assert policy.take(1, now=0.0) == "acquirer_unavailable"
    assert policy.spent(0.0) == 0


def test_floor_limit_per_vehicle() -> None:
    policy = OfflinePolicy("floor", floor_limit_minor=500, hourly_limit_minor=10_000)
    assert policy.take(500, now=0.0) is None
    assert policy.take(501, now=1.0) == "over_floor_limit"
    assert policy.spent(1.0) == 500


def test_hourly_limit_is_a_sliding_window() -> None:
    policy = OfflinePolicy("floor", floor_limit_minor=500, hourly_limit_minor=1000)
    assert policy.take(400, now=0.0) is None
    assert policy.take(400, now=600.0) is None
    assert policy.take(400, now=1200.0) == "offline_limit_reached"
    assert policy.refusal(200, now=1200.0) is None  # 1000 exactly is still within the limit
    assert policy.take(400, now=3600.0) is None  # the first 400 has left the window
    assert policy.spent(3600.0) == 800
    assert policy.take(400, now=3601.0) == "offline_limit_reached"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "maybe"},
        {"mode": "floor", "floor_limit_minor": 4.5},
        {"mode": "floor", "hourly_limit_minor": -1},
    ],
)
def test_policy_settings_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        OfflinePolicy(**kwargs)  # type: ignore[arg-type]
