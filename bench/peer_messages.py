"""What signing costs the messages lanes send each other (prints figures; asserts nothing).

    .venv/bin/python -m bench.peer_messages [--messages 2000]

A used-token message (msgpack, ~50 bytes) sealed by its lane (`LaneKey.seal`: COSE_Sign1) and
opened by a peer (`open_peer`: decode, key look-up, signature check, the message decoded), each
per algorithm, against its raw anchor measured in the same run: the bare signature
(`cose.sign`) and the bare check (`cose.verify`) of the same bytes. The ratio is what the
envelope adds over the cryptography, which dominates.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench import args as bench_args
from lane.auth.cose import Alg, sig_structure, sign, verify
from lane.auth.issuer import TokenIssuer
from lane.auth.keys import KeySet
from lane.auth.peer_messages import LaneKey, PeerOpened, open_peer
from lane.auth.plaza import UsedTokenMsg, decode_used_token, encode_used_token

NOW = 1_800_000_000
LANE = "p07/l03"


def _timed(n: int, work: Callable[[int], object]) -> float:
    """Seconds per call, after one warm-up call."""
    work(0)
    started = time.perf_counter()
    for i in range(n):
        work(i)
    return (time.perf_counter() - started) / n


def bench(n: int) -> None:
    print(f"peer messages, {n} used-token messages each")
    for alg in Alg:
        _one(alg, n)


def _one(alg: Alg, n: int) -> None:
    key = LaneKey(TokenIssuer.generate(alg).private_key, b"lane-p07-l03", LANE)
    keys = KeySet.of(NOW, [key.public(NOW - 60, NOW + 60)])
    payloads = [encode_used_token(UsedTokenMsg(f"{i:032x}", NOW + 60, LANE, NOW))
                for i in range(n)]  # fmt: skip
    sealed = [key.seal(p) for p in payloads]
    tbs = [sig_structure(b"\xa2\x01\x27\x04\x4clane-p07-l03", p) for p in payloads]
    signatures = [sign(key.private_key, t) for t in tbs]
    public = key.private_key.public_key()

    def opened(i: int) -> None:
        got = open_peer(sealed[i], keys, NOW, decode_used_token, lambda m: m.lane)
        assert isinstance(got, PeerOpened)

    raw_sign = _timed(n, lambda i: sign(key.private_key, tbs[i]))
    seal = _timed(n, lambda i: key.seal(payloads[i]))
    raw_verify = _timed(n, lambda i: verify(public, signatures[i], tbs[i]))
    verify_all = _timed(n, opened)
    print(f" {alg.value} (sealed message {len(sealed[0])} bytes, bare {len(payloads[0])})")
    print(f"  seal   {seal * 1e6:7.1f} us   raw sign   {raw_sign * 1e6:7.1f} us   "
          f"{seal / raw_sign:.2f}x")  # fmt: skip
    print(f"  open   {verify_all * 1e6:7.1f} us   raw verify {raw_verify * 1e6:7.1f} us   "
          f"{verify_all / raw_verify:.2f}x")  # fmt: skip


def main() -> None:
    parser = bench_args.parser(__doc__)
    parser.add_argument("--messages", type=int, default=2000, help="messages per algorithm")
    bench(parser.parse_args().messages)


if __name__ == "__main__":
    main()
