"""QR decoding on the real-photo corpus: read rate, false positives and cost per camera frame.

    .venv/bin/python -m bench.scan [--corpus ../shared/qr-corpus] [--repeat 30] [--limit N]

Default corpus: shared/qr-corpus beside the repository or a folder above it (override with
LANE_QR_CORPUS). --limit takes N images spread over the corpus instead of all of them.
Everything runs on one core (cv2.setNumThreads(1), CPU affinity pinned). Prints markdown
tables; asserts nothing. Figures go into docs/scanner.md.

1. Read rate per category on the images as they are, for zxing-cpp, ZBar and the cascade.
   "wrong" is any text other than the expected one, split into: charset (the right bytes shown
   in the wrong character set), other code (a genuine second code in the picture) and false
   positive (anything else).
2. Each fallback pass on top of zxing-cpp: codes it rescues and what it costs on an empty frame.
3. Cost per frame: every image placed, with a white quiet zone like a phone screen, into a
   synthetic 1280x720 and 1920x1080 road frame, plus the empty road frame itself.
4. The default ScanPipeline (one worker) fed frame by frame: latency from put() to on_result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from scanner.decoders import (
    DEFAULT_PASSES,
    PASS_NAMES,
    CascadeDecoder,
    ZxingDecoder,
    make_decoder,
    make_pass,
)
from scanner.detection import Decoder, Detection
from scanner.pipeline import ScanPipeline, ScanResult
from scanner.sources import PushSource

Gray = npt.NDArray[np.uint8]
DECODERS = ("zxing", "pyzbar", "cascade")
SIZES = ((1280, 720), (1920, 1080))
# qrcode-2/16 is a "double QR": a small red code printed inside the big one. Reading the inner
# code is reading a real code, not a misread; the corpus expects the outer one.
OTHER_CODES = {"qrcode-2/16.png": "[内側QRコード]\r\n\r\n*ダブルQR*\r\nhttp://d-qr.net/ex/"}


@dataclass
class Sample:
    name: str  # e.g. "qrcode-4/34.png"
    category: str
    gray: Gray
    expected: str


@dataclass
class Tally:
    read: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    charset: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)
    rescued: list[str] = field(default_factory=list)


def default_corpus() -> Path:
    env = os.environ.get("LANE_QR_CORPUS")
    if env:
        return Path(env)
    # Beside the checkout (CI), or above a worktree of it (/work/shared on a development box).
    here = Path(__file__).resolve()
    for parent in here.parents[1:]:
        if (parent / "shared" / "qr-corpus").is_dir():
            return parent / "shared" / "qr-corpus"
    return here.parents[2] / "shared" / "qr-corpus"


def load(corpus: Path, limit: int | None = None) -> list[Sample]:
    """The corpus's images with their expected text; `limit`: that many, spread evenly over it."""
    paths = sorted(corpus.glob("qrcode-*/*.png"))
    if limit is not None and limit < len(paths):
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    samples = []
    for path in paths:
        expected_file = path.with_suffix(".txt")
        if not expected_file.exists():
            continue
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            print(f"skipping unreadable {path}", file=sys.stderr)
            continue
        expected = expected_file.read_bytes().decode("utf-8")  # bytes: keep \r\n as stored
        image = np.asarray(gray, dtype=np.uint8)
        samples.append(Sample(f"{path.parent.name}/{path.name}", path.parent.name, image, expected))
    return samples


