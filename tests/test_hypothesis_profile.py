"""Hypothesis as the tests run it (tests/conftest.py): no wall-clock deadline per example."""

from __future__ import annotations

from hypothesis import settings


def test_hypothesis_examples_have_no_wall_clock_deadline() -> None:
    # Performance is bench/'s; a deadline fails a correct test on a loaded machine.
    assert settings.default.deadline is None
