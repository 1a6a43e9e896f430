"""`lane check-config lane.toml` and `lane doctor --config lane.toml`.

check-config reads every file the lane would read at start (the config, the tariff, the issuer
key set, the deny list) and reports every problem as `file: key: what is wrong`, without
touching the network, the camera or the data directory: safe to run on a workstation before
copying files to a lane. Exit 0 when the lane would start with these files, 1 when not.
Warnings (a stale key set, no acquirer, the simulator's camera) do not change the exit code.
Given several configs (a metro line's gates), each is checked alone, then the line's entry
fares against its exits' tariff (`check_line`), which no one gate's files can tell.

doctor probes what the files cannot tell: the camera, the broker, the acquirer, the disk and
the clock (see lane/doctor.py). Exit 1 when any probe FAILs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lane.auth.deny import DenyList, DenyListError, load_deny_list
from lane.auth.entry_exit import EntryExitMatrix
from lane.auth.fares import Tariff, TariffError, load_tariff
from lane.auth.issuer import PlazaPassKey, load_lane_key
from lane.auth.keys import KeySet, KeySetError, KeyUse, keyset_stale, load_keyset
from lane.auth.netkeys import KeyFileError
from lane.auth.networks import NetworkKeys
from lane.auth.peer_messages import own_key_missing
from lane.auth.tokens import PHONE_TOKEN_TTL_S
from lane.auth.trust import judge_deny, judge_keyset
from lane.auth.wechatpay_trust import CertificateFiles
from lane.config import ConfigError, LaneConfig, load_config
from lane.utc_text import utc_text


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: LaneConfig | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_config(path: Path, now: float | None = None) -> Findings:
    """Everything wrong (problems) or doubtful (warnings) with a lane's files. `now`: wall time."""
    found = Findings()
    try:
        config = load_config(path)
    except ConfigError as exc:
        found.problems += str(exc).splitlines()
        return found
    found.config = config
    wall = time.time() if now is None else now
    _check_tariff(config, path, found)
    _check_metro(config, path, found)
    _check_keys(config, path, wall, found)
    _check_pass_key(config, found)
    _check_lane_key(config, wall, found)
    if config.auth.deny_list is not None:
        try:
            deny = load_deny_list(config.auth.deny_list)
        except DenyListError as exc:
            found.problems.append(str(exc))
        else:
            step = config.auth.max_generation_step
            judged = judge_deny(DenyList.empty(), deny, wall, config.auth.skew_s, step)
            if judged.refused:
                found.problems.append(f"{config.auth.deny_list}: refused: {judged.detail}")
    _check_settings(config, path, found)
    _check_networks(config, path, wall, found)
    return found


def _check_networks(config: LaneConfig, path: Path, wall: float, found: Findings) -> None:
    """The payment networks' key files load, and the fares are in the networks' currency."""
    try:
        keys = NetworkKeys.load(config.auth)
    except KeyFileError as exc:
        found.problems.append(str(exc))
    else:
        wx = config.auth.wechatpay
        held = None if keys.wechatpay is None else keys.wechatpay.platform
        if wx is not None and isinstance(held, CertificateFiles):
            newest = held.configured.newest_expiry()
            if newest is not None and newest < wall:
                found.warnings.append(
                    f"{wx.platform_certificate_file}: every certificate in it expired (the last"
                    f" {utc_text(newest)}): the lane verifies WeChat Pay only with certificates"
                    " it downloaded before; install the current platform certificate"
                )
    routes = config.auth.routes
    networks = {routes.alipay, routes.wechat, routes.unionpay, routes.emv} - {"acquirer"}
    currency = config.fares.currency
    if config.fares.tariff is not None:
        try:
            currency = load_tariff(config.fares.tariff).currency
        except TariffError:
            return  # already reported by the tariff check
    if networks and currency != "CNY":
        found.problems.append(
            f"{path}: auth.routes: {', '.join(sorted(networks))} charge in CNY, but the fares "
            f"are in {currency}"
        )


