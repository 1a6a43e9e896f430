"""A fare gate's code read again: the same passenger's phone, or someone else's copy.

At a fare gate a passenger is known only from the code they show, and the camera keeps
reading a phone still held up as its passenger walks through the gate the code opened. Taken
as a new passenger, that code went to the network again, which refused it as used: a declined
record, "Not accepted" shown to a passenger already let through, a network call wasted, and
`acquirer_declines` raised at a gate that declined nobody. So a gate remembers each code it
approved (its digest, `records.credential_of`) for `reread_s` from the approval, and that code
read again within it is ignored: no passenger, no authorisation, no record, no display (it
keeps what it said for the passenger the code was approved for). A record that failed to be
written takes its code out again: that payment was given up, and the passenger, told so, may
show the code again.

Its passenger is the only one the gate can take it for while they may still be in front of
the reader. Once they were seen walking through (a crossing of the passage the code opened)
and the gate was then seen closed behind them, they are past a closed gate: the code in a
frame taken after that is someone else's copy of the screen. It is refused here, as used
(`already_used`), with a declined record of its own and the display saying so, and is not
sent to the network; the copy opens nothing either way. After the window the network's
single-use rule (and anti-passback at an entry gate) refuses it as before.

A code the network declined at a gate is remembered too, for `reread_s`: the declined
passenger is gone from the lane's view at once (a fare gate has no loop), so their phone
read again would be a new passenger and a second authorisation of the same code, which the
networks answer as they did (a payment code's decline is final: Alipay's `40004`, WeChat
Pay's `NOTENOUGH` / `AUTH_CODE_INVALID`; docs/acquirer.md). It is refused again with the
same decline, shown again, with no new record and no network call. A decline that says
nothing of the code (`PASSING`: a time-out, an outage, the lane's own limits or errors) is
not remembered: that code may be shown again on purpose.

Toll lanes keep no such memory: a code read while the paid vehicle is at the pay point is
ignored there (one payment at a time), a declined one is the vehicle's own (`refused_texts`,
for as long as it is there), one read with nobody at the pay point makes no vehicle, one in
a frame taken before the next vehicle arrived is ignored (lane.core.before_arrival), and the
next vehicle's is the network's or the replay check's. Pure like the rest of the core: time
is `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from lane.core import events as ev
from lane.core.actions import Action, Persist
from lane.core.display import not_accepted
from lane.core.names import AuthResult, Position
from lane.core.notes import BarrierOpened, ScanIgnored
from lane.core.records import credential_of
from lane.core.state import COMMITTED_MEMORY, ApprovedCode, DeclinedCode, LaneState

Result = tuple[LaneState, list[Action]]

READ_AGAIN = "read again"
DECLINED_BEFORE = "declined before"
# The reason a copy of a code this gate let its passenger through with is refused.
ALREADY_USED = "already_used"
# Declines that say nothing of the code itself (docs/core.md, "A code read again at a fare
# gate": the rule): they are about the call, the moment, the merchant or the lane, so the
# answer may differ next time, and the code may be shown again on purpose and goes out again.
# `not_yet_valid` is a token shown before its `nbf`/`iat` (lane.auth.tokens): valid seconds
# later, by the clock alone. `frequency_limited` is WeChat Pay's 429 (our merchant's call
# rate); `out_trade_no_used` / `trade_no_repeat` are about our order number, and Alipay's
# `access_forbidden` about our merchant's contract.
PASSING = frozenset(
    {
        "not_yet_valid",
        "frequency_limited",
        "out_trade_no_used",
        "trade_no_repeat",
        "access_forbidden",
        "timeout",
        "acquirer_unavailable",
        "acquirer_error",
        "over_floor_limit",
        "offline_limit_reached",
        "reversed",
        "duplicate_auth",
        "abandoned",
        "internal_error",
        "verifier_error",
        "replay_store_error",
    }
)


def _approved(state: LaneState, event: ev.Scanned, now: float) -> ApprovedCode | None:
    if not state.approved_codes:
        return None
    credential = credential_of(event.text)
    window = state.rules.reread_s
    return next(
        (c for c in state.approved_codes if c.credential == credential and now - c.at < window),
        None,
    )


def _gone(code: ApprovedCode, event: ev.Scanned) -> bool:
    """The frame was taken after the gate closed behind the code's passenger, who walked
    through: not their phone."""
    return code.gone_at is not None and event.frame_ts >= code.gone_at


def ignores(state: LaneState, event: ev.Scanned, now: float) -> bool:
    """The code shown is one this gate approved within `reread_s`, and its passenger may still
    be the one showing it."""
    code = _approved(state, event, now)
    return code is not None and not _gone(code, event)


def ignore(state: LaneState, event: ev.Scanned, now: float) -> Result:
    code = _approved(state, event, now)
    assert code is not None
    return state, [ScanIgnored(code.vehicle_id, READ_AGAIN)]


def copied(state: LaneState, event: ev.Scanned, now: float) -> bool:
    """The code shown is one this gate approved within `reread_s` for a passenger who has
    gone through it since: someone else's copy, to refuse as used (lane.core.paypoint)."""
    code = _approved(state, event, now)
    return code is not None and _gone(code, event)


