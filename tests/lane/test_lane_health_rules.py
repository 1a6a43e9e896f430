"""The pure judgements behind the health topic: alarm book, acquirer health, uplink stall,
severities. Tables plus hypothesis properties; no I/O, no clock."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.alarm_severity import AT_ENTRY_LANE, SEVERITY, Severity, severity_of, worst
from lane.auth.peers import KEY_MISSING_ALARM, REFUSED_ALARM, UNSIGNED_ALARM
from lane.auth.resolver import (
    REFUND_ALARM,
    REFUND_UNPAID_ALARM,
    REFUND_UNRECORDED_ALARM,
    STORE_ALARM,
)
from lane.auth.wechatpay_trust import ALARM as WECHATPAY_CERTIFICATES
from lane.core.names import BARRIER_ALARMS, Alarm
from lane.disk_answer import DiskPhase, clear_after_s, judged, not_answering
from lane.health import QUEUE_FAULTS
from lane.lane_health import (
    CLEARED_KEPT,
    REOPEN_WITHIN_US,
    UPLINK_DOWN,
    AcquirerSample,
    AlarmBook,
    TokenSample,
    acquirer_alarm,
    acquirer_declines,
    acquirer_health,
    acquirer_sample,
    clock_suspect,
    token_sample,
    uplink_down,
    uplink_stalled,
)
from lane.tap_clocks import CLOCK_ALARM
from lane.tap_held import TAPS_ALARM
from lane.ticket_desk import PAPER_OUT, PRINTER_OFFLINE
from lane.transport.refusals import PUBLISH_REFUSED
from lane.verifier import REPLAY_ALARM


def test_every_alarm_the_lane_raises_today_has_a_severity() -> None:
    known = {*Alarm, *BARRIER_ALARMS, *QUEUE_FAULTS, "camera_blackout", "keyset_stale"}
    known |= {"attendant_needed", "queue_high_water", "uplink_stalled", "acquirer_unhealthy"}
    known |= {"acquirer_declines", "clock_suspect"}
    known |= {"trust_update_refused", "payment_alipay", "payment_wechatpay", "payment_acquirer"}
    known |= {PAPER_OUT, PRINTER_OFFLINE, WECHATPAY_CERTIFICATES, REPLAY_ALARM, STORE_ALARM}
    known |= {REFUND_ALARM, REFUND_UNPAID_ALARM, REFUND_UNRECORDED_ALARM}
    known |= {TAPS_ALARM, CLOCK_ALARM}
    known |= {REFUSED_ALARM, UNSIGNED_ALARM, KEY_MISSING_ALARM, PUBLISH_REFUSED, UPLINK_DOWN}
    assert known <= set(SEVERITY), sorted(known - set(SEVERITY))


DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_severities(
    doc: str, header: str, code_cell: int, severity_cell: int
) -> dict[str, str]:
    """Every alarm code of the markdown table under `header` in docs/`doc`, with the severity
    the table gives it."""
    lines = (DOCS / doc).read_text().splitlines()
    rows = lines[lines.index(header) + 2 :]
    said: dict[str, str] = {}
    for row in rows[: next(i for i, r in enumerate(rows) if not r.startswith("|"))]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        for code in re.findall(r"`([a-z_]+)`", cells[code_cell]):
            said[code] = cells[severity_cell]
    return said


@pytest.mark.parametrize(
    ("doc", "header", "code_cell", "severity_cell", "per_lane"),
    [
        (
            "operations.md",
            "| alarm | kind | severity | raised when | while it lasts | clears when"
            " | the operator should |",
            0,
            2,
            True,
        ),
        ("console.md", "| severity | alarms |", 1, 0, False),
    ],
)
def test_the_docs_give_every_alarm_the_severity_the_lane_gives_it(
    doc: str, header: str, code_cell: int, severity_cell: int, per_lane: bool
) -> None:
    """`per_lane`: the table gives an entry lane's severity too, where it differs."""
    said = documented_severities(doc, header, code_cell, severity_cell)
    expected = {code: str(severity) for code, severity in SEVERITY.items()}
    if per_lane:
        for code, severity in AT_ENTRY_LANE.items():
            expected[code] += f"; {severity} at an entry lane"
    assert said == expected
    if not per_lane:  # said below the table
        text = (DOCS / doc).read_text()
        for code, severity in AT_ENTRY_LANE.items():
            assert f"`{code}` is `{severity}` at a closed road's entry lane" in text


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([], None),
        (["keyset_stale"], Severity.MINOR),
        (["keyset_stale", "uplink_down"], Severity.MAJOR),
        (["camera_blackout", "barrier_offline", "keyset_stale"], Severity.CRITICAL),
        (["something_new"], Severity.MAJOR),  # an unclassified alarm is taken seriously
    ],
)
def test_the_worst_severity_colours_the_tile(codes: list[str], expected: Severity | None) -> None:
    assert worst([severity_of(c) for c in codes]) == expected


