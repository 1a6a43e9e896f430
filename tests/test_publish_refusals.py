"""A topic the broker refuses (lane.transport.refusals): backed off, logged once per change,
alarmed with the topic and the broker's reason, nothing lost, cleared once the broker takes a
publish again; against a real mosquitto whose ACL file is fixed and reloaded with SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
from mqtt_kit import handed_at_once
from polling import eventually

from barrier.link import BarrierLink
from barrier.messages import DisplayMessage
from barrier.printer import PrinterEmulator
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet
from lane.auth.peers import Peers
from lane.auth.replay import ReplayStore
from lane.core.actions import IssuePass
from lane.core.backoff import Backoff
from lane.core.events import TicketIssued
from lane.ticket_desk import TicketDesk
from lane.transport.broker_link import BrokerLink
from lane.transport.mqtt import Incoming, MqttLink, PublishRefused
from lane.transport.outbox import Outbox
from lane.transport.refusals import PUBLISH_REFUSED, Refusals, alarm_on_refusals, refused_text
from lane.wire import topics
from sim.broker import Mosquitto, acl_config, free_port

TOPIC = "denied/taps"
LANE = "P01/l01"


def logged(caplog: pytest.LogCaptureFixture, message: str) -> int:
    return sum(r.getMessage() == message for r in caplog.records)


def test_refusals_back_off_and_say_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lane.transport.refusals")
    heard: list[str | None] = []
    refusals = Refusals("uplink-p07/l03", Backoff(0.2, 1.0))
    alarm_on_refusals([refusals], heard.append)
    assert refusals.wait_s("a/b") == 0.0 and refused_text([refusals]) is None
    waits = []
    for _ in range(5):
        refusals.refused("a/b", "Not authorized")
        waits.append(refusals.wait_s("a/b"))
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0]
    refusals.refused("c/d", "Quota exceeded")
    assert heard == [
        "the broker refuses uplink-p07/l03 publishing a/b (Not authorized): kept and retried;"
        " check the broker's ACL",
        "the broker refuses uplink-p07/l03 publishing a/b (Not authorized), c/d (Quota"
        " exceeded): kept and retried; check the broker's ACL",
    ]
    assert logged(caplog, "publish refused by the broker, kept for retry") == 2
    refusals.accepted("a/b")
    refusals.accepted("a/b")  # accepted while not refused: nothing to say
    assert refusals.wait_s("a/b") == 0.0
    refusals.accepted("c/d")
    assert heard[2:] == [
        "the broker refuses uplink-p07/l03 publishing c/d (Quota exceeded): kept and retried;"
        " check the broker's ACL",
        None,
    ]
    assert logged(caplog, "publish accepted again") == 2


def test_one_alarm_names_each_link_the_broker_refuses_and_clears_when_none_is() -> None:
    barrier, uplink = Refusals("controller-p07/l03"), Refusals("uplink-p07/l03")
    alarm: list[str | None] = []
    alarm_on_refusals([barrier, uplink], alarm.append)
    barrier.refused("lane/p07/l03/barrier/cmd", "Not authorized")
    uplink.refused("plaza/P07/used", "Not authorized")
    barrier.accepted("lane/p07/l03/barrier/cmd")
    uplink.accepted("plaza/P07/used")
    assert alarm == [
        "the broker refuses controller-p07/l03 publishing lane/p07/l03/barrier/cmd (Not"
        " authorized): kept and retried; check the broker's ACL",
        "the broker refuses controller-p07/l03 publishing lane/p07/l03/barrier/cmd (Not"
        " authorized); uplink-p07/l03 publishing plaza/P07/used (Not authorized): kept and"
        " retried; check the broker's ACL",
        "the broker refuses uplink-p07/l03 publishing plaza/P07/used (Not authorized): kept and"
        " retried; check the broker's ACL",
        None,
    ]


async def test_an_outbox_refused_by_the_acl_backs_off_alarms_and_delivers_once_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three answers to a refusal: the message is kept and delivered once the ACL is fixed,
    the alarm names the topic and the broker's reason, and it clears by itself."""
    caplog.set_level(logging.INFO)
    acl = tmp_path / "acl"
    acl.write_text(f"topic read {TOPIC}\n")
    broker = Mosquitto(free_port(), tmp_path, acl_config(acl))
    broker.start()
    got: asyncio.Queue[Incoming] = asyncio.Queue()

    async def handler(msg: Incoming) -> None:
        await got.put(msg)

    rx = MqttLink(broker.host, broker.port, "rx", [(TOPIC, 1)], handler)
    tx = MqttLink(broker.host, broker.port, "uplink-p07/l03")
    tx.refusals.backoff = Backoff(0.2, 1.0)  # a low cap, so that the fixed ACL is tried again soon
    alarms: list[str | None] = []
    alarm_on_refusals([tx.refusals], alarms.append)
    outbox: Outbox[bytes] = Outbox(
        tx, TOPIC, bytes, lambda m: 60.0, lambda m: {"record_id": m.decode()}, lane="p07/l03"
    )
    tasks = [asyncio.create_task(t) for t in (rx.run(), tx.run(), outbox.run(retry_s=0.01))]
    try:
        await rx.wait_connected(5)
        await tx.wait_connected(5)
        outbox.put(b"tap-1")
        # Refused again and again: each time it waits longer, and says so only once.
        await eventually(lambda: tx.refusals.wait_s(TOPIC) >= 0.8, what="three refusals")
        assert alarms == [
            f"the broker refuses uplink-p07/l03 publishing {TOPIC} (Not authorized): kept and"
            " retried; check the broker's ACL"
        ]
        assert logged(caplog, "publish refused by the broker, kept for retry") == 1
        assert logged(caplog, "publish failed, will retry") == 0
        assert outbox.published == 0 and got.empty()

        acl.write_text(f"topic readwrite {TOPIC}\n")
        broker.reload()  # mosquitto reads its ACL file again

        msg = await asyncio.wait_for(got.get(), 10)
        assert msg.payload == b"tap-1"
        await eventually(lambda: alarms[-1:] == [None], what="alarm cleared")
        assert outbox.published == 1
        assert logged(caplog, "publish accepted again") == 1
        assert tx.reconnects == 0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        broker.stop()


