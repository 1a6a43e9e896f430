"""The systemd watchdog (lane/sd_notify.py, deploy/lane.service): a lane whose event loop is
blocked stops pinging and is killed and restarted; a lane that waits (a full disk, a broker)
is not. Against a real unix datagram socket standing for systemd's, real `lane run`
processes, mosquitto and the device emulator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from disk_kit import fill, small_tmpfs
from polling import eventually
from test_lane_heal import lane_processes

from barrier.messages import LaneStatus
from barrier.peripherals import PlateReading
from lane.daemon import _stop_if_failed
from lane.health import Check
from lane.sd_notify import (
    SystemdNotifier,
    datagram,
    notify_address,
    ping_period,
    readiness_status,
    watchdog_interval,
)
from lane.transport.mqtt import MqttLink
from lane.wire import topics
from sim.broker import Mosquitto


class NotifySocket:
    """systemd's end of $NOTIFY_SOCKET: a real unix datagram socket, read without waiting."""

    def __init__(self, name: str) -> None:
        self.name = name  # as $NOTIFY_SOCKET spells it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = notify_address({"NOTIFY_SOCKET": name})
        assert address is not None
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []  # every datagram received, as its lines

    @classmethod
    def abstract(cls) -> NotifySocket:
        return cls(f"@lane-test-{uuid.uuid4().hex}")

    def env(self, watchdog_usec: int) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.name, "WATCHDOG_USEC": str(watchdog_usec)}

    def take(self) -> list[list[str]]:
        """The datagrams that arrived since the last call."""
        new = []
        while True:
            try:
                new.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                break
        self.messages += new
        return new

    def count(self, line: str) -> int:
        self.take()
        return sum(line in message for message in self.messages)

    def statuses(self) -> list[str]:
        self.take()
        return [ln[len("STATUS=") :] for m in self.messages for ln in m if ln.startswith("STATUS=")]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket.abstract()
    yield sock
    sock.close()


async def a_ping(notify: NotifySocket) -> None:
    pinged = notify.count("WATCHDOG=1")
    await eventually(lambda: notify.count("WATCHDOG=1") > pinged, what="a WATCHDOG=1")


# --- the pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "sent"),
    [
        (["READY=1"], b"READY=1"),
        (["WATCHDOG=1", "STATUS=serving: ready"], b"WATCHDOG=1\nSTATUS=serving: ready"),
        (["STATUS=for /srv/voie-n\u00b02"], "STATUS=for /srv/voie-n\u00b02".encode()),
        (["STATUS=for " + os.fsdecode(b"/srv/lane-\xff")], b"STATUS=for /srv/lane-\\udcff"),
        (["STATUS=\ud800 alone"], b"STATUS=\\ud800 alone"),
    ],
)
def test_a_datagram_is_utf_8_whatever_the_text(lines: list[str], sent: bytes) -> None:
    assert datagram(lines) == sent
    datagram(lines).decode()  # clean UTF-8: systemd drops a STATUS= that is not


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (None, None),
        ("", None),
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@lane/notify", "\0lane/notify"),
        ("@", None),
        ("run/systemd/notify", None),  # relative: not a socket systemd hands out
        ("vsock:2:1234", None),  # a VM's host: not a lane computer's
    ],
)
def test_the_notify_socket_is_read_from_the_environment(
    value: str | None, address: str | None
) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert notify_address(env) == address


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "20000000"}, 20.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "42"}, 20.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "43"}, None),  # another process's
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": ""}, None),
        ({"WATCHDOG_USEC": "400000"}, 0.4),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "1.5"}, None),
        ({"WATCHDOG_USEC": "twenty"}, None),
        ({"WATCHDOG_USEC": "٢٠"}, None),  # digits, but not ASCII ones
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": "42"}, None),
    ],
)
def test_the_watchdog_interval_is_read_for_this_process_only(
    env: dict[str, str], interval: float | None
) -> None:
    assert watchdog_interval(env, 42) == interval


@pytest.mark.parametrize(("interval", "period"), [(20.0, 5.0), (0.4, 0.1), (3.0, 0.75)])
def test_the_watchdog_is_pinged_four_times_an_interval(interval: float, period: float) -> None:
    assert ping_period(interval) == pytest.approx(period)