@pytest.mark.parametrize(
    ("code", "entry_lane", "expected"),
    [
        ("camera_blackout", False, Severity.CRITICAL),  # closes the lane to payments
        ("camera_blackout", True, Severity.MINOR),  # an entry lane goes on issuing tickets
        ("barrier_offline", True, Severity.CRITICAL),  # the entry lane's barrier all the same
        ("printer_paper_out", True, Severity.MAJOR),
        ("keyset_stale", True, Severity.MINOR),
        ("something_new", True, Severity.MAJOR),
    ],
)
def test_an_entry_lane_s_dark_camera_is_a_warning_and_the_rest_as_anywhere(
    code: str, entry_lane: bool, expected: Severity
) -> None:
    assert severity_of(code, entry_lane=entry_lane) is expected
    book = AlarmBook(entry_lane=entry_lane)
    book.raised(code, "text", 100)
    assert [e.severity for e in book.entries()] == [expected]


def test_an_alarm_occurrence_keeps_its_since_and_its_acknowledgement() -> None:
    book = AlarmBook()
    book.raised("camera_blackout", "camera blackout", 100)
    book.raised("camera_blackout", "camera lost", 200)  # same occurrence, new text
    assert book.acknowledge("camera_blackout", "alice", 300) is not None
    assert book.acknowledge("camera_blackout", "bob", 400) is not None  # the first one stays
    (entry,) = book.entries()
    assert (entry.since_us, entry.message, entry.acked_by, entry.acked_us) == (
        100,
        "camera lost",
        "alice",
        300,
    )
    book.cleared("camera_blackout", 500)
    assert book.acknowledge("camera_blackout", "carol", 600) is None
    later = 500 + REOPEN_WITHIN_US + 1
    book.raised("camera_blackout", "camera blackout", later)  # a new occurrence: not acked
    active, cleared = book.entries()
    assert (active.since_us, active.acked_by, active.cleared_us) == (later, None, None)
    assert (cleared.since_us, cleared.cleared_us, cleared.acked_by) == (100, 500, "alice")


def test_an_alarm_back_soon_after_it_cleared_is_the_same_occurrence() -> None:
    """A barrier that ignores every vehicle's command raises barrier_no_ack, lets it clear when
    the lane lets go of the command, and raises it again with the next vehicle: one problem,
    acknowledged once."""
    book = AlarmBook()
    book.raised("barrier_no_ack", "open c1", 1_000)
    assert book.acknowledge("barrier_no_ack", "alice", 2_000) is not None
    book.cleared("barrier_no_ack", 3_000)
    book.raised("other", "unrelated", 3_500)
    book.raised("barrier_no_ack", "open c2", 3_000 + REOPEN_WITHIN_US)
    entries = {e.code: e for e in book.entries()}
    back = entries["barrier_no_ack"]
    assert (back.since_us, back.message, back.acked_by, back.cleared_us) == (
        1_000,
        "open c2",
        "alice",
        None,
    )
    assert len(book.entries()) == 2, "the occurrence is not also listed as cleared"


