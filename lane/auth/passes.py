"""Entry passes of a closed road: issued at an entry lane, verified offline at an exit lane.

QR text = "LP1:" + Base45(COSE_Sign1); the payload is a CBOR map with small integer labels:

| label | claim | type |
|---|---|---|
| 1 | entry plaza (or metro station) | text, 1..32 |
| 2 | entry lane | text, 1..32 |
| 3 | time of entry | integer unix seconds UTC |
| 4 | vehicle class read at entry | integer 0..999 |
| 5 | pass id | bytes, 8..16 |
| 6 | plate read at entry (optional) | text, 1..16 |

Signed with the entry plaza's key: a key set entry with `use = "pass"` and `plaza` set
(docs/tokens.md, docs/closed-road.md). Pure: `verify_pass` takes the clock as a parameter and
never raises; any input becomes a `PassRefused` with a `PassReason`. Whether the pass has
already exited is not decided here: the used-pass store owns that (lane.auth.replay, keyed
by `pass_key(pass_id)`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from lane.auth.base45 import b45encode
from lane.auth.cose import PrivateKey, encode_sign1
from lane.auth.keys import IssuerKey, KeySet, KeyUse
from lane.auth.signed import (
    ClaimError,
    OpenFailure,
    SignedTextError,
    claims_map,
    int_claim,
    open_signed,
    text_claim,
)

PREFIX = "LP1:"
MAX_TEXT_LEN = 512  # ours are ~190 characters
MAX_PLACE_LEN = 32
MAX_PLATE_LEN = 16
PASS_ID_LEN = (8, 16)
MAX_CLASS = 999
MAX_TIME = 1 << 40
DAY_S = 86_400
# road.pass_lifetime_days' default: how long after its entry a pass is a trip.
DEFAULT_PASS_LIFETIME_S = 30 * DAY_S
# Namespace of pass ids in the replay store, so a pass id can never collide with a token id.
USED_PASS_PREFIX = "pass:"

LABEL_PLAZA, LABEL_LANE, LABEL_TIME, LABEL_CLASS, LABEL_ID, LABEL_PLATE = 1, 2, 3, 4, 5, 6


class PassReason(enum.StrEnum):
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"  # no pass key with that kid, or the key is another plaza's
    RETIRED_KEY = "retired_key"  # the plaza key was not valid when the pass says it was issued
    BAD_SIGNATURE = "bad_signature"
    WRONG_ALGORITHM = "wrong_algorithm"
    NOT_YET_VALID = "not_yet_valid"  # entered in the future (beyond the clock skew)
    EXPIRED = "expired"  # older than the pass lifetime: not a trip any more


@dataclass(frozen=True)
class EntryPass:
    plaza: str
    lane: str
    entered_at: int
    vehicle_class: int
    pass_id: bytes
    plate: str | None = None

    @property
    def pass_hex(self) -> str:
        return self.pass_id.hex()


@dataclass(frozen=True)
class PassAccepted:
    entry: EntryPass
    kid: bytes


@dataclass(frozen=True)
class PassRefused:
    reason: PassReason
    detail: str


PassVerdict = PassAccepted | PassRefused


def pass_key(pass_hex: str) -> str:
    """The used-pass store key of a pass (a namespace inside the replay store)."""
    return USED_PASS_PREFIX + pass_hex


def pass_valid_until(entered_at: float, skew_s: float, lifetime_s: float) -> float:
    """The last moment a pass entered at `entered_at` is accepted (later it is EXPIRED): what
    the used-pass store keeps its id by."""
    return entered_at + lifetime_s + skew_s


class _RefusedError(Exception):
    def __init__(self, reason: PassReason, detail: str) -> None:
        super().__init__(detail)
        self.verdict = PassRefused(reason, detail)


def verify_pass(
    text: object, keys: KeySet, now: float, skew_s: float, max_age_s: float
) -> PassVerdict:
    """Decide whether an entry pass is genuine and current at `now` (unix seconds UTC).

    `max_age_s` is the pass lifetime (days): older passes are EXPIRED. The road's trip time
    limit (hours) is a fare rule (lane.auth.trip_rules), not a refusal."""
    try:
        return _verify(text, keys, now, skew_s, max_age_s)
    except _RefusedError as refusal:
        return refusal.verdict
    except Exception as exc:  # belt and braces: the fuzz tests assert this never happens
        return PassRefused(PassReason.MALFORMED, f"internal error {exc.__class__.__name__}: {exc}")


def _pass_key(keys: KeySet) -> Callable[[bytes], IssuerKey | None]:
    def lookup(kid: bytes) -> IssuerKey | None:
        key = keys.get(kid)
        return key if key is not None and key.use is KeyUse.PASS else None

    return lookup


def _verify(text: object, keys: KeySet, now: float, skew_s: float, max_age_s: float) -> PassVerdict:
    if not all(math.isfinite(x) for x in (now, skew_s, max_age_s)) or skew_s < 0:
        raise _RefusedError(PassReason.MALFORMED, f"verifier called with now={now} skew={skew_s}")
    try:
        opened = open_signed(text, PREFIX, MAX_TEXT_LEN, _pass_key(keys))
    except SignedTextError as exc:
        raise _RefusedError(_REASON_OF[exc.failure], exc.detail) from None
    try:
        entry = parse_claims(opened.payload)
    except ClaimError as exc:
        raise _RefusedError(PassReason.MALFORMED, str(exc)) from None
    key = opened.key
    if key.plaza != entry.plaza:
        detail = f"key {key.kid_text!r} signs for plaza {key.plaza!r}, pass says {entry.plaza!r}"
        raise _RefusedError(PassReason.UNKNOWN_KEY, detail)
    if not key.valid_at(entry.entered_at):
        detail = (
            f"plaza key {key.kid_text!r} is valid [{key.not_before}, {key.not_after}), "
            f"pass issued {entry.entered_at}"
        )
        raise _RefusedError(PassReason.RETIRED_KEY, detail)
    if entry.entered_at > now + skew_s:
        detail = f"entered at {entry.entered_at}, now {now:.0f}"
        raise _RefusedError(PassReason.NOT_YET_VALID, detail)
    if now > pass_valid_until(entry.entered_at, skew_s, max_age_s):
        detail = f"entered at {entry.entered_at}, older than {max_age_s:.0f} s"
        raise _RefusedError(PassReason.EXPIRED, detail)
    return PassAccepted(entry, key.kid)


_REASON_OF = {
    OpenFailure.MALFORMED: PassReason.MALFORMED,
    OpenFailure.UNKNOWN_KEY: PassReason.UNKNOWN_KEY,
    OpenFailure.WRONG_ALGORITHM: PassReason.WRONG_ALGORITHM,
    OpenFailure.BAD_SIGNATURE: PassReason.BAD_SIGNATURE,
}


def parse_claims(payload: bytes) -> EntryPass:
    """The pass a verified payload holds, or ClaimError naming the claim out of profile."""
    body = claims_map(payload)
    unknown = set(body) - {LABEL_PLAZA, LABEL_LANE, LABEL_TIME, LABEL_CLASS, LABEL_ID, LABEL_PLATE}
    if unknown:
        raise ClaimError(f"unknown claim labels {sorted(map(str, unknown))}")
    plaza = text_claim(body, LABEL_PLAZA, "plaza", MAX_PLACE_LEN, printable=True)
    lane = text_claim(body, LABEL_LANE, "lane", MAX_PLACE_LEN, printable=True)
    entered_at = int_claim(body, LABEL_TIME, "time", MAX_TIME - 1)
    vehicle_class = int_claim(body, LABEL_CLASS, "class", MAX_CLASS)
    pass_id = body.get(LABEL_ID)
    low, high = PASS_ID_LEN
    if not isinstance(pass_id, bytes) or not low <= len(pass_id) <= high:
        raise ClaimError(f"pass id (5) must be {low}..{high} bytes")
    plate = None
    if LABEL_PLATE in body:
        plate = text_claim(body, LABEL_PLATE, "plate", MAX_PLATE_LEN, printable=True)
    return EntryPass(plaza, lane, entered_at, vehicle_class, pass_id, plate)


def issue_pass(private_key: PrivateKey, kid: bytes, entry: EntryPass) -> str:
    """Sign an entry pass (the entry lane, tests, the simulator); ValueError on bad input,
    so a lane never prints a pass that no exit could read."""
    claims: dict[int, Any] = {
        LABEL_PLAZA: entry.plaza,
        LABEL_LANE: entry.lane,
        LABEL_TIME: entry.entered_at,
        LABEL_CLASS: entry.vehicle_class,
        LABEL_ID: entry.pass_id,
    }
    if entry.plate is not None:
        claims[LABEL_PLATE] = entry.plate
    payload = cbor2.dumps(claims)
    try:
        parse_claims(payload)
    except ClaimError as exc:
        raise ValueError(f"not a valid pass: {exc}") from None
    if not kid:
        raise ValueError("kid must be non-empty")
    return PREFIX + b45encode(encode_sign1(private_key, kid, payload))