@pytest.mark.parametrize(
    ("checks", "text"),
    [
        ([], "serving: ready"),
        ([Check("camera", True, "running"), Check("broker", True, "connected")], "serving: ready"),
        (
            [
                Check("camera", True, "running"),
                Check("broker", False, "not connected"),
                Check("barrier", False, "device is offline"),
            ],
            "serving: not ready: broker (not connected), barrier (device is offline)",
        ),
    ],
)
def test_a_running_lane_s_status_is_its_readiness_in_short(checks: list[Check], text: str) -> None:
    assert readiness_status(checks) == text


# --- the notifier, on a real socket ------------------------------------------------------------


async def test_outside_systemd_the_notifier_does_nothing() -> None:
    systemd = SystemdNotifier({"WATCHDOG_USEC": "20000000"})  # a watchdog and no socket
    assert systemd.address is None and systemd.period is None
    systemd.ready()
    await asyncio.wait_for(systemd.run(), 1)  # returns at once: nothing to ping


async def test_ready_status_and_stopping_are_datagrams_to_the_socket(
    notify_socket: NotifySocket,
) -> None:
    systemd = SystemdNotifier({"NOTIFY_SOCKET": notify_socket.name})
    assert systemd.period is None  # no watchdog asked for: status only
    systemd.ready()
    systemd.stopping()
    systemd.close()
    assert notify_socket.take() == [
        ["READY=1", "STATUS=starting"],
        ["STOPPING=1", "STATUS=stopping"],
    ]


async def test_a_missing_socket_is_logged_once_and_never_stops_the_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"@lane-test-{uuid.uuid4().hex}"  # nobody listens there yet
    systemd = SystemdNotifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "40000"})
    with caplog.at_level(logging.INFO, logger="lane.sd_notify"):
        task = asyncio.create_task(systemd.run())
        try:
            for _ in range(3):
                systemd.ready()
            await eventually(lambda: "systemd notification not sent" in caplog.text)
            assert not task.done()
            listening = NotifySocket(name)  # systemd is back: the pings arrive again
            await eventually(lambda: listening.count("WATCHDOG=1") >= 2)
            listening.close()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            systemd.close()
    events = [r.getMessage() for r in caplog.records]
    assert events.count("systemd notification not sent") == 1
    assert events.count("systemd notifications sent again") == 1


async def test_a_status_not_sent_is_said_once_systemd_listens_again() -> None:
    name = f"@lane-test-{uuid.uuid4().hex}"  # nobody listens there yet
    systemd = SystemdNotifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "40000"})
    systemd.status = lambda: "serving: ready"
    systemd.ready()  # lost, status and all
    listening = NotifySocket(name)
    task = asyncio.create_task(systemd.run())
    try:
        await eventually(lambda: listening.statuses() == ["serving: ready"])
        await a_ping(listening)
        assert listening.statuses() == ["serving: ready"]  # said once, not with every ping
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        systemd.close()
        listening.close()


