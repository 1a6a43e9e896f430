"""The daemon against the real things: mosquitto, the device emulator, SQLite, the acquirer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from polling import eventually

from barrier.device import DeviceEmulator, Timings
from barrier.messages import BarrierCommand, LaneStatus
from lane.auth.cose import Alg
from lane.auth.deny import DenyList, deny_list_to_json
from lane.auth.keys import IssuerKey, KeySet, KeyUse, encode_keyset, keyset_to_json
from lane.auth.plaza import keys_topic
from lane.auth.tokens import issue_token
from lane.config import LaneConfig, parse_config
from lane.daemon import LaneDaemon, build
from lane.runner import Clocks
from lane.transport.mqtt import MqttLink
from lane.wire import topics
from scanner.sources import PushSource
from sim.acquirer import AcquirerServer
from sim.broker import Mosquitto
from sim.camera import frame_for
from sim.codes import CodeFactory
from uplink.records import Record


@dataclass
class Lane:
    config: LaneConfig
    daemon: LaneDaemon
    device: DeviceEmulator
    source: PushSource
    codes: CodeFactory
    notes: list[tuple[str, dict[str, Any]]]
    queue_path: Path
    acquirer: AcquirerServer


class RecordedBeforeOpen(list[BarrierCommand]):
    """The device's inbox: on every open command, the record must already be on disk (rule 1)."""

    def __init__(self, queue_path: Path) -> None:
        super().__init__()
        self.queue_path = queue_path
        self.violations: list[str] = []

    def append(self, cmd: BarrierCommand) -> None:
        if cmd.op == "open":
            vehicle_id = cmd.cmd_id.removesuffix("/open")
            with sqlite3.connect(self.queue_path) as db:
                blobs = [row[0] for row in db.execute("SELECT data FROM records")]
            drafts = [Record.decode(b).draft for b in blobs]
            paid = [d for d in drafts if d.vehicle_id == vehicle_id and d.auth.result == "approved"]
            if not paid:
                self.violations.append(cmd.cmd_id)
        super().append(cmd)


def config_for(
    tmp_path: Path,
    broker: Mosquitto,
    lane_id: str,
    acquirer: str,
    keyset: Path,
    *,
    lane: dict[str, Any] | None = None,
    barrier: dict[str, Any] | None = None,
    camera: dict[str, Any] | None = None,
    broker_keys: dict[str, Any] | None = None,
    auth_extra: dict[str, Any] | None = None,
) -> LaneConfig:
    return parse_config(
        {
            "lane": {"id": lane_id, "data_dir": str(tmp_path / "lane"), **(lane or {})},
            "barrier": barrier or {},
            "broker": {"port": broker.port, **(broker_keys or {})},
            "camera": {"source": "push", **(camera or {})},
            "auth": {
                "acquirer_url": acquirer,
                "keyset": str(keyset),
                **(auth_extra or {}),
            },
        }
    )


