"""A token issuer and a plaza pass key in a box.

`TokenIssuer` (the simulator, tests and benchmarks) holds one private key and mints tokens the
way a wallet app's back end would; `public()` is the matching key set entry for the lanes.
`PlazaPassKey` is what a `toll-entry` lane signs its passes with (`PlazaPassKey.load`);
`load_lane_key` what a lane signs its messages to the other lanes with (lane.auth.peers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lane.auth.cose import Alg, CoseError, PrivateKey, alg_of_private
from lane.auth.keys import IssuerKey, KeyUse
from lane.auth.netkeys import KeyFileError, read_secret
from lane.auth.passes import EntryPass, issue_pass
from lane.auth.peer_messages import LaneKey
from lane.auth.tokens import PHONE_TOKEN_TTL_S, issue_compact_token, issue_token

FAR_FUTURE = 1 << 32


def load_private_key(path: Path) -> PrivateKey:
    """A lane's signing key file: readable by its owner only (`read_secret`), then as
    `parse_private_key`."""
    return parse_private_key(read_secret(path), path)


def parse_private_key(data: bytes, path: Path) -> PrivateKey:
    """An unencrypted PEM signing key (Ed25519 or P-256); KeyFileError naming the file (never
    its content) for anything else."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path}: {type(key).__name__} keys are not supported")
    try:
        alg_of_private(key)
    except CoseError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return key


def load_lane_key(
    path: Path | None, kid: str | None, lane: str, *, required: bool
) -> LaneKey | None:
    """A lane's message key (`auth.lane_key`, `auth.lane_kid`) from its PEM file (`lane keys
    new --lane`); KeyFileError if bad, or if `required` (the lane tells other lanes things and
    may not send them unsigned) and not set."""
    if path is not None and kid is not None:
        return LaneKey(load_private_key(path), kid.encode("utf-8"), lane)
    if path is not None or kid is not None:
        raise KeyFileError("auth.lane_key and auth.lane_kid: set both or neither")
    if required:
        raise KeyFileError(
            "auth.lane_key: not set, and this lane tells other lanes what it did (plaza "
            "sharing, a metro line's taps or a road's plate bindings), which they refuse "
            "unsigned: make one with `lane keys new --lane " + lane + "` and set auth.lane_key "
            "and auth.lane_kid (or auth.accept_unsigned_peers while a plaza upgrades)"
        )
    return None


@dataclass(frozen=True)
class TokenIssuer:
    private_key: PrivateKey
    kid: bytes
    issuer: str
    not_before: int = 0
    not_after: int = FAR_FUTURE

    @classmethod
    def generate(
        cls,
        alg: Alg = Alg.ED25519,
        kid: bytes | str = b"k1",
        issuer: str = "wallet.example",
        not_before: int = 0,
        not_after: int = FAR_FUTURE,
    ) -> TokenIssuer:
        private: PrivateKey = (
            Ed25519PrivateKey.generate()
            if alg is Alg.ED25519
            else ec.generate_private_key(ec.SECP256R1())
        )
        kid_bytes = kid.encode("utf-8") if isinstance(kid, str) else kid
        return cls(private, kid_bytes, issuer, not_before, not_after)

    @property
    def alg(self) -> Alg:
        return alg_of_private(self.private_key)

    def public(self, bind_issuer: bool = True) -> IssuerKey:
        return IssuerKey(
            self.kid,
            self.alg,
            self.private_key.public_key(),
            self.not_before,
            self.not_after,
            self.issuer if bind_issuer else None,
        )

    def token(
        self, account_ref: str, iat: int, ttl_s: int = PHONE_TOKEN_TTL_S, nonce: bytes | None = None
    ) -> str:
        """A fresh token; a random 16-byte nonce (cti) unless one is given."""
        cti = os.urandom(16) if nonce is None else nonce
        return issue_token(
            self.private_key, self.kid, self.issuer, account_ref, iat, iat + ttl_s, cti
        )

    def compact_token(self, account_ref: str, iat: int, ttl_s: int = PHONE_TOKEN_TTL_S) -> str:
        """A compact v2 token (no nonce: its id is the hash of the signed bytes); raises
        ValueError when the kid or the account is too long for QR version 5-L."""
        return issue_compact_token(self.private_key, self.kid, account_ref, iat, iat + ttl_s)


@dataclass(frozen=True)
class PlazaPassKey:
    """An entry plaza's pass signing key (the entry lanes of that plaza hold it)."""

    private_key: PrivateKey
    kid: bytes
    plaza: str
    not_before: int = 0
    not_after: int = FAR_FUTURE

    @classmethod
    def generate(
        cls, plaza: str, kid: bytes | str | None = None, alg: Alg = Alg.ED25519
    ) -> PlazaPassKey:
        issuer = TokenIssuer.generate(alg, kid or f"pass-{plaza}")
        return cls(issuer.private_key, issuer.kid, plaza)

    @classmethod
    def load(cls, path: Path, kid: str, plaza: str) -> PlazaPassKey:
        """The plaza's key from its PEM file (`lane keys new --plaza`); KeyFileError if bad."""
        return cls(load_private_key(path), kid.encode("utf-8"), plaza)

    def public(self) -> IssuerKey:
        return IssuerKey(
            self.kid,
            alg_of_private(self.private_key),
            self.private_key.public_key(),
            self.not_before,
            self.not_after,
            use=KeyUse.PASS,
            plaza=self.plaza,
        )

    def issue(self, entry: EntryPass) -> str:
        return issue_pass(self.private_key, self.kid, entry)
