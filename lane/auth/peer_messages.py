"""Messages one lane sends the others, signed with the sending lane's key (pure).

Lanes share one broker account, so the topic and the `lane` a payload names prove nothing:
each message a lane sends its peers (a used token or pass and its release on
`plaza/{plaza}/used_tokens`, a metro tap on `line/{line}/taps`, a plate binding on
`road/plates/{plate}`) goes out as a COSE_Sign1 (lane.auth.cose: tagged, strict CBOR) whose
protected header holds the algorithm and the sending lane's kid and whose payload is the
message's own msgpack bytes. A receiver takes it only when:

- the kid names a key of the key set whose `use` is `lane` (a token or pass key never signs a
  lane message, and a lane key never signs a token or a pass: lane.auth.tokens and
  lane.auth.passes take only their own use),
- the key is valid now (its not_before..not_after) and its algorithm is the header's,
- the signature verifies, the payload decodes as the topic's message,
- and the lane the message names is the key's lane: a lane signs for itself only.

An unsigned message is taken only while `accept_unsigned` (a plaza upgrading lane by lane)
and only in the name of a lane without a lane key valid now in the key set: a lane whose key
is there signs, so a bare message in its name is anybody's.

`open_peer` never raises and reads no clock: any input becomes `PeerRefused` with a
`PeerRefusal` (and the lane the message claims, when it could be read, for the log line and
the alarm). Replays of a genuine message are the receiver's rules (lane.auth.plaza,
lane.tap_desk, lane.trip_desk), each by the message's signed time.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Generic, TypeVar

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lane.auth.cose import (
    HEADER_ALG,
    HEADER_KID,
    Alg,
    CoseError,
    PrivateKey,
    PublicKey,
    alg_of_private,
    decode_sign1,
    encode_sign1,
    verify,
)
from lane.auth.keys import IssuerKey, KeySet, KeyUse, kid_text
from lane.refusal_log import passed
from lane.wire.codec import PayloadError

# The first byte of a tagged COSE_Sign1 (CBOR tag 18): never the first byte of a msgpack map,
# so a receiver tells a signed message from an unsigned one of an older lane at once.
SIGNED_PREFIX = b"\xd2"
MAX_MESSAGE_BYTES = 16 * 1024  # ours are 100-600 bytes

T = TypeVar("T")


class PeerRefusal(enum.StrEnum):
    UNSIGNED = "unsigned"  # a bare msgpack message: a lane not upgraded, or anybody
    # Bare, in the name of a lane whose key the key set holds: that lane signs, so anybody.
    UNSIGNED_FROM_SIGNER = "unsigned_from_signer"
    MALFORMED = "malformed"  # not a COSE_Sign1 of ours, or its payload is not the message
    UNKNOWN_KEY = "unknown_key"  # no key with that kid in the key set
    NOT_A_LANE_KEY = "not_a_lane_key"  # the kid names a token or pass key
    KEY_NOT_VALID = "key_not_valid"  # the key's window does not hold now
    WRONG_ALGORITHM = "wrong_algorithm"
    BAD_SIGNATURE = "bad_signature"
    WRONG_LANE = "wrong_lane"  # signed by one lane's key, the message names another lane


# What an operator reads in the alarm (`messages from p07/l03 refused: ...`).
REFUSAL_TEXT = {
    PeerRefusal.UNSIGNED: "unsigned (auth.accept_unsigned_peers is off)",
    PeerRefusal.UNSIGNED_FROM_SIGNER: "unsigned, yet the key set holds its lane key",
    PeerRefusal.MALFORMED: "not a signed message of ours",
    PeerRefusal.UNKNOWN_KEY: "no lane key for it in the key set",
    PeerRefusal.NOT_A_LANE_KEY: "signed with a key that is not a lane key",
    PeerRefusal.KEY_NOT_VALID: "its lane key is not valid now (not_before/not_after)",
    PeerRefusal.WRONG_ALGORITHM: "its signature's algorithm is not its key's",
    PeerRefusal.BAD_SIGNATURE: "bad signature",
    PeerRefusal.WRONG_LANE: "signed with another lane's key",
}


@dataclass(frozen=True)
class LaneKey:
    """A lane's signing key (`auth.lane_key`, `auth.lane_kid`) and the lane it signs for."""

    private_key: PrivateKey
    kid: bytes
    lane: str

    def public(self, not_before: int, not_after: int) -> IssuerKey:
        """Its key set entry (what `lane keys new --lane` adds)."""
        alg = alg_of_private(self.private_key)
        public = self.private_key.public_key()
        return IssuerKey(self.kid, alg, public, not_before, not_after, use=KeyUse.LANE,
                         lane=self.lane)  # fmt: skip

    def seal(self, payload: bytes) -> bytes:
        """The message's bytes as sent: a COSE_Sign1 over the msgpack payload."""
        return encode_sign1(self.private_key, self.kid, payload)