@given(
    st.lists(
        st.tuples(st.sampled_from(["raise", "clear", "sync"]), st.sampled_from(["a", "b", "c"])),
        max_size=60,
    )
)
def test_the_book_always_agrees_with_the_lane_after_a_sync(ops: list[tuple[str, str]]) -> None:
    book, truth = AlarmBook(), {}
    for t, (op, code) in enumerate(ops):
        if op == "raise":
            truth[code] = f"{code} is wrong"
            book.raised(code, truth[code], t)
        elif op == "clear":
            truth.pop(code, None)
            book.cleared(code, t)
        else:
            truth[code] = "raised while nobody listened"  # a note the book missed
    book.sync(truth, len(ops))
    entries = book.entries()
    assert {e.code for e in entries if e.active} == set(truth)
    assert sum(not e.active for e in entries) <= CLEARED_KEPT
    assert all(e.cleared_us is None or e.cleared_us >= e.since_us for e in entries)


def _record(
    method: str, result: str, flags: tuple[str, ...] = (), latency: int = 40
) -> dict[str, object]:
    return {
        "method": method,
        "auth": {"result": result, "latency_ms": latency},
        "flags": list(flags),
    }


@pytest.mark.parametrize(("down_since", "down"), [(None, False), (86.0, False), (85.0, True)])
def test_the_uplink_is_down_once_its_grace_is_over(down_since: float | None, down: bool) -> None:
    text = uplink_down(down_since, 100.0, 1_800_000_000.0, 15.0, "127.0.0.1:1883")
    assert (text is not None) == down
    if text is not None:  # since when, on the wall clock, in UTC: 15 s before 08:00:00
        assert "broker 127.0.0.1:1883 since 2027-01-15T07:59:45Z;" in text


@pytest.mark.parametrize(("since", "hung"), [(None, False), (86.0, False), (85.0, True)])
def test_a_data_directory_waited_on_past_its_limit_does_not_answer(
    since: float | None, hung: bool
) -> None:
    text = not_answering(Path("/var/lib/lane"), since, 100.0, 1_800_000_000.0, 15.0)
    assert (text is not None) == hung
    if text is not None:
        assert text.startswith("/var/lib/lane: a read or write unanswered for 15 s")
        assert "(since 2027-01-15T07:59:45Z)" in text


DATA = Path("/var/lib/lane")
WALL = 1_800_000_000.0  # the wall time at monotonic 100.0


@pytest.mark.parametrize(("after_s", "clear_s", "hold_s"), [(15, 30, 30), (40, 30, 40), (1, 2, 2)])
def test_the_hold_off_is_never_shorter_than_the_limit(
    after_s: float, clear_s: float, hold_s: float
) -> None:
    assert clear_after_s(after_s, clear_s) == hold_s


@pytest.mark.parametrize(
    ("since", "late_at", "now", "late_after", "held"),
    [
        (None, None, 100.0, None, False),  # nothing waits, nothing was late
        (90.0, None, 100.0, None, False),  # a call waits, not yet past the limit
        (85.0, None, 100.0, 100.0, True),  # past it: raised
        (85.0, 95.0, 100.0, 100.0, True),  # still past it: seen late again now
        (None, 80.0, 100.0, 80.0, True),  # answered 20 s ago: held for the 30 s hold-off
        (95.0, 80.0, 100.0, 80.0, True),  # a call in time does not end the hold-off early
        (None, 70.0, 100.0, None, False),  # 30 s without a late call: cleared
    ],
)
def test_the_fault_holds_until_no_call_has_been_late_for_the_hold_off(
    since: float | None, late_at: float | None, now: float, late_after: float | None, held: bool
) -> None:
    answers = judged(DATA, since, now, WALL, after_s=15.0, hold_s=30.0, late_at=late_at)
    assert answers.late_at == late_after
    assert answers.holds == held
    assert (answers.late is not None) == (late_after == now)  # raised by a call late now
    # Held, and no call late now: the disk answers again, the text says when the lane reopens.
    assert (answers.again is not None) == (held and answers.late is None)
    assert answers.phase == (
        DiskPhase.LATE if answers.late else DiskPhase.AGAIN if answers.again else None
    )


