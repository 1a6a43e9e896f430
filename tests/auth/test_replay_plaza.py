"""Used-token sharing between two lanes of a plaza, over a real mosquitto."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mqtt_kit import sender
from polling import eventually

from lane.auth.deny import DenyList
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.peers import Ignored, heard_key
from lane.auth.plaza import (
    MAX_TIME,
    MAX_TOKEN_ID_LEN,
    MarkKind,
    UsedTokenMsg,
    UsedTokenSharing,
    decode_used_token,
    encode_used_token,
    of_plaza,
    used_tokens_topic,
)
from lane.auth.replay import ReplayStore
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from lane.auth.tokens import TokenAccepted, verify_token
from lane.refusal_log import REFUSAL_LOG_EVERY_S
from lane.transport.mqtt import MqttLink
from lane.wire.codec import PayloadError, pack, unpack
from sim.broker import Mosquitto
from sim.codes import CodeFactory

NOW = 1_800_000_000
CODES = CodeFactory(5)


def plaza_keys(plaza: str) -> KeySet:
    """The key set of a plaza's lanes (l01..l09, x1..x3, bad) and of a few lanes elsewhere, each
    lane's key signing its own messages (lane.auth.peers); valid now, as lanes check it."""
    names = [*(f"l{n:02d}" for n in range(1, 10)), "x1", "x2", "x3", "bad"]
    lanes = [f"{plaza}/{name}" for name in names]
    elsewhere = [f"x{plaza}/l01", f"{plaza}x/l01", plaza, f"{plaza}/l01/x"]
    return CODES.keyset(int(time.time()), [*lanes, *elsewhere])


def signed(msg: UsedTokenMsg) -> bytes:
    """The message as its lane sends it."""
    return CODES.lane_key(msg.lane).seal(encode_used_token(msg))


def test_message_round_trip() -> None:
    msg = UsedTokenMsg("ab" * 16, NOW + 60, "p07/l03", NOW + 0.25)
    assert decode_used_token(encode_used_token(msg)) == msg
    release = replace(msg, kind=MarkKind.RELEASE)
    assert decode_used_token(encode_used_token(release)) == release


def test_a_use_keeps_its_first_version_and_a_release_is_one_an_older_lane_refuses() -> None:
    """A lane of an older release reads a use as ever and refuses a release (version 2) with a
    log line, instead of taking it for a use."""
    use = UsedTokenMsg("cafe", NOW + 60, "p07/l03", NOW)
    assert unpack(encode_used_token(use)) == {
        "v": 1, "token_id": "cafe", "exp": NOW + 60, "lane": "p07/l03", "ts": NOW
    }  # fmt: skip
    released = unpack(encode_used_token(replace(use, kind=MarkKind.RELEASE)), max_version=2)
    assert (released["v"], released["kind"]) == (2, "release")
    with pytest.raises(PayloadError, match="schema version 2"):
        unpack(encode_used_token(replace(use, kind=MarkKind.RELEASE)), max_version=1)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb({"token_id": "a"}), "schema version"),
        (pack({"exp": 1, "lane": "l", "ts": 1.0}), "token_id"),
        (pack({"token_id": "a", "exp": "1", "lane": "l", "ts": 1.0}), "'exp' must be int"),
        (pack({"token_id": "", "exp": 1, "lane": "l", "ts": 1.0}), "token_id"),
        (pack({"token_id": "a", "exp": -1, "lane": "l", "ts": 1.0}), "out of range"),
        (pack({"token_id": "a", "exp": 1, "lane": "", "ts": 1.0}), "lane"),
        (pack({"token_id": "a", "exp": 1, "lane": "l", "ts": float("inf")}), "finite"),
        (pack({"token_id": "a", "exp": 1, "lane": "l", "ts": 1.0}, v=3), "schema version 3"),
        (pack({"token_id": "a", "exp": 1, "lane": "l", "ts": 1.0, "kind": "forget"}, v=2),
         "'kind' must be use or release, got 'forget'"),
        (pack({"token_id": "a", "exp": 1, "lane": "l", "ts": 1.0, "kind": 1}, v=2),
         "'kind' must be str"),
    ],
)  # fmt: skip
def test_bad_messages(payload: bytes, problem: str) -> None:
    with pytest.raises(PayloadError, match=problem):
        decode_used_token(payload)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
    st.text(max_size=200), st.binary(max_size=20), st.sampled_from(["use", "release", "p1/l1"]),
)  # fmt: skip
_fields = st.sampled_from(["v", "token_id", "exp", "lane", "ts", "kind"])


