"""A lane's end of the peer messages (lane.auth.peers) with a real replay store: a genuine
message is taken once, however its envelope was re-encoded by whoever replays it."""

from __future__ import annotations

from pathlib import Path

import cbor2

from lane.auth.cose import COSE_SIGN1_TAG, Alg
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.peer_messages import LaneKey, PeerOpened
from lane.auth.peers import Peers
from lane.auth.plaza import MarkKind, UsedTokenMsg, decode_used_token, encode_used_token
from lane.auth.replay import ReplayStore

NOW = 1_800_000_000
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SENDER = LaneKey(TokenIssuer.generate(Alg.ES256).private_key, b"lane-p07-l02", "p07/l02")
KEYS = KeySet.of(NOW - 100, [SENDER.public(NOW - 86_400, NOW + 86_400)])


def malleated(data: bytes) -> bytes:
    """The same ECDSA signature as (r, n - s): a second valid signature anybody can make from a
    message they heard, without the key."""
    parts = list(cbor2.loads(data).value)
    r, s = parts[3][:32], int.from_bytes(parts[3][32:], "big")
    parts[3] = r + (P256_ORDER - s).to_bytes(32, "big")
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, parts)))


async def test_a_genuine_es256_message_re_signed_as_r_n_minus_s_is_not_taken_twice(
    tmp_path: Path,
) -> None:
    """A release replayed with its signature malleated would, digested by its envelope, look
    new, and free a mark the sending lane made again since."""
    peers = Peers("p07/l01", None, lambda: KEYS, ReplayStore(tmp_path / "replay.sqlite"),
                  accept_unsigned=False, wall=lambda: NOW)  # fmt: skip
    release = UsedTokenMsg("pass:0a0b", NOW + 600, "p07/l02", NOW - 50, MarkKind.RELEASE)
    genuine = SENDER.seal(encode_used_token(release))
    replayed = malleated(genuine)
    assert replayed != genuine
    heard = []
    for data in (genuine, replayed):
        opened = peers.open("t", data, decode_used_token, lambda m: m.lane, "used-token message")
        assert isinstance(opened, PeerOpened) and opened.message == release  # both verify
        heard.append(await peers.first_hearing(opened, release.exp, {}, latest=release.exp))
    assert heard == [True, False]
