"""WeChat Pay certificate mode against the fake over real HTTP: a rotation mid-run is learned
with one download, the download is kept for the next start, a download that cannot be trusted
refuses the answers and raises `wechatpay_certificates`, which clears once a download works;
the idle lane's look ahead of expiry; the config and check-config."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from polling import eventually

from lane.auth import netkeys
from lane.auth import wechatpay_certs as certs
from lane.auth.acquirer import AcquirerProtocolError
from lane.auth.networks import NetworkKeys, WatchedAcquirer, build_acquirer
from lane.auth.resolver import PaymentState
from lane.auth.wechatpay import WeChatPayClient
from lane.auth.wechatpay_trust import (
    ALARM,
    STORE_FILE,
    CertificateFiles,
    Fetch,
    PlatformCertificates,
    Unlearned,
    load_certificate_files,
)
from lane.checks import check_config
from lane.config import ConfigError, parse_config
from sim.wechatpay_fake import CertificateFault, WeChatPayFake, make_platform_certificate

Keys = dict[str, Any]  # name -> conftest.KeyPair
MCHID, APPID = "1900000100", "wx8888888888888888"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A72"
APIV3 = b"0123456789abcdefghijklmnopqrstuv"
DAY = certs.DAY_S
_codes = itertools.count(134567890123400000)


def code() -> str:
    return str(next(_codes))


@dataclass
class Wall:
    """The wall clock: real time plus what the test moves it on by."""

    ahead_s: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead_s


@dataclass
class Setup:
    fake: WeChatPayFake
    client: WeChatPayClient
    trust: PlatformCertificates
    wall: Wall
    state: Path
    alarms: list[tuple[str, str | None]] = field(default_factory=list)

    def alarm_text(self) -> str | None:
        """The certificate alarm's text while raised, None once cleared (or never raised)."""
        mine = [m for c, m in self.alarms if c == ALARM]
        return mine[-1] if mine else None


def write_files(tmp: Path, platform: certs.PlatformCert) -> tuple[Path, Path]:
    cert_file = tmp / "wechatpay-platform.pem"
    cert_file.write_bytes(platform.pem)
    key_file = tmp / "apiv3.key"
    key_file.write_bytes(APIV3 + b"\n")  # as an editor saves it
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture
def cert_gateway(tmp_path: Path, network_keys: Keys) -> Any:
    """`async with cert_gateway(lifetime_s=) as setup`: the fake in certificate mode and a
    client trusting the fake's first certificate, its downloads kept in setup.state."""

    @contextlib.asynccontextmanager
    async def make(lifetime_s: float = 5 * 365 * DAY) -> AsyncIterator[Setup]:
        wall = Wall()
        first = make_platform_certificate(
            network_keys["wechat"].private, time.time() - DAY, lifetime_s
        )
        fake = WeChatPayFake(
            mchid=MCHID,
            appid=APPID,
            merchant_key=network_keys["merchant"].public,
            merchant_serial=MERCHANT_SERIAL,
            platform_key=network_keys["wechat"].private,
            platform_serial=first.serial,
            platform_certificate=first,
            apiv3_key=APIV3,
            min_reverse_age_s=0.3,
            wall=wall,  # WeChat Pay's clock and the lane's agree, however far a test moves them
            seed=6,
        )
        await fake.start()
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        files = load_certificate_files(*write_files(tmp_path, first), state)
        alarms: list[tuple[str, str | None]] = []
        trust = PlatformCertificates(files, wall=wall, alarm=lambda c, m: alarms.append((c, m)))
        client = WeChatPayClient(
            fake.url,
            mchid=MCHID,
            appid=APPID,
            serial_no=MERCHANT_SERIAL,
            private_key=network_keys["merchant"].private,
            platform=trust,
            reverse_after_s=0.5,
            wall=wall,
        )
        try:
            yield Setup(fake, client, trust, wall, state, alarms)
        finally:
            await client.close()
            await fake.stop()

    return make


async def pay(lane: Any) -> Any:
    return await lane.auth.authorise(lane.request(code(), budget_s=3.0))


