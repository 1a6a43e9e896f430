"""A real lane (daemon, mosquitto, device emulator, SQLite) caps an offline token's lifetime:
a token its issuer signed for a year is declined, recorded with the reason, counted under its
own label, and the barrier stays closed; the cap is the one `auth.max_token_lifetime_s` sets."""

from __future__ import annotations

from pathlib import Path

from ops_kit import OpsLane, running_lane
from polling import eventually

from sim.broker import Mosquitto


async def declined_for_lifetime(lane: OpsLane) -> None:
    """The last vehicle's record says declined for the lifetime, and nothing was opened for it.
    The record's note follows the decline's once the queue has committed it."""
    await eventually(lambda: bool(lane.named("record")))
    record = lane.named("record")[-1]["record"]
    assert record["method"] == "token"
    assert record["auth"]["result"] == "declined"
    assert record["flags"][-1] == "lifetime_too_long"
    assert lane.named("declined")[-1]["reason"] == "lifetime_too_long"
    assert lane.device.state == "closed"
    assert [cmd.op for cmd in lane.device.received].count("open") == 0
    assert lane.daemon.runner.state.barrier == "closed"


async def decisions(lane: OpsLane, result: str, reason: str) -> float:
    labels = (("method", "token"), ("reason", reason), ("result", result))
    return (await lane.scrape()).get(("lane_decisions_total", labels), 0.0)


async def test_a_year_long_token_is_declined_and_the_barrier_stays_closed(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    async with running_lane(tmp_path, mosquitto, lane_id) as lane:
        assert await lane.serve("long_lived") == "declined"
        await declined_for_lifetime(lane)
        assert lane.named("barrier_opened") == []
        assert await decisions(lane, "declined", "lifetime_too_long") == 1
        # The same issuer's 60 s token still pays: only the lifetime was wrong.
        assert await lane.serve("token") == "barrier_opened"


async def test_the_cap_is_the_configured_one(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """A lane capped below what issuers make declines their 60 s tokens: the verifier takes
    the cap from the config, not from its default."""
    extra = {"auth": {"max_token_lifetime_s": 30}}
    async with running_lane(tmp_path, mosquitto, lane_id, extra=extra) as lane:
        assert await lane.serve("token") == "declined"
        await declined_for_lifetime(lane)
        assert lane.named("barrier_opened") == []
