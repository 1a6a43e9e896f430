"""What the other lanes of a plaza tell a real lane daemon, over the session mosquitto with the
one broker account every lane shares: a use or a release forged in another lane's name
(unsigned, signed by a key the key set does not hold, signed by another lane's key) is refused
with a line naming the topic, the lane it claims and why, and raises `peer_messages_refused`
naming that lane, which clears once that lane's messages verify again; genuine signed ones are
taken; a genuine message replayed is not taken twice, and a release older than the mark it
would free frees nothing. A lane whose own key is missing from its key set says so
(`lane_key_missing`) until a key set holding it arrives; unsigned messages taken while
`auth.accept_unsigned_peers` is on raise `unsigned_peer_messages` (docs/operations.md)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mqtt_kit import sender
from polling import eventually
from test_lane_daemon import Lane, running_lane

from lane.auth.keys import KeySet, keyset_to_json, load_keyset
from lane.auth.plaza import MarkKind, UsedTokenMsg, encode_used_token, used_tokens_topic
from lane.checks import check_config
from lane.refusal_log import REFUSAL_LOG_EVERY_S
from lane.runner import Clocks
from lane.transport.mqtt import MqttLink
from lane.wire.utc import utc_text
from sim.broker import Mosquitto
from sim.codes import CodeFactory

REFUSED = "peer_messages_refused"


def signed(codes: CodeFactory, msg: UsedTokenMsg) -> bytes:
    return codes.lane_key(msg.lane).seal(encode_used_token(msg))


async def taken(lane: Lane, link: MqttLink, topic: str, sentinel: bytes, token_id: str) -> None:
    """Publish a genuine message after the others and wait until it is marked: everything sent
    before it on the same connection has been handled."""
    await link.publish(topic, sentinel)
    await eventually(lambda: lane.daemon.replay.get(token_id) is not None, what=token_id)


async def test_forged_uses_and_releases_are_refused_alarmed_and_the_alarm_clears(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    plaza = lane_id.split("/", maxsplit=1)[0]
    l02, l03, l09 = f"{plaza}/l02", f"{plaza}/l03", f"{plaza}/l09"
    topic = used_tokens_topic(plaza)
    caplog.set_level(logging.INFO)
    async with (
        running_lane(tmp_path, mosquitto, lane_id, peers=[l02, l03]) as lane,
        sender(mosquitto, f"forger-{lane_id}") as link,
    ):
        codes, now, replay = lane.codes, time.time(), lane.daemon.replay
        exp = int(now) + 600
        await taken(lane, link, topic, signed(codes, UsedTokenMsg("kept", exp, l02, now)), "kept")
        forged = UsedTokenMsg("good-token", exp, l02, now)  # refuses a good token if taken
        release = UsedTokenMsg("kept", exp, l02, now + 1, MarkKind.RELEASE)  # frees a mark
        for msg in (forged, release):
            await link.publish(topic, encode_used_token(msg))  # unsigned
            await link.publish(topic, codes.lane_key(l03).seal(encode_used_token(msg)))
            await link.publish(topic, CodeFactory(99).lane_key(l02).seal(encode_used_token(msg)))
        strange = UsedTokenMsg("other-token", exp, l09, now)  # a lane the key set does not hold
        await link.publish(topic, signed(codes, strange))
        await taken(lane, link, topic, signed(codes, UsedTokenMsg("s1", exp, l03, now)), "s1")
        assert replay.get("good-token") is None and replay.get("other-token") is None
        kept = replay.get("kept")
        assert kept is not None and kept.lane == l02
        lines = [r.__dict__ for r in caplog.records if r.getMessage().startswith("used-token")]
        reasons = [(line["from_lane"], line["reason"]) for line in lines]
        # The second of each kind within a minute is counted, not logged (the next test).
        assert reasons == [(l02, "unsigned"), (l02, "wrong_lane"), (l02, "bad_signature"),
                           (l09, "unknown_key")]  # fmt: skip
        assert all(line["topic"] == topic and line["lane"] == lane_id for line in lines)
        alarms = lane.daemon.runner.alarms
        await eventually(lambda: l09 in alarms.get(REFUSED, ""), what="the alarm")
        assert alarms[REFUSED] == (
            f"messages from {l02} refused: bad signature; "
            f"messages from {l09} refused: no lane key for it in the key set"
        )
        # l02 speaks for itself again: its part of the alarm goes.
        await taken(lane, link, topic, signed(codes, UsedTokenMsg("s2", exp, l02, now)), "s2")
        await eventually(lambda: l02 not in alarms.get(REFUSED, ""), what="l02 cleared")
        # The operator adds l09's key to the key set; its next message verifies: all clear.
        keys = load_keyset(lane.config.auth.keyset or Path())
        l09_key = codes.lane_key(l09).public(int(now) - 60, int(now) + 3600)
        more = KeySet.of(keys.issued_at + 1, [*keys.keys.values(), l09_key])
        (lane.config.auth.keyset or Path()).write_text(keyset_to_json(more))
        await eventually(lambda: lane.daemon.verifier.keys.issued_at == more.issued_at)
        await taken(lane, link, topic, signed(codes, strange), "other-token")
        await eventually(lambda: REFUSED not in alarms, what="the alarm cleared")


async def test_a_flood_of_refused_messages_is_logged_in_a_few_counted_lines(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage and forgeries poured on the plaza's topic by anybody with the broker password
    wrote a line each. Now the first of each kind (message and reason) is logged, the others
    counted and said in one line a minute later; the alarm is as ever."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    l02, l03 = f"{plaza}/l02", f"{plaza}/l03"
    topic = used_tokens_topic(plaza)
    moved = [0.0]
    clocks = Clocks(wall=lambda: time.time() + moved[0])
    caplog.set_level(logging.INFO)
    async with (
        running_lane(tmp_path, mosquitto, lane_id, peers=[l02, l03], clocks=clocks) as lane,
        sender(mosquitto, f"flood-{lane_id}") as link,
    ):
        now, exp, flood = time.time(), int(time.time()) + 600, 150
        for n in range(flood):
            await link.publish(topic, b"\x00garbage %d" % n)
            forged = UsedTokenMsg(f"forged-{n}", exp, l02, now)
            await link.publish(topic, encode_used_token(forged))  # unsigned
        sentinel = signed(lane.codes, UsedTokenMsg("s1", exp, l03, now))
        await taken(lane, link, topic, sentinel, "s1")

        def refused() -> list[dict[str, Any]]:
            return [r.__dict__ for r in caplog.records
                    if r.getMessage().startswith("used-token message refused")
                    and r.__dict__.get("lane") == lane_id]  # fmt: skip

        assert [line["message"] for line in refused()] == [
            "used-token message refused: malformed",
            "used-token message refused: unsigned",
        ]
        alarms = lane.daemon.runner.alarms
        await eventually(lambda: REFUSED in alarms, what="the alarm")  # l02's, until it verifies
        flooded = time.time()
        moved[0] = REFUSAL_LOG_EVERY_S
        await eventually(lambda: len(refused()) == 4, what="the counts")
        counts = refused()[2:]
        assert [(line["message"], line["refused"]) for line in counts] == [
            (f"used-token message refused: malformed: {flood - 1} more since"
             f" {utc_text(counts[0]['since'])}", flood - 1),
            (f"used-token message refused: unsigned: {flood - 1} more since"
             f" {utc_text(counts[1]['since'])}", flood - 1),
        ]  # fmt: skip
        assert all(now <= line["since"] <= flooded for line in counts)


async def test_a_genuine_message_replayed_is_not_taken_again(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """l02 used a pass, refunded its exit (a release), then the pass exited there again: the
    first use replayed after the release would mark it again, and the release replayed (or an
    older genuine release never heard) after the new use would free the new mark."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    l02 = f"{plaza}/l02"
    topic = used_tokens_topic(plaza)
    async with (
        running_lane(tmp_path, mosquitto, lane_id, peers=[l02]) as lane,
        sender(mosquitto, f"replayer-{lane_id}") as link,
    ):
        codes, now, replay = lane.codes, time.time(), lane.daemon.replay
        exp, key = int(now) + 600, "pass:0a0b0c"

        def msg(ts: float, kind: MarkKind = MarkKind.USE) -> bytes:
            return signed(codes, UsedTokenMsg(key, exp, l02, ts, kind))

        first_use, release = msg(now - 100), msg(now - 50, MarkKind.RELEASE)
        await taken(lane, link, topic, first_use, key)
        await link.publish(topic, release)
        await eventually(lambda: replay.get(key) is None, what="released")
        await link.publish(topic, first_use)  # replayed after the release
        await taken(lane, link, topic, signed(codes, UsedTokenMsg("s1", exp, l02, now)), "s1")
        assert replay.get(key) is None
        await taken(lane, link, topic, msg(now - 10), key)  # the pass's second exit at l02
        await link.publish(topic, release)  # replayed
        await link.publish(topic, msg(now - 30, MarkKind.RELEASE))  # genuine, older, unheard
        await taken(lane, link, topic, signed(codes, UsedTokenMsg("s2", exp, l02, now)), "s2")
        mark = replay.get(key)
        assert mark is not None and mark.seen_at == pytest.approx(now - 10)


