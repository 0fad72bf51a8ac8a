"""The Redis bucket's burst (``_redis_burst``): what this process asks for and how it learns, without a server.

The arithmetic is ``_burst``'s, shared with TokenBucket (test_token_bucket.py
pins it); these tests pin how the Redis bucket feeds it: which rounds teach
what, once per burst, and the rate's window the scripts are sent. The learned
burst against real servers is in test_bucket_backends.py.
"""

from __future__ import annotations

import math

import pytest
import redis

from grpc_throttle.buckets import _burst
from grpc_throttle.buckets._redis_burst import BurstRound, LearnedBurst
from grpc_throttle.buckets._redis_steps import Eval, drive
from grpc_throttle.buckets.redis import RedisTokenBucket
from tests.clock import VirtualClock


def settled(rate: float) -> LearnedBurst:
    """A learned burst past slow start, at the rate's window."""
    burst = LearnedBurst(None, rate, learn=True)
    while burst.on_success(True, 0.0):
        pass
    return burst


def test_a_learned_burst_starts_at_two_and_grows_to_the_rates_window() -> None:
    burst = LearnedBurst(None, 15.0, learn=True)
    assert (burst.size, burst.most) == (_burst.INITIAL, 15.0)
    assert burst.window_spec(15.0) == "15:1000000.0"
    assert settled(15.0).size == 15.0


@pytest.mark.parametrize(
    ("declared", "rate", "learn", "size", "window"),
    [
        (4.0, 15.0, True, 4.0, ""),  # declared: the GCRA as declared, no window of its own
        (1.0, 15.0, True, 1.0, ""),
        (None, 15.0, False, 15.0, "15:1000000.0"),  # no adaptation: the whole window at once
        (None, 2.5, True, 2.0, "3:1200000.0"),  # 2.5/s: 3 in any 1.2 s
        (None, 0.5, True, 1.0, ""),  # below 2/s no burst is possible: evenly spaced
    ],
)
def test_what_the_scripts_are_sent(declared: float | None, rate: float, learn: bool, size: float, window: str) -> None:
    burst = LearnedBurst(declared, rate, learn=learn)
    assert burst.size == size and burst.window_spec(rate) == window


def test_a_throttle_in_the_learned_burst_halves_it_and_cuts_the_rate_once_per_burst() -> None:
    burst = settled(16.0)
    round = burst.round_of(7, True)
    assert round == BurstRound(7, 0, False)
    assert burst.on_throttle(round) == 7  # the key's round 7: cut the shared rate
    assert burst.size == 8
    assert burst.on_throttle(round) is None  # another call of the same burst: learned already
    assert burst.on_throttle(burst.round_of(7, True)) == 7  # a later burst teaches again
    assert burst.size == 4


def test_a_throttle_of_an_exploring_burst_shrinks_it_alone() -> None:
    burst = LearnedBurst(None, 16.0, learn=True)
    for _ in range(3):
        burst.on_success(True, 0.0)
    assert burst.size == 5 and burst.state.slow_start
    round = burst.round_of(0, True)
    assert isinstance(round, BurstRound) and round.probe
    assert burst.on_throttle(round) is None  # no rate cut: the burst was too large
    assert burst.size == 2 and not burst.state.slow_start


def test_an_evenly_spaced_throttle_cuts_the_rate_and_ends_slow_start_once_per_round() -> None:
    burst = LearnedBurst(None, 16.0, learn=True)
    burst.on_success(True, 0.0)
    assert burst.round_of(3, False) == 3
    assert burst.on_throttle(3) == 3 and burst.size == 1  # 3 halved; slow start over
    burst2 = settled(16.0)
    assert burst2.on_throttle(3) == 3 and burst2.size == 16  # past slow start an even send leaves the burst


def test_past_slow_start_the_burst_widens_only_at_the_configured_rate() -> None:
    burst = settled(16.0)
    burst.on_throttle(burst.round_of(0, True))
    assert burst.size == 8
    assert not any(burst.on_success(False, 0.0) for _ in range(200))  # the rate is cut: no widening
    assert any(burst.on_success(True, 0.0) for _ in range(200))
    assert burst.size > 8


def test_a_rate_change_moves_the_largest_burst_and_the_window() -> None:
    bucket = RedisTokenBucket(redis.Redis(port=1), key="burst", rate=10, capacity=None, clock=VirtualClock())
    assert bucket.capacity == 10 and bucket.burst == 2 and bucket._limits_arg == "10:1000000.0"
    bucket.rate = 4
    assert bucket.capacity == 4 and bucket._limits_arg == "4:1000000.0"
    with pytest.raises(ValueError, match="capacity"):
        bucket.reserve(5)


def test_a_reply_marked_in_a_burst_carries_a_burst_round() -> None:
    bucket = RedisTokenBucket(redis.Redis(port=1), key="burst", rate=10, capacity=None, clock=VirtualClock())
    commands: list[Eval] = []

    def run(command: object) -> bytes:
        assert isinstance(command, Eval)
        commands.append(command)
        return b"2 0 1000000 100000 1 100000 4"

    reservation = drive(bucket._reserve(1, math.inf), run)
    assert reservation is not None and reservation.round == BurstRound(4, 0, True)
    assert commands[0].args[1] == "2.0" and commands[0].args[-1] == "10:1000000.0"
    assert commands[0].more_keys == (bucket._settings.windows_key,)


def test_back_from_an_outage_the_burst_stays_calm_for_a_window_then_learns_again() -> None:
    burst = settled(16.0)
    burst.calm(until=10.0)
    assert burst.size == 1
    assert not burst.on_success(True, 9.9)  # calm: the others' sends during the outage are unknown
    assert burst.on_success(True, 10.0) and burst.size == 2  # then slow start again
    fixed = LearnedBurst(None, 16.0, learn=False)
    fixed.calm(until=10.0)
    assert fixed.size == 16  # a burst that is not learned stays as it is


def test_the_default_is_the_even_schedule() -> None:
    bucket = RedisTokenBucket(redis.Redis(port=1), key="burst", rate=10, clock=VirtualClock())
    assert bucket.capacity == 1 and bucket.burst == 1 and bucket._limits_arg == ""
    assert bucket._reserve_args(1.0, math.inf, 0) is bucket._plain_args  # two arguments, no window
