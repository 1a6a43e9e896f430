"""`lane watch`: print every message of one lane, or of a whole plaza, decoded, one line each.

    lane watch --broker 127.0.0.1:1883 --lane p07/l03 [--count N] [--username U]
    lane watch --broker 127.0.0.1:1883 --lane 'p07/+'      # every lane of plaza p07

Subscribes to `lane/{id}/#` and `uplink/{id}/#` (`{id}` a lane id, or `plaza/+`). Each line
is the receive time (UTC), the topic, `R` for a retained message, the MQTT 5 properties that
matter (expiry, correlation, response topic) and the payload as compact JSON. A payload that is
not a valid message of its topic prints as `ERROR <reason> hex=<first bytes>` instead;
watching never stops on garbage.
Ctrl-C (SIGINT) or SIGTERM ends it with exit code 0, even when started with SIGINT ignored.
A broker that is down is waited for; an MQTT client that stops instead of retrying ends it
with exit code 1 and what stopped it.
The password, if any, comes from the environment variable LANE_MQTT_PASSWORD.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from barrier.messages import (
    AttendantCommand,
    BarrierAck,
    BarrierCommand,
    BarrierStatus,
    DisplayMessage,
    LaneStatus,
    SensorReading,
)
from barrier.peripherals import PlateReading, PrintAck, PrinterStatus, PrintJob
from lane.signals import install_signal_handlers
from lane.transport.mqtt import (
    Credentials,
    Incoming,
    LinkErrors,
    LinkStopped,
    MqttLink,
)
from lane.transport.tls import CaFile
from lane.wire.codec import PayloadError, unpack
from lane.wire.topics import PLATE, check_lane_id, is_level

HEX_PREFIX = 32
PASSWORD_ENV = "LANE_MQTT_PASSWORD"

# Topic suffix (after "lane/{id}/") → the decoder that validates it.
DECODERS: dict[str, Callable[[bytes], object]] = {
    "barrier/cmd": BarrierCommand.decode,
    "barrier/ack": BarrierAck.decode,
    "barrier/state": BarrierStatus.decode,
    "display": DisplayMessage.decode,
    "status": LaneStatus.decode,
    "attendant": AttendantCommand.decode,
    f"io/{PLATE}": PlateReading.decode,
    "printer/print": PrintJob.decode,
    "printer/ack": PrintAck.decode,
    "printer/status": PrinterStatus.decode,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lane watch", description="Print a lane's MQTT traffic, decoded, one line each."
    )
    parser.add_argument("--broker", default="127.0.0.1:1883", help="host:port of the broker")
    parser.add_argument(
        "--lane", required=True, help="lane id, e.g. p07/l03, or a whole plaza: p07/+"
    )
    parser.add_argument("--count", type=int, default=None, help="exit after N messages")
    parser.add_argument("--username", default=None, help=f"MQTT user (password: ${PASSWORD_ENV})")
    parser.add_argument(
        "--tls-ca", default=None, help="connect with TLS, verifying the broker with this CA file"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help already
        return exc.code if isinstance(exc.code, int) else 2
    try:
        host, port = parse_broker(args.broker)
        check_watched(args.lane)
    except ValueError as exc:
        print(f"lane watch: {exc}", file=sys.stderr)
        return 2
    if args.count is not None and args.count < 1:
        print("lane watch: --count must be >= 1", file=sys.stderr)
        return 2
    credentials = None
    if args.username:
        credentials = Credentials(args.username, os.environ.get(PASSWORD_ENV, ""))
    try:
        tls = CaFile.load(Path(args.tls_ca)) if args.tls_ca else None
        asyncio.run(
            watch(
                host,
                port,
                args.lane,
                args.count,
                credentials=credentials,
                tls=tls,
                handle_signals=True,
            )
        )
    except KeyboardInterrupt:  # Ctrl-C before `watch` has its own handler in place
        return 0
    except LinkStopped as exc:
        print(f"lane watch: {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


def check_watched(text: str) -> str:
    """`text` if it is a lane id or a whole plaza (`p07/+`), by `[lane] id`'s own check of
    the plaza; ValueError otherwise: `p07/#` or `+/l03` would reach paho as a filter beyond
    one plaza's lanes (or one it refuses, mid-run)."""
    plaza, sep, level = text.rpartition("/")
    if sep and level == "+" and is_level(plaza):
        return text
    try:
        return check_lane_id(text)
    except ValueError as exc:
        raise ValueError(f"{exc}; a whole plaza is plaza/+") from None


