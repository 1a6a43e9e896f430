"""The core's types at its edges: an unknown event is refused, a record draft holds only known
names (kinds, methods, results) and integer money."""

from __future__ import annotations

from typing import Any

import pytest
from core_kit import rules

from lane.core import diagram
from lane.core.machine import initial_state, step
from lane.core.names import AuthResult, Method, RecordKind
from lane.core.records import AuthInfo, RecordDraft


def test_an_unknown_event_is_refused_not_dispatched() -> None:
    unknown: Any = object()
    with pytest.raises(AssertionError):
        step(initial_state(rules()), unknown, 1000.0)
    with pytest.raises(AssertionError):
        diagram.event_label(unknown)


def draft(**changes: Any) -> RecordDraft:
    fields: dict[str, Any] = {
        "kind": "toll",
        "vehicle_id": "v1",
        "vehicle_class": 1,
        "amount_minor": 250,
        "currency": "EUR",
        "method": "token",
        "account_ref": None,
        "auth": AuthInfo(AuthResult.APPROVED),
    }
    return RecordDraft(**(fields | changes))


def test_a_draft_holds_the_names_as_enums() -> None:
    d = draft()
    assert d.kind is RecordKind.TOLL and d.method is Method.TOKEN
    assert AuthInfo("declined").result is AuthResult.DECLINED  # type: ignore[arg-type]
    assert d.auth.to_map() == {
        "result": "approved",
        "acquirer_ref": None,
        "latency_ms": 0,
        "offline": False,
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "parking"}, "unknown record kind 'parking'"),
        ({"method": "cash"}, "unknown payment method 'cash'"),
        ({"amount_minor": 2.5}, "amount_minor must be an integer of minor units"),
        ({"amount_minor": True}, "amount_minor must be an integer of minor units"),
    ],
)
def test_a_draft_with_an_unknown_name_or_fractional_money_is_refused(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        draft(**changes)


def test_an_unknown_auth_result_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown auth result 'maybe'"):
        AuthInfo("maybe")  # type: ignore[arg-type]
