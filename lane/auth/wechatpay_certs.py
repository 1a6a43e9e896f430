"""WeChat Pay platform certificates (平台证书): which ones the lane trusts, how a download of
them is checked, and when to download again. Pure: the clock is a parameter; the I/O (HTTP, the
state file, the alarm) is `lane.auth.wechatpay_trust`.

`GET /v3/certificates` answers `{"data": [{serial_no, effective_time, expire_time,
encrypt_certificate: {algorithm, nonce, associated_data, ciphertext}}]}`. Each certificate's
PEM is encrypted with AEAD_AES_256_GCM under the merchant's APIv3 key (32 bytes, used as
typed); the nonce (12 characters) and the associated data are UTF-8 bytes, and the ciphertext
is Base64 of the encrypted PEM followed by the 16-byte GCM tag (RFC 5116). A certificate's
serial is its X.509 serial number in hex, as in an answer's `Wechatpay-Serial` header.

WeChat Pay issues the next certificate 10 days before the current one expires and signs with
both in the last 5 days; so a lane that checks daily, and at once when an answer names a serial
it does not have, always has the next certificate in time (`refresh_due`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lane.auth.netkeys import MIN_RSA_BITS

CERTIFICATES_PATH = "/v3/certificates"
ALGORITHM = "AEAD_AES_256_GCM"
ASSOCIATED_DATA = "certificate"
APIV3_KEY_BYTES = 32
NONCE_CHARS = 12
_BEIJING = timezone(timedelta(hours=8))

DAY_S = 86_400.0
# An answer naming an unknown serial triggers a download; a burst of such answers (or an
# impostor inventing serials) costs at most one download per this interval (the default of
# `[auth.wechatpay] certificate_retry_s`).
MIN_REFRESH_INTERVAL_S = 60.0
# The next certificate exists 10 days before the current one expires: from then on, look
# hourly rather than daily until the lane has it.
EXPIRY_AHEAD_S = 10 * DAY_S
AHEAD_RETRY_S = 3600.0


class CertificateError(ValueError):
    """A platform certificate, download or file that cannot be trusted; the message says why."""


@dataclass(frozen=True)
class PlatformCert:
    serial: str  # upper-case hex, as WeChat Pay writes it
    key: rsa.RSAPublicKey
    not_before: float  # unix seconds
    not_after: float
    pem: bytes

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now <= self.not_after


def serial_number(serial: str) -> int | None:
    """A certificate serial as a number; None for what is not one (a `PUB_KEY_ID_...`)."""
    try:
        return int(serial, 16)
    except ValueError:
        return None


def cert_from_x509(cert: x509.Certificate) -> PlatformCert:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise CertificateError(
            f"certificate {cert.serial_number:X}: not an RSA key of {MIN_RSA_BITS}+ bits"
        )
    return PlatformCert(
        serial=f"{cert.serial_number:X}",
        key=key,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        pem=cert.public_bytes(serialization.Encoding.PEM),
    )


def certs_from_pem(data: bytes) -> list[PlatformCert]:
    """Every certificate of a PEM text (one or several, as `openssl` concatenates them)."""
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError("not PEM certificates (-----BEGIN CERTIFICATE-----)") from None
    return [cert_from_x509(c) for c in found]


def pem_bundle(certs: Iterable[PlatformCert]) -> bytes:
    return b"".join(c.pem for c in certs)


@dataclass(frozen=True)
class CertificateSet:
    """Trusted platform certificates, at most one per serial."""

    certs: tuple[PlatformCert, ...] = ()

    def key_for(self, serial: str, now: float) -> rsa.RSAPublicKey | None:
        number = serial_number(serial)
        for cert in self.certs:
            if int(cert.serial, 16) == number and cert.valid_at(now):
                return cert.key
        return None

    def merged(self, more: Iterable[PlatformCert], now: float) -> CertificateSet:
        """These and `more` (a newer copy of a serial wins), without the expired ones."""
        by_serial = {int(c.serial, 16): c for c in (*self.certs, *more)}
        kept = sorted(
            (c for c in by_serial.values() if c.not_after >= now), key=lambda c: c.not_after
        )
        return CertificateSet(tuple(kept))

    def newest_expiry(self) -> float | None:
        return max((c.not_after for c in self.certs), default=None)

    def serials(self) -> list[str]:
        return [c.serial for c in self.certs]


# -- the download ------------------------------------------------------------------------------


def encrypt_certificate(
    apiv3_key: bytes, pem: bytes, nonce: str, associated_data: str = ASSOCIATED_DATA
) -> dict[str, str]:
    """WeChat Pay's `encrypt_certificate` object for one PEM (the fake serves these)."""
    sealed = AESGCM(apiv3_key).encrypt(nonce.encode(), pem, associated_data.encode())
    return {
        "algorithm": ALGORITHM,
        "nonce": nonce,
        "associated_data": associated_data,
        "ciphertext": base64.b64encode(sealed).decode(),
    }