def parse_broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--broker must be host:port, got {text!r}")
    return host.strip("[]"), int(port)


async def watch(
    host: str,
    port: int,
    lane: str,
    count: int | None,
    *,
    credentials: Credentials | None = None,
    tls: CaFile | None = None,
    handle_signals: bool = False,
) -> None:
    """Print until `count` messages, or (with `handle_signals`) until SIGINT or SIGTERM; raise
    LinkStopped when the MQTT client stops instead of retrying (it would never print again)."""
    done = asyncio.Event()
    if handle_signals:
        install_signal_handlers(done)
    printed = 0

    async def show(msg: Incoming) -> None:
        nonlocal printed
        if done.is_set():
            return
        print(format_line(msg, datetime.now(UTC)), flush=True)
        printed += 1
        if count is not None and printed >= count:
            done.set()

    link = MqttLink(
        host,
        port,
        f"watch-{secrets.token_hex(4)}",
        [(f"lane/{lane}/#", 1), (f"uplink/{lane}/#", 1)],
        handler=show,
        credentials=credentials,
        tls=tls,
        session_expiry=0,
    )

    def why(error: str) -> None:
        print(f"lane watch: no connection to {host}:{port}: {error} (retrying)", file=sys.stderr)

    # Say each new reason the broker cannot be reached once, instead of the link's bare
    # "mqtt disconnected" warnings on every retry.
    mqtt_log = logging.getLogger("lane.mqtt")
    errors = LinkErrors(why)
    mqtt_log.addHandler(errors)
    propagate, mqtt_log.propagate = mqtt_log.propagate, False
    task = asyncio.create_task(link.run())
    # A broker that is down is waited for; a link that stopped will not connect again.
    task.add_done_callback(lambda _: done.set())
    try:
        try:
            await link.wait_connected(3.0)
        except TimeoutError:
            print(f"lane watch: waiting for the broker at {host}:{port}", file=sys.stderr)
        await done.wait()
        if link.stopped is not None:
            raise link.stopped
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        mqtt_log.removeHandler(errors)
        mqtt_log.propagate = propagate


def format_line(msg: Incoming, now: datetime) -> str:
    """One printable line for one message (pure: the receive time comes in)."""
    head = [now.strftime("%H:%M:%S.%f"), msg.topic]
    if msg.retain:
        head.append("R")
    if msg.expiry_s is not None:
        head.append(f"expiry={msg.expiry_s}s")
    if msg.correlation is not None:
        head.append(f"corr={_text_or_hex(msg.correlation)}")
    if msg.response_topic is not None:
        head.append(f"reply={msg.response_topic}")
    if not msg.payload:
        return " ".join([*head, "(empty: retained message cleared)"])
    try:
        body = decode(msg.topic, msg.payload)
    except PayloadError as exc:
        return " ".join([*head, f"ERROR {exc} hex={msg.payload[:HEX_PREFIX].hex()}"])
    return " ".join([*head, json.dumps(_plain(body), separators=(",", ":"), ensure_ascii=False)])


def decode(topic: str, payload: bytes) -> dict[str, Any]:
    """The payload as a map, checked by its topic's decoder when the topic has one (a lane's
    topic is `lane/{plaza}/{lane}/{suffix}`: the watched filter says which lanes arrive)."""
    levels = topic.split("/", 3)
    if len(levels) == 4 and levels[0] == "lane":
        suffix = levels[3]
        decoder = DECODERS.get(suffix)
        if decoder is None and suffix.startswith("io/"):
            decoder = SensorReading.decode
        if decoder is not None:
            decoder(payload)
    return unpack(payload)


def _plain(value: Any) -> Any:
    """JSON-friendly: bytes as hex, map keys as text, anything else exotic as its repr."""
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value[:HEX_PREFIX]).hex() + ("…" if len(value) > HEX_PREFIX else "")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _key(key: Any) -> str:
    return key if isinstance(key, str) else str(_plain(key))


def _text_or_hex(data: bytes) -> str:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return "0x" + data[:HEX_PREFIX].hex()
    return text if text.isprintable() else "0x" + data[:HEX_PREFIX].hex()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
