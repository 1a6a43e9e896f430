"""A fare gate against the simulated acquirer over real HTTP: a payment code the network
declined, shown again by its passenger, is refused again at the gate with the same decline
and never reaches the acquirer a second time (lane.core.reread); another code does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from polling import eventually
from test_lane_daemon import Lane, named, running_lane, show

from sim.broker import Mosquitto

DEDUP_S = 0.2  # the scanner reports a code again once it was out of view this long


def declined_records(lane: Lane) -> list[dict[str, object]]:
    records = [fields["record"] for name, fields in lane.notes if name == "record"]
    return [r for r in records if r["auth"]["result"] == "declined"]


async def test_a_declined_code_shown_again_at_a_gate_is_not_sent_again(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    gate = {"mode": "transit-entry"}
    async with running_lane(
        tmp_path, mosquitto, lane_id, lane=gate, camera={"dedup_window_s": DEDUP_S}
    ) as lane:
        lane.acquirer.update_faults(decline_rate=1.0)  # insufficient_funds
        code = lane.codes.make("alipay", int(time.time())).text
        await show(lane, code, lambda: named(lane, "declined"))
        assert named(lane, "declined")[0]["reason"] == "insufficient_funds"
        assert len(lane.acquirer.payments()) == 1
        await eventually(lambda: len(declined_records(lane)) == 1)
        calls = lane.acquirer.api_requests

        # The passenger lowers the phone and holds it up again: a new sighting for the scanner.
        await asyncio.sleep(DEDUP_S * 3)

        def refused_again() -> bool:
            ignored = named(lane, "scan_ignored")
            return any(n["reason"] == "declined before: insufficient_funds" for n in ignored)

        await show(lane, code, refused_again)
        assert lane.acquirer.api_requests == calls
        assert len(lane.acquirer.payments()) == 1
        assert len(named(lane, "declined")) == 1
        assert len(declined_records(lane)) == 1

        other = lane.codes.make("alipay", int(time.time())).text
        await show(lane, other, lambda: len(named(lane, "declined")) == 2)
        assert len(lane.acquirer.payments()) == 2
        await eventually(lambda: len(declined_records(lane)) == 2)
