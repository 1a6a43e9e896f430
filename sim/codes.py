"""Payment codes as phones would show them: offline tokens, wallet codes, EMV CPM, bad ones.

The simulator's issuer key signs real tokens (the lane verifies them with the real verifier);
wallet and EMV codes are unique per vehicle, as a wallet app makes them. Each simulated lane
has a key of its own for the messages it sends the other lanes (`lane_key`), whose public
half the key set holds (`keyset(now, lanes)`), as `lane keys new --lane` makes it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lane.auth.cose import Alg, PrivateKey
from lane.auth.keys import IssuerKey, KeySet, KeyUse, keyset_to_json
from lane.auth.peer_messages import LaneKey
from lane.auth.peers import Peers
from lane.auth.replay import ReplayStore
from lane.auth.tokens import PHONE_TOKEN_TTL_S, TokenFormat, issue_compact_token, issue_token
from lane.durable import write_atomically

ISSUER = "sim-transit"
# Short, so that a compact token with an 8-character account fits QR version 5-L.
KID = "s1"
LONG_LIVED_S = 365 * 86_400


@dataclass(frozen=True)
class Code:
    """One code a driver will show, and what the lane should make of it."""

    kind: str  # token | alipay | wechat | unionpay | emv | garbage | forged | expired | replay
    # | long_lived (signed by the issuer, valid now, but for a year: over any lane's cap)
    text: str
    valid: bool


def tlv(tag: int, value: bytes) -> bytes:
    tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82]) + n.to_bytes(2, "big")
    return tag_bytes + length + value


def emv_cpm(pan: str, atc: int, cryptogram: bytes) -> str:
    """An EMVCo consumer-presented-mode payload (Base64 BER-TLV, CPV01)."""
    digits = pan + ("F" if len(pan) % 2 else "")
    pan_bcd = bytes.fromhex(digits)
    track2 = bytes.fromhex((pan + "D" + "3012" + "201" + "0000000000")[:38].ljust(38, "F"))
    iad = tlv(0x9F26, cryptogram) + tlv(0x9F36, atc.to_bytes(2, "big")) + tlv(0x9F27, b"\x80")
    app = (
        tlv(0x4F, bytes.fromhex("A0000000041010"))
        + tlv(0x50, b"SIM DEBIT")
        + tlv(0x5A, pan_bcd)
        + tlv(0x57, track2)
        + tlv(0x63, iad)
    )
    payload = tlv(0x85, b"CPV01") + tlv(0x61, app)
    return base64.b64encode(payload).decode("ascii")


def lane_key_path(keys_dir: Path, lane: str) -> Path:
    return keys_dir / f"lane-{lane.replace('/', '-')}.key.pem"


def write_private_key(path: Path, key: PrivateKey) -> None:
    """A PEM private key file readable by its owner only (a lane refuses any other)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


