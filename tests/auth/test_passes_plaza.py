"""A pass exits once across the plaza: the used-pass namespace of the replay store, shared
between two exit lanes over a real mosquitto like used tokens; a refunded exit gives the pass
back at every exit lane."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

from polling import eventually
from test_replay_plaza import lane_sharing, wait_for_mark

from lane.auth.deny import DenyList
from lane.auth.fares import load_tariff
from lane.auth.issuer import PlazaPassKey
from lane.auth.keys import KeySet
from lane.auth.passes import EntryPass, PassAccepted, pass_key, verify_pass
from lane.auth.plaza import MarkKind, UsedTokenMsg, UsedTokenSharing
from lane.auth.trip_pricing import ExitLaneRules
from lane.auth.trip_rules import ExitContext, Outcome, RoadRules, decide_fare
from lane.core.actions import MarkPassUsed, PriceTrip, ReleasePass
from lane.core.names import TripSource
from lane.trip_desk import TripDesk
from lane.verifier import TokenVerifier
from sim.broker import Mosquitto

DAY = 86_400
TARIFF = load_tariff(Path(__file__).resolve().parents[2] / "deploy" / "tariff.road.example.toml")


async def test_a_pass_used_at_one_exit_lane_is_pass_used_at_the_next(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    plaza = f"P{uuid.uuid4().hex[:6]}"
    now = int(time.time())
    key = PlazaPassKey.generate("P01")
    keys = KeySet.of(now, [key.public()])
    text = key.issue(EntryPass("P01", "e1", now - 3600, 1, uuid.uuid4().bytes[:12]))
    async with (
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/x1") as (x1, _),
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/x2") as (x2, _),
    ):
        await x1.link.wait_connected(5)
        await x2.link.wait_connected(5)
        verdicts = []
        for sharing, lane in ((x1, "x1"), (x2, "x2")):
            verdict = verify_pass(text, keys, now, 5, 30 * DAY)
            assert isinstance(verdict, PassAccepted)
            entry = verdict.entry
            used_id = pass_key(entry.pass_hex)
            first = await sharing.check_and_mark(used_id, entry.entered_at + 30 * DAY, now)
            at_exit = ExitContext("P03", lane, 1, None, now)
            verdicts.append(decide_fare(entry, not first, at_exit, TARIFF, RoadRules()))
            if sharing is x1:  # the use reaches the other lane of the plaza
                await wait_for_mark(x2.store, used_id)
        assert [d.outcome for d in verdicts] == [Outcome.CHARGED, Outcome.PASS_USED]
        assert verdicts[1].attendant
        used = x2.store.get(pass_key(verdicts[0].pass_id or ""))
        assert used is not None and used.remote and used.lane == f"{plaza}/x1"
        assert used.exp == now - 3600 + 30 * DAY  # a pass this lane accepts: kept as sent


async def test_a_pass_id_a_bad_peer_sends_for_years_is_kept_by_the_pass_lifetime(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    plaza = f"P{uuid.uuid4().hex[:6]}"
    used_id = pass_key(uuid.uuid4().hex[:24])
    async with (
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/bad") as (bad, _),
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/x2") as (x2, _),
    ):
        await bad.link.wait_connected(5)
        await x2.link.wait_connected(5)
        before = time.time()
        bad.share(UsedTokenMsg(used_id, int(before) + 10 * 365 * DAY, f"{plaza}/bad", before))
        await wait_for_mark(x2.store, used_id)
        after = time.time()
        used = x2.store.get(used_id)
        # The store's bounds (RemoteBounds' defaults): skew 30 s, a pass lifetime of 30 days.
        assert used is not None and used.remote
        assert before + 60 + 30 * DAY <= used.exp <= math.ceil(after + 60 + 30 * DAY)


def exit_desk(sharing: UsedTokenSharing, keys: KeySet) -> TripDesk:
    rules = ExitLaneRules("P03", sharing.lane, RoadRules(), pass_lifetime_s=30 * DAY, skew_s=30)
    watch = TokenVerifier(sharing.lane, keys, DenyList.empty(), sharing.store, 30).replay_watch
    return TripDesk(rules, TARIFF, lambda: keys, sharing.store, sharing.link, sharing=sharing,
                    peers=sharing.peers, wall=time.time, replay_watch=watch)  # fmt: skip


def shown(text: str) -> PriceTrip:
    return PriceTrip("v1/trip1", "v1", 1, TripSource.PASS, text, None)


async def test_a_refunded_exit_gives_the_pass_back_at_every_exit_lane(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """x1 charged the trip, then refunded it (its driver was never let through): the release
    reaches x2, where the pass prices as a trip again, no attendant. A release takes only the
    mark heard from the lane that sends it: x2's own exit of another pass stays."""
    plaza = f"P{uuid.uuid4().hex[:6]}"
    now = int(time.time())
    key = PlazaPassKey.generate("P01")
    keys = KeySet.of(now, [key.public()])
    texts = [key.issue(EntryPass("P01", "e1", now - 3600, 1, uuid.uuid4().bytes[:12]))
             for _ in range(2)]  # fmt: skip
    async with (
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/x1") as (x1, _),
        lane_sharing(mosquitto, tmp_path, plaza, f"{plaza}/x2") as (x2, _),
    ):
        await x1.link.wait_connected(5)
        await x2.link.wait_connected(5)
        at_x1, at_x2 = exit_desk(x1, keys), exit_desk(x2, keys)
        trip = await at_x1.price(shown(texts[0]))
        assert trip.outcome == "charged" and trip.pass_id is not None
        await at_x1.mark_used(MarkPassUsed(trip.pass_id, trip.pass_exp or 0, None, "x-exit"))
        used_id = pass_key(trip.pass_id)
        await wait_for_mark(x2.store, used_id)
        assert (await at_x2.price(shown(texts[0]))).outcome == "pass_used"
        own = await at_x2.price(shown(texts[1]))  # x2's own exit of the other pass
        assert own.pass_id is not None
        await at_x2.mark_used(MarkPassUsed(own.pass_id, own.pass_exp or 0, None, "x-exit"))
        # A release of it from x1 (which never marked it) comes first on the topic.
        x1.share(UsedTokenMsg(pass_key(own.pass_id), now + DAY, x1.lane, now, MarkKind.RELEASE))
        await at_x1.release(ReleasePass(trip.pass_id, "x-exit"))
        await eventually(lambda: x2.store.get(used_id) is None, within=5, what="x1's release")
        again = await at_x2.price(shown(texts[0]))
        assert (again.outcome, again.attendant) == ("charged", False)
        assert x2.store.get(pass_key(own.pass_id)) is not None
        assert (await at_x1.price(shown(texts[1]))).outcome == "pass_used"
