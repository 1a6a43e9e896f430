"""The transport's only reach past the public API of aiomqtt and paho (docs/architecture.md,
"The MQTT client's internals"): what the command path needs and neither library offers.

- aiomqtt keeps the paho client it drives in `Client._client`; there is no public way to it,
  and the lane needs it to publish without aiomqtt's `wait_for` (a task and three loop turns
  to a PUBACK), to take each message in paho's read callback (`MqttLink(receive=)`), to write
  each packet at once and to leave with reason 0x04 (aiomqtt only disconnects cleanly).
- paho's `_in_callback_mutex`, held while one of its callbacks runs: paho's own QoS 0 write
  path takes it again, so a write at once from inside a callback would deadlock.
- `PublishProperties` stands in for paho's `Properties`: paho only calls `pack()` on it.

`paho_client` checks both attributes on every connection and raises `InternalsChangedError`,
naming the release, when either is gone: an upgrade past the pins fails loudly at connect
instead of quietly losing the link. `tests/test_paho_internals.py` holds each to its meaning
against a real mosquitto.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from importlib.metadata import PackageNotFoundError, requires, version

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import VariableByteIntegers

log = logging.getLogger("lane.mqtt")

_LOCK = type(threading.Lock())


class InternalsChangedError(RuntimeError):
    """aiomqtt or paho no longer has an internal the transport relies on."""


def paho_client(client: aiomqtt.Client) -> mqtt.Client:
    """The paho client under `client`, with the callback lock `write_at_once` looks at."""
    paho = getattr(client, "_client", None)
    if not isinstance(paho, mqtt.Client):
        raise _changed("aiomqtt", "Client._client is not a paho client")
    if not isinstance(getattr(paho, "_in_callback_mutex", None), _LOCK):
        raise _changed("paho-mqtt", "Client._in_callback_mutex is not a lock")
    if paho.callback_api_version != CallbackAPIVersion.VERSION2:
        raise _changed("aiomqtt", f"paho callbacks of {paho.callback_api_version}, not VERSION2")
    return paho


def _changed(library: str, what: str) -> InternalsChangedError:
    return InternalsChangedError(
        f"{library} {version(library)}: {what}; the transport was tested with {_pin(library)}"
        " (pyproject.toml; docs/architecture.md)"
    )


def _pin(library: str) -> str:
    """The requirement lane is installed with for `library` (`aiomqtt~=2.5.1`): what to go
    back to, named in the refusal the operator reads (the journal, `lane doctor`)."""
    pinned = f"the {library} series pyproject.toml pins"
    try:
        wanted = requires("lane") or []
    except PackageNotFoundError:  # run from a source tree that was never installed
        return pinned
    name = re.compile(rf"{re.escape(library)}\s*[~=<>!]")
    return next((req for req in wanted if name.match(req)), pinned)


def in_callback(paho: mqtt.Client) -> bool:
    """Whether paho holds its callback lock: around each of its callbacks, and where paho
    itself wants nothing written in the call (its resends after a CONNACK)."""
    lock: threading.Lock = paho._in_callback_mutex
    return lock.locked()


def write_at_once(paho: mqtt.Client) -> None:
    """Write each packet paho queues there and then, instead of a loop turn later.

    aiomqtt answers paho's "I have something to write" with `call_soon_threadsafe(add_writer)`:
    a wake-up write, a loop turn to register the writer, one for the socket to poll writable,
    and the writer removed again, for every command, ack, state and PUBACK. On the event loop's
    thread a write to a connected socket with room in its buffer needs none of that. Inside a
    paho callback paho's write path would take its callback lock again for a QoS 0 publish,
    and a packet queued from another thread (the CONNECT, from aiomqtt's executor) belongs to
    the loop: both, and what a full socket buffer leaves, go the deferred way.
    """
    deferred = paho.on_socket_register_write
    loop_thread = threading.get_ident()

    def register_write(client: mqtt.Client, userdata: object, sock: mqtt.SocketLike) -> None:
        if threading.get_ident() == loop_thread and not in_callback(client):
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
