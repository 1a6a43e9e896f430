"""Keys for the payment networks' adapters and fakes: made once per session (RSA is slow)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth.acquirer import Acquirer
from lane.auth.alipay import AlipayClient
from lane.auth.authoriser import Authoriser, AuthRequest, OfflineResult
from lane.auth.policy import OfflinePolicy
from lane.auth.resolver import PaymentState, ResolutionStore, Resolver
from lane.auth.wechatpay import WeChatPayClient
from lane.auth.wechatpay_trust import FixedPlatformKey
from lane.core.backoff import Backoff
from sim.acquirer import AcquirerServer
from sim.alipay_fake import AlipayFake
from sim.wechatpay_fake import WeChatPayFake


@dataclass(frozen=True)
class KeyPair:
    private: rsa.RSAPrivateKey

    @property
    def public(self) -> rsa.RSAPublicKey:
        return self.private.public_key()

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """(private key file 0600, public key file) under `directory`."""
        priv = directory / f"{name}.key"
        priv.write_bytes(
            self.private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        priv.chmod(0o600)
        pub = directory / f"{name}.pub"
        pub.write_bytes(
            self.public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return priv, pub


@pytest.fixture(scope="session")
def network_keys() -> dict[str, KeyPair]:
    """merchant (ours), alipay, wechat (the platform), an impostor's, and the platform's next
    (its certificate rotated)."""
    names = ("merchant", "alipay", "wechat", "impostor", "rotated")
    return {
        n: KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048)) for n in names
    }


KEY = b"lane-secret-for-tests-0123456789"


class NoTokens:
    async def verify(self, text: str, now_unix: float) -> OfflineResult:
        raise AssertionError("network tests verify no tokens")


@dataclass
class NetLane:
    """An authoriser and a resolver on a real SQLite file, paying through `client`."""

    lane: str
    client: Acquirer
    resolver: Resolver
    auth: Authoriser
    fake: AcquirerServer

    def request(self, code: str, amount: int = 450, budget_s: float = 0.4) -> AuthRequest:
        return AuthRequest(
            auth_id=f"auth-{uuid.uuid4().hex[:12]}",
            lane=self.lane,
            text=code,
            kind="payment_code",
            amount_minor=amount,
            currency="CNY",
            deadline=time.monotonic() + budget_s,
        )

    async def final(self, payment_id: str | None) -> PaymentState:
        assert payment_id is not None
        return await asyncio.wait_for(self.resolver.wait_final(payment_id), 10)

    async def pays_once(self, code: str) -> None:
        """`code` is approved, settled, and charged once at the acquirer."""
        req = self.request(code)
        decision = await self.auth.authorise(req)
        assert (decision.approved, decision.reason) == (True, "approved")
        await self.auth.settle(req.auth_id)
        assert await self.final(decision.payment_id) is PaymentState.SETTLED
        assert len(self.fake.payments()) == 1

    def charged_not_reversed(self) -> list[str]:
        return [p["payment_id"] for p in self.fake.payments() if p["charged"] and not p["reversed"]]


NetLaneFactory = Callable[..., AbstractAsyncContextManager[NetLane]]


@pytest.fixture
def net_lane(tmp_path: Path) -> NetLaneFactory:
    """`net_lane(client, fake, store=, resolving=)`: `store` is the payments file (a new one
    by default); `resolving=False` leaves the resolver unstarted, as a lane that dies before
    it resolves anything."""

    @contextlib.asynccontextmanager
    async def make(
        client: Acquirer, fake: AcquirerServer, *, store: Path | None = None, resolving: bool = True
    ) -> AsyncIterator[NetLane]:
        resolver = Resolver(
            ResolutionStore(store or tmp_path / f"resolve-{uuid.uuid4().hex[:6]}.db"),
            client,
            backoff=Backoff(first_s=0.01, max_s=0.05),
            request_timeout_s=0.5,
        )
        if resolving:
            await resolver.start()
        auth = Authoriser(
            "p07/l03",
            client,
            resolver,
            NoTokens(),
            OfflinePolicy("deny"),
            time.monotonic,
            time.time,
            account_key=KEY,
            poll_interval_s=0.02,
        )
        try:
            yield NetLane("p07/l03", client, resolver, auth, fake)
        finally:
            await resolver.stop()

    return make


# -- the networks' fakes with a client each ---------------------------------------------------

ALIPAY_APP_ID = "2021000000000001"
MCHID, APPID = "1900000100", "wx8888888888888888"
MERCHANT_SERIAL, PLATFORM_SERIAL = "5157F09EFDC096DE15EBE81A47057A72", "PUB_KEY_ID_0000000001"


@pytest.fixture
def alipay_gateway(network_keys: dict[str, KeyPair]) -> Callable[..., Any]:
    """`async with alipay_gateway(signer=, merchant=) as (fake, client)`: the fake signs with
    `signer`'s key and checks the merchant key; the client signs with `merchant`'s."""

    @contextlib.asynccontextmanager
    async def make(
        *, signer: str = "alipay", merchant: str = "merchant", seed: int = 3
    ) -> AsyncIterator[tuple[AlipayFake, AlipayClient]]:
        keys = network_keys
        fake = AlipayFake(
            app_id=ALIPAY_APP_ID,
            merchant_key=keys["merchant"].public,
            alipay_key=keys[signer].private,
            seed=seed,
        )
        await fake.start()
        client = AlipayClient(
            fake.gateway_url, ALIPAY_APP_ID, keys[merchant].private, keys["alipay"].public
        )
        try:
            yield fake, client
        finally:
            await client.close()
            await fake.stop()

    return make


@pytest.fixture
def wechat_gateway(network_keys: dict[str, KeyPair]) -> Callable[..., Any]:
    """`async with wechat_gateway(...) as (fake, client)`, as alipay_gateway."""

    @contextlib.asynccontextmanager
    async def make(
        *,
        signer: str = "wechat",
        merchant: str = "merchant",
        min_reverse_age_s: float = 0.5,
        reverse_after_s: float = 0.9,
        client_skew_s: float = 0.0,
        seed: int = 4,
    ) -> AsyncIterator[tuple[WeChatPayFake, WeChatPayClient]]:
        keys = network_keys
        fake = WeChatPayFake(
            mchid=MCHID,
            appid=APPID,
            merchant_key=keys["merchant"].public,
            merchant_serial=MERCHANT_SERIAL,
            platform_key=keys[signer].private,
            platform_serial=PLATFORM_SERIAL,
            min_reverse_age_s=min_reverse_age_s,
            seed=seed,
        )
        await fake.start()
        client = WeChatPayClient(
            fake.url,
            mchid=MCHID,
            appid=APPID,
            serial_no=MERCHANT_SERIAL,
            private_key=keys[merchant].private,
            platform=FixedPlatformKey(PLATFORM_SERIAL, keys["wechat"].public),
            reverse_after_s=reverse_after_s,
            wall=lambda: time.time() + client_skew_s,
        )
        try:
            yield fake, client
        finally:
            await client.close()
            await fake.stop()

    return make


@pytest.fixture
def network_ids() -> dict[str, str]:
    """The merchant ids the gateway fixtures' fakes expect (for config files)."""
    return {
        "app_id": ALIPAY_APP_ID,
        "mchid": MCHID,
        "appid": APPID,
        "serial_no": MERCHANT_SERIAL,
        "platform_serial": PLATFORM_SERIAL,
    }
