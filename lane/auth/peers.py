"""A lane's end of the messages lanes send each other: sign what it sends, verify what it hears.

One `Peers` per lane, shared by the used-token sharing (lane.auth.plaza), a metro gate's tap
desk (lane.tap_desk) and a closed road's ticket and trip desks (lane.ticket_desk,
lane.trip_desk), which call it where they encode and decode their messages:

- `seal(payload)`: the message signed with the lane's key (lane.auth.peer_messages); a lane
  without one (only while `auth.accept_unsigned_peers` is on) sends it bare.
- `open(...)`: the verified message, or None after one warning line naming the topic, the lane
  the message claims and the refusal (the first of its kind, its message's name and reason, in
  `REFUSAL_LOG_EVERY_S`: the others are counted, and `say_counted(now)`, from the health loop
  every second, says how many once that time has passed (as the lane stops, every window's:
  `stopping`): a flood writes two lines a minute); the refusal is kept for
  `peer_messages_refused` (every one of them), an unsigned message taken for
  `unsigned_peer_messages`. `refuse(...)` does the same for what a desk refuses itself before
  opening it (an MQTT delete of a plate binding: it cannot be signed), `took_unsigned(...)`
  what one takes unsigned without opening it (that delete, while `auth.accept_unsigned_peers`
  is on: it names no lane, so the alarm names what it was).
- `ignore(why, ...)`: a genuine message a desk does not take for what it says (`Ignored`: heard
  before, from outside the plaza, older than the plate's ...): a replay of one comes as often as
  whoever replays it sends it, so its line goes through the same window (`say_counted`).
- `first_hearing(...)`: False for a message already taken (its digest marked in the replay
  store, `peer:` keys, kept as long as the message could act, and never longer than this
  lane's own rules let what it names act: a peer's `exp` beyond that is cut, with a line): a
  replay of a genuine signed message is not taken twice.
- `alarm_texts(now)`: the three peer alarms' texts (None: clear), which the health loop raises
  and clears every second: `peer_messages_refused` (per lane, until a message of that lane
  verifies or `PEER_QUIET_S` passes without a refusal from it), `unsigned_peer_messages` (until
  none is taken for `PEER_QUIET_S`), `lane_key_missing` (while the key set the lane holds,
  which its peers hold too, lacks its own key).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from lane.auth.keys import KeySet
from lane.auth.peer_messages import (
    LaneKey,
    PeerOpened,
    PeerRefusal,
    PeerRefused,
    PeerWatch,
    open_peer,
)
from lane.auth.peer_messages import own_key_missing as own_key_text
from lane.auth.replay import ReplayStore, ReplayStoreError
from lane.refusal_log import RefusalLog
from lane.wire.utc import utc_text

log = logging.getLogger("lane.auth.peers")

T = TypeVar("T")
REFUSED_ALARM = "peer_messages_refused"
UNSIGNED_ALARM = "unsigned_peer_messages"
KEY_MISSING_ALARM = "lane_key_missing"
# Replay store keys of messages taken: never a token id or a pass (`pass:`) key.
HEARD_PREFIX = "peer:"


class Ignored(StrEnum):
    """A genuine (or, while unsigned ones are taken, unsigned) peer message not taken for what
    it says: its log line. Each is what a replay of a message once genuine can cause."""

    HEARD_BEFORE = "peer message heard before: ignored"
    LIMITED = "peer message marked heard only to this lane's limit"
    OUTSIDE_PLAZA = "used-token message from a lane outside the plaza: refused"
    ANOTHER_PLATE = "plate binding for another plate: refused"
    OLDER_BINDING = "plate binding older than the plate's: refused"
    FUTURE_TAP_IN = "tap-in from the future: refused"

    @property
    def level(self) -> int:
        # The broker's second delivery is heard before too: nothing to look into.
        return logging.INFO if self is Ignored.HEARD_BEFORE else logging.WARNING


def heard_key(payload: bytes) -> str:
    """A message's mark as taken: the digest of its payload, not of its envelope (a genuine
    ECDSA signature can be re-made as another valid one without the key)."""
    return HEARD_PREFIX + hashlib.sha256(payload).hexdigest()[:32]


class Peers:
    def __init__(
        self,
        lane: str,
        key: LaneKey | None,
        keys: Callable[[], KeySet],
        replay: ReplayStore,
        *,
        accept_unsigned: bool,
        wall: Callable[[], float],
    ) -> None:
        self.lane = lane
        self.key = key
        self.keys = keys  # the lane's current key set (files and retained updates)
        self.replay = replay
        self.accept_unsigned = accept_unsigned
        self.wall = wall
        self.watch = PeerWatch()
        self.refusal_log = RefusalLog()
        self.ignored_log = RefusalLog()  # keyed by the Ignored line alone (its reason "")

    def seal(self, payload: bytes) -> bytes:
        return payload if self.key is None else self.key.seal(payload)

    def open(
        self,
        topic: str,
        data: bytes,
        decode: Callable[[bytes], T],
        lane_of: Callable[[T], str],
        what: str,
    ) -> PeerOpened[T] | None:
        """`what`: the message's name in the log line (`used-token message`, ...)."""
        now = self.wall()
        got = open_peer(
            data, self.keys(), now, decode, lane_of, accept_unsigned=self.accept_unsigned
        )
        if isinstance(got, PeerOpened):
            if got.lane != self.lane:
                self.watch.opened(got.lane, got.signed, now)
            return got
        if got.lane == self.lane:
            # Our own publish coming back while our key is not in the key set
            # (`lane_key_missing` says so), or a forgery in our name: nothing to act on.
            return None
        self.refuse(topic, what, got, now)
        return None

    def took_unsigned(self, sender: str) -> None:
        """An unsigned message a desk took without opening it: `unsigned_peer_messages` names
        `sender` (what it was, as it names no lane) as it names a lane whose message it took."""
        self.watch.opened(sender, signed=False, now=self.wall())

    def refuse(self, topic: str, what: str, got: PeerRefused, now: float) -> None:
        """Log a message refused (unless counted: `refusal_log`) and keep it for the alarm."""
        if self.refusal_log.admit(what, got.reason, now):
            log.warning(
                f"{what} refused: {got.reason}",
                extra={"lane": self.lane, "topic": topic, "from_lane": got.lane,
                       "reason": str(got.reason), "kid": got.kid, "error": got.detail},
            )  # fmt: skip
        if got.lane is not None and got.reason is not PeerRefusal.MALFORMED:
            self.watch.refusal(got.lane, got.reason, now)

    async def first_hearing(
        self, opened: PeerOpened[T], exp: float, ids: dict[str, str], *, latest: float
    ) -> bool:
        """Mark the message as taken until `exp` (unix s); False when it was taken before (a
        replay, or the broker's second delivery). `latest`: the latest time this lane's own
        rules let what the message names act here (a token's or a pass's lifetime cap, a
        tap-in's retention): a later `exp` (a peer's bad clock or rules, or its key's) is cut to
        it with a line, so no message keeps a mark here for longer than this lane would. A
        store that fails takes it all the same: the message is genuine, and what it does says
        the store's fault itself."""
        kept = min(exp, latest)
        if kept < exp:
            self.ignore(Ignored.LIMITED, opened, {**ids, "from_lane": opened.lane, "exp": exp,
                                          "kept_exp": kept})  # fmt: skip
        try:
            first = await asyncio.to_thread(
                self.replay.check_and_mark,
                heard_key(opened.payload),
                int(kept) + 1,
                opened.lane,
                self.wall(),
            )
        except ReplayStoreError as exc:
            log.error("peer message not marked as heard", extra={**ids, "lane": self.lane,
                      "from_lane": opened.lane, "error": str(exc)})  # fmt: skip
            return True
        if not first:
            self.ignore(Ignored.HEARD_BEFORE, opened, {**ids, "from_lane": opened.lane})
        return first

    def ignore(self, why: Ignored, opened: PeerOpened[Any], extra: Mapping[str, object]) -> None:
        """Log a genuine message not taken (unless counted: `ignored_log`), one window per
        signing lane: a second lane replaying beside a first still gets its line. Lanes taken
        unsigned share one window, as the lane they name is anybody's to make up."""
        sender = opened.lane if opened.signed else ""
        if self.ignored_log.admit(why, sender, self.wall()):
            log.log(why.level, why, extra={**extra, "lane": self.lane})

    def say_counted(self, now: float, *, stopping: bool = False) -> None:
        """One line per kind of refusal counted, not logged, in a window that has passed
        (`stopping`: in every window)."""
        for counted in self.refusal_log.rest() if stopping else self.refusal_log.counted(now):
            log.warning(
                f"{counted.what} refused: {counted.reason}: {counted.count} more since"
                f" {utc_text(counted.since)}",
                extra={"lane": self.lane, "reason": str(counted.reason),
                       "refused": counted.count, "since": counted.since},
            )  # fmt: skip
        for counted in self.ignored_log.rest() if stopping else self.ignored_log.counted(now):
            why = Ignored(counted.what)
            sender = f" from {counted.reason}" if counted.reason else " taken unsigned"
            log.log(why.level,
                    f"{why}: {counted.count} more{sender} since {utc_text(counted.since)}",
                    extra={"lane": self.lane, "from_lane": counted.reason or None,
                           "refused": counted.count, "since": counted.since})  # fmt: skip

    def alarm_texts(self, now: float) -> dict[str, str | None]:
        keys = self.keys()
        # A lane holding no key set at all cannot tell (`lane check-config` warns of that).
        missing = None if self.key is None or not keys.keys else own_key_text(keys, self.key, now)
        return {
            REFUSED_ALARM: self.watch.refused_text(now),
            UNSIGNED_ALARM: self.watch.unsigned_text(now),
            KEY_MISSING_ALARM: missing,
        }
