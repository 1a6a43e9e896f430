"""An exit lane's pricing, from the evidence to the core's TripPriced: tables, and properties run
through the real trip desk and used-pass store (a pass never exits twice; a fare is always a
cell of the matrix)."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_kit import collected, running, sender
from polling import eventually
from test_tap_desk_stores import locked

from lane.auth.cose import decode_sign1
from lane.auth.deny import DenyList
from lane.auth.fares import load_tariff
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet
from lane.auth.passes import MAX_TEXT_LEN, EntryPass
from lane.auth.peer_messages import PEER_QUIET_S
from lane.auth.peers import UNSIGNED_ALARM
from lane.auth.plate_binding import BindingKind, PlateBinding, decode_binding, encode_binding
from lane.auth.replay import PlateTime, ReplayStore
from lane.auth.trip_pricing import ExitLaneRules, evidence_of, pass_expiry, price_trip
from lane.auth.trip_rules import RoadRules
from lane.core.actions import MarkPassUsed, PriceTrip
from lane.core.names import TripSource
from lane.refusal_log import REFUSAL_LOG_EVERY_S
from lane.store_watch import Alarm
from lane.transport.mqtt import Incoming, MqttLink
from lane.trip_desk import REPLAY_PLATES, UNSIGNED_DELETE, TripDesk
from lane.verifier import TokenVerifier
from lane.wire import topics
from lane.wire.codec import PayloadError, pack, unpack
from sim.broker import Mosquitto
from sim.codes import CodeFactory

TARIFF = load_tariff(Path(__file__).resolve().parents[2] / "deploy" / "tariff.road.example.toml")
NOW = int(datetime(2026, 12, 1, 4, 0, tzinfo=UTC).timestamp())
HOUR = 3600
P01 = PlazaPassKey.generate("P01")
P02 = PlazaPassKey.generate("P02")
STRANGER = PlazaPassKey.generate("P02", kid="pass-P02-stolen")
CODES = CodeFactory(5)
ENTRY = "P01/e1"  # the entry lane that binds plates, with its key (lane.auth.peers)
ELSEWHERE = "P03/x2"  # another exit lane, which empties a binding whose pass left by it
KEYS = KeySet.of(NOW - 86_400, [*CODES.keyset(NOW - 3600, [ENTRY, ELSEWHERE]).keys.values(),
                                P01.public(), P02.public()])  # fmt: skip
RULES = ExitLaneRules("P03", "P03/x1", RoadRules(), pass_lifetime_s=30 * 86_400, skew_s=30)


def binding(text: str, plate: str = "ZJA1", at: float = NOW - HOUR, lane: str = ENTRY) -> bytes:
    """A plate binding as the entry lane publishes it."""
    return CODES.lane_key(lane).seal(encode_binding(PlateBinding(plate, text, lane, at)))


def exited(text: str, plate: str = "ZJA1", at: float = NOW - HOUR) -> bytes:
    """The tombstone of the binding of `plate` made `at`, as the exit lane its pass left by
    publishes it."""
    tomb = PlateBinding(plate, text, ELSEWHERE, at, BindingKind.EXITED)
    return CODES.lane_key(ELSEWHERE).seal(encode_binding(tomb))


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


def desk(store: ReplayStore, now: list[float], alarm: Alarm | None = None) -> TripDesk:
    """`alarm`: the replay store's (the verifier's, which the desk says its faults through)."""
    # A link that never connects: the desk only publishes to clear a plate binding.
    link = MqttLink("127.0.0.1", 1, "never-connected")
    peers = CODES.peers(RULES.lane, store, lambda: KEYS, lambda: now[0])
    watch = TokenVerifier(RULES.lane, KEYS, DenyList.empty(), store, 30, alarm=alarm).replay_watch
    return TripDesk(RULES, TARIFF, lambda: KEYS, store, link, sharing=None, peers=peers,
                    wall=lambda: now[0], replay_watch=watch)  # fmt: skip


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
            await trips.handle(Incoming(topics.road_plate("ZJA1"), binding(text), retain=True))
            answer = await trips.price(plate_ask)
            assert (answer.outcome, answer.amount_minor) == ("charged", 4000)
            await trips.handle(Incoming(topics.road_plate("ZJA1"), exited(text), retain=True))
            assert not (await trips.price(plate_ask)).found

    asyncio.run(run())


def test_a_binding_is_sent_as_ever_and_its_tombstone_as_a_version_an_older_lane_refuses() -> None:
    """An exit lane of the release before reads a binding as ever, and refuses a tombstone (a
    version it does not know) instead of taking it for a binding of its pass."""
    bound = PlateBinding("ZJA1", pass_of(P01, 1), ENTRY, NOW - 60)
    assert unpack(encode_binding(bound)) == {"v": 1, "plate": "ZJA1", "pass": bound.pass_text,
                                             "lane": ENTRY, "ts": NOW - 60}  # fmt: skip
    tomb = replace(bound, lane=ELSEWHERE, kind=BindingKind.EXITED)
    assert decode_binding(encode_binding(bound)) == bound
    assert decode_binding(encode_binding(tomb)) == tomb
    with pytest.raises(PayloadError, match="schema version 2"):
        unpack(encode_binding(tomb), max_version=1)
    odd = {**unpack(encode_binding(tomb), max_version=2), "kind": "gone"}
    with pytest.raises(PayloadError, match="field 'kind' must be bound or exited"):
        decode_binding(pack({k: v for k, v in odd.items() if k != "v"}, v=2))


async def test_the_tombstone_is_retained_until_the_broker_drops_it_after_max_trip_s(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A retained tombstone per plate ever emptied would stay on every broker for ever: it goes
    with its MQTT message expiry, `max_trip_s` (1 s here), which mosquitto honours."""
    rules = replace(RULES, road=replace(RULES.road, max_trip_s=1.0))
    plate, now = f"ZT{uuid.uuid4().hex[:8].upper()}", time.time()
    text = P01.issue(EntryPass("P01", "e1", int(now) - 60, 1, bytes([9]) * 12, plate))
    topic = topics.road_plate(plate)
    link = MqttLink(mosquitto.host, mosquitto.port, f"exit-{plate}")
    async with running(link), sender(mosquitto, f"entry-{plate}") as entry:
        await entry.publish(topic, binding(text, plate, at=now - 60), qos=1, retain=True)
        with ReplayStore(tmp_path / "replay.sqlite3") as store:
            peers = CODES.peers(rules.lane, store, lambda: KEYS, time.time)
            watch = TokenVerifier(rules.lane, KEYS, DenyList.empty(), store, 30).replay_watch
            trips = TripDesk(rules, TARIFF, lambda: KEYS, store, link, sharing=None,
                             peers=peers, wall=time.time, replay_watch=watch)  # fmt: skip
            await trips.handle(Incoming(topic, binding(text, plate, at=now - 60), retain=True))
            answer = await trips.price(replace(ask(None, source=TripSource.PLATE), plate=plate))
            assert answer.pass_id is not None
            await trips.mark_used(
                MarkPassUsed(answer.pass_id, answer.pass_exp or 0, None, "x-exit")
            )

    async def retained() -> list[PlateBinding]:
        """What a lane that subscribes now is handed before a marker sent after it."""
        async with collected(mosquitto, f"late-{uuid.uuid4().hex[:8]}", topic,
                             lambda data: data) as got:  # fmt: skip
            async with sender(mosquitto, f"marker-{plate}") as marker:
                await marker.publish(topic, b"marker", qos=1)
            await eventually(lambda: b"marker" in got, what="the marker")
        return [decode_binding(decode_sign1(data).payload) for data in got[: got.index(b"marker")]]

    async def gone() -> bool:
        return not await retained()

    [tomb] = await retained()
    assert (tomb.kind, tomb.ts) == (BindingKind.EXITED, now - 60)
    await eventually(gone, within=10, every=0.25, what="the tombstone dropped")


