"""The messages lanes send each other, signed with the sending lane's key (lane.auth.peer_messages,
pure): every refusal, a table and hypothesis; lane keys and token/pass keys never stand in for
each other; the alarms' texts raise and clear by themselves."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.auth.cose import COSE_SIGN1_TAG, HEADER_ALG, HEADER_KID, Alg, encode_sign1, sign
from lane.auth.deny import DenyList
from lane.auth.issuer import PlazaPassKey, TokenIssuer
from lane.auth.keys import KeySet, KeySetError, KeyUse, keyset_to_json, parse_keyset
from lane.auth.passes import EntryPass, PassReason, PassRefused, verify_pass
from lane.auth.peer_messages import (
    MAX_NAMED,
    PEER_QUIET_S,
    LaneKey,
    PeerOpened,
    PeerRefusal,
    PeerRefused,
    PeerWatch,
    open_peer,
    own_key_missing,
)
from lane.auth.plaza import UsedTokenMsg, decode_used_token, encode_used_token
from lane.auth.tokens import Reason as TokenReason
from lane.auth.tokens import TokenRefused, verify_token
from lane.refusal_log import RefusalLog, RefusalsCounted
from sim.codes import CodeFactory

NOW = 1_800_000_000
CODES = CodeFactory(9)
A, B = "p07/l01", "p07/l02"
KEY_A, KEY_B = CODES.lane_key(A), CODES.lane_key(B)
ES256_A = LaneKey(TokenIssuer.generate(Alg.ES256).private_key, b"es-a", A)
TOKENS = TokenIssuer.generate(kid=b"tok")
PASSES = PlazaPassKey.generate("p07", kid=b"pass")
KEYS = KeySet.of(NOW - 100, [KEY_A.public(NOW - 86_400, NOW + 86_400),
                             KEY_B.public(NOW - 86_400, NOW + 86_400),
                             ES256_A.public(NOW - 86_400, NOW + 86_400),
                             TOKENS.public(), PASSES.public()])  # fmt: skip
USE = UsedTokenMsg("ab" * 16, NOW + 60, A, NOW)


def opened(data: bytes, keys: KeySet = KEYS, now: float = NOW, **kw: bool) -> object:
    return open_peer(data, keys, now, decode_used_token, lambda m: m.lane, **kw)


def seal_with(
    private: LaneKey | TokenIssuer | PlazaPassKey, kid: bytes, msg: UsedTokenMsg
) -> bytes:
    return encode_sign1(private.private_key, kid, encode_used_token(msg))


def test_a_message_signed_by_its_lane_opens() -> None:
    for key in (KEY_A, ES256_A):
        got = opened(key.seal(encode_used_token(USE)))
        assert got == PeerOpened(USE, encode_used_token(USE), A, signed=True)


def _tampered() -> bytes:
    parts = list(cbor2.loads(KEY_A.seal(encode_used_token(USE))).value)
    parts[2] = encode_used_token(replace(USE, token_id="cd" * 16))
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, parts)))


def _header(alg: object, kid: object) -> bytes:
    """Signed by A's key, with the protected header given."""
    protected = cbor2.dumps({HEADER_ALG: alg, HEADER_KID: kid})
    payload = encode_used_token(USE)
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    signature = sign(KEY_A.private_key, tbs)
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature])))


