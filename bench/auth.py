"""Offline token cost on this machine (prints figures; asserts nothing).

    .venv/bin/python -m bench.auth [--tokens 2000] [--replays 500] [--payments 300]

bench_tokens: verify_token per second for Ed25519 and ES256 (accepted tokens: the full path),
plus the cost of refusing forgeries (decode + signature check) and garbage (decode only).
bench_replay: ReplayStore.check_and_mark per second (SQLite WAL, synchronous=FULL: one fsync
per new use) on a temporary file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench import args as bench_args
from bench.auth_online import bench_overhead
from lane.auth.cose import Alg
from lane.auth.deny import DenyList
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.replay import ReplayStore
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S as CAP
from lane.auth.tokens import verify_token

NOW = 1_800_000_000


def _report(label: str, n: int, elapsed: float) -> None:
    print(f"  {label:<34} {n / elapsed:9.0f} /s   {elapsed / n * 1e6:7.1f} us each")


def _verify_all(label: str, texts: list[str], keys: KeySet, deny: DenyList) -> None:
    verify_token(texts[0], keys, deny, NOW, 5, CAP)  # warm up
    started = time.perf_counter()
    for text in texts:
        verify_token(text, keys, deny, NOW, 5, CAP)
    _report(label, len(texts), time.perf_counter() - started)


def bench_tokens(n: int = 2000) -> None:
    deny = DenyList.of(1, [f"acct-denied-{i}" for i in range(100_000)])
    print(f"verify_token, {n} tokens each, deny list of {len(deny.accounts)} accounts")
    for alg in Alg:
        issuer = TokenIssuer.generate(alg, kid=alg.value)
        forger = TokenIssuer.generate(alg, kid=alg.value)
        keys = KeySet.of(NOW, [issuer.public()])
        tokens = [issuer.token(f"acct-{i}", NOW) for i in range(n)]
        print(f" {alg.value} (QR text {len(tokens[0])} characters)")
        _verify_all("accepted (full verification)", tokens, keys, deny)
        forged = [forger.token(f"acct-{i}", NOW) for i in range(n)]
        _verify_all("forged (bad signature)", forged, keys, deny)
    _verify_all("garbage (refused at decode)", ["LT1:" + "A" * 300] * n, KeySet(0), deny)


def bench_replay(n: int = 500) -> None:
    ids = [os.urandom(16).hex() for _ in range(n)]
    with tempfile.TemporaryDirectory() as tmp, ReplayStore(Path(tmp) / "replay.db") as store:
        print(f"replay store in {tmp}, {n} uses")
        for label in ("check_and_mark, first use (fsync)", "check_and_mark, replayed id"):
            started = time.perf_counter()
            for token_id in ids:
                store.check_and_mark(token_id, NOW, "p1/l01", NOW)
            _report(label, n, time.perf_counter() - started)


def main() -> None:
    parser = bench_args.parser(__doc__)
    parser.add_argument("--tokens", type=int, default=2000, help="tokens verified per kind")
    parser.add_argument("--replays", type=int, default=500, help="replay store uses")
    parser.add_argument(
        "--payments", type=int, default=300, help="online payments (bench/auth_online.py)"
    )
    args = parser.parse_args()
    bench_tokens(args.tokens)
    bench_replay(args.replays)
    bench_overhead(args.payments)


if __name__ == "__main__":
    main()
