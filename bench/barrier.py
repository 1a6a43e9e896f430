"""Barrier command round trip: controller send() → device → ack back, over loopback MQTT.

    .venv/bin/python bench/barrier.py [--count 1000] [--uvloop] [--move-ms 0] [--cpus B,D,R,C]
    (or: python -m bench.barrier)

Runs a private mosquitto and, each in a process of its own (a barrier is a box of its own),
the device emulator with zero movement time and the raw anchor's responder: a bare aiomqtt
client that answers an MQTT 5 QoS 1 request (response topic, correlation data) at once with a
QoS 1 reply. The parent alternates blocks of 50 barrier commands through a BarrierLink
(open/close, each a new cmd_id, one right after the other's ack) with blocks of 50 raw
request/replies, so both see the same load of the shared machine. It prints percentiles of
send() → the ack reaching on_ack, send() alone (until the broker's PUBACK), the raw
request → reply, and the ratio of command to raw at p50 and p99.

With zero movement time the device publishes the state a move ends in right behind its ack.
`--move-ms` gives the boom that long (a real one takes 800 ms) and makes each command wait,
untimed, for that state before the next one: every state is still published and received,
but not on top of the ack. Figures, not assertions: the machine is shared.

On two cores where each process lands decides much of the ratio (docs/barrier.md,
"Benchmark"): `--cpus 0,1,1,0` pins the broker, the device, the raw responder and this process
(the controller and the raw requester) to those CPUs, so runs compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import aiomqtt
import uvloop
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Run as a file, this script's directory comes first on sys.path and its own name would
# shadow the `barrier` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from barrier.device import DeviceEmulator, Timings
from barrier.link import BarrierLink
from barrier.messages import BarrierAck, BarrierCommand, BarrierStatus
from lane.transport.broker_link import BrokerLink
from sim.broker import running_mosquitto

LANE = "bench/l01"
STILL = Timings(opening_s=0.0, closing_s=0.0, slow_ack_s=0.0, step_s=0.0)
WARM_UP = 20
BLOCK = 50  # commands, then as many raw request/replies, and again
RAW_REQUEST, RAW_REPLY = f"lane/{LANE}/raw/req", f"lane/{LANE}/raw/ack"
Serve = Callable[..., Coroutine[Any, Any, None]]  # (host, port, ready, stop, *extra)


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _raw_client(host: str, port: int, name: str) -> aiomqtt.Client:
    """A bare MQTT 5 client with the transport settings MqttLink uses (NODELAY)."""
    return aiomqtt.Client(
        host,
        port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


def _request_properties(correlation: bytes, reply_to: str | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = correlation
    if reply_to is not None:
        props.MessageExpiryInterval = 3
        props.ResponseTopic = reply_to
    return props


class Waiters:
    """Futures by key, resolved by a subscription callback."""

    def __init__(self) -> None:
        self._futures: dict[Any, asyncio.Future[Any]] = {}

    def expect(self, key: object) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[key] = future
        return future

    def resolve(self, key: object, value: object) -> None:
        future = self._futures.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)


async def _serve_device(host: str, port: int, ready: Event, stop: Event, move_s: float) -> None:
    device = DeviceEmulator(LANE, host, port, replace(STILL, opening_s=move_s, closing_s=move_s))
    task = asyncio.create_task(device.run())
    await device.wait_connected(5)
    ready.set()
    await asyncio.to_thread(stop.wait)
    await device.stop()
    await task


async def _serve_raw(host: str, port: int, ready: Event, stop: Event) -> None:
    async def answer(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            props = message.properties
            assert props is not None
            reply = _request_properties(props.CorrelationData)
            await client.publish(props.ResponseTopic, message.payload, qos=1, properties=reply)

    async with _raw_client(host, port, "raw-responder") as responder:
        await responder.subscribe(RAW_REQUEST, qos=1)
        task = asyncio.create_task(answer(responder))
        ready.set()
        await asyncio.to_thread(stop.wait)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _serve(  # noqa: PLR0917 - a process target's arguments
    serve: Serve,
    host: str,
    port: int,
    ready: Event,
    stop: Event,
    fast: bool,
    cpu: int | None,
    *extra: object,
) -> None:
    pin(0, cpu)
    logging.basicConfig(level=logging.ERROR)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if fast else None) as runner:
        runner.run(serve(host, port, ready, stop, *extra))


@contextmanager
def other_process(
    serve: Serve, host: str, port: int, fast: bool, cpu: int | None, *extra: object
) -> Iterator[None]:
    """`serve` in a child process on its own event loop, ready when the block starts."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    args = (serve, host, port, ready, stop, fast, cpu, *extra)
    child = context.Process(target=_serve, args=args)
    child.start()
    try:
        if not ready.wait(15):
            raise RuntimeError(f"{serve.__name__} did not come up")
        yield
    finally:
        stop.set()
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()