async def test_a_rotation_mid_run_is_learned_with_one_download(
    cert_gateway: Any, net_lane: Any, network_keys: Keys
) -> None:
    async with cert_gateway() as s, net_lane(s.client, s.fake) as lane:
        assert (await pay(lane)).approved
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        assert s.fake.platform_serial == new.serial
        decision = await pay(lane)  # its answer is signed by the new certificate
        assert (decision.approved, decision.reason) == (True, "approved")
        assert s.fake.certificate_downloads == 1
        assert (await pay(lane)).approved and s.fake.certificate_downloads == 1
        assert s.alarms == []
        kept = certs.certs_from_pem((s.state / STORE_FILE).read_bytes())
        assert new.serial in [c.serial for c in kept]


async def test_a_rotation_just_after_the_idle_look_is_learned_at_once(
    cert_gateway: Any, net_lane: Any, network_keys: Keys
) -> None:
    async with cert_gateway() as s, net_lane(s.client, s.fake) as lane:
        assert await s.trust.tick(s.client.download_certificates, 2.0) is certs.RefreshReason.DAILY
        s.fake.rotate_certificate(network_keys["rotated"].private)
        assert (await pay(lane)).approved  # the look a moment ago does not hold it back
        assert s.fake.certificate_downloads == 2 and s.alarms == []


async def test_a_restart_needs_no_download(
    cert_gateway: Any, net_lane: Any, network_keys: Keys, tmp_path: Path
) -> None:
    async with cert_gateway() as s:
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        async with net_lane(s.client, s.fake) as lane:
            assert (await pay(lane)).approved
        # The next start reads what the first downloaded: the new serial is trusted at once.
        files = load_certificate_files(
            tmp_path / "wechatpay-platform.pem", tmp_path / "apiv3.key", s.state
        )
        again = PlatformCertificates(files, wall=s.wall)
        assert again.key_for(new.serial, s.wall()) is not None
        client = WeChatPayClient(
            s.fake.url,
            mchid=MCHID,
            appid=APPID,
            serial_no=MERCHANT_SERIAL,
            private_key=network_keys["merchant"].private,
            platform=again,
            wall=s.wall,
        )
        async with client, net_lane(client, s.fake) as lane:
            assert (await pay(lane)).approved
        assert s.fake.certificate_downloads == 1


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (CertificateFault.TAMPERED, "does not decrypt with the APIv3 key"),
        (CertificateFault.BAD_SIGNATURE, "bad signature"),
        (CertificateFault.UNAVAILABLE, "GET /v3/certificates: HTTP 500"),
    ],
)
async def test_a_download_that_cannot_be_trusted_refuses_alarms_and_clears(
    cert_gateway: Any, net_lane: Any, network_keys: Keys, fault: CertificateFault, says: str
) -> None:
    async with cert_gateway() as s, net_lane(s.client, s.fake) as lane:
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        s.fake.certificate_fault = fault
        refused = await pay(lane)
        # Safe: nothing is approved on an answer the lane cannot verify; the payment is in doubt.
        assert (refused.approved, refused.reason) == (False, "acquirer_error")
        text = s.alarm_text()
        assert text is not None and new.serial in text and "refused" in text
        assert says in text and "apiv3_key_file" in text
        downloads = s.fake.certificate_downloads
        # Within the minute the lane does not download again, however many answers it refuses.
        refused_too = await pay(lane)
        assert not refused_too.approved and s.fake.certificate_downloads == downloads
        # The cause is gone: a minute later the next answer brings one download, and it clears.
        s.fake.certificate_fault = CertificateFault.NONE
        s.wall.ahead_s += certs.MIN_REFRESH_INTERVAL_S + 1
        assert (await pay(lane)).approved
        assert s.alarm_text() is None and s.alarms[-1] == (ALARM, None), s.alarms
        # The payments left in doubt are resolved (never recorded, so reversed).
        for doubt in (refused, refused_too):
            assert await lane.final(doubt.payment_id) is PaymentState.REVERSED


