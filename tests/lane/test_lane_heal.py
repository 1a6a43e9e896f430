"""The lane heals itself against the real things (issue #11): mosquitto, the device emulator,
the daemon (in this process, and as a `lane run` process killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show

from barrier.device import DeviceEmulator, Timings
from barrier.messages import AttendantCommand, BarrierCommand, LaneStatus
from lane.transport.mqtt import MqttLink
from lane.wire import topics
from sim.broker import Mosquitto
from sim.codes import CodeFactory
from uplink.records import Record

# Short bounds, so the ways out are taken within a test's patience.
QUICK = {"probe_s": 0.5, "pass_dwell_s": 20.0}


async def pays(lane: Lane, until: Callable[[], Any], within: float = 5.0) -> None:
    """A vehicle drives onto the pay point and shows a fresh token until `until()` holds."""
    mark = len(named(lane, "vehicle_arrived"))
    await lane.device.vehicle_enters(1)
    await eventually(lambda: len(named(lane, "vehicle_arrived")) > mark)
    token = lane.codes.make("token", int(time.time())).text
    await show(lane, token, until, within=within)


def quiet(lane: Lane) -> bool:
    """Idle with no alarm (the camera sees nothing between two vehicles: it may say so)."""
    runner = lane.daemon.runner
    return set(runner.alarms) <= {"camera_blackout"} and runner.idle()


async def back_and_paying(lane: Lane) -> None:
    """The broker back for both links: `broker_down` clears by itself, the uplink reconnects,
    and the next vehicle pays and passes."""
    runner = lane.daemon.runner
    await eventually(lambda: "broker_down" not in runner.alarms, within=15)
    await eventually(lane.daemon.uplink.connected.is_set, within=15)
    await eventually(lambda: quiet(lane), within=15)
    await pays(lane, lambda: named(lane, "barrier_opened"))
    await lane.device.vehicle_passes()
    await eventually(lambda: quiet(lane))


async def test_barrier_offline_while_open_then_back_the_lost_exit_edge_is_recovered(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        runner, device = lane.daemon.runner, lane.device
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: device.state == "open")
        device.set_fault("offline")
        await eventually(lambda: "barrier_offline" in runner.alarms, within=10)
        await device.vehicle_passes()
        await device.flushed()  # every edge of it is lost: the device is not connected
        device.set_fault(None)
        # Back: its retained state and its snapshot tell the lane the vehicle is gone.
        await eventually(lambda: device.state == "closed", within=10)
        await eventually(lambda: quiet(lane), within=10)
        assert any(f.get("seen") == "snapshot" for f in named(lane, "vehicle_left"))
        # ... and it serves the next paying vehicle normally.
        await pays(lane, lambda: len(named(lane, "barrier_opened")) == 2)
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)
        assert named(lane, "paid_not_passed") == []
        assert lane.device.received.violations == []  # type: ignore[attr-defined]


async def test_barrier_no_ack_then_acking_again_the_held_open_is_probed_and_served(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        runner, device = lane.daemon.runner, lane.device
        device.set_fault("no_ack")
        await pays(lane, lambda: "barrier_no_ack" in runner.alarms, within=10)
        assert device.executions == []
        device.set_fault(None)
        await eventually(lambda: named(lane, "barrier_opened"), within=10)
        assert "barrier_no_ack" not in runner.alarms
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)
        assert [c for c in device.executions if c.endswith("/open")] == [
            named(lane, "barrier_opened")[0]["vehicle_id"] + "/open"
        ]


async def test_a_barrier_reset_after_it_opened_for_a_driver_who_then_backs_away_heals(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """The device faults while open for a paid vehicle and comes back closed; the driver backs
    away. Before, the lane waited in `open` for ever (lane_stuck, asked again and again)."""
    async with running_lane(tmp_path, mosquitto, lane_id, {**QUICK, "pass_dwell_s": 3.0}) as lane:
        runner, device = lane.daemon.runner, lane.device
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: device.state == "open")
        device.set_fault("fault")
        await eventually(lambda: "barrier_fault" in runner.alarms, within=10)
        device.set_fault(None)  # the reset brings the boom down
        await eventually(lambda: device.state == "closed", within=10)
        await eventually(lambda: "lane_stuck" in runner.alarms, within=10)  # still at the point
        await device.set_sensor("entry_loop", False)  # the driver backs away
        await eventually(lambda: quiet(lane), within=15)
        assert named(lane, "paid_not_passed") == []  # the boom was up for it: no refund
        await pays(lane, lambda: len(named(lane, "barrier_opened")) == 2)
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)


# Short bounds, so a stuck boom's self-tests run within a test's patience (docs/barrier.md).
STUCK_BARRIER = {"move_s": 0.5, "selftest_s": 0.5, "selftest_max_s": 2.0}


async def test_a_boom_stuck_closed_charges_nobody_else_and_clears_by_its_self_test(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lane.runner")
    lane_conf = {**QUICK, "pass_dwell_s": 3.0}
    async with running_lane(tmp_path, mosquitto, lane_id, lane_conf, STUCK_BARRIER) as lane:
        runner, device = lane.daemon.runner, lane.device
        device.set_fault("stuck")
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: "barrier_stuck" in runner.alarms, within=10)
        text = runner.alarms["barrier_stuck"]
        assert "commanded open" in text and "lane closed to payments" in text
        assert "self-test every 0.5 s doubling to 2 s" in text
        # Operators see it in the lane's retained status too.
        await eventually(lambda: "barrier_stuck" in lane_statuses[-1].faults, within=10)
        # The paid driver is not let through: after the dwell, a refund record and an alarm.
        await eventually(lambda: named(lane, "paid_not_passed"), within=30)
        await device.vehicle_backs_away()
        await eventually(lambda: charged(lane) != [] and refunds(lane) != [])
        # The next drivers are not charged: the lane is closed to payments.
        for _ in range(2):
            await refuses_a_token(lane)
        assert len(charged(lane)) == 1 and len(refunds(lane)) == 1
        assert len(named(lane, "barrier_opened")) == 1
        # The self-tests try the boom at the empty lane: acked, it does not move.
        await eventually(lambda: len(self_tests(lane, "failed")) >= 2, within=15)
        assert "barrier_stuck" in runner.alarms  # latched, though the boom is where it is wanted
        # The boom works again: the next self-test sees it open, and the lane heals itself.
        device.set_fault(None)
        await eventually(lambda: "barrier_stuck" not in runner.alarms, within=10)
        # Its note reaches the observers one turn of the loop after the step that cleared the
        # alarm (docs/core.md, "Actions"): looked for at once, it may not be there yet.
        await eventually(lambda: self_tests(lane, "passed"), what="a self-test passed")
        await eventually(lambda: device.state == "closed" and runner.idle(), within=10)
        await eventually(lambda: "barrier_stuck" not in lane_statuses[-1].faults, within=10)
        # ... and a following vehicle pays and passes.
        await pays(lane, lambda: len(named(lane, "barrier_opened")) == 2)
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)
        assert len(charged(lane)) == 2 and len(refunds(lane)) == 1
        # The tests left no record: the device saw their own commands, never a vehicle's.
        tests = [c.cmd_id for c in device.received if "/selftest/" in c.cmd_id]
        assert any(c.endswith("/selftest/open") for c in tests)
        assert any(c.endswith("/selftest/close") for c in tests)
        assert {r.draft.vehicle_id for r in records(lane.queue_path)} == {
            opened["vehicle_id"] for opened in named(lane, "barrier_opened")
        }
        # ... and one structured log line per step of a test.
        lines = [r for r in caplog.records if r.getMessage() == "barrier self-test"]
        assert [(r.__dict__["self_test"], r.__dict__["cmd_id"]) for r in lines] == [
            (f["step"], f.get("cmd")) for f in named(lane, "barrier_self_test")
        ]
        assert {r.__dict__["lane"] for r in lines} == {lane_id}


async def test_killed_with_the_boom_stuck_closed_the_restarted_lane_starts_latched_and_heals(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """barrier_stuck latched, then SIGKILL: the lane restarted with the boom still stuck is
    latched from its start (nobody charged), and clears by its self-test once the boom works."""
    data = tmp_path / "lane"  # running_lane's data directory
    barrier = "".join(f"{k} = {v}\n" for k, v in STUCK_BARRIER.items())
    async with lane_processes(tmp_path, mosquitto, lane_id, data, barrier) as rig:
        rig.device.set_fault("stuck")
        proc = await rig.start()
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
        await rig.attendant_open(lane_id)
        await eventually(lambda: "barrier_stuck" in lane_statuses[-1].faults, within=10)
        proc.kill()  # SIGKILL: no clean shutdown
        await proc.wait()
    lane_conf = {**QUICK, "pass_dwell_s": 3.0}
    async with running_lane(
        tmp_path, mosquitto, lane_id, lane_conf, STUCK_BARRIER, fault="stuck"
    ) as lane:
        runner, device = lane.daemon.runner, lane.device
        text = runner.alarms["barrier_stuck"]  # raised by the first event the core took
        assert "(carried over a restart)" in text and "commanded open" in text
        assert "lane closed to payments" in text
        # Nobody is charged: the lane refuses the code, it asks no acquirer.
        await refuses_a_token(lane)
        await eventually(lambda: len(self_tests(lane, "failed")) >= 1, within=15)
        assert "barrier_stuck" in runner.alarms and charged(lane) == []
        # The boom works again: the next self-test clears the latch, on disk too.
        device.set_fault(None)
        await eventually(lambda: "barrier_stuck" not in runner.alarms, within=10)
        assert not (lane.config.lane.data_dir / "barrier_stuck.json").exists()
        await eventually(lambda: device.state == "closed" and runner.idle(), within=10)
        await eventually(lambda: "barrier_stuck" not in lane_statuses[-1].faults, within=10)
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)
        assert len(charged(lane)) == 1


STUCK_OPEN = "barrier_stuck_open"


def closes(device: DeviceEmulator) -> list[BarrierCommand]:
    return [c for c in device.received if c.op == "close"]


async def test_a_boom_stuck_open_under_traffic_keeps_its_alarm_takes_payments_and_heals(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK, STUCK_BARRIER) as lane:
        runner, device = lane.daemon.runner, lane.device
        device.set_fault("stuck_open")  # the boom rises for the next vehicle, never comes down
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await device.vehicle_passes()
        await eventually(lambda: STUCK_OPEN in runner.alarms, within=10)
        text = runner.alarms[STUCK_OPEN]
        assert "commanded closed, device reports open" in text and "payments go on" in text
        assert "clears when the device reports closed" in text
        await eventually(lambda: STUCK_OPEN in lane_statuses[-1].faults, within=10)
        # Dense traffic: the next vehicles pay and pass, their opens "reached" at once under
        # the boom that is up; the alarm holds through them.
        for n in (2, 3):
            await pays(lane, lambda n=n: len(named(lane, "barrier_opened")) == n)
            await device.vehicle_passes()
            await eventually(lambda: runner.state.passage is None)
            assert STUCK_OPEN in runner.alarms
        # One who does not pay drives under it: an unpaid passage, recorded.
        await device.vehicle_enters(1)
        await device.vehicle_passes()
        await eventually(lambda: "unpaid_passage" in runner.alarms)
        violations = [r for r in records(lane.queue_path) if r.draft.kind == "violation"]
        assert len(violations) == 1 and "unpaid_passage" in violations[0].draft.flags
        assert len(charged(lane)) == 3 and refunds(lane) == []
        # At the empty lane the close is commanded again, and again: acked, not done.
        tried = len(closes(device))
        await eventually(lambda: len(closes(device)) >= tried + 2, within=15)
        assert STUCK_OPEN in runner.alarms
        assert [f for f in named(lane, "alarm") if f["code"] == STUCK_OPEN] == [
            {"code": STUCK_OPEN, "message": text, "active": True}
        ]  # raised once, never cleared in between
        # Repaired: the next close comes down and the alarm clears, no operator needed.
        device.set_fault(None)
        await eventually(lambda: STUCK_OPEN not in runner.alarms, within=15)
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)
        await eventually(lambda: STUCK_OPEN not in lane_statuses[-1].faults, within=10)


async def test_killed_with_the_boom_stuck_open_the_restarted_lane_raises_the_alarm_again(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """Nothing is kept on disk for a boom stuck open: the restarted lane asks the device at
    its start, closes the boom it finds up for nobody, and the boom still stuck raises the
    alarm again; repaired, it comes down and the alarm clears."""
    data = tmp_path / "lane"
    barrier = "".join(f"{k} = {v}\n" for k, v in STUCK_BARRIER.items())
    async with lane_processes(tmp_path, mosquitto, lane_id, data, barrier) as rig:
        await rig.start()
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
        await rig.attendant_open(lane_id)
        await eventually(lambda: rig.device.state == "open", within=10)
        rig.device.set_fault("stuck_open")
        rig.procs[0].kill()  # SIGKILL: no clean shutdown
        await rig.procs[0].wait()
        seen = len(lane_statuses)
        await rig.start()
        await eventually(
            lambda: any(STUCK_OPEN in s.faults for s in lane_statuses[seen:]), within=20
        )
        assert rig.device.state == "open"
        assert sorted(p.name for p in data.iterdir() if p.suffix == ".json") == []
        rig.device.set_fault(None)
        await eventually(lambda: rig.device.state == "closed", within=15)
        await eventually(
            lambda: lane_statuses[-1].state == "idle" and lane_statuses[-1].faults == [],
            within=10,
        )


async def test_killed_while_commands_are_dropped_the_restarted_lane_refuses_until_an_ack(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """barrier_no_ack raised, then SIGKILL: the lane restarted under a device that still drops
    commands starts with the fault (nobody charged, its test close probed every probe_s), and
    clears by itself at the first ack once the device acks again."""
    data = tmp_path / "lane"  # running_lane's data directory
    async with lane_processes(tmp_path, mosquitto, lane_id, data) as rig:
        rig.device.set_fault("no_ack")
        proc = await rig.start()
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
        await rig.attendant_open(lane_id)  # its open is dropped, max_attempts times
        await eventually(lambda: "barrier_no_ack" in lane_statuses[-1].faults, within=10)
        assert (data / "barrier_no_ack.json").exists()
        proc.kill()  # SIGKILL: no clean shutdown
        await proc.wait()
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK, fault="no_ack") as lane:
        runner, device = lane.daemon.runner, lane.device
        text = runner.alarms["barrier_no_ack"]  # raised by the first event the core took
        assert "(carried over a restart)" in text and "open att-1/open" in text
        assert "a test close sent every 0.5 s" in text
        # Nobody is charged: the lane refuses the code, it asks no acquirer.
        assert "barrier_no_ack" in (await refuses_a_token(lane))["reason"]
        # The test close is sent again at every probe; the device still drops it.

        def tests() -> list[BarrierCommand]:
            return [c for c in device.received if c.cmd_id.endswith("/noack_test/close")]

        await eventually(lambda: len(tests()) >= 2, within=10)
        assert len({c.cmd_id for c in tests()}) == 1
        assert "barrier_no_ack" in runner.alarms and charged(lane) == []
        assert (lane.config.lane.data_dir / "barrier_no_ack.json").exists()
        # The device acks again: the next probe's ack clears the fault, on disk too.
        device.set_fault(None)
        await eventually(lambda: "barrier_no_ack" not in runner.alarms, within=10)
        assert not (lane.config.lane.data_dir / "barrier_no_ack.json").exists()
        assert tests()[-1].cmd_id in device.executions
        await eventually(lambda: "barrier_no_ack" not in lane_statuses[-1].faults, within=10)
        await eventually(lambda: quiet(lane), within=10)
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=10)
        assert len(charged(lane)) == 1


async def refuses_a_token(lane: Lane) -> dict[str, Any]:
    """A vehicle shows a valid token, is refused and backs away; the refusal's note."""
    refused = len(named(lane, "scan_refused"))
    await lane.device.vehicle_enters(1)
    token = lane.codes.make("token", int(time.time())).text
    await show(lane, token, lambda: len(named(lane, "scan_refused")) > refused)
    await lane.device.vehicle_backs_away()
    await eventually(lambda: lane.daemon.runner.state.vehicle is None)
    return named(lane, "scan_refused")[refused]


