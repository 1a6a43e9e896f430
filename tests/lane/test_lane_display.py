"""What the lane display receives (its MQTT topic: QoS 1, retained, expiring with the text's
ttl) once a fault that closed the lane to payments clears: the text of the lane's phase, not
the `Lane closed` the fault put there; what a display that (re)starts is handed at once; and
what it is handed once the lane's process is gone. Against the real things: mosquitto, the
device emulator, the daemon (in this process, and as a `lane run` process killed with SIGKILL)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from mqtt_kit import collected, handed_at_once, running, sender
from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show
from test_lane_heal import lane_processes, pays
from test_lane_liveness import live_pictures

from barrier.messages import DisplayMessage, LaneStatus
from lane.console.model import Plaza
from lane.transport.mqtt import Incoming, MqttLink
from lane.wire import topics
from scanner.sources import PushSource
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


async def display_starts(mosquitto: Mosquitto, lane_id: str) -> list[Incoming]:
    """What a display that (re)starts now is handed at once: the lane's text and status."""
    client = f"display-{uuid.uuid4().hex[:8]}"
    return await handed_at_once(mosquitto, client, topics.display(lane_id), topics.status(lane_id))


def texts(handed: list[Incoming], lane_id: str) -> list[list[str]]:
    return [lines(m.payload) for m in handed if m.topic == topics.display(lane_id)]


def handed_status(handed: list[Incoming], lane_id: str) -> list[LaneStatus]:
    return [LaneStatus.decode(m.payload) for m in handed if m.topic == topics.status(lane_id)]


async def lane_speaks(lane: Lane, speech: str, display: list[list[str]]) -> list[str]:
    """Bring the lane to say `speech`'s text on its display; returns the text's lines."""
    if speech == "lane_open":  # the fault cleared at an empty pay point
        lane.device.set_fault("garbled")
        await eventually(lambda: display[-1:] == [CLOSED])
        lane.device.set_fault(None)
        await eventually(lambda: display[-1:] == [["Lane open"]])
    elif speech == "fare":
        await lane.device.vehicle_enters(1)
        await eventually(lambda: last_ask(display) == FARE_ASK)
    else:
        lane.device.set_fault("garbled")
        await eventually(lambda: display[-1:] == [CLOSED])
    return display[-1]


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
    """A display text the lane could not send while its link was down is lost, and a display
    that restarted meanwhile shows its idle text. Once the link is back (`broker_down`
    cleared), the lane sends what its phase shows."""
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        await lane.device.vehicle_enters(1)
        await eventually(lambda: last_ask(display) == FARE_ASK)
        mark = len(display)  # the display restarts while the lane is away: it shows nothing
        await lane.daemon.link.mqtt.drop()
        await eventually(lambda: any(a["code"] == "broker_down" for a in named(lane, "alarm")))
        await eventually(lambda: lane.daemon.runner.state.faults == frozenset(), within=10)
        await eventually(lambda: last_ask(display[mark:]) == FARE_ASK)


@pytest.mark.parametrize("speech", ["lane_open", "fare", "lane_closed"])
async def test_a_display_that_starts_after_the_lane_spoke_is_handed_its_text_at_once(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: list[list[str]], speech: str
) -> None:
    """A display restarted (a power blip) while the lane stays connected: the broker hands it
    the lane's current text the moment it subscribes, with what is left of the text's ttl as
    its expiry; nothing else of the lane's is left over for it. `Lane open` lives 3 s, which
    mosquitto counts in whole seconds (it may drop it 2 s after it took it): a machine so
    loaded that the display starts later is given another try, not a failure."""
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        for _ in range(3):
            said = await lane_speaks(lane, speech, display)
            handed = await display_starts(mosquitto, lane_id)
            if texts(handed, lane_id) or speech != "lane_open":
                break
        sent = DisplayMessage(said, 3.0 if speech == "lane_open" else 10.0)
        assert texts(handed, lane_id) == [said]
        text = next(m for m in handed if m.topic == topics.display(lane_id))
        assert text.retain
        assert text.expiry_s is not None and 1 <= text.expiry_s <= sent.ttl_s
        status = handed_status(handed, lane_id)
        assert len(status) == 1 and status[0].state != LaneStatus.OFFLINE


