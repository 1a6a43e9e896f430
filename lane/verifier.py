"""The lane's offline token check: signature and claims, deny list, then replay (rule 4).

`verify_token` is pure; this adapter adds the two stateful parts: the key set and deny list in
force (replaced whole when a newer one arrives by file or MQTT) and the replay store shared with
the plaza. A token is marked used only once everything else accepted it, so a refused token
never burns a driver's code.
"""

from __future__ import annotations

import logging

from lane.auth.authoriser import OfflineResult
from lane.auth.deny import DenyList, newer_deny_list
from lane.auth.keys import KeySet
from lane.auth.plaza import UsedTokenMsg, UsedTokenSharing
from lane.auth.replay import ReplayStore
from lane.auth.tokens import TokenAccepted, verify_token

log = logging.getLogger("lane.auth.verifier")


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
    ) -> None:
        self.lane = lane
        self.keys = keys
        self.deny = deny
        self.replay = replay
        self.skew_s = skew_s
        self.sharing = sharing

    def update_keys(self, keys: KeySet) -> bool:
        if not keys.supersedes(self.keys):
            return False
        self.keys = keys
        log.info("key set updated", extra={"lane": self.lane, "issued_at": keys.issued_at})
        return True

    def update_deny(self, deny: DenyList) -> bool:
        newer = newer_deny_list(self.deny, deny)
        if newer is self.deny:
            return False
        self.deny = newer
        log.info("deny list updated", extra={"lane": self.lane})
        return True

    def verify(self, text: str, now_unix: float) -> OfflineResult:
        verdict = verify_token(text, self.keys, self.deny, now_unix, self.skew_s)
        if not isinstance(verdict, TokenAccepted):
            return OfflineResult(False, verdict.reason.value, None, None)
        if not self.replay.check_and_mark(verdict.token_id, verdict.exp, self.lane, now_unix):
            return OfflineResult(False, "replayed", verdict.account_ref, verdict.token_id)
        if self.sharing is not None:
            self.sharing.share(UsedTokenMsg(verdict.token_id, verdict.exp, self.lane, now_unix))
        return OfflineResult(True, "ok", verdict.account_ref, verdict.token_id)
