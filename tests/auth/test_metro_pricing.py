"""A metro exit priced by the passenger's tap-in: tables of the pure pricing (`price_tap_out`,
`code_account`), and properties run through the real tap desk, tap store and replay store (a
fare is always a cell of the matrix or the documented exception's; a tap-in exits once)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_kit import running, sender
from polling import eventually

from lane.auth.deny import DenyList
from lane.auth.fares import load_tariff
from lane.auth.paycodes import online_code
from lane.auth.peers import heard_key
from lane.auth.replay import ReplayStore
from lane.auth.tokens import issue_compact_token
from lane.auth.trip_pricing import ExitLaneRules, code_account, price_tap_out
from lane.auth.trip_rules import RoadRules, TripKind
from lane.core.actions import MarkPassUsed, PriceTrip, ReleasePass
from lane.core.metro import kept_fare
from lane.core.names import AuthResult, Method, PayloadKind, RecordKind, TripSource
from lane.core.records import AuthInfo, RecordDraft
from lane.core.trip import Priced
from lane.store_watch import Alarm
from lane.tap_desk import NAMED_AHEAD, STEPPED_BACK, ExitPricing, TapDesk
from lane.tap_store import Held, TapStore
from lane.transport.mqtt import Incoming, MqttLink
from lane.verifier import TokenVerifier
from lane.wire import topics
from lane.wire.ids import uuid7
from sim.broker import Mosquitto
from sim.codes import KID, CodeFactory
from uplink.records import Record

TARIFF = load_tariff(Path(__file__).resolve().parents[2] / "deploy" / "tariff.metro.example.toml")
NOW = int(datetime(2026, 12, 1, 4, 0, tzinfo=UTC).timestamp())
MIN = 60
METRO = RoadRules(TripKind.METRO, u_turn_window_s=1200, max_trip_s=14_400)
RULES = ExitLaneRules("S03", "S03/x1", METRO, pass_lifetime_s=28_800, skew_s=30)
CODES = CodeFactory(3)
# The line's gates: each signs the taps it shares with its own key (lane.auth.peers).
GATES = [f"S0{n}/{gate}" for n in (1, 2, 3) for gate in ("g1", "x1")]
KEYS = CODES.keyset(NOW - 3600, GATES)
ACCOUNT_KEY = b"k" * 32


def exit_id(at: float) -> str:
    """The id of this gate's tap_out record stamped at `at`: the UUIDv7 of its time, as the
    lane's queue makes it (uplink.queue)."""
    return str(uuid7(unix_ms=int(at * 1000)))


EXIT_ID = exit_id(NOW)  # an exit of this gate at NOW: its mark, and the refund naming it


def tap_in(  # noqa: PLR0917 - a tap-in's fields, each its own
    station: str,
    at: float,
    account: str = "rider-1",
    kind: str = "tap_in",
    paid: int = 0,
    currency: str = "CNY",
) -> Record:
    draft = RecordDraft(RecordKind(kind), "s1", 1, paid, currency, Method.TOKEN, account,
                        AuthInfo(AuthResult.APPROVED))  # fmt: skip
    return Record(str(uuid.uuid4()), f"{station}/g1", 1, int(at * 1e6), draft)


def signed(record: Record) -> bytes:
    """The record as its gate shares it on the line."""
    return CODES.lane_key(record.lane).seal(record.encode())


def ask(code: str = "HC1:x") -> PriceTrip:
    return PriceTrip("s9/trip", "s9", 1, TripSource.CODE, code, None, PayloadKind.TOKEN)


@pytest.mark.parametrize(
    ("record", "exited", "outcome", "amount", "entry", "display"),
    [
        (tap_in("S01", NOW - 30 * MIN), False, "charged", 500, "S01",
         ("S01 to S03", "Fare CNY 5.00")),
        (tap_in("S02", NOW - 30 * MIN), False, "charged", 300, "S02",
         ("S02 to S03", "Fare CNY 3.00")),
        (None, False, "no_pass", 500, None, ("No tap-in", "Maximum fare CNY 5.00")),
        (tap_in("S01", NOW - 30 * MIN), True, "pass_used", 500, "S01",
         ("Tap-in already used", "Maximum fare CNY 5.00")),
        (tap_in("S03", NOW - 10 * MIN), False, "u_turn", 300, "S03",
         ("Same station exit", "Fare CNY 3.00")),
        (tap_in("S03", NOW - 30 * MIN), False, "late_u_turn", 500, "S03",
         ("Back at the entry station", "Maximum fare CNY 5.00")),
        (tap_in("S01", NOW - 5 * 3600), False, "over_time", 500, "S01",
         ("Over the 4 h limit", "Maximum fare CNY 5.00")),
        # Not a tap-in (a toll record shared by mistake): as no tap-in.
        (tap_in("S01", NOW - 30 * MIN, kind="toll"), False, "no_pass", 500, None,
         ("No tap-in", "Maximum fare CNY 5.00")),
    ],
)  # fmt: skip
def test_a_tap_out_is_priced_by_its_tap_in_with_the_metro_exceptions(  # noqa: PLR0917
    record: Record | None,
    exited: bool,
    outcome: str,
    amount: int,
    entry: str | None,
    display: tuple[str, ...],
) -> None:
    answer = price_tap_out(ask(), record, exited, TARIFF, RULES, NOW)
    assert (answer.outcome, answer.amount_minor, answer.entry_plaza) == (outcome, amount, entry)
    assert answer.display == display
    assert answer.attendant is False  # a metro's exceptions are charged at once, flagged
    trip = uuid.UUID(record.record_id).hex if record is not None and entry else None
    assert answer.pass_id == trip
    assert answer.flags == (() if outcome == "charged" else (outcome,))


