"""Record decoding: the one-pass path for well-typed maps gives exactly what the field-by-field
path gives, and anything else is refused naming the field (table plus hypothesis properties)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lane.core.names import AuthResult
from lane.wire.codec import PayloadError, unpack
from uplink.records import KINDS, METHODS, AuthInfo, Record, RecordDraft

text = st.text(max_size=12)
maybe = st.none() | text
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)

records = st.builds(
    Record,
    record_id=text,
    lane=text,
    seq=ints,
    ts_us=ints,
    draft=st.builds(
        RecordDraft,
        kind=st.sampled_from(sorted(KINDS)),
        vehicle_id=text,
        vehicle_class=ints,
        amount_minor=ints,
        currency=text,
        method=st.sampled_from(sorted(METHODS)),
        account_ref=maybe,
        auth=st.builds(
            AuthInfo,
            result=st.sampled_from(sorted(AuthResult)),
            acquirer_ref=maybe,
            latency_ms=ints,
            offline=st.booleans(),
        ),
        payment_id=maybe,
        entry_plaza=maybe,
        flags=st.lists(text, max_size=3).map(tuple),
        pass_id=maybe,
        plate=maybe,
    ),
)


@given(records)
def test_decode_returns_the_record_encoded(rec: Record) -> None:
    assert Record.decode(rec.encode()) == rec


@given(records)
def test_both_paths_agree_on_well_typed_maps(rec: Record) -> None:
    body = unpack(rec.encode())
    assert Record.from_map(body) == Record._checked(body) == rec


def body_with(**changes: Any) -> dict[str, Any]:
    draft = RecordDraft("toll", "veh-1", 1, 700, "CNY", "token", "acct", AuthInfo("approved"))
    good = Record("r1", "p07/l03", 5, 1_700_000_000, draft)
    body = unpack(good.encode())
    for key, value in changes.items():
        if key.startswith("auth_"):
            body["auth"] = {**body["auth"], key[5:]: value}
        elif value is KeyError:
            del body[key]
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"seq": True}, "'seq'"),  # a bool is not an int
        ({"seq": "5"}, "'seq'"),
        ({"ts": KeyError}, "'ts'"),
        ({"amount_minor": 7.5}, "'amount_minor'"),
        ({"currency": None}, "'currency'"),
        ({"account_ref": 3}, "'account_ref'"),
        ({"auth": "approved"}, "'auth'"),
        ({"auth_offline": 1}, "'offline'"),
        ({"auth_latency_ms": None}, "'latency_ms'"),
        ({"flags": "x"}, "'flags'"),
        ({"kind": "parking"}, "unknown record kind"),
        ({"method": "cash"}, "unknown payment method"),
    ],
)
def test_a_malformed_record_is_refused_naming_what_is_wrong(
    changes: dict[str, Any], named: str
) -> None:
    data = msgpack.packb(body_with(**changes), use_bin_type=True)
    with pytest.raises(PayloadError, match=named):
        Record.decode(data)


def test_flags_that_are_not_text_are_read_as_text_as_before() -> None:
    assert Record.from_map(body_with(flags=[1, "late"])).draft.flags == ("1", "late")
