"""Bad input on every topic the lane daemon subscribes to, against the real mosquitto: each
message is refused with a log line naming its topic (the first of its kind a minute, the rest
counted), nothing is changed by it but for the
device's words about its boom (`barrier_unreadable` until the device answers readably), and
the next vehicle pays and passes (docs/operations.md, "Bad input")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import pytest
from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show

from lane.auth.plaza import deny_topic, keys_topic, used_tokens_topic
from lane.transport.mqtt import MqttLink
from lane.wire import topics
from lane.wire.codec import pack
from sim.broker import Mosquitto

HUGE = b"\x00" * 1_000_000


@pytest.fixture
async def lane(tmp_path: Path, mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[Lane]:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        yield lane


def bad_messages(lane_id: str, plaza: str) -> list[tuple[str, bytes]]:
    """(topic, payload): garbage, wrong types and absurd values, one topic family at a time."""
    now_us = int(time.time() * 1e6)
    attendant = {"op": "open", "cmd_id": "c1", "reason": "r", "attendant": "a", "ts": now_us}
    use = {"token_id": "ab" * 16, "exp": int(time.time()) + 60, "lane": f"{plaza}/l99", "ts": 1.0}
    return [
        *(
            (t, p)
            for t in (
                topics.barrier_ack(lane_id),
                topics.barrier_state(lane_id),
                topics.io(lane_id, "entry_loop"),
                topics.io(lane_id, "plate"),
                topics.attendant(lane_id),
                topics.device_snapshot(lane_id),
                topics.uplink_acks(lane_id),
                used_tokens_topic(plaza),
            )
            for p in (b"\xc1", b"not msgpack", msgpack.packb([1, 2]), HUGE)
        ),
        (topics.barrier_ack(lane_id), pack({"cmd_id": 7, "ok": True, "state": "up"})),
        (topics.barrier_state(lane_id), pack({"state": "sideways", "seq": 1, "ts": now_us})),
        (topics.barrier_state(lane_id), pack({"state": "up", "seq": -5, "ts": now_us})),
        (
            topics.io(lane_id, "entry_loop"),
            pack({"sensor": "entry_loop", "occupied": "yes", "ts": now_us}),
        ),
        (
            topics.io(lane_id, "entry_loop"),
            pack({"sensor": "exit_loop", "occupied": True, "ts": now_us}),
        ),
        (topics.io(lane_id, "plate"), pack({"plate": "", "confidence": 5, "ts": now_us})),
        (topics.attendant(lane_id), pack({**attendant, "op": "explode"})),
        (topics.attendant(lane_id), pack({**attendant, "cmd_id": "x" * 10_000})),
        (topics.attendant(lane_id), pack({**attendant, "ts": -1})),
        (
            topics.device_snapshot(lane_id),
            pack(
                {"barrier": "up", "sensors": {}, "session": "s", "seq": 1, "ts": now_us, "v": 1},
                v=9,
            ),
        ),
        (
            topics.uplink_acks(lane_id),
            pack(
                {
                    "lane": lane_id,
                    "epoch": "e",
                    "batch_id": "b",
                    "stored": [[-1, "r", b"x"]],
                    "refused": [],
                },
                v=2,
            ),
        ),
        (used_tokens_topic(plaza), pack({**use, "exp": -1})),
        (used_tokens_topic(plaza), pack({**use, "lane": "elsewhere/l01"})),
        (used_tokens_topic(plaza), pack({**use, "lane": "elsewhere/l01", "kind": "release"}, v=2)),
        (used_tokens_topic(plaza), pack({**use, "kind": "forget"}, v=2)),
    ]


async def test_bad_input_on_every_topic_is_refused_once_and_the_next_vehicle_passes(
    lane: Lane, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    lane_id, plaza = lane.config.lane.id, lane.config.lane.plaza
    subscribed = {t for t, _ in lane.daemon.uplink.subscriptions} | {
        t for t, _ in lane.daemon.link.mqtt.subscriptions
    }
    bad = bad_messages(lane_id, plaza)
    # Every topic the daemon listens to is fed (the plaza's retained ones: test_lane_daemon.py).
    fed = {t for t, _ in bad} | {keys_topic(plaza), deny_topic(plaza)}
    assert {t.replace("/+", "/entry_loop") for t in subscribed} <= fed | {
        topics.io(lane_id, "entry_loop")
    }
    noise = MqttLink(mosquitto.host, mosquitto.port, f"noise-{lane_id}")
    task = asyncio.create_task(noise.run())
    caplog.set_level(logging.INFO)
    try:
        await noise.wait_connected(5)
        for topic, payload in bad:
            await noise.publish(topic, payload)
        expected = Counter(topic for topic, _ in bad)
        # A peer topic's refusals are logged once per kind (lane.auth.peers' RefusalLog: here
        # malformed and unsigned), the others of a kind counted for one later line.
        peer_topic, peer_kinds = used_tokens_topic(plaza), 2
        peer_counted = expected[peer_topic] - peer_kinds
        expected[peer_topic] = peer_kinds
        # The barrier link's garbage likewise, once a topic (barrier.link: the io/+ readings
        # share one, the first logged being entry_loop's).
        link_topics = [
            topics.barrier_ack(lane_id),
            topics.barrier_state(lane_id),
            topics.io(lane_id, "entry_loop"),
            topics.attendant(lane_id),
            topics.device_snapshot(lane_id),
        ]
        link_counted = sum(expected[t] for t in link_topics) - len(link_topics)
        for topic in link_topics:
            expected[topic] = 1
        link_counted += expected.pop(topics.io(lane_id, "plate"))
        # The uplink's acks too, once a kind (uplink.forwarder: here all garbage).
        acks_topic = topics.uplink_acks(lane_id)
        link_counted += expected[acks_topic] - 1
        expected[acks_topic] = 1

        def counted() -> int:
            daemon = lane.daemon
            logs = (daemon.peers.refusal_log, daemon.link.garbage_log, daemon.forwarder.refusal_log)
            return sum(n for log in logs for _, n in log.windows.values())

        def refused() -> Counter[str]:
            return Counter(
                r.__dict__["topic"]
                for r in caplog.records
                if r.levelno >= logging.WARNING
                and r.__dict__.get("topic") in expected
                and r.__dict__.get("lane") == lane_id  # each line names the lane refusing it
            )

        await eventually(lambda: refused() == expected, what=f"one line each: {refused()}")
        total = peer_counted + link_counted
        await eventually(lambda: counted() == total, what=f"counted: {counted()}")
        # Unreadable words about the boom are a fault until the device answers the lane's
        # query (every probe_s, 5 s) in words it reads: the emulator does.
        raised = [f for f in named(lane, "alarm") if f["code"] == "barrier_unreadable"]
        assert raised and raised[0]["active"]
        await eventually(lambda: lane.daemon.runner.state.faults == frozenset(), within=15)
        await lane.device.vehicle_enters(2)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: named(lane, "barrier_opened"))
        assert refused() == expected  # and never more than one
        assert lane.daemon.runner.state.faults == frozenset()
        assert not named(lane, "attendant_open")
        assert lane.daemon.replay.get("ab" * 16) is None
        assert [c.op for c in lane.device.received] == ["open"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_refusals_counted_when_the_lane_stops_are_said_as_it_stops(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage counted in a window that has not passed when the lane stops: its count is said
    then (the health loop that says it once the window passed stops with the lane)."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    flood = {
        topics.attendant(lane_id): b"\xc1",  # the barrier link's
        topics.uplink_acks(lane_id): b"\xc1",  # the uplink's
        used_tokens_topic(plaza): b"\xc1",  # a peer message
    }
    noise = MqttLink(mosquitto.host, mosquitto.port, f"noise-{lane_id}")
    task = asyncio.create_task(noise.run())
    try:
        async with running_lane(tmp_path, mosquitto, lane_id) as lane:
            await noise.wait_connected(5)
            for topic, payload in flood.items():
                for _ in range(3):
                    await noise.publish(topic, payload)
            daemon = lane.daemon
            logs = (daemon.peers.refusal_log, daemon.link.garbage_log, daemon.forwarder.refusal_log)

            def counted() -> int:
                return sum(n for log in logs for _, n in log.windows.values())

            await eventually(lambda: counted() == 2 * len(flood), what=f"counted: {counted()}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    said = [r.__dict__["refused"] for r in caplog.records if "refused" in r.__dict__]
    assert said == [2] * len(flood)