def test_the_hold_off_s_text_says_when_the_lane_reopens() -> None:
    """Answered 20 s ago, held 30 s after: 10 s from now (08:00:00 at monotonic 100.0)."""
    answers = judged(DATA, None, 100.0, WALL, after_s=15.0, hold_s=30.0, late_at=80.0)
    assert answers.again == "/var/lib/lane: the lane reopens at 08:00:10 UTC unless it stalls again"
    # The tick that clears it comes within a second: a fraction is rounded up, not down.
    answers = judged(DATA, None, 100.0, WALL + 0.2, after_s=15.0, hold_s=30.0, late_at=80.0)
    assert answers.again is not None and "08:00:11 UTC" in answers.again


TICK_S = 1.0  # the health loop's period


def _ticks(
    calls: list[tuple[int, int]], after_s: float, hold_s: float
) -> tuple[list[tuple[float, bool]], list[float], list[tuple[float, float]]]:
    """A disk's calls one after another, each (gap before it, how long it waits), judged every
    tick as the health loop does: the fault's changes (time, raised), the ticks that saw a
    call waiting past `after_s`, and each call's (start, end)."""
    spans: list[tuple[float, float]] = []
    t = 0.0
    for gap, wait in calls:
        spans.append((t + gap, t + gap + wait))
        t += gap + wait
    changes: list[tuple[float, bool]] = []
    late_ticks: list[float] = []
    late_at: float | None = None
    held = False
    now = 0.0
    while now <= t + hold_s + 2 * TICK_S:
        since = next((start for start, end in spans if start <= now < end), None)
        if since is not None and now - since >= after_s:
            late_ticks.append(now)
        answers = judged(DATA, since, now, WALL, after_s=after_s, hold_s=hold_s, late_at=late_at)
        late_at = answers.late_at
        if answers.holds != held:
            held = not held
            changes.append((now, held))
        now += TICK_S
    return changes, late_ticks, spans


@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=30),
    st.integers(1, 20),
    st.integers(1, 40),
)
def test_a_slow_disk_flips_the_fault_at_most_once_per_hold_off_and_it_always_clears(
    calls: list[tuple[int, int]], after_s: int, clear_s: int
) -> None:
    hold_s = clear_after_s(after_s, clear_s)
    changes, late_ticks, spans = _ticks(calls, after_s, hold_s)
    # Safe: raised at every tick that sees a call late.
    for tick in late_ticks:
        assert next(raised for at, raised in reversed(changes) if at <= tick)
    held_at = [at for at, raised in changes if raised]
    cleared_at = [at for at, raised in changes if not raised]
    # No flapping: each raise stands the hold-off, so raises (and clears) are that far apart.
    for raised, cleared in zip(held_at, cleared_at, strict=False):
        assert cleared - raised >= hold_s
    assert all(b - a >= hold_s for a, b in pairwise(held_at))
    # Live: cleared the hold-off after the last tick that saw a call late, so within the
    # hold-off after that call ended.
    if late_ticks:
        assert changes[-1] == (late_ticks[-1] + hold_s, False)
        last_late_end = next(end for start, end in spans if start <= late_ticks[-1] < end)
        assert changes[-1][0] <= last_late_end + hold_s
    else:
        assert changes == []