def road_frame(width: int, height: int, seed: int = 7) -> Gray:
    """A dim road with lane marks, a car, a number plate and clutter: edges to tempt a finder."""
    rng = np.random.default_rng(seed)
    shade = np.linspace(70, 130, height, dtype=np.float32)[:, None]
    noisy = shade + rng.normal(0, 10, (height, width)).astype(np.float32)
    img = np.clip(cv2.GaussianBlur(noisy, (0, 0), 1.0), 0, 255).astype(np.uint8)
    for x0 in (width // 5, 4 * width // 5):
        cv2.line(img, (x0, height), (width // 2 + (x0 - width // 2) // 4, 0), 225, width // 200)
    cx, cy = width // 2, height // 2
    cv2.rectangle(img, (cx - width // 5, cy - height // 6), (cx + width // 5, height), 45, -1)
    cv2.rectangle(img, (cx - width // 7, cy - height // 7), (cx + width // 7, cy), 90, -1)
    plate = (cx - width // 16, cy + height // 4)
    cv2.rectangle(img, plate, (plate[0] + width // 8, plate[1] + height // 20), 235, -1)
    cv2.putText(img, "ZJ A 12345", (plate[0] + 6, plate[1] + height // 25),
                cv2.FONT_HERSHEY_SIMPLEX, width / 1600, 20, 2)  # fmt: skip
    for _ in range(40):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        w, h = int(rng.integers(6, 40)), int(rng.integers(6, 40))
        cv2.rectangle(img, (x, y), (x + w, y + h), int(rng.integers(0, 255)), -1)
    return img


def place(background: Gray, code: Gray) -> Gray:
    """The picture on a phone screen: a white margin, scaled down if needed, in the frame."""
    margin = max(8, int(0.08 * max(code.shape)))
    screen = cv2.copyMakeBorder(code, margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                                value=255)  # fmt: skip
    height, width = background.shape
    scale = min(1.0, 0.9 * height / screen.shape[0], 0.9 * width / screen.shape[1])
    if scale < 1.0:
        screen = cv2.resize(screen, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = background.copy()
    y = (height - screen.shape[0]) // 2
    x = (width - screen.shape[1]) // 2
    frame[y : y + screen.shape[0], x : x + screen.shape[1]] = screen
    return frame


def judge(sample: Sample, found: list[Detection], tally: Tally) -> bool:
    ok = any(d.text == sample.expected for d in found)
    for d in found:
        if d.text == sample.expected:
            continue
        other = OTHER_CODES.get(sample.name)
        if other is not None and (d.text == other or _same_bytes_other_charset(d.raw, other)):
            tally.other.append(sample.name)
        elif _same_bytes_other_charset(d.raw, sample.expected):
            tally.charset.append(sample.name)
        else:
            tally.false.append(f"{sample.name}: {d.text[:40]!r}")
    return ok


def _same_bytes_other_charset(raw: bytes, expected: str) -> bool:
    for charset in ("shift_jis", "cp932", "utf-8", "gb18030"):
        try:
            if raw.decode(charset) == expected:
                return True
        except UnicodeDecodeError:
            continue
    return False


def rate_as_is(samples: list[Sample], name: str) -> Tally:
    tally = Tally()
    for s in samples:
        tally.total[s.category] = tally.total.get(s.category, 0) + 1
        # A fresh decoder per photo: each is a view of its own (the deblur pass keeps
        # per-camera state and looks at one frame in four).
        ok = judge(s, make_decoder(name).decode(s.gray), tally)
        tally.read[s.category] = tally.read.get(s.category, 0) + int(ok)
    return tally


def cpu_ms(fn: Callable[[], object]) -> float:
    """CPU time of this thread: the cost on one core, unlike wall time on a shared machine
    (the decoders and OpenCV, pinned to one thread, do all their work on the calling thread)."""
    started = time.thread_time_ns()
    fn()
    return (time.thread_time_ns() - started) / 1e6


def decode_cost(decoder: Decoder, image: Gray, repeat: int) -> list[float]:
    decoder.decode(image)  # warm up
    return [cpu_ms(lambda: decoder.decode(image)) for _ in range(repeat)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_rates(samples: list[Sample], decoders: dict[str, Decoder]) -> dict[str, Tally]:
    categories = sorted({s.category for s in samples})
    tallies = {name: rate_as_is(samples, name) for name in decoders}
    print("## Read rate, images as they are\n")
    print(
        "| decoder | "
        + " | ".join(categories)
        + " | total | wrong: charset / other code / false positive |"
    )
    print("|---" * (len(categories) + 3) + "|")
    for name, t in tallies.items():
        cells = [f"{t.read[c]}/{t.total[c]}" for c in categories]
        total = sum(t.read.values())
        print(f"| {name} | " + " | ".join(cells) + f" | **{total}/{len(samples)}** "
              f"({100 * total / len(samples):.1f}%) | {len(t.charset)} / {len(t.other)} / "
              f"{len(t.false)} |")  # fmt: skip
    for name, t in tallies.items():
        for line in t.false:
            print(f"- false positive ({name}): {line}")
    print()
    return tallies


def print_passes(samples: list[Sample], repeat: int) -> None:
    zxing = ZxingDecoder()
    misses = [s for s in samples if not any(d.text == s.expected for d in zxing.decode(s.gray))]
    background = road_frame(1280, 720)
    misses_in_frame = [
        s for s in samples
        if not any(d.text == s.expected for d in zxing.decode(place(background, s.gray)))
    ]  # fmt: skip
    base = decode_cost(zxing, background, repeat)
    print("## Fallback passes on top of zxing-cpp\n")
    print(f"zxing-cpp alone misses {len(misses)} images as they are, {len(misses_in_frame)} "
          "placed in a 1280x720 frame.\n")  # fmt: skip
    default_misses = [
        s for s in samples
        if not any(d.text == s.expected for d in make_decoder("cascade").decode(s.gray))
    ]  # fmt: skip
    print("| pass | rescued (as is) | rescued (in 720p frame) | wrong | adds to default | empty "
          f"720p frame, median ms (zxing alone: {statistics.median(base):.2f}) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in PASS_NAMES:
        tally = Tally()
        rescued = [s.name for s in misses if judge(s, cascade_of(name).decode(s.gray), tally)]
        in_frame = [
            s.name for s in misses_in_frame
            if judge(s, cascade_of(name).decode(place(background, s.gray)), tally)
        ]  # fmt: skip
        cost = statistics.median(decode_cost(cascade_of(name), background, repeat))
        wrong = len(tally.false) + len(tally.charset)
        if name in DEFAULT_PASSES:
            adds = "(default)"
        else:
            extended = (*DEFAULT_PASSES, name)
            adds = str(
                sum(judge(s, cascade_of(*extended).decode(s.gray), tally) for s in default_misses)
            )
        print(f"| {name} | {len(rescued)} | {len(in_frame)} | {wrong} | {adds} | {cost:.2f} |")
    print()


def cascade_of(*passes: str) -> CascadeDecoder:
    """zxing-cpp and these passes, fresh (per-camera state starts anew)."""
    return CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in passes])


def print_frame_costs(samples: list[Sample], decoders: dict[str, Decoder], repeat: int) -> None:
    print("## Cost per frame (CPU ms on one core)\n")
    print("| decoder | frame | read in frame | code frames median / p95 ms | "
          "empty frame median / p95 ms |")  # fmt: skip
    print("|---|---|---|---|---|")
    medians: dict[tuple[str, int], tuple[float, float]] = {}
    for width, height in SIZES:
        background = road_frame(width, height)
        frames = [(s, place(background, s.gray)) for s in samples]
        for name, decoder in decoders.items():
            decoder.decode(background)  # warm up
            times, read = [], 0
            for s, frame in frames:
                found = decoder.decode(frame)
                read += any(d.text == s.expected for d in found)
                # Best of 3: other processes on the machine only ever add time.
                times.append(min(decode_cost(decoder, frame, 3)))
            empty = decode_cost(decoder, background, repeat)
            medians[(name, width)] = (statistics.median(times), statistics.median(empty))
            print(f"| {name} | {width}x{height} | {read}/{len(samples)} | "
                  f"{statistics.median(times):.2f} / {pct(times, 0.95):.2f} | "
                  f"{statistics.median(empty):.2f} / {pct(empty, 0.95):.2f} |")  # fmt: skip
    print()
    print("Ratios (median ms, code frames / empty frames):\n")
    for width, _ in SIZES:
        zx_code, zx_empty = medians[("zxing", width)]
        for name in ("cascade", "pyzbar"):
            on_code, on_empty = medians[(name, width)]
            print(f"- {width} px wide: {name} / zxing = {on_code / zx_code:.2f}x on code frames, "
                  f"{on_empty / zx_empty:.2f}x on empty frames")  # fmt: skip
    print()


async def pipeline_latency(samples: list[Sample]) -> None:
    """Put one 720p frame at a time into the default pipeline and time put -> on_result."""
    background = road_frame(1280, 720)
    frames = [cv2.cvtColor(place(background, s.gray), cv2.COLOR_GRAY2BGR) for s in samples]
    arrived: asyncio.Queue[tuple[ScanResult, float]] = asyncio.Queue()
    source = PushSource(blackout_after_s=3600.0)
    pipeline = ScanPipeline(
        source, make_decoder("cascade"),
        lambda r: arrived.put_nowait((r, time.perf_counter())), workers=1, dedup_window_s=0.0,
    )  # fmt: skip
    latencies: list[float] = []
    async with pipeline:
        for i, frame in enumerate(frames):
            put_at = time.perf_counter()
            source.put(np.asarray(frame, dtype=np.uint8), ts=float(i * 10))
            while not _settled(pipeline, i + 1):  # noqa: ASYNC110 - stats are polled
                await asyncio.sleep(0.0005)
            await asyncio.sleep(0)  # let the results already handed over run
            while not arrived.empty():
                _, got_at = arrived.get_nowait()
                latencies.append((got_at - put_at) * 1000.0)
        stats = pipeline.stats()
    print("## Default pipeline, one worker, 1280x720 BGR frames put one at a time\n")
    print(f"- {len(latencies)} results from {len(frames)} frames; put() -> on_result on the loop: "
          f"median {statistics.median(latencies):.2f} ms, p95 {pct(latencies, 0.95):.2f} ms "
          "wall time (grey conversion, decode, classify, hand-over)")  # fmt: skip
    print(
        f"- pipeline stats(): decode p50 {stats.decode_ms_p50:.2f} ms, p95 "
        f"{stats.decode_ms_p95:.2f} ms wall, frames in {stats.frames_in}, dropped {stats.dropped}"
    )
    print()


def _settled(pipeline: ScanPipeline, decoded: int) -> bool:
    stats = pipeline.stats()
    return stats.decoded >= decoded and stats.pending == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=default_corpus())
    parser.add_argument("--repeat", type=int, default=30, help="timing runs on empty frames")
    parser.add_argument(
        "--limit", type=int, help="only this many images, spread over the corpus (default: all)"
    )
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"corpus not found: {args.corpus} (set --corpus or LANE_QR_CORPUS)", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    samples = load(args.corpus, args.limit)
    decoders = {name: make_decoder(name) for name in DECODERS}
    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench/scan.py: {len(samples)} images from {args.corpus}, one core, "
          f"load average {loadavg:.1f} on {os.cpu_count()} CPUs\n")  # fmt: skip
    print_rates(samples, decoders)
    print_passes(samples, args.repeat)
    print_frame_costs(samples, decoders, args.repeat)
    asyncio.run(pipeline_latency(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