async def test_a_display_back_on_its_session_is_handed_the_lane_closed_said_while_it_was_away(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: list[list[str]]
) -> None:
    """A display that keeps its MQTT session (clean_start false, a session expiry) and, back,
    does not subscribe again (its session holds the subscription, and the broker hands
    retained copies only to a subscription): the `Lane closed` the lane said once while it was
    away is kept for it (QoS 1) and handed to it when it connects again. (Sent at QoS 0 it was
    dropped: the display showed its idle text at a closed lane.)"""
    client = f"display-{uuid.uuid4().hex[:8]}"
    handed: list[list[str]] = []

    async def on_text(msg: Incoming) -> None:
        handed.append(lines(msg.payload))

    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        subscribed = [(topics.display(lane_id), 1)]
        async with running(MqttLink(mosquitto.host, mosquitto.port, client, subscribed)):
            pass  # subscribed in its session, then gone (a clean disconnect keeps the session)
        said = await lane_speaks(lane, "lane_closed", display)
        back = MqttLink(mosquitto.host, mosquitto.port, client, [], on_text)
        async with running(back):
            await eventually(lambda: handed[-1:] == [said], what="the text said while away")


async def told_accepting(mosquitto: Mosquitto, lane_id: str, wanted: bool) -> bool:
    """A display that starts now is handed the lane's status saying `accepting` is `wanted`."""
    statuses = handed_status(await display_starts(mosquitto, lane_id), lane_id)
    return bool(statuses) and statuses[-1].accepting is wanted


async def test_a_display_that_starts_during_a_fault_is_told_the_lane_takes_no_payments(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: list[list[str]]
) -> None:
    """A fault's `Lane closed` lives its 10 s ttl; the lane's retained status says as long as
    the fault lasts that the lane takes no payments, so a display that starts after those 10 s
    shows `Lane closed` all the same, and its idle text again once the fault is gone."""
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        await lane_speaks(lane, "lane_closed", display)
        await eventually(lambda: told_accepting(mosquitto, lane_id, False))
        lane.device.set_fault(None)
        await eventually(lambda: not alarm(lane, "barrier_unreadable"))
        await eventually(lambda: told_accepting(mosquitto, lane_id, True))


async def test_a_text_whose_ttl_has_passed_is_not_handed_to_a_display_that_starts(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, display: list[list[str]]
) -> None:
    """`Lane open` (ttl 3 s) is not retained for ever: the broker drops it once its expiry
    (within its ttl: the test above) is over, and a display that starts then is handed no text
    (it shows its idle text). Polled: the broker counts its expiry in whole seconds."""
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK) as lane:
        await lane_speaks(lane, "lane_open", display)

        async def no_text() -> bool:
            return texts(await display_starts(mosquitto, lane_id), lane_id) == []

        await eventually(no_text)


