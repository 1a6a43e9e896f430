"""The lane's configuration: one typed model, loaded once from TOML, passed down.

No I/O happens in validation; `load_config` reads the file and reports every problem as
`file: section.key: what is wrong`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lane.auth.network_config import AlipaySection, RoutesSection, WeChatPaySection
from lane.auth.resolver import DEFAULT_KEEP_DAYS
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S, DEFAULT_SKEW_S
from lane.toml_model import read_toml, validate
from lane.wire.topics import check_lane_id
from scanner.health import CaptureSettings
from scanner.payload import classify

S = TypeVar("S", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file that cannot be used, with every problem listed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]


class LaneSection(_Section):
    id: Annotated[str, AfterValidator(check_lane_id)] = Field(
        "p01/l01", description="Lane id, plaza/lane, used in every topic"
    )
    mode: Literal["toll", "transit-entry", "transit-exit", "toll-entry", "toll-exit"] = Field(
        "toll",
        description="toll barrier lane, transit fare gate at entry or exit, or a closed road's "
        "entry or exit lane (docs/closed-road.md)",
    )
    data_dir: Path = Field(Path("var/lane"), description="Where the record queue and stores live")
    max_tries: int = Field(3, ge=1, le=10, description="Codes a driver may present per vehicle")
    default_class: int = Field(1, ge=0, description="Vehicle class when no classifier reading")
    passback_window_s: PositiveSeconds = Field(
        600, description="transit-entry: the same account may not tap in twice within this"
    )
    gate_hold_s: PositiveSeconds = Field(8, description="transit: close the gate if nobody passes")
    reread_s: PositiveSeconds = Field(
        30,
        description="transit: a code the gate approved, read again within this, is ignored"
        " (refused as used once its passenger is through the closed gate); one it declined is"
        " refused again",
    )
    pay_dwell_s: PositiveSeconds = Field(
        120, description="A vehicle at the pay point this long without paying: lane_stuck"
    )
    pass_dwell_s: PositiveSeconds = Field(
        60, description="A paid vehicle not through after this: lane_stuck, or paid_not_passed"
    )
    persist_dwell_s: PositiveSeconds = Field(10, description="A record write this long: lane_stuck")
    disk_answer_s: PositiveSeconds = Field(
        15,
        description="A record queue read or write unanswered this long (a hung disk):"
        " disk_not_answering; longer than SQLite's 10 s wait for a locked file",
    )
    disk_clear_s: PositiveSeconds = Field(
        30,
        description="disk_not_answering clears once no call has waited past disk_answer_s for"
        " this long (never less than disk_answer_s): a slow disk does not flap the lane",
    )
    probe_s: PositiveSeconds = Field(
        5, description="In fault: ask the device and retry a held command this often"
    )

    @property
    def plaza(self) -> str:
        return self.id.split("/", 1)[0]


class BrokerSection(_Section):
    host: str = Field("127.0.0.1", description="MQTT broker host")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    username: str | None = Field(None, description="Per-client user (production ACL)")
    password: str | None = Field(None, description="Password for username")
    tls_ca_file: Path | None = Field(
        None, description="Connect with TLS, verifying the broker against this CA file"
    )
    keepalive_s: int = Field(10, ge=2, le=600, description="MQTT keepalive")


class CameraSection(_Section):
    source: str = Field(
        "push",
        description="V4L2 index ('0'), rtsp/http URL, video file, image folder, or 'push' (sim)",
    )
    decoder: Literal["zxing", "pyzbar", "cascade"] = Field("cascade", description="QR decoder")
    workers: int = Field(2, ge=1, le=8, description="Decoder threads")
    dedup_window_s: PositiveSeconds = Field(3.0, description="Same code reported once within this")
    change_gate: bool = Field(
        True,
        description="Skip decoding frames that are the same view as the last one with nothing "
        "in it (a decode at least every second regardless; docs/scanner.md)",
    )
    static_codes: tuple[str, ...] = Field(
        (),
        description="Texts of the QR codes printed at the booth (a help sticker, an ad): never "
        "a driver's try (the scanner also learns the ones that stay put in view)",
    )
    rtsp_transport: Literal["tcp", "udp", "udp_multicast", "http"] = Field(
        "tcp", description="How an rtsp:// camera sends its stream (a UDP-only one needs udp)"
    )
    open_timeout_s: PositiveSeconds = Field(
        10.0, description="Open a stream and decode its first frame (covers a keyframe interval)"
    )
    blackout_s: PositiveSeconds = Field(
        2.0, description="Once frames flow, no usable frame for this long is a blackout"
    )
    retry_max_s: PositiveSeconds = Field(
        10.0, description="Longest wait between reopen attempts (a camera back is seen sooner)"
    )

    def capture(self) -> CaptureSettings:
        return CaptureSettings(
            self.rtsp_transport, self.open_timeout_s, self.blackout_s, self.retry_max_s
        )

    @field_validator("static_codes")
    @classmethod
    def _no_payment_code(cls, texts: tuple[str, ...]) -> tuple[str, ...]:
        """A code the lane could take payment from is never set aside as printed."""
        for n, text in enumerate(texts, start=1):
            if not text.strip():
                raise ValueError(f"code {n} is empty")
            kind = classify(text).kind
            if kind != "unknown":  # not echoed: a payment code is a credential
                raise ValueError(f"code {n} is a payment code ({kind}), not one printed")
        return texts

    @field_validator("source", mode="before")
    @classmethod
    def _device_index(cls, value: object) -> object:
        """`source = 0` (a bare V4L2 index, as people write it) means the string "0"."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        return value