def _check_tariff(config: LaneConfig, path: Path, found: Findings) -> None:
    if config.fares.tariff is None:
        found.warnings.append(f"{path}: fares.tariff: not set; the built-in flat fares apply")
        return
    try:
        tariff = load_tariff(config.fares.tariff)
    except TariffError as exc:
        found.problems += str(exc).splitlines()  # every problem of the file, one per line
        return
    mode = config.lane.mode
    wanted = "toll" if mode.startswith("toll") else "transit"
    if tariff.kind != wanted:
        found.problems.append(
            f"{config.fares.tariff}: [{tariff.kind}]: this tariff is for {tariff.kind} lanes, "
            f"but {path} sets lane.mode = {mode!r} (needs a [{wanted}] tariff)"
        )
    exit_lane = mode == "toll-exit" or config.metro_pricing
    if exit_lane and tariff.entry_exit is None:
        what = (
            "a toll-exit lane prices trips"
            if mode == "toll-exit"
            else ("a transit-exit gate with metro.line prices by tap-in station")
        )
        found.problems.append(
            f"{config.fares.tariff}: [{tariff.kind}] mode: {what} by entry and exit: it needs "
            f"mode = 'entry_exit' (deploy/tariff.road.example.toml, docs/closed-road.md#metro)"
        )
    elif not exit_lane and tariff.entry_exit is not None:
        found.problems.append(
            f"{config.fares.tariff}: mode: 'entry_exit' prices the exits of a closed road or a "
            f"metro line, which lane.mode {mode!r} in {path} does not charge (use 'toll-exit', "
            "or 'transit-exit' with metro.line)"
        )
    elif tariff.entry_exit is not None:
        _check_road(config, path, tariff, tariff.entry_exit, found)


def _check_metro(config: LaneConfig, path: Path, found: Findings) -> None:
    """The gates of a line find a passenger's tap-in by the account reference of the code:
    a payment code's is keyed by `auth.account_secret`, which must be the same at every gate
    (a lane without one makes its own key, and its references match no other gate's)."""
    fare_gate = config.lane.mode in ("transit-entry", "transit-exit")
    if config.metro.line is None or not fare_gate or config.auth.account_secret is not None:
        return
    found.warnings.append(
        f"{path}: auth.account_secret: not set, so this gate's payment-code account references "
        f"are its own: a payment code's tap-in on line {config.metro.line!r} would not be "
        "found at another gate (tokens are); set the same secret at every gate of the line"
    )


@dataclass(frozen=True)
class EntryFares:
    """What a metro entry gate charges a tap-in, by class, and where that is set."""

    where: str  # `file: key` of the fares, the class appended
    currency: str
    amounts: dict[int, int]


def entry_fares(config: LaneConfig, path: Path) -> EntryFares | None:
    """An entry gate's fares, as `lane.daemon.rules_from` charges them (None: its tariff does
    not load or is not a gate's, already a problem of its own check)."""
    if config.fares.tariff is None:
        amounts = {int(k): v for k, v in config.fares.flat.items()}
        return EntryFares(f"{path}: fares.flat", config.fares.currency, amounts)
    try:
        tariff = load_tariff(config.fares.tariff)
    except TariffError:
        return None
    if tariff.kind != "transit" or tariff.mode not in {"flat", "zero_at_entry"}:
        return None
    amounts = {c: tariff.fare(c).amount_minor for c in tariff.classes}
    return EntryFares(f"{config.fares.tariff}: transit.fares", tariff.currency, amounts)


def check_line(configs: Sequence[tuple[Path, LaneConfig]]) -> list[str]:
    """Warnings on the gates of a metro line checked together (`lane check-config` given
    several configs): an entry gate's fare above a trip's fare at the line's exits (the exit
    keeps 0, flagged `entry_overpaid:`, and the excess is never refunded), or in another
    currency than the exits' tariff (not taken off the trip: flagged `entry_currency:`)."""
    warnings: list[str] = []
    for path, config in configs:
        line = config.metro.line
        if config.lane.mode != "transit-entry" or line is None:
            continue
        fares = entry_fares(config, path)
        exits = {c.fares.tariff for _, c in configs if c.metro_pricing and c.metro.line == line}
        for tariff_path in sorted(t for t in exits if t is not None):
            try:
                tariff = load_tariff(tariff_path)
            except TariffError:
                continue  # a problem of that gate's check
            if fares is not None and tariff.entry_exit is not None:
                warnings += _entry_against_trips(config.lane.plaza, fares, tariff_path, tariff)
    return warnings


def _entry_against_trips(
    station: str, fares: EntryFares, tariff_path: Path, tariff: Tariff
) -> list[str]:
    assert tariff.entry_exit is not None
    charged = {c: a for c, a in sorted(fares.amounts.items()) if a > 0}
    if charged and fares.currency != tariff.currency:
        return [
            f"{fares.where}: in {fares.currency}, but {tariff_path} prices the line's trips in "
            f"{tariff.currency}: the exits do not take the entry fare off (the rider pays it and "
            f"the whole trip; flagged entry_currency:{fares.currency}); charge the line's "
            "currency at its entry gates"
        ]
    warnings = []
    for n, version in enumerate(tariff.entry_exit.versions):
        for c, amount in charged.items():
            trips = {x: version.cells.get((station, x, c)) for x in version.exits}
            below = [
                f"{x} = {fare}" for x, fare in trips.items() if fare is not None and fare < amount
            ]
            if below:
                warnings.append(
                    f"{fares.where}.{c} = {amount}: above the trip's fare in {tariff_path}: "
                    f"{tariff.kind}.version[{n}].fares.{station} class {c}: {', '.join(below)}: "
                    f"those exits keep 0 (flagged entry_overpaid:) and the excess is never "
                    "refunded; set the entry fare at or below the line's lowest fare"
                )
    return warnings


