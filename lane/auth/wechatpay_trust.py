"""Whose signature a WeChat Pay answer must carry: a fixed platform public key, or WeChat Pay's
rotating platform certificates kept from `GET /v3/certificates` (docs/acquirer.md, "Platform
certificates").

Public-key mode (`FixedPlatformKey`, `PUB_KEY_ID_...`): one key, no rotation, nothing to fetch.

Certificate mode (`PlatformCertificates`): the configured certificates plus the downloaded ones,
which are kept in `<data_dir>/wechatpay-certificates.pem` so a restart needs no network. An
answer signed by a serial the lane does not have triggers one download (at most one per
`certificate_retry_s`, a minute), then the answer is checked again; an idle lane also looks
daily, and hourly once its newest certificate expires within 10 days, and tries a download
that failed for an answer's serial again every `certificate_retry_s`.

Bootstrap rule: the lane never trusts a certificate on first sight. A download is believed only
when its own signature verifies under a certificate the lane already trusts (configured by the
operator, or accepted from an earlier download), and each certificate in it must decrypt with
the APIv3 key, carry the serial it is listed under and not be expired. So the first trusted
certificate always comes from the operator, and each later one is vouched for by its
predecessor. WeChat Pay publishes the next certificate 10 days before the current one expires
and signs only with the current one for the first 5 of them: a lane that checks daily learns it
in time. A lane that was off through that window may find nothing it trusts signing the
download: the alarm says so, and the operator installs the current certificate in
`platform_certificate_file`.

A download that fails while it is needed (an answer is waiting for it, or the newest
certificate is about to expire) raises the alarm `wechatpay_certificates`; the next successful
download clears it. Meanwhile answers signed by the unknown certificate are refused, as any
untrusted answer: the payment is given up to the resolver, which settles it once answers can
be verified again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from lane.auth import netkeys
from lane.auth import wechatpay_certs as certs
from lane.auth import wechatpay_wire as wire
from lane.auth.acquirer import (
    AcquirerError,
    AcquirerProtocolError,
    AcquirerTimeout,
    AcquirerUnavailable,
    AlarmSink,
    HttpAnswer,
)
from lane.durable import write_atomically
from lane.wire.utc import utc_text

log = logging.getLogger("lane.auth.wechatpay")

ALARM = "wechatpay_certificates"
STORE_FILE = "wechatpay-certificates.pem"
# How long the idle lane's download (`keep`) may take (no driver is waiting).
IDLE_DOWNLOAD_TIMEOUT_S = 10.0
_FIX = (
    "check auth.wechatpay.apiv3_key_file and the link to WeChat Pay; a lane that was off"
    " through a certificate rotation needs the current platform certificate in"
    " auth.wechatpay.platform_certificate_file"
)

# GET /v3/certificates, signed by the merchant, within the timeout; the answer unverified.
Fetch = Callable[[float], Awaitable[HttpAnswer]]
# The lane's sleep (`Clocks.sleep`): the idle lane's looks follow the lane's clock.
Sleep = Callable[[float], Awaitable[None]]
# Why a download got no answer: it stalled or timed out, or WeChat Pay could not be reached.
Unanswered = AcquirerTimeout | AcquirerUnavailable


@dataclass(frozen=True)
class Unlearned:
    """Why a download left a serial unknown (`why`), and how many downloads had been answered
    before it (`answers`): one answered since makes it old news (`WatchedAcquirer`)."""

    why: Unanswered
    answers: int


class CertificateUnansweredError(AcquirerProtocolError):
    """An answer signed by a platform certificate the lane could not learn because the
    certificate download got no answer (`unanswered`, after `answers` answered downloads):
    not a key of ours to check."""

    def __init__(self, message: str, http_status: int, unlearned: Unlearned) -> None:
        super().__init__(message, http_status)
        self.unanswered = unlearned.why
        self.answers = unlearned.answers


class PlatformTrust(Protocol):
    """What `WeChatPayClient` checks answers with."""

    def key_for(self, serial: str, now: float) -> rsa.RSAPublicKey | None:
        """The key of a serial the lane trusts at `now`, or None."""
        ...

    async def learn(self, serial: str, fetch: Fetch, timeout_s: float) -> Unlearned | None:
        """An answer named `serial`, unknown: try to learn it within `timeout_s`; why the
        download got no answer when that is what left it unknown."""
        ...


@dataclass(frozen=True)
class FixedPlatformKey:
    """WeChat Pay's platform public key (`PUB_KEY_ID_...`), which does not rotate."""

    serial: str
    key: rsa.RSAPublicKey

    def key_for(self, serial: str, now: float) -> rsa.RSAPublicKey | None:
        return self.key if serial == self.serial else None

    async def learn(self, serial: str, fetch: Fetch, timeout_s: float) -> Unlearned | None:
        """Nothing to download: any other serial is not this merchant's platform key."""
        return None