@pytest.mark.parametrize(
    ("record", "exited", "outcome", "amount", "flags", "less"),
    [
        (tap_in("S01", NOW - 30 * MIN, paid=250), False, "charged", 250, ("entry_paid:250",),
         "Less entry CNY 2.50: CNY 2.50"),
        (tap_in("S02", NOW - 30 * MIN, paid=250), False, "charged", 50, ("entry_paid:250",),
         "Less entry CNY 2.50: CNY 0.50"),
        # The same station: the lowest fare out of it (3.00), less what the tap-in paid.
        (tap_in("S03", NOW - 10 * MIN, paid=100), False, "u_turn", 200,
         ("u_turn", "entry_paid:100"), "Less entry CNY 1.00: CNY 2.00"),
        # The maximum fares of a found tap-in (its rules' penalty) are the journey's in all.
        (tap_in("S01", NOW - 5 * 3600, paid=250), False, "over_time", 250,
         ("over_time", "entry_paid:250"), "Less entry CNY 2.50: CNY 2.50"),
        # An entry that charged more than the trip: nothing at the exit, the excess flagged.
        (tap_in("S02", NOW - 30 * MIN, paid=450), False, "charged", 0,
         ("entry_paid:450", "entry_overpaid:150"), "Less entry CNY 4.50: CNY 0.00"),
        # Paid in another currency (a gate configured apart): the whole fare, flagged.
        (tap_in("S01", NOW - 30 * MIN, paid=250, currency="EUR"), False, "charged", 500,
         ("entry_currency:EUR",), None),
        # That entry fare was taken off the exit that closed the tap-in: not again.
        (tap_in("S01", NOW - 30 * MIN, paid=250), True, "pass_used", 500, ("pass_used",), None),
    ],
)  # fmt: skip
def test_a_tap_out_charges_the_trip_less_what_its_tap_in_paid(  # noqa: PLR0917
    record: Record,
    exited: bool,
    outcome: str,
    amount: int,
    flags: tuple[str, ...],
    less: str | None,
) -> None:
    answer = price_tap_out(ask(), record, exited, TARIFF, RULES, NOW)
    assert (answer.outcome, answer.amount_minor, answer.flags) == (outcome, amount, flags)
    assert answer.display[2:] == ((less,) if less else ())


def test_the_account_of_a_code_is_the_one_the_authoriser_records() -> None:
    token = issue_compact_token(CODES.key, KID, "rider-7", NOW, NOW + 60)
    args = (KEYS, DenyList.empty(), ACCOUNT_KEY, NOW, RULES)
    assert code_account(PayloadKind.TOKEN, token, *args) == "rider-7"
    wallet = "281234567890123456"
    expected = online_code("payment_code", wallet, ACCOUNT_KEY).account_ref
    assert code_account(PayloadKind.PAYMENT_CODE, wallet, *args) == expected
    forged = CODES.make("forged", NOW).text
    assert code_account(PayloadKind.TOKEN, forged, *args) is None
    assert code_account(PayloadKind.PAYMENT_CODE, "12", *args) is None
    # A token living longer than the lane's cap names no account: the authoriser refuses it.
    cap = int(RULES.max_token_lifetime_s)
    at_cap = issue_compact_token(CODES.key, KID, "rider-8", NOW, NOW + cap)
    assert code_account(PayloadKind.TOKEN, at_cap, *args) == "rider-8"
    too_long = issue_compact_token(CODES.key, KID, "rider-9", NOW, NOW + cap + 1)
    assert code_account(PayloadKind.TOKEN, too_long, *args) is None


# --- properties through the real desk and stores -------------------------------------------

STATIONS = ("S01", "S02", "S03")
ACCOUNTS = ("rider-1", "rider-2")
ENTRY_FARES = (0, 100, 250, 450)  # what a tap-in charged: none, below and above a trip's fare
step = st.one_of(
    st.tuples(st.just("in"), st.sampled_from(STATIONS), st.sampled_from(ACCOUNTS),
              st.sampled_from(ENTRY_FARES)),
    st.tuples(st.just("out"), st.sampled_from(STATIONS), st.sampled_from(ACCOUNTS), st.just(0)),
)  # fmt: skip
Step = tuple[str, str, str, int]  # in or out, the station, the account, what a tap-in paid
# Up to 12 taps, each a few seconds, a quarter of an hour or three hours after the one before.
walks = st.lists(st.tuples(step, st.sampled_from([10, 15 * MIN, 3 * 3600])), max_size=12)


def desk(
    tmp: Path, clock: list[float], alarm: Alarm | None = None, link: MqttLink | None = None
) -> TapDesk:
    return desk_and_verifier(tmp, clock, alarm, link)[0]


def desk_and_verifier(
    tmp: Path, clock: list[float], alarm: Alarm | None = None, link: MqttLink | None = None
) -> tuple[TapDesk, TokenVerifier]:
    """An exit gate's tap desk and its verifier, on one replay store with one alarm; the
    gate is `link`'s client id (S03/x1 when none is given: a link never connected)."""
    link = link or MqttLink("127.0.0.1", 1, "S03/x1")
    lane = link.client_id
    rules = replace(RULES, plaza=lane.split("/")[0], lane=lane)
    pricing = ExitPricing(rules, TARIFF, lambda: KEYS, DenyList.empty, ACCOUNT_KEY)
    replay = ReplayStore(tmp / "replay.sqlite3")
    verifier = TokenVerifier(lane, KEYS, DenyList.empty(), replay, 30, alarm=alarm)
    gate = TapDesk("L1", lane, 28_800, TapStore(tmp / "taps.sqlite3"), replay, link,
                   pricing=pricing, wall=lambda: clock[0], replay_watch=verifier.replay_watch,
                   peers=CODES.peers(lane, replay, lambda: KEYS, lambda: clock[0]),
                   skew_s=RULES.skew_s, alarm=alarm)  # fmt: skip
    return gate, verifier


@asynccontextmanager
async def heard_a_tap_in() -> AsyncIterator[tuple[TapDesk, list[float], Record, str]]:
    """This gate on its own stores, its clock at NOW, having heard rider-1's tap-in at S01
    ten minutes before: the gate, its clock, the tap-in and its trip id. Closed on the way
    out."""
    clock = [float(NOW)]
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        entered = tap_in("S01", NOW - 600)
        await gate.handle(Incoming(topics.line_taps("L1"), signed(entered)))
        try:
            yield gate, clock, entered, uuid.UUID(entered.record_id).hex
        finally:
            gate.store.close()
            gate.replay.close()


async def _exits(
    gate: TapDesk, clock: list[float], steps: list[tuple[Step, int]], paid: dict[str, int]
) -> AsyncIterator[tuple[int, str, str]]:
    """Plays the steps on the desk's clock: a tap-in is another gate's, heard over the line
    topic (`paid`: what each tap-in charged, by trip id); each exit yields (its number, the
    account, a fresh token of the account)."""
    n = 0
    for (what, station, account, entry_fare), dt in steps:
        clock[0] += dt
        if what == "in":
            record = tap_in(station, clock[0], account, paid=entry_fare)
            paid[uuid.UUID(record.record_id).hex] = entry_fare
            await gate.handle(Incoming(topics.line_taps("L1"), signed(record)))
            continue
        n += 1
        token = issue_compact_token(CODES.key, KID, account, int(clock[0]) - n, int(clock[0]) + 60)
        yield n, account, token


