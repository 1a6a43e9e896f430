"""The payment networks' keys: loading them from files, and SHA256withRSA signatures.

Both Alipay (RSA2) and WeChat Pay (WECHATPAY2-SHA256-RSA2048) sign with RSASSA-PKCS1-v1_5 over
SHA-256 and carry the signature in Base64; only what is signed differs, and that is each
adapter's business. Signing and verifying are pure.

Why secrets come from files with a permission check: a private key in the config text would be
copied wherever the config goes (backups, tickets, `lane check-config` output); a key file that
anyone on the box can read is as good as published. A secret file must be a regular file, owned
by the user running the lane, with no permission for group or others (0600 or 0400).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MIN_RSA_BITS = 2048


class KeyFileError(ValueError):
    """A key or secret file that cannot be used; the message names the file, never its content."""


def read_secret(path: Path) -> bytes:
    """The content of a secret file, refused unless only its owner (us) may read it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others read a secret;"
            f" chmod 600 {path}"
        )
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{path}: owned by uid {st.st_uid}, not by this user ({os.geteuid()})")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """An RSA private key (PEM, PKCS#8 or PKCS#1) from a secret file."""
    data = read_secret(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
    return _rsa(key, path)


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """An RSA public key from PEM: a SubjectPublicKeyInfo, or a certificate's key.

    Alipay hands out its public key as bare Base64 (no PEM armour); that is accepted too.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return public_key_from_text(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def public_key_from_text(data: bytes) -> rsa.RSAPublicKey:
    text = data.strip()
    if b"BEGIN CERTIFICATE" in text:
        key: object = x509.load_pem_x509_certificate(text).public_key()
    elif b"BEGIN" in text:
        key = serialization.load_pem_public_key(text)
    else:
        try:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("not a PEM public key, certificate or Base64 public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {key.key_size} bits, at least {MIN_RSA_BITS} needed")
    return key


def _rsa(key: object, path: Path) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{path}: not an RSA private key")
    if key.key_size < MIN_RSA_BITS:
        raise KeyFileError(f"{path}: RSA key of {key.key_size} bits, at least {MIN_RSA_BITS}")
    return key


def sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5) signature of `message`, Base64."""
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    """True when `signature` (Base64) is a SHA256withRSA signature of `message` under `key`."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True