@given(st.one_of(st.binary(max_size=300), st.dictionaries(_fields, _values).map(msgpack.packb)))
def test_any_payload_decodes_to_a_bounded_message_or_a_payload_error(payload: bytes) -> None:
    try:
        msg = decode_used_token(payload)
    except PayloadError:
        return
    assert 0 < len(msg.token_id) <= MAX_TOKEN_ID_LEN and msg.lane
    assert 0 <= msg.exp < MAX_TIME and math.isfinite(msg.ts)
    assert decode_used_token(encode_used_token(msg)) == msg


@asynccontextmanager
async def lane_sharing(
    broker: Mosquitto, tmp_path: Path, plaza: str, lane: str, *, start: bool = True
) -> AsyncIterator[tuple[UsedTokenSharing, list[asyncio.Task[None]]]]:
    store = ReplayStore(tmp_path / f"{lane.replace('/', '_')}.db")
    topic = used_tokens_topic(plaza)
    link = MqttLink(broker.host, broker.port, f"auth-{lane}", [(topic, 1)])
    keys = plaza_keys(plaza)
    sharing = UsedTokenSharing(
        link, store, plaza, lane, peers=CODES.peers(lane, store, lambda: keys)
    )
    link.handler = sharing.handle
    tasks: list[asyncio.Task[None]] = []
    if start:
        tasks += [asyncio.create_task(link.run()), asyncio.create_task(sharing.run())]
    try:
        yield sharing, tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()


async def wait_for_mark(store: ReplayStore, token_id: str) -> None:
    # The mark lands in SQLite from a worker thread: poll the store itself, briefly.
    await eventually(lambda: store.get(token_id) is not None, within=5, what=token_id)