async def test_a_download_signed_by_a_certificate_not_yet_trusted_is_refused(
    cert_gateway: Any, network_keys: Keys
) -> None:
    """The bootstrap rule: a lane that missed the whole overlap cannot learn the new
    certificate from a download that only the new certificate vouches for."""
    async with cert_gateway() as s:
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        s.fake.retire_old_certificates()
        with pytest.raises(AcquirerProtocolError, match="does not trust"):
            await s.client.query("pay_" + "a" * 32, 2.0)
        text = s.alarm_text()
        assert text is not None and "not trusted yet" in text
        # What the health message and the console keep of it still says what to do.
        assert "platform_certificate_file" in text[:256]
        assert s.trust.key_for(new.serial, s.wall()) is None


async def test_a_serial_the_download_does_not_list_stays_refused(cert_gateway: Any) -> None:
    async with cert_gateway() as s:
        await s.trust.learn("ABCDEF0123", s.client.download_certificates, 2.0)
        assert s.fake.certificate_downloads == 1
        text = s.alarm_text()
        assert text is not None and "ABCDEF0123" in text and "does not list it" in text
        assert s.trust.key_for("ABCDEF0123", s.wall()) is None


async def test_the_idle_lane_downloads_ahead_of_expiry(
    cert_gateway: Any, network_keys: Keys
) -> None:
    async with cert_gateway(lifetime_s=5 * DAY) as s:  # the first certificate expires in 4 days
        fetch = s.client.download_certificates
        assert await s.trust.tick(fetch, 2.0) is certs.RefreshReason.EXPIRING
        assert s.fake.certificate_downloads == 1
        assert await s.trust.tick(fetch, 2.0) is None  # looked just now
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        s.fake.certificate_fault = CertificateFault.UNAVAILABLE
        s.wall.ahead_s += certs.AHEAD_RETRY_S + 1
        assert await s.trust.tick(fetch, 2.0) is certs.RefreshReason.EXPIRING
        text = s.alarm_text()
        assert text is not None and "run out" in text
        s.fake.certificate_fault = CertificateFault.NONE
        s.wall.ahead_s += certs.AHEAD_RETRY_S + 1
        assert await s.trust.tick(fetch, 2.0) is certs.RefreshReason.EXPIRING
        assert s.trust.key_for(new.serial, s.wall()) is not None and s.alarm_text() is None
        # The new certificate holds for years: the next look is the daily one.
        s.wall.ahead_s += certs.AHEAD_RETRY_S + 1
        assert await s.trust.tick(fetch, 2.0) is None


async def test_the_idle_lane_tries_a_failed_download_again_and_clears(
    cert_gateway: Any, network_keys: Keys
) -> None:
    """An answer's serial could not be learned: the idle lane's look tries again once a
    retry is allowed, so the alarm clears with no WeChat Pay traffic once the cause is gone."""
    async with cert_gateway() as s:
        fetch = s.client.download_certificates
        assert await s.trust.tick(fetch, 2.0) is certs.RefreshReason.DAILY
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        s.fake.certificate_fault = CertificateFault.TAMPERED
        await s.trust.learn(new.serial, fetch, 2.0)  # an answer named it
        text = s.alarm_text()
        assert text is not None and new.serial in text
        assert await s.trust.tick(fetch, 2.0) is None  # no faster than an answer may
        s.fake.certificate_fault = CertificateFault.NONE
        s.wall.ahead_s += certs.MIN_REFRESH_INTERVAL_S + 1
        assert await s.trust.tick(fetch, 2.0) is certs.RefreshReason.UNKNOWN_SERIAL
        assert s.trust.key_for(new.serial, s.wall()) is not None and s.alarm_text() is None
        assert s.fake.certificate_downloads == 3
        s.wall.ahead_s += certs.MIN_REFRESH_INTERVAL_S + 1
        assert await s.trust.tick(fetch, 2.0) is None  # nothing left to retry


