"""The lane's retained `lane/{id}/health` message, and the alarms only it can judge.

`HealthPublisher(daemon)` observes the runner's notes (phase changes, alarms, records,
vehicles) and, as a task of the daemon's TaskGroup, about once a second:

- raises or clears `uplink_stalled` (the oldest unsent record is older than
  `[uplink] stalled_after_s`), `acquirer_unhealthy` (the online payments of the last few
  minutes failed or were slow), `acquirer_declines` (an unusual share of them was declined) and
  `clock_suspect` (the last token payers' tokens were all refused for their time) through
  `runner.alarm`, so they reach the status, the metrics and the logs like every alarm;
- publishes the health message (barrier/health_message.py), at once after an alarm, a phase
  change or an acknowledgement, else once a second.

It also turns the attendant actions the core does not record (close lane, reopen lane,
acknowledge an alarm) into records of their own, with who did it (see docs/console.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from barrier.health_message import (
    HEALTH_LIFE_S,
    AcquirerHealth,
    CheckEntry,
    LaneHealth,
    health_topic,
)
from barrier.messages import AttendantCommand
from lane.core.names import Alarm, AuthResult, Method, RecordKind
from lane.core.notes import BarrierOpened, VehicleArrived
from lane.core.records import AuthInfo, RecordDraft
from lane.core.road import entry_camera
from lane.core.state import phase
from lane.health import Check
from lane.lane_health import (
    AcquirerSample,
    AlarmBook,
    TokenSample,
    acquirer_alarm,
    acquirer_declines,
    acquirer_health,
    acquirer_sample,
    clock_suspect,
    token_sample,
    uplink_stalled,
)
from lane.notification import Notification, ShellNote, ShellNoteName
from lane.view import LaneView
from lane.window import Window
from uplink.queue import QueueError

log = logging.getLogger("lane.health_publisher")

INTERVAL_S = 1.0
MIN_GAP_S = 0.2  # bursts of notes (an alarm with its phase change) make one message
ACQUIRER_WINDOW_S = 300.0
ACQUIRER_SAMPLES = 20  # the last online payments judged, at most ACQUIRER_WINDOW_S old
TOKEN_SAMPLES = 32  # token decisions kept: the longest run (6 payers) with their retries
SLOW_SHARE_OF_BUDGET = 0.5  # an acquirer p95 above this share of the budget is degraded
SEEN_COMMANDS = 256
# Attendant operations the core records itself (a manual open is a `manual` passage record).
RECORDED_BY_CORE = frozenset({"open"})


class HealthPublisher:
    def __init__(self, daemon: LaneView, readiness: Callable[[], list[Check]]) -> None:
        self.daemon = daemon
        self.readiness = readiness
        self.lane = daemon.lane
        self.wall = daemon.clocks.wall
        self.monotonic = daemon.clocks.monotonic
        self.book = AlarmBook(entry_lane=entry_camera(daemon.runner.state))
        self.counters: Counter[str] = Counter(
            {"vehicles": 0, "passed": 0, "violations": 0, "paid_not_passed": 0}
        )
        self.acquirer: Window[AcquirerSample] = Window(ACQUIRER_WINDOW_S, ACQUIRER_SAMPLES)
        # The last token decisions, however old: a wrong clock refuses each payer's token.
        self.tokens: deque[TokenSample] = deque(maxlen=TOKEN_SAMPLES)
        self.phase = phase(daemon.runner.state).value
        self._phase_at = self.monotonic()  # when the phase began
        self.fps: float | None = None
        self._frames: tuple[float, int] | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._writes: set[asyncio.Task[None]] = set()
        daemon.runner.observers.append(self.observe)

    def _now_us(self) -> int:
        return int(self.wall() * 1_000_000)

    def _clock_s(self) -> float:
        """The wall clock less the monotonic one: it moves when the lane's clock is set."""
        return self.wall() - self.monotonic()

    # --- inputs ---------------------------------------------------------------------------

    def observe(self, note: Notification) -> None:
        """Runner observer: every note of the lane."""
        match note:
            case VehicleArrived():
                self.counters["vehicles"] += 1
            case BarrierOpened():
                self.counters["passed"] += 1
            case ShellNote():
                self._shell(note.name, note.body)

    def _shell(self, name: ShellNoteName, fields: dict[str, Any]) -> None:
        if name is ShellNoteName.RECORD:
            record = fields.get("record") or {}
            sample = acquirer_sample(record)
            if sample is not None:
                self.acquirer.add(self.monotonic(), sample)
            token = token_sample(record, self._clock_s())
            if token is not None:
                self.tokens.append(token)
            if record.get("kind") == "violation":
                self.counters["violations"] += 1
        elif name is ShellNoteName.PHASE:
            self.phase, self._phase_at = str(fields["to"]), self.monotonic()
            self._wake.set()
        elif name is ShellNoteName.ALARM:
            code = str(fields.get("code"))
            if fields.get("active"):
                self.book.raised(code, str(fields.get("message") or ""), self._now_us())
                if code == Alarm.PAID_NOT_PASSED:
                    self.counters["paid_not_passed"] += 1
            else:
                self.book.cleared(code, self._now_us())
            self._wake.set()

    def attendant(self, cmd: AttendantCommand) -> None:
        """Every attendant command, before the core sees it: acknowledgements are applied here,
        and the actions the core does not record become records."""
        if cmd.cmd_id in self._seen:
            return  # QoS 1 may deliver a command twice; it is recorded once
        self._seen[cmd.cmd_id] = None
        while len(self._seen) > SEEN_COMMANDS:
            self._seen.popitem(last=False)
        flags = ["attendant_action", f"op:{cmd.op}", f"attendant:{cmd.attendant}"]
        if cmd.op == "ack_alarm":
            entry = self.book.acknowledge(cmd.reason, cmd.attendant, self._now_us())
            if entry is None:
                log.warning(
                    "acknowledgement of an alarm that is not active ignored",
                    extra={"lane": self.lane, "alarm": cmd.reason, "cmd_id": cmd.cmd_id},
                )
                return
            flags.append(f"alarm:{cmd.reason}")
            self._wake.set()
        else:
            flags.append(f"reason:{cmd.reason}")
        if cmd.op in RECORDED_BY_CORE:
            return
        draft = RecordDraft(
            kind=RecordKind.MANUAL,
            vehicle_id=cmd.cmd_id,
            vehicle_class=0,
            amount_minor=0,
            currency="",
            method=Method.MANUAL,
            account_ref=None,
            auth=AuthInfo(result=AuthResult.NONE),
            flags=tuple(flags),
        )
        task = asyncio.ensure_future(self._write(cmd, draft))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "attendant action not recorded",
                extra={"lane": self.lane, "error": repr(task.exception())},
            )

    async def _write(self, cmd: AttendantCommand, draft: RecordDraft) -> None:
        try:
            record = await self.daemon.queue.append(draft)
        except (QueueError, OSError) as exc:
            log.error(
                "attendant action not recorded",
                extra={"lane": self.lane, "cmd_id": cmd.cmd_id, "op": cmd.op, "error": str(exc)},
            )
            return
        self.daemon.forwarder.wake()
        log.info(
            "attendant action recorded",
            extra={
                "lane": self.lane,
                "record_id": record.record_id,
                "cmd_id": cmd.cmd_id,
                "op": cmd.op,
                "attendant": cmd.attendant,
            },
        )

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._judge()
            await self._publish()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL_S):
                    await self._wake.wait()
            await asyncio.sleep(MIN_GAP_S)

    def _judge(self) -> None:
        """Raise or clear the alarms this module owns; sample the camera's frame rate."""
        d = self.daemon
        uplink = d.uplink_status
        if uplink is not None:
            limit = d.config.uplink.stalled_after_s
            self._set_alarm(
                "uplink_stalled", uplink_stalled(uplink.oldest_age_s, uplink.backlog, limit)
            )
        self.acquirer.prune(self.monotonic())
        acquirer = self._acquirer()
        self._set_alarm("acquirer_unhealthy", acquirer_alarm(acquirer))
        self._set_alarm("acquirer_declines", acquirer_declines(acquirer))
        skew_s = d.config.auth.skew_s
        self._set_alarm("clock_suspect", clock_suspect(self.tokens, self._clock_s(), skew_s))
        now, frames = self.monotonic(), d.pipeline.stats().frames_in
        if self._frames is not None and now > self._frames[0]:
            self.fps = round((frames - self._frames[1]) / (now - self._frames[0]), 1)
        self._frames = (now, frames)
        self.book.sync(d.runner.alarms, self._now_us())

    def _set_alarm(self, code: str, message: str | None) -> None:
        if self.daemon.runner.alarms.get(code) != message:
            self.daemon.runner.alarm(code, message)

    def _acquirer(self) -> AcquirerHealth:
        slow_ms = self.daemon.config.auth.budget_s * 1000 * SLOW_SHARE_OF_BUDGET
        return acquirer_health(self.acquirer.values(), slow_ms)

    def message(self) -> LaneHealth:
        d = self.daemon
        uplink = d.uplink_status
        now_us = self._now_us()
        # Since when, on the wall clock of now: `ts - phase_since` is how long the phase has
        # lasted on the monotonic clock, which a step of the wall clock does not change.
        lasted_us = round((self.monotonic() - self._phase_at) * 1_000_000)
        return LaneHealth(
            phase=self.phase,
            phase_since_us=now_us - lasted_us,
            alarms=self.book.entries(),
            checks=[CheckEntry(c.name, c.ok, c.detail[:256]) for c in self.readiness()],
            counters=dict(self.counters),
            acquirer=self._acquirer(),
            ts_us=now_us,
            camera_fps=self.fps,
            uplink_backlog=None if uplink is None else uplink.backlog,
            oldest_unsent_s=None if uplink is None else uplink.oldest_age_s,
            refunds=d.resolver.refund_tally(),
        )

    async def _publish(self) -> None:
        link = self.daemon.link
        if not link.connected:
            return
        try:
            await link.mqtt.publish(
                health_topic(self.lane),
                self.message().encode(),
                qos=1,
                retain=True,
                expiry_s=HEALTH_LIFE_S,
            )
        except ConnectionError as exc:
            log.warning("health not published", extra={"lane": self.lane, "error": str(exc)})
