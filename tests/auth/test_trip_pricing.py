"""An exit lane's pricing, from the evidence to the core's TripPriced: tables, and properties run
through the real trip desk and used-pass store (a pass never exits twice; a fare is always a
cell of the matrix)."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lane.auth.fares import load_tariff
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet
from lane.auth.passes import MAX_TEXT_LEN, EntryPass
from lane.auth.plate_binding import PlateBinding, encode_binding
from lane.auth.replay import ReplayStore
from lane.auth.trip_pricing import ExitLaneRules, evidence_of, pass_expiry, price_trip
from lane.auth.trip_rules import RoadRules
from lane.core.actions import MarkPassUsed, PriceTrip
from lane.core.names import TripSource
from lane.transport.mqtt import Incoming, MqttLink
from lane.trip_desk import TripDesk
from lane.wire import topics
from sim.codes import CodeFactory

TARIFF = load_tariff(Path(__file__).resolve().parents[2] / "deploy" / "tariff.road.example.toml")
NOW = int(datetime(2026, 12, 1, 4, 0, tzinfo=UTC).timestamp())
HOUR = 3600
P01 = PlazaPassKey.generate("P01")
P02 = PlazaPassKey.generate("P02")
STRANGER = PlazaPassKey.generate("P02", kid="pass-P02-stolen")
CODES = CodeFactory(5)
ENTRY = "P01/e1"  # the entry lane that binds plates, with its key (lane.auth.peers)
KEYS = KeySet.of(NOW - 86_400, [*CODES.keyset(NOW - 3600, [ENTRY]).keys.values(), P01.public(),
                                P02.public()])  # fmt: skip
RULES = ExitLaneRules("P03", "P03/x1", RoadRules(), pass_lifetime_s=30 * 86_400, skew_s=30)


def binding(text: str, plate: str = "ZJA1", at: float = NOW - HOUR, lane: str = ENTRY) -> bytes:
    """A plate binding as the entry lane publishes it."""
    return CODES.lane_key(lane).seal(encode_binding(PlateBinding(plate, text, lane, at)))


def pass_of(key: PlazaPassKey, n: int, vehicle_class: int = 1, at: int = NOW - HOUR) -> str:
    return key.issue(EntryPass(key.plaza, "e1", at, vehicle_class, bytes([n]) * 12, "ZJA1"))


def ask(
    text: str | None, vehicle_class: int = 1, source: TripSource = TripSource.PASS
) -> PriceTrip:
    return PriceTrip("v1/trip1", "v1", vehicle_class, source, text, "ZJA1")


@pytest.mark.parametrize(
    ("text", "used", "vehicle_class", "outcome", "amount", "attendant", "display"),
    [
        (pass_of(P01, 1), False, 1, "charged", 4000, False, ("P01 to P03", "Fare CNY 40.00")),
        (pass_of(P02, 1), False, 1, "charged", 2500, False, ("P02 to P03", "Fare CNY 25.00")),
        (pass_of(P01, 1), True, 1, "pass_used", 4000, True,
         ("Entry pass already used", "Maximum fare CNY 40.00")),
        (None, False, 2, "no_pass", 6000, True, ("No entry pass", "Maximum fare CNY 60.00")),
        (pass_of(STRANGER, 1), False, 1, "unknown_plaza_key", 4000, True,
         ("Pass from an unknown plaza key", "Maximum fare CNY 40.00")),
        (pass_of(P01, 1, at=NOW - 40 * 86_400), False, 1, "pass_refused", 4000, True,
         ("Entry pass not valid: expired", "Maximum fare CNY 40.00")),
        (pass_of(P01, 1, at=NOW - 25 * HOUR), False, 1, "over_time", 4000, False,
         ("Over the 24 h limit", "Maximum fare CNY 40.00")),
        (pass_of(P01, 1, vehicle_class=3), False, 1, "charged", 8000, False,
         ("P01 to P03", "Fare CNY 80.00", "Class 3 charged (entry 3)")),
    ],
)  # fmt: skip
def test_each_trip_is_priced_with_its_text(  # noqa: PLR0917 - one row of the table
    text: str | None,
    used: bool,
    vehicle_class: int,
    outcome: str,
    amount: int,
    attendant: bool,
    display: tuple[str, ...],
) -> None:
    evidence = evidence_of(text, KEYS, NOW, RULES)
    answer = price_trip(ask(text, vehicle_class), evidence, used, TARIFF, RULES, NOW)
    assert (answer.outcome, answer.amount_minor, answer.attendant) == (outcome, amount, attendant)
    assert answer.display == display  # the core adds "Attendant coming" or the payment line
    assert answer.found and answer.currency == "CNY"
    if isinstance(evidence, EntryPass):
        assert (
            answer.pass_exp
            == pass_expiry(evidence, RULES)
            == evidence.entered_at + 30 * 86_400 + 30
        )


def test_an_exit_the_tariff_cannot_price_is_unpriced_for_the_attendant() -> None:
    answer = price_trip(ask(pass_of(P01, 1), 9), evidence_of(pass_of(P01, 1), KEYS, NOW, RULES),
                        False, TARIFF, RULES, NOW)  # fmt: skip
    assert (answer.outcome, answer.amount_minor, answer.attendant) == ("unpriced", None, True)
    assert answer.display[0] == "No fare at P03"


# --- through the real trip desk and used-pass store -----------------------------------------


def desk(store: ReplayStore, now: list[float]) -> TripDesk:
    # A link that never connects: the desk only publishes to clear a plate binding.
    link = MqttLink("127.0.0.1", 1, "never-connected")
    peers = CODES.peers(RULES.lane, store, lambda: KEYS, lambda: now[0])
    return TripDesk(
        RULES, TARIFF, lambda: KEYS, store, link, sharing=None, peers=peers, wall=lambda: now[0]
    )


async def exits(store: ReplayStore, showings: list[tuple[int, int]]) -> list[tuple[int, str, int]]:
    """Each (pass number, class) shown at the exit, paid, and marked used as the lane does once
    its exit record is durable; the outcomes and amounts."""
    clock = [float(NOW)]
    trips = desk(store, clock)
    texts = {n: pass_of(P01 if n % 2 else P02, n) for n, _ in showings}
    seen = []
    for n, vehicle_class in showings:
        clock[0] += 60
        answer = await trips.price(ask(texts[n], vehicle_class))
        assert answer.amount_minor is not None and answer.pass_id is not None
        seen.append((n, answer.outcome, answer.amount_minor))
        await trips.mark_used(MarkPassUsed(answer.pass_id, answer.pass_exp or 0, None, "x-exit"))
    return seen


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=8))
def test_a_pass_never_exits_twice_and_a_fare_is_a_cell(showings: list[tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, ReplayStore(Path(tmp) / "replay.sqlite3") as store:
        seen = asyncio.run(exits(store, showings))
    first: set[int] = set()
    for n, outcome, _ in seen:
        assert outcome == ("pass_used" if n in first else "charged"), seen
        first.add(n)
    for (n, vehicle_class), (_, outcome, amount) in zip(showings, seen, strict=True):
        entry = "P01" if n % 2 else "P02"
        cells = {
            TARIFF.trip_fare(vehicle_class, entry, "P03", NOW).amount_minor,
            TARIFF.farthest_fare(vehicle_class, "P03", NOW).amount_minor,
        }
        assert amount in cells
        if outcome == "pass_used":
            assert amount == TARIFF.farthest_fare(vehicle_class, "P03", NOW).amount_minor


def test_a_plate_prices_from_its_binding_and_the_binding_goes_with_the_exit(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        with ReplayStore(tmp_path / "replay.sqlite3") as store:
            trips = desk(store, [float(NOW)])
            plate_ask = ask(None, source=TripSource.PLATE)
            assert not (await trips.price(plate_ask)).found
            text = pass_of(P01, 7)
            trips.handle(Incoming(topics.road_plate("ZJA1"), binding(text), retain=True))
            answer = await trips.price(plate_ask)
            assert (answer.outcome, answer.amount_minor) == ("charged", 4000)
            trips.handle(Incoming(topics.road_plate("ZJA1"), b"", retain=True))  # exited
            assert not (await trips.price(plate_ask)).found

    asyncio.run(run())


def test_a_forged_delete_does_not_let_an_older_binding_of_the_plate_back_in(
    tmp_path: Path,
) -> None:
    """Anybody with the broker password can empty a plate's binding (a delete is not signed)
    and then replay the plate's earlier genuine binding: its pass, exited long ago, would
    charge the vehicle the farthest fare as `pass_used`. Forgotten, the plate still refuses
    a binding no later than the one it held, until that one is older than any trip may be;
    a later one (the plate's next trip) is taken."""

    async def run() -> None:
        with ReplayStore(tmp_path / "replay.sqlite3") as store:
            clock = [float(NOW)]
            trips = desk(store, clock)
            topic, plate_ask = topics.road_plate("ZJA1"), ask(None, source=TripSource.PLATE)
            earlier = pass_of(P01, 1, at=NOW - 5 * HOUR)
            trips.handle(Incoming(topic, binding(earlier, at=NOW - 5 * HOUR), retain=True))
            answer = await trips.price(ask(earlier))
            assert answer.pass_id is not None
            await trips.mark_used(
                MarkPassUsed(answer.pass_id, answer.pass_exp or 0, None, "x-exit")
            )
            trips.handle(Incoming(topic, binding(pass_of(P01, 2)), retain=True))  # this trip
            trips.handle(Incoming(topic, b"", retain=True))  # forged
            trips.handle(Incoming(topic, binding(earlier, at=NOW - 5 * HOUR), retain=True))
            assert not (await trips.price(plate_ask)).found  # the vehicle shows its ticket
            later = pass_of(P02, 3, at=NOW - 60)
            trips.handle(Incoming(topic, binding(later, at=NOW - 60), retain=True))
            assert trips.bound == {"ZJA1": later}
            trips.handle(Incoming(topic, b"", retain=True))
            clock[0] = NOW - 60 + RULES.road.max_trip_s + 1
            trips.handle(Incoming(topics.road_plate("ZJB2"), b"", retain=True))
            assert trips.forgotten == {}  # no memory kept for ever, plate by plate

    asyncio.run(run())


def test_a_plate_binding_that_is_no_pass_text_is_refused_and_not_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not ASCII, or longer than any pass (a retained megabyte on the road's topic), signed or
    not: logged with its topic and not held in memory."""
    with ReplayStore(tmp_path / "replay.sqlite3") as store:
        trips = desk(store, [float(NOW)])
        topic = topics.road_plate("ZJA1")
        for payload in (b"\xff\xfe", b"A" * (MAX_TEXT_LEN + 1), b"A" * 1_000_000,
                        binding("A" * (MAX_TEXT_LEN + 1)), binding("\u6d59A1")):  # fmt: skip
            trips.handle(Incoming(topic, payload, retain=True))
        assert trips.bound == {}
        lines = [r for r in caplog.records if r.getMessage() == "plate binding refused: malformed"]
        assert [r.__dict__["topic"] for r in lines] == [topic] * 5
        trips.handle(Incoming(topic, binding("A" * MAX_TEXT_LEN), retain=True))
        assert trips.bound == {"ZJA1": "A" * MAX_TEXT_LEN}