@pytest.mark.parametrize(
    ("data", "reason", "lane"),
    [
        (encode_used_token(USE), PeerRefusal.UNSIGNED, A),
        (b"\xd2garbage", PeerRefusal.MALFORMED, None),
        (b"\xc1", PeerRefusal.MALFORMED, None),
        (b"\xd2" + b"\x00" * 20_000, PeerRefusal.MALFORMED, None),
        (KEY_A.seal(b"\x93not a message"), PeerRefusal.MALFORMED, None),
        (_header(-8, None), PeerRefusal.MALFORMED, A),
        (CodeFactory(10).lane_key(A).seal(encode_used_token(USE)), PeerRefusal.BAD_SIGNATURE, A),
        (_tampered(), PeerRefusal.BAD_SIGNATURE, A),
        (seal_with(KEY_A, b"nobody", USE), PeerRefusal.UNKNOWN_KEY, A),
        # A token issuer's or a plaza's key signs tokens or passes, never a lane's message.
        (seal_with(TOKENS, b"tok", USE), PeerRefusal.NOT_A_LANE_KEY, A),
        (seal_with(PASSES, b"pass", USE), PeerRefusal.NOT_A_LANE_KEY, A),
        (_header(-7, KEY_A.kid), PeerRefusal.WRONG_ALGORITHM, A),
        (_header(True, KEY_A.kid), PeerRefusal.WRONG_ALGORITHM, A),
        # B's key, a message that says it is A's: B speaks for B only.
        (KEY_B.seal(encode_used_token(USE)), PeerRefusal.WRONG_LANE, A),
        (seal_with(KEY_B, KEY_A.kid, USE), PeerRefusal.BAD_SIGNATURE, A),
    ],
)
def test_every_refusal(data: bytes, reason: PeerRefusal, lane: str | None) -> None:
    got = opened(data)
    assert isinstance(got, PeerRefused)
    assert (got.reason, got.lane) == (reason, lane)
    assert got.text  # what the alarm says


def test_a_lane_key_is_taken_only_inside_its_window() -> None:
    data = KEY_A.seal(encode_used_token(USE))
    for now in (NOW - 86_401, NOW + 86_400):
        got = opened(data, now=now)
        assert isinstance(got, PeerRefused) and got.reason is PeerRefusal.KEY_NOT_VALID
    assert isinstance(opened(data, now=NOW + 86_399), PeerOpened)


def test_an_unsigned_message_is_taken_only_while_the_switch_is_on() -> None:
    bare = encode_used_token(USE)
    alone = KeySet.of(NOW - 100, [KEY_B.public(NOW - 86_400, NOW + 86_400)])
    assert opened(bare, alone, accept_unsigned=True) == PeerOpened(USE, bare, A, signed=False)
    got = opened(b"\xc1", accept_unsigned=True)
    assert isinstance(got, PeerRefused) and got.reason is PeerRefusal.MALFORMED


def test_an_unsigned_message_of_a_lane_whose_key_is_in_the_key_set_is_refused() -> None:
    """Upgrading: a lane with its key in the key set signs, so an unsigned message in its name is
    somebody with the broker password, switch or not; one whose key is not valid now cannot sign
    yet (or any more) and is taken unsigned while the switch is on."""
    bare = encode_used_token(USE)
    got = opened(bare, accept_unsigned=True)
    assert isinstance(got, PeerRefused)
    assert (got.reason, got.lane) == (PeerRefusal.UNSIGNED_FROM_SIGNER, A)
    assert got.text == "unsigned, yet the key set holds its lane key"
    later = opened(bare, now=NOW + 86_400, accept_unsigned=True)
    assert later == PeerOpened(USE, bare, A, signed=False)


def test_a_lane_key_verifies_no_token_and_no_pass() -> None:
    """The same bytes a lane key signs as a token or a pass are refused as an unknown key."""
    lane_as_issuer = TokenIssuer(KEY_A.private_key, KEY_A.kid, "wallet.example")
    token = lane_as_issuer.token("acct", NOW)
    verdict = verify_token(token, KEYS, DenyList.empty(), NOW + 1, 5, 900)
    assert isinstance(verdict, TokenRefused) and verdict.reason is TokenReason.UNKNOWN_KEY
    lane_as_plaza = PlazaPassKey(KEY_A.private_key, KEY_A.kid, "p07")
    text = lane_as_plaza.issue(EntryPass("p07", "e1", NOW - 60, 1, b"\x01" * 12))
    refused = verify_pass(text, KEYS, NOW, 5, 86_400)
    assert isinstance(refused, PassRefused) and refused.reason is PassReason.UNKNOWN_KEY