@pytest.fixture
async def lane(tmp_path: Path, mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[Lane]:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        yield lane


@contextlib.asynccontextmanager
async def running_lane(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane: dict[str, Any] | None = None,
    barrier: dict[str, Any] | None = None,
    *,
    fault: str | None = None,
    source: PushSource | None = None,
    ready: bool = True,
    camera: dict[str, Any] | None = None,
    broker: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    peers: Sequence[str] = (),
    clocks: Clocks | None = None,
) -> AsyncIterator[Lane]:
    """The daemon in this process, with a device emulator; `lane`, `barrier`, `camera`,
    `broker`, `auth`: extra [lane], [barrier], [camera], [broker] and [auth] config keys;
    `peers`: other lanes whose keys the key set holds (it holds the lane's own); `fault`: the
    device's fault from its start; `source`: the camera (a fresh push camera by default);
    `ready`: wait until lane and device are connected and the barrier is closed (not with a
    broker that is down); `clocks`: the lane's (its wall clock moved on, say)."""
    codes = CodeFactory(7)
    keyset = codes.write_keyset(tmp_path / "keyset.json", int(time.time()), [lane_id, *peers])
    acquirer = AcquirerServer()
    url = await acquirer.start()
    config = config_for(
        tmp_path,
        mosquitto,
        lane_id,
        url,
        keyset,
        lane=lane,
        barrier=barrier,
        camera=camera,
        broker_keys=broker,
        auth_extra={**codes.lane_auth(tmp_path, lane_id), **(auth or {})},
    )
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, Timings().scaled(20))
    queue_path = config.lane.data_dir / "queue.sqlite3"
    device.received = RecordedBeforeOpen(queue_path)
    device.set_fault(fault)
    source = source or idle_camera(clock=(clocks or Clocks()).monotonic)  # the lane's clock
    daemon = await build(config, source=source, clocks=clocks, shutdown_grace_s=2.0)
    notes: list[tuple[str, dict[str, Any]]] = []
    daemon.runner.observers.append(lambda note: notes.append((note.name, note.fields())))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(device.run()), asyncio.create_task(daemon.run(stop))]
    try:
        if ready:
            await device.wait_connected(5)
            await daemon.link.wait_connected(5)
            await eventually(lambda: daemon.runner.state.barrier == "closed")
        yield Lane(config, daemon, device, source, codes, notes, queue_path, acquirer)
    finally:
        stop.set()
        await asyncio.wait_for(tasks[1], 15)
        await device.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await acquirer.stop()


def idle_camera(clock: Callable[[], float] = time.monotonic) -> PushSource:
    """The push camera of a lane test: frames only come when a test shows a code, where a lane
    camera sees its empty lane all along. No blackout in between, which would close the lane
    to payments (`camera_blackout`): the tests of a camera that goes dark pass their own."""
    return PushSource(blackout_after_s=3600, clock=clock)


class Camera(Protocol):
    source: PushSource
    notes: list[Any]


async def show(lane: Camera, code: str | np.ndarray, until: Any, within: float = 5.0) -> None:
    """Hold a code (a phone showing this text, or a paper ticket's image) in front of the
    lane's camera until `until()` holds."""
    frame = frame_for(code, "clear", rng=1) if isinstance(code, str) else code
    await eventually(
        until,
        within=within,
        every=0.03,
        what=f"the lane reacting to the code; notes: {lane.notes[-5:]}",
        between=lambda: lane.source.put(frame),  # taken now, on the camera's clock
    )


def named(lane: Lane, name: str) -> list[dict[str, Any]]:
    return [fields for n, fields in lane.notes if n == name]


async def test_paid_vehicle_record_is_durable_before_the_barrier_opens(lane: Lane) -> None:
    await lane.device.vehicle_enters(2)
    await eventually(lambda: named(lane, "vehicle_arrived"))
    token = lane.codes.make("token", int(time.time())).text
    await show(lane, token, lambda: named(lane, "barrier_opened"))
    opened = named(lane, "barrier_opened")[0]
    assert isinstance(lane.device.received, RecordedBeforeOpen)
    assert lane.device.received.violations == []
    assert [c.op for c in lane.device.received] == ["open"]
    records = [r for r in (n[1]["record"] for n in lane.notes if n[0] == "record")]
    assert records[0]["record_id"] == opened["record_id"]
    assert records[0]["amount_minor"] == 400  # class 2 at the built-in flat tariff
    assert records[0]["method"] == "token"
    assert token not in str(records)  # the raw code is never stored


async def test_replayed_token_is_refused_and_recorded_as_declined(lane: Lane) -> None:
    # Shown again by the vehicle after the next: the next one's would be its payer's phone
    # still in view, set aside without asking the replay check (lane.core.before_arrival).
    token = lane.codes.make("token", int(time.time())).text
    for n, shown in enumerate((token, lane.codes.make("token", int(time.time())).text), 1):
        await lane.device.vehicle_enters(1)
        await eventually(lambda n=n: len(named(lane, "vehicle_arrived")) == n)
        await show(lane, shown, lambda n=n: len(named(lane, "barrier_opened")) == n)
        await eventually(lambda: lane.device.state == "open")
        await lane.device.vehicle_passes()
        await eventually(lambda: lane.daemon.runner.state.passage is None)
    await lane.device.vehicle_enters(1)
    await eventually(lambda: len(named(lane, "vehicle_arrived")) == 3)
    await show(lane, token, lambda: named(lane, "declined"), within=8)
    assert named(lane, "declined")[0]["reason"] == "replayed"
    assert len(named(lane, "barrier_opened")) == 2
    assert [c.op for c in lane.device.received].count("open") == 2