@settings(max_examples=40, deadline=None)
@given(steps=walks)
def test_a_fare_is_a_cell_or_the_maximum_and_a_tap_in_exits_once(
    steps: list[tuple[Step, int]],
) -> None:
    asyncio.run(_walk(steps))


async def _walk(steps: list[tuple[Step, int]]) -> None:
    clock = [float(NOW)]
    farthest = TARIFF.farthest_fare(1, "S03", NOW).amount_minor
    exited: set[str] = set()
    paid: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        async for _, _, token in _exits(gate, clock, steps, paid):
            answer = await gate.price(ask(token))
            assert answer.amount_minor is not None and answer.amount_minor >= 0
            entry = answer.entry_plaza
            cells = {farthest}
            if entry is not None and entry != "S03":
                cells.add(TARIFF.trip_fare(1, entry, "S03", NOW).amount_minor)
            if entry is not None:
                cells.add(TARIFF.nearest_fare(1, entry, NOW).amount_minor)
            trip = answer.pass_id
            # An open tap-in paid part of the journey: entry + exit is the journey's cell (or
            # what the entry alone charged above it); else the exit's fare is the cell.
            entry_paid = paid[trip] if trip is not None and answer.outcome != "pass_used" else 0
            journey = entry_paid + answer.amount_minor
            assert any(journey == max(cell, entry_paid) for cell in cells), (answer, entry_paid)
            assert answer.amount_minor <= farthest
            if trip is None:
                continue
            # A tap-in exits once: once its tap_out is durable, every later one is pass_used.
            assert (answer.outcome == "pass_used") == (trip in exited), (answer, exited)
            assert answer.pass_exp is not None
            await gate.mark_used(MarkPassUsed(trip, answer.pass_exp, None, EXIT_ID))
            exited.add(trip)
        gate.store.close()
        gate.replay.close()


# --- the desk's sharing: what it keeps of the line's messages -------------------------------


def test_the_desk_keeps_tap_ins_marks_tap_outs_and_ignores_the_rest() -> None:
    asyncio.run(_sharing())


async def _sharing() -> None:
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        record = tap_in("S01", NOW - 60)
        trip = uuid.UUID(record.record_id).hex
        await gate.handle(Incoming(topic, b"\x93garbage"))  # logged, nothing kept
        own = Record(str(uuid.uuid4()), "S03/x1", 1, NOW * 10**6, record.draft)
        await gate.handle(Incoming(topic, signed(own)))  # our own publish coming back
        declined = RecordDraft(RecordKind.TAP_IN, "s2", 1, 0, "CNY", Method.TOKEN, "rider-1",
                               AuthInfo(AuthResult.DECLINED))  # fmt: skip
        refused = Record(str(uuid.uuid4()), "S01/g1", 2, NOW * 10**6, declined)
        await gate.handle(Incoming(topic, signed(refused)))  # not a tap-in: nobody went in
        assert gate.store.count() == 0
        await gate.handle(Incoming(topic, signed(record)))
        await gate.handle(Incoming(topic, signed(record)))  # QoS 1 redelivery: taken once
        assert gate.store.count() == 1 and gate.received == 1
        paid = AuthInfo(AuthResult.APPROVED)
        out = RecordDraft(RecordKind.TAP_OUT, "s3", 1, 500, "CNY", Method.TOKEN, "rider-1", paid,
                          entry_plaza="S01", pass_id=trip)  # fmt: skip
        elsewhere = Record(str(uuid.uuid4()), "S02/x1", 1, NOW * 10**6, out)
        await gate.handle(Incoming(topic, signed(elsewhere)))
        assert gate.replay.get(f"pass:{trip}") is not None  # exited at another gate
        answer = await gate.price(
            ask(issue_compact_token(CODES.key, KID, "rider-1", NOW, NOW + 60))
        )
        assert (answer.outcome, answer.pass_id) == ("pass_used", trip)
        gate.store.close()
        gate.replay.close()


async def tap_out(gate: TapDesk, clock: list[float]) -> tuple[str, int | None, str | None]:
    """rider-1 taps out at `gate`, a second on (a fresh token each time): the outcome, the
    amount and the tap-in it closes."""
    clock[0] += 1
    token = issue_compact_token(CODES.key, KID, "rider-1", int(clock[0]), NOW + 600)
    answer = await gate.price(ask(token))
    return answer.outcome, answer.amount_minor, answer.pass_id


def test_a_refunded_tap_out_reopens_its_tap_in_at_this_gate() -> None:
    asyncio.run(_released())


async def _released() -> None:
    """The tap_out was refunded (the passenger was held by a fault and did not leave): the gate
    takes back its mark, and the next tap-out prices the trip instead of the maximum fare."""
    clock = [float(NOW)]
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        await gate.handle(Incoming(topics.line_taps("L1"), signed(tap_in("S01", NOW - 600))))

        fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
        outcome, amount, trip = await tap_out(gate, clock)
        assert (outcome, amount) == ("charged", fare) and trip is not None
        await gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, EXIT_ID))
        farthest = TARIFF.farthest_fare(1, "S03", NOW).amount_minor
        assert await tap_out(gate, clock) == ("pass_used", farthest, trip)
        await gate.release(ReleasePass(trip, EXIT_ID))
        assert await tap_out(gate, clock) == ("charged", fare, trip)
        gate.store.close()
        gate.replay.close()


def test_a_refund_after_an_upgrade_reopens_an_exit_the_release_before_marked() -> None:
    asyncio.run(_marked_before_upgrade())


async def _marked_before_upgrade() -> None:
    """The release before this one marked this gate's exit at the wall clock when the mark was
    written, after its record was stamped and committed. The lane restarted into
    this release with the passenger not let through (a carried passage), and its refund gave
    back only a mark made within the exit record's millisecond: the mark stayed and the
    passenger's next exit paid the maximum fare."""
    clock = [float(NOW)]
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        await gate.handle(Incoming(topics.line_taps("L1"), signed(tap_in("S01", NOW - 600))))

        fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
        _, _, trip = await tap_out(gate, clock)
        assert trip is not None
        out = exit_id(clock[0])
        # As that release marked it: at its wall clock once the record was durable (an fsync).
        gate.replay.check_and_mark(f"pass:{trip}", NOW + 28_800, "S03/x1", clock[0] + 0.004)
        gate.store.close()
        gate.replay.close()
        clock[0] += 30  # restarted into this release, the passage carried and then refunded
        gate = desk(Path(tmp), clock)
        await gate.release(ReleasePass(trip, out))
        assert await tap_out(gate, clock) == ("charged", fare, trip)
        gate.store.close()
        gate.replay.close()


