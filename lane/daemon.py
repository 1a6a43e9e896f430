"""`lane run`: the imperative shell around the pure lane core.

`build(config)` reads and opens everything from disk (key files, the three SQLite stores, the
account key, the trust files), then constructs every adapter with no I/O in any constructor and
nothing patched afterwards; what it opened is closed again, in reverse, if a later step fails.
`LaneDaemon.run` supervises the adapters in one TaskGroup and shuts down cleanly on
SIGTERM/SIGINT: no new vehicles, the vehicle in progress finishes (bounded by a grace period on
the lane's clock), records are already durable, the retained status says offline, exit 0;
`aclose()` then closes what `build` opened, in reverse; on a data directory that does not
answer it gives up after STORES_CLOSE_S, says so, and `lane run` exits 3 at once. A stop while
the lane starts (its check of the data directory, its stores' opening) is bounded the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiohttp
import uvloop

from barrier.link import BarrierLink
from barrier.messages import (
    AttendantCommand,
    BarrierAck,
    BarrierCommand,
    BarrierStatus,
    DeviceQuery,
    DeviceSnapshot,
    DisplayMessage,
    LaneStatus,
    SensorReading,
)
from barrier.peripherals import PlateReading
from lane.auth.acquirer import Acquirer
from lane.auth.authoriser import Authoriser, AuthRequest
from lane.auth.deny import DenyList, DenyListError, decode_deny_list, load_deny_list
from lane.auth.fares import Tariff, load_tariff
from lane.auth.issuer import PlazaPassKey, load_lane_key
from lane.auth.keys import (
    NO_TOKEN_KEY_ALARM,
    KeySet,
    KeySetError,
    decode_keyset,
    keyset_stale,
    load_keyset,
    no_token_key_now,
)
from lane.auth.netkeys import KeyFileError
from lane.auth.networks import NetworkKeys, build_acquirer
from lane.auth.passes import DAY_S
from lane.auth.peer_messages import LaneKey
from lane.auth.peers import Peers
from lane.auth.plaza import UsedTokenSharing, deny_topic, keys_topic
from lane.auth.policy import OfflinePolicy
from lane.auth.replay import RemoteBounds, ReplayStore, ReplayStoreError
from lane.auth.resolution_store import ResolutionStore, StoreError
from lane.auth.resolver import Resolver, refund_query_backoff
from lane.auth.sourced import SourcedError
from lane.auth.trip_pricing import ExitLaneRules
from lane.auth.trip_rules import OverTimeCharge, RoadRules, TripKind
from lane.auth.trust import UpdateKind
from lane.barrier_latches import LatchFiles
from lane.config import ConfigError, LaneConfig, load_config
from lane.core import events as ev
from lane.core.actions import Authorise
from lane.core.frozen import frozen_picture
from lane.core.machine import initial_state
from lane.core.names import DeviceWords, PayloadKind, Position, Sensor
from lane.core.notes import TripPricedNote, VehicleArrived, VehicleLeft
from lane.core.road import waits_for_ticket
from lane.core.state import FlatFares, LaneMode, LaneRules, phase
from lane.core.trip import TapOut
from lane.disk_answer import DiskPhase, clear_after_s, judged
from lane.disk_probe import PROBE_FILE, DiskProbe
from lane.durable import write_atomically
from lane.health import disk_problem
from lane.health_publisher import HealthPublisher
from lane.lane_health import UPLINK_DOWN, uplink_down
from lane.log import setup_logging
from lane.metrics import LaneMetrics
from lane.notification import Notification, ShellNote, ShellNoteName
from lane.ops import LaneOps, TimedBarrier, disk_facts
from lane.refund_records import RefundRecords
from lane.road_port import RoadDesks
from lane.runner import Clocks, LaneRunner
from lane.sd_notify import SystemdNotifier, readiness_status
from lane.signals import install_signal_handlers
from lane.tap_desk import ExitPricing, TapDesk
from lane.tap_store import TapStore, TapStoreError
from lane.ticket_desk import TicketDesk
from lane.transport.broker_link import BrokerLink
from lane.transport.mqtt import Incoming, PublishRefused
from lane.transport.refusals import PUBLISH_REFUSED, alarm_on_refusals
from lane.trip_desk import TripDesk
from lane.verifier import TokenVerifier
from lane.wire import topics
from lane.wire.ids import new_id
from lane.wire.utc import since_utc
from scanner.change_gate import GateSettings
from scanner.decoders import make_decoder
from scanner.health import SourceEvent, StallWatch
from scanner.native_log import capture_native_stderr, release_native_stderr
from scanner.pipeline import ScanPipeline, ScanResult, ScanStats
from scanner.sources import FrameSource, open_source
from uplink.forwarder import Forwarder, UplinkStatus
from uplink.queue import OwedPassage, QueueError, RecordQueue
from uplink.queue_thread import QueueThread

KNOWN_SENSORS = frozenset(Sensor)
T = TypeVar("T")
E = TypeVar("E", bound=SourcedError)

log = logging.getLogger("lane.daemon")

# What a lane computer's files can be wrong with at start: a clear message and exit 2.
STARTUP_ERRORS = (
    SourcedError, QueueError, ReplayStoreError, TapStoreError, StoreError, KeyFileError, OSError
)  # fmt: skip


# A data directory that cannot take the lane's stores at start (a full disk, a read-only
# remount) is looked at again this often: waited out, not an exit, for systemd gives up after
# 10 quick restarts and the lane would stay down once the space was freed.
DATA_DIR_RETRY_S = 5.0

# The status is republished at least this often (the backlog changes without a lane event);
# the queue loop reads the queue, the health loop the trust files, this often.
STATUS_REFRESH_S = 1.0
HEALTH_EVERY_S = 1.0
# What a demo source read to its end (an image folder, a video file) leaves the operator.
SOURCE_ENDED = "nothing more to read (restart the lane to read it again)"
# The uplink down this many `broker.keepalive_s` raises `uplink_down`: as long as a broker that
# stops answering takes to be seen (MQTT's 1.5 keepalives), so a drop mended by the next
# reconnect (at most 7.5 s) says nothing.
UPLINK_DOWN_AFTER_KEEPALIVES = 1.5


# Stopping, the stores' closing waits this long for the data directory, then gives up on a
# hung disk: after the vehicle's grace (10 s), within systemd's TimeoutStopSec (20 s). What is
# still waiting is said after STORES_SAY_AFTER_S.
STORES_CLOSE_S = 5.0
STORES_SAY_AFTER_S = 1.0
# `lane run`'s exit when its stores did not close on a disk that does not answer (or, stopped
# while starting, its check of the data directory or its stores' opening did not end).
EXIT_DISK_HUNG = 3
# `lane run --help`'s epilog: what a supervisor (systemd's Restart=, an operator) reads of an
# exit (docs/operations.md says each at length).
EXIT_CODES = f"""exit codes:
  0  stopped (SIGTERM, SIGINT), at any time: serving, or waiting at start for a full data
     directory, the broker or the barrier
  1  a task of the lane failed (logged as "lane task failed, stopping", with its traceback)
  2  cannot start: bad arguments or config, a key, CA or store file it cannot use (said on
     stderr)
  {EXIT_DISK_HUNG}  stopped on a data directory that does not answer (a hung disk): the stores'
     closing, or at start the data directory's check or the stores' opening, gave up after
     {STORES_CLOSE_S:g} s (said on stderr); the process is reaped once the disk answers"""
# What the start's check of the data directory waits for, in a stop's words.
CHECKING = "the start's check of the data directory (its mkdir, free space and a probe write)"


class Shutdown(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside the TaskGroup to stop every task once the lane is quiet."""


class StoresHungError(Exception):
    """Stopping, the stores did not close (or, starting, the data directory's check or the
    stores' opening did not end) within STORES_CLOSE_S: the data directory does not answer.
    What the lane says, in its text; the threads waiting on the disk are left to it."""


@dataclass
class Opening:
    """What `build` waits for now: the words of a stop that gives up on it."""

    now: str = "the lane's files and its replay, payments and taps stores' opening"


@dataclass
class TariffFares:
    """Adapts the tariff file to the core's FareTable."""

    tariff: Tariff

    def fare_for(self, vehicle_class: int) -> tuple[int, str] | None:
        try:
            money = self.tariff.fare(vehicle_class)
        except LookupError:
            return None
        return money.amount_minor, money.currency


