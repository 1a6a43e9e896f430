"""Every lane id `[lane] id` took before the one check (`lane.wire.topics.check_lane_id`)
still starts a lane and is a lane id to the ingest and the tools' `--lane`: the config's
pattern ran in pydantic's Rust regex, whose `\\w` holds the combining marks of Thai, Devanagari
and a decomposed accent (Python's `re` does not), and lanes are deployed under it."""

from __future__ import annotations

import sys
import unicodedata
from typing import Annotated

import pytest
from pydantic import ConfigDict, StringConstraints, TypeAdapter, ValidationError

from lane.config import parse_config
from lane.wire.topics import check_lane_id, is_lane_id

# `[lane] id`'s check up to 340a528: `Field(pattern=...)`, which pydantic runs in Rust's regex.
BEFORE = TypeAdapter(
    Annotated[str, StringConstraints(pattern=r"^[\w-]+/[\w-]+$")],
    config=ConfigDict(regex_engine="rust-regex"),
)

ACCEPTED_BEFORE = [
    "p07/l03",
    "P01/e1",
    "p-7/l_3",
    "收费站/一号",
    "ด่าน/l01",  # Thai: its tone mark is a combining mark
    "स्टेशन/l1",  # Devanagari: the virama and vowel signs are marks
    "cafe\u0301/l01",  # an accent as a combining mark (NFD), as a keyboard may type it
]


def accepted_before(text: str) -> bool:
    try:
        BEFORE.validate_python(text)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("lane", ACCEPTED_BEFORE)
def test_a_lane_id_the_config_always_took_still_starts_a_lane(lane: str) -> None:
    assert parse_config({"lane": {"id": lane}}).lane.id == lane
    assert check_lane_id(lane) == lane


def test_each_character_is_a_lane_id_s_exactly_when_the_config_took_it_before() -> None:
    """Over every character this Python's Unicode database knows (newer ones it cannot
    classify), and the shapes around them: two levels, none empty, no trailing newline."""
    differ = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) not in ("Cn", "Cs")
        and is_lane_id(f"p{chr(cp)}/l") != accepted_before(f"p{chr(cp)}/l")
    ]
    assert differ == []
    for text in ("p07", "p07/", "/l03", "p07/l03/x", "p07/l03\n", "p07/#", "p07/+", ""):
        assert not is_lane_id(text) and not accepted_before(text), text