@dataclass(frozen=True)
class PeerOpened(Generic[T]):
    message: T
    payload: bytes  # the inner msgpack bytes (what an unsigned lane would have sent)
    lane: str  # the sending lane (the key's, which the message names)
    signed: bool  # False: taken unsigned (auth.accept_unsigned_peers)


@dataclass(frozen=True)
class PeerRefused:
    reason: PeerRefusal
    detail: str
    lane: str | None = None  # the lane the message claims, when it could be read
    kid: str | None = None

    @property
    def text(self) -> str:
        return REFUSAL_TEXT[self.reason]


def is_signed(data: bytes) -> bool:
    return data[:1] == SIGNED_PREFIX


def open_peer(
    data: bytes,
    keys: KeySet,
    now: float,
    decode: Callable[[bytes], T],
    lane_of: Callable[[T], str],
    *,
    accept_unsigned: bool = False,
) -> PeerOpened[T] | PeerRefused:
    """Verify and decode one peer message. `decode` raises PayloadError (or ValueError) for
    bytes that are not the topic's message; `lane_of` reads the lane it names."""
    if len(data) > MAX_MESSAGE_BYTES:
        return PeerRefused(PeerRefusal.MALFORMED, f"{len(data)} bytes, at most {MAX_MESSAGE_BYTES}")
    if not is_signed(data):
        try:
            bare = decode(data)
        except (PayloadError, ValueError) as exc:
            return PeerRefused(PeerRefusal.MALFORMED, str(exc))
        claimed = lane_of(bare)
        if not accept_unsigned:
            return PeerRefused(PeerRefusal.UNSIGNED, "not signed", claimed)
        signer = _lane_key(keys, claimed, now)
        if signer is not None:
            named = kid_text(signer.kid)
            detail = f"not signed, yet {named!r} is its lane key"
            return PeerRefused(PeerRefusal.UNSIGNED_FROM_SIGNER, detail, claimed, named)
        return PeerOpened(bare, data, claimed, signed=False)
    try:
        sign1 = decode_sign1(data)
        message = decode(sign1.payload)
    except (CoseError, PayloadError, ValueError) as exc:
        return PeerRefused(PeerRefusal.MALFORMED, str(exc))
    claimed = lane_of(message)
    kid = sign1.header.get(HEADER_KID)
    if not isinstance(kid, bytes) or not kid:
        return PeerRefused(PeerRefusal.MALFORMED, "no kid in the protected header", claimed)
    named = kid_text(kid)
    key = keys.get(kid)
    if key is None:
        return PeerRefused(PeerRefusal.UNKNOWN_KEY, f"no key {named!r}", claimed, named)
    if key.use is not KeyUse.LANE:
        return PeerRefused(PeerRefusal.NOT_A_LANE_KEY, f"a {key.use} key", claimed, named)
    if not key.valid_at(now):
        return PeerRefused(PeerRefusal.KEY_NOT_VALID, "outside its window", claimed, named)
    alg = sign1.header.get(HEADER_ALG)
    if not isinstance(alg, int) or isinstance(alg, bool) or Alg.from_cose(alg) is not key.alg:
        return PeerRefused(PeerRefusal.WRONG_ALGORITHM, f"alg {alg!r}", claimed, named)
    if not verify(key.public_key, sign1.signature, sign1.to_be_signed()):
        return PeerRefused(PeerRefusal.BAD_SIGNATURE, "signature does not verify", claimed, named)
    if claimed != key.lane:
        detail = f"key {named!r} is lane {key.lane}'s"
        return PeerRefused(PeerRefusal.WRONG_LANE, detail, claimed, named)
    return PeerOpened(message, sign1.payload, claimed, signed=True)


