"""A paid vehicle outlives a crash of the lane (lane.core.carried): a real `lane run` killed
with SIGKILL after the paid record is committed and before the vehicle has passed, restarted,
against mosquitto and the device emulator.

The kill comes at a known point, not after a sleep: the emulator drops the open (its `no_ack`
fault) and the lane waits `ack_timeout_s` (10 s) for its ack, so the record is durable, the
open was sent, and nothing has happened at the barrier when the lane dies; or (boom up) the
boom is seen open and the vehicle still waits before it. A restart may find the device
dropping commands with `barrier_no_ack` kept on disk (d).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import cv2
from mqtt_kit import collected
from polling import eventually
from test_lane_heal import LaneProcesses, lane_processes, records

from barrier.messages import LaneStatus
from lane.barrier_latches import LatchFiles
from lane.core.names import Alarm
from lane.wire import topics
from sim.broker import Mosquitto
from sim.camera import frame_for
from sim.codes import CodeFactory
from uplink.records import Record

HELD_OPEN = "ack_timeout_s = 10\n"  # the lane waits this long for the dropped open's ack


def charged(queue: Path) -> list[Record]:
    return [r for r in records(queue) if r.draft.amount_minor > 0]


def kinds(queue: Path, flag: str) -> list[Record]:
    return [r for r in records(queue) if flag in r.draft.flags or r.draft.kind == flag]


def owed_rows(queue: Path) -> int:
    with sqlite3.connect(queue) as db:
        return int(db.execute("SELECT COUNT(*) FROM owed").fetchone()[0])


async def paid_then_killed(
    rig: LaneProcesses, lane_statuses: list[LaneStatus], queue: Path, *, boom_up: bool
) -> Record:
    """A vehicle pays with a token (a phone shown to the folder camera) and the lane is
    killed: with the open dropped (`boom_up` False) or once the boom is up for it."""
    token = CodeFactory(3).make("token", int(time.time())).text  # the rig's keyset
    cv2.imwrite(str(rig.conf.parent / "frames" / "phone.png"), frame_for(token, "clear", rng=1))
    if not boom_up:
        rig.device.set_fault("no_ack")
    proc = await rig.start()
    await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
    await rig.device.vehicle_enters(1)  # the lane can take a code: it reads the folder
    if boom_up:
        await eventually(lambda: rig.device.state == "open", within=15)
    else:
        await eventually(lambda: any(c.op == "open" for c in rig.device.received), within=15)
    proc.kill()  # SIGKILL: the vehicle has paid, and not passed
    await proc.wait()
    [paid] = charged(queue)
    assert owed_rows(queue) == 1
    return paid


def lane_settings(rig: LaneProcesses, lines: str) -> None:
    """Add `lines` to the config's [lane] section: the next start reads them."""
    rig.conf.write_text(rig.conf.read_text().replace("[lane]\n", f"[lane]\n{lines}"))


async def restarted(
    rig: LaneProcesses, lane_statuses: list[LaneStatus], fault: str | None = None
) -> None:
    seen = len(lane_statuses)
    rig.device.set_fault(fault)
    await rig.start()
    await eventually(lambda: len(lane_statuses) > seen and lane_statuses[-1].state != "offline")


async def stopped(rig: LaneProcesses) -> None:
    rig.procs[-1].send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(rig.procs[-1].wait(), 20) == 0


def idle_and_quiet(lane_statuses: list[LaneStatus]) -> bool:
    return lane_statuses[-1].state == "idle" and lane_statuses[-1].faults == []


