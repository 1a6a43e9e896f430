"""The broker's ACL refuses what the lane publishes on either of its links (an MQTT 5 PUBACK
reason of 0x80 or more): the barrier link's commands, the uplink's peer messages. Safe (the
barrier does not open), seen (`publish_refused` names each link and topic), and healed by
itself once the ACL is fixed and reloaded; against a real mosquitto, as in
tests/test_publish_refusals.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import eventually
from test_lane_daemon import named, running_lane, show
from test_lane_heal import QUICK, quiet

from lane.auth.plaza import used_tokens_topic
from lane.transport.refusals import PUBLISH_REFUSED
from lane.wire import topics
from sim.broker import Mosquitto, acl_config, free_port

# The lane connects as this user; the device emulator and the tests' clients anonymously.
LANE_USER = {"username": "lane", "password": "lane"}


def acl(denied: list[str]) -> str:
    """Anonymous clients may do anything; the lane's user anything but publish `denied`
    (mosquitto reads its denials first)."""
    deny = "".join(f"topic deny {t}\n" for t in denied)
    return f"topic readwrite #\n\nuser {LANE_USER['username']}\n{deny}topic readwrite #\n"


def deny(broker: Mosquitto, denied: list[str]) -> None:
    """Rewrite the broker's ACL file and have mosquitto read it again."""
    (broker.workdir / "acl").write_text(acl(denied))
    broker.reload()  # mosquitto reads its ACL file again


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    work = tmp_path / "broker"
    work.mkdir()
    (work / "acl").write_text(acl([]))
    broker = Mosquitto(free_port(), work, acl_config(work / "acl"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_refused_commands_and_peer_messages_open_nothing_alarm_and_heal(
    tmp_path: Path, acl_broker: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, acl_broker, lane_id, QUICK, broker=LANE_USER) as lane:
        runner, device = lane.daemon.runner, lane.device
        command, used = topics.barrier_cmd(lane_id), used_tokens_topic(lane.config.lane.plaza)
        deny(acl_broker, [command, used])

        await lane.device.vehicle_enters(1)
        await eventually(lambda: named(lane, "vehicle_arrived"))
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: "barrier_no_ack" in runner.alarms, within=10)
        # Safe: the open the broker refused never reached the device.
        assert device.executions == [] and device.state == "closed"
        await eventually(lambda: used in runner.alarms.get(PUBLISH_REFUSED, ""), within=10)
        assert runner.alarms[PUBLISH_REFUSED] == (
            f"the broker refuses controller-{lane_id} publishing {command} (Not authorized);"
            f" uplink-{lane_id} publishing {used} (Not authorized): kept and retried;"
            " check the broker's ACL"
        )

        deny(acl_broker, [])
        # Healed by itself: the kept open goes through, the shared token too, the alarms clear.
        await eventually(lambda: named(lane, "barrier_opened"), within=15)
        await eventually(lambda: PUBLISH_REFUSED not in runner.alarms, within=15)
        await device.vehicle_passes()
        await eventually(lambda: device.state == "closed" and quiet(lane), within=15)
        assert [c for c in device.executions if c.endswith("/open")] == [
            named(lane, "barrier_opened")[0]["vehicle_id"] + "/open"
        ]


async def test_a_refused_device_query_is_asked_again_once_the_acl_is_fixed(
    tmp_path: Path, acl_broker: Mosquitto, lane_id: str
) -> None:
    """The start-up query of the device's truth, refused: no reconnect asks again (the link
    stays up), so it is asked again at the refusal back-off, and once the ACL is fixed the
    answer comes and `publish_refused` clears, no vehicle needed."""
    query = topics.device_query(lane_id)
    deny(acl_broker, [query])
    async with running_lane(tmp_path, acl_broker, lane_id, QUICK, broker=LANE_USER) as lane:
        runner = lane.daemon.runner
        await eventually(lambda: query in runner.alarms.get(PUBLISH_REFUSED, ""), within=10)
        deny(acl_broker, [])
        await eventually(lambda: PUBLISH_REFUSED not in runner.alarms, within=15)
