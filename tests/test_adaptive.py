"""Rate adaptation (CUBIC) and the retry budget, on a virtual clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_throttle import AdaptiveRate, RateChanged, RetryBudget, TokenBucket
from grpc_throttle.buckets import _cubic
from tests.clock import VirtualClock


def make(rate: float = 10.0, **kwargs: object) -> tuple[TokenBucket, VirtualClock]:
    clock = VirtualClock()
    return TokenBucket(rate=rate, clock=clock, **kwargs), clock  # type: ignore[arg-type]


def test_a_throttle_signal_cuts_the_rate_by_beta() -> None:
    bucket, _ = make(rate=10)
    bucket.record_throttle(bucket.round)
    assert bucket.effective_rate == pytest.approx(7.0)
    assert bucket.rate == 10  # the configured rate is kept


def test_signals_from_one_round_count_once() -> None:
    bucket, _ = make(rate=10)
    round_before = bucket.round
    for _ in range(16):  # sixteen calls sent together, throttled together
        bucket.record_throttle(round_before)
    assert bucket.effective_rate == pytest.approx(7.0)
    bucket.record_throttle(bucket.round)  # a call sent after the cut: a new signal
    assert bucket.effective_rate == pytest.approx(4.9)


def test_recovery_follows_the_cubic_to_just_below_the_throttled_rate_then_probes_convexly() -> None:
    bucket, clock = make(rate=10)
    bucket.record_throttle(bucket.round)
    w_max = 10 * (1 - 0.02)  # the headroom: just below where it was throttled
    k = ((w_max - 7.0) / 0.4) ** (1 / 3)  # 1.89 s for these constants
    seen = []
    for _ in range(20):
        clock.advance(k / 20)
        bucket.record_success()
        seen.append(bucket.effective_rate)
    assert seen == sorted(seen)  # never falls while answers succeed
    assert seen[-1] == pytest.approx(w_max, rel=0.011)  # at t = k, within the 1% step
    mid = _cubic.on_success(AdaptiveRate(), _cubic.CubicState(7.0, w_max, 0.0, k), 10.0, k / 2)
    assert mid.rate == pytest.approx(0.4 * (k / 2 - k) ** 3 + w_max)  # the concave part
    clock.advance(5)  # past k: the convex branch, (5/10)**3 of the gap left
    bucket.record_success()
    assert bucket.effective_rate == pytest.approx(w_max + (10 - w_max) * 0.5**3, rel=0.011)
    clock.advance(5.001)  # probe_time (10 s) past k: back at the configured rate
    bucket.record_success()
    assert bucket.effective_rate == 10.0


def test_a_client_cut_far_below_its_rate_is_back_within_probe_time() -> None:
    # Another client shared the quota and left: minutes of linear probing
    # would waste it, the convex branch takes probe_time past k.
    state = _cubic.CubicState(rate=2.0, w_max=2.0, last_decrease=0.0, k=0.0)
    config = AdaptiveRate(probe_time=8.0)
    assert _cubic.on_success(config, state, 10.0, 4.0).rate == pytest.approx(2.0 + 8.0 / 8)
    assert _cubic.on_success(config, state, 10.0, 8.0).rate == 10.0


def test_a_throttle_below_the_last_throttled_rate_aims_lower_fast_convergence() -> None:
    bucket, clock = make(rate=10)
    bucket.record_throttle(bucket.round)  # at 10: down to 7, aiming back at 9.8
    assert bucket._cubic.w_max == pytest.approx(9.8)
    clock.advance(0.5)
    bucket.record_success()
    at = bucket.effective_rate
    assert 7 < at < 9.8
    bucket.record_throttle(bucket.round)  # throttled again below 10: the limit is lower
    assert bucket.effective_rate == pytest.approx(at * 0.7)
    assert bucket._cubic.w_max == pytest.approx(at * (1 + 0.7) / 2 * 0.98)  # not at * 0.98
    # A throttle at a higher rate than the last one aims back at that rate.
    state = _cubic.on_throttle(AdaptiveRate(), _cubic.CubicState(9.0, 9.0, last_max=8.0), 10.0, 0.0)
    assert state.w_max == pytest.approx(9.0 * 0.98) and state.last_max == 9.0


def test_fast_convergence_can_be_turned_off() -> None:
    config = AdaptiveRate(fast_convergence=False)
    state = _cubic.on_throttle(config, _cubic.CubicState(6.0, 6.0, last_max=8.0), 10.0, 0.0)
    assert state.w_max == pytest.approx(6.0 * 0.98)
    with pytest.raises(ValueError, match="fast_convergence"):
        AdaptiveRate(fast_convergence="yes")  # type: ignore[arg-type]


def test_the_rate_never_goes_below_the_floor() -> None:
    bucket, _ = make(rate=10, adaptive=AdaptiveRate(min_fraction=0.2))
    for _ in range(50):
        bucket.record_throttle(bucket.round)
    assert bucket.effective_rate == pytest.approx(2.0)


@given(
    events=st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=3)), min_size=1, max_size=60),
    rate=st.floats(min_value=0.5, max_value=500),
)
def test_effective_rate_stays_between_floor_and_configured(events: list[tuple[bool, float]], rate: float) -> None:
    bucket, clock = make(rate=rate)
    floor = AdaptiveRate().floor(rate)
    for throttled, advance in events:
        clock.advance(advance)
        if throttled:
            bucket.record_throttle(bucket.round)
        else:
            bucket.record_success()
        assert floor - 1e-9 <= bucket.effective_rate <= rate + 1e-9


def test_the_effective_rate_paces_reservations() -> None:
    bucket, _ = make(rate=10, burst=1)
    bucket.reserve()
    bucket.record_throttle(bucket.round)  # 7 tokens/s now
    nxt = bucket.reserve()
    assert nxt is not None and nxt.delay == pytest.approx(1 / 7, rel=0.01)


def test_adaptation_can_be_turned_off() -> None:
    bucket, _ = make(rate=10, adaptive=None)
    bucket.record_throttle(bucket.round)
    assert bucket.effective_rate == 10


def test_listeners_hear_every_rate_change() -> None:
    bucket, clock = make(rate=10)
    events: list[RateChanged] = []
    bucket.add_listener(events.append)
    bucket.record_throttle(bucket.round)
    clock.advance(30)
    bucket.record_success()
    bucket.rate = 20
    assert [(e.reason, round(e.new_rate, 3)) for e in events] == [
        ("throttle", 7.0),
        ("recovery", 10.0),
        ("configured", 20.0),
    ]
    bucket.remove_listener(events.append)
    bucket.record_throttle(bucket.round)
    assert len(events) == 3


def test_a_listener_that_raises_is_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    bucket, _ = make(rate=10)

    def broken(event: object) -> None:
        raise RuntimeError("hook bug")

    bucket.add_listener(broken)
    bucket.record_throttle(bucket.round)
    assert bucket.effective_rate == pytest.approx(7.0)
    assert "event hook raised" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"beta": 1.0}, "beta"),
        ({"beta": 0}, "beta"),
        ({"scale": -1}, "scale"),
        ({"min_fraction": 2}, "min_fraction"),
        ({"min_rate": 0}, "min_rate"),
        ({"headroom": 0.5}, "headroom"),
        ({"probe_time": 0}, "probe_time"),
    ],
)
def test_bad_adaptive_values_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AdaptiveRate(**kwargs)


def test_bucket_rejects_a_bad_adaptive_argument() -> None:
    with pytest.raises(ValueError, match="adaptive"):
        TokenBucket(rate=1, adaptive=0.7)  # type: ignore[arg-type]


# -- the retry budget ----------------------------------------------------------


def test_budget_stops_retries_below_half_and_refills_with_successes() -> None:
    budget = RetryBudget(max_tokens=10, token_ratio=0.5)
    for _ in range(4):
        budget.on_throttled()
    assert budget.allows_retry()  # 6 left, > 5
    budget.on_throttled()
    assert not budget.allows_retry()  # 5 left: retries stop
    budget.on_success()
    assert budget.allows_retry()  # 5.5
    for _ in range(100):
        budget.on_success()
    assert budget.tokens == 10  # never above max


def test_budget_never_goes_negative() -> None:
    budget = RetryBudget(max_tokens=2)
    for _ in range(10):
        budget.on_throttled()
    assert budget.tokens == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_tokens": 0}, "max_tokens"), ({"token_ratio": 0}, "token_ratio"), ({"token_ratio": 2}, "token_ratio")],
)
def test_bad_budget_values_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryBudget(**kwargs)
