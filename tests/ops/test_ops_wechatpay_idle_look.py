"""The idle lane's look for WeChat Pay's platform certificates, in the daemon: `lane run` keeps
them up to date as a network upkeep task (lane/daemon.py, PlatformCertificates.keep), against
the WeChat Pay fake over real HTTP, with mosquitto and the device emulator. The lane's clock
(`Clocks.wall` and `Clocks.sleep`) is the test's: it moves a day on without waiting for it.

What holds: an idle lane downloads the certificates daily, and hourly once its newest
certificate expires within 10 days; a rotation made while the lane is idle is learned by its
look before any vehicle comes, so the first WeChat Pay vehicle after it pays with no download.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from ops_kit import OpsLane, running_lane
from polling import eventually

from lane.auth import wechatpay_certs as certs
from lane.runner import Clocks
from sim.broker import Mosquitto
from sim.wechatpay_fake import WeChatPayFake, make_platform_certificate

MCHID, APPID = "1900000100", "wx8888888888888888"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A72"
APIV3 = b"0123456789abcdefghijklmnopqrstuv"
DAY, HOUR = certs.DAY_S, certs.AHEAD_RETRY_S
LOOK_EVERY_S = certs.MIN_REFRESH_INTERVAL_S  # the idle look's pace: certificate_retry_s


class LaneWall:
    """The lane's wall clock: real time plus what the test moves it on by. A sleep on it ends
    once the wall has moved on by the time asked for, whoever moved it. The idle look is the
    lane's one sleep of LOOK_EVERY_S (the health loop sleeps 1 s): each such sleep begins
    after one look is done; `looks` counts them, `between_looks` says one is going on."""

    def __init__(self) -> None:
        self.ahead_s = 0.0
        self.looks = 0
        self.between_looks = False
        self._moved = asyncio.Event()

    def __call__(self) -> float:
        return time.time() + self.ahead_s

    def move(self, seconds: float) -> None:
        self.ahead_s += seconds
        self._moved.set()
        self._moved = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        look = seconds == LOOK_EVERY_S
        if look:
            self.looks += 1
            self.between_looks = True
        until = self() + seconds
        while (left := until - self()) > 0:
            moved = self._moved
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await moved.wait()
        if look:
            self.between_looks = False


@dataclass
class IdleLane:
    lane: OpsLane
    fake: WeChatPayFake
    wall: LaneWall

    async def next_look(self) -> None:
        """Move the lane's clock on by an hour and wait for the look that follows."""
        await self.move(HOUR)

    async def move(self, seconds: float) -> None:
        """Move the lane's clock on, once it is idle between looks, and wait for the next look
        (which the lane, idle, makes)."""
        runner = self.lane.daemon.runner
        await eventually(
            lambda: self.wall.between_looks and runner.idle(), what="the lane idle between looks"
        )
        looks = self.wall.looks
        self.wall.move(seconds)
        await eventually(lambda: self.wall.looks > looks, what="the idle lane's next look")
        assert self.lane.daemon.runner.idle()

    async def downloads(self, count: int) -> None:
        await eventually(
            lambda: self.fake.certificate_downloads == count,
            what=f"{count} certificate downloads, not {self.fake.certificate_downloads}",
        )


@pytest.fixture(scope="module")
def rsa_keys() -> dict[str, rsa.RSAPrivateKey]:
    """merchant (ours), platform (WeChat Pay's), rotated (its next)."""
    return {n: rsa.generate_private_key(65537, 2048) for n in ("merchant", "platform", "rotated")}


