"""The rules a barrier device follows, as pure code: admission, at-most-once, mechanics.

`admit` decides whether a command may be acted on at all (right lane, carries an expiry, not
late, deadline not absurdly far). `ExecutedCommands` remembers the cmd_ids a device executed
so a redelivered or resent command is answered but never executed twice. `Gate` is the
mechanism: a command or a sensor change gives a new Gate and possibly a `Move` for the shell to
time; the shell reports the end of a move with `arrived`. The safety loop rule lives here: a
close is refused while the loop is occupied, and a closing barrier reverses when it becomes
occupied, finishing the close once the loop is clear again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from barrier.messages import BarrierCommand

# A deadline further ahead than this means the controller's clock or code is wrong.
MAX_HORIZON_US = 60_000_000

# Refusals (answered with ok=false) and drops (not answered).
WRONG_LANE = "wrong_lane"
NO_EXPIRY = "no_expiry"
DEADLINE_TOO_FAR = "deadline_too_far"
SAFETY_LOOP_OCCUPIED = "safety_loop_occupied"
FAULT = "fault"
LATE = "late"
SAFETY_REVERSAL = "safety_reversal"
RETAINED = "retained"


@dataclass(frozen=True)
class Verdict:
    """`drop`: say nothing (a late command); otherwise `error` is the refusal to ack with."""

    error: str
    drop: bool = False


def admit(
    cmd: BarrierCommand,
    lane: str,
    now_us: int,
    expires_at_us: int | None,
    *,
    retained: bool = False,
) -> Verdict | None:
    """None when the command may be executed; else why not.

    `expires_at_us` is when the MQTT message expiry runs out, computed by the device from the
    time it received the message and the remaining expiry the broker forwarded. `retained`:
    the broker delivered a stored copy (the MQTT retain flag on delivery). Commands are never
    retained (rule 2), so such a copy is something left on the broker by a tool or an attacker,
    replayed to every device that subscribes: it is dropped unanswered, like a late command.
    """
    if retained:
        return Verdict(RETAINED, drop=True)
    if cmd.lane != lane:
        return Verdict(WRONG_LANE)
    if expires_at_us is None:
        return Verdict(NO_EXPIRY)
    if now_us > cmd.deadline_us or now_us > expires_at_us:
        return Verdict(LATE, drop=True)
    if cmd.deadline_us - now_us > MAX_HORIZON_US:
        return Verdict(DEADLINE_TOO_FAR)
    return None


class ExecutedCommands:
    """The most recent executed cmd_ids and their outcome (ok, error), bounded in number.

    Only executed commands are remembered: a command that was refused or dropped was not acted
    on, so the controller may send the same cmd_id again (with a fresh deadline) and have it
    executed once.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[bool, str | None]] = OrderedDict()

    def outcome(self, cmd_id: str) -> tuple[bool, str | None] | None:
        return self._ids.get(cmd_id)

    def remember(self, cmd_id: str, ok: bool, error: str | None) -> None:
        self._ids[cmd_id] = (ok, error)
        self._ids.move_to_end(cmd_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __contains__(self, cmd_id: object) -> bool:
        return cmd_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True)
class Move:
    """Start moving towards `target` ("open" or "closed"); `generation` identifies the move."""

    target: str
    generation: int


@dataclass(frozen=True)
class Gate:
    state: str = "closed"  # closed | opening | open | closing | fault
    safety_occupied: bool = False
    # A close that was accepted, reversed for safety, and completes once the loop is clear.
    pending_close: bool = False
    generation: int = 0
    # Why the gate is in a state nobody commanded: a fault reason or SAFETY_REVERSAL.
    note: str | None = None


Step = tuple[Gate, Move | None]


def command(gate: Gate, op: str) -> tuple[Gate, bool, str | None, Move | None]:
    """Apply an admitted command: (gate, ok, error, move)."""
    if gate.state == "fault":
        return gate, False, FAULT, None
    if op == "open":
        gate = replace(gate, pending_close=False, note=None)
        if gate.state in ("open", "opening"):
            return gate, True, None, None
        new, move = _start(gate, "opening", "open")
        return new, True, None, move
    if gate.safety_occupied:
        return gate, False, SAFETY_LOOP_OCCUPIED, None
    if gate.state in ("closed", "closing"):
        return replace(gate, note=None), True, None, None
    new, move = _start(replace(gate, note=None), "closing", "closed")
    return new, True, None, move


def arrived(gate: Gate, move: Move) -> Step:
    """A move's time is up; a move superseded by a later one changes nothing."""
    if move.generation != gate.generation or gate.state not in ("opening", "closing"):
        return gate, None
    if gate.state == "closing":
        return replace(gate, state="closed", note=None), None
    gate = replace(gate, state="open")
    if gate.pending_close and not gate.safety_occupied:
        return _start(replace(gate, pending_close=False, note=None), "closing", "closed")
    return gate, None


def safety(gate: Gate, occupied: bool) -> Step:
    """The safety loop (or light curtain) under the barrier changed."""
    gate = replace(gate, safety_occupied=occupied)
    if occupied and gate.state == "closing":
        reversed_ = replace(gate, pending_close=True, note=SAFETY_REVERSAL)
        return _start(reversed_, "opening", "open")
    if not occupied and gate.state == "open" and gate.pending_close:
        return _start(replace(gate, pending_close=False, note=None), "closing", "closed")
    return gate, None


def fail(gate: Gate, reason: str) -> Gate:
    """The mechanism faulted: any move in progress is abandoned."""
    return replace(
        gate, state="fault", note=reason, pending_close=False, generation=gate.generation + 1
    )


def recover(gate: Gate) -> Gate:
    """The fault was cleared: the barrier homes to closed, or stays open over a vehicle."""
    if gate.state != "fault":
        return gate
    state = "open" if gate.safety_occupied else "closed"
    return replace(gate, state=state, note=None, generation=gate.generation + 1)


def _start(gate: Gate, moving: str, target: str) -> Step:
    generation = gate.generation + 1
    return replace(gate, state=moving, generation=generation), Move(target, generation)
