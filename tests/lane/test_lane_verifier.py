"""The token check runs off the event loop (its replay mark is an fsync), and a use it shares
with the plaza still reaches the publishing task from that worker thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from lane.auth.acquirer import AcquirerClient
from lane.auth.authoriser import Authoriser, AuthRequest, OfflineResult
from lane.auth.deny import DenyList
from lane.auth.plaza import UsedTokenSharing
from lane.auth.policy import OfflinePolicy
from lane.auth.replay import ReplayStore
from lane.auth.resolver import ResolutionStore, Resolver
from lane.transport.mqtt import MqttLink
from lane.verifier import TokenVerifier
from sim.broker import free_port
from sim.codes import CodeFactory

KEY = b"lane-secret-for-tests-0123456789"


class ThreadSpy:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def verify(self, text: str, now_unix: float) -> OfflineResult:
        self.threads.append(threading.get_ident())
        return OfflineResult(True, "approved", "acct", "tok")


async def test_offline_verification_runs_off_the_event_loop(tmp_path: Path) -> None:
    async with AcquirerClient(f"http://127.0.0.1:{free_port()}") as client:
        resolver = Resolver(ResolutionStore(tmp_path / "r.db"), client)
        spy = ThreadSpy()
        auth = Authoriser(
            "p01/l01",
            client,
            resolver,
            spy,
            OfflinePolicy(),
            time.monotonic,
            time.time,
            account_key=KEY,
        )
        try:
            req = AuthRequest("a1", "p01/l01", "LT1:x", "token", 0, "CNY", time.monotonic() + 1)
            decision = await auth.authorise(req)
        finally:
            await resolver.stop()
    assert decision.approved
    assert spy.threads and spy.threads[0] != threading.get_ident()


async def test_a_use_verified_on_a_worker_thread_is_shared(tmp_path: Path) -> None:
    """asyncio's debug mode refuses loop calls from other threads: sharing must hop back."""
    now = int(time.time())
    codes = CodeFactory(3)
    store = ReplayStore(tmp_path / "replay.db")
    link = MqttLink("127.0.0.1", free_port(), "unused")  # never connected: the use stays queued
    sharing = UsedTokenSharing(link, store, "p01", "p01/l01")
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
            result = await asyncio.to_thread(verifier.verify, codes.make("token", now).text, now)
        finally:
            loop.set_debug(was_debug)
        assert result.approved, result
        await asyncio.sleep(0.01)
        assert sharing.backlog == 0  # run() took the use (and now waits for the link)
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        store.close()
