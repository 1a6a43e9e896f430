"""Hunting with the core's random walks: `LANE_EXAMPLES_SCALE=N` multiplies every hypothesis
test's `max_examples` in tests/core (their own @settings hold the everyday counts, which a
profile cannot raise); with `--hypothesis-seed=S` a hunt is reproducible."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scale = int(os.environ.get("LANE_EXAMPLES_SCALE", "1"))
    if scale == 1:
        return
    for item in items:
        test = getattr(item, "obj", None)
        current = getattr(test, "_hypothesis_internal_use_settings", None)
        if isinstance(current, settings):
            raised = settings(current, max_examples=current.max_examples * scale)
            test._hypothesis_internal_use_settings = raised
