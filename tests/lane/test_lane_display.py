"""What the lane display receives (its MQTT topic, QoS 0, not retained) once a fault that
closed the lane to payments clears: the text of the lane's phase, not the `Lane closed` the
fault put there. Against the real things: mosquitto, the device emulator, the daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mqtt_kit import collected
from polling import eventually
from test_lane_daemon import Lane, named, running_lane

from barrier.messages import DisplayMessage
from lane.wire import topics
from sim.broker import Mosquitto

QUICK = {"probe_s": 0.5}  # the fault phase asks the device every probe_s
CLOSED = ["Lane closed", "Please use another lane"]
FARE_ASK = "Show your QR code"


def lines(payload: bytes) -> list[str]:
    return DisplayMessage.decode(payload).lines


def last_ask(shown: list[list[str]]) -> str | None:
    """The last line of the last message the display received (what it asks of the driver)."""
    return shown[-1][-1] if shown and shown[-1] else None


@pytest.fixture
async def display(mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[list[list[str]]]:
    """The lines of each display message, in the order the broker delivered them."""
    async with collected(mosquitto, f"display-{lane_id}", topics.display(lane_id), lines) as got:
        yield got


def alarm(lane: Lane, code: str) -> bool:
    return code in lane.daemon.runner.alarms


@pytest.mark.parametrize("vehicle", [True, False], ids=["vehicle_present", "nobody"])
async def test_once_barrier_unreadable_clears_the_display_shows_the_lane_open(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: list[list[str]], vehicle: bool
) -> None:
    """A payment fault shows `Lane closed`; once it clears, the vehicle at the pay point is
    shown its fare again, an empty pay point `Lane open`."""
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        lane.device.set_fault("garbled")
        await eventually(lambda: alarm(lane, "barrier_unreadable"))
        if vehicle:
            await lane.device.vehicle_enters(1)
            await eventually(lambda: named(lane, "vehicle_arrived"))
            await eventually(lambda: len(named(lane, "display")) >= 2)  # the fault's, the arrival's
        await eventually(lambda: display[-1:] == [CLOSED])
        lane.device.set_fault(None)
        await eventually(lambda: not alarm(lane, "barrier_unreadable"))
        if vehicle:
            await eventually(lambda: last_ask(display) == FARE_ASK)
            assert display[-1][0] == "Class 1"
        else:
            await eventually(lambda: display[-1:] == [["Lane open"]])


async def test_after_the_lane_s_broker_link_comes_back_the_display_is_sent_again(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: list[list[str]]
) -> None:
    """Display frames are QoS 0 and not retained: one the lane could not send while its link
    was down is lost, and a display that restarted meanwhile shows its idle text. Once the
    link is back (`broker_down` cleared), the lane sends what its phase shows."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        await lane.device.vehicle_enters(1)
        await eventually(lambda: last_ask(display) == FARE_ASK)
        mark = len(display)  # the display restarts while the lane is away: it shows nothing
        await lane.daemon.link.mqtt.drop()
        await eventually(lambda: any(a["code"] == "broker_down" for a in named(lane, "alarm")))
        await eventually(lambda: lane.daemon.runner.state.faults == frozenset(), within=10)
        await eventually(lambda: last_ask(display[mark:]) == FARE_ASK)
