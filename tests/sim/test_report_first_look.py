"""The first-look figures of the headless report, from the drivers' looks (pure)."""

from __future__ import annotations

import pytest

from sim.lane import Look
from sim.report import first_look_rate


@pytest.mark.parametrize(
    ("looks", "rate"),
    [
        ([], None),
        ([Look("token", 1, read=True)], 1.0),
        ([Look("token", 2, read=True)], 0.0),  # read, but only after a re-aim
        ([Look("token", 4, read=False)], 0.0),  # never read: the driver tried the next code
        (
            [Look("token", 1, read=True), Look("emv", 1, read=True), Look("token", 3, read=True)],
            0.6667,
        ),
        ([Look("garbage", 1, read=True)] * 199 + [Look("token", 2, read=True)], 0.995),
    ],
)
def test_first_look_rate_counts_codes_answered_before_the_first_reaim(
    looks: list[Look], rate: float | None
) -> None:
    assert first_look_rate(looks) == rate