def _declined(state: LaneState, event: ev.Scanned, now: float) -> DeclinedCode | None:
    if not state.declined_codes or state.vehicle is not None or not state.accepting_payments:
        return None  # someone is being served, or the lane refuses every code as closed
    credential = credential_of(event.text)
    window = state.rules.reread_s
    return next(
        (c for c in state.declined_codes if c.credential == credential and now - c.at < window),
        None,
    )


def declines_again(state: LaneState, event: ev.Scanned, now: float) -> bool:
    """The code shown is one the network declined at this gate within `reread_s`."""
    return _declined(state, event, now) is not None


def decline_again(state: LaneState, event: ev.Scanned, now: float) -> Result:
    code = _declined(state, event, now)
    assert code is not None
    note = ScanIgnored(code.vehicle_id, f"{DECLINED_BEFORE}: {code.reason}")
    return state, [not_accepted(code.reason), note]


def remember(
    before: LaneState, event: ev.Event, after: LaneState, actions: Sequence[Action], now: float
) -> LaneState:
    """After each step at a fare gate: the codes of the payments approved in it (a `Persist`
    that owes a passage) are remembered from now, and whether their passengers went through
    and the gate closed behind them; the code of the record that failed to be written is
    forgotten; the code of a passenger the network declined in it is remembered; codes older
    than `reread_s` drop out."""
    if not after.rules.mode.fare_gate:
        return after
    window = after.rules.reread_s
    handed = _handed_over(before, actions)
    kept = tuple(
        _followed(c, after, handed, now) for c in after.approved_codes if now - c.at < window
    )
    waited = before.vehicle.pending_persist if before.vehicle is not None else None
    if isinstance(event, ev.PersistFailed) and event.persist_id == waited:
        kept = tuple(c for c in kept if c.persist_id != event.persist_id)
    new = tuple(
        ApprovedCode(a.owes, a.draft.vehicle_id, a.persist_id, now)
        for a in actions
        if isinstance(a, Persist) and a.owes is not None
    )
    codes = (*kept, *new)[-COMMITTED_MEMORY:]
    declined = tuple(c for c in after.declined_codes if now - c.at < window)
    declined = (*declined, *_declined_now(before, actions, now))[-COMMITTED_MEMORY:]
    if codes == after.approved_codes and declined == after.declined_codes:
        return after
    return replace(after, approved_codes=codes, declined_codes=declined)


def _handed_over(before: LaneState, actions: Sequence[Action]) -> str | None:
    """The passenger whose open gate this step handed to the next one: handed over only once
    they crossed (lane.core.machine._hand_over), which may be this very step's crossing, so
    that their passage is never seen with it."""
    if before.passage is None:
        return None
    handover = any(isinstance(a, BarrierOpened) and a.handover for a in actions)
    return before.passage.vehicle_id if handover else None


def _followed(code: ApprovedCode, after: LaneState, handed: str | None, now: float) -> ApprovedCode:
    """The code's passenger seen crossing under its passage, then the gate seen closed with
    that passage over (closed behind them, or after the next passenger it was handed to)."""
    passage = after.passage
    theirs = passage is not None and passage.vehicle_id == code.vehicle_id
    crossed = (
        code.crossed
        or handed == code.vehicle_id
        or (theirs and passage is not None and passage.crossings > 0)
    )
    closed = crossed and not theirs and after.barrier == Position.CLOSED
    if code.gone_at is None and closed:
        return replace(code, crossed=True, gone_at=now)
    return code if crossed == code.crossed else replace(code, crossed=crossed)


def _declined_now(before: LaneState, actions: Sequence[Action], now: float) -> list[DeclinedCode]:
    """The code of the fare-gate passenger whose authorisation this step recorded as declined
    for a reason that is the code's (not `PASSING`). A vehicle the lane saw arrive keeps its
    declined codes itself for as long as it is there (`Vehicle.refused_texts`)."""
    vehicle = before.vehicle
    attempt = vehicle.attempt if vehicle is not None else None
    if vehicle is None or attempt is None or not vehicle.implicit:
        return []
    return [
        DeclinedCode(credential_of(attempt.text), vehicle.vehicle_id, a.draft.flags[-1], now)
        for a in actions
        if isinstance(a, Persist)
        and a.persist_id == attempt.auth_id
        and a.draft.auth.result == AuthResult.DECLINED
        # The core appends the decline's reason as the record's last flag (record_draft).
        and a.draft.flags[-1] not in PASSING
    ]
