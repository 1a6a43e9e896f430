"""LaneStats: what the dashboard shows of a lane, built from its notes (pure, stepped clock)."""

from __future__ import annotations

from typing import Any

from lane.core.notes import BarrierOpened, VehicleArrived
from lane.notification import ShellNote
from lane.notification import ShellNoteName as Shell
from lane.window import percentiles
from sim.stats import EVENTS_KEPT, Histogram, LaneStats


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def record(record_id: str, method: str = "token", result: str = "approved") -> dict[str, Any]:
    return {
        "record": {
            "record_id": record_id,
            "seq": int(record_id[1:]),
            "kind": "toll",
            "vehicle_class": 2,
            "amount_minor": 400,
            "currency": "EUR",
            "method": method,
            "auth": {"result": result, "latency_ms": 3, "offline": method == "token"},
            "flags": ["bad_signature"] if result == "declined" else [],
        }
    }


def test_a_transaction_gets_its_opening_latency() -> None:
    clock = Clock()
    stats = LaneStats("p01/l01", clock)
    clock.t = 10.0
    stats(ShellNote(Shell.RECORD, record("r1")))
    stats(BarrierOpened("v1", "r1", 42.5))
    stats(ShellNote(Shell.RECORD, record("r2", "payment_code", "declined")))
    snap = stats.snapshot()
    newest, first = snap["transactions"]
    assert newest["result"] == "declined" and newest["open_ms"] is None
    assert first["open_ms"] == 42.5 and first["amount_minor"] == 400 and first["offline"]
    assert snap["latency_ms"]["p50"] == 42.5
    assert snap["token_latency_ms"]["p99"] == 42.5
    assert snap["counts"] == {
        "opened": 1,
        "declined": 0,
        "refused": 0,
        "records": 2,
        "tailgating": 0,
    }


def test_a_metro_exit_says_what_it_charged_and_refunded() -> None:
    stats = LaneStats("S03/x01", Clock())
    paid = record("r3", "payment_code")
    paid["record"] |= {"kind": "tap_out", "amount_minor": 800, "payment_id": "pay_3",
                       "flags": ["charged:1400", "refunded:600"]}  # fmt: skip
    stats(ShellNote(Shell.RECORD, paid))
    stats(ShellNote(Shell.RECORD, record("r4")))  # nothing refunded: nothing said
    kept, refunded = stats.snapshot()["transactions"]
    assert kept["refund_text"] is None
    assert (refunded["charged_minor"], refunded["refunded_minor"]) == (1400, 600)
    # Owed when the record was written, where it stands not known yet (or never: a lane in
    # a process of its own): the refund's amount, never "refunded".
    assert refunded["refund_text"] == "charged 14.00, refund 6.00"
    texts: dict[str, str] = {}
    for stage in ("failing", "unpaid (ABNORMAL)", "made"):
        stats.transactions[1]["refund"] = stage  # SimLane.follow_refunds
        texts[stage] = stats.snapshot()["transactions"][1]["refund_text"]
    assert texts == {
        "failing": "charged 14.00, refund 6.00 (failing)",
        "unpaid (ABNORMAL)": "charged 14.00, refund 6.00 (unpaid (ABNORMAL))",
        "made": "charged 14.00, refund 6.00 (made)",
    }


def test_only_offline_tokens_count_as_token_latency() -> None:
    stats = LaneStats("p01/l01", Clock())
    stats(ShellNote(Shell.RECORD, record("r1", "emv")))
    stats(BarrierOpened("v1", "r1", 900.0))
    assert stats.snapshot()["token_latency_ms"]["p50"] is None
    assert stats.snapshot()["latency_ms"]["p50"] == 900.0


def test_display_alarms_and_events_are_kept_newest_first_and_bounded() -> None:
    clock = Clock()
    stats = LaneStats("p01/l01", clock)
    stats(ShellNote(Shell.DISPLAY, {"lines": ["Class 1", "2.50 EUR"]}))
    alarm = {"code": "barrier_offline", "message": "barrier device offline", "active": True}
    stats(ShellNote(Shell.ALARM, alarm))
    for i in range(EVENTS_KEPT + 10):
        clock.t = float(i)
        stats(VehicleArrived(f"v{i}", 1, False))
    snap = stats.snapshot()
    assert snap["display"] == ["Class 1", "2.50 EUR"]
    assert snap["alarm_log"][0]["code"] == "barrier_offline"
    assert snap["events"][0]["vehicle_id"] == f"v{EVENTS_KEPT + 9}"
    assert len(stats.events) == EVENTS_KEPT
    assert all(e["name"] != "display" for e in snap["events"])


def test_throughput_over_the_recent_window_and_the_run() -> None:
    clock = Clock()
    stats = LaneStats("p01/l01", clock)
    for i in range(10):  # ten openings in the first minute
        clock.t = 6.0 * i
        stats(BarrierOpened(f"v{i}", f"r{i}", 20.0))
    clock.t = 60.0
    assert stats.throughput() == {"recent_vph": 600.0, "total_vph": 600.0}
    clock.t = 1200.0  # nothing for 19 minutes: the recent window is empty
    tp = stats.throughput()
    assert tp["recent_vph"] == 0.0 and tp["total_vph"] == 30.0


def test_histogram_bins_and_percentiles() -> None:
    h = Histogram((10, 100))
    for v in (5, 10, 11, 100, 5000):
        h.add(v)
    assert [b["count"] for b in h.bins()] == [2, 2, 1]
    assert [b["label"] for b in h.bins()] == ["≤10", "≤100", ">100"]
    other = Histogram((10, 100))
    other.add(1)
    h.merge(other)
    assert h.counts == [3, 2, 1]
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    assert percentiles([float(i) for i in range(1, 101)]) == {
        "p50": 51.0,
        "p95": 96.0,
        "p99": 100.0,
        "max": 100.0,
    }


def test_the_recent_latency_forgets_a_slow_opening_the_run_keeps() -> None:
    clock = Clock()
    stats = LaneStats("p01/l01", clock)
    stats(BarrierOpened("v0", "r0", 2500.0))  # one slow payment
    for i in range(1, 20):
        clock.t = 400.0 + i
        stats(BarrierOpened(f"v{i}", f"r{i}", 20.0))
    snap = stats.snapshot()
    assert snap["latency_ms"]["max"] == 2500.0
    assert snap["recent_latency_ms"]["max"] == 20.0 and snap["recent_latency_ms"]["p99"] == 20.0


def test_the_display_blanks_when_its_ttl_runs_out() -> None:
    clock = Clock()
    stats = LaneStats("p01/l01", clock, speed=10.0)  # the ttl is real seconds: 5 s = 50 sim s
    clock.t = 100.0
    stats(ShellNote(Shell.DISPLAY, {"lines": ["Thank you"], "ttl_s": 5.0}))
    clock.t = 149.9
    assert stats.snapshot()["display"] == ["Thank you"]
    clock.t = 150.0
    assert stats.snapshot()["display"] == []
    stats(ShellNote(Shell.DISPLAY, {"lines": ["Class 1", "CNY 5.00"]}))  # no ttl: until the next
    clock.t = 1e6
    assert stats.snapshot()["display"] == ["Class 1", "CNY 5.00"]
