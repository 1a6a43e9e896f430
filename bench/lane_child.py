"""One process holding one or more lane daemons, each with its synthetic camera and passengers,
measuring its own CPU, memory and token latency (for bench/sim.py and bench/plaza.py).

    python -m bench.lane_child --broker-port P --keyset K --workdir W --lanes b1/l01[,b1/l02]
                               [--seconds 30] [--fps 30] [--warm-up 5]

Each lane runs in transit-entry mode, so each presented token is a whole passage (verify,
record, open, close) without loop sensors: one passenger every 3.6 s (1,000 an hour), phone
lowered once the lane answers. After the warm-up the process reads its own CPU time (`os.times`,
all threads) and each thread's (/proc/self/task/*/stat) over the window, its resident memory
(VmRSS) at the end, and the frame → barrier-ack latency of every token passage in the window.
It prints one JSON line. The barrier devices, broker and back office run in the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.proc import rss_mb  # noqa: E402
from lane.config import parse_config  # noqa: E402
from lane.core.notes import BarrierOpened, CodeRefused, Declined  # noqa: E402
from lane.daemon import LaneDaemon, build  # noqa: E402
from lane.notification import Notification  # noqa: E402
from scanner.sources import PushSource  # noqa: E402
from sim.camera import SyntheticCamera  # noqa: E402
from sim.codes import CodeFactory  # noqa: E402

SEED = 5
PASSENGER_EVERY_S = 3.6
WARM_UP_S = 5.0  # first frames, threads started, caches: before the measured window
CAMERA_THREAD = "sim-camera"


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        name = names.get(int(task.name), f"tid{task.name}")
        if name.startswith("asyncio_"):
            name = "asyncio-to-thread"  # default executor workers: one line for all of them
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class BenchLane:
    """A lane daemon fed by its synthetic camera, and its passengers."""

    def __init__(self, lane: str, port: int, *, keyset: Path, work: Path, fps: float) -> None:
        self.codes = CodeFactory(SEED)  # the keyset's keys ...
        config = parse_config(
            {
                "lane": {"id": lane, "mode": "transit-entry", "gate_hold_s": 1.0,
                         "data_dir": str(work / lane.replace("/", "_"))},
                "broker": {"port": port},
                "camera": {"source": "push"},
                "auth": {"keyset": str(keyset), **self.codes.lane_auth(keyset.parent, lane)},
            }
        )  # fmt: skip
        self.source = PushSource()
        # Seeded by the lane id, not its place in this process: lanes in processes of their own
        # would otherwise show the same tokens, refused as replays by the plaza's sharing.
        lane_seed = SEED * 1000 + zlib.crc32(lane.encode())
        self.camera = SyntheticCamera(fps=fps, size=(1280, 720), rng=lane_seed)
        self.config = config
        self.codes.rng = random.Random(lane_seed)  # ... and tokens of this lane's own
        self.latencies: list[float] = []
        self.answered = asyncio.Event()

    async def start(self) -> LaneDaemon:
        self.daemon = await build(self.config, source=self.source)
        self.daemon.runner.observers.append(self._note)
        return self.daemon

    def _note(self, note: Notification) -> None:
        match note:
            case BarrierOpened(latency_ms=latency_ms):
                self.latencies.append(float(latency_ms or 0.0))
                self.answered.set()
            case Declined() | CodeRefused():
                self.answered.set()

    async def passengers(self) -> None:
        while True:
            started = time.monotonic()
            self.answered.clear()
            self.camera.show(self.codes.make("token", int(time.time())).text, "clear")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.answered.wait()
            self.camera.hide()
            await asyncio.sleep(max(0.0, PASSENGER_EVERY_S - (time.monotonic() - started)))


async def lane_child(
    port: int, keyset: Path, work: Path, *, lanes: list[str], seconds: float, fps: float,
    warm_up: float,
) -> dict[str, Any]:  # fmt: skip
    bench_lanes = [BenchLane(lane, port, keyset=keyset, work=work, fps=fps) for lane in lanes]
    stop = asyncio.Event()
    daemons = [asyncio.create_task((await b.start()).run(stop)) for b in bench_lanes]
    for b in bench_lanes:
        await b.daemon.link.wait_connected(20)
        b.camera.start(lambda frame, _ts, s=b.source: s.put(frame, time.monotonic()))
    traffic = [asyncio.create_task(b.passengers()) for b in bench_lanes]
    await asyncio.sleep(warm_up)
    wall0, cpu0, threads0 = time.monotonic(), os.times(), thread_cpu_s()
    seen0 = [len(b.latencies) for b in bench_lanes]
    await asyncio.sleep(seconds)
    wall1, cpu1, threads1, rss = time.monotonic(), os.times(), thread_cpu_s(), rss_mb(os.getpid())
    latencies = [x for b, n in zip(bench_lanes, seen0, strict=True) for x in b.latencies[n:]]
    for task in traffic:
        task.cancel()
    for b in bench_lanes:
        await asyncio.to_thread(b.camera.stop)
    stop.set()
    await asyncio.wait(daemons, timeout=15)
    wall = wall1 - wall0
    process = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    per_thread = {
        name: round(100 * (threads1.get(name, 0.0) - threads0.get(name, 0.0)) / wall, 1)
        for name in threads1
    }
    camera_pct = per_thread.get(CAMERA_THREAD, 0.0)
    return {
        "lanes": lanes,
        "window_s": round(wall, 1),
        "fps": fps,
        "frames": sum(b.camera.stats.frames for b in bench_lanes),
        "passages": len(latencies),
        "token_latency_ms": latencies,
        "process_cpu_pct_of_core": round(100 * process / wall, 1),
        "system_cpu_pct_of_core": round(100 * (cpu1.system - cpu0.system) / wall, 1),
        "camera_render_pct_of_core": camera_pct,
        "daemon_cpu_pct_of_core": round(100 * process / wall - camera_pct, 1),
        "rss_mb": round(rss, 1),
        "per_thread_pct": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
    }


def command(
    port: int, keyset: Path, work: Path, *, lanes: list[str], seconds: float, fps: float,
    warm_up: float = WARM_UP_S,
) -> list[str]:  # fmt: skip
    """The argv that runs `lane_child` in a process of its own."""
    return [
        sys.executable, "-m", "bench.lane_child", "--broker-port", str(port),
        "--keyset", str(keyset), "--workdir", str(work), "--lanes", ",".join(lanes),
        "--seconds", str(seconds), "--fps", str(fps), "--warm-up", str(warm_up),
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker-port", type=int, required=True)
    p.add_argument("--keyset", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--lanes", required=True, help="comma-separated lane ids")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--warm-up", type=float, default=WARM_UP_S)
    a = p.parse_args()
    lanes = a.lanes.split(",")
    child = lane_child(
        a.broker_port, a.keyset, a.workdir, lanes=lanes, seconds=a.seconds, fps=a.fps,
        warm_up=a.warm_up,
    )  # fmt: skip
    result = asyncio.run(child)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
