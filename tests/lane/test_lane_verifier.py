"""The token check's one thread hop: signature, claims and deny list on the event loop (an
Ed25519 verify costs less than a hop), the replay mark (an fsync) on a worker thread, and the
use shared with the plaza from the loop again."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import lane.verifier
from lane.auth.deny import DenyList
from lane.auth.plaza import UsedTokenSharing
from lane.auth.replay import ReplayStore
from lane.transport.mqtt import MqttLink
from lane.verifier import TokenVerifier
from sim.broker import free_port
from sim.codes import CodeFactory


async def test_only_the_replay_mark_leaves_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time())
    codes = CodeFactory(3)
    checked: list[int] = []
    marked: list[int] = []
    pure = lane.verifier.verify_token

    def spy_check(*args: Any) -> Any:
        checked.append(threading.get_ident())
        return pure(*args)

    monkeypatch.setattr(lane.verifier, "verify_token", spy_check)
    with ReplayStore(tmp_path / "replay.db") as store:
        mark = store.check_and_mark

        def spy_mark(*args: Any, **kwargs: Any) -> bool:
            marked.append(threading.get_ident())
            return mark(*args, **kwargs)

        monkeypatch.setattr(store, "check_and_mark", spy_mark)
        verifier = TokenVerifier("p01/l01", codes.keyset(now), DenyList.empty(), store, 30.0)
        text = codes.make("token", now).text
        assert (await verifier.verify(text, now)).approved
        assert (await verifier.verify(text, now)).reason == "replayed"
        assert (await verifier.verify("LT1:garbage", now)).reason != "replayed"
    loop_thread = threading.get_ident()
    assert checked == [loop_thread] * 3  # no hop for the pure part, refusals included
    assert len(marked) == 2 and loop_thread not in marked  # the fsync never blocks the loop


async def test_a_first_use_is_shared_from_the_loop(tmp_path: Path) -> None:
    """asyncio's debug mode refuses loop calls from other threads: the use is queued for the
    plaza on the loop, once the replay mark is back (no second hop)."""
    now = int(time.time())
    codes = CodeFactory(3)
    store = ReplayStore(tmp_path / "replay.db")
    link = MqttLink("127.0.0.1", free_port(), "unused")  # never connected: the use stays queued
    peers = codes.peers("p01/l01", store, lambda: codes.keyset(now))
    sharing = UsedTokenSharing(link, store, "p01", "p01/l01", peers=peers)
    verifier = TokenVerifier(
        "p01/l01", codes.keyset(now), DenyList.empty(), store, 30.0, sharing=sharing
    )
    loop = asyncio.get_running_loop()
    was_debug = loop.get_debug()
    task = asyncio.create_task(sharing.run())
    try:
        await asyncio.sleep(0)  # run() now waits on its queue
        loop.set_debug(True)
        try:
            result = await verifier.verify(codes.make("token", now).text, now)
        finally:
            loop.set_debug(was_debug)
        assert result.approved, result
        await asyncio.sleep(0.01)
        assert sharing.backlog == 0  # run() took the use (and now waits for the link)
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        store.close()
