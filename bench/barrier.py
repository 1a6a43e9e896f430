"""Barrier command round trip: controller send() → device → ack back, over loopback MQTT.

    .venv/bin/python bench/barrier.py [--count 1000] [--uvloop]   (or: python -m bench.barrier)

Runs a private mosquitto, the device emulator with zero movement time, and a BarrierLink;
sends `count` commands one after another (alternating open/close, each a new cmd_id) and
prints percentiles of the time from calling send() to the ack reaching on_ack, and of send()
alone (until the broker's PUBACK). Figures, not assertions: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

import uvloop

# Run as a file, this script's directory comes first on sys.path and its own name would
# shadow the `barrier` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from barrier.device import DeviceEmulator, Timings
from barrier.link import BarrierLink
from barrier.messages import BarrierAck, BarrierCommand
from sim.broker import running_mosquitto

LANE = "bench/l01"
STILL = Timings(opening_s=0.0, closing_s=0.0, slow_ack_s=0.0, step_s=0.0)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench(count: int, host: str, port: int) -> tuple[list[float], list[float]]:
    waiting: dict[str, asyncio.Future[BarrierAck]] = {}

    def on_ack(ack: BarrierAck) -> None:
        future = waiting.pop(ack.cmd_id, None)
        if future is not None and not future.done():
            future.set_result(ack)

    link = BarrierLink(
        LANE,
        host,
        port,
        on_ack=on_ack,
        on_state=lambda s: None,
        on_sensor=lambda r: None,
        on_attendant=lambda a: None,
        on_garbage=lambda t, e: print(f"garbage on {t}: {e}"),
    )
    device = DeviceEmulator(LANE, host, port, STILL)
    tasks = [asyncio.create_task(link.run()), asyncio.create_task(device.run())]
    round_trips: list[float] = []
    sends: list[float] = []
    try:
        await link.wait_connected(5)
        await device.wait_connected(5)
        loop = asyncio.get_running_loop()
        for i in range(count + 20):  # the first 20 warm up
            op = "open" if i % 2 == 0 else "close"
            cmd_id = f"bench-{i}"
            deadline = int((time.time() + 3) * 1_000_000)
            future: asyncio.Future[BarrierAck] = loop.create_future()
            waiting[cmd_id] = future
            start = time.perf_counter()
            await link.send(BarrierCommand(op, cmd_id, deadline, LANE), expiry_s=3)
            sent = time.perf_counter()
            ack = await asyncio.wait_for(future, 5)
            done = time.perf_counter()
            if not ack.ok:
                raise RuntimeError(f"command refused: {ack}")
            if i >= 20:
                sends.append((sent - start) * 1000)
                round_trips.append((done - start) * 1000)
    finally:
        await device.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return round_trips, sends


def report(name: str, values: list[float]) -> None:
    print(
        f"{name:<22} p50 {percentile(values, 50):6.3f} ms  p90 {percentile(values, 90):6.3f} ms"
        f"  p99 {percentile(values, 99):6.3f} ms  max {max(values):6.3f} ms"
        f"  mean {statistics.fmean(values):6.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave mosquitto's Nagle algorithm on (its default; deploy/mosquitto/lane.conf "
        "turns it off with set_tcp_nodelay)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    config = "" if args.nagle else "set_tcp_nodelay true\n"
    with running_mosquitto(extra_config=config) as broker:
        started = time.perf_counter()
        if args.uvloop:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                round_trips, sends = runner.run(bench(args.count, broker.host, broker.port))
        else:
            round_trips, sends = asyncio.run(bench(args.count, broker.host, broker.port))
        elapsed = time.perf_counter() - started
    setup = ("uvloop" if args.uvloop else "asyncio") + (", Nagle on" if args.nagle else "")
    print(f"barrier command round trip over loopback mosquitto, {args.count} commands, {setup}")
    report("send() → ack received", round_trips)
    report("send() → broker PUBACK", sends)
    print(f"{args.count / elapsed:.0f} commands/s one at a time (including start-up)")


if __name__ == "__main__":
    main()