def _check_road(
    config: LaneConfig, path: Path, tariff: Tariff, road: EntryExitMatrix, found: Findings
) -> None:
    """An exit lane's plaza must be an exit of every tariff version (its every cell for every
    class is checked by the tariff's own loading), and every entry plaza needs a pass key, or
    its passes are refused as `unknown_key` at every exit."""
    plaza = config.lane.plaza
    for n, version in enumerate(road.versions):
        if plaza not in version.exits:
            found.problems.append(
                f"{config.fares.tariff}: {tariff.kind}.version[{n}].exits: the lane's plaza "
                f"{plaza!r} ({path} lane.id) is not an exit of this version: every vehicle "
                "would be unpriced"
            )
    if config.auth.keyset is None or config.metro_pricing:
        return  # a metro's entries are tap-ins, not signed passes
    try:
        keys = load_keyset(config.auth.keyset)
    except KeySetError:
        return  # reported by the key check
    signed = {k.plaza for k in keys.keys.values() if k.use is KeyUse.PASS}
    unsigned = sorted({e for v in road.versions for e in v.entries} - signed)
    if unsigned:
        found.warnings.append(
            f"{config.auth.keyset}: keys: no pass key for entry plaza {', '.join(unsigned)}; "
            "their passes will be refused as unknown_key"
        )


def _check_pass_key(config: LaneConfig, found: Findings) -> None:
    """An entry lane's pass key loads, and the key set (if the lane has one) publishes it."""
    road = config.road
    if config.lane.mode != "toll-entry" or road.pass_key is None or road.pass_kid is None:
        return
    try:
        key = PlazaPassKey.load(road.pass_key, road.pass_kid, config.lane.plaza)
    except KeyFileError as exc:
        found.problems.append(f"road.pass_key: {exc}")
        return
    if config.auth.keyset is None:
        return
    try:
        published = load_keyset(config.auth.keyset).keys.get(key.kid)
    except KeySetError:
        return  # reported by the key check
    if published is None or published.use is not KeyUse.PASS:
        found.warnings.append(
            f"{config.auth.keyset}: no pass key {road.pass_kid!r}: the exit lanes must hold it, "
            "or they refuse this lane's passes as unknown_key"
        )


def _check_lane_key(config: LaneConfig, now: float, found: Findings) -> None:
    """The lane's message key loads (and is there when the lane talks to other lanes), and
    the key set holds its public half, which its peers need (lane.auth.peers)."""
    auth = config.auth
    required = config.talks_to_peers and not auth.accept_unsigned_peers
    try:
        key = load_lane_key(auth.lane_key, auth.lane_kid, config.lane.id, required=required)
    except KeyFileError as exc:
        found.problems.append(str(exc))
        return
    if auth.accept_unsigned_peers:
        found.warnings.append(
            "auth.accept_unsigned_peers: other lanes' unsigned messages are taken (anybody with "
            "the broker account can send them); turn it off once every lane signs"
        )
    if key is None or auth.keyset is None:
        return
    try:
        keys = load_keyset(auth.keyset)
    except KeySetError:
        return  # reported by the key check
    missing = own_key_missing(keys, key, now)
    if missing is not None:
        found.warnings.append(f"{auth.keyset}: {missing}")


def _check_keys(config: LaneConfig, path: Path, now: float, found: Findings) -> None:
    source = config.auth.keyset
    if source is None:
        found.warnings.append(f"{path}: auth.keyset: not set; every offline token is refused")
        return
    try:
        keys = load_keyset(source)
    except KeySetError as exc:
        found.problems.append(str(exc))
        return
    judged = judge_keyset(KeySet(0, {}), keys, now, config.auth.skew_s)
    if judged.refused:  # the lane would refuse the file and start without keys
        found.problems.append(f"{source}: refused: {judged.detail}")
        return
    max_age = config.auth.keyset_max_age_s
    if keyset_stale(keys, now, max_age):
        days = (now - keys.issued_at) / 86400
        found.warnings.append(
            f"{source}: issued_at: the key set is {days:.1f} days old (limit "
            f"{max_age / 86400:g} days); the lane will raise the keyset_stale alarm"
        )
    # Pass and lane keys sign no token (lane.auth.tokens takes only `use: token`).
    if not any(k.use is KeyUse.TOKEN and k.valid_at(now) for k in keys.keys.values()):
        found.warnings.append(f"{source}: keys: no token key is valid now; every token is refused")


