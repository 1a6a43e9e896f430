"""The probes of `lane doctor`: one verdict (OK, WARN or FAIL) per thing a lane depends on.

Every probe is bounded by a timeout and reports instead of raising. Nothing is changed on the
lane computer: the broker probe uses a throwaway client id with no persistent session (never the
controller's own, which would disconnect a running lane), the disk probe writes and removes one
temporary file, the camera is released after one frame.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from lane.config import BrokerSection, LaneConfig
from lane.health import MIN_FREE_BYTES
from lane.install import TOP_LEVEL, clashes
from lane.transport.broker_link import BrokerLink, CaFileError
from lane.transport.mqtt import LinkErrors, LinkStopped, MqttLink
from lane.wire.utc import utc_text
from scanner.camera_net import redact, redact_text
from scanner.health import CaptureSettings, SourceEvent, is_black
from scanner.sources import DEFAULT_SETTINGS, Frame, open_source

# The clock of a lane computer that boots with a dead RTC says 1970 or 2000: any time before
# this software was built is certainly wrong (token validity and record times would be too).
BUILD_YEAR = 2025
MAX_OFFSET_S = 1.0
CAMERA_FAILURES = ("error", "lost", "reconnecting", "ended")


@dataclass(frozen=True)
class Probe:
    status: str  # OK | WARN | FAIL
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name:<8} {self.detail}"


async def run_probes(config: LaneConfig, timeout_s: float = 5.0) -> list[Probe]:
    return [
        await probe_camera(config.camera.source, timeout_s, config.camera.capture()),
        await probe_broker(config, timeout_s),
        *await probe_uplink(config, timeout_s),
        await probe_acquirer(config.auth.acquirer_url, timeout_s),
        await asyncio.to_thread(probe_disk, config.lane.data_dir, config.uplink.max_bytes),
        await asyncio.to_thread(probe_clock),
        probe_install(),
    ]


# --- camera -------------------------------------------------------------------------------------


async def probe_camera(
    spec: str, timeout_s: float, settings: CaptureSettings = DEFAULT_SETTINGS
) -> Probe:
    if spec == "push":
        return Probe("WARN", "camera", "source 'push' is the simulator's camera: nothing to probe")
    shown = redact(spec)  # never the password, not even here
    started = time.monotonic()
    found: queue.Queue[Frame | str] = queue.Queue()
    # An open may take its whole open timeout: the probe waits for it, not less.
    budget = max(timeout_s, settings.open_timeout_s + 1.0)
    source = open_source(spec, settings=settings)

    def read_one() -> None:
        try:
            for item in source.stream():
                if isinstance(item, Frame):
                    found.put(item)
                    return
                if isinstance(item, SourceEvent) and item.kind in CAMERA_FAILURES:
                    # "cannot open: <why>; retry 1 in 0.5 s": the retry is the daemon's
                    found.put(item.detail.split("; retry")[0] or item.kind)
                    return
        except Exception as exc:  # a broken driver must give a verdict, not a traceback
            found.put(f"{exc.__class__.__name__}: {exc}")

    # A daemon thread: a capture stuck inside the driver must not keep the command from exiting.
    threading.Thread(target=read_one, name="doctor-camera", daemon=True).start()
    try:
        got = await asyncio.to_thread(found.get, True, budget)
    except queue.Empty:
        return Probe("FAIL", "camera", f"{shown}: no frame within {budget:g} s")
    finally:
        source.close()
    ms = (time.monotonic() - started) * 1000
    if isinstance(got, str):
        return Probe("FAIL", "camera", f"{shown}: {redact_text(got)}")
    h, w = got.image.shape[:2]
    if is_black(got.image):
        return Probe("WARN", "camera", f"{shown}: {w}x{h} frame in {ms:.0f} ms, but it is black")
    return Probe("OK", "camera", f"{shown}: {w}x{h} frame in {ms:.0f} ms")


# --- broker -------------------------------------------------------------------------------------


async def probe_broker(config: LaneConfig, timeout_s: float) -> Probe:
    return await _probe_link("broker", config.broker, timeout_s)


async def probe_uplink(config: LaneConfig, timeout_s: float) -> list[Probe]:
    """The uplink's broker, when `[uplink]` names one apart from `[broker]`."""
    if config.uplink_broker == config.broker:
        return []
    return [await _probe_link("uplink", config.uplink_broker, timeout_s)]


async def _probe_link(name: str, b: BrokerSection, timeout_s: float) -> Probe:
    where = f"{b.host}:{b.port}"
    try:
        broker = BrokerLink.of(b)
    except CaFileError as exc:
        return Probe("FAIL", name, f"{where}: {exc}")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(b.host, b.port), timeout_s)
    except (OSError, TimeoutError) as exc:
        return Probe("FAIL", name, f"{where}: cannot connect: {exc or 'timed out'}")
    writer.close()
    # As the daemon connects (BrokerLink), only with a throwaway id and no session kept.
    link = broker.link(f"doctor-{uuid.uuid4().hex[:12]}", session_expiry=0, backoff_min=0.2)
    who = f"as {b.username}" if b.username else "(anonymous)"
    if broker.tls is not None:
        who += " over TLS"
    return await probe_mqtt(link, who, timeout_s, name)


