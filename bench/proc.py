"""What Linux's /proc says of a process: CPU time, resident memory, context switches."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    return user + system, system


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of all of process `pid`'s live threads so far:
    each voluntary one is a thread that went to sleep and was woken again."""
    counts = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in counts:
                counts[key] += int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]