def test_a_forged_delete_is_refused_and_an_emptied_binding_lets_no_older_one_back_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anybody with the broker password can send an MQTT delete of a plate's binding (it is
    not signed): refused, the binding stands. The genuine tombstone of the exit at another lane
    empties it; the plate's earlier genuine binding replayed next (its pass exited long ago:
    the farthest fare as `pass_used`) is refused as older, and so is the tombstone replayed
    against the plate's next binding, until the time is older than any trip may be. A delete
    is taken while unsigned messages are (an exit lane of the release before sends one)."""

    async def run() -> None:
        with ReplayStore(tmp_path / "replay.sqlite3") as store:
            clock = [float(NOW)]
            trips = desk(store, clock)
            topic, plate_ask = topics.road_plate("ZJA1"), ask(None, source=TripSource.PLATE)
            earlier = pass_of(P01, 1, at=NOW - 5 * HOUR)
            await trips.handle(Incoming(topic, binding(earlier, at=NOW - 5 * HOUR), retain=True))
            answer = await trips.price(ask(earlier))
            assert answer.pass_id is not None
            await trips.mark_used(
                MarkPassUsed(answer.pass_id, answer.pass_exp or 0, None, "x-exit")
            )
            current = pass_of(P01, 2)
            await trips.handle(Incoming(topic, binding(current), retain=True))  # this trip
            await trips.handle(Incoming(topic, b"", retain=True))  # forged
            assert trips.bound == {"ZJA1": current}
            [line] = [r for r in caplog.records if r.getMessage().startswith("plate binding del")]
            assert line.getMessage() == "plate binding delete refused: unsigned"
            assert line.__dict__["topic"] == topic
            await trips.handle(Incoming(topic, exited(current), retain=True))  # it left
            await trips.handle(Incoming(topic, binding(earlier, at=NOW - 5 * HOUR), retain=True))
            assert not (await trips.price(plate_ask)).found  # the vehicle shows its ticket
            later = pass_of(P02, 3, at=NOW - 60)
            await trips.handle(Incoming(topic, binding(later, at=NOW - 60), retain=True))
            await trips.handle(Incoming(topic, exited(current), retain=True))  # replayed
            assert trips.bound == {"ZJA1": later}
            await trips.handle(Incoming(topic, exited(later, at=NOW - 60), retain=True))
            assert trips.bound == {}
            clock[0] = NOW - 60 + RULES.road.max_trip_s + 1
            await trips.handle(Incoming(topics.road_plate("ZJB2"),
                                        exited(later, "ZJB2", at=clock[0] - 1)))  # fmt: skip
            assert trips.forgotten == {"ZJB2": clock[0] - 1}  # no memory kept for ever
            trips.peers.accept_unsigned = True
            await trips.handle(Incoming(topic, binding(later, at=clock[0]), retain=True))
            assert trips.peers.alarm_texts(clock[0])[UNSIGNED_ALARM] is None  # signed
            await trips.handle(Incoming(topic, b"", retain=True))
            assert trips.bound == {}
            # Taken unsigned as any unsigned message is: alarmed as one, until none for a while.
            said = trips.peers.alarm_texts(clock[0])[UNSIGNED_ALARM]
            assert said is not None and said.startswith(
                f"unsigned messages taken from {UNSIGNED_DELETE} ("
            )
            assert trips.peers.alarm_texts(clock[0] + PEER_QUIET_S)[UNSIGNED_ALARM] is None

    asyncio.run(run())


def test_a_plates_binding_time_outlives_a_restart_of_the_exit_lane(tmp_path: Path) -> None:
    """The plate's pass exited (its binding emptied), and that binding or the plate's earlier
    one is replayed while this lane restarts, in the tombstone's place on the broker: the
    plate's time comes back from the replay store, so both are refused; a plate still bound
    takes its binding the broker hands it again; the plate's next binding is taken."""

    async def run() -> None:
        path, clock = tmp_path / "replay.sqlite3", [float(NOW)]
        topic, plate_ask = topics.road_plate("ZJA1"), ask(None, source=TripSource.PLATE)
        earlier, current = pass_of(P01, 1, at=NOW - 5 * HOUR), pass_of(P01, 2)
        still = binding(pass_of(P01, 3), "ZJB2")
        with ReplayStore(path) as store:
            trips = desk(store, clock)
            await trips.handle(Incoming(topic, binding(earlier, at=NOW - 5 * HOUR), retain=True))
            await trips.handle(Incoming(topic, binding(current), retain=True))
            await trips.handle(Incoming(topic, exited(current), retain=True))  # it left
            await trips.handle(Incoming(topics.road_plate("ZJB2"), still, retain=True))
        with ReplayStore(path) as store:  # the lane starts again
            trips = desk(store, clock)
            assert trips.forgotten == {"ZJA1": NOW - HOUR}
            for replayed in (binding(earlier, at=NOW - 5 * HOUR), binding(current)):
                await trips.handle(Incoming(topic, replayed, retain=True))
                assert not (await trips.price(plate_ask)).found  # the vehicle shows its ticket
            await trips.handle(Incoming(topics.road_plate("ZJB2"), still, retain=True))
            assert trips.bound == {"ZJB2": pass_of(P01, 3)}
            later = pass_of(P01, 4, at=NOW - 60)
            await trips.handle(Incoming(topic, binding(later, at=NOW - 60), retain=True))
            assert trips.bound == {"ZJA1": later, "ZJB2": pass_of(P01, 3)}
            # Kept while a trip may last, no longer: a plate's time goes with a later write.
            clock[0] = NOW - 60 + RULES.road.max_trip_s + 1
            await trips.handle(Incoming(topics.road_plate("ZJC3"),
                                        binding(later, "ZJC3", at=clock[0] - 1)))  # fmt: skip
            assert store.plate_times(0) == {"ZJC3": PlateTime(clock[0] - 1, emptied=False)}

    asyncio.run(run())