def test_a_refund_under_a_clock_stepped_back_since_its_exit_reopens_the_tap_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "lane.tap_desk")
    asyncio.run(_stepped_back())
    assert logged(caplog, STEPPED_BACK, "behind_s") == [60.0, 119.0, 121.0]


def logged(caplog: pytest.LogCaptureFixture, message: str, field: str) -> list[object]:
    """`field` of each log line `message`, in order."""
    return [r.__dict__[field] for r in caplog.records if r.getMessage() == message]


async def _stepped_back() -> None:
    """The wall clock went back between an exit and its refund (NTP stepped it): the refund,
    stamped before its exit, kept the exit's mark, and the passenger's next exit paid the
    maximum fare as already out, with no alarm. The refund gives back the mark of the exit it
    names (by that exit's own time), here and heard from another gate; a later exit's stays."""
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
    farthest = TARIFF.farthest_fare(1, "S03", NOW).amount_minor
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)

        # This gate's own exit, its refund after the clock went back a minute.
        entered = tap_in("S01", NOW - 600)
        await gate.handle(Incoming(topic, signed(entered)))
        _, _, trip = await tap_out(gate, clock)
        assert trip is not None
        out = exit_id(clock[0])
        await gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, out))
        clock[0] -= 60
        await gate.release(ReleasePass(trip, out))
        assert await tap_out(gate, clock) == ("charged", fare, trip)
        # Another gate's exit, refunded there after its clock went back: reopened here too.
        elsewhere = tap_out_of(entered, fare, "S02/x1", clock[0])
        await gate.handle(Incoming(topic, signed(elsewhere)))
        assert await tap_out(gate, clock) == ("pass_used", farthest, trip)
        await gate.handle(Incoming(topic, signed(refund_of(elsewhere, clock[0] - 120, trip))))
        assert await tap_out(gate, clock) == ("charged", fare, trip)
        # A later exit heard before an earlier exit's refund stamped back: it stays.
        first = tap_out_of(entered, fare, "S02/x1", clock[0] + 1)
        later = tap_out_of(entered, fare, "S01/x1", clock[0] + 30)
        for record in (first, later, refund_of(first, clock[0] - 120, trip)):
            await gate.handle(Incoming(topic, signed(record)))
        assert await tap_out(gate, clock) == ("pass_used", farthest, trip)
        gate.store.close()
        gate.replay.close()


def test_a_refund_naming_an_exit_stamped_far_ahead_gives_back_no_later_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "lane.tap_desk")
    asyncio.run(_named_ahead())
    assert logged(caplog, NAMED_AHEAD, "ahead_s") == [86_400 - 6 - RULES.skew_s]


async def _named_ahead() -> None:
    """A refund gives back the mark of the exit it names by that exit's time, read from the
    id its `record:` flag names: a buggy gate's refund naming an id of a day ahead gave back
    the mark of a later exit of the tap-in too, and its next exit priced as a trip. An exit
    named ahead of this gate's clock by more than the skew is bounded by the refund's own
    time, as one named by an id of another form."""
    topic = topics.line_taps("L1")
    farthest = TARIFF.farthest_fare(1, "S03", NOW).amount_minor
    fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
    async with heard_a_tap_in() as (gate, clock, entered, trip):
        first = tap_out_of(entered, fare, "S02/x1", NOW)
        later = tap_out_of(entered, fare, "S01/x1", NOW + 5)
        named = Record(exit_id(NOW + 86_400), first.lane, first.seq, first.ts_us, first.draft)
        clock[0] += 6
        for record in (first, later, refund_of(named, NOW + 2, trip)):
            await gate.handle(Incoming(topic, signed(record)))
        assert await tap_out(gate, clock) == ("pass_used", farthest, trip)


def test_a_refund_gives_back_no_later_exit_whatever_the_gates_clocks_stamped() -> None:
    asyncio.run(_later_exit_stamped_earlier())


async def _later_exit_stamped_earlier() -> None:
    """A tap-in exited at one gate, then (the first exit refunded: never let through) at
    another whose clock is behind by less than the skew, so the later exit is stamped earlier.
    The mark was timed by the first exit and the refund of it gave the later exit's mark back:
    that tap-in priced a third exit as a trip. So did a refund naming an exit stamped after
    the later one, within the skew of this gate's clock. A mark names the exit that made it
    last, and a refund gives back only that exit's: here, heard, and this gate's own."""
    topic = topics.line_taps("L1")
    farthest = TARIFF.farthest_fare(1, "S03", NOW).amount_minor
    fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
    async with heard_a_tap_in() as (gate, clock, entered, trip):
        # Heard: S02 (10 s ahead) let it out, then S01/x1 (behind) let it out again.
        first = tap_out_of(entered, fare, "S02/x1", NOW + 10)
        later = tap_out_of(entered, fare, "S01/x1", NOW + 5)
        for record in (first, later, refund_of(first, NOW + 11, trip)):
            await gate.handle(Incoming(topic, signed(record)))
        assert await tap_out(gate, clock) == ("pass_used", farthest, trip)
        # A refund naming an exit stamped after the later one, within the skew: it stays.
        named = Record(exit_id(clock[0] + RULES.skew_s - 1), first.lane, 2, first.ts_us,
                       first.draft)  # fmt: skip
        await gate.handle(Incoming(topic, signed(refund_of(named, NOW + 12, trip))))
        assert await tap_out(gate, clock) == ("pass_used", farthest, trip)
        # The later exit's own refund gives its mark back (the mark is still S02's: heard from
        # it first, `ReplayStore.mark_remote`; so it is S02's refund that frees it).
        assert gate.replay.get(f"pass:{trip}") is not None

        # This gate's own exit, then another gate's (its clock behind) after its refund.
        again = tap_in("S01", clock[0], account="rider-1")
        await gate.handle(Incoming(topic, signed(again)))
        next_trip = uuid.UUID(again.record_id).hex
        assert await tap_out(gate, clock) == ("charged", fare, next_trip)
        own = exit_id(clock[0])
        await gate.mark_used(MarkPassUsed(next_trip, NOW + 28_800, None, own))
        await gate.handle(Incoming(topic, signed(tap_out_of(again, fare, "S02/x1", clock[0] - 3))))
        clock[0] += 2
        await gate.release(ReleasePass(next_trip, own))
        assert await tap_out(gate, clock) == ("pass_used", farthest, next_trip)


