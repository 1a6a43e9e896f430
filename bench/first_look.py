"""First look: codes read before the driver's first re-aim, per camera condition, and what the
decoders cost on the empty frames a lane camera mostly sees.

    .venv/bin/python -m bench.first_look [--scenes 200] [--frames 30] [--conditions realistic,hard]

For each camera condition and token format (v1 at QR version 8-M, compact v2 at 5-L), scenes
are drawn from the simulator's presets with a fixed seed (the same poses for every decoder
and format) and rendered frame after frame as the lane camera does: the pose holds, hand
shake and sensor noise change. A code is read on the first look when a decoder reads it in
one of the first --frames frames (30 = 1 s at 30 fps; the simulated driver re-aims after
3.5 s, so this slightly understates the rate). Decoders: zxing-cpp alone (the raw anchor),
the cascade before this work (roi-global + half) and the default cascade (+ deblur).

Empty-frame cost: CPU time of the decoding thread (one core, cv2.setNumThreads(1)), the mean
over --empty frames (the deblur pass looks at one frame in four, so the mean is what counts),
on the simulator's empty cab window by day and by night and on bench/scan.py's cluttered road
frame. Then the "hard" preset one effect at a time (the rest taken out of the same poses), which
shows the ceiling its thumbs put on any decoder. Prints markdown; asserts nothing
(docs/scanner.md keeps the figures).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import replace

import cv2

from bench.scan import road_frame
from lane.auth.tokens import TokenFormat
from scanner.decoders import DEFAULT_PASSES, CascadeDecoder, ZxingDecoder, make_pass
from scanner.detection import Decoder, GrayImage, as_gray
from sim.codes import CodeFactory
from sim.render import render_frame
from sim.scene import Conditions, Scene, as_generator

SEED = 2
PREVIOUS_PASSES = ("roi-global", "half")


def decoders() -> dict[str, Decoder]:
    """Fresh instances: the deblur pass keeps per-camera state."""
    return {
        "zxing alone": ZxingDecoder(),
        "cascade before": CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in PREVIOUS_PASSES]),
        "cascade (default)": CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in DEFAULT_PASSES]),
    }


# Each of the "hard" preset's effects alone, the pose (distance, angles) kept: what it takes
# from the first look whatever the decoder. A thumb over more of the symbol than the token's
# error correction recovers is lost to any decoder, which bounds the whole preset.
EFFECTS = ("blur_px", "glare", "low_light", "occlusion")
ALONE: dict[str, tuple[str, ...]] = {
    "the pose alone": (),
    "+ thumb only": ("occlusion",),
    "+ glare only": ("glare",),
    "+ night and streak only": ("low_light", "blur_px"),
}


def first_look(
    condition: str, fmt: TokenFormat, decoder: Decoder, scenes: int, frames: int, *,
    keep: tuple[str, ...] = EFFECTS,
) -> tuple[int, int]:  # fmt: skip
    """(read on the first frame, read within `frames` frames) over `scenes` poses, with only
    the effects in `keep` left in each pose."""
    codes = CodeFactory(7, fmt)
    rng = random.Random(SEED)
    first = within = 0
    for _ in range(scenes):
        text = codes.make("token", 1_800_000_000).text
        seed = rng.randrange(1 << 30)
        scene = Conditions.preset(condition).sample(text, as_generator(seed))
        if keep != EFFECTS:
            scene = replace(
                scene,
                blur_px=scene.blur_px if "blur_px" in keep else 0.0,
                glare=scene.glare if "glare" in keep else 0.0,
                low_light=scene.low_light if "low_light" in keep else 0.0,
                occlusion=scene.occlusion if "occlusion" in keep else 0.0,
            )
        frame_rng = as_generator(seed + 1)
        for k in range(frames):
            gray = as_gray(render_frame(scene, frame_rng))
            if any(d.text == text for d in decoder.decode(gray)):
                first += k == 0
                within += 1
                break
    return first, within


def empty_cost_ms(decoder: Decoder, frames: list[GrayImage], repeat: int) -> float:
    """Mean CPU ms per empty frame, cycling through `frames` (so per-frame state counts)."""
    for frame in frames:
        decoder.decode(frame)  # warm up
    started = time.thread_time_ns()
    for i in range(repeat):
        decoder.decode(frames[i % len(frames)])
    return (time.thread_time_ns() - started) / 1e6 / repeat


def print_first_look(conditions: list[str], scenes: int, frames: int) -> None:
    print(f"## First look: {scenes} poses per condition, read within {frames} frames\n")
    print("| condition | token | QR | decoder | first frame | first look | vs zxing alone |")
    print("|---|---|---|---|---|---|---|")
    for condition in conditions:
        for fmt in TokenFormat:
            anchor = None
            qr = "5-L" if fmt is TokenFormat.V2 else "8-M"
            for name, decoder in decoders().items():
                first, within = first_look(condition, fmt, decoder, scenes, frames)
                rate = within / scenes
                anchor = rate if anchor is None else anchor
                ratio = f"{rate / anchor:.3f}x" if anchor else "-"
                print(f"| {condition} | {fmt.name.lower()} | {qr} | {name} | "
                      f"{first / scenes:.1%} | **{rate:.1%}** | {ratio} |")  # fmt: skip
            sys.stdout.flush()
    print()


def print_hard_effects(scenes: int, frames: int) -> None:
    print(f"## Hard, one effect at a time: v2 token, default cascade, {scenes} poses\n")
    print("| effects kept | first frame | first look |")
    print("|---|---|---|")
    for name, keep in ALONE.items():
        decoder = CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in DEFAULT_PASSES])
        first, within = first_look("hard", TokenFormat.V2, decoder, scenes, frames, keep=keep)
        print(f"| {name} | {first / scenes:.1%} | **{within / scenes:.1%}** |")
        sys.stdout.flush()
    print()


def print_empty_costs(repeat: int) -> None:
    views = {
        "sim cab window, day": [as_gray(render_frame(Scene(None), s)) for s in range(8)],
        "sim cab window, night": [
            as_gray(render_frame(Scene(None, low_light=0.8), s)) for s in range(8)
        ],
        "bench/scan road frame": [road_frame(1280, 720, seed) for seed in range(1, 3)],
    }
    print(f"## Empty 1280x720 frames: mean CPU ms per frame over {repeat} frames\n")
    print("| view | zxing alone | cascade before | cascade (default) | default / before | "
          "default / zxing |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for view, frames in views.items():
        costs = {name: empty_cost_ms(d, frames, repeat) for name, d in decoders().items()}
        zxing, before, now = (
            costs["zxing alone"],
            costs["cascade before"],
            costs["cascade (default)"],
        )
        print(f"| {view} | {zxing:.2f} | {before:.2f} | {now:.2f} | **{now / before:.2f}x** | "
              f"{now / zxing:.2f}x |")  # fmt: skip
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--empty", type=int, default=1800, help="empty frames timed")
    parser.add_argument("--conditions", default="clear,realistic,hard")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench/first_look.py: one core, load average {loadavg:.1f} on {os.cpu_count()} "
          "CPUs\n")  # fmt: skip
    print_empty_costs(args.empty)
    print_first_look(args.conditions.split(","), args.scenes, args.frames)
    if "hard" in args.conditions.split(","):
        print_hard_effects(args.scenes, args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
