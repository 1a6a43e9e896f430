"""One reconnecting MQTT 5 session; the only module that talks to aiomqtt.

Reconnection is this module's loop (connect, subscribe, dispatch; on failure back off and
connect again). Publishing while disconnected raises `LinkDown` instead of dropping silently,
so a caller always knows whether the broker took its message.

Sessions are persistent (clean_start off, a session expiry interval) with a stable client id:
QoS 1 messages addressed to us while we reconnect (barrier acks, back-office acks) are held by
the broker and delivered when we are back, so no ack is lost across a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from lane.core.backoff import Backoff
from lane.transport.paho_internals import PublishProperties, paho_client, write_at_once
from lane.transport.refusals import Refusals
from lane.transport.tls import CaFile, tls_failure

log = logging.getLogger("lane.mqtt")


class LinkDown(ConnectionError):  # noqa: N818 - the name other parts import
    """The broker is not reachable right now; the message was not sent."""


class LinkStopped(RuntimeError):  # noqa: N818 - said as "the link stopped"
    """`MqttLink.run` ended on what reconnecting cannot mend: an aiomqtt or paho release the
    transport refuses (`InternalsChangedError`), a topic filter paho refuses, a bug. The link
    will not connect by itself; the text names what stopped it, which is its `__cause__`."""


class PublishRefused(LinkDown):
    """The broker answered the publish with a refusal (an MQTT 5 PUBACK reason of 0x80 or
    more: not authorised by its ACL, over a quota ...): the message was not taken. A LinkDown,
    so that every sender treats it as not sent; its text names the broker's reason."""


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool = False
    correlation: bytes | None = None
    response_topic: str | None = None
    # MQTT 5 message expiry as forwarded by the broker: the seconds the message had left when
    # it was delivered to us (None when the publisher set no expiry).
    expiry_s: int | None = None


@dataclass(frozen=True)
class WillSpec:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


Handler = Callable[[Incoming], Awaitable[None]]
# A receiver that handles a message there and then (see MqttLink.receive).
Receive = Callable[[Incoming], None]
OnConnect = Callable[[], Awaitable[None]]
# Called with the cause of the outage the operator can act on at this end (a TLS failure, a CA
# file that cannot be read), or None.
OnDisconnect = Callable[[str | None], None]

# MQTT 5 DISCONNECT reason 0x04: "disconnect with will message" (the broker publishes our will).
_DISCONNECT_WITH_WILL = 4