@asynccontextmanager
async def line_gate(
    mosquitto: Mosquitto, tmp: Path, lane: str, clock: list[float]
) -> AsyncIterator[TapDesk]:
    """An exit gate of the line on the session broker: it hears the line's taps and shares its
    own once durable (`on_record`)."""
    gates: list[TapDesk] = []

    async def heard(msg: Incoming) -> None:
        await gates[0].handle(msg)

    link = MqttLink(mosquitto.host, mosquitto.port, lane, [(topics.line_taps("L1"), 1)], heard)
    gates.append(desk(Path(tempfile.mkdtemp(dir=tmp)), clock, link=link))
    sharing = asyncio.create_task(gates[0].run())
    try:
        async with running(link):
            yield gates[0]
    finally:
        sharing.cancel()
        await asyncio.gather(sharing, return_exceptions=True)
        gates[0].store.close()
        gates[0].replay.close()


def durable(gate: TapDesk, record: Record) -> None:
    """The gate's record is durable: the runner's record note."""
    gate.on_record({**record.to_map(), "v": record.v})


async def test_a_refund_over_the_line_gives_back_its_exits_mark_and_never_a_later_exits(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Two exit gates of the line on the real broker. S03's refund of its exit gives the mark
    back there and at S02 (heard on the line): the tap-in prices as a trip at both. Let out
    again at S03, then at S01/x1 (whose clock is behind: that exit stamped earlier), S03's
    refund of its own exit gave back S01's mark too, at both gates."""
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
    async with (
        line_gate(mosquitto, tmp_path, "S03/x1", clock) as here,
        line_gate(mosquitto, tmp_path, "S02/x1", clock) as there,
        sender(mosquitto, "S01-gates") as s01,
    ):
        entered = tap_in("S01", NOW - 600)
        trip = uuid.UUID(entered.record_id).hex
        key = f"pass:{trip}"
        await s01.publish(topic, signed(entered), qos=1)
        await eventually(lambda: here.store.count() == there.store.count() == 1,
                         what="the tap-in heard at both gates")  # fmt: skip

        async def priced(gate: TapDesk) -> tuple[str, str | None]:
            """The outcome of rider-1's tap-out at `gate` (its fares are its station's)."""
            outcome, _, pass_id = await tap_out(gate, clock)
            return outcome, pass_id

        # (2) The latest exit's refund: its mark goes here and at S02.
        assert await priced(here) == ("charged", trip)
        out = tap_out_of(entered, fare, "S03/x1", clock[0])
        await here.mark_used(MarkPassUsed(trip, NOW + 28_800, None, out.record_id))
        durable(here, out)
        await eventually(lambda: there.replay.get(key) is not None, what="S03's exit at S02")
        assert await priced(there) == ("pass_used", trip)
        await here.release(ReleasePass(trip, out.record_id))
        durable(here, refund_of(out, clock[0], trip))
        await eventually(lambda: there.replay.get(key) is None, what="S03's refund at S02")
        assert await priced(here) == ("charged", trip)
        assert await priced(there) == ("charged", trip)

        # (1) Out at S03 again, then at S01/x1 (its clock 3 s behind S03's), then S03 refunds
        # its exit: S01's mark stays at both gates.
        out = tap_out_of(entered, fare, "S03/x1", clock[0])
        await here.mark_used(MarkPassUsed(trip, NOW + 28_800, None, out.record_id))
        durable(here, out)
        await eventually(lambda: there.replay.get(key) is not None, what="S03's exit at S02")
        heard = (here.received, there.received)
        await s01.publish(topic, signed(tap_out_of(entered, fare, "S01/x1", clock[0] - 3)), qos=1)
        await eventually(lambda: (here.received, there.received) == (heard[0] + 1, heard[1] + 1),
                         what="S01's exit heard at both gates")  # fmt: skip
        await here.release(ReleasePass(trip, out.record_id))
        durable(here, refund_of(out, clock[0], trip))
        await eventually(lambda: there.received == heard[1] + 2, what="S03's refund at S02")
        assert await priced(here) == ("pass_used", trip)
        assert await priced(there) == ("pass_used", trip)


async def test_a_refund_over_the_line_gives_back_its_exits_mark_whichever_gate_made_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Two exit gates of the line on the real broker. (1) S01/x1 let rider-1 out, then S03
    did again (S01's refund crossed it), then each refunded its exit: the mark was S01's (the
    first heard), so S03's refund gave back nothing, at S03 and at S02, and the passenger let
    through nowhere paid the maximum at the next exit. (2) S03 let them out and refunded it,
    then S01/x1 (its clock 10 s behind: stamped earlier), heard first at S02: the earlier exit
    named the mark there, and S01's refund gave back nothing. Each refund gives back its own
    exit's mark, whichever gate made the mark or refunds it, in any order heard."""
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
    async with (
        line_gate(mosquitto, tmp_path, "S03/x1", clock) as here,
        line_gate(mosquitto, tmp_path, "S02/x1", clock) as there,
        sender(mosquitto, "S01-gates") as s01,
    ):
        entered = tap_in("S01", NOW - 600)
        trip = uuid.UUID(entered.record_id).hex
        await s01.publish(topic, signed(entered), qos=1)
        await eventually(lambda: here.store.count() == there.store.count() == 1,
                         what="the tap-in heard at both gates")  # fmt: skip

        async def from_s01(record: Record) -> None:
            heard = (here.received, there.received)
            await s01.publish(topic, signed(record), qos=1)
            await eventually(lambda: (here.received, there.received) == (heard[0] + 1,
                             heard[1] + 1), what="S01's message heard at both gates")  # fmt: skip

        async def at_s03(out: Record, refunded_at: float | None = None) -> None:
            """S03 lets rider-1 out (`out`), or refunds that exit at `refunded_at`."""
            heard = there.received
            if refunded_at is None:
                await here.mark_used(MarkPassUsed(trip, NOW + 28_800, None, out.record_id))
                durable(here, out)
            else:
                await here.release(ReleasePass(trip, out.record_id))
                durable(here, refund_of(out, refunded_at, trip))
            await eventually(lambda: there.received == heard + 1, what="S03's message at S02")

        async def priced() -> list[str]:
            return [(await tap_out(gate, clock))[0] for gate in (here, there)]

        # (1) S01's exit, S03's exit, S01's refund, S03's refund.
        first = tap_out_of(entered, fare, "S01/x1", clock[0])
        await from_s01(first)
        clock[0] += 5
        again = tap_out_of(entered, fare, "S03/x1", clock[0])
        await at_s03(again)
        await from_s01(refund_of(first, clock[0], trip))
        assert await priced() == ["pass_used", "pass_used"]  # S03's exit stands
        await at_s03(again, refunded_at=clock[0] + 1)
        assert await priced() == ["charged", "charged"]

        # (2) S01's later exit (its clock behind) heard first, then S03's exit and refund.
        clock[0] += 60
        later = tap_out_of(entered, fare, "S01/x1", clock[0] - 10)
        await from_s01(later)
        earlier = tap_out_of(entered, fare, "S03/x1", clock[0] - 5)
        await at_s03(earlier)
        await at_s03(earlier, refunded_at=clock[0] - 4)
        assert await priced() == ["pass_used", "pass_used"]  # S01's exit stands
        await from_s01(refund_of(later, clock[0], trip))
        assert await priced() == ["charged", "charged"]


def tap_out_of(entered: Record, kept: int, lane: str, at: float) -> Record:
    """Another gate's tap-out of the tap-in `entered` (from S01), keeping `kept`, as heard on
    the line."""
    out = RecordDraft(RecordKind.TAP_OUT, "s3", 1, kept, "CNY", Method.TOKEN, "rider-1",
                      AuthInfo(AuthResult.APPROVED), entry_plaza="S01",
                      pass_id=uuid.UUID(entered.record_id).hex)  # fmt: skip
    return Record(exit_id(at), lane, 1, int(at * 1e6), out)


def refund_of(tapped: Record, at: float, trip: str | None = None) -> Record:
    """The refund its gate writes of `tapped` (`paid_not_passed`: never let through), naming
    the tap-in a refunded tap-out gives back (`trip`) as lane.core.recovery does."""
    none = AuthInfo(AuthResult.NONE)
    draft = RecordDraft(tapped.draft.kind, "s1", 1, 0, "", Method.NONE, None, none,
                        flags=("paid_not_passed", f"record:{tapped.record_id}"),
                        pass_id=trip)  # fmt: skip
    return Record(str(uuid.uuid4()), tapped.lane, tapped.seq + 1, int(at * 1e6), draft)


def test_a_tap_in_from_the_future_is_refused_and_hides_no_real_one() -> None:
    asyncio.run(_future_tap_in())


async def _future_tap_in() -> None:
    """A tap-in stamped later than the gate's clock by more than the skew (a gate's clock far
    off, or a forged message) would be its account's latest for ever: refused, the account's
    real tap-in prices the exit."""
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        real = tap_in("S02", NOW - 30 * MIN)
        await gate.handle(Incoming(topic, signed(real)))
        for ahead in (RULES.skew_s + 1, 86_400, 10**9):
            await gate.handle(Incoming(topic, signed(tap_in("S01", NOW + ahead))))
        # Within the skew: a gate's clock a little ahead, taken.
        near = tap_in("S01", NOW + RULES.skew_s - 1, account="rider-2")
        await gate.handle(Incoming(topic, signed(near)))
        assert gate.received == 2 and gate.store.count() == 2
        token = issue_compact_token(CODES.key, KID, "rider-1", NOW, NOW + 60)
        answer = await gate.price(ask(token))
        assert (answer.outcome, answer.entry_plaza) == ("charged", "S02")
        assert answer.pass_id == uuid.UUID(real.record_id).hex


def test_a_tap_out_stamped_far_ahead_is_marked_heard_no_longer_than_a_tap_in_is_kept() -> None:
    asyncio.run(_far_tap_out())


async def _far_tap_out() -> None:
    """A tap-out is taken stamped ahead (it closes a tap-in all the same), but its heard mark,
    timed by its stamp plus the retention, would stay in the replay store for years: it is kept
    no later than one stamped now would be."""
    clock = [float(NOW)]
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        entered = tap_in("S01", NOW - 600)
        out = tap_out_of(entered, 500, "S02/g1", NOW + 365 * 86_400)
        await gate.handle(Incoming(topics.line_taps("L1"), signed(out)))
        assert gate.received == 1
        heard = gate.replay.get(heard_key(out.encode()))
        assert heard is not None and heard.exp <= NOW + RULES.skew_s + 28_800 + 1
        gate.store.close()
        gate.replay.close()


def test_a_refund_of_a_tap_in_from_another_gate_than_its_own_drops_nothing() -> None:
    asyncio.run(_refund_from_elsewhere())


async def _refund_from_elsewhere() -> None:
    """Only the gate that wrote a tap-in refunds it: a refund naming it from any other gate
    (forged, or confused) leaves the passenger's tap-in pricing the exit."""
    topic = topics.line_taps("L1")
    async with heard_a_tap_in() as (gate, _, entered, _):
        forged = replace(refund_of(entered, NOW - 30), lane="S02/g1")
        await gate.handle(Incoming(topic, signed(forged)))
        assert gate.store.count() == 1
        token = issue_compact_token(CODES.key, KID, "rider-1", NOW, NOW + 60)
        answer = await gate.price(ask(token))
        assert (answer.outcome, answer.entry_plaza) == ("charged", "S01")
        await gate.handle(Incoming(topic, signed(refund_of(entered, NOW - 20))))
        assert gate.store.count() == 0


def test_a_genuine_tap_replayed_after_its_refund_is_not_taken_again() -> None:
    asyncio.run(_replayed_taps())


async def _replayed_taps() -> None:
    """S01's tap-in, then its refund (the gate never let the passenger through): replayed,
    the signed tap-in would be the account's latest again and price its next exit here, its
    refunded fare taken off; a tap-out replayed after its refund would close the reopened
    tap-in. Each genuine message is taken once."""
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        entered = tap_in("S01", NOW - 600, paid=200)
        await gate.handle(Incoming(topic, signed(entered)))
        await gate.handle(Incoming(topic, signed(refund_of(entered, NOW - 500))))
        assert gate.store.count() == 0
        await gate.handle(Incoming(topic, signed(entered)))  # replayed
        assert gate.store.count() == 0
        again = tap_in("S01", NOW - 400)  # the passenger taps in for real
        await gate.handle(Incoming(topic, signed(again)))
        out = tap_out_of(again, 300, "S02/x1", NOW - 100)
        await gate.handle(Incoming(topic, signed(out)))
        trip = uuid.UUID(again.record_id).hex
        assert gate.replay.get(f"pass:{trip}") is not None
        await gate.handle(Incoming(topic, signed(refund_of(out, NOW - 50, trip))))
        assert gate.replay.get(f"pass:{trip}") is None  # reopened
        await gate.handle(Incoming(topic, signed(out)))  # replayed
        assert gate.replay.get(f"pass:{trip}") is None
        token = issue_compact_token(CODES.key, KID, "rider-1", NOW, NOW + 60)
        answer = await gate.price(ask(token))
        assert (answer.outcome, answer.pass_id) == ("charged", trip)
        gate.store.close()
        gate.replay.close()


@pytest.mark.parametrize("second_exit", ["S02/x1", "S01/x1"])
def test_a_late_refund_never_reopens_a_tap_in_that_exited_again_since(second_exit: str) -> None:
    """S02 let the passenger out, refunded that exit (never let through), then the passenger
    left for real at `second_exit`; the line's messages come in any order, and this gate
    hears the refund last: the tap-in stays exited here, whichever gate the second exit was."""
    asyncio.run(_late_refund(second_exit))


async def _late_refund(second_exit: str) -> None:
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        entered = tap_in("S01", NOW - 600)
        trip = uuid.UUID(entered.record_id).hex
        first = tap_out_of(entered, 300, "S02/x1", NOW - 300)
        second = tap_out_of(entered, 300, second_exit, NOW - 100)
        for record in (entered, first, second, refund_of(first, NOW - 200, trip)):
            await gate.handle(Incoming(topic, signed(record)))
        assert gate.replay.get(f"pass:{trip}") is not None
        token = issue_compact_token(CODES.key, KID, "rider-1", NOW, NOW + 60)
        assert (await gate.price(ask(token))).outcome == "pass_used"
        gate.store.close()
        gate.replay.close()


def test_an_earlier_exit_heard_late_keeps_the_later_exits_refund_giving_its_mark_back() -> None:
    asyncio.run(_crossed_exits())


async def _crossed_exits() -> None:
    """S02 let the passenger out and refunded it (never let through), then so did S01/x1 two
    minutes later; S02's messages were held up (its broker link down) and came in after
    S01's exit. The mark, heard from S01/x1, took the name of S02's earlier exit, so S01's
    refund gave back nothing and the passenger, let through nowhere, paid the maximum at the
    next exit. So too after this gate's own exit, refunded once an earlier exit was heard.
    An exit stamped earlier than the mark by more than the skew is an earlier one: it does
    not name the mark."""
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)

        async def hear(record: Record) -> None:
            await gate.handle(Incoming(topic, signed(record)))

        entered = tap_in("S01", NOW - 600)
        trip = uuid.UUID(entered.record_id).hex
        first = tap_out_of(entered, fare, "S02/x1", NOW - 180)
        later = tap_out_of(entered, fare, "S01/x1", NOW - 60)
        for record in (entered, later, first, refund_of(first, NOW - 170, trip),
                       refund_of(later, NOW - 50, trip)):  # fmt: skip
            await hear(record)
        assert await tap_out(gate, clock) == ("charged", fare, trip)

        out = exit_id(clock[0])
        await gate.mark_used(MarkPassUsed(trip, NOW + 28_800, None, out))
        earlier = tap_out_of(entered, fare, "S02/x1", clock[0] - 100)
        await hear(earlier)
        await hear(refund_of(earlier, clock[0] - 90, trip))
        clock[0] += 5
        await gate.release(ReleasePass(trip, out))
        assert await tap_out(gate, clock) == ("charged", fare, trip)
        gate.store.close()
        gate.replay.close()


def test_a_refund_heard_from_the_line_undoes_what_its_tap_told_this_gate() -> None:
    asyncio.run(_refunds_heard())


async def _refunds_heard() -> None:
    """A gate's refund of a tap (the passenger never let through) shared on the line: a
    refunded tap-out's tap-in prices a trip again here (only the mark that gate's tap-out made
    goes), a refunded tap-in prices nothing and takes nothing off."""
    clock = [float(NOW)]
    topic = topics.line_taps("L1")
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)

        async def hear(record: Record) -> None:
            await gate.handle(Incoming(topic, signed(record)))

        async def tap_out(account: str) -> tuple[str, int | None, str | None]:
            clock[0] += 1  # a fresh token each time
            token = issue_compact_token(CODES.key, KID, account, int(clock[0]), NOW + 600)
            answer = await gate.price(ask(token))
            return answer.outcome, answer.amount_minor, answer.pass_id

        fare = TARIFF.trip_fare(1, "S01", "S03", NOW).amount_minor
        farthest = TARIFF.farthest_fare(1, "S03", NOW).amount_minor
        # (a) Out at another gate, which then refunds it: the tap-in prices the trip here.
        entered = tap_in("S01", NOW - 600, paid=200)
        trip = uuid.UUID(entered.record_id).hex
        await hear(entered)
        elsewhere = tap_out_of(entered, fare - 200, "S02/x1", NOW - 60)
        await hear(elsewhere)
        assert await tap_out("rider-1") == ("pass_used", farthest, trip)
        # A third gate's refund naming the trip takes back no mark it did not make.
        third = tap_out_of(entered, fare - 200, "S04/x1", NOW - 50)
        await hear(refund_of(third, NOW - 40, trip))
        assert await tap_out("rider-1") == ("pass_used", farthest, trip)
        await hear(refund_of(elsewhere, NOW - 30, trip))
        assert await tap_out("rider-1") == ("charged", fare - 200, trip)
        # A refund of a tap-out that marked nothing (priced `pass_used`, no trip named).
        await hear(refund_of(elsewhere, NOW - 20))
        assert gate.replay.get(f"pass:{trip}") is None

        # (b) A tap-in its gate refunded: not the account's latest any more, nothing off.
        earlier = tap_in("S02", NOW - 3000, "rider-2", paid=200)
        await hear(earlier)
        await gate.mark_used(
            MarkPassUsed(uuid.UUID(earlier.record_id).hex, NOW + 600, None, EXIT_ID)
        )
        latest = tap_in("S01", NOW - 300, "rider-2", paid=200)
        await hear(latest)
        assert gate.store.count() == 3
        await hear(refund_of(latest, NOW - 290))
        assert gate.store.count() == 2
        outcome, amount, _ = await tap_out("rider-2")
        assert (outcome, amount) == ("pass_used", farthest)
        # Garbage refunds are refused, nothing dropped: no record named, a refund of a refund.
        nameless = refund_of(entered, NOW - 10)
        nameless = Record(nameless.record_id, nameless.lane, nameless.seq, nameless.ts_us,
                          replace(nameless.draft, flags=("paid_not_passed",)))  # fmt: skip
        await hear(nameless)
        manual = refund_of(entered, NOW - 10)
        await hear(Record(manual.record_id, manual.lane, manual.seq, manual.ts_us,
                          replace(manual.draft, kind=RecordKind.MANUAL)))  # fmt: skip
        assert gate.store.count() == 2
        gate.store.close()
        gate.replay.close()