def charged(lane: Lane) -> list[Record]:
    return [r for r in records(lane.queue_path) if r.draft.amount_minor > 0]


def refunds(lane: Lane) -> list[Record]:
    return [r for r in records(lane.queue_path) if "paid_not_passed" in r.draft.flags]


def self_tests(lane: Lane, step: str) -> list[dict[str, Any]]:
    return [f for f in named(lane, "barrier_self_test") if f["step"] == step]


async def test_the_lane_asks_the_device_after_its_start_and_after_every_reconnect(
    tmp_path: Path, private_broker: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, private_broker, lane_id, QUICK) as lane:
        port = lane.daemon.runner.barrier
        sent: list[str] = []
        ask = port.query

        async def query(query_id: str) -> None:
            await ask(query_id)  # published: the broker has it
            sent.append(query_id)

        await eventually(lambda: lane.device.queries != [])  # asked after the start
        # Watched from now on: the start's query may still be on its way when the lane is up.
        port.query = query  # type: ignore[method-assign]
        await asyncio.to_thread(private_broker.restart)
        await eventually(lambda: sent != [], within=15)  # and after the reconnect
        assert sent[0] != lane.device.queries[0]  # a query of its own, not a resend
        await eventually(lambda: quiet(lane), within=15)


async def test_a_device_the_lane_cannot_read_takes_no_payment_says_so_and_heals(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """A device that speaks a format the lane does not read (a firmware upgrade): it may be in
    fault, its boom anywhere. The lane charges nobody, names the topic and the error, asks the
    device every probe_s, and serves again once the device's answer reads."""
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        runner = lane.daemon.runner
        lane.device.set_fault("garbled")  # it says its state in the new format at once
        await eventually(lambda: "barrier_unreadable" in runner.alarms)
        assert topics.barrier_state(lane_id) in runner.alarms["barrier_unreadable"]
        barrier = next(c for c in lane.daemon.ops.readiness() if c.name == "barrier")
        assert not barrier.ok and "cannot be read" in barrier.detail
        await lane.device.vehicle_enters(1)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: named(lane, "scan_refused"))
        assert records(lane.queue_path) == []  # nobody charged
        asked = len(lane.device.queries)
        await eventually(lambda: len(lane.device.queries) >= asked + 2)  # asked every probe_s
        assert "barrier_unreadable" in runner.alarms  # a garbled answer clears nothing
        lane.device.set_fault(None)
        await eventually(lambda: "barrier_unreadable" not in runner.alarms)
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: named(lane, "barrier_opened"))
        await lane.device.vehicle_passes()
        await eventually(lambda: quiet(lane))


