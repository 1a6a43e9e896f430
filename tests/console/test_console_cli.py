"""`lane console` as an operator runs it: a process of its own against a real mosquitto, showing
a lane that publishes itself there, read-only until an operator logs in; the operator's action
arrives on the lane's attendant topic as an AttendantCommand naming them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from polling import eventually

from barrier.health_message import AcquirerHealth, LaneHealth, health_topic
from barrier.messages import AttendantCommand
from lane.console.users import Role, add_user
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics
from sim.broker import Mosquitto, free_port


@pytest.fixture
async def console(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[str]:
    users = tmp_path / "users.txt"
    add_user(users, "olga", Role.OPERATOR, "pw")
    port = free_port()
    lane_filter = "*/*"
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "lane", "console", "--broker", f"127.0.0.1:{mosquitto.port}",
         "--lanes", lane_filter, "--users", str(users), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert b"lane console: http://" in line, line
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0


async def _until(http: aiohttp.ClientSession, url: str, check: Any) -> dict[str, Any]:
    async def matching() -> dict[str, Any] | None:
        async with http.get(url + "api/state") as resp:
            state: dict[str, Any] = await resp.json()
        return state if check(state) else None

    found: dict[str, Any] = await eventually(matching, every=0.05, what="the console state")
    return found


async def test_lane_console_shows_real_lanes_and_acts_only_when_logged_in(
    console: str, mosquitto: Mosquitto, lane_id: str
) -> None:
    commands: list[AttendantCommand] = []

    async def on_command(msg: Incoming) -> None:
        commands.append(AttendantCommand.decode(msg.payload))

    lane = MqttLink(
        mosquitto.host,
        mosquitto.port,
        f"lane-{lane_id}",
        [(topics.attendant(lane_id), 1)],
        on_command,
    )
    task = asyncio.create_task(lane.run())
    try:
        await lane.wait_connected(5)
        now = int(time.time() * 1e6)
        health = LaneHealth("idle", now, [], [], {"passed": 1}, AcquirerHealth("idle", 0), now)
        await lane.publish(health_topic(lane_id), health.encode(), retain=True)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(console) as resp:
                assert resp.status == 200 and "Plaza console" in await resp.text()
            state = await _until(
                http, console, lambda s: any(x["lane"] == lane_id for x in s["lanes"])
            )
            assert state["broker"] is True and state["user"] is None
            body = {"lane": lane_id, "op": "close_lane", "reason": "works", "confirm": True}
            async with http.post(console + "api/action", data=json.dumps(body)) as resp:
                assert resp.status == 401
            login = {"user": "olga", "password": "pw"}
            async with http.post(console + "api/login", data=json.dumps(login)) as resp:
                assert resp.status == 200
            async with http.post(console + "api/action", data=json.dumps(body)) as resp:
                assert resp.status == 200
                sent = await resp.json()
        await eventually(lambda: commands, within=5, what="an attendant command")
        (cmd,) = commands
        assert (cmd.op, cmd.attendant, cmd.reason, cmd.cmd_id) == (
            "close_lane",
            "olga",
            "works",
            sent["cmd_id"],
        )
    finally:
        await lane.publish(health_topic(lane_id), b"", retain=True)  # leave no retained state
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_lane_console_refuses_bad_arguments(tmp_path: Path) -> None:
    bad_users = tmp_path / "users.txt"
    bad_users.write_text("olga:root:nothash\n")
    for args, message in [
        (["--broker", "nowhere"], "--broker must be host:port"),
        (["--lanes", "p07/#"], "lane pattern"),
        (["--users", str(bad_users)], "users.txt:1: role"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "lane", "console", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_lane_console_adduser_writes_a_hashed_password(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    done = subprocess.run(
        [sys.executable, "-m", "lane", "console", "adduser", "--users", str(users), "olga",
         "--role", "operator"],
        check=False, input="s3cret\n", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = users.read_text()
    assert text.startswith("olga:operator:scrypt$") and "s3cret" not in text
