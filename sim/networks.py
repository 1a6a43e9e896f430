"""The payment networks of a simulated plaza: the Alipay and WeChat Pay fakes, their keys, and
the `[auth]` that routes the lanes' codes to them (UnionPay and EMV stay on our acquirer).

The keys are made fresh for each run (RSA 2048) and written as a lane's key files would be:
private keys mode 0600, so the lanes load them through the same permission checks as in the
field. WeChat Pay runs in certificate mode: the lanes trust its first platform certificate and
hold the APIv3 key, so a rotation (the `wechatpay_rotation` fault) is learned as in the field.
Both fakes share the acquirer's everyday faults, and `servers` lists all three so a fault
injected into "the acquirer" reaches every network.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth.wechatpay_certs import MIN_REFRESH_INTERVAL_S
from sim.acquirer import AcquirerServer
from sim.acquirer_faults import Faults
from sim.alipay_fake import AlipayFake
from sim.wechatpay_fake import WeChatPayFake, make_platform_certificate

APP_ID = "2021000000000001"
MCHID, APPID = "1900000100", "wxd0000000000000"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A72"
# The simulator's WeChat Pay asks for a shorter wait before a reversal than the real one
# (15 s), so that a short run still settles every reversal it started.
SIM_REVERSE_AGE_S = 3.0


class SimNetworks:
    def __init__(self, workdir: Path, faults: Faults, seed: int) -> None:
        self._dir = workdir / "network-keys"
        self._faults = faults
        self._seed = seed
        self.alipay: AlipayFake | None = None
        self.wechatpay: WeChatPayFake | None = None

    async def start(self) -> None:
        merchant, alipay, wechat = await asyncio.to_thread(_keys, 3)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._write(merchant, "merchant")
        self._write(alipay, "alipay")
        self._write(wechat, "wechatpay")
        platform = make_platform_certificate(wechat, time.time() - 86_400)
        (self._dir / "wechatpay-platform.pem").write_bytes(platform.pem)
        alphabet = string.ascii_letters + string.digits
        apiv3 = "".join(secrets.choice(alphabet) for _ in range(32)).encode()
        apiv3_file = self._dir / "wechatpay-apiv3.key"
        apiv3_file.touch(mode=0o600)
        apiv3_file.chmod(0o600)
        apiv3_file.write_bytes(apiv3)
        self.alipay = AlipayFake(
            app_id=APP_ID,
            merchant_key=merchant.public_key(),
            alipay_key=alipay,
            faults=self._faults,
            seed=self._seed + 1,
        )
        self.wechatpay = WeChatPayFake(
            mchid=MCHID,
            appid=APPID,
            merchant_key=merchant.public_key(),
            merchant_serial=MERCHANT_SERIAL,
            platform_key=wechat,
            platform_serial=platform.serial,
            platform_certificate=platform,
            apiv3_key=apiv3,
            min_reverse_age_s=SIM_REVERSE_AGE_S,
            faults=self._faults,
            seed=self._seed + 2,
        )
        await self.alipay.start()
        await self.wechatpay.start()

    async def stop(self) -> None:
        for server in (self.alipay, self.wechatpay):
            if server is not None:
                await server.stop()

    @property
    def servers(self) -> list[AcquirerServer]:
        return [s for s in (self.alipay, self.wechatpay) if s is not None]

    def auth_config(self, speed: float) -> dict[str, Any]:
        """The `[auth]` keys that route Alipay and WeChat Pay codes to the fakes; the lanes'
        certificate retry scales with the speed, as the other waits they bound do."""
        assert self.alipay is not None and self.wechatpay is not None
        return {
            "routes": {"alipay": "alipay", "wechat": "wechatpay"},
            "alipay": {
                "gateway_url": self.alipay.gateway_url,
                "app_id": APP_ID,
                "private_key_file": str(self._dir / "merchant.key"),
                "alipay_public_key_file": str(self._dir / "alipay.pub"),
            },
            "wechatpay": {
                "base_url": self.wechatpay.url,
                "mchid": MCHID,
                "appid": APPID,
                "serial_no": MERCHANT_SERIAL,
                "private_key_file": str(self._dir / "merchant.key"),
                "platform_certificate_file": str(self._dir / "wechatpay-platform.pem"),
                "apiv3_key_file": str(self._dir / "wechatpay-apiv3.key"),
                "reverse_after_s": SIM_REVERSE_AGE_S + 2.5,  # + the longest pay call (budget)
                "certificate_retry_s": max(1.0, MIN_REFRESH_INTERVAL_S / speed),
            },
        }

    def _write(self, key: rsa.RSAPrivateKey, name: str) -> None:
        private = self._dir / f"{name}.key"
        private.touch(mode=0o600)
        private.chmod(0o600)
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (self._dir / f"{name}.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def _keys(n: int) -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(n)]