def test_a_disk_whose_every_write_is_a_little_late_keeps_the_lane_closed_once() -> None:
    """The defect: every probe write (every 5 s) taking 16 s against a 15 s limit raised and
    cleared the fault at every write; now it is raised once and cleared 30 s after the last."""
    changes, late_ticks, _ = _ticks([(5, 16)] * 20, 15.0, 30.0)
    assert changes == [(20.0, True), (late_ticks[-1] + 30.0, False)]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (_record("token", "approved"), None),
        (_record("emv", "approved"), AcquirerSample(False, False, 40.0)),
        (_record("payment_code", "declined", ("declined",)), AcquirerSample(False, True, 40.0)),
        (_record("emv", "declined", ("acquirer_unavailable",)), AcquirerSample(True, False, 40.0)),
        (_record("emv", "declined", ("timeout",), 1900), AcquirerSample(True, False, 1900.0)),
        (_record("emv", "approved", ("deferred",)), AcquirerSample(True, False, 40.0)),
        # A copy a fare gate refused as used reached no acquirer: neither a decline nor 0 ms.
        (_record("payment_code", "declined", ("already_used",), 0), None),
    ],
)
def test_what_a_record_says_about_the_acquirer(
    record: dict[str, object], expected: AcquirerSample | None
) -> None:
    assert acquirer_sample(record) == expected


def _samples(ok: int, errors: int, latency: float = 50.0) -> list[AcquirerSample]:
    return [AcquirerSample(False, False, latency)] * ok + [
        AcquirerSample(True, False, 0.0)
    ] * errors


@pytest.mark.parametrize(
    ("samples", "state", "alarm"),
    [
        (_samples(2, 0), "idle", False),  # too few to judge
        (_samples(20, 0), "ok", False),
        (_samples(17, 3), "ok", False),
        (_samples(16, 4), "degraded", True),
        (_samples(10, 10), "down", True),
        (_samples(0, 5), "down", True),
        (_samples(20, 0, latency=1200.0), "degraded", True),  # slow: half the budget
    ],
)
def test_acquirer_health_and_its_alarm(
    samples: list[AcquirerSample], state: str, alarm: bool
) -> None:
    health = acquirer_health(samples, slow_ms=1000.0)
    assert health.state == state
    assert (acquirer_alarm(health) is not None) == alarm


@pytest.mark.parametrize(
    ("approved", "declined", "errors", "alarm"),
    [
        (1, 1, 0, False),  # too few to judge
        (19, 1, 0, False),  # everyday declines
        (17, 3, 0, False),
        (16, 4, 0, True),  # a fifth declined
        (0, 20, 0, True),
        (4, 3, 13, False),  # errors are acquirer_unhealthy's; these declines are 3 of 20
    ],
)
def test_an_unusual_share_of_declines_raises_its_own_alarm(
    approved: int, declined: int, errors: int, alarm: bool
) -> None:
    samples = _samples(approved, errors) + [AcquirerSample(False, True, 50.0)] * declined
    health = acquirer_health(samples, slow_ms=1000.0)
    assert (acquirer_declines(health) is not None) == alarm


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40))
def test_the_declines_alarm_follows_the_decline_rate(flags: list[tuple[bool, bool]]) -> None:
    samples = [AcquirerSample(error, declined and not error, 50.0) for error, declined in flags]
    health = acquirer_health(samples, slow_ms=1000.0)
    raised = acquirer_declines(health) is not None
    assert raised == (health.decline_rate is not None and health.decline_rate >= 0.2)