async def test_killed_after_the_payment_the_driver_shows_the_code_again_and_passes(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """(a) The boom never opened: the restarted lane opens for the same code (which the
    replay check would refuse) without a new charge or record, and the vehicle passes."""
    data = tmp_path / "lane"
    queue = data / "queue.sqlite3"
    async with lane_processes(tmp_path, mosquitto, lane_id, data, HELD_OPEN) as rig:
        paid = await paid_then_killed(rig, lane_statuses, queue, boom_up=False)
        assert rig.device.state == "closed" and rig.device.executions == []
        await restarted(rig, lane_statuses)
        await rig.device.vehicle_enters(1)  # the driver shows the phone again
        await eventually(lambda: rig.device.state == "open", within=15)
        [opened] = rig.device.executions
        assert opened.startswith(f"{paid.draft.vehicle_id}/") and opened.endswith("/open")
        await rig.device.vehicle_passes()
        await eventually(lambda: rig.device.state == "closed", within=10)
        await eventually(lambda: idle_and_quiet(lane_statuses), within=10)
        assert charged(queue) == [paid]  # exactly one paid record: no new charge
        assert [r.draft.auth.result for r in records(queue)] == ["approved"]  # nor a refusal
        assert kinds(queue, "violation") == [] and kinds(queue, "paid_not_passed") == []
        await eventually(lambda: owed_rows(queue) == 0)  # through: owed nothing any more
        await stopped(rig)


async def test_killed_after_the_payment_nobody_comes_back_a_refund_record_follows(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """(b) The restarted lane owes the vehicle its passage for what is left of pass_dwell_s
    (here 3 s, at least probe_s after the start), then writes paid_not_passed for it."""
    data = tmp_path / "lane"
    queue = data / "queue.sqlite3"
    async with lane_processes(tmp_path, mosquitto, lane_id, data, HELD_OPEN) as rig:
        paid = await paid_then_killed(rig, lane_statuses, queue, boom_up=False)
        lane_settings(rig, "pass_dwell_s = 3\nprobe_s = 1\n")
        await restarted(rig, lane_statuses)
        await eventually(lambda: kinds(queue, "paid_not_passed") != [], within=20)
        [refund] = kinds(queue, "paid_not_passed")
        assert f"record:{paid.record_id}" in refund.draft.flags and "carried" in refund.draft.flags
        assert refund.draft.amount_minor == 0
        assert owed_rows(queue) == 0  # ended in the refund's own commit
        assert charged(queue) == [paid] and kinds(queue, "violation") == []
        await eventually(lambda: "paid_not_passed" in lane_statuses[-1].faults, within=10)
        await stopped(rig)


async def test_killed_with_the_boom_up_for_the_payer_its_passage_is_no_violation(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """(c) The open went out and the boom rose before the crash: the paying vehicle that
    drives under it after the restart is that payment's passage, not an unpaid one."""
    data = tmp_path / "lane"
    queue = data / "queue.sqlite3"
    async with lane_processes(tmp_path, mosquitto, lane_id, data) as rig:
        paid = await paid_then_killed(rig, lane_statuses, queue, boom_up=True)
        await restarted(rig, lane_statuses)
        await eventually(lambda: lane_statuses[-1].state == "open", within=15)
        assert rig.device.state == "open"  # not closed in front of the driver who paid
        await rig.device.vehicle_passes()
        await eventually(lambda: rig.device.state == "closed", within=10)
        await eventually(lambda: idle_and_quiet(lane_statuses), within=10)
        assert kinds(queue, "violation") == [] and kinds(queue, "paid_not_passed") == []
        assert charged(queue) == [paid]
        assert not any("unpaid_passage" in s.faults for s in lane_statuses)
        await eventually(lambda: owed_rows(queue) == 0)
        await stopped(rig)


async def test_killed_with_the_boom_up_and_the_device_dropping_commands_the_payer_passes(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """(d) As (c), with the device dropping commands at the restart and `barrier_no_ack` kept
    on disk (as the lane leaves it when it raises it): the lane starts closed to payments, the
    boom found up is still the payer's (its retained state comes before the first probe, so
    the test close has not gone out), the test close waits until the vehicle is through, and
    the device's first ack of it clears the fault."""
    data = tmp_path / "lane"
    queue = data / "queue.sqlite3"
    async with (
        lane_processes(tmp_path, mosquitto, lane_id, data) as rig,
        # Every query the lane sends its device (one at connect, then one at each probe).
        collected(mosquitto, f"q-{lane_id}", topics.device_query(lane_id), bytes) as queries,
    ):
        paid = await paid_then_killed(rig, lane_statuses, queue, boom_up=True)
        LatchFiles(data, lane_id).keep(Alarm.BARRIER_NO_ACK, time.time(), "close x/close")
        # The walk waits on three probes (past one, the close after the vehicle, its ack): a
        # probe a second rather than every 5 s.
        lane_settings(rig, "probe_s = 1\n")
        await restarted(rig, lane_statuses, fault="no_ack")
        asked = len(queries)
        await eventually(lambda: len(queries) >= asked + 2, within=20)  # past a probe
        assert "barrier_no_ack" in lane_statuses[-1].faults
        assert rig.device.state == "open"
        assert not [c for c in rig.device.received if c.op == "close"]  # not in front of it
        await rig.device.vehicle_passes()
        await eventually(lambda: any(c.op == "close" for c in rig.device.received), within=15)
        rig.device.set_fault(None)  # the device acks again: the next probe's close clears it
        await eventually(lambda: rig.device.state == "closed", within=15)
        await eventually(lambda: idle_and_quiet(lane_statuses), within=10)
        assert not (data / "barrier_no_ack.json").exists()
        assert kinds(queue, "violation") == [] and kinds(queue, "paid_not_passed") == []
        assert charged(queue) == [paid]
        assert not any("unpaid_passage" in s.faults for s in lane_statuses)
        await eventually(lambda: owed_rows(queue) == 0)
        await stopped(rig)
