"""Prometheus metrics of one lane, in a registry of its own (several lanes may share a process).

Two feeds: `observe_note` is a runner observer and counts what the lane decides as it happens
(vehicles, decisions, code-to-open latency, alarms); `update(snapshot)` mirrors the adapters'
own counters and gauges (scanner, MQTT links, uplink queue, key set, health checks), read
periodically and before each scrape by the ops shell (lane/ops.py).

Label values are bounded: methods, results and reasons come from fixed vocabularies (anything
else is `other`); no record, vehicle or payment id ever becomes a label.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from yarl import URL

from lane.auth.acquirer import RequestFailure
from lane.core.names import BARRIER_ALARMS
from lane.core.notes import (
    BarrierOpened,
    CodeRefused,
    PaidNotPassed,
    ScanRefused,
    Tailgating,
    VehicleArrived,
)
from lane.health import Check
from lane.notification import Notification, ShellNote
from lane.notification import ShellNoteName as Shell
from scanner.pipeline import ScanStats
from uplink.forwarder import UplinkStatus
from uplink.records import METHODS

# No `*_created` series: they double every counter's series and a scraper gains nothing from
# them (process-wide; the lane has no other Prometheus users).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Code in frame -> barrier open acknowledged: the driver's wait that the lane owns (20 ms..3 s).
OPEN_BUCKETS = (0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
ACQUIRER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
BARRIER_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

RESULTS = frozenset({"approved", "declined", "deferred", "manual", "refused", "none"})
# Reasons the lane itself produces (auth/tokens, auth/authoriser, auth/policy, lane core).
REASONS = frozenset(
    {
        "malformed",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "denied_account",
        "key_not_valid_at_iat",
        "wrong_algorithm",
        "lifetime_too_long",
        "replayed",
        "passback",
        "already_used",
        "timeout",
        "acquirer_error",
        "acquirer_unavailable",
        "over_floor_limit",
        "offline_limit_reached",
        "reversed",
        "duplicate_auth",
        "invalid_code",
        "unsupported_kind",
        "internal_error",
        "verifier_error",
        "replay_store_error",
        "abandoned",
        "lane_starting",
        "declined",
        "unreadable_code",
        "unsupported_code",
        "no_fare",
        "lane_closed",
    }
)
BARRIER_STATES = ("closed", "opening", "open", "closing", "fault", "offline", "unknown")
MAX_PENDING_COMMANDS = 64
_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")


def reason_label(reason: str | None, *, refused: bool = False) -> str:
    """A bounded label for a decision reason. `refused`: the lane refused the code before any
    authorisation, so free text from the scanner means the code itself was invalid."""
    if not reason:
        return "none"
    if reason in REASONS:
        return reason
    text = reason.lower()
    if text == "unreadable code":
        return "unreadable_code"
    if text.startswith("unsupported code"):
        return "unsupported_code"
    if text.startswith("no fare"):
        return "no_fare"
    if text == "payment timed out":
        return "timeout"
    if text.startswith("error:"):
        return "internal_error"
    return "invalid_code" if refused else "other"


ALIPAY_OPERATIONS = {
    "alipay.trade.pay": "pay",
    "alipay.trade.query": "query",
    "alipay.trade.cancel": "reverse",
    "alipay.trade.refund": "refund",
    "alipay.trade.fastpay.refund.query": "refund",
}


def acquirer_operation(method: str, path: str, api_method: str | None = None) -> str:
    """pay | query | reverse | refund | other, from the request line (and Alipay's `method`
    parameter, which names the call: every Alipay call is a POST to the same gateway path).
    Refunds and WeChat Pay's certificate download are kept out of the driver's calls: a slow
    refund is no slow pay."""
    if api_method is not None:
        return ALIPAY_OPERATIONS.get(api_method, "other")
    if path.endswith("/reverse"):
        return "reverse"
    if "/refund" in path:  # ours: /v1/payments/{id}/refunds; WeChat Pay's: /v3/refund/...
        return "refund"
    if path.endswith("/certificates"):
        return "other"
    if method == "POST":
        return "pay"
    return "query" if method == "GET" else "other"


@dataclass(frozen=True)
class Snapshot:
    """The adapters' state at one moment, gathered by the ops shell."""

    scan: ScanStats | None = None
    mqtt: Mapping[str, tuple[bool, int]] = field(default_factory=dict)  # link -> (up, reconnects)
    uplink: UplinkStatus | None = None
    queue_max_bytes: int = 0
    keyset_age_s: float | None = None
    # (kind, reason) -> key sets and deny lists refused so far (lane.auth.trust)
    trust_refused: Mapping[tuple[str, str], int] = field(default_factory=dict)
    alarms: Mapping[str, str] = field(default_factory=dict)
    barrier_state: str = "unknown"
    readiness: Sequence[Check] = ()
    loop_lag_s: float | None = None