async def test_a_download_stalled_mid_body_is_refused_in_time_alarmed_and_retried(
    cert_gateway: Any, network_keys: Keys
) -> None:
    async with cert_gateway() as s:
        fetch = s.client.download_certificates
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        s.fake.update_faults(slow_body_rate=1.0)  # headers at once, then a byte a second
        async with asyncio.timeout(3.0):  # the call's 0.3 s, not the body's minutes
            await s.trust.learn(new.serial, fetch, 0.3)
        text = s.alarm_text()
        assert text is not None and new.serial in text and "no answer within" in text, text
        s.fake.update_faults(slow_body_rate=0.0)
        s.wall.ahead_s += certs.MIN_REFRESH_INTERVAL_S + 1
        assert await s.trust.tick(fetch, 2.0) is certs.RefreshReason.UNKNOWN_SERIAL
        assert s.trust.key_for(new.serial, s.wall()) is not None and s.alarm_text() is None


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (CertificateFault.STALLED, ("certificate download stalls", "no answer within")),
        (CertificateFault.UNAVAILABLE, ("certificate download fails", "HTTP 500")),
    ],
)
async def test_a_stalled_download_says_so_on_the_network_alarm_and_clears_when_it_answers(
    cert_gateway: Any,
    net_lane: Any,
    network_keys: Keys,
    fault: CertificateFault,
    says: tuple[str, str],
) -> None:
    """`payment_wechatpay` names the stalled (or failing: 5xx) download, not the lane's keys,
    and clears at the first download answered (the idle look here), before any payment asks
    again."""
    async with cert_gateway() as s:
        payment: list[tuple[str, str | None]] = []
        watched = WatchedAcquirer(s.client, "wechatpay", lambda c, m: payment.append((c, m)))
        async with net_lane(watched, s.fake, resolving=False) as lane:
            s.fake.rotate_certificate(network_keys["rotated"].private)
            s.fake.certificate_fault = fault  # only the download stalls or fails
            async with asyncio.timeout(3.0):  # the vehicle's budget, not the body's minutes
                refused = await lane.auth.authorise(lane.request(code(), budget_s=0.5))
            assert (refused.approved, refused.reason) == (False, "acquirer_error")  # safe
            ((alarm, text),) = payment
            assert alarm == "payment_wechatpay" and text is not None
            assert all(words in text for words in says), text
            assert "check its keys" not in text
            refused_too = await lane.auth.authorise(lane.request(code(), budget_s=0.5))
            assert not refused_too.approved and len(payment) == 1  # one alarm, not one a vehicle
            s.fake.certificate_fault = CertificateFault.NONE
            s.wall.ahead_s += certs.MIN_REFRESH_INTERVAL_S + 1
            fetch = s.client.download_certificates
            assert await s.trust.tick(fetch, 2.0) is certs.RefreshReason.UNKNOWN_SERIAL
            assert payment[-1] == ("payment_wechatpay", None), payment
            assert (await pay(lane)).approved and len(payment) == 2


class HeldLearn(PlatformCertificates):
    """The real certificates, whose `learn` waits, once its download is over, until the test
    lets it return: a download is answered between the moment a call gave up on one and the
    moment its network alarm is told."""

    def __init__(self, files: CertificateFiles, wall: Wall) -> None:
        super().__init__(files, wall=wall)
        self.learned = asyncio.Event()
        self.release = asyncio.Event()

    async def learn(self, serial: str, fetch: Fetch, timeout_s: float) -> Unlearned | None:
        unlearned = await super().learn(serial, fetch, timeout_s)
        self.learned.set()
        await self.release.wait()
        return unlearned


async def test_a_download_answered_before_a_call_tells_its_stall_clears_it_all_the_same(
    tmp_path: Path, cert_gateway: Any, net_lane: Any, network_keys: Keys
) -> None:
    """The call's stall, told after a later download was answered, is old: it raised
    `payment_wechatpay` again after the answer had cleared it, and an idle lane kept it until
    WeChat Pay's next answer."""
    async with cert_gateway() as s:
        files = load_certificate_files(
            tmp_path / "wechatpay-platform.pem", tmp_path / "apiv3.key", s.state
        )
        s.client.platform = held = HeldLearn(files, s.wall)
        payment: list[tuple[str, str | None]] = []
        watched = WatchedAcquirer(s.client, "wechatpay", lambda c, m: payment.append((c, m)))
        async with net_lane(watched, s.fake, resolving=False) as lane:
            s.fake.rotate_certificate(network_keys["rotated"].private)
            s.fake.certificate_fault = CertificateFault.UNAVAILABLE
            call = asyncio.create_task(lane.auth.authorise(lane.request(code(), budget_s=30.0)))
            await eventually(held.learned.is_set, what="the call's download failed")
            # Answered, but of no use for the serial: the answer stays refused, only the
            # download no longer goes unanswered.
            s.fake.certificate_fault = CertificateFault.TAMPERED
            s.wall.ahead_s += certs.MIN_REFRESH_INTERVAL_S + 1
            fetch = s.client.download_certificates
            assert await held.tick(fetch, 2.0) is certs.RefreshReason.UNKNOWN_SERIAL
            held.release.set()
            refused = await call
            assert (refused.approved, refused.reason) == (False, "acquirer_error")  # safe
            assert payment == [], payment  # the stall ended before the call told it