async def test_a_device_whose_acks_alone_cannot_be_read_holds_one_alarm_until_they_read(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """Its states and snapshots read, its acks do not: `barrier_unreadable` stays up, raised
    once, through every probe (each query's readable answer says nothing of the acks; each
    command sent again is answered in garbage again), and clears with the first ack that reads."""
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        runner, device = lane.daemon.runner, lane.device
        device.set_fault("garbled_acks")
        await pays(lane, lambda: "barrier_no_ack" in runner.alarms, within=10)
        assert topics.barrier_ack(lane_id) in runner.alarms["barrier_unreadable"]
        asked = len(device.queries)
        await eventually(lambda: len(device.queries) >= asked + 4, within=10)  # 4 probes
        said = [a["active"] for a in named(lane, "alarm") if a["code"] == "barrier_unreadable"]
        assert said == [True], "the alarm blinks under probes"
        device.set_fault(None)
        await eventually(lambda: not {"barrier_unreadable", "barrier_no_ack"} & set(runner.alarms))
        said = [a["active"] for a in named(lane, "alarm") if a["code"] == "barrier_unreadable"]
        assert said == [True, False]


def records(queue_path: Path) -> list[Record]:
    with sqlite3.connect(queue_path) as db:
        return [Record.decode(row[0]) for row in db.execute("SELECT data FROM records")]


@dataclass
class LaneProcesses:
    """`lane run` processes on one config (`data` its data directory, a folder camera), a
    device emulator and an attendant console on the broker."""

    conf: Path
    device: DeviceEmulator
    console: MqttLink
    procs: list[asyncio.subprocess.Process]

    async def start(
        self, env: Mapping[str, str] | None = None, **how: Any
    ) -> asyncio.subprocess.Process:
        """`env`: variables added to the lane's; `how`: other streams, a cwd."""
        if "stdout" not in how:
            how["stdout"] = (self.conf.parent / "lane.log").open("ab")
        how.setdefault("stderr", asyncio.subprocess.STDOUT)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lane", "run", "--config", str(self.conf),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, **how,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def attendant_open(self, lane_id: str) -> None:
        opening = AttendantCommand("open", "att-1", "test", "alice", int(time.time() * 1e6))
        await self.console.publish(topics.attendant(lane_id), opening.encode())


@contextlib.asynccontextmanager
async def lane_processes(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, data: Path, barrier: str = ""
) -> AsyncIterator[LaneProcesses]:
    """Killed on the way out, whatever is still running; `barrier`: [barrier] TOML lines."""
    codes = CodeFactory(3)
    keyset = codes.write_keyset(tmp_path / "keyset.json", int(time.time()), [lane_id])
    conf = tmp_path / "lane.toml"
    conf.write_text(
        f'[lane]\nid = "{lane_id}"\ndata_dir = "{data}"\n'
        f"[barrier]\n{barrier}"
        f"[broker]\nport = {mosquitto.port}\n"
        f'[camera]\nsource = "{tmp_path / "frames"}/"\n'
        f'[auth]\nkeyset = "{keyset}"\n{codes.lane_auth_toml(tmp_path, lane_id)}'
    )
    (tmp_path / "frames").mkdir()
    device = DeviceEmulator(lane_id, mosquitto.host, mosquitto.port, Timings().scaled(20))
    console = MqttLink(mosquitto.host, mosquitto.port, f"console-{lane_id}")
    tasks = [asyncio.create_task(device.run()), asyncio.create_task(console.run())]
    rig = LaneProcesses(conf, device, console, [])
    try:
        await device.wait_connected(5)
        await console.wait_connected(5)
        yield rig
    finally:
        for proc in rig.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await device.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_lane_restarted_on_a_broken_key_set_file_starts_says_why_and_takes_it_mended(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """A sync job's half-written key set when the lane (re)starts, a power cut between them:
    the lane starts all the same with no key (every offline token refused), its status says
    why, and it takes the file once mended. Exiting, it would have been restarted by systemd
    into the same file until systemd gave up (10 quick restarts), down once the file was
    mended."""
    async with lane_processes(tmp_path, mosquitto, lane_id, tmp_path / "data") as rig:
        keyset = tmp_path / "keyset.json"
        good = keyset.read_text()
        keyset.write_text(good[: len(good) // 2])
        proc = await rig.start()
        await eventually(
            lambda: any("trust_update_refused" in s.faults for s in lane_statuses), within=20
        )
        assert proc.returncode is None
        keyset.write_text(good)
        await eventually(
            lambda: lane_statuses[-1].state == "idle" and lane_statuses[-1].faults == [],
            within=10,
        )
        assert "key set updated" in (tmp_path / "lane.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


@pytest.mark.parametrize("gone_before_restart", [False, True], ids=["under", "gone"])
async def test_killed_with_the_barrier_open_the_restarted_lane_closes_it_and_records_the_unpaid(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    lane_statuses: list[LaneStatus],
    gone_before_restart: bool,
) -> None:
    """`gone`: the vehicle drives under the open boom and away while the lane is down; its
    edges wait for the lane in its persistent MQTT session."""
    data = tmp_path / "data"
    async with lane_processes(tmp_path, mosquitto, lane_id, data) as rig:
        await rig.start()
        await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
        await rig.attendant_open(lane_id)
        await eventually(lambda: rig.device.state == "open", within=10)
        rig.procs[0].kill()  # SIGKILL: no clean shutdown, no close
        await rig.procs[0].wait()
        await rig.device.set_sensor("safety_loop", True)  # a vehicle drives under the open boom
        if gone_before_restart:
            await rig.device.set_sensor("safety_loop", False)
        seen = len(lane_statuses)
        await rig.start()
        if not gone_before_restart:
            await eventually(
                lambda: any("unpaid_passage" in s.faults for s in lane_statuses[seen:]), within=20
            )
            assert rig.device.state == "open"  # never closed over the vehicle under it
            await rig.device.set_sensor("safety_loop", False)
        # (gone: the alarm clears as soon as the boom is down; the record below is what stays)
        await eventually(lambda: rig.device.state == "closed", within=10)
        await eventually(
            lambda: lane_statuses[-1].state == "idle" and lane_statuses[-1].faults == [],
            within=10,
        )
        violations = [r for r in records(data / "queue.sqlite3") if r.draft.kind == "violation"]
        assert len(violations) == 1 and "unpaid_passage" in violations[0].draft.flags
        rig.procs[1].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(rig.procs[1].wait(), 20) == 0
