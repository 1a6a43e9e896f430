from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from barrier.messages import BarrierStatus, LaneStatus
from barrier.watch import format_line, main, watch
from lane.transport.mqtt import Incoming, LinkStopped, MqttLink
from lane.wire import topics
from lane.wire.codec import pack
from sim.broker import Mosquitto, free_port

NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


async def test_watch_prints_one_line_per_message(
    mosquitto: Mosquitto, lane_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    status = LaneStatus("idle", 2, 0.5, {"backoffice": True}, [], 11)
    # Retained messages reach the watcher whenever it subscribes: no race with its start.
    retained = [
        (topics.barrier_state(lane_id), BarrierStatus("open", 4, 10, None, "s1").encode()),
        (topics.status(lane_id), status.encode()),
        (topics.io(lane_id, "entry_loop"), b"\xc1\xc1 not msgpack"),
        (topics.uplink_acks(lane_id), pack({"upto": 7})),
    ]
    task = asyncio.create_task(raw.run())
    try:
        await raw.wait_connected(5)
        for topic, payload in retained:
            await raw.publish(topic, payload, retain=True)
        argv = ["--broker", f"{mosquitto.host}:{mosquitto.port}", "--lane", lane_id, "--count", "4"]
        code = await asyncio.wait_for(asyncio.to_thread(main, argv), 10)
        assert code == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 4
        by_topic = {line.split(" ")[1]: line for line in lines}
        state = by_topic[topics.barrier_state(lane_id)]
        assert " R " in state
        assert json.loads(state.split(" R ", 1)[1]) == {
            "v": 1, "state": "open", "seq": 4, "ts": 10, "session": "s1",
        }  # fmt: skip
        assert '"backoffice":true' in by_topic[topics.status(lane_id)]
        garbage = by_topic[topics.io(lane_id, "entry_loop")]
        assert "ERROR not msgpack" in garbage and "hex=c1c1206e6f74" in garbage
        assert '{"v":1,"upto":7}' in by_topic[topics.uplink_acks(lane_id)]
    finally:
        for topic, _ in retained:
            await raw.publish(topic, b"", retain=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# Starts a command with SIGINT ignored, as a shell starts `cmd &` when job control is off
# (scripts, CI steps, a backgrounded test run): the disposition is inherited across exec.
SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, '-m', 'lane', *sys.argv[1:]])"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_watch_stops_on_a_signal_even_when_started_with_sigint_ignored(
    mosquitto: Mosquitto, lane_id: str, sig: signal.Signals
) -> None:
    """asyncio.run's own Ctrl-C handler is installed only when SIGINT has Python's default
    handler, so `lane watch` relied on the disposition it inherited; started with SIGINT
    ignored it served on after a SIGINT until killed (tests/test_quickstart.py, run in the
    background, saw exactly that). Now it leaves the broker and exits 0."""
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{lane_id}")
    task = asyncio.create_task(raw.run())
    proc = None
    try:
        await raw.wait_connected(5)
        # The retained status is printed once the watcher is subscribed: then it is serving.
        await raw.publish(topics.status(lane_id), pack({"v": 1}), retain=True)
        address = f"{mosquitto.host}:{mosquitto.port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SIGINT_IGNORED, "watch", "--broker", address, "--lane", lane_id,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert topics.status(lane_id).encode() in line
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await raw.publish(topics.status(lane_id), b"", retain=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_format_line_shows_command_properties_and_checks_the_schema() -> None:
    cmd = Incoming(
        "lane/p07/l03/barrier/cmd",
        pack({"op": "open", "cmd_id": "v1/open", "deadline": 5, "lane": "p07/l03"}),
        correlation=b"v1/open",
        response_topic="lane/p07/l03/barrier/ack",
        expiry_s=3,
    )
    line = format_line(cmd, NOW)
    assert line.startswith("03:04:05.678901 lane/p07/l03/barrier/cmd expiry=3s corr=v1/open")
    assert "reply=lane/p07/l03/barrier/ack" in line and '"op":"open"' in line
    # A well-formed map that is not a valid message of its topic is an error line.
    bad = Incoming("lane/p07/l03/barrier/cmd", pack({"op": "lift"}))
    assert "ERROR" in format_line(bad, NOW)
    # Bytes and odd keys do not break the printer.
    odd = Incoming("lane/p07/l03/events", pack({"blob": b"\x00\x01", "n": [1.5, None]}))
    assert '"blob":"0x0001"' in format_line(odd, NOW)
    cleared = Incoming("lane/p07/l03/status", b"", retain=True)
    assert "retained message cleared" in format_line(cleared, NOW)


@pytest.mark.parametrize(
    "argv",
    [
        ["--broker", "nohost", "--lane", "a/b"],
        ["--broker", "h:99999", "--lane", "a/b"],
        ["--lane", "a/b", "--count", "0"],
        ["--broker", "h:1"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


async def test_watch_on_a_wrong_port_says_why_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Nobody listens on the port: the reason is printed, once, not a bare 'disconnected'."""
    port = free_port()
    task = asyncio.create_task(watch("127.0.0.1", port, "p01/l01", 1))
    try:
        err = await until_waiting(capsys)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = err.splitlines()
    reasons = [
        ln for ln in lines if ln.startswith(f"lane watch: no connection to 127.0.0.1:{port}")
    ]
    assert len(reasons) == 1, lines  # several retries, one line
    assert "Connection refused" in reasons[0] and reasons[0].endswith("(retrying)")
    assert not any("mqtt disconnected" in ln for ln in lines)


async def until_waiting(capsys: pytest.CaptureFixture[str]) -> str:
    """What the watcher said on stderr up to 'waiting for the broker' (10 s at most)."""
    err = ""
    async with asyncio.timeout(10):
        while "waiting for the broker" not in err:
            await asyncio.sleep(0.05)
            err += capsys.readouterr().err
    return err


@pytest.mark.parametrize("lane", ["p07/l03", "p07/#"], ids=["lane", "wildcard"])
async def test_watch_waits_for_a_broker_that_is_down_but_not_for_a_stopped_client(
    lane: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nobody listens yet: the watcher says it waits, and prints once a broker comes up there.
    A link that stops on that broker (a filter paho refuses: `main` refuses such a lane id up
    front, `watch` is handed one here) will never connect: the watcher hung for ever after
    'waiting for the broker'. It ends, saying why."""
    broker = Mosquitto(port=free_port(), workdir=tmp_path)
    task = asyncio.create_task(watch(broker.host, broker.port, lane, 1))
    raw = MqttLink(broker.host, broker.port, "raw")
    raw_task = asyncio.create_task(raw.run())
    try:
        await until_waiting(capsys)
        broker.start()
        if lane.endswith("#"):
            with pytest.raises(LinkStopped, match=r"^the MQTT client stopped: ValueError: Inv"):
                await asyncio.wait_for(task, 20)
            return
        await raw.wait_connected(10)
        # Retained: the watcher gets it whenever it subscribes, before or after this publish.
        await raw.publish(topics.status(lane), pack({"v": 1}), retain=True)
        await asyncio.wait_for(task, 20)
        assert topics.status(lane) in capsys.readouterr().out
    finally:
        for t in (task, raw_task):
            t.cancel()
        await asyncio.gather(task, raw_task, return_exceptions=True)
        broker.stop()


@pytest.mark.parametrize("lane", ["p07/#", "+/l03", "+/+", "p07/+/l03", "p+7/+", "#"])
async def test_watch_refuses_a_lane_id_that_is_not_one(mosquitto: Mosquitto, lane: str) -> None:
    """`lane watch --lane 'p07/#'` waited for ever on a stopped link; now it is refused up front
    by `[lane] id`'s own check, exit 2: only a whole plaza (`p07/+`) is a wildcard it takes."""
    address = f"{mosquitto.host}:{mosquitto.port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lane", "watch", "--broker", address, "--lane", lane,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert (proc.returncode, err.decode()) == (
        2,
        f"lane watch: a lane id is plaza/lane (letters, digits, _ and -), not {lane!r}; "
        "a whole plaza is plaza/+\n",
    )


async def test_watch_takes_a_whole_plaza(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--lane 'p07/+'` watched a plaza before lane ids were checked, and operators use it: it
    prints the traffic of every lane of the plaza, each message checked by its topic's
    decoder, and nothing of another plaza's lane."""
    plaza = f"t{uuid.uuid4().hex[:6]}"
    lanes = [f"{plaza}/l01", f"{plaza}/l02"]
    other = f"{plaza}x/l01"
    raw = MqttLink(mosquitto.host, mosquitto.port, f"raw-{plaza}")
    retained = [
        (topics.barrier_state(lanes[0]), BarrierStatus("open", 4, 10, None, "s1").encode()),
        (topics.io(lanes[1], "entry_loop"), b"\xc1\xc1 not msgpack"),
        (topics.uplink_acks(lanes[1]), pack({"upto": 7})),
        (topics.status(other), LaneStatus("idle", 2, 0.5, {}, [], 11).encode()),
    ]
    task = asyncio.create_task(raw.run())
    try:
        await raw.wait_connected(5)
        for topic, payload in retained:
            await raw.publish(topic, payload, retain=True)
        address = f"{mosquitto.host}:{mosquitto.port}"
        argv = ["--broker", address, "--lane", f"{plaza}/+", "--count", "3"]
        code = await asyncio.wait_for(asyncio.to_thread(main, argv), 10)
        assert code == 0
        lines = capsys.readouterr().out.splitlines()
        by_topic = {line.split(" ")[1]: line for line in lines}
        assert sorted(by_topic) == sorted(t for t, _ in retained[:3])
        assert '"state":"open"' in by_topic[topics.barrier_state(lanes[0])]
        assert "ERROR not msgpack" in by_topic[topics.io(lanes[1], "entry_loop")]
        assert '{"v":1,"upto":7}' in by_topic[topics.uplink_acks(lanes[1])]
    finally:
        for topic, _ in retained:
            await raw.publish(topic, b"", retain=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