@dataclass
class _Connection:
    """One connection: its aiomqtt client, the paho client under it, and the publishes waiting
    for their PUBACK's reason code by message id (ids start again with each connection's
    client)."""

    client: aiomqtt.Client
    paho: mqtt.Client
    acks: dict[int, asyncio.Future[ReasonCode]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A VERSION2 callback (paho_client checked), whose type paho gives as either version's.
        theirs: Callable[..., None] | None = self.paho.on_publish

        def on_publish(
            client: mqtt.Client,
            userdata: object,
            mid: int,
            reason_code: ReasonCode,
            properties: Properties,
        ) -> None:
            waiter = self.acks.pop(mid, None)
            if waiter is not None and not waiter.done():  # done: given up (timed out, cancelled)
                waiter.set_result(reason_code)
            if theirs is not None:
                theirs(client, userdata, mid, reason_code, properties)

        # paho's on_publish, aiomqtt's chained behind it: aiomqtt's own publish waits through
        # asyncio.wait_for, which on 3.11 is a task of its own and three loop turns from
        # PUBACK to caller (and can swallow a cancel racing the ack); this is one turn.
        self.paho.on_publish = on_publish

    def lost(self, where: str) -> None:
        """The connection ended: no PUBACK can come for what waits (the next connection's
        client neither knows those messages nor sends them again), so each publisher hears
        it now, not once its timeout is over."""
        for waiter in self.acks.values():
            if not waiter.done():
                waiter.set_exception(LinkDown(f"connection to {where} lost before the PUBACK"))
        self.acks.clear()


@dataclass
class MqttLink:
    host: str
    port: int
    client_id: str
    subscriptions: Sequence[tuple[str, int]] = ()
    handler: Handler | None = None
    on_connect: OnConnect | None = None
    will: WillSpec | None = None
    credentials: Credentials | None = None
    tls: CaFile | None = None
    session_expiry: int = 300
    keepalive: int = 10
    backoff_min: float = 0.05
    backoff_max: float = 5.0
    reconnects: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    # Called (synchronously) each time an established connection is lost, once when the
    # first attempt to connect fails, and again while down whenever the cause changes (a
    # broker whose certificate the CA file does not verify: "TLS: certificate verify failed").
    on_disconnect: OnDisconnect | None = None
    # MQTT 5 Retain-As-Published on every subscription: the broker keeps the retain flag of
    # a message it forwards live, so `Incoming.retain` says what the publisher asked for, not
    # only whether the copy came out of the broker's store.
    retain_as_published: bool = False
    # Instead of `handler`: called for each message inside the MQTT client's read callback,
    # before it sends the PUBACK. It must not block; it may publish. The async `handler`
    # goes through aiomqtt's message iterator, a task and three event loop turns per message,
    # which a lane pays on every barrier ack and state (docs/barrier.md, "Benchmark").
    receive: Receive | None = None
    # Why `run` ended, when it ended on an error rather than a cancel (None while it runs).
    stopped: LinkStopped | None = field(default=None, init=False)
    # The topics the broker refuses, with a publisher's wait before it tries one again.
    refusals: Refusals = field(init=False)
    _conn: _Connection | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.handler is not None and self.receive is not None:
            raise ValueError("give a link a handler or a receive, not both")
        self.refusals = Refusals(self.client_id)

    async def run(self) -> None:
        """Connect and dispatch forever; reconnect with exponential backoff and jitter.

        What reconnecting cannot mend ends it, raised as it came; `stopped` then says so, and
        `wait_connected` raises that at once instead of waiting for a connection that will
        not come."""
        self.stopped = None
        self._ended.clear()
        try:
            await self._serve()
        except Exception as exc:
            self.stopped = LinkStopped(f"the MQTT client stopped: {exc.__class__.__name__}: {exc}")
            self.stopped.__cause__ = exc
            self._ended.set()
            raise

    async def _serve(self) -> None:
        backoff = Backoff(self.backoff_min, self.backoff_max)
        failures = 0  # in a row, since the last connection
        first = True
        said_down = False  # on_disconnect was told of this outage (or of the first failure)
        told: str | None = None  # the cause it was told
        while True:
            cause = None
            try:
                conn = self._make_connection()
                async with conn.client as client:
                    self._conn = conn
                    self._closed.clear()
                    try:
                        for topic, qos in self.subscriptions:
                            rap = self.retain_as_published
                            options = SubscribeOptions(qos=qos, retainAsPublished=rap)
                            await client.subscribe(topic, options=options)
                        reraise_swallowed_cancel()
                        self.connected.set()
                        said_down, told = False, None
                        if not first:
                            self.reconnects += 1
                        first = False
                        failures = 0
                        extra = {"client": self.client_id, "port": self.port}
                        log.info("mqtt connected", extra=extra)
                        if self.on_connect is not None:
                            await self.on_connect()
                        async for message in client.messages:
                            await self._dispatch(message)
                    except (aiomqtt.MqttError, LinkDown):
                        raise
                    except Exception:
                        # A bug ends the link, and the process with it: leave as a crash
                        # would, so the broker publishes our will (a clean exit discards it).
                        self._leave_with_will(conn)
                        await _until_gone(client)
                        raise
            except (aiomqtt.MqttError, LinkDown) as exc:
                # LinkDown: a publish in on_connect met a connection that was already gone.
                reraise_swallowed_cancel()
                failures += 1
                retry_s = round(backoff.delay(failures), 3)
                extra = {"client": self.client_id, "error": str(exc), "retry_s": retry_s}
                log.warning("mqtt disconnected", extra=extra)
                cause = self._cause(str(exc))
            finally:
                if self._conn is not None:
                    self._conn.lost(f"{self.host}:{self.port}")
                self._conn = None
                self._closed.set()
                if self.connected.is_set():
                    self.connected.clear()
                    said_down, told = True, cause
                    if self.on_disconnect is not None:
                        self.on_disconnect(cause)
            if not said_down or cause != told:
                # Never connected yet (a process started while its broker is down): the link is
                # down all the same, and whoever raises an alarm for it must hear so now; and
                # again when what keeps it down changes, so the alarm names what to fix.
                said_down, told = True, cause
                if self.on_disconnect is not None:
                    self.on_disconnect(cause)
            await asyncio.sleep(backoff.jittered(failures, random.random()))

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - bounds the wait for the broker ack
    ) -> None:
        """Publish and wait for the broker's ack (QoS 1); raise LinkDown when not connected,
        PublishRefused when the broker's ack refuses the message."""
        conn = self._conn
        if conn is None:
            raise LinkDown(f"not connected to {self.host}:{self.port}")
        props = None
        if expiry_s is not None or response_topic is not None or correlation is not None:
            props = PublishProperties(expiry_s, response_topic, correlation)
        info = conn.paho.publish(
            topic,
            payload,
            qos=qos,
            retain=retain,
            properties=props,  # type: ignore[arg-type]
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkDown(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if info.is_published():
            return  # QoS 0, already written
        answer: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        conn.acks[info.mid] = answer
        try:
            async with asyncio.timeout(timeout):
                reason = await answer
        except TimeoutError as exc:
            raise LinkDown(f"publish to {topic} failed: no PUBACK in {timeout} s") from exc
        finally:
            conn.acks.pop(info.mid, None)
        if reason.is_failure:
            # A PUBACK all the same: taken as delivered, the message would be lost unseen.
            self.refusals.refused(topic, str(reason))
            raise PublishRefused(f"publish to {topic} refused by the broker: {reason}")
        self.refusals.accepted(topic)

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once connected; raise `stopped` as soon as `run` ends on an error (waiting
        out the timeout would blame the broker), TimeoutError when neither comes in time."""
        if self.connected.is_set():
            return
        waits = {asyncio.ensure_future(e.wait()) for e in (self.connected, self._ended)}
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if not self.connected.is_set() and self.stopped is not None:
            raise self.stopped

    async def drop(self) -> None:
        """Leave the broker so that it publishes our will, as if we had crashed.

        Sends DISCONNECT with reason 0x04 (MQTT 5 "disconnect with will message"); a normal
        shutdown (cancelling `run`) disconnects cleanly and the broker discards the will.
        Fault injection and tests use this; `run` reconnects afterwards unless cancelled.
        """
        conn = self._conn
        if conn is None:
            return
        # `run` sees the connection end in its message loop, and leaves it without a DISCONNECT.
        self._leave_with_will(conn)
        async with asyncio.timeout(5.0):
            await self._closed.wait()

    @staticmethod
    def _leave_with_will(conn: _Connection) -> None:
        """DISCONNECT with reason 0x04 (aiomqtt's own exit only disconnects cleanly)."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL)
        conn.paho.disconnect(reasoncode=reason)

    def _make_connection(self) -> _Connection:
        will = None
        if self.will is not None:
            will = aiomqtt.Will(
                self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain
            )
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = self.session_expiry
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            clean_start=False,
            properties=connect_props,
            keepalive=self.keepalive,
            username=self.credentials.username if self.credentials else None,
            password=self.credentials.password if self.credentials else None,
            tls_context=self.tls.context() if self.tls is not None else None,
            max_queued_incoming_messages=10000,
            # Commands and acks are tiny: without NODELAY each one waits for a delayed TCP ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        paho = paho_client(client)
        if self.receive is not None:
            # paho's own callback in place of aiomqtt's queue, set before the connection: what
            # the persistent session held for us comes right after the CONNACK. The
            # `client.messages` loop in `run` then only waits for the connection to end.
            paho.on_message = self._receive
        write_at_once(paho)
        return _Connection(client, paho)

    def _cause(self, error: str) -> str | None:
        """What in a failed attempt's error the operator can fix at this end, if anything."""
        found = [tls_failure(error), self.tls.problem if self.tls is not None else None]
        return "; ".join(c for c in found if c) or None

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        if self.handler is None:
            return
        incoming = _incoming(message.topic.value, message.payload, message.retain, message)
        try:
            await self.handler(incoming)
        except Exception:
            # One bad message must not take the session down; it is logged with its topic.
            log.exception("mqtt handler failed", extra={"topic": incoming.topic})

    def _receive(self, client: object, userdata: object, message: MQTTMessage) -> None:
        """paho's on_message: hand the message to `receive` now, in arrival order."""
        assert self.receive is not None
        try:
            topic = message.topic
        except UnicodeDecodeError as exc:
            # MQTT forbids such a topic; paho decodes it when asked, its bytes are in the error.
            log.exception(
                "mqtt handler failed", extra={"topic": bytes(exc.object).decode(errors="replace")}
            )
            return
        try:
            self.receive(_incoming(topic, message.payload, message.retain, message))
        except Exception:
            # Raised into paho, it would end the connection; logged with its topic instead.
            log.exception("mqtt handler failed", extra={"topic": topic})


async def _until_gone(client: aiomqtt.Client) -> None:
    """Wait (5 s at most) until the connection is gone, so that the client's own exit finds it
    closed and sends no clean DISCONNECT after ours (the broker would discard the will)."""
    with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
        async with asyncio.timeout(5.0):
            async for _ in client.messages:
                pass  # what was still queued: the link ends with a bug, as a crash would


def _incoming(topic: str, payload: object, retain: bool, message: object) -> Incoming:
    """Our view of a message, from aiomqtt's or paho's (both carry paho's MQTT 5 properties)."""
    if not isinstance(payload, bytes | bytearray):
        payload = str(payload).encode() if payload is not None else b""
    props = getattr(message, "properties", None)
    return Incoming(
        topic=topic,
        payload=bytes(payload),
        retain=retain,
        correlation=getattr(props, "CorrelationData", None) if props else None,
        response_topic=getattr(props, "ResponseTopic", None) if props else None,
        expiry_s=getattr(props, "MessageExpiryInterval", None) if props else None,
    )


class LinkErrors(logging.Handler):
    """The error of a link's last failed attempt, which `MqttLink.run` only logs.

    Attach to the "lane.mqtt" logger. `on_new` is called with each error that differs from the
    one before, so a tool can say once why it cannot connect instead of repeating itself.
    """

    def __init__(self, on_new: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.error: str | None = None
        self._on_new = on_new

    def emit(self, record: logging.LogRecord) -> None:
        error = getattr(record, "error", None)
        if not error or str(error) == self.error:
            return
        self.error = str(error)
        if self._on_new is not None:
            self._on_new(self.error)


def reraise_swallowed_cancel() -> None:
    """Python 3.11's asyncio.wait_for (used inside aiomqtt) can turn a cancellation that
    races with a CONNACK, SUBACK or DISCONNECT into that packet's result; without this
    check `run` would go on after being cancelled, and whoever awaits it would hang.
    Call it after any library await that may lose a cancel (pymodbus turns one into an
    exception of its own)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def subscriptions(topics: Sequence[str], qos: int = 1) -> list[tuple[str, int]]:
    return [(t, qos) for t in topics]