class BarrierAdapter:
    def __init__(self, link: BarrierLink, lane: str) -> None:
        self.link = link
        self.lane = lane
        # The newest device query the broker refused (its ACL), for `ask_again`.
        self._refused_query: str | None = None
        self._query_refused = asyncio.Event()

    async def command(self, op: str, cmd_id: str, deadline_us: int, expiry_s: int) -> None:
        await self.link.send(BarrierCommand(op, cmd_id, deadline_us, self.lane), expiry_s)

    async def query(self, query_id: str) -> None:
        self._refused_query = None  # a newer query replaces one refused before
        try:
            await self._ask(query_id)
        except PublishRefused:
            self._refused_query = query_id
            self._query_refused.set()
            raise

    async def ask_again(self) -> None:
        """The lane asks the device again only after a reconnect or a dwell it outlives; a
        query the broker refuses (its ACL) ends neither, so the newest refused one is asked
        again here, at the link's refusal back-off, until the broker takes it: once the ACL is
        fixed the device's truth comes and `publish_refused` clears. Run as a task."""
        topic = topics.device_query(self.lane)
        while True:
            await self._query_refused.wait()
            self._query_refused.clear()
            await asyncio.sleep(self.link.mqtt.refusals.wait_s(topic))
            query_id, self._refused_query = self._refused_query, None
            if query_id is None:
                continue  # asked anew meanwhile
            extra = {"lane": self.lane, "query_id": query_id}
            try:
                await self._ask(query_id)
            except PublishRefused:
                self._refused_query = query_id  # logged once, by the link's refusals
                self._query_refused.set()
            except ConnectionError as exc:  # down: the reconnect asks anew
                log.warning("device query not sent", extra={**extra, "error": str(exc)})
            else:
                log.info("device queried again", extra=extra)

    async def _ask(self, query_id: str) -> None:
        wall_us = int(self.link.wall() * 1_000_000)
        await self.link.query(DeviceQuery(query_id, self.lane, wall_us))

    async def show(self, lines: tuple[str, ...], ttl_s: float) -> None:
        try:
            await self.link.show(DisplayMessage(list(lines), ttl_s))
        except ConnectionError as exc:
            # Not sent while the link is down: once it is back the lane sends its phase's text
            # (lane.core.reopened); refused by the ACL: publish_refused says so, and the link
            # says the newest text again until it is taken (BarrierLink.show_again).
            log.warning("display not updated", extra={"lane": self.lane, "error": str(exc)})


class PaymentsAdapter:
    """The runner's payments port over the authoriser."""

    def __init__(self, lane: str, authoriser: Authoriser) -> None:
        self.lane = lane
        self.authoriser = authoriser

    async def authorise(self, request: Authorise) -> ev.Decided:
        d = await self.authoriser.authorise(
            AuthRequest(
                request.auth_id,
                self.lane,
                request.text,
                request.kind,
                request.amount_minor,
                request.currency,
                request.deadline,
            )
        )
        return ev.Decided(
            d.auth_id,
            d.approved,
            d.reason,
            d.method,
            d.account_ref,
            d.payment_id,
            d.acquirer_ref,
            d.latency_ms,
            d.offline,
            d.flags,
        )

    async def abandon(self, auth_id: str, reason: str) -> None:
        await self.authoriser.abandon(auth_id)

    async def settle(self, auth_id: str, refund_minor: int = 0) -> None:
        await self.authoriser.settle(auth_id, refund_minor)

    async def owe_refund(self, auth_id: str, refund_minor: int) -> None:
        await self.authoriser.owe_refund(auth_id, refund_minor)


def rules_from(config: LaneConfig) -> LaneRules:
    fares: Any
    if config.fares.tariff is not None:
        fares = TariffFares(load_tariff(config.fares.tariff))
    else:
        amounts = tuple((int(k), v) for k, v in config.fares.flat.items())
        fares = FlatFares(amounts, config.fares.currency)
    return LaneRules(
        lane_id=config.lane.id,
        fares=fares,
        mode=LaneMode(config.lane.mode),
        budget_s=config.auth.budget_s,
        auth_grace_s=config.auth.grace_s,
        max_tries=config.lane.max_tries,
        ack_timeout_s=config.barrier.ack_timeout_s,
        max_cmd_attempts=config.barrier.max_attempts,
        cmd_ttl_s=float(config.barrier.cmd_ttl_s),
        default_class=config.lane.default_class,
        passback_window_s=config.lane.passback_window_s,
        gate_hold_s=config.lane.gate_hold_s,
        reread_s=config.lane.reread_s,
        move_s=config.barrier.move_s,
        selftest_s=config.barrier.selftest_s,
        selftest_max_s=config.barrier.selftest_max_s,
        pay_dwell_s=config.lane.pay_dwell_s,
        pass_dwell_s=config.lane.pass_dwell_s,
        persist_dwell_s=config.lane.persist_dwell_s,
        probe_s=config.lane.probe_s,
        attendant_confirms=config.road.attendant_confirms,
        plate_wait_s=config.road.plate_wait_s,
        metro_pricing=config.metro_pricing,
    )


@dataclass(frozen=True)
class Opened:
    """What `build` read and opened before the shell is constructed."""

    network_keys: NetworkKeys
    replay: ReplayStore
    payments_store: ResolutionStore
    account_key: bytes
    # A key set or deny list file that does not load at start is refused like one replaced at
    # run time (the lane starts with no key, or takes no token until it has a deny list; its
    # alarm says why; the file is read again when it changes): exiting would have systemd give
    # up after 10 quick restarts, and the lane stay down once the file is mended.
    keyset: KeySet | KeySetError | None
    deny: DenyList | DenyListError | None
    source: FrameSource
    pass_key: PlazaPassKey | None = None  # toll-entry: what its passes are signed with
    tariff: Tariff | None = None  # toll-exit: the entry-exit matrix its trips are priced by
    taps: TapStore | None = None  # a metro gate on a line: the line's tap-ins by account
    latch: LatchFiles | None = None  # the barrier's faults, kept over restarts
    carried: tuple[ev.LatchCarried, ...] = ()  # those the lane stopped with
    lane_key: LaneKey | None = None  # what it signs its messages to the other lanes with


