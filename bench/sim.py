"""Simulator benchmarks: lane capacity and latency under rush hour, and the daemon's CPU cost.

    .venv/bin/python bench/sim.py                      # both parts
    .venv/bin/python bench/sim.py --part throughput --vehicles 150
    .venv/bin/python bench/sim.py --part cpu --seconds 60

throughput: the shipped rush-hour scenario at speed 1 (real barrier timings: opening 0.8 s,
closing 1.0 s, 0.4 s between loop transitions; drivers take 0.6 s to show the phone and 1.0 s
to move up), for --vehicles vehicles. Prints capacity (3600 / mean pay-point time), throughput,
and code-in-frame -> barrier-open latency for all codes and for offline tokens.

cpu: one lane daemon in a child process of its own, with its synthetic camera (30 fps,
1280x720) pushing frames into it, in transit-entry mode so that each presented token is a full
passage (verify, record, open) without loops; the barrier device, broker and back office run in
this process. The child measures its own CPU time (user + system, all threads) over the window
and the CPU time of each thread (/proc/self/task/*/stat): the daemon's share is the process
minus the camera's render thread, which stands for the camera hardware.
Figures are printed, not asserted (the machine is shared; see docs/simulator.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lane.core.notes import BarrierOpened, CodeRefused, Declined
from lane.notification import Notification

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from barrier.device import DeviceEmulator, Timings  # noqa: E402
from lane.config import parse_config  # noqa: E402
from lane.daemon import build  # noqa: E402
from scanner.sources import PushSource  # noqa: E402
from sim.backoffice import BackOffice  # noqa: E402
from sim.broker import Mosquitto, free_port  # noqa: E402
from sim.camera import SyntheticCamera  # noqa: E402
from sim.codes import CodeFactory  # noqa: E402
from sim.harness import SimOptions, options_for, run_scenario  # noqa: E402
from sim.scenario import load_scenario  # noqa: E402

LANE = "p01/l01"
SEED = 5


# --- throughput ------------------------------------------------------------------------------


def throughput(vehicles: int, speed: float) -> dict[str, Any]:
    scenario = load_scenario("rush-hour")
    options = options_for(scenario, SimOptions(speed=speed))
    report = asyncio.run(run_scenario(scenario, options, vehicles))
    keys = (
        "vehicles", "passed", "paying_vehicles", "paying_passed", "lost", "throughput_vph",
        "capacity_vph", "service_s", "latency_ms", "driver_view_p95_ms", "first_look_read_rate",
        "token_first_look_read_rate", "first_look", "frame_latency_ms", "token_frame_latency_ms",
        "methods", "refusals", "duration_s",
    )  # fmt: skip
    return {k: report[k] for k in keys}


# --- CPU of one daemon -------------------------------------------------------------------------


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


async def daemon_child(port: int, keyset: Path, workdir: Path, seconds: float, fps: float) -> None:
    config = parse_config(
        {
            "lane": {"id": LANE, "mode": "transit-entry", "data_dir": str(workdir / "lane"),
                     "gate_hold_s": 1.0},
            "broker": {"port": port},
            "camera": {"source": "push"},
            "auth": {"keyset": str(keyset)},
        }
    )  # fmt: skip
    source = PushSource()
    camera = SyntheticCamera(fps=fps, size=(1280, 720), rng=SEED)
    daemon = await build(config, source=source)
    opened: list[float] = []
    answered = asyncio.Event()

    def note(note: Notification) -> None:
        match note:
            case BarrierOpened(latency_ms=latency_ms):
                opened.append(latency_ms or 0.0)
                answered.set()
            case Declined() | CodeRefused():
                answered.set()

    daemon.runner.observers.append(note)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    await daemon.link.wait_connected(10)
    camera.start(lambda frame, _ts: source.put(frame, time.monotonic()))
    codes = CodeFactory(SEED)

    async def passengers() -> None:
        while True:  # one passenger every 3.6 s (1,000 an hour), phone lowered once answered
            started = time.monotonic()
            answered.clear()
            camera.show(codes.make("token", int(time.time())).text, "clear")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await answered.wait()
            camera.hide()
            await asyncio.sleep(max(0.0, 3.6 - (time.monotonic() - started)))

    traffic = asyncio.create_task(passengers())
    await asyncio.sleep(5.0)  # warm-up: first frames, threads started, caches
    wall0, cpu0, threads0, opened0 = time.monotonic(), os.times(), thread_cpu_s(), len(opened)
    await asyncio.sleep(seconds)
    wall1, cpu1, threads1 = time.monotonic(), os.times(), thread_cpu_s()
    traffic.cancel()
    await asyncio.to_thread(camera.stop)
    stop.set()
    await asyncio.wait([task], timeout=15)
    wall = wall1 - wall0
    process = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    per_thread = {
        name: round(100 * (threads1.get(name, 0.0) - threads0.get(name, 0.0)) / wall, 1)
        for name in threads1
    }
    camera_pct = per_thread.get("sim-camera", 0.0)
    print(
        json.dumps(
            {
                "window_s": round(wall, 1),
                "fps": fps,
                "frames": camera.stats.frames,
                "passages": len(opened) - opened0,
                "process_cpu_pct_of_core": round(100 * process / wall, 1),
                "camera_render_pct_of_core": camera_pct,
                "daemon_cpu_pct_of_core": round(100 * process / wall - camera_pct, 1),
                "per_thread_pct": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
            }
        ),
        flush=True,
    )


async def cpu(seconds: float, fps: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lane-bench-sim-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(port=free_port(), workdir=work)
        broker.start()
        try:
            keyset = CodeFactory(SEED).write_keyset(work / "keyset.json", int(time.time()))
            device = DeviceEmulator(LANE, broker.host, broker.port, Timings())
            device_task = asyncio.create_task(device.run())
            backoffice = BackOffice(work / "backoffice.sqlite3", broker.host, broker.port)
            await backoffice.start()
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--daemon-child", "--broker-port", str(broker.port),
                "--keyset", str(keyset), "--workdir", str(work), "--seconds", str(seconds),
                "--fps", str(fps), stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await child.communicate()
            await device.stop()
            device_task.cancel()
            await backoffice.stop()
            lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
            if child.returncode != 0 or not lines:
                raise RuntimeError(
                    f"daemon child failed ({child.returncode}): {out.decode()[-2000:]}"
                )
            result: dict[str, Any] = json.loads(lines[-1])
            result["records_ingested"] = backoffice.stats.records
            return result
        finally:
            broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=["all", "throughput", "cpu"], default="all")
    p.add_argument("--vehicles", type=int, default=150)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=60.0, help="CPU measurement window")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--daemon-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--broker-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--keyset", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.daemon_child:
        asyncio.run(
            daemon_child(args.broker_port, args.keyset, args.workdir, args.seconds, args.fps)
        )
        return 0
    print(f"# bench/sim.py on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if args.part in ("all", "cpu"):
        print("## one lane daemon, camera 1280x720 at", args.fps, "fps (child process)")
        print(json.dumps(asyncio.run(cpu(args.seconds, args.fps)), indent=2))
    if args.part in ("all", "throughput"):
        print(f"## rush-hour, speed {args.speed:g}, {args.vehicles} vehicles")
        print(json.dumps(throughput(args.vehicles, args.speed), indent=2))
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