class AuthSection(_Section):
    budget_s: PositiveSeconds = Field(2.0, description="Decision budget from the code being read")
    grace_s: float = Field(0.5, ge=0, le=10, description="Extra wait for the authoriser's answer")
    acquirer_url: str | None = Field(None, description="Base URL of the acquirer API")
    keyset: Path | None = Field(None, description="Issuer public keys (JSON key set file)")
    deny_list: Path | None = Field(None, description="Denied accounts file")
    skew_s: float = Field(
        DEFAULT_SKEW_S, ge=0, le=600, description="Clock skew allowed on token times"
    )
    max_token_lifetime_s: int = Field(
        DEFAULT_MAX_LIFETIME_S,
        gt=0,
        le=7 * 86400,  # a week is already far past any phone's token; more is a typo or a unit slip
        strict=True,  # integer seconds, as the token's own times: `true` or 900.5 is a mistake
        description="Refuse an offline token whose exp - iat is longer (issuers make 60 s ones)",
    )
    keyset_max_age_s: float = Field(
        86400 * 7, gt=0, le=86400 * 365, description="Alarm when the key set is older than this"
    )
    max_generation_step: int = Field(
        1_000_000,  # lane.auth.trust.DEFAULT_MAX_STEP
        ge=1,
        description="Largest deny list generation jump a lane adopts",
    )
    payments_keep_days: int = Field(
        DEFAULT_KEEP_DAYS,
        ge=1,  # yesterday's payments are reconciled this morning: they must still be here
        le=366,
        strict=True,  # whole days: `true` or 7.5 is a mistake
        description="Keep a final online payment in payments.sqlite3 this many days (refunds"
        " still owed are kept until made)",
    )
    refund_query_s: PositiveSeconds = Field(
        60.0,
        description="A refund the network took without finishing is asked about this long"
        " after, then twice as long each time, up to 30 times this (WeChat Pay's advice)",
    )
    offline_policy: Literal["deny", "floor"] = Field(
        "deny", description="When the acquirer is unreachable: deny, or accept up to a floor"
    )
    floor_limit_minor: int = Field(0, ge=0, description="Floor per vehicle, minor units")
    hourly_limit_minor: int = Field(0, ge=0, description="Floor per hour, minor units")
    account_secret: str | None = Field(
        None,
        min_length=16,
        description="Key for hashing wallet codes into account refs; default: made per lane",
    )
    share_used_tokens: bool = Field(True, description="Share used token ids with the plaza")
    lane_key: Path | None = Field(
        None,
        description="The lane's key signing what it tells other lanes (PEM, owner-only; "
        "`lane keys new --lane`)",
    )
    lane_kid: str | None = Field(None, description="auth.lane_key's kid in the key set")
    accept_unsigned_peers: bool = Field(
        False,
        description="Upgrading a plaza: take other lanes' unsigned messages (alarmed; never "
        "of a lane whose key is in the key set), and start without auth.lane_key",
    )
    routes: RoutesSection = Field(default_factory=RoutesSection)
    alipay: AlipaySection | None = Field(None, description="Alipay face-to-face payment")
    wechatpay: WeChatPaySection | None = Field(None, description="WeChat Pay code payment")

    @model_validator(mode="after")
    def _routed_networks_are_configured(self) -> AuthSection:
        for kind, network in self.routes.model_dump().items():
            if network != "acquirer" and getattr(self, network) is None:
                raise ValueError(f"routes.{kind} = {network!r} needs an [auth.{network}] section")
        return self