@dataclass(frozen=True)
class CertificateFiles:
    """What certificate mode reads at start (`load_certificate_files`)."""

    configured: certs.CertificateSet
    stored: certs.CertificateSet
    apiv3_key: bytes
    store: Path | None  # where downloads are kept; None: in memory only (`lane reconcile`)


def load_certificate_files(
    certificate_file: Path, apiv3_key_file: Path, state_dir: Path | None
) -> CertificateFiles:
    """The configured certificates and the APIv3 key (netkeys.KeyFileError naming a bad file),
    and what an earlier run downloaded into `state_dir` (a bad copy there is only a warning:
    the next download replaces it)."""
    try:
        configured = certs.certs_from_pem(certificate_file.read_bytes())
    except OSError as exc:
        raise netkeys.KeyFileError(f"{certificate_file}: cannot read: {exc.strerror}") from None
    except certs.CertificateError as exc:
        raise netkeys.KeyFileError(f"{certificate_file}: {exc}") from None
    if not configured:
        raise netkeys.KeyFileError(f"{certificate_file}: holds no certificate")
    key = netkeys.read_secret(apiv3_key_file).strip()
    if len(key) != certs.APIV3_KEY_BYTES:
        raise netkeys.KeyFileError(
            f"{apiv3_key_file}: an APIv3 key is {certs.APIV3_KEY_BYTES} characters, this one"
            f" {len(key)} (商户平台 > API安全 > APIv3密钥)"
        )
    store = None if state_dir is None else state_dir / STORE_FILE
    stored: list[certs.PlatformCert] = []
    if store is not None and store.exists():
        try:
            stored = certs.certs_from_pem(store.read_bytes())
        except (OSError, certs.CertificateError) as exc:
            log.warning(
                "stored WeChat Pay platform certificates ignored: %s", exc, extra={"file": store}
            )
    return CertificateFiles(
        certs.CertificateSet(tuple(configured)), certs.CertificateSet(tuple(stored)), key, store
    )