def account_key(config: LaneConfig) -> bytes:
    """The lane's secret for hashing wallet codes into account references.

    From the config when set; otherwise made once per lane computer and kept in the data
    directory, so references stay stable across restarts and differ between lanes.
    """
    if config.auth.account_secret is not None:
        return config.auth.account_secret.encode()
    path = config.lane.data_dir / "account.key"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(secrets.token_bytes(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_bytes()


def open_files(
    config: LaneConfig, source: FrameSource | None, monotonic: Callable[[], float]
) -> tuple[Opened, contextlib.ExitStack]:
    """Every file the lane reads or opens at start but the queue (blocking: run it off the loop).
    The camera it opens stamps its frames on `monotonic`, the lane's clock: a frame is told
    apart from the pay point's vehicle by when it was taken (lane.core.before_arrival).

    Returns what was opened and the stack that closes it in reverse; a failure half-way closes
    what was already open and raises (a bad key file, an unreadable store: exit 2)."""
    with contextlib.ExitStack() as stack:
        data = config.lane.data_dir
        data.mkdir(parents=True, exist_ok=True)
        network_keys = NetworkKeys.load(config.auth, data)
        auth = config.auth
        bounds = RemoteBounds(auth.skew_s, auth.max_token_lifetime_s, pass_lifetime_s(config))
        replay = ReplayStore(data / "replay.sqlite3", bounds=bounds)
        stack.callback(replay.close)
        payments_store = ResolutionStore(data / "payments.sqlite3")
        stack.callback(payments_store.close)
        opened = Opened(
            network_keys,
            replay,
            payments_store,
            account_key(config),
            _at_start(load_keyset, auth.keyset, KeySetError),
            _at_start(load_deny_list, auth.deny_list, DenyListError),
            source
            or open_source(config.camera.source, clock=monotonic, settings=config.camera.capture()),
            *_road_files(config),
        )
        latch = LatchFiles(data, config.lane.id)
        opened = replace(opened, latch=latch, carried=tuple(latch.load()))
        if metro_gate(config):
            taps = TapStore(data / "taps.sqlite3")
            stack.callback(taps.close)
            opened = replace(opened, taps=taps)
        opened = replace(opened, lane_key=lane_key_of(config))
        return opened, stack.pop_all()
    raise AssertionError("unreachable")  # the with block returns or raises  # pragma: no cover


def _at_start(load: Callable[[Path], T], path: Path | None, error: type[E]) -> T | E | None:
    """A trust file read at start: what it holds, or why it does not load (Opened.keyset)."""
    if path is None:
        return None
    try:
        return load(path)
    except error as exc:
        return exc


def paid_carried(owed: OwedPassage, wall_now: float, lane: str) -> ev.PaidCarried:
    """A paid vehicle the lane stopped (or crashed) owing a passage, for the core."""
    age_s = max(0.0, wall_now - owed.ts_us / 1_000_000)
    log.warning(
        "paid vehicle owed its passage over a restart",
        extra={
            "lane": lane,
            "record_id": owed.record_id,
            "vehicle_id": owed.vehicle_id,
            "pass_id": owed.pass_id,
            "age_s": round(age_s, 3),
        },
    )
    return ev.PaidCarried(
        owed.record_id,
        owed.vehicle_id,
        owed.vehicle_class,
        owed.credential,
        age_s,
        new_id(),
        owed.pass_id,
    )


def _road_files(config: LaneConfig) -> tuple[PlazaPassKey | None, Tariff | None]:
    road = config.road
    key = None
    if config.lane.mode == "toll-entry" and road.pass_key is not None and road.pass_kid:
        key = PlazaPassKey.load(road.pass_key, road.pass_kid, config.lane.plaza)
    tariff = None
    exit_lane = config.lane.mode == "toll-exit" or config.metro_pricing
    if exit_lane and config.fares.tariff is not None:
        tariff = load_tariff(config.fares.tariff)
    return key, tariff


def lane_key_of(config: LaneConfig) -> LaneKey | None:
    """The lane's message key; KeyFileError when bad, or missing where it is needed."""
    auth = config.auth
    required = config.talks_to_peers and not auth.accept_unsigned_peers
    return load_lane_key(auth.lane_key, auth.lane_kid, config.lane.id, required=required)


def metro_gate(config: LaneConfig) -> bool:
    """A fare gate on a metro line: it shares the line's taps (lane.tap_desk)."""
    return config.metro.line is not None and LaneMode(config.lane.mode).fare_gate


def pass_lifetime_s(config: LaneConfig) -> float:
    """How long a pass (a metro gate: a tap-in) is good for here: a metro gate remembers a
    tap-in, and keeps its exit in the replay store, for the line's retention."""
    if metro_gate(config):
        return config.metro.retention_s
    return config.road.pass_lifetime_days * DAY_S


def exit_rules(config: LaneConfig) -> ExitLaneRules:
    road = config.road
    if config.metro_pricing:
        metro = config.metro
        rules = RoadRules(
            TripKind.METRO,
            metro.same_station_window_s,
            metro.max_trip_s,
            OverTimeCharge(metro.over_time),
        )
        return ExitLaneRules(
            config.lane.plaza,
            config.lane.id,
            rules,
            pass_lifetime_s=pass_lifetime_s(config),
            skew_s=config.auth.skew_s,
            max_token_lifetime_s=config.auth.max_token_lifetime_s,
        )
    return ExitLaneRules(
        config.lane.plaza,
        config.lane.id,
        RoadRules(
            u_turn_window_s=road.u_turn_window_s,
            max_trip_s=road.max_trip_s,
            over_time=OverTimeCharge(road.over_time),
        ),
        pass_lifetime_s=pass_lifetime_s(config),
        skew_s=config.auth.skew_s,
        max_token_lifetime_s=config.auth.max_token_lifetime_s,
    )


async def build(
    config: LaneConfig,
    *,
    source: FrameSource | None = None,
    clocks: Clocks | None = None,
    shutdown_grace_s: float = 10.0,
    opening: Opening | None = None,
) -> LaneDaemon:
    """The lane, built: files read and stores opened off the loop, then every adapter.
    `source` (a camera of the caller's) must stamp its frames on `clocks.monotonic`;
    `opening` is kept told what the build waits for."""
    clocks = clocks or Clocks()
    opening = opening or Opening()
    opened, closing = await asyncio.to_thread(open_files, config, source, clocks.monotonic)
    try:
        opening.now = "the record queue's opening"
        # Opened on the thread that will own its connection for the lane's life.
        queue = await QueueThread.open(
            partial(
                RecordQueue,
                config.lane.data_dir / "queue.sqlite3",
                config.lane.id,
                config.uplink.max_bytes,
                config.uplink.high_water,
                wall=clocks.wall,
            ),
            clocks.monotonic,
        )
    except BaseException:
        closing.close()
        raise
    try:
        opening.now = "the record queue's owed passages"
        owed = await queue.owed()  # paid vehicles the lane stopped owing a passage
        return LaneDaemon(
            config,
            opened,
            queue,
            closing,
            clocks=clocks,
            shutdown_grace_s=shutdown_grace_s,
            owed=owed,
        )
    except BaseException:
        await queue.aclose()
        closing.close()
        raise


class LaneDaemon:
    """Everything one lane computer runs, constructed from what `build` opened (no I/O here).

    Constructed inside the running loop (its HTTP session belongs to it): use `build`."""

    def __init__(
        self,
        config: LaneConfig,
        opened: Opened,
        queue: QueueThread,
        closing: contextlib.ExitStack,
        *,
        clocks: Clocks,
        shutdown_grace_s: float,
        owed: Sequence[OwedPassage] = (),
    ) -> None:
        self.config = config
        self.lane = config.lane.id
        self.clocks = clocks
        self.shutdown_grace_s = shutdown_grace_s
        self._closing = closing
        self.queue = queue
        self.disk_probe = DiskProbe(
            self.lane, config.lane.data_dir, clocks.monotonic, queue.wrote_at
        )
        self.replay = opened.replay
        self.payments_store = opened.payments_store
        self.source = opened.source
        broker = BrokerLink.of(config.broker)
        self._boom_words = topics.boom_words(self.lane)
        self.link = BarrierLink(
            self.lane,
            broker,
            on_ack=self._on_ack,
            on_state=self._on_state,
            on_sensor=self._on_sensor,
            on_attendant=self._on_attendant,
            on_link=self._on_link,
            on_snapshot=self._on_snapshot,
            on_plate=self._on_plate,
            on_garbage=self._on_garbage,
        )
        self.barrier = BarrierAdapter(self.link, self.lane)
        uplink_broker = BrokerLink.of(config.uplink_broker)
        self.uplink = uplink_broker.link(f"uplink-{self.lane}", handler=self._on_uplink_message)
        # A topic the broker refuses either link (its ACL: barrier commands; records, peer
        # messages, tickets) is one alarm, naming each link, until a publish to it is taken.
        alarm_on_refusals(
            (self.link.mqtt.refusals, self.uplink.refusals), partial(self._alarm, PUBLISH_REFUSED)
        )
        self.forwarder = Forwarder(
            self.queue,
            self.uplink,
            self.lane,
            batch_size=config.uplink.batch_size,
            clock=self.clocks.monotonic,
            wall=self.clocks.wall,  # the records' own clock: their age is read on it
        )
        self.uplink_status: UplinkStatus | None = None  # the queue loop's last read
        self._uplink_down_since: float | None = None  # monotonic; None while connected
        self._disk_late_at: float | None = None  # monotonic: a disk call last seen late
        self._disk_phase: DiskPhase | None = None  # what the core was last told of the disk
        self._closing_now = ""  # what the stores' closing waits for (the stop's words)
        self.sharing: UsedTokenSharing | None = None
        plaza = config.lane.plaza
        self._plaza_topics = (keys_topic(plaza), deny_topic(plaza))
        subs = [*self.forwarder.subscriptions(), *((t, 1) for t in self._plaza_topics)]
        # Every message to and from the other lanes is signed (lane.auth.peers).
        self.peers = Peers(
            self.lane,
            opened.lane_key,
            lambda: self.verifier.keys,
            self.replay,
            accept_unsigned=config.auth.accept_unsigned_peers,
            wall=self.clocks.wall,
        )
        if config.auth.share_used_tokens:
            self.sharing = UsedTokenSharing(
                self.uplink, self.replay, config.lane.plaza, self.lane, peers=self.peers
            )
            subs.append(self.sharing.subscription())
        self.verifier = TokenVerifier(
            self.lane,
            KeySet(0, {}),
            DenyList.empty(),
            self.replay,
            config.auth.skew_s,
            sharing=self.sharing,
            clock=self.clocks.wall,
            max_generation_step=config.auth.max_generation_step,
            max_token_lifetime_s=config.auth.max_token_lifetime_s,
            alarm=self._alarm,
        )
        # Before the desks: a metro gate's tap desk shares its replay store's alarm.
        self.road = self._road_desks(opened)
        for desk in (self.road.tickets, self.road.trips, self.road.taps):
            if desk is not None:
                subs += desk.subscriptions()
        self.uplink.subscriptions = subs
        # The files go through the same bounds as every later update (lane.auth.trust).
        if isinstance(opened.keyset, KeySetError):
            self.verifier.update_unreadable(
                UpdateKind.KEYSET, str(config.auth.keyset), opened.keyset
            )
        elif opened.keyset is not None:
            self.verifier.update_keys(opened.keyset, str(config.auth.keyset))
        if isinstance(opened.deny, DenyListError):
            self.verifier.deny_missing = True
            self.verifier.update_unreadable(
                UpdateKind.DENY, str(config.auth.deny_list), opened.deny
            )
        elif opened.deny is not None:
            self.verifier.update_deny(opened.deny, str(config.auth.deny_list))
        self.metrics = LaneMetrics(self.lane, config.lane.mode, clock=self.clocks.monotonic)
        self.http = aiohttp.ClientSession()
        # Alarms raised by the acquirer watch reach the runner, which exists by the first call.
        networks = build_acquirer(
            config.auth,
            opened.network_keys,
            self.http,
            self.clocks.wall,
            alarm=self._alarm,
            observe=self.metrics.acquirer_request,
        )
        self.acquirer: Acquirer = networks.acquirer
        self._network_upkeep = networks.upkeep
        self.resolver = Resolver(
            self.payments_store,
            self.acquirer,
            clock=self.clocks.wall,
            monotonic=self.clocks.monotonic,
            is_recorded=self._is_recorded,
            alarm=self._alarm,
            keep_days=config.auth.payments_keep_days,
            record_end=RefundRecords(self.queue, self.forwarder.wake),
            refund_query=refund_query_backoff(config.auth.refund_query_s),
            lane=self.lane,
        )
        authoriser = Authoriser(
            self.lane,
            self.acquirer,
            self.resolver,
            self.verifier,
            OfflinePolicy(
                config.auth.offline_policy,
                config.auth.floor_limit_minor,
                config.auth.hourly_limit_minor,
            ),
            self.clocks.monotonic,
            self.clocks.wall,
            account_key=opened.account_key,
        )
        self.runner = LaneRunner(
            initial_state(rules_from(config)),
            barrier=TimedBarrier(self.barrier, self.metrics),
            payments=PaymentsAdapter(self.lane, authoriser),
            store=self.queue,
            clocks=self.clocks,
            observers=[self._on_note, self.metrics.observe_note],
            road=self.road,
            latch=opened.latch,
        )
        for carried in opened.carried:  # the first events the core takes
            self.runner.post(carried)
        for passage in owed:  # then the paid vehicles it owes a passage (lane.core.carried)
            self.runner.post(paid_carried(passage, self.clocks.wall(), self.lane))
        self.pipeline = ScanPipeline(
            self.source,
            make_decoder(config.camera.decoder),
            on_result=self._on_scan,
            on_status=self._on_camera,
            workers=config.camera.workers,
            dedup_window_s=config.camera.dedup_window_s,
            gate=GateSettings() if config.camera.change_gate else None,
            static_codes=frozenset(config.camera.static_codes),
        )
        self._file_mtimes: dict[Path, int] = {}
        for path, got in (
            (config.auth.keyset, opened.keyset),
            (config.auth.deny_list, opened.deny),
        ):
            if path is not None and isinstance(got, SourcedError):
                self._file_mtimes[path] = -1  # read again at the first look, mended or not
        self._stall: StallWatch | None = None  # from the pipeline's start (live sources only)
        # What the camera cannot do, by who saw it: the source's own word (its blackout, a
        # lost stream, a failed capture) and the stall watch's; the source's comes first.
        self._source_dark: str | None = None
        self._stall_text: str | None = None
        # A frozen picture found, as (the stats' changed_ts then, its text): it stands until
        # the picture changes, whoever comes or goes (lane.core.frozen).
        self._frozen: tuple[float, str] | None = None
        # A source read to its end, until the lane is told (`_tell_end`), and whether the last
        # watch saw everything read from it decided.
        self._ended: str | None = None
        self._end_quiet = False
        self._camera_told: str | None = None  # what the core was last told (None: it sees)
        self._publishing: set[asyncio.Future[None]] = set()
        # Once 'offline' is being said, the status loop says nothing more: a later status
        # would replace the retained 'offline' of a lane that is gone.
        self._said_offline = False
        self.ops = LaneOps(self, self.metrics)  # /metrics, /healthz, /readyz (lane/ops.py)
        self.health = HealthPublisher(self, self.ops.readiness)  # lane/{id}/health

    def _alarm(self, code: str, message: str | None) -> None:
        self.runner.alarm(code, message)

    def _road_desks(self, opened: Opened) -> RoadDesks:
        """A closed road's desks, over the uplink link (printer and plate bindings)."""
        tickets = trips = None
        if opened.pass_key is not None:
            tickets = TicketDesk(
                self.lane,
                opened.pass_key,
                self.uplink,
                peers=self.peers,
                alarm=self._alarm,
                waiting=lambda issue_id: waits_for_ticket(self.runner.state, issue_id),
                wall=self.clocks.wall,
                retry_s=self.config.road.print_retry_s,
            )
        if opened.taps is not None:
            return RoadDesks(taps=self._tap_desk(opened.taps, opened))
        if opened.tariff is not None:
            trips = TripDesk(
                exit_rules(self.config),
                opened.tariff,
                lambda: self.verifier.keys,
                self.replay,
                self.uplink,
                sharing=self.sharing,
                peers=self.peers,
                wall=self.clocks.wall,
                replay_watch=self.verifier.replay_watch,
            )
        return RoadDesks(tickets, trips)

    def _tap_desk(self, store: TapStore, opened: Opened) -> TapDesk:
        """A metro gate's desk: shares the line's taps; a transit-exit prices by them."""
        metro = self.config.metro
        assert metro.line is not None
        pricing = None
        if opened.tariff is not None:
            pricing = ExitPricing(
                exit_rules(self.config),
                opened.tariff,
                lambda: self.verifier.keys,
                lambda: self.verifier.deny,
                opened.account_key,
            )
        return TapDesk(
            metro.line,
            self.lane,
            metro.retention_s,
            store,
            self.replay,
            self.uplink,
            pricing=pricing,
            wall=self.clocks.wall,
            replay_watch=self.verifier.replay_watch,
            peers=self.peers,
            skew_s=self.config.auth.skew_s,
            alarm=self._alarm,
        )

    async def _is_recorded(self, payment_id: str) -> bool:
        """Crash recovery: did a record say this payment was taken? Then it is settled, never
        reversed; any other payment left open (declined, timed out, unrecorded) is resolved."""
        return await self.queue.recorded_paid(payment_id)

    async def _on_plaza_update(self, msg: Incoming) -> None:
        """Key sets and deny lists from the back office (retained topics, newer only)."""
        source = f"mqtt {msg.topic}"
        is_keys = msg.topic == keys_topic(self.config.lane.plaza)
        if not msg.payload:  # the retained copy was deleted: what the lane holds stays
            self.verifier.forget_source(source)
        elif is_keys:
            try:
                keys = await asyncio.to_thread(decode_keyset, msg.payload, source)
                self.verifier.update_keys(keys, source)
            except KeySetError as exc:
                self.verifier.update_unreadable(UpdateKind.KEYSET, source, exc)
        else:
            try:
                # A large list takes seconds to read: off the loop, which serves meanwhile.
                deny = await asyncio.to_thread(decode_deny_list, msg.payload, source)
                self.verifier.update_deny(deny, source)
            except DenyListError as exc:
                self.verifier.update_unreadable(UpdateKind.DENY, source, exc)

    # --- inputs -> events -----------------------------------------------------------------

    def _on_ack(self, ack: BarrierAck) -> None:
        self.ops.barrier_acked(ack)
        self.runner.post(ev.BarrierAcked(ack.cmd_id, ack.ok, Position(ack.state), ack.error))

    def _on_state(self, status: BarrierStatus) -> None:
        self.runner.post(ev.BarrierReported(Position(status.state)))

    def _on_snapshot(self, snap: DeviceSnapshot) -> None:
        log.info(
            "device snapshot",
            extra={
                "lane": self.lane,
                "barrier": snap.barrier,
                "query_id": snap.query_id,
                "sensors": snap.sensors,
            },
        )
        sensors = tuple(sorted(snap.sensors.items()))
        self.runner.post(ev.DeviceSnapshotted(Position(snap.barrier), sensors, new_id()))

    def _on_garbage(self, topic: str, error: str) -> None:
        """What the device says of its boom and its commands, unreadable: a fault (the core's).
        A garbled loop or plate reading, or an attendant's command, changes nothing (the link
        has logged it)."""
        if topic in self._boom_words:
            ack = topic == topics.barrier_ack(self.lane)
            words = DeviceWords.ACKS if ack else DeviceWords.REPORTS
            self.runner.post(ev.DeviceUnreadable(topic, error, words))

    def _on_sensor(self, reading: SensorReading) -> None:
        if reading.sensor == "classifier":
            if reading.vehicle_class is not None:
                self.runner.post(ev.VehicleClassified(reading.vehicle_class))
        elif reading.occupied is not None and reading.sensor in KNOWN_SENSORS:
            # Other names are valid on the wire (docs/barrier.md) and mean nothing to the core.
            self.runner.post(ev.SensorChanged(Sensor(reading.sensor), reading.occupied, new_id()))

    def _on_attendant(self, cmd: AttendantCommand) -> None:
        self.health.attendant(cmd)
        log.info(
            "attendant command",
            extra={
                "lane": self.lane,
                "op": cmd.op,
                "cmd_id": cmd.cmd_id,
                "attendant": cmd.attendant,
            },
        )
        if cmd.op == "open":
            self.runner.post(ev.AttendantOpen(cmd.cmd_id, cmd.reason, cmd.attendant))
        elif cmd.op == "close_lane":
            self.runner.post(ev.AttendantCloseLane(cmd.reason))
        elif cmd.op == "reopen_lane":
            self.runner.post(ev.AttendantReopenLane(cmd.reason))
        elif cmd.op == "no_pass":
            self.runner.post(ev.AttendantNoPass(cmd.cmd_id, cmd.attendant))
        elif cmd.op == "confirm_fare":
            self.runner.post(ev.AttendantConfirmFare(cmd.cmd_id, cmd.attendant))

    def _on_plate(self, reading: PlateReading) -> None:
        log.info("plate read", extra={"lane": self.lane, "confidence": reading.confidence})
        self.runner.post(ev.PlateRead(reading.plate))

    def _on_link(self, up: bool, cause: str | None) -> None:
        self.runner.post(ev.LinkChanged(up, cause))

    async def _on_uplink_message(self, msg: Incoming) -> None:
        if msg.topic == self.forwarder.ack_topic:
            self.forwarder.handle_ack(msg.payload)
        elif msg.topic in self._plaza_topics:
            await self._on_plaza_update(msg)
        elif self.road.tickets is not None and self.road.tickets.handles(msg.topic):
            self.road.tickets.handle(msg)
        elif self.road.trips is not None and self.road.trips.handles(msg.topic):
            await self.road.trips.handle(msg)
        elif self.road.taps is not None and self.road.taps.handles(msg.topic):
            await self.road.taps.handle(msg)
        elif self.sharing is not None:
            await self.sharing.handle(msg)

    def _on_scan(self, result: ScanResult) -> None:
        reason = getattr(result.payload, "reason", None)
        self.runner.post(
            ev.Scanned(
                result.text,
                PayloadKind(result.payload.kind),
                reason,
                result.frame_ts,
                new_id(),
                result.static,
            )
        )

    def _on_camera(self, event: SourceEvent) -> None:
        # A file or a folder read to its end (not closed by the lane stopping, nor failed: its
        # error said so) has nothing more to show: no code is read, as from a lost camera.
        ended = event.kind == "ended" and self.source.exhausted
        quiet = event.kind in ("opened", "recovered", "ended") and not ended
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "camera event",
            extra={
                "lane": self.lane,
                "camera": event.source,
                "kind": event.kind,
                "detail": event.detail,
            },
        )
        if event.kind == "recovered":
            self._source_dark = None
        elif event.kind in ("blackout", "error", "lost"):
            self._source_dark = f"camera {event.kind}: {event.detail}"
        elif ended:
            self._ended = f"camera source ended: {event.detail}: {SOURCE_ENDED}"
        self._tell_camera()

    def _tell_camera(self) -> None:
        """The core hears whether the camera gives codes to read (`camera_blackout`, a payment
        fault: the lane does not invite drivers to show a code nobody reads), once per change
        of what is said."""
        dark = self._source_dark or self._stall_text
        if dark == self._camera_told:
            return
        self._camera_told = dark
        self.runner.post(ev.CameraSees(seeing=dark is None, detail=dark or ""))

    def _on_note(self, note: Notification) -> None:
        """Every lane note goes out on the events topic (QoS 0) for operators."""
        match note:
            case ShellNote(name=ShellNoteName.RECORD):
                self.forwarder.wake()  # a record is on disk: forward it now, not at the next poll
                if self.road.taps is not None:
                    self.road.taps.on_record(note.body["record"])  # the line hears of a tap
            case VehicleArrived(implicit=False) | VehicleLeft() | TripPricedNote():
                # Codes still in view count again for the next person (a screenshot must reach
                # the replay check; the code the vehicle before paid with is set aside by
                # lane.core.before_arrival), but not for the fare-gate passenger the code just
                # made.
                # Frames are stamped on the lane's monotonic clock: one taken before now showed
                # the pay point before this (lane.core.before_arrival), however late decoded.
                self.pipeline.forget_seen(self.clocks.monotonic())
            case ShellNote(name=ShellNoteName.DISPLAY):
                return
        if not self.link.connected:
            return
        event = {"name": str(note.name), **note.fields()}
        task = asyncio.ensure_future(self.link.publish_event(event))
        self._publishing.add(task)  # asyncio keeps only weak references to running tasks
        task.add_done_callback(self._publishing.discard)
        task.add_done_callback(_log_failure)

    # --- running --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (or a task fails), then close what `build` opened."""
        cfg = self.config
        log.info("lane starting", extra={"lane": self.lane, "mode": cfg.lane.mode})
        try:
            async with asyncio.TaskGroup() as tg:
                guard = partial(_end_if_failed, lane=self.lane, then=self._say_offline)
                # The links reconnect by themselves; what ends them is a bug, which ends the lane.
                tg.create_task(guard(self.link.run()), name="barrier-link")
                tg.create_task(guard(self.barrier.ask_again()), name="device-query-again")
                tg.create_task(guard(self.link.show_again()), name="display-text-again")
                tg.create_task(guard(self.uplink.run()), name="uplink-link")
                self.ops.runner_task = tg.create_task(guard(self.runner.run()), name="lane-runner")
                tg.create_task(guard(self.forwarder.run()), name="forwarder")
                tg.create_task(guard(self.resolver.run()), name="resolver")
                prune = self.resolver.prune_every(self.clocks.sleep)
                tg.create_task(guard(prune), name="payments-prune")
                replay = self.verifier.upkeep(self.clocks.sleep)
                tg.create_task(guard(replay), name="replay-upkeep")
                for upkeep in self._network_upkeep:  # while no vehicle waits on the network
                    task = upkeep(self.runner.idle, self.clocks.sleep)
                    tg.create_task(guard(task), name="network-upkeep")
                if self.sharing is not None:
                    tg.create_task(guard(self.sharing.run()), name="plaza-sharing")
                if self.road.taps is not None:
                    tg.create_task(guard(self.road.taps.run()), name="line-taps")
                    taps = self.road.taps.upkeep(self.clocks.sleep)
                    tg.create_task(guard(taps), name="taps-upkeep")
                tg.create_task(guard(self._status_loop()), name="status")
                tg.create_task(guard(self._health_loop()), name="health")
                tg.create_task(guard(self._queue_loop()), name="queue-health")
                tg.create_task(guard(self.disk_probe.run(self.clocks.sleep)), name="disk-probe")
                tg.create_task(guard(self.ops.run()), name="ops")
                tg.create_task(guard(self.health.run()), name="health-publisher")
                tg.create_task(guard(self._start_camera()), name="camera")
                tg.create_task(self._until_stopped(stop), name="shutdown")
        except* Shutdown:
            pass
        finally:
            self._say_counted(stopping=True)
            await self.aclose()
        log.info("lane stopped", extra={"lane": self.lane})

    def _say_counted(self, *, stopping: bool = False) -> None:
        """The refusals logged only as counted, once their window passed (`stopping`: all of
        them, as the lane stops: the health loop would never say them)."""
        self.peers.say_counted(self.clocks.wall(), stopping=stopping)
        self.link.say_counted(stopping=stopping)
        self.forwarder.say_counted(stopping=stopping)

    async def _start_camera(self) -> None:
        """Start the scan pipeline; a finite source only once the lane can take a code.

        An image folder or a video file is read once: a code read before the broker and the
        barrier are there, or (toll) before a vehicle is at the pay point, would be refused or
        ignored and never come again. A live camera starts at once: its frames are fleeting
        anyway, and a code still in view is read again when the lane is ready.
        """
        if self.source.finite:
            noted = asyncio.Event()  # a lane note (vehicle_arrived ...) may be the moment

            def note(_note: Notification) -> None:
                noted.set()

            self.runner.observers.append(note)
            while not self._takes_a_code():
                noted.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):  # link and barrier changes make no note
                        await noted.wait()
            self.runner.observers.remove(note)
            log.info(
                "finite camera source starts: the lane can take a code",
                extra={"lane": self.lane, "camera": self.source.name},
            )
        self.pipeline.start(asyncio.get_running_loop())

    def _takes_a_code(self) -> bool:
        needed = ("broker", "barrier")
        if not all(c.ok for c in self.ops.readiness() if c.name in needed):
            return False
        # A toll lane serves the vehicle on the entry loop; a fare gate whoever shows a code.
        gate = LaneMode(self.config.lane.mode).fare_gate
        wanted = "idle" if gate else "vehicle_present"
        return phase(self.runner.state).value == wanted

    async def _say_offline(self) -> None:
        """Say offline before a failed task ends the lane.

        A failed task ends the TaskGroup, which cancels the links: they leave the broker
        cleanly, so it discards their will and the retained status would go on saying the lane
        is up. The status is published first, while the barrier link still holds (a failed
        barrier link says it through its will: a link ended by a bug leaves as a crash would,
        lane.transport.mqtt).
        """
        self._said_offline = True
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.link.publish_status(self._status("offline"))

    async def _until_stopped(self, stop: asyncio.Event) -> None:
        await stop.wait()
        log.info("lane stopping", extra={"lane": self.lane})
        await self.pipeline.aclose()  # no new codes; the vehicle in progress may finish
        await self._quiet(self.shutdown_grace_s)
        self._said_offline = True
        with contextlib.suppress(ConnectionError):
            await self.link.publish_status(self._status("offline"))
        raise Shutdown

    async def _quiet(self, grace_s: float) -> None:
        """Wait for the vehicle in progress and the runner's tasks, at most `grace_s` on the
        lane's clock, woken by the runner's changes (no polling); then cut what is left."""
        now = self.clocks.monotonic
        deadline = now() + grace_s
        seen = self.runner.version
        while not self.runner.idle() and (left := deadline - now()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    seen = await self.runner.wait_changed(seen)
        await self.runner.drain(grace_s=max(0.0, deadline - now()))

    async def aclose(self) -> None:
        """Close in the reverse order of construction; the stores `build` opened go last.

        Safe to call twice and on a lane that never ran. On a hung disk the stores' closing
        would wait for as long as it hangs (systemd then kills the lane without a word): it
        says what it waits for after STORES_SAY_AFTER_S and gives up after STORES_CLOSE_S,
        raising StoresHungError. What was written is on disk already (every record is
        committed with an fsync before it counts); what waits cannot be written anyway."""
        await self.pipeline.aclose()
        closing = asyncio.ensure_future(self._close_stores())
        if not await _given_the_disk(closing, self.config, self._disk_waits):
            closing.cancel()
            waits = self._disk_waits()
            extra = {"lane": self.lane, "path": str(self.config.lane.data_dir), **waits}
            log.error("lane stopped with its stores open", extra=extra)
            raise StoresHungError(
                f"{self.config.lane.data_dir} does not answer: stopped without closing the"
                f" stores after {STORES_CLOSE_S:g} s, waiting for {waits['waiting']}; every record"
                " written before it hung is on disk, what waits for it cannot be written on a"
                " disk that does not answer; threads stuck in it hold the process until it does"
            )
        closing.result()

    async def _close_stores(self) -> None:
        self._closing_now = "the payment resolver's store writes"
        await self.resolver.stop()  # its store worker finishes before the store closes
        await self.http.close()  # after the resolver, whose tasks it serves
        self._closing_now = "the record queue's close"
        await self.queue.aclose()  # opened last by build: closed first
        self._closing_now = "the payments and replay stores' close"
        # Off the loop: a store's last write may wait on the disk.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lane-close")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._closing.close)
        except Exception:
            log.exception("close failed", extra={"lane": self.lane})
        finally:
            executor.shutdown(wait=False)

    def _disk_waits(self) -> dict[str, str]:
        """What the stop waits for on the data directory now, for its words."""
        since = self.queue.waiting_since()
        if since is None:
            return {"waiting": self._closing_now}
        when = since_utc(since, self.clocks.monotonic(), self.clocks.wall())
        return {"waiting": f"{self._closing_now}, behind a queue call since {when}"}

    # --- status ---------------------------------------------------------------------------

    def _status(self, state: str | None = None) -> LaneStatus:
        up = self.uplink.connected.is_set()
        status = self.uplink_status
        return LaneStatus(
            state=state or phase(self.runner.state).value,
            uplink_backlog=0 if status is None else status.backlog,
            oldest_unsent_s=None if status is None else status.oldest_age_s,
            link={
                "broker": self.link.connected,
                "uplink": up,
                "plaza": self.sharing.link_up if self.sharing else False,
                **self.ops.status_links(),  # readiness: camera, broker, barrier, queue
            },
            faults=sorted(self.runner.alarms),
            ts_us=int(self.clocks.wall() * 1_000_000),
            accepting=None if state else self.runner.state.accepting_payments,
        )

    async def _status_loop(self) -> None:
        last: Any = None
        seen = -1  # publish at once
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_REFRESH_S):
                    seen = await self.runner.wait_changed(seen)
            status = self._status()
            # The broker may have published the will ('offline', retained) while the link was
            # down: after each reconnect the status goes out again even if nothing else changed,
            # or a lane back at work would stay 'offline' on every console until it did. The
            # reconnect count says so even when the loop never ran while the link was down.
            key = (
                status.state,
                status.uplink_backlog,
                tuple(status.faults),
                status.accepting,
                tuple(status.link.items()),
                self.link.mqtt.reconnects,
            )
            if key == last or not self.link.connected or self._said_offline:
                continue
            try:
                await self.link.publish_status(status)
                last = key
            except ConnectionError as exc:
                log.warning("status not published", extra={"lane": self.lane, "error": str(exc)})

    def _watch_camera(self) -> None:
        """A capture thread stuck in a driver call reports nothing, not even a blackout, a
        frozen camera repeats one picture, and stuck decoders read nothing while frames arrive:
        judged from the pipeline's counters, each raises camera_blackout, and clears what it
        raised once fresh frames are decoded again. A picture is frozen only by the vehicles
        it must show (lane.core.frozen): an idle lane's may stay the same.
        What the source said itself (its own blackout, a failed capture) is told before it."""
        stats = self.pipeline.stats()
        if self._ended is not None:
            self._tell_end(stats)
        if self.source.finite or not self.pipeline.started or stats.source_ended:
            return
        now = self.clocks.monotonic()
        if self._stall is None:
            # The longest a working capture goes without a frame and without saying so: an open
            # (a slow camera's, which its own blackout does not count), then its own blackout,
            # whose text says more while its thread still runs.
            silent_s = self.config.camera.open_timeout_s + self.source.blackout_after_s
            self._stall = StallWatch(silent_s, now)
        processed = stats.decoded + stats.skipped
        stalled = self._stall.observe(now, stats.frames_in, processed)
        gate = LaneMode(self.config.lane.mode).fare_gate  # no entry loop to say who is there
        # The vehicle's arrival as the core takes it (on the clock frames are stamped on),
        # proved gone by other evidence when the loop's clear is lost (lane.core.before_arrival).
        arrived = self.runner.state.entry_arrived_at
        frozen = frozen_picture(
            stats.changed_ts,
            stats.looked_ts,
            arrived,
            self._stall.after_s,
            loop=not gate,
            told=self._frozen,
        )
        changed = stats.changed_ts
        self._frozen = None if frozen is None or changed is None else (changed, frozen)
        self._stall_text = stalled or frozen
        self._tell_camera()

    def _tell_end(self, stats: ScanStats) -> None:
        """A source read to its end closes the lane to payments once what was read from it is
        decided: a payment in flight would be reversed under the fault, and a code on its way
        refused. Its last frames decoded and no payment in flight for two watches in a row: the
        codes decoded before the first were posted to the core by the second. A metro exit's
        code held while its trip is priced (`TapOut`: a tap store slow to answer) is in flight
        too: priced under the fault, it would be refused though it was read."""
        vehicle = self.runner.state.vehicle
        deciding = vehicle is not None and (
            vehicle.attempt is not None or isinstance(vehicle.trip, TapOut)
        )
        if stats.pending or deciding:
            self._end_quiet = False
        elif not self._end_quiet:
            self._end_quiet = True
        else:
            self._source_dark, self._ended = self._ended, None
            self._tell_camera()

    def _reload_changed_files(self) -> None:
        """Key set and deny list files are re-read when they change (an operator or a sync job
        replaces them); a broken file is refused and the lane keeps what it had."""
        auth = self.config.auth
        if auth.keyset is not None and self._changed(auth.keyset):
            try:
                self.verifier.update_keys(load_keyset(auth.keyset), str(auth.keyset))
            except KeySetError as exc:
                self.verifier.update_unreadable(UpdateKind.KEYSET, str(auth.keyset), exc)
        if auth.deny_list is not None and self._changed(auth.deny_list):
            try:
                self.verifier.update_deny(load_deny_list(auth.deny_list), str(auth.deny_list))
            except DenyListError as exc:
                self.verifier.update_unreadable(UpdateKind.DENY, str(auth.deny_list), exc)
        self.verifier.retry_pending()

    def _changed(self, path: Path | None) -> bool:
        if path is None:
            return False
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return False
        previous = self._file_mtimes.setdefault(path, mtime)
        self._file_mtimes[path] = mtime
        return previous != mtime

    async def _queue_loop(self) -> None:
        """Queue health into the core. A task of its own: its reads wait on the disk, and a
        hung one holds this loop only (the health loop says so: `_watch_disk`)."""
        last: tuple[bool, bool] | None = None
        while True:
            try:
                uplink = await self.forwarder.status()
            except Exception:
                # A failed read is not a reason to stop the lane (this task dying would end
                # the TaskGroup): record writes report their own failures to the core.
                log.exception("queue health unreadable", extra={"lane": self.lane})
            else:
                self.uplink_status = uplink  # ops and the status read this one, not the disk
                full = uplink.bytes_used >= self.queue.max_bytes
                now = (full, uplink.high_water_reached)
                # A failed write changes neither: once a probe commits again, say so anyway.
                if "disk_error" in self.runner.state.faults and await self.queue.writable():
                    last = None
                if now != last:
                    hw = uplink.high_water_reached
                    self.runner.post(ev.QueueChanged(full=full, high_water=hw))
                    last = now
            await self.clocks.sleep(HEALTH_EVERY_S)

    def _watch_disk(self) -> None:
        """A queue call or probe write unanswered past `disk_answer_s` raises
        `disk_not_answering`; once the disk answers its text says so, and when the lane
        reopens; none seen waiting that long for the hold-off (`disk_clear_s`) clears it. Reads
        what their callers wait for, never the disk. The core is told each change of phase
        only: the "unanswered for N s" of a text read again each tick moves every second."""
        now = self.clocks.monotonic()
        waits = (self.queue.waiting_since(), self.disk_probe.waiting_since())
        since = min((t for t in waits if t is not None), default=None)
        data = self.config.lane.data_dir
        after_s = self.config.lane.disk_answer_s
        hold_s = clear_after_s(after_s, self.config.lane.disk_clear_s)
        answers = judged(
            data,
            since,
            now,
            self.clocks.wall(),
            after_s=after_s,
            hold_s=hold_s,
            late_at=self._disk_late_at,
        )
        self._disk_late_at = answers.late_at
        before, self._disk_phase = self._disk_phase, answers.phase
        if answers.phase == before:
            return
        extra = {"lane": self.lane, "path": str(data)}
        if answers.late is not None:
            said = (
                "data directory not answering" if before is None else "data directory stalls again"
            )
            log.error(said, extra={**extra, "error": answers.late})
            self.runner.post(ev.DiskAnswering(answering=False, detail=answers.late))
        elif answers.again is not None:
            log.warning(
                "data directory answers, lane held closed", extra={**extra, "error": answers.again}
            )
            self.runner.post(ev.DiskAnswersAgain(answers.again))
        else:
            log.info("data directory answers again", extra=extra)
            self.runner.post(ev.DiskAnswering(answering=True))

    def _watch_uplink(self) -> None:
        """The uplink connection down past its grace raises `uplink_down`, whether records
        wait or not (`uplink_stalled` needs one); connected again clears it."""
        now = self.clocks.monotonic()
        if self.uplink.connected.is_set():
            self._uplink_down_since = None
        elif self._uplink_down_since is None:
            self._uplink_down_since = now
        broker = self.config.uplink_broker
        grace = UPLINK_DOWN_AFTER_KEEPALIVES * broker.keepalive_s
        where = f"{broker.host}:{broker.port}"
        text = uplink_down(self._uplink_down_since, now, self.clocks.wall(), grace, where)
        # Raised once with its text: read again each second, its "since" (wall time worked
        # back from the monotonic clock) moves with every step or slew of the wall clock.
        if (text is None) == (UPLINK_DOWN not in self.runner.alarms):
            return
        self.runner.alarm(UPLINK_DOWN, text)

    def _say(self, code: str, text: str | None) -> None:
        """An alarm read again every health tick: raised or cleared only when its text changed
        (the runner logs and notifies each call)."""
        if text != self.runner.alarms.get(code):
            self.runner.alarm(code, text)

    async def _health_loop(self) -> None:
        """Key set age, the camera, the peer messages, the disk's answers and the uplink
        connection into alarms: nothing here waits on the disk, so a hung one stops none."""
        while True:
            self._watch_disk()
            self._watch_uplink()
            keys = self.verifier.keys
            stale = bool(keys.keys) and keyset_stale(
                keys, self.clocks.wall(), self.config.auth.keyset_max_age_s
            )
            self._say("keyset_stale", "issuer key set is older than allowed" if stale else None)
            self._say(NO_TOKEN_KEY_ALARM, no_token_key_now(keys, self.clocks.wall()))
            self._watch_camera()
            self._say("trust_update_refused", self.verifier.refusal_text())
            self._say_counted()
            for code, text in self.peers.alarm_texts(self.clocks.wall()).items():
                self._say(code, text)
            self._reload_changed_files()
            await self.clocks.sleep(HEALTH_EVERY_S)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("event not published", extra={"error": str(task.exception())})