async def test_a_ticket_the_broker_refuses_waits_for_the_acl_not_for_the_printer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The printer says `ready`, but the broker refuses the print topic: the desk backs off
    (it does not send the job again every `retry_s`, logging each time), the lane alarms, and
    the ticket prints once the ACL is fixed and reloaded; the alarm then clears."""
    caplog.set_level(logging.INFO)
    printer_topics = [topics.printer_status(LANE), topics.printer_ack(LANE)]
    granted = "".join(f"topic readwrite {t}\n" for t in printer_topics)
    acl = tmp_path / "acl"
    acl.write_text(f"{granted}topic read {topics.printer_print(LANE)}\n")
    broker = Mosquitto(free_port(), tmp_path, acl_config(acl))
    broker.start()
    alarms: dict[str, str | None] = {}
    link = MqttLink(broker.host, broker.port, f"uplink-{LANE}")
    link.refusals.backoff = Backoff(0.2, 1.0)
    alarm_on_refusals([link.refusals], partial(alarms.__setitem__, PUBLISH_REFUSED))
    with ReplayStore(tmp_path / "replay.sqlite3") as replay:
        peers = Peers(LANE, None, lambda: KeySet(0, {}), replay, accept_unsigned=True,
                      wall=time.time)  # fmt: skip
        desk = TicketDesk(LANE, PlazaPassKey.generate("P01"), link, peers=peers,
                          alarm=alarms.__setitem__, waiting=lambda _: True, wall=time.time,
                          retry_s=0.1)  # fmt: skip
        link.subscriptions, link.handler = desk.subscriptions(), _handle(desk)
        printer = PrinterEmulator(LANE, broker.host, broker.port)
        answers: list[TicketIssued] = []

        async def issue() -> None:
            async for answer in desk.issue(IssuePass("iss-1", "veh-1", 1, None)):
                answers.append(answer)

        tasks = [asyncio.create_task(link.run()), asyncio.create_task(printer.run())]
        try:
            await link.wait_connected(5)
            await eventually(lambda: desk.state is not None, what="printer status")
            tasks.append(asyncio.create_task(issue()))
            topic = topics.printer_print(LANE)
            await eventually(lambda: link.refusals.wait_s(topic) >= 0.8, what="three refusals")
            assert [a.printed for a in answers] == [False]  # the core is told once
            assert logged(caplog, "ticket not printed") == 1
            assert logged(caplog, "publish refused by the broker, kept for retry") == 1
            assert alarms[PUBLISH_REFUSED] == (
                f"the broker refuses uplink-{LANE} publishing {topic} (Not authorized): kept and"
                " retried; check the broker's ACL"
            )
            assert printer.printed == []

            acl.write_text(f"{granted}topic readwrite {topic}\n")
            broker.reload()  # mosquitto reads its ACL file again

            await eventually(lambda: [a.printed for a in answers] == [False, True], what="print")
            assert [t.job_id for t in printer.printed] == ["iss-1"]
            assert alarms[PUBLISH_REFUSED] is None
            assert logged(caplog, "publish accepted again") == 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            broker.stop()


async def test_a_display_topic_the_acl_refuses_leaves_the_lane_s_link_up_and_alarmed(
    tmp_path: Path,
) -> None:
    """The lane's first word on connecting is its display's (QoS 1, so the broker answers it):
    refused by the ACL, the link comes up all the same (a refusal raised out of its connect
    would have it reconnect for ever, the lane never told it is connected), and the alarm names
    the display topic. Once the ACL is fixed the alarm clears by itself, the lane saying
    nothing new (an idle lane): its newest text, refused, is said again until it is taken, and
    a display that starts is handed it."""
    acl = tmp_path / "acl"
    acl.write_text("topic read lane/#\n")
    broker = Mosquitto(free_port(), tmp_path, acl_config(acl))
    broker.start()
    ups: list[bool] = []
    alarms: list[str | None] = []
    link = BarrierLink(LANE, BrokerLink(broker.host, broker.port), on_ack=print, on_state=print,
                       on_sensor=print, on_attendant=print,
                       on_link=lambda up, cause: ups.append(up))  # fmt: skip
    alarm_on_refusals([link.mqtt.refusals], alarms.append)
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(link.show_again())]
    try:
        await eventually(lambda: ups == [True], what="the link up, its first text refused")
        display = topics.display(LANE)
        assert alarms == [
            f"the broker refuses controller-{LANE} publishing {display} (Not authorized): kept"
            " and retried; check the broker's ACL"
        ]
        with pytest.raises(PublishRefused):
            await link.show(DisplayMessage(["Lane open"], 60.0))
        acl.write_text("topic readwrite lane/#\ntopic readwrite test/#\n")
        broker.reload()  # mosquitto reads its ACL file again, in its own time
        await eventually(lambda: alarms[-1:] == [None], what="cleared, nothing new said", within=20)
        [kept] = await handed_at_once(broker, "display-p01", display)
        assert DisplayMessage.decode(kept.payload).lines == ["Lane open"]
        assert ups == [True] and link.mqtt.reconnects == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        broker.stop()


def _handle(desk: TicketDesk) -> Callable[[Incoming], Awaitable[None]]:
    async def handler(msg: Incoming) -> None:
        desk.handle(msg)

    return handler
