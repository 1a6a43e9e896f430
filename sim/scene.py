"""What the synthetic lane camera sees: a `Scene` (one phone pose and its conditions) and the
`Conditions` presets a traffic generator samples scenes from.

Pure data and pure sampling: no rendering, no clock; randomness comes from the caller's rng.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

# Pixel width of the code across (quiet zone included) when the phone is held 1 m from the
# camera, for a 1280 px wide frame. A ~4 cm code on a 6 mm lens gives roughly this; what matters
# is that 0.6 m .. 2.0 m spans the ~400 .. ~120 px range seen at real lanes.
CODE_PX_AT_1M = 240.0
REFERENCE_WIDTH = 1280

Rng = np.random.Generator | random.Random | int | None


def as_generator(rng: Rng) -> np.random.Generator:
    """One numpy Generator from whatever the caller injects (Generator, random.Random, seed).

    A `random.Random` is consumed for 64 bits, so the same Random state gives the same frames.
    `None` means fresh OS entropy, for interactive use only.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


@dataclass(frozen=True)
class Scene:
    """One view of the lane window. Frozen and hashable: the renderer caches per scene.

    code_text   text of the QR on the phone, or None for an empty window (no phone shown)
    distance    metres from the camera; code size across = CODE_PX_AT_1M / distance (scaled to
                the frame width), so 0.6 m ~ 400 px and 2.0 m ~ 120 px at 1280x720
    angle_deg   yaw of the phone away from facing the camera (perspective foreshortening)
    blur_px     length of the motion-blur streak in output pixels (0 = sharp)
    glare       0..1 strength of the bright elliptical reflection on the screen glass
    low_light   0..1: 0 daylight; 1 night (dark surroundings, dimmed screen, high sensor gain)
    dark_mode   the app shows light modules on a dark background (an inverted code)
    occlusion   fraction of the code symbol covered by a thumb over its bottom-right corner
                (the one corner without a finder pattern); level M recovers up to ~15% of
                codewords, so ~0.08 still reads and >= 0.25 does not
    blackout    the camera delivers (near) black frames: a camera fault
    roll_deg    in-plane rotation of the phone
    pitch_deg   tilt of the phone top towards/away from the camera
    blur_dir_deg direction of the motion streak (0 = horizontal)
    glare_at    centre of the reflection in screen coordinates (0..1, 0..1)
    position    centre of the code in the cab window (0..1, 0..1 of the window rectangle)
    sticker     text of a printed QR sticker always in view (on the booth, an ad), or None;
                it stays when the phone goes (`without_code`)
    """

    code_text: str | None
    distance: float = 1.0
    angle_deg: float = 0.0
    blur_px: float = 0.0
    glare: float = 0.0
    low_light: float = 0.0
    dark_mode: bool = False
    occlusion: float = 0.0
    blackout: bool = False
    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    blur_dir_deg: float = 0.0
    glare_at: tuple[float, float] = (0.35, 0.3)
    position: tuple[float, float] = (0.5, 0.5)
    sticker: str | None = None

    def __post_init__(self) -> None:
        if not 0.2 <= self.distance <= 10.0:
            raise ValueError(f"distance {self.distance} m outside 0.2..10")
        for name in ("glare", "low_light", "occlusion"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value} outside 0..1")
        if self.blur_px < 0:
            raise ValueError(f"blur_px {self.blur_px} is negative")
        if not -80.0 <= self.angle_deg <= 80.0 or not -80.0 <= self.pitch_deg <= 80.0:
            raise ValueError("angle_deg and pitch_deg must stay within +-80 degrees")

    def code_px(self, frame_width: int = REFERENCE_WIDTH) -> float:
        """Width of the code across (quiet zone included) before perspective, in pixels."""
        return CODE_PX_AT_1M / self.distance * frame_width / REFERENCE_WIDTH

    def without_code(self) -> Scene:
        return replace(self, code_text=None)


Range = tuple[float, float]