def _lane_key(keys: KeySet, lane: str, now: float) -> IssuerKey | None:
    """A key of `lane` valid now: with one in the key set, the lane signs what it sends."""
    for key in keys.keys.values():
        if key.use is KeyUse.LANE and key.lane == lane and key.valid_at(now):
            return key
    return None


def own_key_missing(keys: KeySet, own: LaneKey, now: float) -> str | None:
    """The alarm text when peers would refuse this lane's messages: its kid is not a lane key
    of its own lane, valid now, in the key set it holds (the peers hold the same set)."""
    key = keys.get(own.kid)
    named = kid_text(own.kid)
    if key is None:
        return f"peers will refuse this lane's messages: its key {named} is not in the key set"
    if key.use is not KeyUse.LANE or key.lane != own.lane:
        return (
            f"peers will refuse this lane's messages: key {named} in the key set is not"
            f" lane {own.lane}'s lane key"
        )
    if _spki(key.public_key) != _spki(own.private_key.public_key()):
        return (
            f"peers will refuse this lane's messages: key {named} in the key set is not"
            " the public half of auth.lane_key"
        )
    if not key.valid_at(now):
        return f"peers will refuse this lane's messages: its key {named} is not valid now"
    return None


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


PEER_QUIET_S = 600.0  # a lane's refusal, or an unsigned message taken, is forgotten after it
MAX_WATCHED = 64  # lanes named in refusals: a flood of invented lane ids stays bounded
MAX_NAMED = 4  # lanes an alarm text names (then "and N more")


@dataclass
class PeerWatch:
    """What the peer alarms say, from the messages a lane refused or took unsigned (pure: the
    time is a parameter). A lane's refusal clears once a message of that lane verifies, or
    `quiet_s` after its last refusal (a lane id nobody owns never sends a good one)."""

    quiet_s: float = PEER_QUIET_S
    refused: dict[str, tuple[PeerRefusal, float]] = dataclass_field(default_factory=dict)
    unsigned: dict[str, float] = dataclass_field(default_factory=dict)

    def refusal(self, lane: str, reason: PeerRefusal, now: float) -> None:
        self.refused.pop(lane, None)  # the newest last: the oldest goes first when full
        self.refused[lane] = (reason, now)
        _bound(self.refused)

    def opened(self, lane: str, signed: bool, now: float) -> None:
        self.refused.pop(lane, None)
        if not signed:
            self.unsigned.pop(lane, None)
            self.unsigned[lane] = now
            _bound(self.unsigned)

    def refused_text(self, now: float) -> str | None:
        """`peer_messages_refused`: which lanes' messages are refused, and why."""
        _forget(self.refused, lambda seen: seen[1], now, self.quiet_s)
        said = [f"messages from {lane} refused: {REFUSAL_TEXT[reason]}"
                for lane, (reason, _) in self.refused.items()]  # fmt: skip
        return _named(said, "; ")

    def unsigned_text(self, now: float) -> str | None:
        """`unsigned_peer_messages`: lanes whose unsigned messages were taken lately."""
        _forget(self.unsigned, lambda seen: seen, now, self.quiet_s)
        lanes = _named(list(self.unsigned), ", ")
        if lanes is None:
            return None
        return (
            f"unsigned messages taken from {lanes} (auth.accept_unsigned_peers is on:"
            " turn it off once every lane signs)"
        )


V = TypeVar("V")


def _bound(seen: dict[str, V]) -> None:
    while len(seen) > MAX_WATCHED:
        del seen[next(iter(seen))]


def _forget(seen: dict[str, V], when: Callable[[V], float], now: float, quiet_s: float) -> None:
    """Forget what was seen `quiet_s` ago, or at a time the clock has since been set back past:
    a step back by hours must not hold an alarm up for hours."""
    for lane in [lane for lane, value in seen.items() if passed(when(value), now, quiet_s)]:
        del seen[lane]


def _named(items: list[str], sep: str) -> str | None:
    """The newest `MAX_NAMED` items, and how many more."""
    if not items:
        return None
    more = len(items) - MAX_NAMED
    return sep.join(items[-MAX_NAMED:]) + (f"{sep}and {more} more" if more > 0 else "")