class FareSection(_Section):
    tariff: Path | None = Field(None, description="Tariff TOML file; default: flat built-in")
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency")
    flat: dict[str, int] = Field(
        default_factory=lambda: {"1": 250, "2": 400, "3": 650, "4": 900, "5": 150},
        description="Built-in flat fares by class, minor units",
    )

    @field_validator("flat")
    @classmethod
    def _classes_are_ints(cls, value: dict[str, int]) -> dict[str, int]:
        for key, amount in value.items():
            if not key.isdigit():
                raise ValueError(f"vehicle class {key!r} must be a number")
            if amount < 0:
                raise ValueError(f"fare for class {key} is negative")
        return value


class BarrierSection(_Section):
    ack_timeout_s: PositiveSeconds = Field(0.6, description="Wait for the device's ack")
    max_attempts: int = Field(3, ge=1, le=10, description="Sends of one command before FAULT")
    cmd_ttl_s: int = Field(3, ge=1, le=60, description="MQTT expiry and deadline of a command")
    move_s: PositiveSeconds = Field(
        4,
        description="The barrier reaches a commanded position within this, else barrier_stuck"
        " (open) or barrier_stuck_open (close)",
    )
    selftest_s: PositiveSeconds = Field(
        5,
        description="A boom that did not open is tried by the lane this long after (empty);"
        " one that did not close is closed again on the same backoff",
    )
    selftest_max_s: PositiveSeconds = Field(
        60, description="... then twice as long after each failed try, up to this"
    )

    @model_validator(mode="after")
    def _backoff_grows(self) -> BarrierSection:
        if self.selftest_max_s < self.selftest_s:
            raise ValueError("selftest_max_s must not be less than selftest_s")
        return self


class UplinkSection(_Section):
    max_bytes: int = Field(2_000_000_000, ge=100_000, description="Queue size bound on disk")
    high_water: float = Field(0.8, gt=0, lt=1, description="Alarm above this share of max_bytes")
    batch_size: int = Field(200, ge=1, le=5000, description="Records per uplink batch")
    stalled_after_s: PositiveSeconds = Field(
        300.0, description="Alarm uplink_stalled when the oldest unsent record is this old"
    )
    # The uplink's own road to the plaza, apart from the barrier link's (credentials, TLS and
    # keepalive stay [broker]'s): the simulator puts a link it can cut there.
    host: str | None = Field(
        None, min_length=1, description="Broker host the uplink connects to, when not [broker]'s"
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="Broker port the uplink connects to, when not [broker]'s"
    )


class MetricsSection(_Section):
    port: int | None = Field(None, ge=0, le=65535, description="Prometheus/health HTTP port")
    host: str = Field("127.0.0.1", description="Bind address of the metrics endpoint")


class RoadSection(_Section):
    """A closed road's rules (docs/closed-road.md): the entry lane's pass key, the exit lane's
    fare exceptions."""

    pass_key: Path | None = Field(
        None, description="toll-entry: the plaza's pass signing key (PEM, owner-only)"
    )
    pass_kid: str | None = Field(
        None, min_length=1, max_length=64, description="toll-entry: its kid in the key set"
    )
    max_trip_s: float = Field(
        86_400, gt=0, le=30 * 86_400, description="toll-exit: longer on the road is over_time"
    )
    over_time: Literal["farthest", "trip"] = Field(
        "farthest", description="toll-exit: over the limit pays the farthest fare, or the trip's"
    )
    u_turn_window_s: float = Field(
        1800, ge=0, le=86_400, description="toll-exit: back at the entry plaza within this: U-turn"
    )
    pass_lifetime_days: float = Field(
        30, gt=0, le=366, description="toll-exit: an older pass is refused as expired"
    )
    attendant_confirms: bool = Field(
        True, description="toll-exit: a suspect fare waits for the attendant's confirm_fare"
    )
    print_retry_s: PositiveSeconds = Field(
        3.0, description="toll-entry: a ticket not acknowledged by the printer is sent again"
    )
    plate_wait_s: float = Field(
        0.0, ge=0, le=5, description="toll-entry: wait this long after arrival for the plate"
    )

    @model_validator(mode="after")
    def _window_within_limit(self) -> RoadSection:
        if self.u_turn_window_s >= self.max_trip_s:
            raise ValueError(
                f"u_turn_window_s ({self.u_turn_window_s:g}) must be shorter than "
                f"max_trip_s ({self.max_trip_s:g})"
            )
        return self