async def test_garbage_on_lane_topics_is_ignored_or_cleared_by_the_device(
    lane: Lane, mosquitto: Mosquitto
) -> None:
    """Garbage on the barrier's ack and state topics is a fault (barrier_unreadable) until the
    device answers the lane's query readably; on the others it changes nothing."""
    lane_id = lane.config.lane.id
    noise = MqttLink(mosquitto.host, mosquitto.port, f"noise-{lane_id}")
    task = asyncio.create_task(noise.run())
    try:
        await noise.wait_connected(5)
        for topic in (
            topics.barrier_ack(lane_id),
            topics.barrier_state(lane_id),
            topics.io(lane_id, "entry_loop"),
            topics.attendant(lane_id),
        ):
            for payload in (b"", b"\xc1", b"not msgpack at all", b"\x93\x01\x02\x03"):
                await noise.publish(topic, payload)
        await eventually(lambda: "barrier_unreadable" in lane.daemon.runner.alarms)
        await lane.device.vehicle_enters(1)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        await eventually(lambda: lane.daemon.runner.state.faults == frozenset(), within=15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_sigterm_stops_cleanly_and_says_offline(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    codes = CodeFactory(3)
    keyset = codes.write_keyset(tmp_path / "keyset.json", int(time.time()), [lane_id])
    conf = tmp_path / "lane.toml"
    conf.write_text(
        f'[lane]\nid = "{lane_id}"\ndata_dir = "data"\n'
        f"[broker]\nport = {mosquitto.port}\n"
        f'[camera]\nsource = "{tmp_path / "frames"}/"\n'
        f'[auth]\nkeyset = "{keyset.name}"\n{codes.lane_auth_toml(tmp_path, lane_id)}'
    )
    (tmp_path / "frames").mkdir()
    statuses = lane_statuses
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lane", "run", "--config", str(conf),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        await eventually(lambda: any(s.state == "idle" for s in statuses), within=20)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
        out = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert code == 0, out
        await eventually(lambda: statuses[-1].state == "offline")
        assert '"event":"lane stopped"' in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_replaced_key_set_file_is_taken_without_a_restart(lane: Lane) -> None:
    now = int(time.time())
    new_key = Ed25519PrivateKey.generate()
    rotated = KeySet.of(
        issued_at=now + 1,
        keys=[
            *lane.codes.keyset(now).keys.values(),
            IssuerKey(b"rotated", Alg.ED25519, new_key.public_key(), now - 60, now + 3600),
        ],
    )
    assert lane.config.auth.keyset is not None
    lane.config.auth.keyset.write_text(keyset_to_json(rotated))
    await eventually(lambda: lane.daemon.verifier.keys.get(b"rotated") is not None, within=5)
    token = issue_token(new_key, b"rotated", "anyone", "acct-rotated", now, now + 60, b"n" * 16)
    await lane.device.vehicle_enters(1)
    await eventually(lambda: named(lane, "vehicle_arrived"))
    await show(lane, token, lambda: named(lane, "barrier_opened"))


async def test_a_key_set_whose_token_keys_lapsed_is_seen_and_a_good_one_clears_it(
    lane: Lane,
) -> None:
    """A newer, well-formed set is adopted; if none of its token keys is valid now, every token
    payer is refused for the key alone: the lane says so, and the next good set clears it."""
    now = int(time.time())
    runner = lane.daemon.runner
    held = lane.daemon.verifier.keys
    tokens = [k for k in held.keys.values() if k.use is KeyUse.TOKEN]
    lapsed = KeySet.of(
        now + 1,
        [replace(k, not_after=now - 60) if k in tokens else k for k in held.keys.values()],
    )
    path = lane.config.auth.keyset
    assert path is not None
    path.write_text(keyset_to_json(lapsed))
    await eventually(lambda: "keyset_no_token_key" in runner.alarms, within=5)
    assert f"{tokens[0].kid_text} expired" in runner.alarms["keyset_no_token_key"]
    path.write_text(keyset_to_json(KeySet.of(now + 2, held.keys.values())))
    await eventually(lambda: "keyset_no_token_key" not in runner.alarms, within=5)
    await lane.device.vehicle_enters(1)
    await eventually(lambda: named(lane, "vehicle_arrived"))
    token = lane.codes.make("token", now).text
    await show(lane, token, lambda: named(lane, "barrier_opened"))


async def test_a_lane_started_on_a_broken_deny_list_takes_no_token_until_it_has_one(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """A deny list cut short when the lane starts (a sync job and a power cut): it starts all
    the same (exit 2 had systemd give up, the lane down once the file was mended), takes no
    offline token meanwhile (a denied account cannot be told from another), says why, and
    takes the file once mended."""
    deny = tmp_path / "deny.json"
    whole = deny_list_to_json(DenyList.of(1, ["acct-denied"]))
    deny.write_text(whole[: len(whole) // 2])
    async with running_lane(tmp_path, mosquitto, lane_id, auth={"deny_list": str(deny)}) as lane:
        runner = lane.daemon.runner
        await eventually(lambda: str(deny) in runner.alarms.get("trust_update_refused", ""))
        await lane.device.vehicle_enters(1)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        await show(
            lane, lane.codes.make("token", int(time.time())).text, lambda: named(lane, "declined")
        )
        assert named(lane, "declined")[0]["reason"] == "verifier_error"
        deny.write_text(whole)
        await eventually(lambda: "trust_update_refused" not in runner.alarms, within=5)
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: named(lane, "barrier_opened"))


async def test_broker_restarted_mid_vehicle_the_lane_recovers(
    tmp_path: Path, private_broker: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, private_broker, lane_id) as lane:
        await lane.device.vehicle_enters(1)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        await asyncio.to_thread(private_broker.restart)

        def raised(code: str) -> bool:
            return any(a["code"] == code and a["active"] for a in named(lane, "alarm"))

        # The lane may already be back by the time the broker has restarted: look at the alarms
        # it raised on the way, not only at its state now.
        await eventually(lambda: raised("broker_down"), within=10)
        await eventually(lambda: lane.daemon.runner.state.faults == frozenset(), within=15)
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: named(lane, "barrier_opened"), within=10)
        assert lane.device.received.violations == []  # type: ignore[attr-defined]


async def test_device_offline_faults_the_lane_and_it_recovers(lane: Lane) -> None:
    lane.device.set_fault("offline")
    await eventually(lambda: "barrier_offline" in lane.daemon.runner.state.faults, within=10)
    assert "barrier_offline" in lane.daemon.runner.alarms
    await lane.device.vehicle_enters(1)
    token = lane.codes.make("token", int(time.time())).text
    frame = frame_for(token, "clear", rng=1)
    for _ in range(20):  # a code shown to a faulted lane is refused, nothing is charged
        lane.source.put(frame, time.monotonic())
        await asyncio.sleep(0.03)
    assert named(lane, "barrier_opened") == []
    assert not any(n == "record" for n, _ in lane.notes)
    lane.device.set_fault(None)
    await eventually(lambda: lane.daemon.runner.state.faults == frozenset(), within=10)
    assert "barrier_offline" not in lane.daemon.runner.alarms


async def test_a_key_set_published_on_the_plaza_topic_is_taken(
    lane: Lane, mosquitto: Mosquitto
) -> None:
    now = int(time.time())
    new_key = Ed25519PrivateKey.generate()
    rotated = KeySet.of(
        issued_at=now + 5,
        keys=[IssuerKey(b"over-mqtt", Alg.ED25519, new_key.public_key(), now - 60, now + 3600)],
    )
    backoffice = MqttLink(mosquitto.host, mosquitto.port, f"bo-{lane.config.lane.id}")
    task = asyncio.create_task(backoffice.run())
    try:
        await backoffice.wait_connected(5)
        plaza = lane.config.lane.plaza
        await backoffice.publish(keys_topic(plaza), b"garbage", retain=True)  # refused, logged
        await backoffice.publish(keys_topic(plaza), encode_keyset(rotated), retain=True)
        await eventually(lambda: lane.daemon.verifier.keys.get(b"over-mqtt") is not None)
        assert lane.daemon.verifier.keys.issued_at == now + 5
        await backoffice.publish(keys_topic(plaza), b"", retain=True)  # clear the retained set
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_unreadable_queue_does_not_take_the_lane_down(
    lane: Lane, caplog: pytest.LogCaptureFixture
) -> None:
    """The once-a-second health read failing (disk error) is logged; every other task runs on."""
    runner_task = lane.daemon.ops.runner_task
    assert runner_task is not None
    queue = lane.daemon.queue.sync
    with queue._lock:  # the queue's file now reads as a broken one: every read is a QueueError
        real, queue._db = queue._db, sqlite3.connect(":memory:", check_same_thread=False)
    try:
        with caplog.at_level(logging.ERROR, logger="lane.daemon"):
            await eventually(
                lambda: any(r.message == "queue health unreadable" for r in caplog.records),
                what="the health loop's failed read",
            )
        assert not runner_task.done()
    finally:
        with queue._lock:
            queue._db.close()
            queue._db = real


async def test_a_task_that_fails_leaves_the_status_offline(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed task ends the lane, whose links then leave cleanly (the broker discards their
    will): the retained status must still say offline, not the last 'idle'. The log names the
    task, as for the tasks beside the daemon."""
    statuses = lane_statuses
    with pytest.raises(ExceptionGroup):
        async with running_lane(tmp_path, mosquitto, lane_id) as lane:
            await eventually(lambda: any(s.state == "idle" for s in statuses))
            runner_task = lane.daemon.ops.runner_task
            assert runner_task is not None
            # Not an event the core knows: the runner task fails, as a bug in it would.
            lane.daemon.runner.post(object())  # type: ignore[arg-type]
            await eventually(runner_task.done)
    await eventually(lambda: statuses[-1].state == "offline")
    failed = [r for r in caplog.records if r.getMessage() == "lane task failed, stopping"]
    assert [(r.__dict__["task"], r.__dict__["lane"]) for r in failed] == [("lane-runner", lane_id)]


async def test_an_uplink_link_that_fails_leaves_the_status_offline(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """The uplink link ends only on a bug (it reconnects by itself otherwise): the lane ends
    with it, and must say offline like any other failed task, not leave 'idle' behind."""
    statuses = lane_statuses
    with pytest.raises(ExceptionGroup, match="TaskGroup"):
        async with running_lane(tmp_path, mosquitto, lane_id) as lane:
            await eventually(lambda: any(s.state == "idle" for s in statuses))
            uplink = lane.daemon.uplink
            # A filter the client refuses (ValueError, not a lost link): the reconnect fails.
            uplink.subscriptions = [*uplink.subscriptions, ("a/#/b", 1)]
            await uplink.drop()
            runner_task = lane.daemon.ops.runner_task
            assert runner_task is not None
            await eventually(runner_task.done)
    await eventually(lambda: statuses[-1].state == "offline")


async def test_status_changes_during_shutdown_do_not_outlive_offline(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """The status loop must not publish after the shutdown's retained 'offline'."""
    statuses = lane_statuses
    churn: asyncio.Task[None] | None = None
    try:
        async with running_lane(tmp_path, mosquitto, lane_id) as lane:
            await eventually(lambda: any(s.state == "idle" for s in statuses))

            async def flap() -> None:  # a fault coming and going as the lane stops
                n = 0
                while True:
                    n += 1
                    lane.daemon.runner.alarm("flapping", f"flap {n}" if n % 2 else None)
                    await asyncio.sleep(0.001)

            churn = asyncio.create_task(flap())
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # anything published late has arrived by now
        assert statuses[-1].state == "offline", [s.state for s in statuses[-5:]]
    finally:
        if churn is not None:
            churn.cancel()
            await asyncio.gather(churn, return_exceptions=True)