def test_a_binding_time_the_store_does_not_take_is_alarmed_and_written_with_the_next(
    tmp_path: Path,
) -> None:
    """The replay store locked by another process: the binding is taken all the same, its time
    held in memory and `replay_store_error` says so; the next binding once the store takes
    writes again writes both, and clears it."""

    async def run() -> None:
        path = tmp_path / "replay.sqlite3"
        said: list[tuple[str, str | None]] = []
        with ReplayStore(path) as store:
            trips = desk(store, [float(NOW)], lambda code, text: said.append((code, text)))
            with locked(path):  # SQLite's wait runs out
                await trips.handle(Incoming(topics.road_plate("ZJA1"), binding(pass_of(P01, 1))))
            assert trips.bound == {"ZJA1": pass_of(P01, 1)}
            [(code, text)] = said
            assert code == "replay_store_error" and text is not None
            assert text.startswith(f"{REPLAY_PLATES} {path}: database is locked")
            later = binding(pass_of(P01, 2), "ZJB2", at=NOW - 60)
            await trips.handle(Incoming(topics.road_plate("ZJB2"), later))
            assert said[-1] == ("replay_store_error", None)
            assert store.plate_times(0) == {"ZJA1": PlateTime(NOW - HOUR, emptied=False),
                                            "ZJB2": PlateTime(NOW - 60, emptied=False)}  # fmt: skip

    asyncio.run(run())