class LaneMetrics:
    def __init__(
        self,
        lane: str,
        mode: str,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        r = self.registry
        info = Gauge(
            "lane_info", "The lane this process serves", ["lane", "mode", "version"], registry=r
        )
        info.labels(lane, mode, _version()).set(1)
        self.vehicles = Counter(
            "lane_vehicles", "Vehicles (or passengers) that arrived", registry=r
        )
        self.decisions = Counter(
            "lane_decisions", "Payment decisions", ["method", "result", "reason"], registry=r
        )
        self.code_to_open = Histogram(
            "lane_code_to_open_seconds",
            "From the frame holding the code to the barrier acknowledging the open",
            buckets=OPEN_BUCKETS,
            registry=r,
        )
        self.tailgating = Counter("lane_tailgating", "Vehicles through without paying", registry=r)
        self.paid_not_passed = Counter(
            "lane_paid_not_passed",
            "Vehicles that paid and were not let through (refund records)",
            registry=r,
        )
        self.acquirer_latency = Histogram(
            "lane_acquirer_request_seconds",
            "Acquirer HTTP requests that got a whole answer (body included), by operation",
            ["operation"],
            buckets=ACQUIRER_BUCKETS,
            registry=r,
        )
        self.acquirer_errors = Counter(
            "lane_acquirer_errors",
            "Acquirer requests without a usable answer (timeout, connection, HTTP 4xx/5xx)",
            ["operation", "kind"],
            registry=r,
        )
        self.barrier_commands = Counter(
            "lane_barrier_commands", "Barrier commands sent, retries included", ["op"], registry=r
        )
        self.barrier_rtt = Histogram(
            "lane_barrier_command_rtt_seconds",
            "Barrier command sent -> device ack received",
            ["op"],
            buckets=BARRIER_BUCKETS,
            registry=r,
        )
        self.barrier_faults = Counter(
            "lane_barrier_faults", "Barrier faults raised", ["fault"], registry=r
        )
        self.barrier_state = Gauge(
            "lane_barrier_state",
            "The barrier's last reported state (1 = current)",
            ["state"],
            registry=r,
        )
        self.scan_frames = Counter("lane_scanner_frames", "Frames from the camera", registry=r)
        self.scan_decoded = Counter("lane_scanner_frames_decoded", "Frames decoded", registry=r)
        self.scan_skipped = Counter(
            "lane_scanner_frames_skipped",
            "Frames the change gate let pass undecoded (the same view, nothing in it)",
            registry=r,
        )
        self.scan_dropped = Counter(
            "lane_scanner_frames_dropped",
            "Frames replaced by a newer one before decoding",
            registry=r,
        )
        self.scan_errors = Counter("lane_scanner_decode_errors", "Decoder failures", registry=r)
        self.scan_codes = Counter(
            "lane_scanner_codes", "Codes read (after deduplication)", registry=r
        )
        self.static_codes = Gauge(
            "lane_scanner_static_codes",
            "Codes known as printed at the booth (listed, or learned by the change gate): read,"
            " they are ignored",
            registry=r,
        )
        self.decode_seconds = Gauge(
            "lane_scanner_frame_decode_seconds",
            "Decode time per frame over the last 500 frames, by quantile",
            ["quantile"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "lane_mqtt_connected", "1 while the MQTT link is connected", ["link"], registry=r
        )
        self.mqtt_reconnects = Counter(
            "lane_mqtt_reconnects",
            "MQTT reconnections after a lost connection",
            ["link"],
            registry=r,
        )
        self.backlog = Gauge(
            "lane_uplink_backlog_records", "Records not yet acknowledged", registry=r
        )
        self.oldest_unsent = Gauge(
            "lane_uplink_oldest_unsent_age_seconds",
            "Age of the oldest unacknowledged record (0 when none)",
            registry=r,
        )
        self.refused = Gauge(
            "lane_uplink_refused_records",
            "Records the back office refused (held there with other content); kept and re-offered",
            registry=r,
        )
        self.batches_sent = Counter("lane_uplink_batches_sent", "Batches sent", registry=r)
        self.batches_resent = Counter(
            "lane_uplink_batches_resent", "Batches sent again (no ack in time)", registry=r
        )
        self.queue_bytes = Gauge("lane_queue_disk_bytes", "Bytes the record queue uses", registry=r)
        self.queue_max = Gauge("lane_queue_max_bytes", "Configured bound of the queue", registry=r)
        self.keyset_age = Gauge(
            "lane_keyset_age_seconds", "Age of the issuer key set (NaN when none)", registry=r
        )
        self.trust_refused = Counter(
            "lane_trust_updates_refused",
            "Key sets and deny lists refused (future-dated, generation jump, empty, invalid)",
            ["kind", "reason"],
            registry=r,
        )
        self.alarms_active = Gauge("lane_alarms_active", "Alarms currently raised", registry=r)
        self.alarm = Gauge(
            "lane_alarm_active", "1 while this alarm is raised", ["alarm"], registry=r
        )
        self.ready = Gauge("lane_ready", "1 when every readiness check passes", registry=r)
        self.ready_check = Gauge(
            "lane_ready_check", "1 when this readiness check passes", ["check"], registry=r
        )
        self.loop_lag = Gauge(
            "lane_event_loop_lag_seconds", "How late the event loop's heartbeat ran", registry=r
        )
        self.keyset_age.set(math.nan)
        self._mirrored: dict[str, int] = {}
        self._alarm_codes: set[str] = set()
        # The alarms raised and not cleared since: one told again with a new text (the lane
        # core's `tell_fault`) is not raised again.
        self._raised: set[str] = set()
        self._sent: OrderedDict[str, tuple[str, float]] = OrderedDict()

    # --- what the lane decides (runner observer) --------------------------------------------

    def observe_note(self, note: Notification) -> None:
        match note:
            case VehicleArrived():
                self.vehicles.inc()
            case ShellNote(name=Shell.RECORD, body=body):
                self._record(body.get("record") or {})
            case CodeRefused(reason=reason):
                self.decisions.labels("none", "refused", reason_label(reason, refused=True)).inc()
            case ScanRefused():
                self.decisions.labels("none", "refused", "lane_closed").inc()
            case BarrierOpened(latency_ms=latency_ms) if latency_ms is not None:
                self.code_to_open.observe(latency_ms / 1000.0)
            case Tailgating():
                self.tailgating.inc()
            case PaidNotPassed():
                self.paid_not_passed.inc()
            case ShellNote(name=Shell.ALARM, body=body):
                self._alarm(str(body.get("code", "")), bool(body.get("active")))

    def _record(self, record: Mapping[str, Any]) -> None:
        auth = record.get("auth") or {}
        result = str(auth.get("result", "none"))
        result = result if result in RESULTS else "other"
        method = str(record.get("method", "none"))
        method = method if method in METHODS else "other"
        reason = "none"
        if result == "declined":
            flags = record.get("flags") or []
            # The core appends the decline reason as the record's last flag.
            reason = reason_label(str(flags[-1]) if flags else None)
        self.decisions.labels(method, result, reason).inc()

    def _alarm(self, code: str, active: bool) -> None:
        if not _CODE.fullmatch(code):
            return
        self._alarm_codes.add(code)
        self.alarm.labels(code).set(1 if active else 0)
        if not active:
            self._raised.discard(code)
        elif code not in self._raised:
            self._raised.add(code)
            if code in BARRIER_ALARMS:
                self.barrier_faults.labels(code).inc()

    # --- barrier commands ---------------------------------------------------------------------

    def barrier_sent(self, cmd_id: str, op: str) -> None:
        op = op if op in ("open", "close") else "other"
        self.barrier_commands.labels(op).inc()
        self._sent[cmd_id] = (op, self._clock())  # a retry restarts the clock: its ack counts
        self._sent.move_to_end(cmd_id)
        while len(self._sent) > MAX_PENDING_COMMANDS:
            self._sent.popitem(last=False)

    def barrier_acked(self, cmd_id: str) -> None:
        sent = self._sent.pop(cmd_id, None)
        if sent is not None:
            op, at = sent
            self.barrier_rtt.labels(op).observe(max(0.0, self._clock() - at))

    # --- acquirer requests (told by the acquirer clients: lane.auth.acquirer.HttpClient) ---

    def acquirer_request(
        self, method: str, url: URL, seconds: float, outcome: int | RequestFailure
    ) -> None:
        """One request ended: its whole answer (body included) or why there was none."""
        operation = acquirer_operation(method, url.path, url.query.get("method"))
        if isinstance(outcome, RequestFailure):
            self.acquirer_errors.labels(operation, outcome.value).inc()
            return
        self.acquirer_latency.labels(operation).observe(seconds)
        if outcome >= 500:
            self.acquirer_errors.labels(operation, "http_5xx").inc()
        elif outcome >= 400 and not (outcome == 404 and operation == "query"):
            self.acquirer_errors.labels(operation, "http_4xx").inc()

    # --- the adapters' state (periodic) -------------------------------------------------------

    def update(self, snap: Snapshot) -> None:
        if snap.scan is not None:
            s = snap.scan
            self._mirror(self.scan_frames, "frames", s.frames_in)
            self._mirror(self.scan_decoded, "decoded", s.decoded)
            self._mirror(self.scan_skipped, "skipped", s.skipped)
            self._mirror(self.scan_dropped, "dropped", s.dropped)
            self._mirror(self.scan_errors, "errors", s.errors)
            self._mirror(self.scan_codes, "codes", s.results)
            self.static_codes.set(s.static_known)
            for q, ms in (("0.5", s.decode_ms_p50), ("0.95", s.decode_ms_p95)):
                self.decode_seconds.labels(q).set(math.nan if ms is None else ms / 1000.0)
        for link, (up, reconnects) in snap.mqtt.items():
            self.mqtt_connected.labels(link).set(1 if up else 0)
            self._mirror(self.mqtt_reconnects.labels(link), f"reconnects:{link}", reconnects)
        if snap.uplink is not None:
            u = snap.uplink
            self.backlog.set(u.backlog)
            self.oldest_unsent.set(u.oldest_age_s or 0.0)
            self.refused.set(u.refused)
            self.queue_bytes.set(u.bytes_used)
            self._mirror(self.batches_sent, "sent", u.sent_batches)
            self._mirror(self.batches_resent, "resent", u.resent_batches)
        self.queue_max.set(snap.queue_max_bytes)
        self.keyset_age.set(math.nan if snap.keyset_age_s is None else snap.keyset_age_s)
        for (kind, reason), count in snap.trust_refused.items():
            self._mirror(self.trust_refused.labels(kind, reason), f"trust:{kind}:{reason}", count)
        self.alarms_active.set(len(snap.alarms))
        self._alarm_codes.update(c for c in snap.alarms if _CODE.fullmatch(c))
        for code in self._alarm_codes:
            self.alarm.labels(code).set(1 if code in snap.alarms else 0)
        for state in BARRIER_STATES:
            self.barrier_state.labels(state).set(1 if snap.barrier_state == state else 0)
        if snap.readiness:
            self.ready.set(1 if all(c.ok for c in snap.readiness) else 0)
            for check in snap.readiness:
                self.ready_check.labels(check.name).set(1 if check.ok else 0)
        if snap.loop_lag_s is not None:
            self.loop_lag.set(snap.loop_lag_s)

    def _mirror(self, counter: Any, key: str, value: int) -> None:
        """Advance a counter to an adapter's own running total (a restarted adapter starts
        again from zero: its whole new total counts)."""
        last = self._mirrored.get(key, 0)
        delta = value - last if value >= last else value
        if delta > 0:
            counter.inc(delta)
        self._mirrored[key] = value

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return metadata.version("lane")
    except metadata.PackageNotFoundError:
        return "unknown"