async def test_a_lane_whose_key_is_not_in_its_key_set_says_so_until_it_is(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        path = lane.config.auth.keyset or Path()
        keys = load_keyset(path)
        own = lane.codes.lane_key(lane_id).kid
        alarms = lane.daemon.runner.alarms
        assert "lane_key_missing" not in alarms
        without = KeySet.of(keys.issued_at + 1, [k for k in keys.keys.values() if k.kid != own])
        path.write_text(keyset_to_json(without))
        await eventually(lambda: "lane_key_missing" in alarms, what="raised")
        assert alarms["lane_key_missing"] == (
            f"peers will refuse this lane's messages: its key {own.decode()} is not in the key set"
        )
        path.write_text(keyset_to_json(KeySet.of(keys.issued_at + 2, keys.keys.values())))
        await eventually(lambda: "lane_key_missing" not in alarms, what="cleared")


async def test_unsigned_messages_are_taken_only_with_the_switch_and_then_alarmed(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """l09 is not upgraded yet (no key in the key set): its unsigned messages are taken; l02
    is (its key is in the key set, so it signs): an unsigned message in its name is a forgery."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    l02, l09 = f"{plaza}/l02", f"{plaza}/l09"
    topic = used_tokens_topic(plaza)
    upgrading = {"accept_unsigned_peers": True}
    async with (
        running_lane(tmp_path, mosquitto, lane_id, auth=upgrading, peers=[l02]) as lane,
        sender(mosquitto, f"old-lane-{lane_id}") as link,
    ):
        now, exp = time.time(), int(time.time()) + 600
        forged = encode_used_token(UsedTokenMsg("forged", exp, l02, now))
        await link.publish(topic, forged)
        await taken(lane, link, topic, encode_used_token(UsedTokenMsg("old", exp, l09, now)), "old")
        assert lane.daemon.replay.get("forged") is None
        alarms = lane.daemon.runner.alarms
        await eventually(lambda: "unsigned_peer_messages" in alarms, what="raised")
        assert alarms["unsigned_peer_messages"].startswith(f"unsigned messages taken from {l09} (")
        assert alarms["peer_messages_refused"] == (
            f"messages from {l02} refused: unsigned, yet the key set holds its lane key"
        )


def test_a_lane_that_talks_to_others_does_not_start_without_its_key(tmp_path: Path) -> None:
    """Plaza sharing is on by default: no `auth.lane_key`, no start (exit 2, saying why) and a
    `check-config` problem, unless the upgrade switch is on (a warning); a key set without the
    lane's own key is warned about."""
    conf = tmp_path / "lane.toml"
    head = f'[lane]\nid = "p07/l03"\ndata_dir = "{tmp_path / "data"}"\n[camera]\nsource = "push"\n'
    conf.write_text(head)
    [problem] = check_config(conf).problems
    assert problem.startswith("auth.lane_key: not set, and this lane tells other lanes")
    done = subprocess.run([sys.executable, "-m", "lane", "run", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "lane: cannot start: auth.lane_key: not set" in done.stderr
    conf.write_text(head + "[auth]\naccept_unsigned_peers = true\n")
    found = check_config(conf)
    assert found.problems == []
    assert any(w.startswith("auth.accept_unsigned_peers: ") for w in found.warnings)
    codes = CodeFactory(1)
    codes.write_keyset(tmp_path / "mine.json", int(time.time()), ["p07/l03"])  # the key file
    codes.write_keyset(tmp_path / "keyset.json", int(time.time()))  # a set without it
    auth = codes.lane_auth_toml(tmp_path, "p07/l03")
    conf.write_text(head + f'[auth]\nkeyset = "keyset.json"\n{auth}')
    found = check_config(conf)
    assert found.problems == []
    assert any("peers will refuse this lane's messages" in w for w in found.warnings)


def test_a_key_set_of_lane_keys_alone_is_one_no_token_verifies_with(tmp_path: Path) -> None:
    """Lane keys sign no token: a set whose only key valid now is one warns as an empty one."""
    now = int(time.time())
    keyset = tmp_path / "keyset.json"
    lane_only = KeySet.of(
        now - 10, [CodeFactory(4).lane_key("p07/l03").public(now - 10, now + 86_400)]
    )
    keyset.write_text(keyset_to_json(lane_only))
    conf = tmp_path / "lane.toml"
    head = f'[lane]\nid = "p07/l03"\ndata_dir = "{tmp_path / "data"}"\n[camera]\nsource = "push"\n'
    conf.write_text(head + f'[auth]\nkeyset = "{keyset}"\naccept_unsigned_peers = true\n')
    warned = [w for w in check_config(conf).warnings if w.startswith(f"{keyset}: keys:")]
    assert warned == [f"{keyset}: keys: no token key is valid now; every token is refused"]