def test_a_held_binding_time_is_written_by_the_stores_probe_before_its_alarm_clears(
    tmp_path: Path,
) -> None:
    """The store takes writes again and no binding comes: a token's mark committing did clear
    `replay_store_error`, and so did the store's probe, with the time still in memory only; a
    restart then let the plate's earlier binding, replayed, price its trip. The alarm stays
    until the probe has written it."""

    async def run() -> None:
        path, clock = tmp_path / "replay.sqlite3", [float(NOW)]
        topic, earlier = topics.road_plate("ZJA1"), pass_of(P01, 1, at=NOW - 5 * HOUR)
        said: list[tuple[str, str | None]] = []
        with ReplayStore(path) as store:
            trips = desk(store, clock, lambda code, text: said.append((code, text)))
            await trips.handle(Incoming(topic, binding(earlier, at=NOW - 5 * HOUR)))
            with locked(path):
                await trips.handle(Incoming(topic, binding(pass_of(P01, 2))))
            trips.replay_watch.says(None)  # a token's mark commits (lane.verifier)
            code, text = said[-1]
            assert code == "replay_store_error" and text is not None
            assert text.startswith(f"{REPLAY_PLATES} {path}: database is locked")
            probing = asyncio.create_task(trips.replay_watch.run(asyncio.sleep))
            try:
                await eventually(lambda: said[-1] == ("replay_store_error", None))
            finally:
                probing.cancel()
        with ReplayStore(path) as store:  # the lane starts again at once
            trips = desk(store, clock)
            await trips.handle(Incoming(topic, binding(earlier, at=NOW - 5 * HOUR), retain=True))
            assert trips.bound == {}

    asyncio.run(run())


