"""The retained `lane/{id}/health` topic of a real lane (daemon, mosquitto, device, SQLite):
the same readiness checks as /readyz, phase and counters, the `uplink_stalled` alarm raised,
seen and cleared by itself, and attendant actions written as records with who did them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mqtt_kit import handed_at_once
from ops_kit import OpsLane, running_lane
from polling import eventually

from barrier.health_message import HEALTH_LIFE_S, LaneHealth, health_topic
from barrier.messages import AttendantCommand
from lane.console.model import STUCK_AFTER_S, Plaza
from lane.lane_health import CLOCK_RUNS
from lane.runner import Clocks
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics
from sim.backoffice import BackOffice
from sim.broker import Mosquitto
from uplink.records import Record


@asynccontextmanager
async def watched_lane(
    tmp_path: Path,
    broker: Mosquitto,
    lane_id: str,
    extra: dict[str, dict[str, Any]] | None = None,
    clocks: Clocks | None = None,
) -> AsyncIterator[tuple[OpsLane, list[LaneHealth], MqttLink]]:
    """A real lane, every health message it publishes, and an operator's link to command it."""
    seen: list[LaneHealth] = []

    async def on_health(msg: Incoming) -> None:
        seen.append(LaneHealth.decode(msg.payload))

    link = MqttLink(
        broker.host,
        broker.port,
        f"op-{uuid.uuid4().hex[:6]}",
        [(health_topic(lane_id), 1)],
        on_health,
    )
    async with running_lane(tmp_path, broker, lane_id, extra=extra, clocks=clocks) as lane:
        task = asyncio.create_task(link.run())
        await link.wait_connected(5)
        try:
            yield lane, seen, link
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def attendant(
    link: MqttLink, lane_id: str, op: str, reason: str, who: str, *, cmd_id: str = ""
) -> None:
    cmd = AttendantCommand(op, cmd_id or uuid.uuid4().hex, reason, who, int(time.time() * 1e6))
    await link.publish(topics.attendant(lane_id), cmd.encode(), qos=1)


def action_records(lane: OpsLane) -> list[Record]:
    with sqlite3.connect(lane.config.lane.data_dir / "queue.sqlite3") as db:
        records = [Record.decode(row[0]) for row in db.execute("SELECT data FROM records")]
    return [r for r in records if "attendant_action" in r.draft.flags]