async def test_a_lane_that_starts_replaces_the_text_its_previous_process_left(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """A lane killed right after it showed a fare left it retained (and its will, `offline`);
    restarted within the fare's ttl, it replaces that text before it says its status: a
    display that starts once the lane says it is back is never handed the fare of a vehicle
    the restarted lane knows nothing of (it has no text to show, and shows rule 4's)."""
    fare = DisplayMessage(["Class 1", "2.50 EUR", FARE_ASK], 60.0)
    async with sender(mosquitto, f"gone-{lane_id}") as gone:
        await gone.publish(
            topics.display(lane_id), fare.encode(), qos=1, retain=True, expiry_s=fare.expiry_s
        )
        await gone.publish(
            topics.status(lane_id), LaneStatus.offline(1).encode(), qos=1, retain=True
        )
    assert texts(await display_starts(mosquitto, lane_id), lane_id) == [fare.lines]
    async with running_lane(tmp_path, mosquitto, lane_id, QUICK):
        handed: list[Incoming] = []

        async def lane_back() -> bool:
            handed[:] = await display_starts(mosquitto, lane_id)
            return [s.state for s in handed_status(handed, lane_id)] == ["idle"]

        await eventually(lane_back)
        assert texts(handed, lane_id) in ([], [[]])


async def test_a_display_that_starts_after_the_lane_s_process_died_can_tell_it_is_offline(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str, lane_statuses: list[LaneStatus]
) -> None:
    """`lane run` killed (SIGKILL) right after it showed a vehicle its fare: the broker hands
    a display that starts then the fare (its ttl not spent) and the lane's will, status
    `offline`; by the display's contract it shows `Lane closed`, as the console's view of the
    display does, not a fare nobody will take."""
    async with lane_processes(tmp_path, mosquitto, lane_id, tmp_path / "lane") as rig:
        async with collected(mosquitto, f"d-{lane_id}", topics.display(lane_id), lines) as shown:
            proc = await rig.start()
            await eventually(lambda: any(s.state == "idle" for s in lane_statuses), within=20)
            await rig.device.vehicle_enters(1)
            await eventually(lambda: last_ask(shown) == FARE_ASK, within=10)
        proc.kill()  # SIGKILL: no clean shutdown, no last word but the will
        await proc.wait()
        await eventually(lambda: lane_statuses[-1].state == "offline")
        handed = await display_starts(mosquitto, lane_id)
    # The fare, unless a loaded machine took longer than its ttl to get here.
    assert texts(handed, lane_id) in ([shown[-1]], [])
    assert [s.state for s in handed_status(handed, lane_id)] == ["offline"]
    plaza, now = Plaza(started_at=time.time()), time.time()
    for message in handed:
        plaza.apply(message.topic, message.payload, now, 0.0, expiry_s=message.expiry_s)
    assert plaza.lanes[lane_id].shown(0.0) == CLOSED


async def test_a_lane_whose_camera_goes_black_is_closed_to_payments_until_it_sees_again(
    tmp_path: Path,
    mosquitto: Mosquitto,
    lane_id: str,
    display: list[list[str]],
    lane_statuses: list[LaneStatus],
) -> None:
    """A covered lens (black frames past the source's blackout time): the lane reads no code,
    so it does not invite the next driver to show one: `Lane closed`, its status not
    accepting, nobody charged. The vehicle that paid before is let through. Once the camera
    sees again the lane reopens by itself, shows the waiting driver the fare, and serves."""
    camera = PushSource(blackout_after_s=1.0)
    black = np.zeros((720, 1280, 3), np.uint8)

    def covered() -> None:
        camera.put(black, time.monotonic())

    async with running_lane(tmp_path, mosquitto, lane_id, QUICK, source=camera) as lane:
        runner, statuses = lane.daemon.runner, lane_statuses
        live = live_pictures(camera)
        await eventually(lambda: bool(statuses) and statuses[-1].accepting is True, between=live)
        # Paid before: under the open boom when the lens is covered.
        await pays(lane, lambda: named(lane, "barrier_opened"))
        await eventually(lambda: "camera_blackout" in runner.alarms, between=covered)
        assert runner.alarms["camera_blackout"].startswith(
            "camera reads no codes: camera blackout: black frames for"
        )
        await lane.device.vehicle_passes()
        await eventually(
            lambda: runner.state.passage is None and lane.device.state == "closed",
            between=covered,
            what="the paid vehicle through",
        )
        assert not named(lane, "paid_not_passed")
        # Closed: said on the status and the display; the next driver is not asked to pay.
        await eventually(lambda: statuses[-1].accepting is False, between=covered)
        await lane.device.vehicle_enters(1)
        await eventually(lambda: len(named(lane, "vehicle_arrived")) == 2, between=covered)
        await eventually(lambda: display[-1:] == [CLOSED], between=covered)
        assert statuses[-1].accepting is False and statuses[-1].faults == ["camera_blackout"]
        # Sees again: the alarm clears, the lane takes payments, the driver is shown the fare.
        await eventually(lambda: "camera_blackout" not in runner.alarms, between=live)
        await eventually(lambda: last_ask(display) == FARE_ASK, between=live)
        await eventually(lambda: statuses[-1].accepting is True, between=live)
        assert len(named(lane, "barrier_opened")) == 1  # nobody served while it was dark
        token = lane.codes.make("token", int(time.time())).text
        await show(lane, token, lambda: len(named(lane, "barrier_opened")) == 2)
        await lane.device.vehicle_passes()