def test_a_lane_key_in_a_key_set_file_names_its_lane_and_nothing_else() -> None:
    entry = KEY_A.public(NOW - 60, NOW + 60)
    parsed = parse_keyset(_json(KeySet.of(NOW, [entry])), "keys.json")
    assert parsed.keys[KEY_A.kid] == entry
    assert parsed.keys[KEY_A.kid].use is KeyUse.LANE
    body = _json(KeySet.of(NOW, [entry]))
    for change, problem in (
        ({"lane": None}, r"keys\[0\]\.lane: is missing"),
        ({"lane": "p07"}, "plaza/lane"),
        ({"lane": "p07/l01/x"}, "plaza/lane"),
        ({"lane": "p07/+"}, "plaza/lane"),
        ({"plaza": "p07"}, "only pass keys"),
        ({"issuer": "wallet.example"}, "no issuer"),
        ({"use": "token"}, "only lane keys"),
        ({"use": "pass", "plaza": "p07"}, "only lane keys"),
    ):
        key = {k: v for k, v in {**body["keys"][0], **change}.items() if v is not None}
        with pytest.raises(KeySetError, match=problem):
            parse_keyset({**body, "keys": [key]}, "keys.json")


def _json(keys: KeySet) -> dict[str, object]:
    body: dict[str, object] = json.loads(keyset_to_json(keys))
    return body


def test_a_sender_knows_when_its_peers_would_refuse_it() -> None:
    assert own_key_missing(KEYS, KEY_A, NOW) is None
    missing = own_key_missing(KeySet.of(NOW, [TOKENS.public()]), KEY_A, NOW)
    kid = KEY_A.kid.decode()
    assert missing == f"peers will refuse this lane's messages: its key {kid} is not in the key set"
    other = dataclasses.replace(KEY_A, lane=B)
    assert "is not lane p07/l02's lane key" in (own_key_missing(KEYS, other, NOW) or "")
    stolen = dataclasses.replace(CodeFactory(10).lane_key(A))
    assert "not the public half" in (own_key_missing(KEYS, stolen, NOW) or "")
    assert "not valid now" in (own_key_missing(KEYS, KEY_A, NOW + 86_400) or "")


_lanes = st.sampled_from([A, B, "p07/l09", "p08/l01"])
_messages = st.builds(UsedTokenMsg, st.text(min_size=1, max_size=40), st.integers(0, 2**40 - 1),
                      _lanes, st.floats(0, 2e9))  # fmt: skip


@given(_messages, st.sampled_from([KEY_A, KEY_B, ES256_A]), st.integers(-1, 400),
       st.binary(max_size=8))  # fmt: skip
def test_only_an_untouched_message_signed_by_its_own_lane_opens(
    msg: UsedTokenMsg, key: LaneKey, flip: int, junk: bytes
) -> None:
    data = bytearray(key.seal(encode_used_token(msg)))
    if 0 <= flip < len(data):
        data[flip] ^= 0x01
    data += junk
    got = opened(bytes(data))
    if flip < 0 and not junk and msg.lane == key.lane:
        assert got == PeerOpened(msg, encode_used_token(msg), msg.lane, signed=True)
    elif isinstance(got, PeerOpened):
        # A flipped bit the CBOR or the signature does not cover (an unprotected header's
        # byte turned into another empty map, say) changes nothing signed.
        assert got.message == msg and got.lane == key.lane and msg.lane == key.lane
    else:
        assert isinstance(got, PeerRefused)


@given(st.binary(max_size=600))
def test_any_bytes_open_or_are_refused_never_raise(data: bytes) -> None:
    got = opened(data, accept_unsigned=True)
    assert isinstance(got, PeerOpened | PeerRefused)
    if isinstance(got, PeerOpened):
        assert not got.signed


