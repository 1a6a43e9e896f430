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
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger("lane.mqtt")


class LinkDown(ConnectionError):  # noqa: N818 - the name other parts import
    """The broker is not reachable right now; the message was not sent."""


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
OnDisconnect = Callable[[], None]

# MQTT 5 DISCONNECT reason 0x04: "disconnect with will message" (the broker publishes our will).
_DISCONNECT_WITH_WILL = 4


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
    tls: ssl.SSLContext | None = None
    session_expiry: int = 300
    keepalive: int = 10
    backoff_min: float = 0.05
    backoff_max: float = 5.0
    reconnects: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    # Called (synchronously) each time an established connection is lost, and once when the
    # first attempt to connect fails.
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
    _client: aiomqtt.Client | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if self.handler is not None and self.receive is not None:
            raise ValueError("give a link a handler or a receive, not both")

    async def run(self) -> None:
        """Connect and dispatch forever; reconnect with exponential backoff and jitter."""
        delay = self.backoff_min
        first = True
        said_down = False  # on_disconnect was told of this outage (or of the first failure)
        while True:
            try:
                async with self._make_client() as client:
                    self._client = client
                    self._closed.clear()
                    try:
                        for topic, qos in self.subscriptions:
                            rap = self.retain_as_published
                            options = SubscribeOptions(qos=qos, retainAsPublished=rap)
                            await client.subscribe(topic, options=options)
                        reraise_swallowed_cancel()
                        self.connected.set()
                        said_down = False
                        if not first:
                            self.reconnects += 1
                        first = False
                        delay = self.backoff_min
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
                        await self._leave_with_will(client)
                        raise
            except (aiomqtt.MqttError, LinkDown) as exc:
                # LinkDown: a publish in on_connect met a connection that was already gone.
                reraise_swallowed_cancel()
                log.warning(
                    "mqtt disconnected",
                    extra={"client": self.client_id, "error": str(exc), "retry_s": round(delay, 3)},
                )
            finally:
                self._client = None
                self._closed.set()
                if self.connected.is_set():
                    self.connected.clear()
                    said_down = True
                    if self.on_disconnect is not None:
                        self.on_disconnect()
            if not said_down:
                # Never connected yet (a process started while its broker is down): the link is
                # down all the same, and whoever raises an alarm for it must hear so now.
                said_down = True
                if self.on_disconnect is not None:
                    self.on_disconnect()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff_max)

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
        """Publish and wait for the broker's ack (QoS 1); raise LinkDown when not connected."""
        client = self._client
        if client is None:
            raise LinkDown(f"not connected to {self.host}:{self.port}")
        props = None
        if expiry_s is not None or response_topic is not None or correlation is not None:
            props = PublishProperties(expiry_s, response_topic, correlation)
        info = client._client.publish(
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
        # aiomqtt's own publish waits for this PUBACK through asyncio.wait_for, which on 3.11
        # is a task of its own and three loop turns from PUBACK to caller (and can swallow a
        # cancel racing the ack); asyncio.timeout is one turn. aiomqtt's on_publish sets the
        # event it finds under the message id.
        confirmation = asyncio.Event()
        client._pending_publishes[info.mid] = confirmation
        try:
            async with asyncio.timeout(timeout):
                await confirmation.wait()
        except TimeoutError as exc:
            raise LinkDown(f"publish to {topic} failed: no PUBACK in {timeout} s") from exc
        finally:
            client._pending_publishes.pop(info.mid, None)

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            await self.connected.wait()

    async def drop(self) -> None:
        """Leave the broker so that it publishes our will, as if we had crashed.

        Sends DISCONNECT with reason 0x04 (MQTT 5 "disconnect with will message"); a normal
        shutdown (cancelling `run`) disconnects cleanly and the broker discards the will.
        Fault injection and tests use this; `run` reconnects afterwards unless cancelled.
        """
        client = self._client
        if client is None:
            return
        await self._leave_with_will(client)
        async with asyncio.timeout(5.0):
            await self._closed.wait()

    async def _leave_with_will(self, client: aiomqtt.Client) -> None:
        """DISCONNECT with reason 0x04, and wait (5 s at most) until the connection is gone,
        so the client's own exit finds it closed and sends no clean DISCONNECT after it."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL)
        client._client.disconnect(reasoncode=reason)
        with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
            async with asyncio.timeout(5.0):
                await asyncio.shield(client._disconnected)

    def _make_client(self) -> aiomqtt.Client:
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
            tls_context=self.tls,
            max_queued_incoming_messages=10000,
            # Commands and acks are tiny: without NODELAY each one waits for a delayed TCP ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        if self.receive is not None:
            # paho's own callback in place of aiomqtt's queue, set before the connection: what
            # the persistent session held for us comes right after the CONNACK. The
            # `client.messages` loop in `run` then only waits for the connection to end.
            client._client.on_message = self._receive
        _write_at_once(client._client)
        return client

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
            self.receive(_incoming(message.topic, message.payload, message.retain, message))
        except Exception:
            # Raised into paho, it would end the connection; logged with its topic instead.
            topic = bytes(message._topic).decode(errors="replace")
            log.exception("mqtt handler failed", extra={"topic": topic})


class PublishProperties:
    """The MQTT 5 PUBLISH properties the lane sets, packed once, where paho wants a Properties.

    paho's Properties looks each name up through a list of every property of every packet
    type: 10-15 µs to build a command's three and 8 µs to pack them, against under 1 µs here,
    on the command's path in the controller and the ack's in the device. paho only calls
    `pack()` on it (also when it resends the message after a reconnect).
    """

    __slots__ = ("_packed",)

    def __init__(
        self, expiry_s: int | None, response_topic: str | None, correlation: bytes | None
    ) -> None:
        body = b""
        if expiry_s is not None:
            body += _MESSAGE_EXPIRY + struct.pack("!L", expiry_s)
        if response_topic is not None:
            body += _RESPONSE_TOPIC + _length_prefixed(response_topic.encode())
        if correlation is not None:
            body += _CORRELATION_DATA + _length_prefixed(correlation)
        self._packed = bytes(VariableByteIntegers.encode(len(body))) + body  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        return self._packed


# MQTT 5 property identifiers (section 2.2.2.2).
_MESSAGE_EXPIRY, _RESPONSE_TOPIC, _CORRELATION_DATA = b"\x02", b"\x08", b"\x09"


def _length_prefixed(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"an MQTT property of {len(data)} bytes (at most 65535)")
    return struct.pack("!H", len(data)) + data


def _write_at_once(paho: mqtt.Client) -> None:
    """Write each packet paho queues there and then, instead of a loop turn later.

    aiomqtt answers paho's "I have something to write" with `call_soon_threadsafe(add_writer)`:
    a wake-up write, a loop turn to register the writer, one for the socket to poll writable,
    and the writer removed again, for every command, ack, state and PUBACK. On the event loop's
    thread a write to a connected socket with room in its buffer needs none of that. Inside a
    paho callback (its `_in_callback_mutex` held) paho's write path would take that lock again
    for a QoS 0 publish, and a packet queued from another thread (the CONNECT, from aiomqtt's
    executor) belongs to the loop: both, and what a full socket buffer leaves, go the
    deferred way.
    """
    deferred = paho.on_socket_register_write
    loop_thread = threading.get_ident()

    def register_write(client: mqtt.Client, userdata: object, sock: mqtt.SocketLike) -> None:
        if threading.get_ident() == loop_thread and client._in_callback_mutex.acquire(False):
            client._in_callback_mutex.release()
            # Errors on the socket come back as paho's return codes, and paho then reports
            # the lost connection to aiomqtt; loop_write unregisters once all is written.
            try:
                client.loop_write()
            except Exception:
                # Not the publisher's to handle: the deferred write meets it again, and
                # aiomqtt's writer turns it into the end of the connection.
                log.warning("mqtt write failed, left to the loop", exc_info=True)
            else:
                if not client.want_write() or client.socket() is None:
                    return
        if deferred is not None:
            deferred(client, userdata, sock)

    paho.on_socket_register_write = register_write


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


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context that verifies the broker against `ca_file` (or the system CAs)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def subscriptions(topics: Sequence[str], qos: int = 1) -> list[tuple[str, int]]:
    return [(t, qos) for t in topics]