def decrypt_certificate(apiv3_key: bytes, sealed: Mapping[str, Any]) -> bytes:
    """The PEM inside an `encrypt_certificate` object; CertificateError if it does not open
    (a wrong APIv3 key, or anything changed on the way: GCM authenticates all of it)."""
    if sealed.get("algorithm") != ALGORITHM:
        raise CertificateError(f"algorithm {sealed.get('algorithm')!r}, not {ALGORITHM}")
    nonce, data, text = (sealed.get(k) for k in ("nonce", "associated_data", "ciphertext"))
    if not (isinstance(nonce, str) and isinstance(data, str) and isinstance(text, str)):
        raise CertificateError("encrypt_certificate lacks its nonce, associated_data or ciphertext")
    try:
        raw = base64.b64decode(text, validate=True)
        return AESGCM(apiv3_key).decrypt(nonce.encode(), raw, data.encode())
    except (binascii.Error, InvalidTag, ValueError):
        raise CertificateError(
            "a certificate does not decrypt with the APIv3 key (wrong key, or the download was"
            " altered)"
        ) from None


def download_entry(cert: PlatformCert, apiv3_key: bytes, nonce: str) -> dict[str, Any]:
    """One element of the download's `data` (the fake serves these)."""
    return {
        "serial_no": cert.serial,
        "effective_time": _rfc3339(cert.not_before),
        "expire_time": _rfc3339(cert.not_after),
        "encrypt_certificate": encrypt_certificate(apiv3_key, cert.pem, nonce),
    }


def certs_from_download(doc: Mapping[str, Any], apiv3_key: bytes, now: float) -> list[PlatformCert]:
    """The certificates of a verified download's body, each decrypted and checked.

    One that does not decrypt or whose serial is not the one it is listed under refuses the
    whole download (it was altered); one outside its validity window is left out, as WeChat
    Pay lists the next certificate before it takes effect only to be used later.
    """
    data = doc.get("data")
    if not isinstance(data, list) or not data:
        raise CertificateError("the download lists no certificates")
    found: list[PlatformCert] = []
    for entry in data:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("encrypt_certificate"), dict):
            raise CertificateError("a download entry has no encrypt_certificate")
        pem = decrypt_certificate(apiv3_key, entry["encrypt_certificate"])
        certs = certs_from_pem(pem)
        if len(certs) != 1:
            raise CertificateError(f"a download entry holds {len(certs)} certificates, not 1")
        cert = certs[0]
        listed = serial_number(str(entry.get("serial_no", "")))
        if listed != int(cert.serial, 16):
            raise CertificateError(
                f"the download lists serial {entry.get('serial_no')!r} for certificate"
                f" {cert.serial}"
            )
        if cert.not_after >= now:
            found.append(cert)
    return found


# -- when to download --------------------------------------------------------------------------


class RefreshReason(StrEnum):
    UNKNOWN_SERIAL = "unknown_serial"  # an answer is signed by a certificate we do not have
    EXPIRING = "expiring"  # the newest certificate we have expires within EXPIRY_AHEAD_S
    DAILY = "daily"  # WeChat Pay's advice: look once a day


@dataclass(frozen=True)
class RefreshTimes:
    last_attempt: float | None = None  # any download
    last_success: float | None = None
    last_learn: float | None = None  # a download for an answer's unknown serial
    # The serial of an answer whose download failed: its answers stay refused until one works.
    unlearned: str | None = None


def may_learn(times: RefreshTimes, now: float, retry_s: float = MIN_REFRESH_INTERVAL_S) -> bool:
    """An unknown serial may download unless one did within `retry_s` (a clock gone back
    allows it). The idle lane's own looks do not count: a rotation that comes just after one
    must still be learned at once."""
    return _elapsed(times.last_learn, now, retry_s)


def refresh_due(
    times: RefreshTimes,
    certs: CertificateSet,
    now: float,
    retry_s: float = MIN_REFRESH_INTERVAL_S,
) -> RefreshReason | None:
    """Why the idle lane should download the certificates now, or None: a serial whose
    download failed as often as an answer's may (so its alarm clears once the cause is gone,
    with no WeChat Pay traffic); else at most hourly, when the newest certificate expires
    soon, else once a day."""
    if times.unlearned is not None and may_learn(times, now, retry_s):
        return RefreshReason.UNKNOWN_SERIAL
    if not _elapsed(times.last_attempt, now, AHEAD_RETRY_S):
        return None
    newest = certs.newest_expiry()
    if newest is None or newest - now <= EXPIRY_AHEAD_S:
        return RefreshReason.EXPIRING
    if _elapsed(times.last_success, now, DAY_S):
        return RefreshReason.DAILY
    return None


def _elapsed(since: float | None, now: float, interval_s: float) -> bool:
    """`interval_s` has passed since `since` (never, or a clock set back, counts as passed)."""
    return since is None or not 0 <= now - since < interval_s


def _rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, _BEIJING).isoformat(timespec="seconds")
