"""Issue #11 item 6 on a running lane: poisoned key sets and deny lists left retained on a real
mosquitto are refused with an alarm and a metric, and never block the back office's next ones."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ops_kit import running_lane
from polling import eventually

from lane.auth.cose import Alg
from lane.auth.deny import MAX_DENY_BYTES, DenyList, encode_deny_list
from lane.auth.keys import (
    MAX_KEYSET_BYTES,
    IssuerKey,
    KeySet,
    encode_keyset,
    keyset_to_json,
)
from lane.auth.plaza import deny_topic, keys_topic
from lane.transport.mqtt import MqttLink
from sim.broker import Mosquitto

ALARM = "trust_update_refused"


def refused(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], kind: str) -> float:
    return sum(
        value
        for (name, labels), value in metrics.items()
        if name == "lane_trust_updates_refused_total" and ("kind", kind) in labels
    )


@asynccontextmanager
async def back_office(mosquitto: Mosquitto, lane_id: str) -> AsyncIterator[MqttLink]:
    """The back office's link to the plaza's topics; their retained copies deleted after."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    link = MqttLink(mosquitto.host, mosquitto.port, f"bo-{lane_id}")
    task = asyncio.create_task(link.run())
    try:
        await link.wait_connected(5)
        yield link
    finally:
        for topic in (keys_topic(plaza), deny_topic(plaza)):
            await link.publish(topic, b"", retain=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_retained_poison_is_refused_and_the_next_sane_update_is_taken(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    plaza = lane_id.split("/", maxsplit=1)[0]
    now = int(time.time())
    new_key = Ed25519PrivateKey.generate()
    rotated = IssuerKey(b"rotated", Alg.ED25519, new_key.public_key(), now - 60, now + 3600)
    async with back_office(mosquitto, lane_id) as backoffice:
        # Left on the broker before the lane starts: what it finds on (re)connecting.
        poison_keys = KeySet.of(2**62, [rotated])
        await backoffice.publish(keys_topic(plaza), encode_keyset(poison_keys), retain=True)
        poison_deny = DenyList.of(2**64 - 1, [])
        await backoffice.publish(deny_topic(plaza), encode_deny_list(poison_deny), retain=True)
        async with running_lane(tmp_path, mosquitto, lane_id) as lane:
            daemon = lane.daemon
            await eventually(lambda: ALARM in daemon.runner.alarms)
            await eventually(lambda: "generation_jump" in daemon.runner.alarms.get(ALARM, ""))
            text = daemon.runner.alarms[ALARM]
            assert f"mqtt lane/{plaza}/keys" in text and "future_dated" in text
            assert daemon.verifier.keys.get(b"rotated") is None
            metrics = await lane.scrape()
            assert refused(metrics, "keyset") == 1 and refused(metrics, "deny") == 1
            assert metrics[("lane_alarm_active", (("alarm", ALARM),))] == 1
            # Safe while it lasts: the lane goes on with what it held (the file's key set).
            assert await lane.serve("token") == "barrier_opened"

            # The back office's next, sane updates are taken at once; the alarm clears.
            sane = KeySet.of(now + 1, [*lane.codes.keyset(now).keys.values(), rotated])
            await backoffice.publish(keys_topic(plaza), encode_keyset(sane), retain=True)
            denied = DenyList.of(7, [lane.codes.account()])
            await backoffice.publish(deny_topic(plaza), encode_deny_list(denied), retain=True)
            await eventually(lambda: daemon.verifier.keys.get(b"rotated") is not None)
            await eventually(lambda: daemon.verifier.deny.generation == 7)
            await eventually(lambda: ALARM not in daemon.runner.alarms)
            metrics = await lane.scrape()
            assert metrics[("lane_alarm_active", (("alarm", ALARM),))] == 0
            assert refused(metrics, "keyset") == 1  # counted once, not per re-delivery


async def test_a_poisoned_file_and_a_garbage_copy_are_refused_until_their_source_is_sane(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    plaza = lane_id.split("/", maxsplit=1)[0]
    async with (
        back_office(mosquitto, lane_id) as backoffice,
        running_lane(tmp_path, mosquitto, lane_id) as lane,
    ):
        daemon = lane.daemon
        keyset = lane.config.auth.keyset
        assert keyset is not None
        held = daemon.verifier.keys
        # A sync job writes a key set in milliseconds; the back office leaves garbage.
        now = int(time.time())
        body = {**json.loads(keyset_to_json(held)), "issued_at": now * 1000}
        keyset.write_text(json.dumps(body))
        await backoffice.publish(deny_topic(plaza), b"\x81\xa1v\x01", retain=True)
        await eventually(lambda: str(keyset) in daemon.runner.alarms.get(ALARM, ""))
        await eventually(lambda: "invalid" in daemon.runner.alarms.get(ALARM, ""))
        assert daemon.verifier.keys is held
        assert await lane.serve("token") == "barrier_opened"
        # The file is corrected and the garbage deleted: nothing is left to alarm about.
        keyset.write_text(keyset_to_json(KeySet.of(now + 1, held.keys.values())))
        await backoffice.publish(deny_topic(plaza), b"", retain=True)
        await eventually(lambda: ALARM not in daemon.runner.alarms)
        assert daemon.verifier.keys.issued_at == now + 1
        metrics = await lane.scrape()
        assert refused(metrics, "keyset") == 1 and refused(metrics, "deny") == 1


async def test_a_huge_retained_key_set_or_deny_list_is_refused_by_its_size(
    tmp_path: Path, mosquitto: Mosquitto, lane_id: str
) -> None:
    """A payload far beyond any real key set or deny list (a bug, a hostile publisher) used to
    be decoded on the event loop and adopted: seconds of a frozen lane per delivery, its memory
    held. Refused by its size before it is read, with the alarm; the next sane ones clear it."""
    plaza = lane_id.split("/", maxsplit=1)[0]
    now = int(time.time())
    public = Ed25519PrivateKey.generate().public_key()
    many = [IssuerKey(b"k%06d" % i, Alg.ED25519, public, now, now + 3600) for i in range(10_000)]
    huge_keys = encode_keyset(KeySet.of(now + 1, many))
    huge_deny = encode_deny_list(DenyList.of(2, (f"account-{i:024d}" for i in range(1_000_000))))
    assert len(huge_keys) > MAX_KEYSET_BYTES and len(huge_deny) > MAX_DENY_BYTES
    async with (
        back_office(mosquitto, lane_id) as backoffice,
        running_lane(tmp_path, mosquitto, lane_id) as lane,
    ):
        daemon = lane.daemon
        held = daemon.verifier.keys
        await backoffice.publish(keys_topic(plaza), huge_keys, retain=True)
        await backoffice.publish(deny_topic(plaza), huge_deny, retain=True)
        await eventually(lambda: daemon.runner.alarms.get(ALARM, "").count(" bytes") == 2)
        text = daemon.runner.alarms[ALARM]
        assert f"is {len(huge_keys)} bytes, at most {MAX_KEYSET_BYTES}" in text
        assert f"is {len(huge_deny)} bytes, at most {MAX_DENY_BYTES}" in text
        assert daemon.verifier.keys is held and daemon.verifier.deny.generation == 0
        assert await lane.serve("token") == "barrier_opened"
        # The back office's next, sane updates are taken; the alarm clears.
        sane = KeySet.of(held.issued_at + 1, held.keys.values())
        await backoffice.publish(keys_topic(plaza), encode_keyset(sane), retain=True)
        sane_deny = encode_deny_list(DenyList.of(3, []))
        await backoffice.publish(deny_topic(plaza), sane_deny, retain=True)
        await eventually(lambda: ALARM not in daemon.runner.alarms)
        assert daemon.verifier.keys.issued_at == held.issued_at + 1
        assert daemon.verifier.deny.generation == 3