async def bench(count: int, host: str, port: int, settle: bool) -> dict[str, list[float]]:
    """`settle`: after each ack, wait (untimed) for the state the command's move ends in."""
    acks, replies, states = Waiters(), Waiters(), Waiters()
    # The device's last state: a block's final one can come before the block ends.
    latest = ["unknown"]

    def on_state(status: BarrierStatus) -> None:
        latest[0] = status.state
        states.resolve(status.state, None)

    link = BarrierLink(
        LANE,
        BrokerLink(host, port),
        on_ack=lambda ack: acks.resolve(ack.cmd_id, ack),
        on_state=on_state,
        on_sensor=lambda r: None,
        on_attendant=lambda a: None,
        on_garbage=lambda t, e: print(f"garbage on {t}: {e}"),
    )

    async def collect(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert message.properties is not None
            replies.resolve(message.properties.CorrelationData, None)

    async def command(i: int) -> tuple[float, float]:
        op = "open" if i % 2 == 0 else "close"
        deadline = int((time.time() + 3) * 1_000_000)
        cmd = BarrierCommand(op, f"bench-{i}", deadline, LANE)
        acked = acks.expect(cmd.cmd_id)
        start = time.perf_counter()
        await link.send(cmd, expiry_s=3)
        sent = time.perf_counter()
        ack: BarrierAck = await asyncio.wait_for(acked, 5)
        if not ack.ok:
            raise RuntimeError(f"command refused: {ack}")
        return (time.perf_counter() - start) * 1000, (sent - start) * 1000

    async def settled(i: int) -> None:
        final = "open" if i % 2 == 0 else "closed"
        if latest[0] != final:
            await asyncio.wait_for(states.expect(final), 5)

    async def raw(i: int) -> float:
        correlation = f"raw-{i}".encode()
        replied = replies.expect(correlation)
        props = _request_properties(correlation, RAW_REPLY)
        start = time.perf_counter()
        await requester.publish(RAW_REQUEST, b"x" * 48, qos=1, properties=props)
        await asyncio.wait_for(replied, 5)
        return (time.perf_counter() - start) * 1000

    figures: dict[str, list[float]] = {"command": [], "send": [], "raw": []}
    async with _raw_client(host, port, "raw-requester") as requester:
        await requester.subscribe(RAW_REPLY, qos=1)
        tasks = [asyncio.create_task(link.run()), asyncio.create_task(collect(requester))]
        try:
            await link.wait_connected(5)
            for i in range(WARM_UP):
                await command(-i - 1)
                await raw(-i - 1)
            # Blocks of each, alternating, so both see the same load of the shared machine;
            # within a block one right after the other, as a lane's commands can follow.
            for block in range(0, count, BLOCK):
                for i in range(block, min(count, block + BLOCK)):
                    round_trip, send = await command(i)
                    figures["command"].append(round_trip)
                    figures["send"].append(send)
                    if settle:
                        await settled(i)
                # The last command's final state: the device is quiet before the raw block.
                await settled(i)
                for i in range(block, min(count, block + BLOCK)):
                    figures["raw"].append(await raw(i))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return figures


def report(name: str, values: list[float]) -> None:
    print(
        f"{name:<24} p50 {percentile(values, 50):6.3f} ms  p90 {percentile(values, 90):6.3f} ms"
        f"  p99 {percentile(values, 99):6.3f} ms  max {max(values):6.3f} ms"
        f"  mean {statistics.fmean(values):6.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--move-ms",
        type=float,
        default=0.0,
        help="the boom's movement time (default 0: the final state right behind the ack)",
    )
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave mosquitto's Nagle algorithm on (its default; deploy/mosquitto/lane.conf "
        "turns it off with set_tcp_nodelay)",
    )
    parser.add_argument(
        "--cpus",
        type=lambda text: [int(cpu) for cpu in text.split(",")],
        default=[None] * 4,
        metavar="B,D,R,C",
        help="pin the broker, the device, the raw responder and the controller to these CPUs",
    )
    args = parser.parse_args()
    if len(args.cpus) != 4:
        parser.error("--cpus takes four CPUs: broker, device, raw responder, controller")
    broker_cpu, device_cpu, raw_cpu, controller_cpu = args.cpus
    logging.basicConfig(level=logging.ERROR)
    config = "" if args.nagle else "set_tcp_nodelay true\n"
    loop_factory = uvloop.new_event_loop if args.uvloop else None
    with (
        running_mosquitto(extra_config=config) as broker,
        other_process(_serve_raw, broker.host, broker.port, args.uvloop, raw_cpu),
        other_process(
            _serve_device, broker.host, broker.port, args.uvloop, device_cpu, args.move_ms / 1000
        ),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        assert broker.process is not None
        pin(broker.process.pid, broker_cpu)
        pin(0, controller_cpu)
        started = time.perf_counter()
        figures = runner.run(bench(args.count, broker.host, broker.port, args.move_ms > 0))
        elapsed = time.perf_counter() - started
    setup = ("uvloop" if args.uvloop else "asyncio") + (", Nagle on" if args.nagle else "")
    setup += f", boom movement {args.move_ms:g} ms"
    if controller_cpu is not None:
        setup += f", CPUs broker {broker_cpu} device {device_cpu} raw {raw_cpu}"
        setup += f" controller {controller_cpu}"
    print(f"barrier command round trip over loopback mosquitto, {args.count} commands, {setup}")
    report("send() → ack received", figures["command"])
    report("send() → broker PUBACK", figures["send"])
    report("raw MQTT 5 QoS 1 req/rep", figures["raw"])
    for p in (50, 99):
        ratio = percentile(figures["command"], p) / percentile(figures["raw"], p)
        print(f"command / raw request-reply at p{p}: {ratio:.2f}x (target ≤ 1.2x)")
    print(f"{args.count / elapsed:.0f} commands + raw round trips/s, one at a time")


if __name__ == "__main__":
    main()
