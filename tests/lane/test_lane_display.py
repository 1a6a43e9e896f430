"""What the lane display receives (its MQTT topic, QoS 0, not retained) once a fault that
closed the lane to payments clears: the text of the lane's phase, not the `Lane closed` the
fault put there. Against the real things: mosquitto, the device emulator, the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from polling import eventually
from test_lane_daemon import Lane, named, running_lane

from barrier.messages import DisplayMessage
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics
from sim.broker import Mosquitto

QUICK = {"probe_s": 0.5}  # the fault phase asks the device every probe_s
CLOSED = ["Lane closed", "Please use another lane"]
FARE_ASK = "Show your QR code"


class Display(list[list[str]]):
    """The lines each display message carried, in the order the broker delivered them."""

    async def got(self, message: Incoming) -> None:
        self.append(DisplayMessage.decode(message.payload).lines)

    def last(self) -> list[str] | None:
        return self[-1] if self else None


@pytest.fixture
async def display(mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[Display]:
    shown = Display()
    link = MqttLink(
        mosquitto.host,
        mosquitto.port,
        f"display-{lane_id}",
        subscriptions=[(topics.display(lane_id), 0)],
        handler=shown.got,
    )
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(5)
        yield shown
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def alarm(lane: Lane, code: str) -> bool:
    return code in lane.daemon.runner.alarms


@pytest.mark.parametrize("vehicle", [True, False], ids=["vehicle_present", "nobody"])
async def test_once_barrier_unreadable_clears_the_display_shows_the_lane_open(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: Display, vehicle: bool
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
        await eventually(lambda: display.last() == CLOSED)
        lane.device.set_fault(None)
        await eventually(lambda: not alarm(lane, "barrier_unreadable"))
        if vehicle:
            await eventually(lambda: (display.last() or [""])[-1] == FARE_ASK)
            assert display[-1][0] == "Class 1"
        else:
            await eventually(lambda: display.last() == ["Lane open"])


async def test_after_the_lane_s_broker_link_comes_back_the_display_is_sent_again(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: Display
) -> None:
    """Display frames are QoS 0 and not retained: one the lane could not send while its link
    was down is lost, and a display that restarted meanwhile shows its idle text. Once the
    link is back (`broker_down` cleared), the lane sends what its phase shows."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        await lane.device.vehicle_enters(1)
        await eventually(lambda: (display.last() or [""])[-1] == FARE_ASK)
        await lane.daemon.link.mqtt.drop()
        await eventually(lambda: any(a["code"] == "broker_down" for a in named(lane, "alarm")))
        display.clear()  # the display restarted while the lane was away: it shows nothing
        await eventually(lambda: lane.daemon.runner.state.faults == frozenset(), within=10)
        await eventually(lambda: (display.last() or [""])[-1] == FARE_ASK)