@dataclass(frozen=True)
class Conditions:
    """Ranges scenes are drawn from. Each effect is present with probability `*_p`, then drawn
    uniformly from its range; angles get a random sign."""

    name: str
    distance: Range
    angle_deg: Range
    roll_deg: float  # +- bound
    pitch_deg: float  # +- bound
    blur_p: float
    blur_px: Range
    glare_p: float
    glare: Range
    low_light_p: float
    low_light: Range
    dark_mode_p: float
    occlusion_p: float
    occlusion: Range

    @staticmethod
    def preset(name: str) -> Conditions:
        try:
            return PRESETS[name]
        except KeyError:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown conditions preset {name!r} (known: {known})") from None

    def sample(self, code_text: str | None, rng: Rng) -> Scene:
        """Draw one scene. Always draws the same number of values, so a seed reproduces it."""
        g = as_generator(rng)
        u = [float(x) for x in g.random(19)]

        def pick(r: Range, x: float) -> float:
            return r[0] + (r[1] - r[0]) * x

        def sign(x: float) -> float:
            return 1.0 if x < 0.5 else -1.0

        low_light = pick(self.low_light, u[13]) if u[12] < self.low_light_p else 0.0
        # Night means longer exposures: the same motion leaves a longer streak.
        blur = pick(self.blur_px, u[6]) * (1.0 + 0.8 * low_light) if u[5] < self.blur_p else 0.0
        return Scene(
            code_text=code_text,
            distance=pick(self.distance, u[0]),
            angle_deg=sign(u[2]) * pick(self.angle_deg, u[1]),
            roll_deg=(2 * u[3] - 1) * self.roll_deg,
            pitch_deg=(2 * u[4] - 1) * self.pitch_deg,
            blur_px=blur,
            blur_dir_deg=(2 * u[7] - 1) * 30.0,  # mostly along the lane: the car creeps
            glare=pick(self.glare, u[9]) if u[8] < self.glare_p else 0.0,
            glare_at=(0.2 + 0.6 * u[10], 0.15 + 0.7 * u[11]),
            low_light=low_light,
            dark_mode=bool(u[14] < self.dark_mode_p),
            occlusion=pick(self.occlusion, u[16]) if u[15] < self.occlusion_p else 0.0,
            position=(0.3 + 0.4 * u[17], 0.35 + 0.3 * u[18]),
        )


PRESETS: dict[str, Conditions] = {
    # A driver who stops, holds the phone square to the camera, in daylight.
    "clear": Conditions(
        name="clear",
        distance=(0.65, 1.1),
        angle_deg=(0.0, 12.0),
        roll_deg=5.0,
        pitch_deg=8.0,
        blur_p=0.0,
        blur_px=(0.0, 0.0),
        glare_p=0.0,
        glare=(0.0, 0.0),
        low_light_p=0.0,
        low_light=(0.0, 0.0),
        dark_mode_p=0.2,
        occlusion_p=0.0,
        occlusion=(0.0, 0.0),
    ),
    # The everyday mix: a rolling car, reflections, dusk, a thumb near the corner.
    "realistic": Conditions(
        name="realistic",
        distance=(0.6, 1.8),
        angle_deg=(0.0, 35.0),
        roll_deg=12.0,
        pitch_deg=15.0,
        blur_p=0.45,
        blur_px=(1.0, 4.5),
        glare_p=0.3,
        glare=(0.1, 0.8),
        low_light_p=0.3,
        low_light=(0.2, 0.8),
        dark_mode_p=0.25,
        occlusion_p=0.2,
        occlusion=(0.02, 0.06),
    ),
    # Night, a car that does not stop, a steep angle, strong glare, a thumb over the code.
    "hard": Conditions(
        name="hard",
        distance=(1.2, 2.2),
        angle_deg=(15.0, 50.0),
        roll_deg=25.0,
        pitch_deg=25.0,
        blur_p=0.7,
        blur_px=(2.0, 7.0),
        glare_p=0.5,
        glare=(0.5, 1.0),
        low_light_p=0.6,
        low_light=(0.4, 1.0),
        dark_mode_p=0.3,
        occlusion_p=0.3,
        occlusion=(0.06, 0.3),
    ),
}