async def _given_the_disk(
    work: asyncio.Future[Any], config: LaneConfig, waits: Callable[[], dict[str, str]]
) -> bool:
    """Stopping, whether `work` on the data directory ends within STORES_CLOSE_S; past
    STORES_SAY_AFTER_S the log says what it waits for (`waits`: its `waiting` words)."""
    await asyncio.wait([work], timeout=STORES_SAY_AFTER_S)
    if not work.done():
        extra = {"lane": config.lane.id, "path": str(config.lane.data_dir), **waits()}
        log.warning("lane stopping: waiting for the data directory", extra=extra)
        await asyncio.wait([work], timeout=STORES_CLOSE_S - STORES_SAY_AFTER_S)
    return work.done()


def _stopped_starting(config: LaneConfig, waiting: str) -> StoresHungError:
    """A stop that gave up on the start's wait for the data directory: logged, and the words
    `lane run` says on its way out."""
    data = config.lane.data_dir
    extra = {"lane": config.lane.id, "path": str(data), "waiting": waiting}
    log.error("lane stopped while starting", extra=extra)
    return StoresHungError(
        f"{data} does not answer: stopped while starting after {STORES_CLOSE_S:g} s, waiting"
        f" for {waiting}; nothing was served; threads stuck in it hold the process until it"
        " does"
    )


