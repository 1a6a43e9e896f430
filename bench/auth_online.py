"""The lane's own share of an online payment decision (prints figures; asserts nothing).

    .venv/bin/python -m bench.auth_online [n=300] [latency_ms=20]

bench_overhead: n sequential wallet-code authorisations against the simulated acquirer,
run as a separate process (so its work is not charged to the lane) with a fixed latency.
For each decision: the decision time (Authoriser.authorise, end to end), the acquirer time
(the pay call's HTTP round trip as the client sees it), and the lane overhead = decision -
acquirer time: code check, keyed account hash, the intent commit (SQLite, synchronous=FULL:
one fsync) before paying, the `charged` commit after, thread hops and scheduling.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import args as bench_args
from lane.auth.acquirer import AcquirerClient, AcquirerResult, PayRequest
from lane.auth.authoriser import Authoriser, AuthRequest, OfflineResult
from lane.auth.policy import OfflinePolicy
from lane.auth.resolver import ResolutionStore, Resolver

LANE = "bench/l01"


class TimedClient(AcquirerClient):
    """Remembers how long the last pay call took on the wire."""

    last_pay_s = 0.0

    async def pay(self, request: PayRequest, timeout_s: float) -> AcquirerResult:
        started = time.perf_counter()
        try:
            return await super().pay(request, timeout_s)
        finally:
            self.last_pay_s = time.perf_counter() - started


class NoTokens:
    def verify(self, text: str, now_unix: float) -> OfflineResult:
        raise AssertionError("no tokens in this benchmark")


def start_acquirer(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.acquirer", "--port", "0", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "acquirer http://127.0.0.1:PORT admin http://..."
    if not line.startswith("acquirer "):
        proc.kill()
        raise RuntimeError(f"acquirer did not start: {line!r}")
    return proc, line.split()[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(url: str, n: int, store_dir: Path) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"decision": [], "acquirer": [], "overhead": []}
    client = TimedClient(url)
    async with client:
        resolver = Resolver(ResolutionStore(store_dir / "resolve.db"), client)
        await resolver.start()
        auth = Authoriser(
            LANE,
            client,
            resolver,
            NoTokens(),
            OfflinePolicy(),
            time.monotonic,
            time.time,
            account_key=b"benchmark-lane-key-0123456789abc",
        )
        try:
            for i in range(n + 20):  # the first 20 warm up connections and caches
                req = AuthRequest(
                    f"auth-{i}",
                    LANE,
                    f"28{i:016d}",
                    "payment_code",
                    450,
                    "CNY",
                    time.monotonic() + 3.0,
                )
                started = time.perf_counter()
                decision = await auth.authorise(req)
                elapsed = time.perf_counter() - started
                if not decision.approved:
                    raise RuntimeError(f"payment {i} not approved: {decision.reason}")
                await auth.settle(req.auth_id)  # after the record is written: not timed
                if i >= 20:
                    figures["decision"].append(elapsed * 1000)
                    figures["acquirer"].append(client.last_pay_s * 1000)
                    figures["overhead"].append((elapsed - client.last_pay_s) * 1000)
        finally:
            await resolver.stop()
    return figures


def bench_overhead(n: int = 300, latency_ms: float = 20.0) -> dict[str, Any]:
    """Run the benchmark, print p50/p99 and return them (milliseconds)."""
    proc, url = start_acquirer(latency_ms)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            figures = asyncio.run(_run(url, n, Path(tmp)))
    finally:
        proc.terminate()
        proc.wait(5)
    print(f"online authorisation, {n} wallet payments, acquirer latency fixed at {latency_ms} ms")
    result: dict[str, Any] = {"n": n, "latency_ms": latency_ms}
    for name, values in figures.items():
        p50, p99 = statistics.median(values), _pct(values, 0.99)
        result[name] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
        print(f"  {name:<10} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    return result


def main() -> None:
    parser = bench_args.parser(__doc__)
    parser.add_argument("n", type=int, nargs="?", default=300, help="payments timed")
    parser.add_argument(
        "latency_ms", type=float, nargs="?", default=20.0, help="the acquirer's fixed latency"
    )
    args = parser.parse_args()
    bench_overhead(args.n, args.latency_ms)


if __name__ == "__main__":
    main()