async def test_a_lanes_retained_health_lives_only_while_the_lane_renews_it(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """The broker kept a lane's last health for ever: a console started after that lane's
    health stopped was handed its last "all fine" and showed it green. Now the copy carries an
    expiry (the console ages it by what was used of it) and is gone once it runs out."""
    async with watched_lane(tmp_path, mosquitto, lane_id) as (_, seen, _):
        await eventually(lambda: bool(seen), what="the lane's health")
        [copy] = await handed_at_once(mosquitto, f"late-{lane_id}", health_topic(lane_id))
        assert copy.expiry_s is not None and 0 < copy.expiry_s <= HEALTH_LIFE_S
        plaza = Plaza(time.time())
        plaza.apply(copy.topic, copy.payload, time.time(), 0.0, expiry_s=copy.expiry_s)
        assert plaza.snapshot(time.time(), 0.0)["lanes"][0]["tile"] != "silent"

    async def no_copy() -> bool:
        return not await handed_at_once(mosquitto, f"late-{lane_id}", health_topic(lane_id))

    await eventually(no_copy, within=HEALTH_LIFE_S + 5, every=0.5, what="the copy expired")


async def test_health_carries_the_readyz_checks_phase_and_counters(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with watched_lane(tmp_path, mosquitto, lane_id) as (lane, seen, _):
        await eventually(lambda: bool(seen) and all(c.ok for c in seen[-1].checks))
        status, body = await lane.get("/readyz")
        assert status == 200
        readyz = {c["name"]: c["ok"] for c in json.loads(body)["checks"]}
        assert {c.name: c.ok for c in seen[-1].checks} == readyz
        assert seen[-1].phase == "idle" and seen[-1].phase_since_us <= seen[-1].ts_us
        assert await lane.serve("token") == "barrier_opened"
        passed = await eventually(
            lambda: _latest_if(seen, lambda h: h.counters["passed"] == 1), within=8.0
        )
        assert passed.counters["vehicles"] == 1 and passed.counters["violations"] == 0
        # Nobody takes the records in this test: the backlog shows it (read once a second).
        await eventually(lambda: _latest_if(seen, lambda h: h.uplink_backlog == 1))


async def _latest_if(seen: list[LaneHealth], check: object) -> LaneHealth | None:
    assert callable(check)
    return seen[-1] if seen and check(seen[-1]) else None


async def test_uplink_stalled_is_raised_seen_acknowledged_and_clears_by_itself(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    extra = {"uplink": {"stalled_after_s": 0.5}}
    async with watched_lane(tmp_path, mosquitto, lane_id, extra) as (lane, seen, link):
        runner = lane.daemon.runner
        # A record nobody takes: the back office is not there.
        assert await lane.serve("token") == "barrier_opened"
        await eventually(lambda: "uplink_stalled" in runner.alarms)
        assert "back office has taken no record" in runner.alarms["uplink_stalled"]
        raised = await eventually(
            lambda: _latest_if(seen, lambda h: any(a.code == "uplink_stalled" for a in h.alarms))
        )
        entry = next(a for a in raised.alarms if a.code == "uplink_stalled")
        assert entry.severity == "major" and entry.active and entry.acked_by is None

        # Acknowledged by an operator: seen by every console, and written as a record.
        await attendant(link, lane_id, "ack_alarm", "uplink_stalled", "alice", cmd_id="ack-1")
        await attendant(link, lane_id, "ack_alarm", "uplink_stalled", "alice", cmd_id="ack-1")
        acked = await eventually(
            lambda: _latest_if(
                seen, lambda h: any(a.acked_by == "alice" for a in h.alarms if a.active)
            )
        )
        assert next(a for a in acked.alarms if a.code == "uplink_stalled").acked_us is not None
        await eventually(lambda: len(action_records(lane)) == 1)
        flags = action_records(lane)[0].draft.flags
        assert {"op:ack_alarm", "attendant:alice", "alarm:uplink_stalled"} <= set(flags)

        # The back office comes: the records drain and the alarm clears by itself.
        office = BackOffice(
            tmp_path / "bo.sqlite3", mosquitto.host, mosquitto.port, f"bo-{lane_id}"
        )
        await office.start()
        try:
            await eventually(lambda: "uplink_stalled" not in runner.alarms, within=15.0)
            cleared = await eventually(
                lambda: _latest_if(
                    seen,
                    lambda h: any(
                        a.code == "uplink_stalled" and not a.active and a.acked_by == "alice"
                        for a in h.alarms
                    ),
                )
            )
            assert not any(a.active for a in cleared.alarms)
            await eventually(lambda: len(office.ingested_ids(lane_id)) == 2)  # passage + ack
            # Acknowledging an alarm that is not active is ignored: no record.
            await attendant(link, lane_id, "ack_alarm", "uplink_stalled", "alice")
            await asyncio.sleep(0.5)  # nothing to poll for: the absence of a record
            assert len(office.ingested_ids(lane_id)) == 2 and not action_records(lane)
        finally:
            await office.stop()


async def test_uplink_stalled_is_raised_after_the_wall_clock_steps_back(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """NTP steps the lane's clock back three hours after a record was written: by the wall
    clock alone it is not old at all, and a back office that takes nothing went unseen for
    those hours. The forwarder counts the oldest record's age on the monotonic clock too."""
    step = [0.0]
    clocks = Clocks(wall=lambda: time.time() - step[0])
    extra = {"uplink": {"stalled_after_s": 3.0}}
    async with running_lane(tmp_path, mosquitto, lane_id, extra=extra, clocks=clocks) as lane:
        runner = lane.daemon.runner
        assert await lane.serve("token") == "barrier_opened"  # a record nobody takes
        step[0] = 3 * 3600.0
        assert "uplink_stalled" not in runner.alarms  # the step came first
        await eventually(lambda: "uplink_stalled" in runner.alarms)
        office = BackOffice(
            tmp_path / "bo.sqlite3", mosquitto.host, mosquitto.port, f"bo-{lane_id}"
        )
        await office.start()
        try:
            # The batch is offered again on the forwarder's back-off (at most 30 s apart).
            await eventually(lambda: "uplink_stalled" not in runner.alarms, within=40.0)
        finally:
            await office.stop()


async def test_a_phase_s_duration_outlives_a_step_of_the_lane_s_wall_clock(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """NTP steps the lane's clock back an hour while a vehicle waits at the pay point: its
    phase began, by the new clock, an hour ahead, and a console showed it 0 s in the phase
    (never STUCK?) for that hour. The health message's `ts - phase_since` is the time in the
    phase on the monotonic clock, and the console measures from it."""
    step = [0.0]
    clocks = Clocks(wall=lambda: time.time() - step[0])
    async with running_lane(tmp_path, mosquitto, lane_id, clocks=clocks) as lane:
        publisher = lane.daemon.health
        arrived = time.monotonic()
        await lane.device.vehicle_enters(1)
        await eventually(lambda: publisher.message().phase == "vehicle_present")
        step[0] = 3600.0
        message = await eventually(
            lambda: _in_phase_for(publisher.message(), 1.0), what="a second in the phase"
        )
        lasted = (message.ts_us - message.phase_since_us) / 1e6
        assert 1.0 <= lasted <= time.monotonic() - arrived
        # A console (on the right time) shows the same, and STUCK? once it lasts long enough.
        plaza = Plaza(time.time())
        plaza.apply(f"lane/{lane_id}/health", message.encode(), time.time(), 50.0)
        (view,) = plaza.snapshot(time.time(), 50.0)["lanes"]
        assert (view["phase_for_s"], view["stuck"]) == (round(lasted, 1), False)
        (view,) = plaza.snapshot(time.time(), 50.0 + STUCK_AFTER_S)["lanes"]
        assert view["stuck"]


def _in_phase_for(message: LaneHealth, seconds: float) -> LaneHealth | None:
    lasted = (message.ts_us - message.phase_since_us) / 1e6
    return message if message.phase == "vehicle_present" and lasted >= seconds else None


async def test_a_lane_clock_that_refuses_every_token_is_seen_and_clears_once_right(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """NTP steps the lane's clock back an hour (or its RTC lost it): every token a phone shows
    now was issued ahead of the lane's clock and is refused as not yet valid, payer after
    payer, while the lane looked healthy. No token passes meanwhile (safe); the alarm says what
    is wrong (seen); the first token accepted once the clock is right clears it."""
    step = [0.0]
    clocks = Clocks(wall=lambda: time.time() - step[0])
    async with watched_lane(tmp_path, mosquitto, lane_id, clocks=clocks) as (lane, seen, _):
        alarms = lane.daemon.runner.alarms
        step[0] = 3600.0
        _, run = CLOCK_RUNS["not_yet_valid"]
        for _payer in range(run):
            assert "clock_suspect" not in alarms
            assert await lane.serve("token") == "declined"
        assert lane.named("declined")[-1]["reason"] == "not_yet_valid"
        text = await eventually(lambda: alarms.get("clock_suspect"), what="clock_suspect raised")
        assert text == (
            f"offline tokens refused as not yet valid for {run} token payers in a row:"
            " this lane's clock may be behind; check its time sync (lane doctor)"
        )
        raised = await eventually(
            lambda: _latest_if(seen, lambda h: any(a.code == "clock_suspect" for a in h.alarms))
        )
        assert next(a for a in raised.alarms if a.code == "clock_suspect").severity == "major"
        # A forged token is refused before its time is looked at: it says nothing of the clock,
        # and anyone may show one. The alarm stays.
        assert await lane.serve("forged") == "declined"
        assert lane.named("declined")[-1]["reason"] == "bad_signature"
        await eventually(
            lambda: "bad_signature" in lane.named("record")[-1]["record"]["flags"],
            what="its record",
        )
        at_us = clocks.wall() * 1e6  # two rounds: one judged wholly after the record
        await eventually(lambda: sum(h.ts_us >= at_us for h in seen) >= 2, what="judged again")
        assert alarms.get("clock_suspect") == text
        step[0] = 0.0  # the clock set right
        assert await lane.serve("token") == "barrier_opened"
        await eventually(lambda: "clock_suspect" not in alarms, what="clock_suspect cleared")


async def test_a_wrong_clock_stays_seen_through_a_quiet_spell_and_clears_once_set_right(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """The lane's clock is an hour behind and its token payers were refused; then nobody comes
    for long (a night). The clock is as wrong as ever: the alarm stays, or the next payers are
    turned away again unwarned. Setting the clock right clears it, with no payer to show it."""
    later, step = [0.0], [0.0]
    clocks = Clocks(
        monotonic=lambda: time.monotonic() + later[0],
        wall=lambda: time.time() + later[0] - step[0],
    )
    async with watched_lane(tmp_path, mosquitto, lane_id, clocks=clocks) as (lane, seen, _):
        alarms = lane.daemon.runner.alarms
        step[0] = 3600.0
        for _payer in range(CLOCK_RUNS["not_yet_valid"][1]):
            assert await lane.serve("token") == "declined"
        await eventually(lambda: "clock_suspect" in alarms, what="clock_suspect raised")
        later[0] = 3 * 3600.0  # three hours without a token payer

        def judged_since(at_us: float) -> bool:  # two rounds: one judged wholly after `at_us`
            return sum(h.ts_us >= at_us for h in seen) >= 2

        at_us = (clocks.wall() - 1) * 1e6
        await eventually(lambda: judged_since(at_us), what="the lane judged hours later")
        assert "clock_suspect" in alarms
        # The clock set right (the issuer's hours did not pass): what was refused on the old
        # clock says nothing of this one.
        step[0] = later[0]
        await eventually(lambda: "clock_suspect" not in alarms, what="clock_suspect cleared")
        assert await lane.serve("token") == "barrier_opened"


async def test_closing_and_reopening_the_lane_are_recorded_with_who(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with watched_lane(tmp_path, mosquitto, lane_id) as (lane, seen, link):
        await attendant(link, lane_id, "close_lane", "works", "bob")
        await eventually(lambda: _latest_if(seen, lambda h: h.phase == "closed"))
        await attendant(link, lane_id, "reopen_lane", "", "carol")
        await eventually(lambda: _latest_if(seen, lambda h: h.phase == "idle"))
        await eventually(lambda: len(action_records(lane)) == 2)
        ops = sorted(
            [f for f in r.draft.flags if f.startswith(("op:", "attendant:"))]
            for r in action_records(lane)
        )
        assert ops == [["op:close_lane", "attendant:bob"], ["op:reopen_lane", "attendant:carol"]]
        assert all(
            r.draft.kind == "manual" and r.draft.auth.result == "none" for r in action_records(lane)
        )
