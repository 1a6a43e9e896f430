"""Sharing used offline-token ids between the lanes of a plaza (rule 4 across lanes).

Each lane publishes the tokens it accepts to `plaza/{plaza}/used_tokens` (QoS 1) and marks
the ids other lanes publish in its own replay store, so a screenshot shown at lane A is refused
at lane B. What is left is the propagation window (milliseconds on a plaza LAN); during a link
outage a lane still refuses its own replays and catches up on the others' uses when the broker
delivers the QoS 1 messages held in its persistent session.

A mark a lane gives back (a pass whose exit was refunded: the vehicle never left) is shared
the same way, a message of kind `release` on the same topic: the other lanes forget the mark
only if they heard it from that lane (`ReplayStore.release(remote=True)`); a mark they made
themselves, or heard from another lane, stays. A use is sent as version 1, as ever (a lane of
an older release still reads it); a release as version 2, which such a lane refuses with a log
line instead of reading it as a use.

Every message is signed with the sending lane's key and verified before it is taken
(lane.auth.peers, lane.auth.peer_messages): the broker account the lanes share proves nothing.
A genuine message replayed is not taken twice (`Peers.first_hearing`), and a release is taken
only for a mark no newer than it (`ReplayStore.release(made_by=...)`): a release replayed after
the pass was used again at that lane never frees the new mark.

A local use never waits for MQTT: it is queued and published by `run()` when the link is up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from lane.auth.peers import Ignored, Peers
from lane.auth.replay import ReplayStore, ReplayStoreError
from lane.transport.mqtt import Incoming, MqttLink
from lane.transport.outbox import Outbox
from lane.wire.codec import PayloadError, field, optional, pack, unpack

log = logging.getLogger("lane.auth.plaza")

USED_TOKEN_VERSION = 2  # 2: a release (`kind`); a use is still sent as 1
MAX_TOKEN_ID_LEN = 128
MAX_TIME = 1 << 40


def used_tokens_topic(plaza: str) -> str:
    return f"plaza/{plaza}/used_tokens"


def keys_topic(plaza: str) -> str:
    """Retained: the issuer key set (`lane.auth.keys.encode_keyset`)."""
    return f"lane/{plaza}/keys"


def deny_topic(plaza: str) -> str:
    """Retained: the deny list (`lane.auth.deny.encode_deny_list`)."""
    return f"lane/{plaza}/deny"


class MarkKind(StrEnum):
    USE = "use"  # the lane accepted the token or the pass: marked used
    RELEASE = "release"  # the lane gave its mark back (its exit refunded)


@dataclass(frozen=True)
class UsedTokenMsg:
    token_id: str
    exp: int  # token expiry, unix seconds UTC
    lane: str  # the lane that accepted it (or released it)
    ts: float  # when it was accepted (or released), unix seconds UTC
    kind: MarkKind = MarkKind.USE


def encode_used_token(msg: UsedTokenMsg) -> bytes:
    body = {"token_id": msg.token_id, "exp": msg.exp, "lane": msg.lane, "ts": msg.ts}
    if msg.kind is MarkKind.USE:
        return pack(body, v=1)
    return pack({**body, "kind": msg.kind.value}, v=USED_TOKEN_VERSION)


def decode_used_token(payload: bytes) -> UsedTokenMsg:
    """Raises PayloadError naming the field when the message is not a used-token message."""
    body = unpack(payload, max_version=USED_TOKEN_VERSION)
    token_id = field(body, "token_id", str)
    exp = field(body, "exp", int)
    lane = field(body, "lane", str)
    ts = field(body, "ts", (int, float))
    kind = optional(body, "kind", str) or MarkKind.USE
    if not 0 < len(token_id) <= MAX_TOKEN_ID_LEN:
        raise PayloadError(f"field 'token_id' must be 1..{MAX_TOKEN_ID_LEN} characters")
    if not 0 <= exp < MAX_TIME:
        raise PayloadError("field 'exp' is out of range")
    if not lane:
        raise PayloadError("field 'lane' must not be empty")
    if not math.isfinite(ts):
        raise PayloadError("field 'ts' must be finite")
    if kind not in set(MarkKind):
        raise PayloadError(f"field 'kind' must be {' or '.join(MarkKind)}, got {kind!r}")
    return UsedTokenMsg(token_id, exp, lane, float(ts), MarkKind(kind))


def _lane_of(msg: UsedTokenMsg) -> str:
    return msg.lane


def of_plaza(lane: str, plaza: str) -> bool:
    """Is `lane` (an id `plaza/lane`) one of the lanes of `plaza`?"""
    head, sep, rest = lane.partition("/")
    return head == plaza and sep == "/" and bool(rest) and "/" not in rest


class UsedTokenSharing:
    """Publishes this lane's token uses and records the other lanes' ones.

    Wire it to an `MqttLink` that subscribes `self.subscription()` and routes messages on
    `self.topic` to `handle`; run `run()` as a task for the publishing side.
    """

    def __init__(
        self,
        link: MqttLink,
        store: ReplayStore,
        plaza: str,
        lane: str,
        *,
        peers: Peers,
        max_pending: int = 10_000,
        useful_after_exp_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.store = store
        self.plaza = plaza
        self.lane = lane
        self.topic = used_tokens_topic(plaza)
        self.useful_after_exp_s = useful_after_exp_s
        self.clock = clock
        self.peers = peers
        self.received = 0
        self.outbox: Outbox[UsedTokenMsg] = Outbox(
            link,
            self.topic,
            lambda msg: peers.seal(encode_used_token(msg)),
            lambda msg: msg.exp + self.useful_after_exp_s - self.clock(),  # then nobody takes it
            lambda msg: {"token_id": msg.token_id},
            lane=lane,
            max_pending=max_pending,
        )

    @property
    def link_up(self) -> bool:
        return self.link.connected.is_set()

    @property
    def backlog(self) -> int:
        return self.outbox.backlog

    @property
    def published(self) -> int:
        return self.outbox.published

    @property
    def dropped(self) -> int:
        return self.outbox.dropped

    @property
    def expired_unsent(self) -> int:
        return self.outbox.expired_unsent

    def subscription(self) -> tuple[str, int]:
        return (self.topic, 1)

    async def check_and_mark(self, token_id: str, exp: int, now: float) -> bool:
        """Record a local use (on disk, off the loop); share it when it is the first use."""
        return await mark_used(self.store, self, token_id, exp, self.lane, now)

    def share(self, msg: UsedTokenMsg) -> None:
        """Queue a use for publishing; when the queue is full the oldest use is dropped.

        On the loop only (asyncio.Queue is not thread-safe): the token check shares from the
        loop once its replay mark is back, which costs no extra wake-up of the loop."""
        self.outbox.put(msg)

    async def run(self, retry_s: float = 0.2) -> None:
        await self.outbox.run(retry_s)

    async def handle(self, incoming: Incoming) -> None:
        if incoming.topic != self.topic:
            return
        opened = self.peers.open(
            incoming.topic, incoming.payload, decode_used_token, _lane_of, "used-token message"
        )
        if opened is None:
            return
        msg = opened.message
        if msg.lane == self.lane:
            return  # our own publish coming back
        if not of_plaza(msg.lane, self.plaza):
            # Only this plaza's lanes mark or release here: a use from elsewhere would refuse
            # a good token, a release would free a mark nobody here gave.
            self.peers.ignore(
                Ignored.OUTSIDE_PLAZA,
                opened,
                {"topic": incoming.topic, "from_lane": msg.lane, "token_id": msg.token_id,
                 "kind": msg.kind.value},
            )  # fmt: skip
            return
        ids = {"token_id": msg.token_id}
        latest = self.store.bounds.latest_exp(msg.token_id, self.clock())
        if not await self.peers.first_hearing(opened, msg.exp, ids, latest=latest):
            return
        try:
            if msg.kind is MarkKind.RELEASE:
                changed = await release_mark(
                    self.store,
                    None,
                    msg.token_id,
                    msg.lane,
                    self.clock(),
                    remote=True,
                    made_by=msg.ts,
                )
            else:
                changed = await mark_used(
                    self.store, None, msg.token_id, msg.exp, msg.lane, self.clock(), remote=True,
                    seen_at=msg.ts,
                )  # fmt: skip
        except ReplayStoreError as exc:
            log.error(
                f"cannot record remote token {msg.kind}",
                extra={"lane": self.lane, "token_id": msg.token_id, "error": str(exc)},
            )
            return
        self.received += 1
        if changed:
            log.info(
                f"remote token {msg.kind}",
                extra={"lane": self.lane, "from_lane": msg.lane, "token_id": msg.token_id},
            )


async def mark_used(  # noqa: PLR0917 - the replay store's own arguments, and who shares
    store: ReplayStore,
    sharing: UsedTokenSharing | None,
    key: str,
    exp: int,
    lane: str,
    now: float,
    *,
    remote: bool = False,
    seen_at: float | None = None,
    exit_id: str | None = None,
) -> bool:
    """Mark a used token or pass in the replay store (an fsync: on a worker thread, the one
    hop): this lane's use, made at `seen_at` (None: now), shared from the loop when it is the
    first and the lane is in a plaza; or, `remote`, a use `lane` made, heard with its time by
    its clock (`seen_at`): marked as heard (`ReplayStore.mark_remote`, given back by that
    lane's release), never shared again. `exit_id`: the exit record that used it (a metro
    tap-out), which names the mark. True for the first use."""
    if remote:
        mark = partial(store.mark_remote, now=now, exit_id=exit_id)
        return await asyncio.to_thread(mark, key, exp, lane, seen_at)
    local = partial(store.check_and_mark, exit_id=exit_id)
    first = await asyncio.to_thread(local, key, exp, lane, now, seen_at)
    if first and sharing is not None:
        sharing.share(UsedTokenMsg(key, exp, lane, now))
    return first


async def release_mark(
    store: ReplayStore,
    sharing: UsedTokenSharing | None,
    key: str,
    lane: str,
    now: float,
    *,
    remote: bool = False,
    made_by: float | None = None,
    exit_id: str | None = None,
    exp: int | None = None,
) -> bool:
    """Give back a use `lane` marked itself, or (`remote`) one heard from `lane`
    (`ReplayStore.release`, on a worker thread; `made_by`: only a use marked by then;
    `exit_id`: the refunded exit's use, whoever made it, the refund kept until `exp`), and,
    when there was one of its own and the lane is in a plaza, share the release from the
    loop. True when a mark was released."""
    release = partial(store.release, remote=remote, made_by=made_by, exit_id=exit_id,
                      exp=exp, now=now)  # fmt: skip
    exp = await asyncio.to_thread(release, key, lane)
    if exp is not None and sharing is not None and not remote:
        sharing.share(UsedTokenMsg(key, exp, lane, now, MarkKind.RELEASE))
    return exp is not None
