"""Closed road cost on this machine (prints figures; asserts nothing).

    .venv/bin/python -m bench.road [--passes 2000] [--fares 20000] [--tickets 5000]
        [--trips 20000] [--plazas 3] [--vehicles 40] [--speed 30]

bench_passes: verify_pass per second (Ed25519 and ES256; accepted, forged, garbage).
bench_fares: decide_fare per second on the example road tariff (a plain trip and a lost pass).
bench_escpos: encode and decode of an entry ticket with its QR code.
bench_trips: trip_ledger over N encoded entry/exit records (the back office's open-trip query).
bench_road_sim: `lane sim --road 3` headless (real lanes, printers, cameras, back office): the
    wall time, whether it reconciled, and an exit's ticket-held-up -> fare-priced time, beside
    verify_pass alone (the raw anchor, measured in the same run).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from barrier.escpos import Ticket, decode, encode_ticket
from bench import args as bench_args
from lane.auth.cose import Alg
from lane.auth.fares import load_tariff
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet
from lane.auth.passes import EntryPass, verify_pass
from lane.auth.trip_rules import ExitContext, RoadRules, decide_fare
from sim.options import SimOptions
from sim.road import run_road
from sim.road_model import RoadPlan, build_road
from uplink.records import AuthInfo, Record, RecordDraft
from uplink.trips import trip_ledger

NOW = 1_800_000_000
TARIFF = Path(__file__).resolve().parents[1] / "deploy" / "tariff.road.example.toml"


def _timed(label: str, n: int, run: Callable[[int], object]) -> None:
    run(0)  # warm up
    started = time.perf_counter()
    for i in range(n):
        run(i)
    elapsed = time.perf_counter() - started
    print(f"  {label:<40} {n / elapsed:9.0f} /s   {elapsed / n * 1e6:8.1f} us each")


def bench_passes(n: int = 2000) -> None:
    print(f"verify_pass, {n} passes each")
    for alg in Alg:
        key = PlazaPassKey.generate("P01", alg=alg)
        forger = PlazaPassKey.generate("P01", kid=key.kid, alg=alg)
        keys = KeySet.of(NOW, [key.public()])
        entries = [
            EntryPass("P01", "e1", NOW - 60, 1, os.urandom(12), "ZJA12345") for _ in range(n)
        ]
        texts = [key.issue(e) for e in entries]
        forged = [forger.issue(e) for e in entries]
        print(f" {alg.value} (QR text {len(texts[0])} characters)")
        for label, batch in (("accepted", texts), ("forged (bad signature)", forged)):
            _timed(label, n, lambda i, b=batch, k=keys: verify_pass(b[i], k, NOW, 5, 86_400))
    garbage = "LP1:" + "A" * 300
    _timed("garbage (refused at decode)", n, lambda i: verify_pass(garbage, KeySet(0), NOW, 5, 1))


def bench_fares(n: int = 20_000) -> None:
    tariff = load_tariff(TARIFF)
    entry = EntryPass("P01", "e1", NOW - 3600, 1, b"\x01" * 12)
    at_exit = ExitContext("P03", "x1", 1, None, NOW)
    rules = RoadRules()
    print(f"decide_fare, {n} decisions each")
    _timed("a plain trip", n, lambda i: decide_fare(entry, False, at_exit, tariff, rules))
    _timed("no pass (farthest fare)", n, lambda i: decide_fare(None, False, at_exit, tariff, rules))


def bench_escpos(n: int = 5000) -> None:
    key = PlazaPassKey.generate("P01")
    text = key.issue(EntryPass("P01", "e1", NOW, 1, b"\x01" * 12))
    ticket = Ticket("ENTRY P01", ("Lane e1", "Class 1", "2027-01-15 08:00"), qr=text)
    stream = encode_ticket(ticket)
    print(f"ESC/POS entry ticket ({len(stream)} bytes), {n} each")
    _timed("encode_ticket", n, lambda i: encode_ticket(ticket))
    _timed("decode (the printer emulator)", n, lambda i: decode(stream))


def bench_trips(n: int = 20_000) -> None:
    auth = AuthInfo("none")
    blobs = []
    for i in range(n):
        pass_id = f"{i:016x}"
        draft = RecordDraft("entry", f"v{i}", 1, 0, "CNY", "none", None, auth, pass_id=pass_id)
        blobs.append(Record(f"e{i}", "P01/e1", i + 1, NOW * 10**6 + i, draft).encode())
        if i % 10:  # nine in ten have exited
            out = RecordDraft("exit", f"v{i}", 1, 4000, "CNY", "token", "a", auth, pass_id=pass_id)
            blobs.append(Record(f"x{i}", "P03/x1", i + 1, NOW * 10**6 + i, out).encode())
    started = time.perf_counter()
    ledger = trip_ledger(blobs)
    elapsed = time.perf_counter() - started
    print(f"trip_ledger over {len(blobs)} records: {elapsed * 1000:.0f} ms, "
          f"{len(ledger.open_trips)} open, {ledger.closed} closed")  # fmt: skip


def bench_road_sim(plazas: int = 3, vehicles: int = 40, speed: float = 30.0) -> None:
    key = PlazaPassKey.generate("P01")
    keys = KeySet.of(NOW, [key.public()])
    text = key.issue(EntryPass("P01", "e1", NOW - 60, 1, os.urandom(12), "ZJA12345"))
    started = time.perf_counter()
    for _ in range(500):
        verify_pass(text, keys, NOW, 5, 86_400)
    anchor_ms = (time.perf_counter() - started) / 500 * 1000
    plan = RoadPlan(build_road(plazas, seed=1))
    options = SimOptions(seed=1, speed=speed, fps=10.0, conditions="realistic")
    started = time.perf_counter()
    report = asyncio.run(run_road(vehicles, options, plan))
    wall = time.perf_counter() - started
    road = report["road"]
    print(f"lane sim --road {plazas} --headless --vehicles {vehicles} --speed {speed:g} --fps 10: "
          f"{wall:.0f} s wall, {report['simulated_s'] / 60:.0f} simulated min, "
          f"reconciled={road['reconciled']} ({road['problem_count']} problems), "
          f"lost={report['lost']}")  # fmt: skip
    exceptions = {k: v["injected"] for k, v in road["exceptions"].items() if v["injected"]}
    print(f"  trips closed {road['trips']['closed']}, open {road['trips']['open']}; "
          f"{exceptions}")  # fmt: skip
    shown = road["pass_priced_ms"]
    if shown["p50"] is not None:
        p50, p99 = shown["p50"], shown["p99"]
        print(f"  ticket held up -> fare priced p50 {p50:.0f} ms, p99 {p99:.0f} ms = "
              f"{p50 / anchor_ms:.0f}x / {p99 / anchor_ms:.0f}x verify_pass alone "
              f"({anchor_ms:.2f} ms)")  # fmt: skip


def main() -> None:
    parser = bench_args.parser(__doc__)
    parser.add_argument("--passes", type=int, default=2000, help="verify_pass calls per kind")
    parser.add_argument("--fares", type=int, default=20_000, help="decide_fare calls per kind")
    parser.add_argument("--tickets", type=int, default=5000, help="ESC/POS encodes and decodes")
    parser.add_argument("--trips", type=int, default=20_000, help="entries for trip_ledger")
    parser.add_argument("--plazas", type=int, default=3, help="road sim: plazas")
    parser.add_argument("--vehicles", type=int, default=40, help="road sim: vehicles")
    parser.add_argument("--speed", type=float, default=30.0, help="road sim: speed-up")
    args = parser.parse_args()
    bench_passes(args.passes)
    bench_fares(args.fares)
    bench_escpos(args.tickets)
    bench_trips(args.trips)
    bench_road_sim(args.plazas, args.vehicles, args.speed)


if __name__ == "__main__":
    main()
