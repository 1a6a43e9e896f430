"""Issuer key sets: public keys by key id, each valid for a window, for offline tokens.

A key set arrives as a JSON file (`load_keyset`) or as a msgpack payload on the retained MQTT
topic `lane/{plaza}/keys` (`decode_keyset`); both carry the same map and go through the same
validation (`parse_keyset`). JSON rather than TOML because key sets are written by machines
(the back office, `lane keys new`) and nest a list of records; the tariff, which people edit,
is TOML. Rotation is two keys side by side with overlapping windows; a token is checked
against the window of its key at the token's issued-at time.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization

from lane.auth.cose import Alg, PublicKey, alg_of_public
from lane.auth.sourced import (
    Reader,
    SourcedError,
    read_json_object,
    type_name,
    unpack_object,
)
from lane.wire.codec import pack
from lane.wire.utc import utc_text

KEYSET_VERSION = 1
# An MQTT key set's bound: ~9,000 keys (a real one holds a few per issuer, ~110 bytes each).
MAX_KEYSET_BYTES = 1 << 20
MAX_KID_LEN = 64  # the longest kid a signed text may name (lane.auth.signed)


class KeySetError(SourcedError):
    """A key set file or payload that cannot be used; says where and what."""


class KeyUse(enum.StrEnum):
    """What a key may sign: payment tokens (the wallet issuers), entry passes (a plaza), or the
    messages one lane sends the others (lane.auth.peer_messages). A key signs one kind only."""

    TOKEN = "token"
    PASS = "pass"
    LANE = "lane"


@dataclass(frozen=True)
class IssuerKey:
    kid: bytes
    alg: Alg
    public_key: PublicKey
    not_before: int  # unix seconds UTC, inclusive
    not_after: int  # unix seconds UTC, exclusive
    issuer: str | None = None  # when set, tokens signed with this key must carry this `iss`
    use: KeyUse = KeyUse.TOKEN
    plaza: str | None = None  # pass keys: the only plaza whose passes this key signs
    lane: str | None = None  # lane keys: the only lane (`plaza/lane`) whose messages it signs

    def valid_at(self, unix_s: float) -> bool:
        return self.not_before <= unix_s < self.not_after

    @property
    def kid_text(self) -> str:
        return kid_text(self.kid)


@dataclass(frozen=True)
class KeySet:
    issued_at: int  # when the issuer produced this set (unix seconds UTC)
    keys: Mapping[bytes, IssuerKey] = field(default_factory=dict)

    @classmethod
    def of(cls, issued_at: int, keys: Iterable[IssuerKey]) -> KeySet:
        by_kid: dict[bytes, IssuerKey] = {}
        for key in keys:
            if key.kid in by_kid:
                raise KeySetError("key set", kid_text(key.kid), "duplicate kid")
            by_kid[key.kid] = key
        return cls(issued_at, by_kid)

    def get(self, kid: bytes) -> IssuerKey | None:
        return self.keys.get(kid)

    def supersedes(self, other: KeySet) -> bool:
        """A set replaces the current one only when it is strictly newer."""
        return self.issued_at > other.issued_at


def keyset_stale(keyset: KeySet, now: float, max_age_s: float) -> bool:
    """True when the key set is older than `max_age_s`: the lane should raise an alarm."""
    return now - keyset.issued_at > max_age_s


NO_TOKEN_KEY_ALARM = "keyset_no_token_key"
# Token keys its text names (then "and N more").
NAMED_KEYS = 4


def no_token_key_now(keyset: KeySet, now: float) -> str | None:
    """The NO_TOKEN_KEY_ALARM's text while the set holds token keys and none of them
    is valid now (all expired, or not valid yet: a rotation gone wrong, a set that dropped the
    key phones still use): every offline token is refused, each for its key alone, with no other
    word. A set holding no token key at all (a lane that takes no offline tokens) says nothing."""
    tokens = sorted(
        (k for k in keyset.keys.values() if k.use is KeyUse.TOKEN), key=lambda k: k.not_after
    )
    if not tokens or any(k.valid_at(now) for k in tokens):
        return None
    named = [
        f"{k.kid_text} {'expired' if k.not_after <= now else 'not valid yet'}"
        for k in tokens[-NAMED_KEYS:]
    ]
    more = len(tokens) - len(named)
    return (
        "offline tokens refused: no token key of the key set is valid now"
        f" ({', '.join(named)}{f', and {more} more' if more else ''});"
        " clears once a key set with one arrives, or a key's time comes"
    )


def kid_text(kid: bytes) -> str:
    """A kid for people: its text when it is printable UTF-8, else `hex:...`."""
    try:
        text = kid.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + kid.hex()
    return text if text.isprintable() and text else "hex:" + kid.hex()


def parse_keyset(body: Mapping[str, Any], source: str) -> KeySet:
    read = Reader(source, KeySetError)
    version = read.integer(body, "v", "v", minimum=1)
    if version > KEYSET_VERSION:
        raise read.fail("v", f"key set format {version} is newer than this lane ({KEYSET_VERSION})")
    issued_at = read.time(body, "issued_at", "issued_at")
    entries = read.items(body, "keys", "keys")
    keys: dict[bytes, IssuerKey] = {}
    for i, entry in enumerate(entries):
        key = _parse_key(read, entry, f"keys[{i}]")
        if key.kid in keys:
            raise read.fail(f"keys[{i}].kid", f"duplicate kid {key.kid_text!r}")
        keys[key.kid] = key
    return KeySet(issued_at, keys)


def _parse_key(read: Reader, entry: Any, path: str) -> IssuerKey:
    if not isinstance(entry, Mapping):
        raise read.fail(path, f"must be a table, got {type_name(entry)}")
    kid = _parse_kid(read, entry, path)
    alg = _choice(read, Alg, read.text(entry, "alg", f"{path}.alg"), f"{path}.alg", "algorithm")
    public_key = _parse_public_key(read, entry.get("public_key"), f"{path}.public_key")
    actual = alg_of_public(public_key)
    if actual is not alg:
        got = actual.value if actual else type(public_key).__name__
        raise read.fail(f"{path}.public_key", f"holds an {got} key but alg says {alg.value}")
    not_before = read.time(entry, "not_before", f"{path}.not_before")
    not_after = read.time(entry, "not_after", f"{path}.not_after")
    if not_after <= not_before:
        raise read.fail(f"{path}.not_after", "must be later than not_before")
    issuer = None
    if entry.get("issuer") is not None:
        issuer = read.text(entry, "issuer", f"{path}.issuer")
    use = _parse_use(read, entry, path)
    plaza = read.text(entry, "plaza", f"{path}.plaza") if use is KeyUse.PASS else None
    lane = _parse_lane(read, entry, path) if use is KeyUse.LANE else None
    return IssuerKey(kid, alg, public_key, not_before, not_after, issuer, use, plaza, lane)


def _parse_use(read: Reader, entry: Mapping[str, Any], path: str) -> KeyUse:
    """`use` is optional (sets written before passes existed hold token keys only); `plaza`
    belongs to pass keys only, `lane` to lane keys only."""
    use = KeyUse.TOKEN
    if entry.get("use") is not None:
        use = _choice(read, KeyUse, read.text(entry, "use", f"{path}.use"), f"{path}.use", "use")
    if use is not KeyUse.PASS and entry.get("plaza") is not None:
        raise read.fail(f"{path}.plaza", 'only pass keys (use = "pass") belong to a plaza')
    if use is not KeyUse.LANE and entry.get("lane") is not None:
        raise read.fail(f"{path}.lane", 'only lane keys (use = "lane") belong to a lane')
    if use is KeyUse.LANE and entry.get("issuer") is not None:
        raise read.fail(f"{path}.issuer", "a lane key signs no tokens: it has no issuer")
    return use


def _parse_lane(read: Reader, entry: Mapping[str, Any], path: str) -> str:
    lane = read.text(entry, "lane", f"{path}.lane")
    plaza, sep, rest = lane.partition("/")
    if not (plaza and sep and rest) or "/" in rest or "+" in lane or "#" in lane:
        raise read.fail(f"{path}.lane", f"must be a lane id plaza/lane, got {lane!r}")
    return lane


E = TypeVar("E", bound=enum.Enum)


def _choice(read: Reader, kind: type[E], name: str, path: str, what: str) -> E:
    try:
        return kind(name)
    except ValueError:
        choices = ", ".join(str(c.value) for c in kind)
        raise read.fail(path, f"unknown {what} {name!r} (use {choices})") from None


def _parse_kid(read: Reader, entry: Mapping[str, Any], path: str) -> bytes:
    kid = _read_kid(read, entry, path)
    if len(kid) > MAX_KID_LEN:
        raise read.fail(f"{path}.kid", f"is {len(kid)} bytes; tokens carry at most {MAX_KID_LEN}")
    return kid


def _read_kid(read: Reader, entry: Mapping[str, Any], path: str) -> bytes:
    if "kid_hex" in entry:
        value = entry["kid_hex"]
        try:
            kid = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            kid = b""
        if not kid:
            raise read.fail(f"{path}.kid_hex", "must be a non-empty hex string")
        return kid
    value = entry.get("kid")
    if isinstance(value, bytes) and value:
        return value
    if isinstance(value, str) and value:
        return value.encode("utf-8")
    raise read.fail(f"{path}.kid", f"must be non-empty text or bytes, got {type_name(value)}")


def _parse_public_key(read: Reader, value: Any, path: str) -> PublicKey:
    """SubjectPublicKeyInfo: DER bytes, base64 of the DER, or PEM text."""
    try:
        if isinstance(value, bytes):
            loaded = serialization.load_der_public_key(value)
        elif isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
            loaded = serialization.load_pem_public_key(value.encode("ascii"))
        elif isinstance(value, str):
            der = base64.b64decode(value, validate=True)
            loaded = serialization.load_der_public_key(der)
        else:
            raise read.fail(path, f"must be base64 SubjectPublicKeyInfo, got {type_name(value)}")
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise read.fail(path, f"is not a public key: {exc}") from None
    if alg_of_public(loaded) is None:
        raise read.fail(path, f"unsupported key type {type(loaded).__name__} (ed25519 or P-256)")
    return loaded  # type: ignore[return-value]


def load_keyset(path: str | Path) -> KeySet:
    return parse_keyset(read_json_object(path, KeySetError), str(path))


def decode_keyset(payload: bytes, source: str = "mqtt keys") -> KeySet:
    body = unpack_object(payload, KEYSET_VERSION, source, KeySetError, MAX_KEYSET_BYTES)
    return parse_keyset(body, source)


def _key_fields(key: IssuerKey, json_form: bool) -> dict[str, Any]:
    der = key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    out: dict[str, Any] = {}
    if json_form:
        text = kid_text(key.kid)
        out.update({"kid_hex": key.kid.hex()} if text.startswith("hex:") else {"kid": text})
    else:
        out["kid"] = key.kid
    out["alg"] = key.alg.value
    if key.issuer is not None:
        out["issuer"] = key.issuer
    if key.use is KeyUse.PASS:  # token keys stay as older lanes wrote and read them
        out.update(use=key.use.value, plaza=key.plaza)
    elif key.use is KeyUse.LANE:
        out.update(use=key.use.value, lane=key.lane)
    out["public_key"] = base64.b64encode(der).decode("ascii") if json_form else der
    out["not_before"] = utc_text(key.not_before) if json_form else key.not_before
    out["not_after"] = utc_text(key.not_after) if json_form else key.not_after
    return out


def encode_keyset(keyset: KeySet) -> bytes:
    """The msgpack payload for `lane/{plaza}/keys` (publish it retained)."""
    keys = [_key_fields(k, json_form=False) for k in keyset.keys.values()]
    return pack({"issued_at": keyset.issued_at, "keys": keys}, v=KEYSET_VERSION)


def keyset_to_json(keyset: KeySet) -> str:
    body = {
        "v": KEYSET_VERSION,
        "issued_at": utc_text(keyset.issued_at),
        "keys": [_key_fields(k, json_form=True) for k in keyset.keys.values()],
    }
    return json.dumps(body, indent=2) + "\n"