def test_a_tap_store_drops_a_refunded_tap_in_once(tmp_path: Path) -> None:
    store = TapStore(tmp_path / "taps.sqlite3")
    entered = tap_in("S01", NOW - 60)
    trip = uuid.UUID(entered.record_id).hex
    store.add(trip, "rider-1", entered.ts_us, NOW + 600, entered.encode(), NOW)
    assert store.latest("rider-1", NOW) == entered.encode()
    # Only its own gate refunds a tap-in: another gate's refund naming it (a forged or a
    # confused one on the line) drops nothing.
    assert not store.drop(trip, "S02/g1")
    assert store.latest("rider-1", NOW) == entered.encode()
    assert store.drop(trip, entered.lane) and not store.drop(trip, entered.lane)
    assert store.latest("rider-1", NOW) is None
    store.close()


def test_a_tap_store_of_the_first_release_keeps_its_tap_ins_and_then_holds_exits(
    tmp_path: Path,
) -> None:
    """Schema 2 adds the held exits (lane.tap_desk), schema 3 who made each (this gate, or the
    gate it was heard from), schema 4 the refunds held until their marks are given back,
    schema 5 the exit record each names: a v1 file, as the first release wrote it, is upgraded
    in place."""
    path = tmp_path / "taps.sqlite3"
    entered = tap_in("S01", NOW - 60)
    trip = uuid.UUID(entered.record_id).hex
    v1 = sqlite3.connect(path, isolation_level=None)
    v1.execute("PRAGMA journal_mode=WAL")
    v1.execute("CREATE TABLE taps (trip TEXT PRIMARY KEY, account TEXT NOT NULL, ts_us INTEGER"
               " NOT NULL, expires REAL NOT NULL, record BLOB NOT NULL) WITHOUT ROWID")  # fmt: skip
    v1.execute("CREATE INDEX taps_account ON taps (account, ts_us)")
    v1.execute("CREATE INDEX taps_expires ON taps (expires)")
    v1.execute("INSERT INTO taps VALUES (?, 'rider-1', ?, ?, ?)",
               (trip, entered.ts_us, NOW + 600, entered.encode()))  # fmt: skip
    v1.execute("PRAGMA user_version = 1")
    v1.close()
    store = TapStore(path)
    assert store.latest("rider-1", NOW) == entered.encode()
    assert store.held(NOW) == {}
    # Another gate's exit, marked as heard.
    heard = Held(NOW + 600, "S02/g1", NOW - 30.5, exit_id(NOW - 30.5))
    store.hold({f"pass:{trip}": Held(NOW + 600), "pass:out": heard, "pass:gone": Held(NOW - 1)},
               {"pass:back": heard, "pass:over": Held(NOW - 1)}, NOW)  # fmt: skip
    store.close()
    store = TapStore(path)
    # An expired one is not kept.
    assert store.held(NOW) == {f"pass:{trip}": Held(NOW + 600), "pass:out": heard}
    assert store.unreleased(NOW) == {"pass:back": heard}
    assert store.held(NOW + 601) == {} == store.unreleased(NOW + 601)
    store.hold({}, {}, NOW)
    assert store.held(NOW) == {} == store.unreleased(NOW)
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (5,)