class MetroSection(_Section):
    """A metro line's gates (docs/closed-road.md#metro): share the line's taps, and price a
    `transit-exit` gate's fare by the passenger's tap-in station."""

    line: str | None = Field(
        None,
        pattern=r"^[\w-]{1,32}$",
        description="the gate's line; set: its taps are shared on line/{line}/taps, and a "
        "transit-exit gate prices by tap-in with an entry_exit [transit] tariff",
    )
    max_trip_s: float = Field(
        14_400, gt=0, le=2 * 86_400, description="transit-exit: longer inside is over_time"
    )
    over_time: Literal["farthest", "trip"] = Field(
        "farthest", description="transit-exit: over the limit pays the maximum fare, or the trip's"
    )
    same_station_window_s: float = Field(
        1200, ge=0, le=86_400, description="transit-exit: out where in within this: same station"
    )

    @model_validator(mode="after")
    def _window_within_limit(self) -> MetroSection:
        if self.same_station_window_s >= self.max_trip_s:
            raise ValueError(
                f"same_station_window_s ({self.same_station_window_s:g}) must be shorter than "
                f"max_trip_s ({self.max_trip_s:g})"
            )
        return self

    @property
    def retention_s(self) -> float:
        """How long a gate keeps a tap-in: an exit after the limit is still known as over time."""
        return 2 * self.max_trip_s


class LaneConfig(_Section):
    lane: LaneSection = Field(default_factory=LaneSection)
    broker: BrokerSection = Field(default_factory=BrokerSection)
    camera: CameraSection = Field(default_factory=CameraSection)
    auth: AuthSection = Field(default_factory=AuthSection)
    fares: FareSection = Field(default_factory=FareSection)
    barrier: BarrierSection = Field(default_factory=BarrierSection)
    uplink: UplinkSection = Field(default_factory=UplinkSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    road: RoadSection = Field(default_factory=RoadSection)
    metro: MetroSection = Field(default_factory=MetroSection)

    @model_validator(mode="after")
    def _road_lanes_have_what_they_need(self) -> LaneConfig:
        mode = self.lane.mode
        if mode == "toll-entry" and (self.road.pass_key is None or self.road.pass_kid is None):
            raise ValueError(
                "lane.mode 'toll-entry' signs entry passes: set road.pass_key (the plaza's "
                "PEM key, `lane keys new --plaza`) and road.pass_kid"
            )
        if mode == "toll-exit" and self.fares.tariff is None:
            raise ValueError(
                "lane.mode 'toll-exit' prices trips: set fares.tariff to an entry_exit tariff"
            )
        if self.metro_pricing and self.fares.tariff is None:
            raise ValueError(
                "lane.mode 'transit-exit' with metro.line prices by tap-in: set fares.tariff "
                "to an entry_exit [transit] tariff (or leave metro.line unset for a flat fare)"
            )
        return self

    @property
    def uplink_broker(self) -> BrokerSection:
        """Where the uplink connects: [broker], with [uplink]'s host and port where given."""
        given = {"host": self.uplink.host, "port": self.uplink.port}
        return self.broker.model_copy(update={k: v for k, v in given.items() if v is not None})

    @property
    def talks_to_peers(self) -> bool:
        """Does this lane tell other lanes something (plaza sharing, a metro line's taps, a
        closed road's plate bindings)? Then it signs it (auth.lane_key)."""
        gate = self.lane.mode in ("transit-entry", "transit-exit") and self.metro.line is not None
        return self.auth.share_used_tokens or gate or self.lane.mode == "toll-entry"

    @property
    def metro_pricing(self) -> bool:
        """A transit-exit gate on a line prices by the passenger's tap-in."""
        return self.lane.mode == "transit-exit" and self.metro.line is not None


def parse_config(data: dict[str, object], source: str = "<config>") -> LaneConfig:
    return validate(LaneConfig, data, source, ConfigError)


def load_config(path: Path) -> LaneConfig:
    config = parse_config(read_toml(path, ConfigError), str(path))
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: LaneConfig, base: Path) -> LaneConfig:
    """Relative paths in a config file are relative to that file, not to the cwd."""

    def rel(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    lane = config.lane.model_copy(update={"data_dir": rel(config.lane.data_dir)})
    auth = config.auth.model_copy(
        update={
            "keyset": rel(config.auth.keyset),
            "deny_list": rel(config.auth.deny_list),
            "lane_key": rel(config.auth.lane_key),
            "alipay": _rel_files(config.auth.alipay, rel),
            "wechatpay": _rel_files(config.auth.wechatpay, rel),
        }
    )
    fares = config.fares.model_copy(update={"tariff": rel(config.fares.tariff)})
    broker = config.broker.model_copy(update={"tls_ca_file": rel(config.broker.tls_ca_file)})
    road = config.road.model_copy(update={"pass_key": rel(config.road.pass_key)})
    return config.model_copy(
        update={"lane": lane, "auth": auth, "fares": fares, "broker": broker, "road": road}
    )


def _rel_files(section: S | None, rel: Callable[[Path | None], Path | None]) -> S | None:
    """The section with every `*_file` path made relative to the config file."""
    if section is None:
        return None
    files = {k: rel(v) for k, v in section if k.endswith("_file") and isinstance(v, Path)}
    return section.model_copy(update=files)
