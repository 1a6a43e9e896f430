"""The simulator's check of a metro run (`sim.metro.fare_check`, the report's `metro_fares`):
each rider's tap-in and tap-out records added up, charges less refunds, against the tariff's
fare of the trip. A rider charged twice, or a tap-out that found no tap-in, is counted."""

from __future__ import annotations

import uuid
from pathlib import Path

from lane.auth.fares import load_tariff
from lane.core.names import AuthResult, Method, RecordKind
from lane.core.records import AuthInfo, RecordDraft
from sim import metro
from uplink.records import Record

NOW = 1_790_000_000


def record(kind: RecordKind, lane: str, amount: int, *flags: str, pass_id: str | None = None,
           result: AuthResult = AuthResult.APPROVED) -> Record:  # fmt: skip
    draft = RecordDraft(kind, "v", 1, amount, "CNY", Method.TOKEN, "rider", AuthInfo(result),
                        flags=flags, pass_id=pass_id)  # fmt: skip
    return Record(str(uuid.uuid4()), lane, 1, NOW * 10**6, draft)


def trip_of(tap_in: Record) -> str:
    return uuid.UUID(tap_in.record_id).hex


def test_a_run_s_riders_are_checked_against_the_trip_s_fare(tmp_path: Path) -> None:
    metro.write_tariff(tmp_path, NOW - 86_400)
    tariff = load_tariff(metro.tariff_path(tmp_path))
    fare = tariff.trip_fare(1, "S02", "S03", NOW).amount_minor
    farthest = tariff.farthest_fare(1, "S03", NOW).amount_minor
    token_in, wallet_in, twice_in, open_in = (
        record(RecordKind.TAP_IN, "S02/g01", 250) for _ in range(4)
    )
    rest = fare - 250
    # fmt: off
    records = [
        token_in,
        record(RecordKind.TAP_OUT, "S03/x01", rest, pass_id=trip_of(token_in)),
        wallet_in,
        record(RecordKind.TAP_OUT, "S03/x01", rest, f"charged:{farthest}",
               f"refunded:{farthest - rest}", pass_id=trip_of(wallet_in)),
        twice_in,  # the entry's fare paid and the whole trip again
        record(RecordKind.TAP_OUT, "S03/x01", fare, pass_id=trip_of(twice_in)),
        open_in,  # never tapped out
        record(RecordKind.TAP_OUT, "S03/x01", farthest, "no_pass"),  # no tap-in found
        record(RecordKind.TAP_OUT, "S03/x01", fare, result=AuthResult.DECLINED),  # paid nothing
    ]
    # fmt: on
    wrong = records[5].record_id
    assert metro.fare_check(records, tariff) == {
        "trips": 3,
        "wrong": 1,
        "unpaired": 2,
        "examples": [{"tap_out": wrong, "paid_minor": 250 + fare, "fare_minor": fare}],
    }