async def probe_mqtt(link: MqttLink, who: str, timeout_s: float, name: str = "broker") -> Probe:
    """Connect `link` once: connected, refused (the broker's last answer), or stopped."""
    where = f"{link.host}:{link.port}"
    started = time.monotonic()
    errors = LinkErrors()
    mqtt_log = logging.getLogger("lane.mqtt")
    mqtt_log.addHandler(errors)
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(timeout_s)
    except TimeoutError:
        why = errors.error or "no CONNACK"
        return Probe("FAIL", name, f"{where}: TCP works but MQTT refused: {why}")
    except LinkStopped as exc:
        return Probe("FAIL", name, f"{where}: TCP works but {exc}")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        mqtt_log.removeHandler(errors)
    ms = (time.monotonic() - started) * 1000
    return Probe("OK", name, f"{where}: MQTT connected {who} in {ms:.0f} ms")


# --- acquirer -----------------------------------------------------------------------------------


async def probe_acquirer(url: str | None, timeout_s: float) -> Probe:
    if url is None:
        return Probe("WARN", "acquirer", "no auth.acquirer_url: online codes follow the policy")
    started = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp,
        ):
            status = resp.status
    except TimeoutError:
        return Probe("FAIL", "acquirer", f"{url}: no answer within {timeout_s:g} s")
    except (aiohttp.ClientError, ValueError) as exc:
        return Probe("FAIL", "acquirer", f"{url}: {exc.__class__.__name__}: {exc}")
    ms = (time.monotonic() - started) * 1000
    if status >= 500:
        return Probe("WARN", "acquirer", f"{url}: reachable, but answers HTTP {status}")
    return Probe("OK", "acquirer", f"{url}: reachable (HTTP {status}) in {ms:.0f} ms")


# --- disk ---------------------------------------------------------------------------------------


def probe_disk(data_dir: Path, max_bytes: int) -> Probe:
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != data_dir:
        if not os.access(existing, os.W_OK):
            return Probe("FAIL", "disk", f"{data_dir}: missing, and {existing} is not writable")
        note = f"{data_dir}: will be created; "
    else:
        try:
            with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
                pass
        except OSError as exc:
            return Probe("FAIL", "disk", f"{data_dir}: not writable: {exc.strerror or exc}")
        note = f"{data_dir}: writable; "
    free = shutil.disk_usage(existing).free
    queued = sum(_size(data_dir / n) for n in ("queue.sqlite3", "queue.sqlite3-wal"))
    text = f"{note}{_gb(free)} free, queue {_gb(queued)} of its {_gb(max_bytes)} bound"
    if free < MIN_FREE_BYTES:
        return Probe("FAIL", "disk", text + ": the disk is full")
    if free + queued < max_bytes:
        return Probe(
            "WARN", "disk", text + ": the disk fills before the bound (lower uplink.max_bytes)"
        )
    return Probe("OK", "disk", text)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


# --- clock --------------------------------------------------------------------------------------

Runner = Callable[[list[str]], str | None]


def run_tool(cmd: list[str]) -> str | None:
    """stdout of a system tool, or None when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def probe_clock(now: float | None = None, tool: Runner = run_tool) -> Probe:
    wall = time.time() if now is None else now
    utc = datetime.fromtimestamp(wall, UTC)
    stamp = utc_text(wall)
    if utc.year < BUILD_YEAR:
        return Probe("FAIL", "clock", f"UTC {stamp} is before {BUILD_YEAR}: set the clock (NTP)")
    sync = _chrony(tool) or _timedatectl(tool)
    if sync is None:
        return Probe("OK", "clock", f"UTC {stamp}; sync state unknown (no chronyc/timedatectl)")
    synced, detail = sync
    return Probe("OK" if synced else "WARN", "clock", f"UTC {stamp}; {detail}")


def _chrony(tool: Runner) -> tuple[bool, str] | None:
    out = tool(["chronyc", "-c", "tracking"])
    if not out:
        return None
    fields = out.strip().split(",")
    try:
        offset = float(fields[4])
    except (IndexError, ValueError):
        return None
    leap = fields[-1]
    ok = leap.lower() == "normal" and abs(offset) <= MAX_OFFSET_S
    return ok, f"chrony offset {offset * 1000:+.1f} ms, {leap.lower()}"


def _timedatectl(tool: Runner) -> tuple[bool, str] | None:
    out = tool(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out is None or out.strip() not in ("yes", "no"):
        return None
    synced = out.strip() == "yes"
    return synced, "NTP synchronised" if synced else "NTP not synchronised"


# --- install ------------------------------------------------------------------------------------


def probe_install(owners: Mapping[str, Sequence[str]] | None = None) -> Probe:
    found = clashes(owners)
    if found:
        return Probe("FAIL", "install", "; ".join(found))
    return Probe("OK", "install", f"no other distribution provides {', '.join(TOP_LEVEL)}")