class PlatformCertificates:
    """The platform certificates the lane trusts, and their download (see the module doc)."""

    def __init__(
        self,
        files: CertificateFiles,
        *,
        wall: Callable[[], float],
        alarm: AlarmSink | None = None,
        retry_s: float = certs.MIN_REFRESH_INTERVAL_S,
    ) -> None:
        self._configured = files.configured
        self._retry_s = retry_s
        self._stored = files.stored
        self._apiv3_key = files.apiv3_key
        self._store = files.store
        self._wall = wall
        self._alarm = alarm
        self._alarmed = False
        self._times = certs.RefreshTimes()
        self._lock = asyncio.Lock()  # one download at a time; the others wait for its outcome
        self._unanswered: Unlearned | None = None  # the last download's, until one answers
        self._answers = 0  # downloads answered so far: tells an old stall from a current one
        self._answered: list[Callable[[int], None]] = []
        self._trusted = self._configured.merged(self._stored.certs, wall())

    @property
    def trusted(self) -> certs.CertificateSet:
        return self._trusted

    def key_for(self, serial: str, now: float) -> rsa.RSAPublicKey | None:
        return self._trusted.key_for(serial, now)

    def when_answered(self, listener: Callable[[int], None]) -> None:
        """Call `listener` with the count of downloads answered each time one is (whatever it
        holds): a download that went unanswered is over (`WatchedAcquirer` clears its alarm)."""
        self._answered.append(listener)

    async def learn(self, serial: str, fetch: Fetch, timeout_s: float) -> Unlearned | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        answers = self._answers  # a download waited for below is answered after this
        # The call's time bounds the wait for a download under way too: the idle look has
        # IDLE_DOWNLOAD_TIMEOUT_S, far more than what a vehicle's budget leaves.
        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            log.warning(
                "unknown WeChat Pay platform certificate: a download under way did not end"
                " within the call's %.3f s",
                timeout_s,
                extra={"serial": serial},
            )
            why = f"a download under way did not end within the call's {timeout_s:.3f} s"
            return Unlearned(AcquirerTimeout(why), answers)
        try:
            now, left = self._wall(), deadline - loop.time()
            if self.key_for(serial, now) is not None:  # a download meanwhile brought it
                return None
            if left <= 0 or not certs.may_learn(self._times, now, self._retry_s):
                log.warning(
                    "unknown WeChat Pay platform certificate: no download (one per"
                    " certificate_retry_s at most, or no time left in the call)",
                    extra={"serial": serial, "last_learn": self._times.last_learn},
                )
            else:
                await self._learn(serial, fetch, left)
            return None if self.key_for(serial, self._wall()) is not None else self._unanswered
        finally:
            self._lock.release()

    async def keep(self, fetch: Fetch, idle: Callable[[], bool], sleep: Sleep) -> None:
        """Look every `retry_s` whether a download is due, and do it while the lane is idle."""
        while True:
            if idle():
                await self.tick(fetch, IDLE_DOWNLOAD_TIMEOUT_S)
            await sleep(self._retry_s)

    async def tick(self, fetch: Fetch, timeout_s: float) -> certs.RefreshReason | None:
        """One look of `keep`: download if due; the reason it was due, or None."""
        async with self._lock:
            now = self._wall()
            reason = certs.refresh_due(self._times, self._trusted, now, self._retry_s)
            if reason is certs.RefreshReason.UNKNOWN_SERIAL:
                assert self._times.unlearned is not None  # refresh_due's reason
                await self._learn(self._times.unlearned, fetch, timeout_s)
            elif reason is not None:
                await self._look(reason, fetch, timeout_s)
            return reason

    async def _learn(self, serial: str, fetch: Fetch, timeout_s: float) -> None:
        """Download for an answer's unknown serial (the lock held); the alarm says what
        failed, and the idle lane's looks try a failed download again."""
        self._times = replace(self._times, last_learn=self._wall())
        try:
            await self._download(fetch, timeout_s)
        except (AcquirerError, certs.CertificateError) as exc:
            self._times = replace(self._times, unlearned=serial)
            # Short ahead of the cause: the health message keeps 256 characters of it, and
            # the operator should still see where to look (the whole text is in the log).
            self._fail(
                f"WeChat Pay answers signed by certificate {serial} are refused: downloading it"
                f" failed ({exc}); {_FIX}"
            )
            return
        if self.key_for(serial, self._wall()) is None:
            self._fail(
                f"WeChat Pay answers signed by platform certificate {serial} are refused:"
                f" WeChat Pay's certificate download does not list it (not WeChat Pay's,"
                f" or not valid now: check the lane's clock)"
            )

    async def _look(self, reason: certs.RefreshReason, fetch: Fetch, timeout_s: float) -> None:
        """The idle lane's daily or hourly download (the lock held)."""
        try:
            await self._download(fetch, timeout_s)
        except (AcquirerError, certs.CertificateError) as exc:
            if reason is certs.RefreshReason.EXPIRING:
                newest = self._trusted.newest_expiry()
                held = (
                    "the lane has no valid one"
                    if newest is None
                    else f"the newest the lane has expires {utc_text(newest)}"
                )
                self._fail(
                    f"WeChat Pay platform certificates run out ({held}) and downloading"
                    f" new ones failed ({exc}); {_FIX}"
                )
            else:  # the certificates hold for days yet: the next look tries again
                log.warning("daily WeChat Pay certificate download failed: %s", exc)

    async def _download(self, fetch: Fetch, timeout_s: float) -> None:
        """Download, check and keep the certificates; raises what went wrong."""
        self._times = replace(self._times, last_attempt=self._wall())
        try:
            answer = await fetch(timeout_s)
        except (AcquirerTimeout, AcquirerUnavailable) as exc:
            self._unanswered = Unlearned(exc, self._answers)
            raise
        self._unanswered = None
        self._answers += 1
        for listener in self._answered:
            listener(self._answers)
        now = self._wall()
        problem = wire.answer_problem(answer.headers, answer.body, self.key_for, now)
        if problem is not None:
            if problem.kind is wire.Untrusted.UNKNOWN_KEY:
                raise certs.CertificateError(
                    # The fix leads: the health message keeps 256 characters of the alarm.
                    "signed by a certificate not trusted yet: install the current platform"
                    " certificate in auth.wechatpay.platform_certificate_file"
                )
            raise certs.CertificateError(f"the download is not trusted: {problem.detail}")
        try:
            doc = json.loads(answer.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise certs.CertificateError(f"HTTP {answer.status}: the answer is not JSON") from None
        if answer.status != 200 or not isinstance(doc, dict):
            code = doc.get("code", "") if isinstance(doc, dict) else ""
            raise certs.CertificateError(f"HTTP {answer.status} {code}".strip())
        fresh = certs.certs_from_download(doc, self._apiv3_key, now)
        self._stored = self._stored.merged(fresh, now)
        self._trusted = self._configured.merged(self._stored.certs, now)
        self._times = replace(self._times, last_success=now, unlearned=None)
        log.info(
            "WeChat Pay platform certificates downloaded",
            extra={"serials": self._trusted.serials()},
        )
        if self._alarmed:  # answers verify again from this moment
            self._alarmed = False
            if self._alarm is not None:
                self._alarm(ALARM, None)
        await self._keep_stored()

    async def _keep_stored(self) -> None:
        if self._store is None:
            return
        try:
            pem = certs.pem_bundle(self._stored.certs)
            await asyncio.to_thread(write_atomically, self._store, pem)
        except OSError as exc:  # they are trusted in memory; only a restart would download again
            log.error(
                "WeChat Pay platform certificates not stored: %s", exc, extra={"file": self._store}
            )

    def _fail(self, message: str) -> None:
        self._alarmed = True
        if self._alarm is None:  # `lane reconcile`: no lane to raise it on
            log.error("%s", message, extra={"alarm": ALARM})
        else:
            self._alarm(ALARM, message)