async def test_a_status_that_fails_is_logged_and_the_pings_go_on(
    notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    systemd = SystemdNotifier(notify_socket.env(watchdog_usec=40_000))

    def broken() -> str:
        raise RuntimeError("no readiness yet")

    systemd.status = broken
    task = asyncio.create_task(systemd.run())
    try:
        await eventually(lambda: notify_socket.count("WATCHDOG=1") >= 3)
        assert "systemd status not computed" in caplog.text and not task.done()
        systemd.stopping()
        systemd.status = lambda: "serving: ready"  # a start-up step that comes too late
        await a_ping(notify_socket)
        assert notify_socket.statuses() == ["stopping"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        systemd.close()


async def test_the_pings_come_from_the_event_loop_and_stop_while_it_is_blocked(
    notify_socket: NotifySocket,
) -> None:
    systemd = SystemdNotifier(notify_socket.env(watchdog_usec=40_000))  # a ping every 10 ms
    assert systemd.period == pytest.approx(0.01)
    task = asyncio.create_task(systemd.run())
    try:
        await eventually(lambda: notify_socket.count("WATCHDOG=1") >= 3)
        notify_socket.take()  # every ping sent so far (a datagram is queued when sendto returns)
        time.sleep(0.5)  # noqa: ASYNC251 - the fault: a blocking call on the loop, 50 pings long
        assert notify_socket.take() == []  # not one ping while the loop did not turn
        await a_ping(notify_socket)  # and after it, again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        systemd.close()


# --- `lane run` under a watchdog ---------------------------------------------------------------


async def systemd_watchdog(
    proc: asyncio.subprocess.Process, notify: NotifySocket, interval: float
) -> None:
    """What systemd does with WatchdogSec= once READY=1 came: SIGABRT when no WATCHDOG=1 came
    for `interval`."""
    loop = asyncio.get_running_loop()
    fed, seen = loop.time(), notify.count("WATCHDOG=1")
    while True:
        if (pinged := notify.count("WATCHDOG=1")) > seen:
            fed, seen = loop.time(), pinged
        if loop.time() - fed > interval:
            proc.send_signal(signal.SIGABRT)
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def log_noise(mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[None]:
    """Plate readings on the lane's I/O topic, a log line each ("plate read"): 2000 of them,
    where 64 KiB of stdout is some 300, so a lane whose stdout nobody reads blocks its loop on
    one. (Not garbage: garbage on any topic is logged once a minute, the rest counted.)"""
    noise = MqttLink(mosquitto.host, mosquitto.port, f"noise-{lane_id}")
    task = asyncio.create_task(noise.run())
    try:
        await noise.wait_connected(5)
        for n in range(2000):
            reading = PlateReading(f"ZJA{n:05d}", 0.9, time.time_ns() // 1000, seq=n)
            await noise.publish(topics.io(lane_id, topics.PLATE), reading.encode())
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def assert_hung_in_a_log_write(stderr: Path) -> None:
    """faulthandler's stacks, on the lane's stderr (the journal) when SIGABRT killed it: the
    loop's thread in a logging write."""
    stacks = stderr.read_text(errors="replace")
    assert "Fatal Python error: Aborted" in stacks
    current = stacks.split("Current thread", 1)[1]
    assert "logging/__init__.py" in current.split("\n\n", 1)[0], stacks


async def test_lane_run_says_ready_pings_the_watchdog_and_says_stopping(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
    notify_socket: NotifySocket,
) -> None:
    async with lane_processes(tmp_path, mosquitto, lane_id, tmp_path / "data") as rig:
        proc = await rig.start(notify_socket.env(watchdog_usec=400_000))  # a ping every 0.1 s
        await eventually(lambda: notify_socket.count("READY=1"), within=30, what="READY=1")
        assert notify_socket.messages[0][0] == "READY=1"  # before any ping
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
        await eventually(lambda: any(s.startswith("serving: ") for s in notify_socket.statuses()))
        pinged = notify_socket.count("WATCHDOG=1")
        await eventually(lambda: notify_socket.count("WATCHDOG=1") >= pinged + 5)
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        assert notify_socket.count("STOPPING=1") == 1
        assert notify_socket.count("READY=1") == 1


async def test_a_lane_whose_loop_blocks_stops_pinging_is_killed_and_says_where_it_hung(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
    notify_socket: NotifySocket,
) -> None:
    """The loop blocks as it does when journald stops reading: the lane's stdout pipe is full
    and the next log line's write() waits on the loop. Garbage on a lane topic makes log lines."""
    stdout, unread = os.pipe()  # never read: 64 KiB of log lines fill it
    stderr = tmp_path / "stderr.txt"
    async with lane_processes(tmp_path, mosquitto, lane_id, tmp_path / "data") as rig:
        proc = await rig.start(
            notify_socket.env(watchdog_usec=3_000_000),
            stdout=unread,
            stderr=stderr.open("wb"),
            cwd=tmp_path,  # where a core dump would go
        )
        os.close(unread)
        await eventually(lambda: notify_socket.count("READY=1"), within=30, what="READY=1")
        watchdog = asyncio.create_task(systemd_watchdog(proc, notify_socket, 3.0))
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
        for _ in range(8):  # 6 s: twice the interval, and the watchdog has not fired
            await a_ping(notify_socket)
            assert not watchdog.done()
        try:
            async with log_noise(mosquitto, lane_id):
                code = await asyncio.wait_for(proc.wait(), 60)
        finally:
            os.close(stdout)
        assert watchdog.done()  # it was the watchdog's SIGABRT
        assert code == -signal.SIGABRT
        assert_hung_in_a_log_write(stderr)


async def test_a_lane_waiting_for_a_full_disk_is_ready_and_keeps_the_watchdog_fed(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
    notify_socket: NotifySocket,
) -> None:
    """Before READY systemd gives a start TimeoutStartSec (90 s) and would kill a lane that
    waits longer for space; after it, the watchdog: the wait must ping it."""
    with small_tmpfs(tmp_path / "lane", "24m") as data:  # freed, above the lane's 16 MB floor
        filler = fill(data)
        async with lane_processes(tmp_path, mosquitto, lane_id, data) as rig:
            proc = await rig.start(notify_socket.env(watchdog_usec=400_000))
            waiting = f"cannot start yet: {data}: disk almost full ("
            await eventually(
                lambda: any(s.startswith(waiting) for s in notify_socket.statuses()),
                within=30,
                what="systemd's status saying why the lane waits",
            )
            assert notify_socket.messages[0][0] == "READY=1"
            pinged = notify_socket.count("WATCHDOG=1")
            await eventually(lambda: notify_socket.count("WATCHDOG=1") >= pinged + 5)
            # Pinged while waiting: the disk is still full, so the lane has not started.
            assert proc.returncode is None and lane_statuses == []
            filler.unlink()
            await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
            await eventually(lambda: notify_socket.statuses()[-1].startswith("serving: "))
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0


async def test_a_status_no_utf_8_can_spell_is_said_and_the_lane_goes_on(
    tmp_path: Path, lane_id: str, notify_socket: NotifySocket
) -> None:
    """A config in a directory whose name is not UTF-8 (a lone surrogate to Python) puts that
    path in the status of a data directory that cannot be created: the status is said, escaped,
    and the lane waits on, pinged, instead of its pings ending (and systemd restarting it in a
    loop while the directory stays)."""
    odd = tmp_path / os.fsdecode(b"lane-\xff")
    odd.mkdir()
    (odd / "blocked").touch()  # a file where the data directory's parent would be
    conf = odd / "lane.toml"
    conf.write_text(f'[lane]\nid = "{lane_id}"\ndata_dir = "blocked/data"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lane", "run", "--config", str(conf),
        env={**os.environ, **notify_socket.env(watchdog_usec=400_000)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(
            lambda: any("lane-\\udcff" in s for s in notify_socket.statuses()),
            what="the status with the path escaped",
        )
        await a_ping(notify_socket)
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_task_beside_the_daemon_that_dies_is_logged_and_stops_the_lane(
    caplog: pytest.LogCaptureFixture, lane_id: str
) -> None:
    """`lane run`'s own tasks (systemd's pings and words) are supervised: one that fails is
    logged with its traceback and sets `stop`, which ends the lane with exit code 1."""
    stop = asyncio.Event()

    async def dies() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the notify socket went away for good")

    task = asyncio.create_task(_stop_if_failed(dies(), stop, lane_id), name="systemd-notify")
    await asyncio.wait_for(stop.wait(), 5)
    with pytest.raises(RuntimeError):
        await task  # still failed: `lane run` exits 1 for it
    failed = [r for r in caplog.records if r.getMessage() == "lane task failed, stopping"]
    assert len(failed) == 1
    assert failed[0].__dict__["task"] == "systemd-notify" and failed[0].__dict__["lane"] == lane_id
    assert failed[0].exc_info is not None and "went away" in str(failed[0].exc_info[1])


async def test_a_task_beside_the_daemon_that_ends_well_stops_nothing(lane_id: str) -> None:
    stop = asyncio.Event()

    async def ends() -> None:
        await asyncio.sleep(0)

    await _stop_if_failed(ends(), stop, lane_id)
    assert not stop.is_set()
