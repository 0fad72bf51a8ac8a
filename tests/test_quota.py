"""The emulator's quota policies, on a virtual clock (no I/O, no sleeping)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_throttle.testing import (
    FixedWindowQuota,
    SlidingWindowQuota,
    TokenBucketQuota,
    make_quota,
)

#: Sorted arrival times: a few calls spread over a few seconds, with clumps.
arrivals = st.lists(st.floats(min_value=0, max_value=0.7, allow_nan=False), min_size=1, max_size=120).map(
    lambda gaps: [sum(gaps[: i + 1]) for i in range(len(gaps))]
)
rates = st.floats(min_value=1, max_value=40, allow_nan=False)


# -- token bucket -------------------------------------------------------------


def test_token_bucket_admits_burst_then_one_per_interval() -> None:
    quota = TokenBucketQuota(rate=7)
    assert [quota.admit(0.0) for _ in range(8)] == [True] * 7 + [False]
    for k in range(1, 30):
        now = k / 7
        assert quota.admit(now), f"call due at {now} was refused"
        assert not quota.admit(now)
    assert not quota.admit(29 / 7 + 0.1)


def test_token_bucket_burst_defaults_to_rate_and_at_least_one() -> None:
    assert TokenBucketQuota(rate=15).burst == 15
    assert TokenBucketQuota(rate=0.5).burst == 1
    quota = TokenBucketQuota(rate=0.5)
    assert [quota.admit(0), quota.admit(1.9), quota.admit(2.0)] == [True, False, True]


def test_token_bucket_explicit_burst_and_refill_cap() -> None:
    quota = TokenBucketQuota(rate=10, burst=3)
    assert [quota.admit(0) for _ in range(4)] == [True, True, True, False]
    # A long idle spell refills to the burst, not beyond it.
    assert [quota.admit(100) for _ in range(4)] == [True, True, True, False]


def test_token_bucket_ignores_a_clock_going_backwards() -> None:
    quota = TokenBucketQuota(rate=1, burst=1)
    assert quota.admit(10)
    assert not quota.admit(5)
    assert not quota.admit(10.5)
    assert quota.admit(11)


@given(times=arrivals, rate=st.floats(min_value=0.2, max_value=40), burst=st.floats(1, 20))
def test_token_bucket_property(times: list[float], rate: float, burst: float) -> None:
    quota = TokenBucketQuota(rate=rate, burst=burst)
    admitted: list[float] = []
    for t in times:
        ok = quota.admit(t)
        if admitted and t - admitted[-1] >= 1 / rate:
            assert ok, "a call a full interval after the last admission must pass"
        if ok:
            admitted.append(t)
    # No window [a, b] admits more than burst + rate * (b - a).
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - admitted[i]) + 1e-6


# -- fixed window -------------------------------------------------------------


def test_fixed_window_admits_rate_per_calendar_second() -> None:
    quota = FixedWindowQuota(rate=3)
    assert [quota.admit(t) for t in (5.0, 5.1, 5.2, 5.3, 5.999)] == [True] * 3 + [False] * 2
    # The count resets exactly at the boundary: a burst of 2x straddles it.
    assert [quota.admit(t) for t in (6.0, 6.0, 6.0, 6.0)] == [True] * 3 + [False]
    assert quota.admit(7.5)


def test_fixed_window_rounds_a_fractional_rate_down() -> None:
    quota = FixedWindowQuota(rate=7.5)
    assert quota.limit == 7
    assert sum(quota.admit(0.5) for _ in range(10)) == 7


@given(times=arrivals, rate=rates)
def test_fixed_window_property(times: list[float], rate: float) -> None:
    quota = FixedWindowQuota(rate=rate)
    limit = math.floor(rate)
    seen: dict[int, int] = {}
    for t in times:
        window = math.floor(t)
        expected = seen.get(window, 0) < limit
        assert quota.admit(t) == expected
        seen[window] = seen.get(window, 0) + expected


# -- sliding window -----------------------------------------------------------


def test_sliding_window_never_admits_more_than_rate_in_any_second() -> None:
    quota = SlidingWindowQuota(rate=2)
    # Binary fractions, so that t - 1 is exact and the boundaries are sharp.
    assert [quota.admit(t) for t in (0.5, 0.75, 1.25, 1.5, 1.625, 1.75)] == [
        True,
        True,
        False,  # (0.25, 1.25] holds 0.5 and 0.75
        True,  # 0.5 left the window (0.5, 1.5]
        False,  # (0.625, 1.625] holds 0.75 and 1.5
        True,  # 0.75 left the window (0.75, 1.75]
    ]


def test_sliding_window_rounds_a_fractional_rate_down() -> None:
    quota = SlidingWindowQuota(rate=3.9)
    assert quota.limit == 3
    assert sum(quota.admit(0) for _ in range(5)) == 3


@given(times=arrivals, rate=rates)
def test_sliding_window_property(times: list[float], rate: float) -> None:
    quota = SlidingWindowQuota(rate=rate)
    limit = math.floor(rate)
    admitted: list[float] = []
    for t in times:
        in_window = sum(1 for s in admitted if s > t - 1)
        assert quota.admit(t) == (in_window < limit)
        if in_window < limit:
            admitted.append(t)
    for t in admitted:
        assert sum(1 for s in admitted if t - 1 < s <= t) <= limit


# -- factory and validation ---------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "kind"),
    [
        ("token-bucket", TokenBucketQuota),
        ("fixed-window", FixedWindowQuota),
        ("sliding-window", SlidingWindowQuota),
    ],
)
def test_make_quota_builds_each_policy(policy: str, kind: type) -> None:
    quota = make_quota(policy, 15)
    assert isinstance(quota, kind)
    assert quota.rate == 15
    assert "rate=15" in repr(quota)


def test_make_quota_passes_burst_to_the_token_bucket() -> None:
    quota = make_quota("token-bucket", 10, burst=2)
    assert isinstance(quota, TokenBucketQuota)
    assert quota.burst == 2


@pytest.mark.parametrize(
    ("args", "field", "shown"),
    [
        (("leaky-bucket", 15), "policy", "'leaky-bucket'"),
        (("token-bucket", 0), "rate", "0"),
        (("token-bucket", -3), "rate", "-3"),
        (("token-bucket", math.nan), "rate", "nan"),
        (("token-bucket", math.inf), "rate", "inf"),
        (("token-bucket", "15"), "rate", "'15'"),
        (("fixed-window", math.nan), "rate", "nan"),
        (("sliding-window", 0.5), "rate", "0.5"),
        (("token-bucket", 10, 0.5), "burst", "0.5"),
        (("fixed-window", 10, 5), "burst", "5"),
    ],
)
def test_make_quota_rejects_bad_values_naming_them(args: tuple[object, ...], field: str, shown: str) -> None:
    with pytest.raises(ValueError, match=field) as info:
        make_quota(*args)  # type: ignore[arg-type]
    assert shown in str(info.value)


def test_repr_shows_live_state() -> None:
    bucket = TokenBucketQuota(rate=4)
    bucket.admit(0)
    assert repr(bucket) == "TokenBucketQuota(rate=4, burst=4, tokens=3.000)"
    window = FixedWindowQuota(rate=4)
    window.admit(2.5)
    assert repr(window) == "FixedWindowQuota(rate=4, window=2, count=1)"
    sliding = SlidingWindowQuota(rate=4)
    sliding.admit(2.5)
    assert repr(sliding) == "SlidingWindowQuota(rate=4, in_window=1)"
