"""Scenarios: a simulator run described in a TOML file, validated with clear errors.

A scenario says how much traffic arrives (rate, vehicle classes, driver behaviours, the share of
bad codes), under which camera conditions, in which lane mode, on how many lanes, for how long,
and which faults happen when (`[[faults]]`: at `at_s` apply `fault`, at `clear_at_s` clear it).
Times are simulated seconds: `--speed 10` plays a 15-minute scenario in 90 s.

`load_scenario(name_or_path)` finds a shipped scenario by name (sim/scenarios/NAME.toml) or reads
a file; every problem is reported as `file: key: what is wrong`, all of them at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sim.faults import FAULTS, FaultError, TimelineStep, check_params
from sim.traffic import BEHAVIOURS, VALID_KINDS, Mix

SCENARIO_DIR = Path(__file__).parent / "scenarios"
# Behaviours in which the driver shows at least one bad code (replayed, forged, garbage...).
BAD_BEHAVIOURS = frozenset(b for b, codes in BEHAVIOURS.items() if set(codes) - VALID_KINDS)


class ScenarioError(ValueError):
    """A scenario that cannot be run, with every problem on its own line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrafficSection(_Model):
    arrivals_per_hour: float = Field(
        900.0, gt=0, le=36_000, description="Mean arrivals per hour at the plaza (Poisson)"
    )
    classes: dict[str, float] = Field(
        default_factory=lambda: {str(k): v for k, v in Mix().classes.items()},
        description="Vehicle class -> weight",
    )
    behaviours: dict[str, float] = Field(
        default_factory=lambda: dict(Mix().behaviours),
        description="Driver behaviour (sim.traffic.BEHAVIOURS) -> weight",
    )
    bad_code_share: float | None = Field(
        None, ge=0, le=1, description="Rescale behaviours so this share shows a bad code first"
    )

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if not key.isdigit() or not 0 <= int(key) <= 20:
                raise ValueError(f"vehicle class {key!r} must be a number 0..20")
            if weight < 0:
                raise ValueError(f"weight of class {key} is negative")
        if not any(w > 0 for w in value.values()):
            raise ValueError("at least one class needs a positive weight")
        return value

    @field_validator("behaviours")
    @classmethod
    def _behaviours(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if key not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {key!r}; known: {', '.join(BEHAVIOURS)}")
            if weight < 0:
                raise ValueError(f"weight of {key} is negative")
        if not any(w > 0 for w in value.values()):
            raise ValueError("at least one behaviour needs a positive weight")
        return value


class AcquirerSection(_Model):
    """The acquirer's everyday behaviour in this scenario (faults come on top)."""

    latency_ms: float = Field(0.0, ge=0, le=60_000, description="Fixed latency per call")
    latency_median_ms: float | None = Field(None, gt=0, le=60_000, description="Lognormal median")
    latency_p99_ms: float | None = Field(None, gt=0, le=120_000, description="Lognormal p99")
    decline_rate: float = Field(0.0, ge=0, le=1, description="Share of payments declined")
    pending_rate: float = Field(0.0, ge=0, le=1, description="Share answered PENDING first")
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of calls answered HTTP 500")

    @model_validator(mode="after")
    def _check(self) -> AcquirerSection:
        if (self.latency_median_ms is None) != (self.latency_p99_ms is None):
            raise ValueError("latency_median_ms and latency_p99_ms go together")
        median, p99 = self.latency_median_ms, self.latency_p99_ms
        if median is not None and p99 is not None and median > p99:
            raise ValueError("latency_median_ms must not exceed latency_p99_ms")
        return self


class FaultEntry(_Model):
    at_s: float = Field(ge=0, description="Simulated seconds from the start")
    fault: str = Field(description="A fault name (sim.faults.FAULTS)")
    clear_at_s: float | None = Field(None, description="When to clear it (after at_s)")
    lane: int | None = Field(None, ge=1, description="1-based lane; default: every lane")
    params: dict[str, float | str] = Field(default_factory=dict, description="Fault parameters")

    @model_validator(mode="after")
    def _check(self) -> FaultEntry:
        try:
            spec = FAULTS[self.fault]
        except KeyError:
            raise ValueError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}") from None
        if self.clear_at_s is not None:
            if spec.one_shot:
                raise ValueError(f"{self.fault} is a one-shot event: clear_at_s makes no sense")
            if self.clear_at_s <= self.at_s:
                raise ValueError(f"clear_at_s ({self.clear_at_s}) must be after at_s ({self.at_s})")
        if self.lane is not None and spec.scope == "plaza":
            raise ValueError(f"{self.fault} hits the whole plaza: it takes no lane")
        try:
            check_params(self.fault, self.params)
        except FaultError as exc:
            raise ValueError(str(exc)) from None
        return self


