"""The [barrier] keys of a stuck boom's self-test reach the lane core's rules, and a backoff
that would shrink is refused with the key."""

from __future__ import annotations

import pytest

from lane.config import ConfigError, parse_config
from lane.daemon import rules_from


def test_the_self_test_backoff_defaults_and_is_configured_under_barrier() -> None:
    rules = rules_from(parse_config({}))
    assert (rules.selftest_s, rules.selftest_max_s) == (5.0, 60.0)
    config = parse_config({"barrier": {"selftest_s": 2, "selftest_max_s": 30}})
    rules = rules_from(config)
    assert (rules.selftest_s, rules.selftest_max_s) == (2.0, 30.0)


@pytest.mark.parametrize(
    ("barrier", "expected"),
    [
        ({"selftest_s": 10, "selftest_max_s": 5}, "selftest_max_s must not be less than"),
        ({"selftest_s": 0}, "barrier.selftest_s"),
        ({"selftest_max_s": 7200}, "barrier.selftest_max_s"),
    ],
)
def test_a_bad_self_test_backoff_is_refused(barrier: dict[str, float], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        parse_config({"barrier": barrier})
