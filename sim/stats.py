"""What an operator sees of one lane, gathered from the lane's own notes.

`LaneStats` is an observer of the runner's notes (`(name, fields)`, the same stream the events
topic carries): the driver display, the last transactions with their latencies, a histogram of
code-in-frame -> barrier-open latency, throughput, alarm and event logs. It keeps bounded
memory (deques) so an endless simulation does not grow. Time comes from a clock parameter in
simulated seconds, so tests can step it.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from lane.core.notes import NoteName
from lane.notification import Notification
from lane.window import Window, percentiles

# Upper bounds (ms) of the latency histogram's bins; the last bin is everything slower.
HISTOGRAM_EDGES_MS = (25, 50, 75, 100, 150, 200, 300, 500, 1000, 2000)
THROUGHPUT_WINDOW_S = 300.0  # simulated seconds of the "recent" throughput
TRANSACTIONS_KEPT = 50
EVENTS_KEPT = 60
QUIET_NOTES = frozenset({"display", "phase", "record"})  # shown elsewhere on the dashboard


class Histogram:
    def __init__(self, edges: tuple[float, ...] = HISTOGRAM_EDGES_MS) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += 1

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    def bins(self) -> list[dict[str, Any]]:
        labels = [f"≤{e:g}" for e in self.edges] + [f">{self.edges[-1]:g}"]
        return [{"label": lab, "count": c} for lab, c in zip(labels, self.counts, strict=True)]


class LaneStats:
    """Observer of one lane's notes; `clock()` is simulated seconds since the start, `speed`
    how many of them pass per real second (the lane's display ttl is in real seconds)."""

    def __init__(self, lane_id: str, clock: Callable[[], float], speed: float = 1.0) -> None:
        self.lane_id = lane_id
        self.clock = clock
        self.speed = speed
        self.display: list[str] = []
        self.display_at: float | None = None
        self.display_until: float | None = None  # simulated time the display blanks
        self.transactions: deque[dict[str, Any]] = deque(maxlen=TRANSACTIONS_KEPT)
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.alarm_log: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.histogram = Histogram()
        self.latencies: deque[float] = deque(maxlen=10_000)  # frame -> open, ms
        self.token_latencies: deque[float] = deque(maxlen=10_000)
        self.openings: deque[float] = deque()  # sim times of openings in the recent window
        # The same latencies over the recent window only: one slow opening long ago must not
        # stay in the figure an operator reads as "now".
        self.recent_latencies: Window[float] = Window(THROUGHPUT_WINDOW_S)
        self.counts: Counter[str] = Counter()
        self._methods: dict[str, str] = {}  # record_id -> method, until its barrier opens

    def __call__(self, note: Notification) -> None:
        # The dashboard shows every note as it is on the events topic: by name and fields.
        self.observe(str(note.name), note.fields())

    def observe(self, name: str, fields: dict[str, Any]) -> None:
        """A note by name and fields (a lane in a process of its own: off the events topic)."""
        now = self.clock()
        if name == "display":
            self.display = [str(line) for line in fields.get("lines", [])]
            self.display_at = now
            ttl = fields.get("ttl_s")
            self.display_until = None if ttl is None else now + float(ttl) * self.speed
        elif name == "record":
            self._record(fields["record"], now)
        elif name == NoteName.BARRIER_OPENED:
            self._opened(fields, now)
        elif name == "alarm":
            self.alarm_log.appendleft(
                {
                    "t": round(now, 1),
                    "code": fields.get("code"),
                    "active": fields.get("active"),
                    "message": fields.get("message"),
                }
            )
        self.counts[name] += 1
        if name not in QUIET_NOTES:
            brief = {k: v for k, v in fields.items() if isinstance(v, str | int | float | bool)}
            self.events.appendleft({"t": round(now, 1), "name": name, **brief})

    def _record(self, rec: dict[str, Any], now: float) -> None:
        auth = rec.get("auth") or {}
        record_id = str(rec.get("record_id"))
        method = str(rec.get("method"))
        flags = [str(f) for f in rec.get("flags") or ()]
        self.counts[f"result:{auth.get('result')}"] += 1
        self.counts[f"method:{method}"] += 1
        self._methods[record_id] = method
        if len(self._methods) > 1000:  # records that never opened (declines) are forgotten
            for key in list(self._methods)[:500]:
                del self._methods[key]
        self.transactions.appendleft(
            {
                "t": round(now, 1),
                "lane": self.lane_id,
                "record_id": record_id,
                "seq": rec.get("seq"),
                "kind": rec.get("kind"),
                "vehicle_class": rec.get("vehicle_class"),
                "amount_minor": rec.get("amount_minor"),
                "currency": rec.get("currency"),
                "method": method,
                "result": auth.get("result"),
                "auth_ms": auth.get("latency_ms"),
                "offline": auth.get("offline"),
                "open_ms": None,
                "flags": flags,
                "payment_id": rec.get("payment_id"),
                # A metro exit's wallet code: charged the maximum, the rest owed back.
                "charged_minor": _flag_amount(flags, "charged"),
                "refunded_minor": _flag_amount(flags, "refunded"),
                "refund": None,  # where that refund stands (SimLane.follow_refunds)
            }
        )

    def _opened(self, fields: dict[str, Any], now: float) -> None:
        self.openings.append(now)
        latency = fields.get("latency_ms")
        record_id = fields.get("record_id")
        method = self._methods.pop(str(record_id), None)
        if isinstance(latency, int | float):
            self.latencies.append(float(latency))
            self.recent_latencies.add(now, float(latency))
            self.histogram.add(float(latency))
            if method == "token":
                self.token_latencies.append(float(latency))
        for tx in self.transactions:
            if tx["record_id"] == record_id:
                tx["open_ms"] = latency
                break

    def throughput(self) -> dict[str, float]:
        """Barrier openings per hour: over the recent window and since the start."""
        now = self.clock()
        while self.openings and self.openings[0] < now - THROUGHPUT_WINDOW_S:
            self.openings.popleft()
        span = min(now, THROUGHPUT_WINDOW_S)
        recent = len(self.openings) * 3600.0 / span if span > 1 else 0.0
        total = self.counts[NoteName.BARRIER_OPENED] * 3600.0 / now if now > 1 else 0.0
        return {"recent_vph": round(recent, 1), "total_vph": round(total, 1)}

    def shown(self) -> list[str]:
        """What the lane display shows now: its last message until its ttl ran out, then
        nothing (the display's idle text)."""
        if self.display_until is not None and self.clock() >= self.display_until:
            return []
        return self.display

    def recent_latency(self) -> list[float]:
        """Frame -> open latencies (ms) of the openings in the recent window."""
        self.recent_latencies.prune(self.clock())
        return self.recent_latencies.values()

    def snapshot(self) -> dict[str, Any]:
        return {
            "display": self.shown(),
            "transactions": [
                {**tx, "refund_text": refund_text(tx)} for tx in list(self.transactions)[:20]
            ],
            "events": list(self.events)[:30],
            "alarm_log": list(self.alarm_log)[:20],
            "histogram": self.histogram.bins(),
            "latency_ms": percentiles(list(self.latencies)),
            "recent_latency_ms": percentiles(self.recent_latency()),
            "token_latency_ms": percentiles(list(self.token_latencies)),
            "throughput": self.throughput(),
            "counts": {
                "opened": self.counts[NoteName.BARRIER_OPENED],
                "declined": self.counts[NoteName.DECLINED],
                "refused": self.counts[NoteName.CODE_REFUSED],
                "records": self.counts["record"],
                "tailgating": self.counts[NoteName.TAILGATING],
            },
        }


def _flag_amount(flags: list[str], name: str) -> int | None:
    """The minor units of a record's `name:<minor>` flag (`charged:1400`), None without one."""
    for flag in flags:
        key, _, value = flag.partition(":")
        if key == name and value.isdigit():
            return int(value)
    return None


def refund_text(tx: dict[str, Any]) -> str | None:
    """What the operator reads of a partial refund: "charged 14.00, refund 8.50 (made)". The
    record's `refunded:` is what was owed back when it was written: made or not is the
    stage's to say, unknown without one."""
    charged, refunded = tx.get("charged_minor"), tx.get("refunded_minor")
    if charged is None or refunded is None:
        return None
    state = tx.get("refund")
    text = f"charged {_major(charged)}, refund {_major(refunded)}"
    return f"{text} ({state})" if state else text


def _major(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"  # fen to yuan, as the lanes' CNY fares