@pytest.mark.parametrize(
    ("oldest", "backlog", "stalled"),
    [(None, 0, False), (10.0, 0, False), (299.0, 5, False), (300.0, 5, True), (4000.0, 1, True)],
)
def test_the_uplink_is_stalled_once_the_oldest_record_is_too_old(
    oldest: float | None, backlog: int, stalled: bool
) -> None:
    assert (uplink_stalled(oldest, backlog, 300.0) is not None) == stalled


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"method": "emv", "vehicle_id": "v1", "auth": {"result": "declined"}}, None),
        (
            {"method": "token", "vehicle_id": "v1", "auth": {"result": "approved"}},
            TokenSample("v1", None, 5.0),
        ),
        (
            {"method": "token", "vehicle_id": "v2", "auth": {"result": "declined"},
             "flags": ["not_yet_valid"]},
            TokenSample("v2", "not_yet_valid", 5.0),
        ),
        (
            {"method": "token", "vehicle_id": "v3", "auth": {"result": "declined"},
             "flags": ["expired"]},
            TokenSample("v3", "expired", 5.0),
        ),
        (
            {"method": "token", "vehicle_id": "v4", "auth": {"result": "declined"},
             "flags": ["replayed"]},
            TokenSample("v4", None, 5.0),
        ),
        # Refused before its time was looked at: nothing said of the clock (a forgery is free).
        ({"method": "token", "vehicle_id": "v5", "auth": {"result": "declined"},
          "flags": ["bad_signature"]}, None),
        ({"method": "token", "vehicle_id": "v6", "auth": {"result": "declined"},
          "flags": ["unknown_key"]}, None),
    ],
)  # fmt: skip
def test_what_a_record_says_about_the_lane_s_clock(
    record: dict[str, object], expected: TokenSample | None
) -> None:
    assert token_sample(record, 5.0) == expected


def payers(reasons: str) -> list[TokenSample]:
    """One token payer a letter: b refused not yet valid, e expired, o accepted."""
    refused = {"b": "not_yet_valid", "e": "expired", "o": None}
    return [TokenSample(f"v{i}", refused[r], 0.0) for i, r in enumerate(reasons)]


@pytest.mark.parametrize(
    ("reasons", "said"),
    [
        ("bbb", "refused as not yet valid for 3 token payers in a row: this lane's clock may be"
                " behind"),
        ("obbb", "behind"),
        ("bb", None),  # too few to say: a phone or two may be off
        ("bbbo", None),  # a token accepted since: the clock agrees with its issuer
        ("eeeee", None),  # expired is also an old screenshot: a longer run
        ("eeeeee", "refused as expired for 6 token payers in a row: this lane's clock may be"
                   " ahead"),
        ("bbebb", None),  # not one way in a row
    ],
)  # fmt: skip
def test_token_payers_refused_for_their_time_in_a_row_say_the_clock_is_wrong(
    reasons: str, said: str | None
) -> None:
    text = clock_suspect(payers(reasons), 0.0, 30.0)
    assert (text is None) == (said is None)
    if said is not None:
        assert text is not None and said in text and text.endswith("(lane doctor)")


def test_a_driver_s_retries_are_one_payer_judged_by_the_last_token() -> None:
    three_tries = [TokenSample("v1", "not_yet_valid", 0.0)] * 3
    assert clock_suspect(three_tries, 0.0, 30.0) is None
    refused = payers("bbb")
    assert clock_suspect(refused, 0.0, 30.0) is not None
    fresh = TokenSample("v2", None, 0.0)
    assert clock_suspect([*refused, fresh], 0.0, 30.0) is None  # a fresh token passed


@pytest.mark.parametrize(
    ("now", "skew_s", "still"),
    [
        (0.0, 30.0, True),
        (29.9, 30.0, True),  # NTP's slewing, never that far
        (-3600.0, 30.0, False),  # the clock set back an hour: refused on the old one
        (31.0, 30.0, False),
        (0.9, 0.0, True),  # no skew allowed: a set clock still moves more than a second
        (1.1, 0.0, False),
    ],
)
def test_refusals_on_a_clock_since_set_say_nothing_of_it(
    now: float, skew_s: float, still: bool
) -> None:
    """Not how long ago: a clock is not set right by waiting, and a quiet night would clear
    the alarm on a lane whose next payers are refused again."""
    assert (clock_suspect(payers("bbb"), now, skew_s) is not None) == still


def test_only_refusals_on_the_clock_the_lane_has_now_make_a_run() -> None:
    moved = [TokenSample(f"w{i}", "not_yet_valid", -3600.0) for i in range(2)]
    assert clock_suspect([*moved, *payers("b")], 0.0, 30.0) is None
    assert clock_suspect([*moved, *payers("bbb")], 0.0, 30.0) is not None