async def wait_for_data_dir(
    config: LaneConfig, stop: asyncio.Event, systemd: SystemdNotifier | None = None
) -> bool:
    """Wait until the data directory can take the lane's stores; False when stopped first.

    Says why on stderr, in the log and in systemd's status, once per distinct reason, and
    that it tries again. A hung disk (a frozen file system, a dead NFS server) answers the
    check with nothing at all: past `lane.disk_answer_s` that is said too, and the same check
    is waited for (one thread stuck in the disk, not one more per try). Stopped while the
    check waits, it waits for it at most STORES_CLOSE_S, then raises StoresHungError."""
    data = config.lane.data_dir
    answer_s = config.lane.disk_answer_s
    said: str | None = None
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lane-data-dir")
    stopped = asyncio.ensure_future(stop.wait())
    check: asyncio.Future[str | None] | None = None
    try:
        while not stop.is_set():
            if check is None:
                check = loop.run_in_executor(executor, _data_dir_problem, data)
            either: list[asyncio.Future[Any]] = [check, stopped]
            await asyncio.wait(either, timeout=answer_s, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                break
            problem: str | None
            if not check.done():
                problem, then = _not_answering(answer_s), "waiting for it"
            else:
                problem, check = check.result(), None
                then = f"trying again every {DATA_DIR_RETRY_S:g} s"
            if problem is None:
                if said is not None:
                    _usable(config)
                return True
            if problem != said:
                said = problem
                _cannot_start_yet(config, systemd, problem, then)
            if check is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DATA_DIR_RETRY_S):
                        await stop.wait()
        if check is not None and not await _given_the_disk(
            check, config, lambda: {"waiting": CHECKING}
        ):
            raise _stopped_starting(config, CHECKING)
        return False
    finally:
        stopped.cancel()
        # A check stuck in a hung disk keeps its thread until the disk answers: not waited.
        executor.shutdown(wait=False)