class Scenario(_Model):
    name: str = Field(min_length=1, max_length=80, description="Short name")
    description: str = Field("", description="What the scenario shows")
    mode: Literal["toll", "transit-entry", "transit-exit"] = Field("toll", description="Lane mode")
    lanes: int = Field(1, ge=1, le=16, description="Lanes in the plaza")
    duration_s: float | None = Field(None, gt=0, le=7 * 86400, description="Simulated seconds")
    vehicles: int | None = Field(None, ge=1, le=1_000_000, description="Stop after this many")
    seed: int = Field(1, description="Traffic, codes and camera seed")
    speed: float | None = Field(None, gt=0, le=1000, description="Default speed-up")
    conditions: Literal["clear", "realistic", "hard"] = Field(
        "realistic", description="Camera conditions preset"
    )
    traffic: TrafficSection = Field(default_factory=TrafficSection)
    acquirer: AcquirerSection = Field(default_factory=AcquirerSection)
    faults: list[FaultEntry] = Field(default_factory=list, description="The fault timeline")

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.duration_s is None and self.vehicles is None:
            raise ValueError("give duration_s or vehicles (or both): when does the run end?")
        for i, entry in enumerate(self.faults, 1):
            if entry.lane is not None and entry.lane > self.lanes:
                raise ValueError(f"faults #{i}: lane {entry.lane} but the plaza has {self.lanes}")
        mix_behaviours(self.traffic.behaviours, self.traffic.bad_code_share)  # raises if empty
        return self

    def mix(self) -> Mix:
        return Mix(
            arrivals_per_hour=self.traffic.arrivals_per_hour,
            classes={int(k): w for k, w in self.traffic.classes.items()},
            behaviours=mix_behaviours(self.traffic.behaviours, self.traffic.bad_code_share),
        )

    def timeline(self) -> list[TimelineStep]:
        return [
            TimelineStep(f.at_s, f.fault, f.clear_at_s, f.lane, dict(f.params))
            for f in sorted(self.faults, key=lambda f: f.at_s)
        ]


def mix_behaviours(behaviours: Mapping[str, float], bad_share: float | None) -> dict[str, float]:
    """Weights with the bad-code behaviours scaled to `bad_share` of the total (None: as given).

    With no bad behaviour listed, the default mix's bad ones are used in its proportions."""
    weights = {k: w for k, w in behaviours.items() if w > 0}
    if bad_share is None:
        return weights
    good = {k: w for k, w in weights.items() if k not in BAD_BEHAVIOURS}
    bad = {k: w for k, w in weights.items() if k in BAD_BEHAVIOURS}
    if bad_share > 0 and not bad:
        bad = {k: w for k, w in Mix().behaviours.items() if k in BAD_BEHAVIOURS}
    if bad_share < 1 and not good:
        raise ValueError("bad_code_share < 1 needs at least one behaviour with only good codes")
    out: dict[str, float] = {}
    for group, share in ((good, 1.0 - bad_share), (bad, bad_share)):
        total = sum(group.values())
        if share > 0:
            out.update({k: share * w / total for k, w in group.items()})
    return out


def shipped() -> list[str]:
    """Names of the scenarios that come with the simulator."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    candidate = SCENARIO_DIR / f"{name_or_path}.toml"
    if "/" not in name_or_path and not name_or_path.endswith(".toml") and candidate.exists():
        return candidate
    path = Path(name_or_path)
    if path.exists():
        return path
    raise ScenarioError(
        f"{name_or_path}: no such scenario file, nor a shipped scenario"
        f" (shipped: {', '.join(shipped())})"
    )


def load_scenario(name_or_path: str) -> Scenario:
    path = resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return scenario_from(data, source)


def scenario_from(data: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError("\n".join(_problems(exc, source))) from None


def _problems(exc: ValidationError, source: str) -> list[str]:
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        loc = list(err["loc"])
        for i, p in enumerate(loc):
            if isinstance(p, int) and i > 0 and loc[i - 1] == "faults":
                parts[-1] = f"faults #{p + 1}"  # the n-th [[faults]] table, counted from 1
            else:
                parts.append(str(p))
        where = ".".join(parts) or "(top)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing (required)"
        lines.append(f"{source}: {where}: {msg}")
    return lines
