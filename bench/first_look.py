"""First look: codes read before the driver's first re-aim, per camera condition, and what the
decoders cost on the empty frames a lane camera mostly sees.

    .venv/bin/python -m bench.first_look [--scenes 200] [--frames 30] [--conditions realistic,hard]
                                        [--tokens v1,v2]
                                        [--parts empty,held,first,gate,effects,sticker]

For each camera condition and token format (v1 at QR version 8-M, compact v2 at 5-L), scenes
are drawn from the simulator's presets with a fixed seed (the same poses for every decoder
and format) and rendered frame after frame as the lane camera does: the pose holds, hand
shake and sensor noise change. A code is read on the first look when a decoder reads it in
one of the first --frames frames (30 = 1 s at 30 fps; the simulated driver re-aims after
3.5 s, so this slightly understates the rate). Decoders: zxing-cpp alone (the raw anchor),
the cascade before the deblur pass (roi-global + half), the cascade before the covered pass
(roi-global + half + deblur, as it was before issue #16's thumb work) and the default cascade.

Empty-frame cost: CPU time of the decoding thread (one core, cv2.setNumThreads(1)), the mean
over --empty frames (the deblur pass looks at one frame in four, so the mean is what counts),
on the simulator's empty cab window by day and by night and on bench/scan.py's cluttered road
frame; "default + gate" is the default cascade behind the change gate (scanner/frame_gate.py)
at 30 fps, its block-mean thumbnails included. Held thumb cost: the same measure over
--held frames of a phone held still with a thumb over a quarter of its code (zxing-cpp
locates it, nothing reads it), the covered pass trying the spot on every frame
(retry_after 0, as first merged) and once in four (the default). Then the first look with the
change gate on and off: each pose preceded by --before frames of the same view without the
phone, one camera (frame ids and 30 fps timestamps running on across poses), so the gate has
a reference when the phone comes up; "code frames let pass" must be 0. Then the "hard" preset
one effect at a time (the rest taken out of the same poses), which shows what its thumbs take,
before the covered pass and with it. Then a QR sticker in view (`Scene.sticker`, read in every
frame): the first look of the v2 token with it and without it, the cascade as it was (its
fallbacks only when nothing was read), the default (the passes that work on what was not read
still run) and the default with the whole-frame pass run beside a read too; and what the
frames with only the sticker cost (the common frame at a booth that has one). --parts picks the
tables (empty, held, first, gate, effects, sticker; all by default), e.g. to run them as
separate processes, each pinned to its own CPU (`taskset -c 1 ...`). Prints markdown; asserts
nothing (docs/scanner.md keeps the figures).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import cv2

from bench.scan import road_frame
from lane.auth.tokens import TokenFormat
from scanner.covered import CoveredRetry
from scanner.decoders import DEFAULT_PASSES, CascadeDecoder, ZxingDecoder, make_pass
from scanner.detection import Decoder, Detection, GrayImage, Polygon, as_gray, locate
from scanner.fallbacks import FallbackPass, WholeFrame
from scanner.frame_gate import FrameGate
from sim.codes import CodeFactory
from sim.render import render_frame
from sim.scene import Conditions, Scene, as_generator

SEED = 2
PARTS = ("empty", "held", "first", "gate", "effects", "sticker")
STICKER = "https://example.org/help/booth-7"
PREVIOUS_PASSES = ("roi-global", "half")
FPS = 30.0
# scan(gray, frame id, timestamp): the codes read, or None when the frame was not decoded.
Scan = Callable[[GrayImage, int, float], list[Detection] | None]


def decoders() -> dict[str, Decoder]:
    """Fresh instances: the deblur pass keeps per-camera state."""
    return {
        "zxing alone": ZxingDecoder(),
        "cascade before": CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in PREVIOUS_PASSES]),
        "before covered": uncovered_cascade(),
        "cascade (default)": default_cascade(),
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


def default_cascade() -> CascadeDecoder:
    return CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in DEFAULT_PASSES])


def uncovered_cascade() -> CascadeDecoder:
    """The default cascade as it was before the covered pass (thumbs as erasures)."""
    return CascadeDecoder(ZxingDecoder(), [make_pass(p) for p in DEFAULT_PASSES if p != "covered"])


class ReadBlind(CascadeDecoder):
    """The cascade as it was before a sticker in view was thought of: its fallback passes ran
    only when the primary read nothing at all."""

    def locate(self, gray: GrayImage) -> tuple[list[Detection], list[Polygon]]:
        found, candidates = locate(self.primary, gray)
        for fallback in self.passes:
            if found:
                break
            found = fallback.run(gray, candidates)
        for learner in self._learners:
            if found:
                learner.learn(found)
        return found, candidates


class Regardless:
    """A pass that is not told what was read in the frame: a whole-frame pass then runs beside
    a read too (what it would cost and read)."""

    def __init__(self, inner: FallbackPass) -> None:
        self.name = inner.name
        self._inner = inner

    def run(
        self, gray: GrayImage, candidates: list[Polygon], read: Sequence[Polygon] = ()
    ) -> list[Detection]:
        return self._inner.run(gray, candidates)


def sticker_decoders() -> dict[str, Decoder]:
    passes = [make_pass(p) for p in DEFAULT_PASSES]
    return {
        "zxing alone": ZxingDecoder(),
        "before (blind beside a read)": ReadBlind(ZxingDecoder(), passes),
        "cascade (default)": default_cascade(),
        "default + whole frame beside a read": CascadeDecoder(
            ZxingDecoder(),
            [
                Regardless(p) if isinstance(p, WholeFrame) else p
                for p in (make_pass(p) for p in DEFAULT_PASSES)
            ],
        ),
    }


def plain(decoder: Decoder) -> Scan:
    return lambda gray, frame_id, ts: decoder.decode(gray)


def gated(decoder: Decoder) -> Scan:
    gate = FrameGate(decoder)

    def scan(gray: GrayImage, frame_id: int, ts: float) -> list[Detection] | None:
        verdict, thumb = gate.judge(gray, ts)
        return gate.decode(gray, frame_id, ts, thumb) if verdict.decode else None

    return scan


def poses(
    condition: str, fmt: TokenFormat, scenes: int, keep: tuple[str, ...] = EFFECTS,
    sticker: str | None = None,
) -> Iterator[tuple[str, Scene, int]]:  # fmt: skip
    """(code text, scene, frame seed) for `scenes` seeded poses, with only the effects in `keep`
    left in each (and `sticker` in view)."""
    codes = CodeFactory(7, fmt)
    rng = random.Random(SEED)
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
        yield text, replace(scene, sticker=sticker), seed + 1


@dataclass
class Tally:
    first: int = 0  # poses read on the phone's first frame
    within: int = 0  # poses read within `frames` frames
    empty: int = 0  # frames before the phone came up
    empty_skipped: int = 0  # of those, not decoded
    code_skipped: int = 0  # frames with the phone in view not decoded (must stay 0)


def first_look(
    condition: str, fmt: TokenFormat, scan: Scan, scenes: int, frames: int, *,
    keep: tuple[str, ...] = EFFECTS, before: int = 0, sticker: str | None = None,
) -> Tally:  # fmt: skip
    """How many of `scenes` poses (only the effects in `keep` left) `scan` reads on the first
    frame and within `frames` frames, each shown after `before` frames of the same view without
    the phone; frame ids and timestamps run on across poses, as from one camera."""
    tally = Tally()
    ids = itertools.count(1)
    for text, scene, seed in poses(condition, fmt, scenes, keep, sticker):
        frame_rng = as_generator(seed)
        for _ in range(before):
            i = next(ids)
            found = scan(as_gray(render_frame(scene.without_code(), frame_rng)), i, i / FPS)
            tally.empty += 1
            tally.empty_skipped += found is None
        for k in range(frames):
            i = next(ids)
            found = scan(as_gray(render_frame(scene, frame_rng)), i, i / FPS)
            tally.code_skipped += found is None
            if found and any(d.text == text for d in found):
                tally.first += k == 0
                tally.within += 1
                break
    return tally


def empty_cost_ms(scan: Scan, frames: list[GrayImage], repeat: int) -> float:
    """Mean CPU ms per empty frame, cycling through `frames` (so per-frame state counts) at
    30 fps."""
    for i, frame in enumerate(frames):
        scan(frame, i, i / FPS)  # warm up
    started = time.thread_time_ns()
    for i in range(len(frames), len(frames) + repeat):
        scan(frames[i % len(frames)], i, i / FPS)
    return (time.thread_time_ns() - started) / 1e6 / repeat


def print_first_look(
    conditions: list[str], formats: list[TokenFormat], scenes: int, frames: int
) -> None:
    print(f"## First look: {scenes} poses per condition, read within {frames} frames\n")
    print("| condition | token | QR | decoder | first frame | first look | vs zxing alone |")
    print("|---|---|---|---|---|---|---|")
    for condition in conditions:
        for fmt in formats:
            anchor = None
            qr = "5-L" if fmt is TokenFormat.V2 else "8-M"
            for name, decoder in decoders().items():
                tally = first_look(condition, fmt, plain(decoder), scenes, frames)
                first, rate = tally.first, tally.within / scenes
                anchor = rate if anchor is None else anchor
                ratio = f"{rate / anchor:.3f}x" if anchor else "-"
                print(f"| {condition} | {fmt.name.lower()} | {qr} | {name} | "
                      f"{first / scenes:.1%} | **{rate:.1%}** | {ratio} |")  # fmt: skip
            sys.stdout.flush()
    print()


def print_gate_first_look(conditions: list[str], scenes: int, frames: int, before: int) -> None:
    print(f"## First look with the change gate: default cascade, {scenes} poses, each after "
          f"{before} frames without the phone\n")  # fmt: skip
    print("| condition | token | gate | first frame | first look | empty frames let pass | "
          "code frames let pass |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for condition in conditions:
        for fmt in TokenFormat:
            for gate, scan in (("off", plain(default_cascade())), ("on", gated(default_cascade()))):
                t = first_look(condition, fmt, scan, scenes, frames, before=before)
                print(f"| {condition} | {fmt.name.lower()} | {gate} | {t.first / scenes:.1%} | "
                      f"**{t.within / scenes:.1%}** | {t.empty_skipped}/{t.empty} | "
                      f"{t.code_skipped} |")  # fmt: skip
                sys.stdout.flush()
    print()


def print_hard_effects(scenes: int, frames: int) -> None:
    print(f"## Hard, one effect at a time: v2 token, {scenes} poses\n")
    print("| effects kept | before covered: first frame | first look | "
          "default cascade: first frame | first look |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, keep in ALONE.items():
        cells = []
        for decoder in (uncovered_cascade(), default_cascade()):
            t = first_look("hard", TokenFormat.V2, plain(decoder), scenes, frames, keep=keep)
            cells.append(f"{t.first / scenes:.1%} | **{t.within / scenes:.1%}**")
        print(f"| {name} | {' | '.join(cells)} |")
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
    print("| view | zxing alone | cascade before | before covered | cascade (default) | "
          "default + gate | default / before | default / before covered | gate / zxing | "
          "gate / before |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for view, frames in views.items():
        scans = {name: plain(d) for name, d in decoders().items()}
        scans["default + gate"] = gated(default_cascade())
        costs = {name: empty_cost_ms(scan, frames, repeat) for name, scan in scans.items()}
        zxing, before, uncovered, now, gate = (
            costs["zxing alone"],
            costs["cascade before"],
            costs["before covered"],
            costs["cascade (default)"],
            costs["default + gate"],
        )
        print(f"| {view} | {zxing:.2f} | {before:.2f} | {uncovered:.2f} | {now:.2f} | "
              f"{gate:.2f} | **{now / before:.2f}x** | **{now / uncovered:.2f}x** | "
              f"**{gate / zxing:.2f}x** | {gate / before:.2f}x |")  # fmt: skip
    print()


def print_sticker(conditions: list[str], scenes: int, frames: int, repeat: int) -> None:
    print(f"## A QR sticker in view: v2 token, {scenes} poses, read within {frames} frames\n")
    print("| condition | decoder | first look, no sticker | with the sticker: first frame | "
          "first look |")  # fmt: skip
    print("|---|---|---|---|---|")
    for condition in conditions:
        for name in sticker_decoders():
            without, beside = (
                first_look(condition, TokenFormat.V2, plain(sticker_decoders()[name]), scenes,
                           frames, sticker=sticker)
                for sticker in (None, STICKER)
            )  # fmt: skip
            print(f"| {condition} | {name} | **{without.within / scenes:.1%}** | "
                  f"{beside.first / scenes:.1%} | **{beside.within / scenes:.1%}** |")  # fmt: skip
            sys.stdout.flush()
    print()
    views = {
        "cab window + sticker, day": [
            as_gray(render_frame(Scene(None, sticker=STICKER), s)) for s in range(8)
        ],
        "cab window + sticker, night": [
            as_gray(render_frame(Scene(None, low_light=0.8, sticker=STICKER), s)) for s in range(8)
        ],
    }
    print(f"## Frames with only the sticker: mean CPU ms per frame over {repeat} frames\n")
    names = list(sticker_decoders())
    print(f"| view | {' | '.join(names)} | default + gate | default / before | "
          "whole frame / before | before / zxing |")  # fmt: skip
    print(f"|{'---|' * (len(names) + 5)}")
    for view, images in views.items():
        scans = {name: plain(d) for name, d in sticker_decoders().items()}
        scans["default + gate"] = gated(default_cascade())
        costs = {name: empty_cost_ms(scan, images, repeat) for name, scan in scans.items()}
        before = costs["before (blind beside a read)"]
        print(f"| {view} | {' | '.join(f'{c:.2f}' for c in costs.values())} | "
              f"**{costs['cascade (default)'] / before:.2f}x** | "
              f"{costs['default + whole frame beside a read'] / before:.2f}x | "
              f"{before / costs['zxing alone']:.2f}x |")  # fmt: skip
    print()


def print_held_costs(repeat: int) -> None:
    thumb = Scene(
        CodeFactory(SEED).make("token", 1_800_000_000).text,
        distance=1.4, angle_deg=20.0, roll_deg=-8.0, pitch_deg=6.0, occlusion=0.25,
    )  # fmt: skip
    frames = [as_gray(render_frame(thumb, s)) for s in range(8)]
    every_frame = CascadeDecoder(
        ZxingDecoder(),
        [CoveredRetry(retry_after=0) if p == "covered" else make_pass(p) for p in DEFAULT_PASSES],
    )
    scans = {
        "zxing alone": plain(ZxingDecoder()),
        "before covered": plain(uncovered_cascade()),
        "covered every frame": plain(every_frame),
        "cascade (default)": plain(default_cascade()),
    }
    costs = {name: empty_cost_ms(scan, frames, repeat) for name, scan in scans.items()}
    print(f"## A phone held still under a thumb (25%, not read): mean CPU ms per frame over "
          f"{repeat} frames\n")  # fmt: skip
    print(f"| {' | '.join(costs)} | every frame / before covered | default / before covered |")
    print(f"|{'---|' * (len(costs) + 2)}")
    before = costs["before covered"]
    print(f"| {' | '.join(f'{c:.2f}' for c in costs.values())} | "
          f"**{costs['covered every frame'] / before:.2f}x** | "
          f"**{costs['cascade (default)'] / before:.2f}x** |\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--empty", type=int, default=1800, help="empty frames timed")
    parser.add_argument("--held", type=int, default=300, help="held-thumb frames timed")
    parser.add_argument("--conditions", default="clear,realistic,hard")
    parser.add_argument("--tokens", default="v1,v2", help="token formats of the first look")
    parser.add_argument("--before", type=int, default=8, help="empty frames before each phone")
    parser.add_argument(
        "--gate-conditions", default="realistic,hard", help="first look with the gate on/off"
    )
    parser.add_argument(
        "--sticker-conditions", default="realistic,hard", help="first look with a sticker in view"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"which tables, of {','.join(PARTS)}"
    )
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench/first_look.py: one core, load average {loadavg:.1f} on {os.cpu_count()} "
          "CPUs\n")  # fmt: skip
    if "empty" in parts:
        print_empty_costs(args.empty)
    if "held" in parts:
        print_held_costs(args.held)
    if "first" in parts:
        formats = [TokenFormat[name.upper()] for name in args.tokens.split(",")]
        print_first_look(args.conditions.split(","), formats, args.scenes, args.frames)
    if "gate" in parts:
        print_gate_first_look(
            args.gate_conditions.split(","), args.scenes, args.frames, args.before
        )
    if "effects" in parts:
        print_hard_effects(args.scenes, args.frames)
    if "sticker" in parts:
        print_sticker(args.sticker_conditions.split(","), args.scenes, args.frames, args.empty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