async def test_token_used_at_lane_a_is_refused_at_lane_b(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    plaza = lane_id.split("/", maxsplit=1)[0]
    issuer = TokenIssuer.generate()
    keys = KeySet.of(NOW, [issuer.public()])
    text = issuer.token("acct-7", iat=NOW)
    verdict = verify_token(text, keys, DenyList.empty(), NOW + 1, 5, CAP)
    assert isinstance(verdict, TokenAccepted)

    async with (
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l01") as (a, _),
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l02") as (b, _),
    ):
        await a.link.wait_connected(5)
        await b.link.wait_connected(5)
        assert a.link_up and b.link_up
        assert await a.check_and_mark(verdict.token_id, verdict.exp, NOW + 1)
        await wait_for_mark(b.store, verdict.token_id)
        # The screenshot shown at lane B a moment later:
        assert not await b.check_and_mark(verdict.token_id, verdict.exp, NOW + 2)
        used = b.store.get(verdict.token_id)
        assert used is not None and used.remote and used.lane == f"{plaza}/l01"
        assert a.published == 1 and b.received == 1
        # B's refusal is not a use: nothing goes back to A as new.
        assert b.backlog == 0


async def test_uses_made_while_the_link_is_down_are_shared_later(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    plaza = lane_id.split("/", maxsplit=1)[0]
    async with (
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l02") as (b, _),
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l01", start=False) as (a, tasks),
    ):
        await b.link.wait_connected(5)
        assert not a.link_up
        # Lane A decides offline: the use is on disk now and queued for the plaza.
        assert await a.check_and_mark("feed01", NOW + 60, NOW)
        assert not await a.check_and_mark("feed01", NOW + 60, NOW)
        assert a.backlog == 1
        tasks += [asyncio.create_task(a.link.run()), asyncio.create_task(a.run())]
        await wait_for_mark(b.store, "feed01")
        assert a.backlog == 0


async def test_garbage_on_the_topic_is_ignored(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path
) -> None:
    plaza = lane_id.split("/", maxsplit=1)[0]
    async with lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l02") as (b, _):
        await b.link.wait_connected(5)
        sender = MqttLink(mosquitto.host, mosquitto.port, f"junk-{lane_id}")
        task = asyncio.create_task(sender.run())
        try:
            await sender.wait_connected(5)
            topic = used_tokens_topic(plaza)
            await sender.publish(topic, b"\x00garbage")
            odd = {"token_id": "cafe", "exp": NOW + 60, "lane": f"{plaza}/l09", "ts": NOW}
            await sender.publish(topic, pack({**odd, "kind": "forget"}, v=2))
            good = UsedTokenMsg("cafe", NOW + 60, f"{plaza}/l09", NOW)
            await sender.publish(topic, signed(good))
            await wait_for_mark(b.store, "cafe")
            # The mark is committed on a worker thread before the count moves on the loop.
            await eventually(lambda: b.received == 1, what="the good message counted")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_use_or_release_from_a_lane_outside_the_plaza_is_refused(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any client that may write the plaza's topic could name a lane of another plaza (or no
    lane id at all): such a use would refuse a good token here, such a release free a mark."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    async with lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l02") as (b, _):
        await b.link.wait_connected(5)
        # A mark heard from this plaza's lane l01, which a forged release must not free.
        assert b.store.mark_remote("beef", NOW + 60, f"{plaza}/l01", NOW, now=NOW)
        sender = MqttLink(mosquitto.host, mosquitto.port, f"forger-{lane_id}")
        task = asyncio.create_task(sender.run())
        try:
            await sender.wait_connected(5)
            topic = used_tokens_topic(plaza)
            for lane in (f"x{plaza}/l01", f"{plaza}x/l01", plaza, f"{plaza}/l01/x"):
                await sender.publish(topic, signed(UsedTokenMsg("cafe", NOW + 60, lane, NOW)))
                release = UsedTokenMsg("beef", NOW + 60, lane, NOW, MarkKind.RELEASE)
                await sender.publish(topic, signed(release))
            good = UsedTokenMsg("feed", NOW + 60, f"{plaza}/l09", NOW)
            await sender.publish(topic, signed(good))
            await wait_for_mark(b.store, "feed")  # in order after every forged one
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert b.store.get("cafe") is None
        kept = b.store.get("beef")
        assert kept is not None and kept.lane == f"{plaza}/l01"
        # Genuine once (lanes of another plaza, replayed here): one line a window and sending
        # lane, not one a message.
        refused = [r for r in caplog.records if "outside the plaza" in r.getMessage()]
        assert len(refused) == 4
        b.peers.say_counted(time.time() + REFUSAL_LOG_EVERY_S)
        said = [r for r in caplog.records if "outside the plaza" in r.getMessage()][4:]
        assert [r.__dict__["refused"] for r in said] == [1, 1, 1, 1]
        assert (
            said[0]
            .getMessage()
            .startswith(f"{Ignored.OUTSIDE_PLAZA}: 1 more from x{plaza}/l01 since ")
        )


async def test_a_genuine_use_replayed_again_and_again_is_said_heard_before_once_a_window(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anybody with the broker password may send a genuine use again as often as they like:
    taken once, ignored after, and the log says so once a window and sending lane, with a
    count, not a line a replay: a second lane's replays, begun while the first's flood is
    counted, still get a line of their own."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    caplog.set_level(logging.INFO)
    async with lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l02") as (b, _):
        await b.link.wait_connected(5)
        exp = int(time.time()) + 60
        first = signed(UsedTokenMsg("cafe", exp, f"{plaza}/l09", NOW))
        second = signed(UsedTokenMsg("beef", exp, f"{plaza}/l08", NOW))
        async with sender(mosquitto, f"replayer-{lane_id}") as link:
            for payload in [first] * 10 + [second] * 4:
                await link.publish(used_tokens_topic(plaza), payload)
            counted = b.peers.ignored_log.windows
            await eventually(lambda: sum(n for _, n in counted.values()) == 10, what="counted")
        b.peers.say_counted(time.time() + REFUSAL_LOG_EVERY_S)
        assert b.received == 2
    heard = [r for r in caplog.records if r.getMessage().startswith(Ignored.HEARD_BEFORE)]
    assert [(r.__dict__["from_lane"], r.__dict__.get("refused")) for r in heard] == [
        (f"{plaza}/l09", None),
        (f"{plaza}/l08", None),
        (f"{plaza}/l09", 8),
        (f"{plaza}/l08", 2),
    ]


async def test_a_peer_message_is_marked_heard_no_longer_than_this_lane_keeps_what_it_names(
    mosquitto: Mosquitto, lane_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A genuine use signed with an exp years ahead (a peer's bad clock or rules; its key in
    the wrong hands) would keep its heard mark, and the replay store's row, for those years: it
    is kept to the latest exp this lane would accept a token of now, with a line."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    async with lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/l02") as (b, _):
        await b.link.wait_connected(5)
        now = time.time()
        far = UsedTokenMsg("cafe", int(now) + 10 * 365 * 86_400, f"{plaza}/l09", now)
        payload = signed(far)
        async with sender(mosquitto, f"far-{lane_id}") as link:
            await link.publish(used_tokens_topic(plaza), payload)
            await wait_for_mark(b.store, "cafe")
        heard = b.store.get(heard_key(encode_used_token(far)))
        assert heard is not None
        assert heard.exp <= b.store.bounds.latest_exp("cafe", time.time()) + 1
        [line] = [r.__dict__ for r in caplog.records if r.getMessage().startswith("peer message")]
        assert line["message"] == "peer message marked heard only to this lane's limit"
        assert (line["token_id"], line["exp"]) == ("cafe", far.exp)


@given(st.from_regex(r"[\w-]+", fullmatch=True), st.from_regex(r"[\w-]+", fullmatch=True),
       st.text(max_size=20))  # fmt: skip
def test_only_a_lane_id_of_the_plaza_is_of_it(plaza: str, lane: str, other: str) -> None:
    assert of_plaza(f"{plaza}/{lane}", plaza)
    assert of_plaza(other, plaza) == (other.startswith(f"{plaza}/") and other.count("/") == 1
                                      and other != f"{plaza}/")  # fmt: skip
    assert not of_plaza(f"{plaza}/{lane}", f"{plaza}x")


async def test_backlog_is_bounded_and_useless_uses_are_not_sent(tmp_path: Path) -> None:
    # No broker at all: the link never connects.
    link = MqttLink("127.0.0.1", 1, "never-connects")
    with ReplayStore(tmp_path / "r.db") as store:
        sharing = UsedTokenSharing(
            link, store, "p1", "p1/l01", max_pending=2, useful_after_exp_s=60,
            clock=lambda: NOW + 1000, peers=CODES.peers("p1/l01", store, lambda: KeySet(NOW)),
        )  # fmt: skip
        for n in range(3):
            sharing.share(UsedTokenMsg(f"t{n}", NOW, "p1/l01", NOW))
        assert sharing.backlog == 2 and sharing.dropped == 1
        task = asyncio.create_task(sharing.run())
        try:
            # Every queued use expired long ago (exp + 60 s < clock): dropped, not waited on.
            async with asyncio.timeout(5):
                while sharing.expired_unsent < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert sharing.published == 0 and sharing.backlog == 0
            assert not sharing.link_up
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