async def build_saying_why(
    config: LaneConfig, stop: asyncio.Event, systemd: SystemdNotifier | None = None
) -> LaneDaemon | None:
    """`build(config)`, saying past `lane.disk_answer_s` that the data directory does not
    answer, as the start's check says it: a disk may hang between that check and the stores'
    opening, which waits for it (systemd's status said only "opening the stores"). None when
    stopped first: what was opened is closed again. A stop while the opening waits on a hung
    disk waits for it at most STORES_CLOSE_S, then raises StoresHungError (it used to go
    unseen until the disk answered)."""
    opening = Opening()
    building = asyncio.ensure_future(build(config, opening=opening))
    stopped = asyncio.ensure_future(stop.wait())
    either: list[asyncio.Future[Any]] = [building, stopped]
    said = False
    try:
        answer_s = config.lane.disk_answer_s
        await asyncio.wait(either, timeout=answer_s, return_when=asyncio.FIRST_COMPLETED)
        if not building.done() and not stop.is_set():
            _cannot_start_yet(config, systemd, _not_answering(answer_s), "waiting for it")
            said = True
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not building.done() and not await _given_the_disk(
        building, config, lambda: {"waiting": opening.now}
    ):
        # Left to the disk, not cancelled: a cancelled build closes what it opened, on
        # this loop, on that disk.
        raise _stopped_starting(config, opening.now)
    daemon = building.result()
    if said:
        _usable(config)
    if stop.is_set():
        await daemon.aclose()
        return None
    return daemon


