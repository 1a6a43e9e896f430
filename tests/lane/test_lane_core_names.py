"""The shell hands the core what validated wire messages carry, converted to the core's names
(`Position(...)`, `PayloadKind(...)` in lane/daemon.py): every value the edges accept must be
a name the core knows, or a valid message would raise in the daemon."""

from __future__ import annotations

import dataclasses
import typing

from barrier.messages import ACK_STATES, BARRIER_STATES
from lane.core.names import PayloadKind, Position
from scanner.payload import Payload


def test_every_barrier_state_the_messages_accept_is_a_core_position() -> None:
    assert set(Position) >= BARRIER_STATES | ACK_STATES
    assert {Position(s) for s in BARRIER_STATES} == set(Position) - {Position.UNKNOWN}


def test_every_payload_kind_the_scanner_makes_is_a_core_payload_kind() -> None:
    kinds = {
        f.default
        for cls in typing.get_args(Payload)
        for f in dataclasses.fields(cls)
        if f.name == "kind"
    }
    assert kinds == set(PayloadKind)