def test_a_refused_lane_is_alarmed_until_it_verifies_again_or_goes_quiet() -> None:
    watch = PeerWatch()
    assert watch.refused_text(NOW) is None
    watch.refusal(A, PeerRefusal.UNKNOWN_KEY, NOW)
    watch.refusal(B, PeerRefusal.BAD_SIGNATURE, NOW + 1)
    assert watch.refused_text(NOW + 2) == (
        "messages from p07/l01 refused: no lane key for it in the key set; "
        "messages from p07/l02 refused: bad signature"
    )
    watch.opened(A, True, NOW + 3)  # A's key arrived: its messages verify
    assert watch.refused_text(NOW + 4) == "messages from p07/l02 refused: bad signature"
    assert watch.refused_text(NOW + 1 + PEER_QUIET_S - 0.1) is not None
    assert watch.refused_text(NOW + 1 + PEER_QUIET_S) is None  # nothing since


def test_a_clock_set_back_counts_as_the_quiet_time_passed() -> None:
    """A step back by hours (an NTP correction) must not hold a peer alarm up for hours: the
    refusal is forgotten, and said again at once if the lane is still refused."""
    watch = PeerWatch()
    watch.refusal(A, PeerRefusal.UNKNOWN_KEY, NOW)
    watch.opened(B, False, NOW)
    assert watch.refused_text(NOW - 3 * 3600) is None
    assert watch.unsigned_text(NOW - 3 * 3600) is None
    watch.refusal(A, PeerRefusal.UNKNOWN_KEY, NOW - 3 * 3600 + 1)
    assert watch.refused_text(NOW - 3 * 3600 + 2) is not None


def test_unsigned_messages_taken_are_alarmed_until_none_for_a_while() -> None:
    watch = PeerWatch()
    watch.opened(A, True, NOW)
    assert watch.unsigned_text(NOW) is None
    watch.opened(A, False, NOW)
    text = watch.unsigned_text(NOW + 1)
    assert text is not None and text.startswith("unsigned messages taken from p07/l01 (")
    assert "accept_unsigned_peers" in text
    assert watch.unsigned_text(NOW + PEER_QUIET_S + 1) is None


def test_an_alarm_names_a_few_lanes_and_counts_the_rest() -> None:
    watch = PeerWatch()
    for n in range(200):  # a flood of invented lane ids
        watch.refusal(f"p07/f{n}", PeerRefusal.UNKNOWN_KEY, NOW + n)
    text = watch.refused_text(NOW + 200) or ""
    assert text.count("messages from") == MAX_NAMED and text.endswith("and 60 more")
    assert "p07/f199" in text and len(watch.refused) == 64


def test_a_kind_of_refusal_is_logged_once_a_window_and_the_rest_counted() -> None:
    log = RefusalLog(every_s=60)
    used, plate = "used-token message", "plate binding"
    assert log.admit(used, PeerRefusal.MALFORMED, NOW)
    assert log.admit(plate, PeerRefusal.MALFORMED, NOW)  # another message: its own line
    assert log.admit(used, PeerRefusal.UNSIGNED, NOW)  # another reason: its own line
    assert not any(log.admit(used, PeerRefusal.MALFORMED, NOW + n) for n in range(1, 100))
    assert log.counted(NOW + 59.9) == []
    # A window that passed with refusals counted stays until they are said.
    assert not log.admit(used, PeerRefusal.MALFORMED, NOW + 61)
    assert log.counted(NOW + 61) == [RefusalsCounted(used, PeerRefusal.MALFORMED, 100, NOW)]
    assert log.windows == {}  # the two with nothing counted went too
    assert log.admit(used, PeerRefusal.MALFORMED, NOW + 62)  # a new window, in full
    assert log.admit(used, PeerRefusal.MALFORMED, NOW + 122)  # one passed, nothing counted
    assert not log.admit(used, PeerRefusal.MALFORMED, NOW + 123)
    # The clock set back: the window has passed (never held open until the clock catches up).
    assert log.counted(NOW + 10) == [RefusalsCounted(used, PeerRefusal.MALFORMED, 1, NOW + 122)]
    assert log.admit(used, PeerRefusal.MALFORMED, NOW + 10)