def _secret(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def idle_lane(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, rsa_keys: dict[str, rsa.RSAPrivateKey]
) -> Callable[[float], contextlib.AbstractAsyncContextManager[IdleLane]]:
    """`async with idle_lane(lifetime_s) as s`: a lane routing WeChat Pay codes to the fake in
    certificate mode, trusting the fake's first certificate, which expires `lifetime_s` after
    it was made (a day ago)."""

    @contextlib.asynccontextmanager
    async def make(lifetime_s: float) -> AsyncIterator[IdleLane]:
        wall = LaneWall()
        first = make_platform_certificate(rsa_keys["platform"], time.time() - DAY, lifetime_s)
        fake = WeChatPayFake(
            mchid=MCHID,
            appid=APPID,
            merchant_key=rsa_keys["merchant"].public_key(),
            merchant_serial=MERCHANT_SERIAL,
            platform_key=rsa_keys["platform"],
            platform_serial=first.serial,
            platform_certificate=first,
            apiv3_key=APIV3,
            wall=wall,  # WeChat Pay's clock and the lane's agree, however far the test moves them
            seed=8,
        )
        await fake.start()
        keys = tmp_path / "keys"
        keys.mkdir()
        pem = rsa_keys["merchant"].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (keys / "platform.pem").write_bytes(first.pem)
        wechatpay = {
            "base_url": fake.url,
            "mchid": MCHID,
            "appid": APPID,
            "serial_no": MERCHANT_SERIAL,
            "private_key_file": _secret(keys / "merchant.key", pem),
            "platform_certificate_file": str(keys / "platform.pem"),
            "apiv3_key_file": _secret(keys / "apiv3.key", APIV3),
        }
        extra = {
            "auth": {"routes": {"wechat": "wechatpay"}, "wechatpay": wechatpay},
            "fares": {"currency": "CNY"},  # WeChat Pay charges in yuan
        }
        clocks = Clocks(wall=wall, sleep=wall.sleep)
        lane_up = running_lane(tmp_path, mosquitto, lane_id, extra=extra, clocks=clocks)
        try:
            async with lane_up as lane:
                # Started: the device answered the lane's query on connecting.
                await eventually(lambda: lane.device.queries and lane.daemon.runner.idle())
                yield IdleLane(lane, fake, wall)
        finally:
            await fake.stop()

    return make


async def test_an_idle_lane_looks_daily(
    idle_lane: Callable[[float], contextlib.AbstractAsyncContextManager[IdleLane]],
) -> None:
    async with idle_lane(5 * 365 * DAY) as s:
        await s.downloads(1)  # never looked: the first look downloads
        for _ in range(23):  # hour by hour through the day: nothing due
            await s.next_look()
            assert s.fake.certificate_downloads == 1
        await s.move(HOUR + 1)  # a day since the last download
        await s.downloads(2)
        await s.next_look()
        assert s.fake.certificate_downloads == 2
        assert "wechatpay_certificates" not in s.lane.daemon.runner.alarms


async def test_an_idle_lane_looks_hourly_once_its_newest_certificate_expires_within_10_days(
    idle_lane: Callable[[float], contextlib.AbstractAsyncContextManager[IdleLane]],
) -> None:
    async with idle_lane(5 * DAY) as s:  # expires in 4 days
        await s.downloads(1)
        await s.move(HOUR / 2)  # looked half an hour ago: not yet
        assert s.fake.certificate_downloads == 1
        await s.move(HOUR / 2 + 1)
        await s.downloads(2)
        await s.next_look()  # a look later (the clock moved by the test's hour, plus real time)
        await s.downloads(3)
        assert "wechatpay_certificates" not in s.lane.daemon.runner.alarms


async def test_a_rotation_while_idle_is_learned_before_the_next_vehicle(
    idle_lane: Callable[[float], contextlib.AbstractAsyncContextManager[IdleLane]],
    rsa_keys: dict[str, rsa.RSAPrivateKey],
) -> None:
    async with idle_lane(5 * 365 * DAY) as s:
        await s.downloads(1)
        new = s.fake.rotate_certificate(rsa_keys["rotated"])
        assert s.fake.platform_serial == new.serial  # it signs every answer from now on
        await s.move(DAY)  # the daily look
        await s.downloads(2)
        # The first WeChat Pay vehicle after the rotation: its answer names the new
        # certificate, which the lane has; no download inside its budget.
        assert await s.lane.serve("wechat") == "barrier_opened"
        assert s.fake.certificate_downloads == 2
        assert [p["charged"] for p in s.fake.payments()] == [True]
        assert "wechatpay_certificates" not in s.lane.daemon.runner.alarms