def _not_answering(answer_s: float) -> str:
    return f"does not answer: nothing back from it for {answer_s:g} s (a hung disk?)"


def _usable(config: LaneConfig) -> None:
    """The data directory answers again after `_cannot_start_yet` said it did not."""
    log.info(
        "data directory usable", extra={"lane": config.lane.id, "path": str(config.lane.data_dir)}
    )


def _cannot_start_yet(
    config: LaneConfig, systemd: SystemdNotifier | None, problem: str, then: str
) -> None:
    """Why the lane cannot start yet, on stderr, in the log and in systemd's status."""
    data = config.lane.data_dir
    if systemd is not None:
        systemd.status = partial(str, f"cannot start yet: {data}: {problem}")
    extra = {"lane": config.lane.id, "error": f"{data}: {problem}"}
    log.error("lane cannot start yet", extra={**extra, "retry_s": DATA_DIR_RETRY_S})
    print(f"lane: cannot start yet: {data}: {problem}; {then}", file=sys.stderr)


def _data_dir_problem(data: Path) -> str | None:
    """Why the data directory cannot take the stores, or None; blocking, and on a hung disk
    for as long as it hangs (its mkdir and the probe write wait for a frozen file system)."""
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it: {exc.strerror or exc}"
    problem = disk_problem(*disk_facts(data))
    if problem is not None:
        return problem
    try:
        write_atomically(data / PROBE_FILE, b"")
    except OSError as exc:
        return f"cannot write there: {exc.strerror or exc}"
    return None