async def test_an_idle_look_stalled_mid_body_holds_no_payment_past_its_budget(
    cert_gateway: Any, network_keys: Keys
) -> None:
    """The idle lane's look has 10 s; an answer naming a new certificate meanwhile has what is
    left of its vehicle's budget, and does not wait the look out."""
    async with cert_gateway() as s:
        fetch = s.client.download_certificates
        s.fake.update_faults(slow_body_rate=1.0)
        look = asyncio.create_task(s.trust.tick(fetch, 2.0))
        await eventually(lambda: s.fake.certificate_downloads == 1, within=2.0, what="the look")
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        await s.trust.learn(new.serial, fetch, 0.3)
        assert not look.done()  # the answer's call ended while the look still waited
        assert await look is certs.RefreshReason.DAILY  # its failure is only logged
        s.fake.update_faults(slow_body_rate=0.0)
        s.wall.ahead_s += certs.MIN_REFRESH_INTERVAL_S + 1
        await s.trust.learn(new.serial, fetch, 2.0)  # the next answer naming it
        assert s.trust.key_for(new.serial, s.wall()) is not None and s.alarm_text() is None


async def test_a_failed_daily_look_is_no_alarm(cert_gateway: Any) -> None:
    async with cert_gateway() as s:
        s.fake.certificate_fault = CertificateFault.UNAVAILABLE
        reason = await s.trust.tick(s.client.download_certificates, 2.0)
        assert reason is certs.RefreshReason.DAILY and s.alarms == []


async def test_expired_certificates_are_dropped(cert_gateway: Any, network_keys: Keys) -> None:
    async with cert_gateway() as s:
        new = s.fake.rotate_certificate(network_keys["rotated"].private)
        await s.trust.tick(s.client.download_certificates, 2.0)
        first = s.trust.trusted.certs[0]
        assert len(s.trust.trusted.certs) == 2
        s.wall.ahead_s = first.not_after - time.time() + 1
        assert s.trust.key_for(first.serial, s.wall()) is None
        s.fake.retire_old_certificates()
        await s.trust.tick(s.client.download_certificates, 2.0)
        assert s.trust.trusted.serials() == [new.serial]


# -- wiring and config -----------------------------------------------------------------------


def wechat_config(tmp: Path, keys: Keys, **wechatpay: Any) -> dict[str, Any]:
    merchant, _ = keys["merchant"].write(tmp, "merchant")
    first = make_platform_certificate(keys["wechat"].private, time.time() - DAY)
    cert_file, key_file = write_files(tmp, first)
    section = {
        "mchid": MCHID,
        "appid": APPID,
        "serial_no": MERCHANT_SERIAL,
        "private_key_file": str(merchant),
        "platform_certificate_file": str(cert_file),
        "apiv3_key_file": str(key_file),
        **wechatpay,
    }
    return {"auth": {"routes": {"wechat": "wechatpay"}, "wechatpay": section}}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"platform_public_key_file": "pub.pem", "platform_serial": "PUB_KEY_ID_1"}, "not both"),
        (
            {"apiv3_key_file": None},
            "platform_certificate_file (certificate mode) needs apiv3_key_file",
        ),
        (
            {"platform_certificate_file": None, "apiv3_key_file": None},
            "set either platform_public_key_file",
        ),
        (
            {"platform_certificate_file": None, "apiv3_key_file": None, "platform_serial": "P"},
            "platform_serial (public-key mode) needs platform_public_key_file",
        ),
    ],
)
def test_the_config_takes_one_complete_mode(
    tmp_path: Path, network_keys: Keys, change: dict[str, Any], says: str
) -> None:
    raw = wechat_config(tmp_path, network_keys)
    section = raw["auth"]["wechatpay"]
    for key, value in change.items():
        if value is None:
            section.pop(key)
        else:
            section[key] = value
    with pytest.raises(ConfigError, match=rf"auth\.wechatpay.*{re.escape(says)}"):
        parse_config(raw)