def test_a_binding_or_tombstone_heard_again_is_not_written_again(tmp_path: Path) -> None:
    """The broker hands every retained binding and tombstone again at each connect and start
    (a day's vehicles on a road): each was written again, an fsync apiece, with the peer
    messages waiting behind. One heard again, its time kept, does not even ask the store (here
    locked by another process meanwhile: no wait, no alarm)."""

    async def run() -> None:
        path, clock, said = tmp_path / "replay.sqlite3", [float(NOW)], []
        current, left = pass_of(P01, 1), pass_of(P01, 2)
        retained = [
            Incoming(topics.road_plate("ZJA1"), binding(current), retain=True),
            Incoming(topics.road_plate("ZJB2"), exited(left, "ZJB2"), retain=True),
        ]
        with ReplayStore(path) as store:
            trips = desk(store, clock)
            for msg in retained:
                await trips.handle(msg)
        with ReplayStore(path) as store:  # the lane starts again: the broker hands them
            trips = desk(store, clock, lambda code, text: said.append((code, text)))
            with locked(path):
                for msg in retained * 2:
                    await trips.handle(msg)
            assert said == []
            assert (trips.bound, trips.forgotten) == ({"ZJA1": current}, {"ZJB2": NOW - HOUR})

    asyncio.run(run())


def test_a_plate_binding_that_is_no_pass_text_is_refused_and_not_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not ASCII, or longer than any pass (a retained megabyte on the road's topic), signed or
    not: logged with its topic (the first, the others counted) and not held in memory."""

    async def run() -> None:
        with ReplayStore(tmp_path / "replay.sqlite3") as store:
            trips = desk(store, [float(NOW)])
            topic = topics.road_plate("ZJA1")
            for payload in (b"\xff\xfe", b"A" * (MAX_TEXT_LEN + 1), b"A" * 1_000_000,
                            binding("A" * (MAX_TEXT_LEN + 1)), binding("\u6d59A1")):  # fmt: skip
                await trips.handle(Incoming(topic, payload, retain=True))
            assert trips.bound == {}
            said = "plate binding refused: malformed"
            lines = [r for r in caplog.records if r.getMessage() == said]
            assert [r.__dict__["topic"] for r in lines] == [topic]  # then counted, a minute
            trips.peers.say_counted(NOW + REFUSAL_LOG_EVERY_S)
            [counted] = [r for r in caplog.records if r.getMessage().startswith(f"{said}: 4 more")]
            assert counted.__dict__["refused"] == 4
            await trips.handle(Incoming(topic, binding("A" * MAX_TEXT_LEN), retain=True))
            assert trips.bound == {"ZJA1": "A" * MAX_TEXT_LEN}

    asyncio.run(run())