def run_with_uvloop(main: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lane run",
        description="Run the lane daemon.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="lane.toml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"lane: bad configuration\n{exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, lane=config.lane.id)
    # A watchdog kill (SIGABRT) first prints every thread's Python stack: where the loop was
    # stuck, in the journal. To a copy of the stderr systemd gave: fd 2 becomes a pipe whose
    # reader logs through stdout, which may be the very write that is stuck.
    faulthandler.enable(os.fdopen(os.dup(2), "w"), all_threads=True)

    async def serve() -> int:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        systemd = SystemdNotifier()
        # READY as soon as the loop turns and pings, not once the lane can serve: readiness to
        # serve is /readyz and may be false for hours (broker or barrier away, a full disk) in
        # a process that is fine. systemd arms the watchdog only at READY, so from here on every
        # wait below (a full disk, the stores opened and upgraded off the loop, a broker down)
        # is under the watchdog instead of TimeoutStartSec, which would kill a lane that waits.
        lane = config.lane.id
        pinger = asyncio.create_task(
            _stop_if_failed(systemd.run(), stop, lane), name="systemd-notify"
        )
        systemd.ready()
        said_stopping = asyncio.create_task(
            _stop_if_failed(_say_stopping(stop, systemd), stop, lane), name="systemd-stopping"
        )
        tasks = (pinger, said_stopping)
        try:
            code = await _serve(config, stop, systemd)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # each failure logged already
            systemd.close()
        if code == EXIT_DISK_HUNG:
            _exit_leaving_the_disk(code)
        failed = any(not t.cancelled() and t.exception() is not None for t in tasks)
        return 1 if failed else code

    code: int = run_with_uvloop(serve)
    return code


def _exit_leaving_the_disk(code: int) -> NoReturn:
    """Exit now, leaving the threads stuck in a hung disk: Python's own exit joins them (the
    loop's default executor, every ThreadPoolExecutor at exit) for as long as it hangs."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _end_if_failed(
    work: Coroutine[Any, Any, None], lane: str, then: Callable[[], Awaitable[None]]
) -> None:
    """Run one of the lane's tasks; if it fails, log it with its traceback, do `then` (what
    says the lane is going) and fail on, which ends the lane."""
    try:
        await work
    except Exception:
        task = asyncio.current_task()
        name = None if task is None else task.get_name()
        log.exception("lane task failed, stopping", extra={"lane": lane, "task": name})
        await then()
        raise


async def _stop_if_failed(work: Coroutine[Any, Any, None], stop: asyncio.Event, lane: str) -> None:
    """Run one of `lane run`'s tasks beside the daemon (systemd's pings and words); if it
    fails, stop the lane, which says offline on its way out and exits 1 for systemd to start
    it again (as a failed task of the daemon ends the lane). Unpinged, the lane would serve on
    until the watchdog killed it with no word why."""

    async def stop_lane() -> None:
        stop.set()

    await _end_if_failed(work, lane, stop_lane)


async def _say_stopping(stop: asyncio.Event, systemd: SystemdNotifier) -> None:
    await stop.wait()
    systemd.stopping()


async def _start(
    config: LaneConfig, stop: asyncio.Event, systemd: SystemdNotifier
) -> LaneDaemon | None:
    """The lane built once the data directory takes its stores; None when stopped first."""
    if not await wait_for_data_dir(config, stop, systemd):
        return None
    systemd.status = partial(str, "opening the stores")
    return await build_saying_why(config, stop, systemd)


async def _serve(config: LaneConfig, stop: asyncio.Event, systemd: SystemdNotifier) -> int:
    try:
        daemon = await _start(config, stop, systemd)
    except STARTUP_ERRORS as exc:
        log.error("lane cannot start", extra={"lane": config.lane.id, "error": str(exc)})
        print(f"lane: cannot start: {exc}", file=sys.stderr)
        return 2
    except StoresHungError as exc:
        print(f"lane: {exc}", file=sys.stderr)
        return EXIT_DISK_HUNG
    if daemon is None:
        return 0  # stopped while starting: nothing open
    systemd.status = lambda: readiness_status(daemon.ops.readiness())
    # From here on FFmpeg's and OpenCV's stderr lines become JSON events; the lane's own
    # words to the operator at start and exit (above) stay plain stderr.
    capture_native_stderr()
    hung: StoresHungError | None = None
    try:
        await daemon.run(stop)
    except StoresHungError as exc:
        hung = exc
    finally:
        release_native_stderr()
    if hung is not None:
        print(f"lane: {hung}", file=sys.stderr)
        return EXIT_DISK_HUNG
    return 0
