"""The one doubling wait every retry loop uses (lane/core/backoff.py)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from lane.core.backoff import Backoff

seconds = st.floats(min_value=1e-6, max_value=1e6)
failures = st.integers(min_value=0, max_value=10**9)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def test_a_camera_reopens_after_half_a_second_doubling_to_ten() -> None:
    camera = Backoff(0.5, 10.0)
    assert [camera.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_no_failure_yet_waits_the_first_wait() -> None:
    assert Backoff(0.25, 1.0).delay(0) == 0.25


def test_the_cap_holds_however_many_failures() -> None:
    """2.0 ** n is no float past a thousand and some: an acquirer down for some nine hours
    (30 s apart), an unpaid refund asked about for three weeks (30 min apart)."""
    assert Backoff(0.25, 30.0).delay(1100) == 30.0
    assert Backoff(60.0, 1800.0).delay(10**9) == 1800.0
    assert Backoff(1e-6, 1e-4).delay(10_000) == 1e-4


def test_jitter_spreads_a_wait_from_half_to_one_and_a_half_times() -> None:
    link = Backoff(0.05, 5.0)
    assert [link.jittered(3, d) for d in (0.0, 0.5)] == [0.1, 0.2]
    assert link.jittered(30, 0.999) < 7.5


@given(seconds, seconds, failures)
def test_never_above_the_cap_nor_below_the_floor(first: float, cap: float, n: int) -> None:
    assert min(first, cap) <= Backoff(first, cap).delay(n) <= cap


@given(seconds, seconds, failures)
def test_one_more_failure_never_waits_less(first: float, cap: float, n: int) -> None:
    backoff = Backoff(first, cap)
    assert backoff.delay(n) <= backoff.delay(n + 1)


@given(seconds, seconds, failures, draws)
def test_jitter_stays_within_half_and_one_and_a_half_of_the_wait(
    first: float, cap: float, n: int, draw: float
) -> None:
    backoff = Backoff(first, cap)
    wait = backoff.delay(n)
    assert wait / 2 <= backoff.jittered(n, draw) <= wait * 1.5


def test_a_batch_is_resent_after_its_ack_timeout_doubling_to_the_cap_jitter_and_all() -> None:
    """The forwarder's resend: spread before the cap, so it never passes it, and never
    before the ack could have come (the first wait is a floor)."""
    resend = Backoff(5.0, 30.0)
    assert [resend.jittered_within(n, 0.5) for n in range(1, 7)] == [5, 10, 20, 30, 30, 30]
    assert [resend.jittered_within(n, 0.0) for n in range(1, 7)] == [5, 5, 10, 20, 30, 30]
    assert resend.jittered_within(3, 0.9) == 28.0 and resend.jittered_within(4, 0.9) == 30.0


def test_a_short_first_wait_still_reaches_a_far_cap() -> None:
    """The forwarder's own doubling stopped at 2 ** 16: a 1 ms ack timeout never passed some
    98 s, whatever its cap."""
    assert Backoff(0.001, 300.0).jittered_within(30, 0.0) == 300.0


def test_a_first_wait_above_the_cap_wins() -> None:
    """An ack timeout longer than the cap: no batch is resent before its ack could come."""
    assert Backoff(60.0, 30.0).jittered_within(5, 0.0) == 60.0


def test_no_cap_when_a_count_bounds_the_retries() -> None:
    assert [Backoff(0.5, math.inf).delay(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 4.0]


@given(seconds, seconds, failures, draws)
def test_held_jitter_stays_from_the_first_wait_to_the_cap(
    first: float, cap: float, n: int, draw: float
) -> None:
    assert first <= Backoff(first, cap).jittered_within(n, draw) <= max(first, cap)
