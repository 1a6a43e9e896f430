"""Who may speak for a lane: the shipped plaza.acl (`pattern ... uplink/%u/...`) and the
shipped bridge example, in real mosquitto brokers. A lane's bridge logs in as its lane id and
carries its records to the plaza; another lane's credentials can neither publish that lane's
records nor read its acks."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import eventually
from uplink_kit import Q, drained, lane_side, reconcile, recs, start_lane, worker

from lane.transport.mqtt import Credentials, Incoming, MqttLink
from lane.wire.topics import uplink_acks, uplink_records
from sim.broker import Mosquitto, free_port
from uplink.messages import encode_batch
from uplink.sqlite_store import SqliteIngestStore

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
PASSWD_TOOL = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
# Started as root, mosquitto drops to user "mosquitto", which cannot read pytest's tmp_path.
AS_ROOT = "user root\n" if os.geteuid() == 0 else ""
LANE, OTHER = "p07/l03", "p07/l04"

pytestmark = pytest.mark.skipif(
    not Path(PASSWD_TOOL).exists(), reason="mosquitto_passwd missing (package mosquitto)"
)


def creds(user: str) -> Credentials:
    return Credentials(user, f"pw-{user.replace('/', '-')}")


@pytest.fixture
def plaza(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker running the shipped plaza.acl, with users for two lanes and the back office."""
    passwd = tmp_path / "plaza.passwd"
    passwd.touch()
    for user in (LANE, OTHER, "backoffice"):
        subprocess.run([PASSWD_TOOL, "-b", str(passwd), user, creds(user).password], check=True)
    work = tmp_path / "plaza"
    work.mkdir()
    broker = Mosquitto(
        free_port(),
        work,
        f"password_file {passwd}\nacl_file {DEPLOY / 'plaza.acl'}\n{AS_ROOT}",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def bridge_config(plaza: Mosquitto) -> str:
    """The shipped bridge example, pointed at the test's plaza broker (plain TCP here)."""
    text = (DEPLOY / "bridge.conf.example").read_text()
    text = text.replace("plaza.example.net:8883", f"{plaza.host}:{plaza.port}")
    text = text.replace("CHANGE-ME", creds(LANE).password)
    return re.sub(r"^bridge_cafile .*$", "", text, flags=re.MULTILINE)


async def test_only_the_lane_itself_may_publish_its_records_through_the_plaza(
    plaza: Mosquitto, tmp_path: Path
) -> None:
    work = tmp_path / "lane-broker"
    work.mkdir()
    lane_broker = Mosquitto(free_port(), work, bridge_config(plaza))
    lane_broker.start()
    store = SqliteIngestStore(tmp_path / "bo.sqlite")
    w = worker(plaza.host, plaza.port, store, "ingest-acl", "acl")
    w.link.credentials = creds("backoffice")
    side = lane_side(lane_broker.host, lane_broker.port, LANE, tmp_path / "q.sqlite")
    peeked: list[str] = []

    async def peek(msg: Incoming) -> None:
        peeked.append(msg.topic)

    forger = MqttLink(
        plaza.host,
        plaza.port,
        "forger",
        [(uplink_acks(LANE), 1), (uplink_records(LANE), 1)],
        peek,
        credentials=creds(OTHER),
    )
    forger_task = asyncio.create_task(forger.run())
    try:
        await w.start()
        await forger.wait_connected(5)
        await start_lane(side)
        await side.link.wait_connected(5)
        # Through the lane broker and the bridge (user p07/l03) to the plaza and back.
        await side.append(12)
        await drained(side, store, LANE, within=20)
        reconcile(side, store, LANE)
        # Another lane's credentials: its forged batch for p07/l03 never reaches the ingest.
        rows = [(r.seq, r.data) for r in recs(13, 14, lane=LANE, tag="forged-")]
        for _ in range(3):
            try:
                await forger.publish(uplink_records(LANE), encode_batch(LANE, Q, "f", rows))
            except Exception as exc:  # the broker may refuse or silently drop: both are fine
                print(f"publish refused: {exc!r}")
        # Its own topic is granted: proof the forger's publishes do reach the plaza.
        own = [(r.seq, r.data) for r in recs(1, 1, lane=OTHER)]
        await forger.publish(uplink_records(OTHER), encode_batch(OTHER, Q, "o", own))
        await eventually(lambda: store.count(OTHER) == 1, what="the forger's own record")
        assert store.count(LANE) == 12 and w.ingest.stats.conflicts == 0
        assert {r.record_id for r in store.records(LANE)} == set(side.written.values())
        assert peeked == []  # it read neither the lane's records nor its acks
    finally:
        await side.stop()
        await w.stop()
        forger_task.cancel()
        await asyncio.gather(forger_task, return_exceptions=True)
        store.close()
        lane_broker.stop()