def test_a_gate_shares_its_paid_taps_and_their_refunds_once_durable(tmp_path: Path) -> None:
    def durable(record: Record) -> None:  # the runner's record note
        gate.on_record({**record.to_map(), "v": record.v})

    gate = desk(tmp_path, [float(NOW)])
    entered = tap_in("S01", NOW - 60)
    declined = replace(entered.draft, auth=AuthInfo(AuthResult.DECLINED))
    durable(Record(str(uuid.uuid4()), "S03/x1", 2, entered.ts_us, declined))
    assert gate.outbox.backlog == 0
    durable(entered)
    durable(refund_of(entered, NOW - 50))
    assert gate.outbox.backlog == 2
    gate.store.close()
    gate.replay.close()


# --- a dynamic wallet code: charged first, priced again by the payer the acquirer names -------


@settings(max_examples=40, deadline=None)
@given(steps=walks)
def test_a_wallet_code_keeps_no_more_than_a_token_of_the_same_journey(
    steps: list[tuple[Step, int]],
) -> None:
    asyncio.run(_wallet_walk(steps))


async def _wallet_walk(steps: list[tuple[Step, int]]) -> None:
    """Each exit is priced three ways on the same stores: with a token of the account (the
    reference), with a fresh wallet code (no tap-in under its one-time digits: charged first),
    and again with the payer's account as the acquirer's answer names it (the shell's reprice);
    the core's `kept_fare` then keeps no more than the token's fare, and charged - refunded =
    kept."""
    clock = [float(NOW)]
    with tempfile.TemporaryDirectory() as tmp:
        gate = desk(Path(tmp), clock)
        async for n, account, token in _exits(gate, clock, steps, {}):
            by_token = await gate.price(ask(token))
            wallet = f"28{n:016d}"
            first = await gate.price(
                PriceTrip("w/trip", "w", 1, TripSource.CODE, wallet, None, PayloadKind.PAYMENT_CODE)
            )
            assert first.outcome == "no_pass"  # one-time digits find no tap-in
            charged = first.amount_minor
            assert charged is not None and by_token.amount_minor is not None
            again = PriceTrip("w/trip/payer", "w", 1, TripSource.CODE, wallet, None,
                              PayloadKind.PAYMENT_CODE, account_ref=account)  # fmt: skip
            repriced = await gate.price(again)
            held = Priced("w/trip", first.outcome, charged, "CNY", None, None, None,
                          first.flags, False, True, first.display, by_payer=True)  # fmt: skip
            kept = kept_fare(held, charged, repriced)
            assert kept.amount_minor is not None
            assert kept.amount_minor <= by_token.amount_minor
            assert kept.amount_minor == min(charged, by_token.amount_minor)
            assert charged - kept.refund_minor == kept.amount_minor
            assert (kept.entry_plaza, kept.pass_id) == (by_token.entry_plaza, by_token.pass_id)
            if kept.pass_id is not None and kept.pass_exp is not None:
                await gate.mark_used(MarkPassUsed(kept.pass_id, kept.pass_exp, None, EXIT_ID))
        gate.store.close()
        gate.replay.close()