@pytest.mark.parametrize(("retry_s", "ok"), [(0.5, False), (1, True), (60, True), (3601, False)])
def test_the_certificate_retry_is_bounded(
    tmp_path: Path, network_keys: Keys, retry_s: float, ok: bool
) -> None:
    """At least a second (an impostor's invented serials cost at most one download each), at
    most an hour (a refused certificate is tried again within the hour)."""
    raw = wechat_config(tmp_path, network_keys, certificate_retry_s=retry_s)
    if ok:
        section = parse_config(raw).auth.wechatpay
        assert section is not None and section.certificate_retry_s == retry_s
    else:
        with pytest.raises(ConfigError, match=r"auth\.wechatpay\.certificate_retry_s"):
            parse_config(raw)


@pytest.mark.parametrize(
    ("breaks", "says"),
    [
        ("short_key", "an APIv3 key is 32 characters, this one 5"),
        ("open_key", "lets group or others read a secret"),
        ("not_pem", "not PEM certificates"),
    ],
)
def test_check_config_names_a_bad_certificate_mode_file(
    tmp_path: Path, network_keys: Keys, breaks: str, says: str
) -> None:
    raw = wechat_config(tmp_path, network_keys)
    section = raw["auth"]["wechatpay"]
    if breaks == "short_key":
        Path(section["apiv3_key_file"]).write_bytes(b"short")
    elif breaks == "open_key":
        Path(section["apiv3_key_file"]).chmod(0o644)
    else:
        Path(section["platform_certificate_file"]).write_bytes(b"junk")
    path = write_lane_toml(tmp_path, section)
    found = check_config(path)
    assert any(says in p for p in found.problems), found.problems
    with pytest.raises(netkeys.KeyFileError, match=re.escape(says)):
        NetworkKeys.load(parse_config(raw).auth)


def write_lane_toml(tmp: Path, section: dict[str, Any]) -> Path:
    # A lane on its own (no plaza sharing): no lane key to have.
    lines = ['[fares]\ncurrency = "CNY"\n[auth]\nshare_used_tokens = false\n[auth.routes]\n'
             'wechat = "wechatpay"\n[auth.wechatpay]']  # fmt: skip
    lines += [f'{k} = "{v}"' for k, v in section.items()]
    path = tmp / "lane.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_config_warns_when_every_configured_certificate_expired(
    tmp_path: Path, network_keys: Keys
) -> None:
    section = wechat_config(tmp_path, network_keys)["auth"]["wechatpay"]
    path = write_lane_toml(tmp_path, section)
    assert not any("expired" in w for w in check_config(path).warnings)
    old = make_platform_certificate(network_keys["wechat"].private, time.time() - 9 * DAY, 2 * DAY)
    Path(section["platform_certificate_file"]).write_bytes(old.pem)
    found = check_config(path)
    assert found.ok, found.problems
    assert any("every certificate in it expired" in w for w in found.warnings), found.warnings


async def test_certificate_mode_brings_its_upkeep_to_the_lane(
    cert_gateway: Any, tmp_path: Path, network_keys: Keys
) -> None:
    async with cert_gateway() as s:
        raw = wechat_config(tmp_path, network_keys, base_url=s.fake.url)
        # The fake's certificate, as the operator would install it.
        first = s.trust.trusted.certs[0]
        installed = Path(raw["auth"]["wechatpay"]["platform_certificate_file"])
        await asyncio.to_thread(installed.write_bytes, first.pem)
        auth = parse_config(raw).auth
        async with aiohttp.ClientSession() as session:
            built = build_acquirer(auth, NetworkKeys.load(auth, s.state), session)
            (upkeep,) = built.upkeep
            task = asyncio.create_task(upkeep(lambda: True, asyncio.sleep))
            try:  # never looked: the idle lane looks at once
                await eventually(lambda: s.fake.certificate_downloads == 1, what="a download")
            finally:
                task.cancel()
