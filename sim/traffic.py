"""Traffic: who arrives when, in which vehicle class, showing which codes. Pure and seeded."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# What a driver does: the kinds of code shown in order (a retry after a refusal is the next one).
BEHAVIOURS: dict[str, tuple[str, ...]] = {
    "token": ("token",),
    "alipay": ("alipay",),
    "wechat": ("wechat",),
    "unionpay": ("unionpay",),
    "emv": ("emv",),
    "garbage_then_token": ("garbage", "token"),
    "replay_then_token": ("replay", "token"),
    "forged_then_alipay": ("forged", "alipay"),
    "expired_then_token": ("expired", "token"),
    "only_bad": ("garbage", "forged", "expired"),
}
VALID_KINDS = frozenset({"token", "alipay", "wechat", "unionpay", "emv"})


@dataclass(frozen=True)
class Mix:
    arrivals_per_hour: float = 900.0
    classes: dict[int, float] = field(
        default_factory=lambda: {1: 0.72, 2: 0.14, 3: 0.07, 4: 0.04, 5: 0.03}
    )
    behaviours: dict[str, float] = field(
        default_factory=lambda: {
            "token": 0.50,
            "alipay": 0.15,
            "wechat": 0.12,
            "emv": 0.08,
            "garbage_then_token": 0.05,
            "replay_then_token": 0.04,
            "forged_then_alipay": 0.02,
            "expired_then_token": 0.02,
            "only_bad": 0.02,
        }
    )

    def __post_init__(self) -> None:
        unknown = set(self.behaviours) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown driver behaviours: {sorted(unknown)}")
        if self.arrivals_per_hour <= 0:
            raise ValueError("arrivals_per_hour must be positive")


@dataclass(frozen=True)
class Driver:
    index: int
    arrival_s: float  # offset from the start of the run, before any speed-up
    vehicle_class: int
    behaviour: str
    codes: tuple[str, ...]

    def pays(self, max_tries: int) -> bool:
        """Whether a valid code is among those the lane will look at."""
        return any(kind in VALID_KINDS for kind in self.codes[:max_tries])


def plan(n: int, seed: int, mix: Mix) -> list[Driver]:
    """N drivers with Poisson arrivals; the same seed gives the same traffic."""
    rng = random.Random(seed)
    drivers = []
    t = 0.0
    classes, class_weights = zip(*mix.classes.items(), strict=True)
    names, weights = zip(*mix.behaviours.items(), strict=True)
    for i in range(n):
        t += rng.expovariate(mix.arrivals_per_hour / 3600.0)
        behaviour = rng.choices(names, weights)[0]
        if i == 0 and behaviour.startswith("replay"):
            behaviour = "token"  # nothing to replay yet
        drivers.append(
            Driver(
                index=i,
                arrival_s=t,
                vehicle_class=rng.choices(classes, class_weights)[0],
                behaviour=behaviour,
                codes=BEHAVIOURS[behaviour],
            )
        )
    return drivers