def _check_settings(config: LaneConfig, path: Path, found: Findings) -> None:
    url = config.auth.acquirer_url
    if url is None:
        policy = config.auth.offline_policy
        found.warnings.append(
            f"{path}: auth.acquirer_url: not set; online payment codes follow the offline "
            f"policy ({policy})"
        )
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            found.problems.append(
                f"{path}: auth.acquirer_url: must be an http:// or https:// URL, got {url!r}"
            )
    if config.broker.password is not None and config.broker.username is None:
        found.problems.append(f"{path}: broker.password: set without broker.username")
    placeholder = placeholder_password(config)
    if placeholder is not None:
        found.warnings.append(f"{path}: {placeholder}")
    if config.camera.source == "push":
        found.warnings.append(
            f"{path}: camera.source: 'push' is the simulator's camera; a lane needs a device "
            "index, a stream URL, a video file or an image folder"
        )
    if not config.camera.change_gate:
        found.warnings.append(
            f"{path}: camera.change_gate: off; every frame is decoded, empty ones included "
            "(most of an idle lane's CPU: docs/scanner.md)"
        )
    cap = config.auth.max_token_lifetime_s
    if cap < PHONE_TOKEN_TTL_S:
        found.warnings.append(
            f"{path}: auth.max_token_lifetime_s: {cap} s is shorter than the "
            f"{PHONE_TOKEN_TTL_S} s tokens issuers make; every offline token would be refused"
        )
    if config.auth.offline_policy == "floor" and config.auth.hourly_limit_minor == 0:
        found.warnings.append(
            f"{path}: auth.hourly_limit_minor: 0 with offline_policy = 'floor' accepts nothing"
        )


# The password the shipped example config carries: a lane must never run with it.
PLACEHOLDER_PASSWORDS = frozenset({"change-this-password"})


def placeholder_password(config: LaneConfig) -> str | None:
    """What is wrong when the broker password is still the shipped placeholder, else None."""
    if config.broker.password in PLACEHOLDER_PASSWORDS:
        return (
            f"broker.password: still the example's placeholder {config.broker.password!r}; "
            "set the password of the controller user (see docs/operations.md)"
        )
    return None


def check_config_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lane check-config",
        description="Validate a lane config and the files it names (tariff, key set, deny list).",
    )
    parser.add_argument(
        "config",
        type=Path,
        nargs="+",
        help="lane.toml; several: the gates of a metro line, their fares checked together",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    status = 0
    loaded: list[tuple[Path, LaneConfig]] = []
    for path in args.config:
        found = check_config(path)
        for line in found.problems:
            print(line)
        for line in found.warnings:
            print(f"warning: {line}")
        if found.config is not None:
            loaded.append((path, found.config))
        if found.ok:
            print(f"{path}: OK")
        else:
            n = len(found.problems)
            print(f"{path}: {n} problem{'s' if n != 1 else ''}")
            status = 1
    for line in check_line(loaded):
        print(f"warning: {line}")
    return status


def doctor_main(argv: list[str]) -> int:
    from lane.doctor import run_probes  # noqa: PLC0415 - the probes pull in OpenCV and MQTT
    from scanner.native_log import capture_native_stderr  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="lane doctor",
        description="Probe the camera, broker, acquirer, disk and clock of a lane computer.",
    )
    parser.add_argument("--config", type=Path, required=True, help="lane.toml")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per probe")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"FAIL config   {exc}".replace("\n", "\n              "))
        return 1
    placeholder = placeholder_password(config)
    status = "OK  " if placeholder is None else "WARN"
    note = "" if placeholder is None else f": {placeholder}"
    print(f"{status} config   {args.config} (lane {config.lane.id}, {config.lane.mode}){note}")
    # The probes' own adapters log their retries, FFmpeg and OpenCV write to stderr: the
    # one-line verdicts are the output (the camera's carries the reason itself).
    logging.basicConfig(level=logging.CRITICAL)
    capture_native_stderr()
    results = asyncio.run(run_probes(config, args.timeout))
    for result in results:
        print(result.line())
    return 1 if any(r.status == "FAIL" for r in results) else 0
