"""A fare gate's code read again: the same passenger's phone, not a new passenger.

At a fare gate a passenger is known only from the code they show, and the camera keeps
reading a phone still held up as its passenger walks through the gate the code opened. Taken
as a new passenger, that code went to the network again, which refused it as used: a declined
record, "Not accepted" shown to a passenger already let through, a network call wasted, and
`acquirer_declines` raised at a gate that declined nobody. So a gate remembers each code it
approved (its digest, `records.credential_of`) for `reread_s` from the approval, and that code
read again within it is ignored: no passenger, no authorisation, no record, no display (it
keeps what it said for the passenger the code was approved for). It opens nothing either: a
second person showing a copy of the screen is not let through, and after the window the
network's single-use rule (and anti-passback at an entry gate) refuses it as before. A record
that failed to be written takes its code out again: that payment was given up, and the
passenger, told so, may show the code again.

Toll lanes keep no such memory: a code read while the paid vehicle is at the pay point is
ignored there (one payment at a time), and one read with nobody at the pay point makes no
vehicle. Pure like the rest of the core: time is `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from lane.core import events as ev
from lane.core.actions import Action, Persist
from lane.core.notes import ScanIgnored
from lane.core.records import credential_of
from lane.core.state import COMMITTED_MEMORY, ApprovedCode, LaneState

Result = tuple[LaneState, list[Action]]

READ_AGAIN = "read again"


def _approved(state: LaneState, event: ev.Scanned, now: float) -> ApprovedCode | None:
    if not state.approved_codes:
        return None
    credential = credential_of(event.text)
    window = state.rules.reread_s
    return next(
        (c for c in state.approved_codes if c.credential == credential and now - c.at < window),
        None,
    )


def ignores(state: LaneState, event: ev.Scanned, now: float) -> bool:
    """The code shown is one this gate approved within `reread_s`."""
    return _approved(state, event, now) is not None


def ignore(state: LaneState, event: ev.Scanned, now: float) -> Result:
    code = _approved(state, event, now)
    assert code is not None
    return state, [ScanIgnored(code.vehicle_id, READ_AGAIN)]


def remember(
    before: LaneState, event: ev.Event, after: LaneState, actions: Sequence[Action], now: float
) -> LaneState:
    """After each step at a fare gate: the codes of the payments approved in it (a `Persist`
    that owes a passage) are remembered from now, the code of the record that failed to be
    written is forgotten, and codes older than `reread_s` drop out."""
    if not after.rules.mode.fare_gate:
        return after
    window = after.rules.reread_s
    kept = tuple(c for c in after.approved_codes if now - c.at < window)
    waited = before.vehicle.pending_persist if before.vehicle is not None else None
    if isinstance(event, ev.PersistFailed) and event.persist_id == waited:
        kept = tuple(c for c in kept if c.persist_id != event.persist_id)
    new = tuple(
        ApprovedCode(a.owes, a.draft.vehicle_id, a.persist_id, now)
        for a in actions
        if isinstance(a, Persist) and a.owes is not None
    )
    codes = (*kept, *new)[-COMMITTED_MEMORY:]
    if codes == after.approved_codes:
        return after
    return replace(after, approved_codes=codes)
