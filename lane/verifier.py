"""The lane's offline token check: signature and claims, deny list, then replay (rule 4).

`verify_token` is pure; this adapter adds the two stateful parts: the key set and deny list in
force (replaced whole when a newer one arrives by file or MQTT, within the bounds of
`lane.auth.trust`) and the replay store shared with the plaza. A token is marked used only once
everything else accepted it, so a refused token never burns a driver's code.

A refused update is remembered by its source (a file path or an MQTT topic) until that source
sends one that passes: `refusal_text()` is the `trust_update_refused` alarm, `refused_counts`
feeds the metric. A future-dated update is kept and judged again by `retry_pending()`, so it is
adopted once its time has come.

A replay store that cannot be written (locked by another process, corrupt, an I/O error) is
safe by itself (no token passes without its replay mark) but would turn every token away with
no word: the first failed mark raises `replay_store_error` through `alarm`, and `upkeep`
probes the store every second while it fails (`ReplayStore.probe`, the write a mark makes;
lane.store_watch), so the alarm clears once the store takes marks again whether or not a token
comes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from lane.auth.authoriser import OfflineResult
from lane.auth.deny import DenyList
from lane.auth.keys import KeySet
from lane.auth.plaza import UsedTokenSharing, mark_used
from lane.auth.replay import ReplayStore, ReplayStoreError
from lane.auth.sourced import SourcedError
from lane.auth.tokens import DEFAULT_MAX_LIFETIME_S, TokenAccepted, verify_token
from lane.auth.trust import (
    DEFAULT_MAX_STEP,
    Judgement,
    UpdateKind,
    Verdict,
    judge_deny,
    judge_keyset,
)
from lane.store_watch import StoreWatch, in_thread

log = logging.getLogger("lane.auth.verifier")

REPLAY_ALARM = "replay_store_error"
PURGE_EVERY_S = 60.0


class TokenVerifier:
    def __init__(
        self,
        lane: str,
        keys: KeySet,
        deny: DenyList,
        replay: ReplayStore,
        skew_s: float,
        *,
        sharing: UsedTokenSharing | None = None,
        clock: Callable[[], float] = time.time,
        max_generation_step: int = DEFAULT_MAX_STEP,
        max_token_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
        alarm: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.lane = lane
        self.keys = keys
        self.deny = deny
        self.replay = replay
        self.skew_s = skew_s
        self.sharing = sharing
        self.clock = clock
        self.max_generation_step = max_generation_step
        self.max_token_lifetime_s = max_token_lifetime_s
        self.refused: dict[str, str] = {}  # source -> why its last update was refused
        self._refused_what: dict[str, object] = {}  # source -> (verdict, the refused update)
        self.refused_counts: Counter[tuple[UpdateKind, Verdict]] = Counter()
        self._pending: dict[str, KeySet | DenyList] = {}  # future-dated, by source
        self._alarm = alarm
        # A deny list is configured and none was read yet (its file did not load at start): a
        # denied account cannot be told from another, so no token passes until one is held.
        self.deny_missing = False
        self.replay_watch = StoreWatch(
            lane,
            REPLAY_ALARM,
            "offline tokens refused: replay store",
            in_thread(replay.probe),
            (ReplayStoreError,),
            alarm,
        )

    @property
    def replay_error(self) -> str | None:
        """The alarm's text while the replay store fails."""
        return self.replay_watch.text

    def update_keys(self, keys: KeySet, source: str) -> Judgement:
        judgement = judge_keyset(self.keys, keys, self.clock(), self.skew_s)
        if judgement.verdict is Verdict.ADOPT:
            self.keys = keys
        self._settle(UpdateKind.KEYSET, source, judgement, keys)
        return judgement

    def update_deny(self, deny: DenyList, source: str) -> Judgement:
        judgement = judge_deny(self.deny, deny, self.clock(), self.skew_s, self.max_generation_step)
        if judgement.verdict is Verdict.ADOPT:
            self.deny = deny
        if not judgement.refused:
            self.deny_missing = False  # adopted, or no newer than the (empty) list held
        self._settle(UpdateKind.DENY, source, judgement, deny)
        return judgement

    def update_unreadable(self, kind: UpdateKind, source: str, error: SourcedError) -> None:
        """A file or payload that is not a key set or deny list at all."""
        self._settle(kind, source, Judgement(Verdict.INVALID, error.problem), None)

    def forget_source(self, source: str) -> None:
        """The source withdrew its update (an emptied retained topic): nothing left to refuse."""
        self._pending.pop(source, None)
        self._refused_what.pop(source, None)
        if self.refused.pop(source, None) is not None:
            log.info("trust update source cleared", extra={"lane": self.lane, "source": source})

    def retry_pending(self) -> None:
        """Judge future-dated updates again: the lane's clock may have caught up with them."""
        for source, update in list(self._pending.items()):
            if isinstance(update, KeySet):
                self.update_keys(update, source)
            else:
                self.update_deny(update, source)

    def refusal_text(self) -> str | None:
        """The `trust_update_refused` alarm's text, or None when every source is sane."""
        if not self.refused:
            return None
        return "; ".join(self.refused[s] for s in sorted(self.refused))

    def _settle(
        self,
        kind: UpdateKind,
        source: str,
        judgement: Judgement,
        update: KeySet | DenyList | None,
    ) -> None:
        what = "key set" if kind is UpdateKind.KEYSET else "deny list"
        if judgement.verdict is Verdict.ADOPT and update is not None:
            mark = update.issued_at if isinstance(update, KeySet) else update.generation
            log.info(f"{what} updated", extra={"lane": self.lane, "source": source, "as_of": mark})
        if not judgement.refused:
            self.forget_source(source)
            return
        text = f"{what} from {source} refused ({judgement.verdict}): {judgement.detail}"
        if judgement.retry_later and update is not None:
            self._pending[source] = update
        else:
            self._pending.pop(source, None)
        what_exactly = (judgement.verdict, update if update is not None else judgement.detail)
        if self._refused_what.get(source) == what_exactly:
            # The same copy again (a retry, a re-delivery): counted, logged and worded once,
            # so the alarm text does not change every second with "N s ahead".
            return
        self._refused_what[source] = what_exactly
        self.refused[source] = text
        self.refused_counts[(kind, judgement.verdict)] += 1
        log.error(
            "trust update refused",
            extra={
                "lane": self.lane,
                "kind": kind.value,
                "source": source,
                "reason": judgement.verdict.value,
                "detail": judgement.detail,
            },
        )

    async def verify(self, text: str, now_unix: float) -> OfflineResult:
        """Decide one token. The pure checks run here on the loop: an Ed25519 verify costs
        ~80 µs (ES256 a few hundred), no more than the thread hop it would ride on. Only the
        replay mark, an fsync that would stall the loop for milliseconds under load, goes to a
        worker thread (the one hop of the decision); the first use is shared from the loop, so
        no second hop back."""
        if self.deny_missing:
            return OfflineResult(False, "verifier_error", None, None)
        verdict = verify_token(
            text, self.keys, self.deny, now_unix, self.skew_s, self.max_token_lifetime_s
        )
        if not isinstance(verdict, TokenAccepted):
            return OfflineResult(False, verdict.reason.value, None, None)
        try:
            first = await mark_used(
                self.replay, self.sharing, verdict.token_id, verdict.exp, self.lane, now_unix
            )
        except ReplayStoreError as exc:
            self.replay_watch.says(exc)
            return OfflineResult(False, "replay_store_error", verdict.account_ref, verdict.token_id)
        self.replay_watch.says(None)
        if not first:
            return OfflineResult(False, "replayed", verdict.account_ref, verdict.token_id)
        return OfflineResult(True, "ok", verdict.account_ref, verdict.token_id)

    async def upkeep(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Forget the uses no lane can accept any more, every `PURGE_EVERY_S`; while a mark
        failed, probe the store instead (lane.store_watch): the probe writes where a mark does,
        so the one that commits clears `replay_store_error` (the purge may commit where marks
        fail)."""
        await self.replay_watch.run(sleep, self._purge, PURGE_EVERY_S)

    async def _purge(self) -> None:
        """Housekeeping: a failed purge is logged and tried at the next turn."""
        try:
            await asyncio.to_thread(self.replay.purge, self.clock())
        except ReplayStoreError:
            log.exception("replay purge failed", extra={"lane": self.lane})