class CodeFactory:
    """Makes the codes of simulated drivers; deterministic for a seed, times from the caller.

    Tokens are compact (v2) unless `token_format` says v1, as phones not yet updated show.
    """

    def __init__(self, seed: int, token_format: TokenFormat = TokenFormat.V2) -> None:
        self.token_format = token_format
        self.seed = seed
        self.rng = random.Random(seed)
        self.key = Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        self.forger = Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        self.used_tokens: list[str] = []

    def keyset(self, now: int, lanes: Iterable[str] = ()) -> KeySet:
        """The issuer's token key, and the lane key of each of `lanes`."""
        public = self.key.public_key()
        key = IssuerKey(
            kid=KID.encode(),
            alg=Alg.ED25519,
            issuer=ISSUER,
            public_key=public,
            not_before=now - 86400,
            not_after=now + 86400 * 365,
        )
        peers = [self.lane_key(lane).public(now - 86400, now + 86400 * 365) for lane in lanes]
        return KeySet.of(issued_at=now, keys=[key, *peers])

    def write_keyset(self, path: Path, now: int, lanes: Iterable[str] = ()) -> Path:
        """The key set file, and beside it each of `lanes`' key file (`lane_auth`)."""
        lanes = list(lanes)
        self.reissue_keyset(path, now, lanes)
        for lane in lanes:
            write_private_key(lane_key_path(path.parent, lane), self.lane_key(lane).private_key)
        return path

    def reissue_keyset(
        self, path: Path, now: int, lanes: Iterable[str], *, lapsed: bool = False
    ) -> None:
        """The key set file, issued at `now`, replaced whole: a lane re-reads it when it
        changes and must never meet half of it. `lapsed`: each token key expired an hour
        before `now` (a rotation gone wrong), the other keys as ever."""
        keys = self.keyset(now, lanes)
        if lapsed:
            keys = KeySet.of(
                now,
                [
                    replace(k, not_before=now - 2 * 86400, not_after=now - 3600)
                    if k.use is KeyUse.TOKEN
                    else k
                    for k in keys.keys.values()
                ],
            )
        write_atomically(path, keyset_to_json(keys).encode())

    def lane_key(self, lane: str) -> LaneKey:
        """Lane `lane`'s message key: the same for a seed and a lane id, every run."""
        secret = hashlib.sha256(f"lane-key/{self.seed}/{lane}".encode()).digest()
        kid = "lane-" + lane.replace("/", "-")
        return LaneKey(Ed25519PrivateKey.from_private_bytes(secret), kid.encode(), lane)

    def lane_auth(self, keys_dir: Path, lane: str) -> dict[str, Any]:
        """The `[auth]` keys of lane `lane` whose key `write_keyset` wrote in `keys_dir`."""
        kid = self.lane_key(lane).kid.decode()
        return {"lane_key": str(lane_key_path(keys_dir, lane)), "lane_kid": kid}

    def peers(
        self,
        lane: str,
        replay: ReplayStore,
        keys: Callable[[], KeySet],
        wall: Callable[[], float] = time.time,
    ) -> Peers:
        """Lane `lane`'s end of the peer messages, signing with `lane_key` (tests, benchmarks)."""
        return Peers(lane, self.lane_key(lane), keys, replay, accept_unsigned=False, wall=wall)

    def lane_auth_toml(self, keys_dir: Path, lane: str) -> str:
        """`lane_auth` as lines of a lane.toml's `[auth]`."""
        return "".join(f'{k} = "{v}"\n' for k, v in self.lane_auth(keys_dir, lane).items())

    def account(self) -> str:
        return f"a{self.rng.randrange(10**7):07d}"

    def make(self, kind: str, now: int, account: str | None = None) -> Code:
        """The code of `kind`, made at unix time `now` (a phone refreshes its token); a token
        of `account`, else of a new one."""
        if kind == "token":
            text = self._token(self.key, now, now + PHONE_TOKEN_TTL_S, account)
            self.used_tokens.append(text)
            return Code(kind, text, True)
        if kind == "alipay":
            prefix = self.rng.choice(["25", "26", "27", "28", "29", "30"])
            return Code(kind, prefix + self._digits(16), True)
        if kind == "wechat":
            prefix = self.rng.choice(["10", "11", "12", "13", "14", "15"])
            return Code(kind, prefix + self._digits(16), True)
        if kind == "unionpay":  # a UnionPay QR payment code: 19 digits starting 62
            return Code(kind, "62" + self._digits(17), True)
        if kind == "emv":
            pan = "5413" + self._digits(12)
            text = emv_cpm(pan, self.rng.randrange(1, 65535), self.rng.randbytes(8))
            return Code(kind, text, True)
        if kind == "forged":
            return Code(kind, self._token(self.forger, now, now + 60), False)
        if kind == "expired":
            return Code(kind, self._token(self.key, now - 600, now - 300), False)
        if kind == "long_lived":
            return Code(kind, self._token(self.key, now, now + LONG_LIVED_S), False)
        if kind == "replay" and self.used_tokens:
            return Code(kind, self.rng.choice(self.used_tokens), False)
        return Code("garbage", self.rng.choice(_GARBAGE) + self._digits(4), False)

    def _token(self, key: Ed25519PrivateKey, iat: int, exp: int, account: str | None = None) -> str:
        account = account or self.account()
        if self.token_format is TokenFormat.V2:
            return issue_compact_token(key, KID, account, iat, exp)
        nonce = self.rng.randbytes(12)
        return issue_token(key, KID, ISSUER, account, iat, exp, nonce)

    def _digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(n))


_GARBAGE = (
    "https://example.com/menu?table=",
    "WIFI:S:CafeGuest;T:WPA;P:",
    "BEGIN:VCARD\nFN:Someone\nTEL:+",
    "hello world ",
    "9999",
)
