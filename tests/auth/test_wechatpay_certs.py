"""WeChat Pay platform certificates, the pure part: the download's encryption and checks, the
trusted set, when to download, and the answer signature check that names an unknown serial."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.auth import netkeys
from lane.auth import wechatpay_certs as certs
from lane.auth import wechatpay_wire as wire
from sim.wechatpay_fake import make_platform_certificate

Keys = dict[str, Any]  # name -> conftest.KeyPair
APIV3 = b"0123456789abcdefghijklmnopqrstuv"
NOW = 1_780_000_000.0
DAY = certs.DAY_S


@pytest.fixture(scope="module")
def cert_now(network_keys: Keys) -> certs.PlatformCert:
    return make_platform_certificate(network_keys["wechat"].private, NOW - DAY)


@pytest.fixture(scope="module")
def cert_next(network_keys: Keys) -> certs.PlatformCert:
    return make_platform_certificate(network_keys["rotated"].private, NOW - 60)


# -- the download --------------------------------------------------------------------------


def test_a_certificate_round_trips_through_aes_gcm(cert_now: certs.PlatformCert) -> None:
    sealed = certs.encrypt_certificate(APIV3, cert_now.pem, "a1b2c3d4e5f6")
    assert sealed["algorithm"] == "AEAD_AES_256_GCM" and sealed["associated_data"] == "certificate"
    # Base64 of the PEM and the 16-byte tag (RFC 5116), as WeChat Pay sends it.
    assert len(base64.b64decode(sealed["ciphertext"])) == len(cert_now.pem) + 16
    assert certs.decrypt_certificate(APIV3, sealed) == cert_now.pem


@pytest.mark.parametrize(
    "change",
    [
        {"ciphertext": "flip"},
        {"nonce": "000000000000"},
        {"associated_data": "transaction"},
        {"algorithm": "AES-CBC"},
        {"nonce": None},
        {"key": b"x" * 32},
    ],
)
def test_anything_changed_does_not_decrypt(cert_now: certs.PlatformCert, change: Any) -> None:
    sealed: dict[str, Any] = certs.encrypt_certificate(APIV3, cert_now.pem, "a1b2c3d4e5f6")
    key = change.pop("key", APIV3)
    for field, value in change.items():
        sealed[field] = _flipped(sealed[field]) if value == "flip" else value
    with pytest.raises(certs.CertificateError):
        certs.decrypt_certificate(key, sealed)


def _flipped(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[3] ^= 0x80
    return base64.b64encode(bytes(raw)).decode()


def test_download_gives_the_valid_certificates(
    cert_now: certs.PlatformCert, cert_next: certs.PlatformCert, network_keys: Keys
) -> None:
    old = make_platform_certificate(network_keys["impostor"].private, NOW - 10 * DAY, 5 * DAY)
    doc = {
        "data": [certs.download_entry(c, APIV3, "n0n0n0n0n0n0") for c in (old, cert_now, cert_next)]
    }
    found = certs.certs_from_download(doc, APIV3, NOW)
    assert [c.serial for c in found] == [cert_now.serial, cert_next.serial]  # the expired left out


def test_a_certificate_listed_under_another_serial_refuses_the_download(
    cert_now: certs.PlatformCert, cert_next: certs.PlatformCert
) -> None:
    entry = certs.download_entry(cert_now, APIV3, "n0n0n0n0n0n0")
    entry["serial_no"] = cert_next.serial
    with pytest.raises(certs.CertificateError, match="lists serial"):
        certs.certs_from_download({"data": [entry]}, APIV3, NOW)


@pytest.mark.parametrize("doc", [{}, {"data": []}, {"data": [{"serial_no": "1"}]}, {"data": "x"}])
def test_a_download_without_certificates_is_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(certs.CertificateError):
        certs.certs_from_download(doc, APIV3, NOW)


# -- the trusted set -----------------------------------------------------------------------


def test_a_serial_is_trusted_only_within_its_certificate_s_validity(
    cert_now: certs.PlatformCert,
) -> None:
    trusted = certs.CertificateSet((cert_now,))
    assert trusted.key_for(cert_now.serial, NOW) is cert_now.key
    # Serials are hex numbers: case and leading zeros do not matter.
    assert trusted.key_for("00" + cert_now.serial.lower(), NOW) is cert_now.key
    assert trusted.key_for(cert_now.serial, cert_now.not_before - 1) is None
    assert trusted.key_for(cert_now.serial, cert_now.not_after + 1) is None
    assert trusted.key_for("PUB_KEY_ID_0000000001", NOW) is None
    assert trusted.key_for("ABCDEF", NOW) is None


def test_merging_drops_the_expired_and_keeps_one_per_serial(
    cert_now: certs.PlatformCert, cert_next: certs.PlatformCert
) -> None:
    trusted = certs.CertificateSet((cert_now,)).merged([cert_next, cert_now], NOW)
    assert sorted(trusted.serials()) == sorted([cert_now.serial, cert_next.serial])
    later = trusted.merged([], cert_now.not_after + 1)
    assert later.serials() == [cert_next.serial]
    assert later.newest_expiry() == cert_next.not_after


def test_a_pem_bundle_round_trips(
    cert_now: certs.PlatformCert, cert_next: certs.PlatformCert
) -> None:
    bundle = certs.pem_bundle([cert_now, cert_next])
    assert [c.serial for c in certs.certs_from_pem(bundle)] == [cert_now.serial, cert_next.serial]
    with pytest.raises(certs.CertificateError, match="not PEM"):
        certs.certs_from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n")


# -- when to download ----------------------------------------------------------------------


def _expiring_in(seconds: float | None, cert: certs.PlatformCert) -> certs.CertificateSet:
    """A set whose newest certificate expires `seconds` after NOW (None: an empty set)."""
    if seconds is None:
        return certs.CertificateSet()
    return certs.CertificateSet((replace(cert, not_after=NOW + seconds),))


@pytest.mark.parametrize(
    ("attempt_ago", "success_ago", "expires_in", "due"),
    [
        (None, None, 100 * DAY, certs.RefreshReason.DAILY),  # never looked: look now
        (None, None, 3 * DAY, certs.RefreshReason.EXPIRING),
        (None, None, None, certs.RefreshReason.EXPIRING),  # nothing valid at all
        (3600, 3600, 100 * DAY, None),  # looked an hour ago, fine for a day
        (2 * DAY, 2 * DAY, 100 * DAY, certs.RefreshReason.DAILY),
        (30, 2 * DAY, 100 * DAY, None),  # a failed daily look is retried hourly, not at once
        (3601, 2 * DAY, 100 * DAY, certs.RefreshReason.DAILY),
        (1800, 1800, 3 * DAY, None),  # expiring: hourly
        (3601, 3601, 3 * DAY, certs.RefreshReason.EXPIRING),
        (-5000, -5000, 100 * DAY, certs.RefreshReason.DAILY),  # the clock went back: look
    ],
)
def test_refresh_due(
    attempt_ago: float | None,
    success_ago: float | None,
    expires_in: float | None,
    due: certs.RefreshReason | None,
    cert_now: certs.PlatformCert,
) -> None:
    times = certs.RefreshTimes(
        None if attempt_ago is None else NOW - attempt_ago,
        None if success_ago is None else NOW - success_ago,
    )
    assert certs.refresh_due(times, _expiring_in(expires_in, cert_now), NOW) is due


@pytest.mark.parametrize(("ago", "allowed"), [(None, True), (0, False), (59, False), (60, True)])
def test_an_unknown_serial_downloads_at_most_once_a_minute(
    ago: float | None, allowed: bool
) -> None:
    times = certs.RefreshTimes(last_learn=None if ago is None else NOW - ago)
    assert certs.may_learn(times, NOW) is allowed
    # The idle lane's own download a moment ago does not hold back an answer's new serial.
    assert certs.may_learn(certs.RefreshTimes(last_attempt=NOW, last_success=NOW), NOW)


@pytest.mark.parametrize(
    ("learn_ago", "retry_s", "unlearned", "due"),
    [
        (0, 60, "7D3A", None),  # the download for the answer failed just now
        (59, 60, "7D3A", None),
        (60, 60, "7D3A", certs.RefreshReason.UNKNOWN_SERIAL),  # tried again as an answer may
        (60, 60, None, None),  # learned (or nothing to learn): the daily look is hours away
        (5, 6, "7D3A", None),  # a simulator at speed 10 retries every 6 s
        (6, 6, "7D3A", certs.RefreshReason.UNKNOWN_SERIAL),
    ],
)
def test_the_idle_lane_tries_a_failed_serial_again(
    learn_ago: float,
    retry_s: float,
    unlearned: str | None,
    due: certs.RefreshReason | None,
    cert_now: certs.PlatformCert,
) -> None:
    learned = NOW - learn_ago
    times = certs.RefreshTimes(learned, NOW - 7200, learned, unlearned)
    assert certs.refresh_due(times, _expiring_in(100 * DAY, cert_now), NOW, retry_s) is due


moments = st.floats(min_value=-10 * DAY, max_value=10 * DAY, allow_nan=False)


def test_refresh_is_rate_limited_and_always_comes(cert_now: certs.PlatformCert) -> None:
    """Safety: never twice within the minute. Liveness: whatever happened, a day later a
    download is due again (a lane never stops looking)."""

    @given(attempt=st.none() | moments, success=st.none() | moments, expires=st.none() | moments)
    def check(attempt: float | None, success: float | None, expires: float | None) -> None:
        _rate_limited_and_live(attempt, success, _expiring_in(expires, cert_now))

    check()


def _rate_limited_and_live(
    attempt: float | None, success: float | None, held: certs.CertificateSet
) -> None:
    times = certs.RefreshTimes(
        None if attempt is None else NOW + attempt, None if success is None else NOW + success
    )
    for now in (NOW + (attempt or 0) + s for s in (0.0, 1.0, 59.0)):
        if attempt is not None:
            assert certs.refresh_due(times, held, now) is None
    later = max(NOW, NOW + (attempt or 0), NOW + (success or 0)) + DAY + 1
    assert certs.refresh_due(times, held, later) is not None


# -- an answer's signature -------------------------------------------------------------------


def _signed(key: Any, serial: str, stamp: int, body: str = '{"a":1}') -> dict[str, str]:
    nonce = "N" * 32
    return {
        "Wechatpay-Timestamp": str(stamp),
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": netkeys.sign(
            key, wire.answer_message(str(stamp), nonce, body).encode()
        ),
        "Wechatpay-Serial": serial,
    }


@pytest.mark.parametrize(
    ("signer", "serial", "age", "kind"),
    [
        ("wechat", "S1", 0, None),
        ("wechat", "S2", 0, wire.Untrusted.UNKNOWN_KEY),
        ("impostor", "S1", 0, wire.Untrusted.BAD_SIGNATURE),
        ("wechat", "S1", 301, wire.Untrusted.STALE),
    ],
)
def test_answer_problem(
    network_keys: Keys, signer: str, serial: str, age: int, kind: wire.Untrusted | None
) -> None:
    known = {"S1": network_keys["wechat"].public}
    headers = _signed(network_keys[signer].private, serial, int(NOW) - age)
    problem = wire.answer_problem(headers, b'{"a":1}', lambda s, _now: known.get(s), NOW)
    assert (problem and problem.kind) == kind
    if problem is not None:
        assert problem.serial == serial
    unsigned = wire.answer_problem({}, b"", lambda s, _now: known.get(s), NOW)
    assert unsigned is not None and unsigned.kind is wire.Untrusted.UNSIGNED
