"""Rate adaptation of the Redis bucket against a real redis-server: one curve per key, shared."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from grpc_throttle import AdaptiveRate, RateChanged
from grpc_throttle.buckets import _cubic
from grpc_throttle.buckets import redis_aio as aio
from grpc_throttle.buckets._redis_adapt import SCRIPTS
from grpc_throttle.buckets.local import Reservation
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from tests.redis_server import RedisServer

Make = Callable[..., RedisTokenBucket]
#: Recovers in well under a second: beta 0.5, then back to the configured rate fast.
FAST = AdaptiveRate(beta=0.5, scale=50.0, probe_time=1.0)


@pytest.fixture
def make(redis_server: RedisServer, bucket_key: str) -> Iterator[Make]:
    made: list[RedisTokenBucket] = []

    def factory(server: RedisServer | None = None, **kwargs: Any) -> RedisTokenBucket:
        kwargs.setdefault("key", bucket_key)
        kwargs.setdefault("rate", 10)
        kwargs.setdefault("timeout", 1.0)
        bucket = RedisTokenBucket.from_url((server or redis_server).url, **kwargs)
        made.append(bucket)
        return bucket

    yield factory
    for bucket in made:
        bucket.close()


def reserve(bucket: RedisTokenBucket) -> RedisReservation:
    reservation = bucket.reserve()
    assert isinstance(reservation, RedisReservation)
    return reservation


def evalsha_calls(client: Any) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def recover(bucket: RedisTokenBucket, target: float, timeout: float = 10.0) -> list[float]:
    """Report successes until the bucket is back at ``target``; the rates seen on the way."""
    seen = [bucket.effective_rate]
    deadline = time.monotonic() + timeout
    while bucket.effective_rate < target:
        assert time.monotonic() < deadline, f"stuck at {bucket.effective_rate}"
        time.sleep(0.01)
        bucket.record_success()
        seen.append(bucket.effective_rate)
    return seen


# -- one curve per key ------------------------------------------------------


def test_a_throttle_through_one_object_slows_another_on_the_key(make: Make) -> None:
    one, other = make(rate=10), make(rate=10)
    assert reserve(other).round == 0 and other.effective_rate == 10
    one.record_throttle(reserve(one).round)
    assert one.effective_rate == pytest.approx(7.0) and one.rate == 10
    first, second = reserve(other), reserve(other)
    assert other.effective_rate == pytest.approx(7.0)
    assert second.delay - first.delay == pytest.approx(1 / 7, abs=0.05)
    assert second.round == one.round == other.round == 1


def test_signals_of_one_round_count_once_across_objects(make: Make) -> None:
    one, other = make(rate=10), make(rate=10)
    round_one, round_other = reserve(one).round, reserve(other).round
    one.record_throttle(round_one)
    other.record_throttle(round_other)  # the same round: Redis has counted it already
    assert one.effective_rate == other.effective_rate == pytest.approx(7.0)
    other.record_throttle(other.round)  # a call sent after the decrease: a new signal
    reserve(one)
    assert one.effective_rate == pytest.approx(4.9)


def test_sixteen_threads_throttled_together_count_once(make: Make, redis_client: Any) -> None:
    buckets = [make(rate=10), make(rate=10)]
    rounds = [reserve(b).round for b in buckets]
    start = threading.Barrier(16)

    def signal(i: int) -> None:
        start.wait()
        buckets[i % 2].record_throttle(rounds[i % 2])

    threads = [threading.Thread(target=signal, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    reserve(buckets[0])
    assert buckets[0].effective_rate == pytest.approx(7.0)
    assert int(redis_client.hget(buckets[0].key, "rd")) == 1


def test_an_older_round_costs_no_round_trip(make: Make, redis_client: Any) -> None:
    bucket = make(rate=10)
    stale = reserve(bucket).round
    bucket.record_throttle(stale)
    before = evalsha_calls(redis_client)
    for _ in range(20):
        bucket.record_throttle(stale)
    assert evalsha_calls(redis_client) == before
    assert bucket.effective_rate == pytest.approx(7.0)


def test_recovery_reaches_the_configured_rate_for_every_object(make: Make) -> None:
    one, other = make(rate=10, adaptive=FAST), make(rate=10, adaptive=FAST)
    one.record_throttle(one.round)
    assert one.effective_rate == pytest.approx(5.0)
    seen = recover(one, 10.0)
    assert seen == sorted(seen) and seen[-1] == 10.0
    reserve(other)
    assert other.effective_rate == 10.0
    assert one.adaptive is FAST


def test_successes_cost_nothing_at_the_configured_rate_and_little_while_recovering(
    make: Make,
    redis_client: Any,
) -> None:
    bucket = make(rate=10, adaptive=AdaptiveRate(beta=0.5, scale=1.0, probe_time=1.0))
    reserve(bucket)
    before = evalsha_calls(redis_client)
    for _ in range(200):
        bucket.record_success()
    assert evalsha_calls(redis_client) == before
    bucket.record_throttle(bucket.round)
    before, successes = evalsha_calls(redis_client), 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        bucket.record_success()
        successes += 1
        time.sleep(0.001)
    trips = evalsha_calls(redis_client) - before
    assert 1 <= trips < successes / 4, (trips, successes)  # only steps of at least 1% go to Redis
    assert 5.0 < bucket.effective_rate < 10.0


def test_one_process_recovery_cannot_undo_another_process_decrease(make: Make) -> None:
    one, other = make(rate=10, adaptive=FAST), make(rate=10, adaptive=FAST)
    one.record_throttle(one.round)
    reserve(other)  # other now holds a copy of the curve, from 5/s upward
    time.sleep(0.3)
    one.record_throttle(one.round)  # a second decrease, from wherever the curve was
    low = one.effective_rate
    other.record_success()  # its stale copy says "recovered a lot": Redis knows better
    reserve(other)
    assert other.effective_rate == pytest.approx(low, rel=0.05)
    assert low <= 5.0


def test_a_recovery_step_never_pulls_a_slot_closer_than_an_interval_to_one_handed_out(make: Make) -> None:
    bucket = make(rate=10, adaptive=FAST)
    bucket.record_throttle(bucket.round)  # 5/s
    queued = [reserve(bucket) for _ in range(4)]  # due over the next 0.6 s, 0.2 s apart
    time.sleep(0.15)
    bucket.record_success()  # a big step up the curve (to ~8/s)
    assert bucket.effective_rate > 7
    after = reserve(bucket)
    # Rescaling the whole queue to the new rate would make this one due before the last of the four.
    assert after.ready_at - queued[-1].ready_at >= 0.9 / bucket.effective_rate


def test_the_scripts_do_the_cubic_arithmetic(redis_client: Any, bucket_key: str) -> None:
    config = AdaptiveRate(beta=0.6, scale=2.0, probe_time=2.0)
    throttle = redis_client.register_script(SCRIPTS["throttle"])
    success = redis_client.register_script(SCRIPTS["recover"])
    key, rate = f"grpc-throttle:{bucket_key}", 20.0
    floor = repr(config.floor(rate))
    args = [repr(rate), "1", "0", repr(config.beta), repr(config.scale), repr(config.headroom), floor, "1"]
    _, iv, rd, since, k, w_max = throttle(keys=[key], args=args).split()
    expected = _cubic.on_throttle(config, _cubic.CubicState(rate, rate), rate, 0.0)
    assert (1e6 / float(iv), float(w_max), float(k)) == pytest.approx((expected.rate, expected.w_max, expected.k))
    assert int(rd) == 1 and float(since) == 0
    state = expected
    for _ in range(6):
        time.sleep(0.15)
        args = [repr(rate), "1", repr(config.scale), repr(config.probe_time), floor, repr(_cubic.MIN_CHANGE)]
        _, iv, _, *curve = success(keys=[key], args=args).split()
        t = float(curve[0]) / 1e6 if curve else 0.0
        state = _cubic.on_success(config, state, rate, t)
        assert 1e6 / float(iv) == pytest.approx(state.rate)
    # A second throttle below the first one's rate: fast convergence, as _cubic does it.
    args = [repr(rate), "1", "1", repr(config.beta), repr(config.scale), repr(config.headroom), floor, "1"]
    _, iv, rd, since, k, w_max = throttle(keys=[key], args=args).split()
    expected = _cubic.on_throttle(config, state, rate, 0.0)
    assert expected.w_max < state.rate * (1 - config.headroom)  # the lower target was taken
    assert (1e6 / float(iv), float(w_max), float(k)) == pytest.approx((expected.rate, expected.w_max, expected.k))


# -- listeners, reservations, configuration ---------------------------------


def test_listeners_hear_the_changes_this_process_sees(make: Make) -> None:
    one, other = make(rate=10, adaptive=FAST), make(rate=10, adaptive=FAST)
    events: list[Any] = []
    other.add_listener(events.append)
    one.record_throttle(one.round)
    reserve(other)  # learns of the decrease
    recover(other, 10.0)
    other.rate = 20
    assert events[0] == RateChanged(10.0, pytest.approx(5.0), "throttle")  # type: ignore[arg-type]
    assert all(e.reason == "recovery" for e in events[1:-1])
    assert events[-2].new_rate == 10.0 and events[-1] == RateChanged(10.0, 20.0, "configured")
    other.remove_listener(events.append)
    other.remove_listener(events.append)  # not there: nothing happens
    other.record_throttle(other.round)
    assert len(events) >= 3 and events[-1].reason == "configured"
    with pytest.raises(ValueError, match="callable"):
        other.add_listener(42)  # type: ignore[arg-type]


def test_reservations_carry_the_round_they_were_made_in(make: Make) -> None:
    bucket = make(rate=1000, lease=4)
    assert bucket.round == 0
    bucket.record_throttle(bucket.round)
    assert bucket.round == 1
    rounds = {reserve(bucket).round for _ in range(12)}  # some of them from the lease pool
    assert rounds == {1}


def test_without_adaptation_signals_are_ignored_but_others_decreases_apply(make: Make) -> None:
    fixed, adaptive = make(rate=10, adaptive=None), make(rate=10)
    fixed.record_throttle(fixed.round)
    fixed.record_success()
    assert fixed.effective_rate == 10 and fixed.adaptive is None
    adaptive.record_throttle(adaptive.round)
    reserve(fixed)
    assert fixed.effective_rate == pytest.approx(7.0)
    with pytest.raises(ValueError, match="adaptive"):
        make(adaptive=0.7)


def test_set_effective_rate_holds_and_a_throttle_lowers_it(make: Make) -> None:
    bucket = make(rate=10, adaptive=FAST)
    bucket.record_throttle(bucket.round)
    bucket.set_effective_rate(4)
    time.sleep(0.2)
    bucket.record_success()
    reserve(bucket)
    assert bucket.effective_rate == 4  # no recovery from a rate set on purpose
    bucket.record_throttle(bucket.round)
    assert bucket.effective_rate == pytest.approx(2.0)


# -- failures ----------------------------------------------------------------


def test_while_redis_is_down_the_fallback_adapts_locally(make: Make, own_redis_server: RedisServer) -> None:
    bucket = make(own_redis_server, rate=40, cooldown=30)  # fallback: 10/s
    reserve(bucket)
    own_redis_server.stop()
    first = bucket.reserve()
    assert isinstance(first, Reservation) and not bucket.shared
    bucket.record_throttle(first.round)  # the fallback's round: 7/s locally
    bucket.record_throttle(first.round)  # same round: once
    a, b = bucket.reserve(), bucket.reserve()
    assert a is not None and b is not None
    assert b.delay - a.delay == pytest.approx(1 / 7, rel=0.01)  # one cut, not two
    bucket.record_success()  # no Redis, no error


def test_a_down_redis_with_fail_policy_does_not_raise_from_signals(
    make: Make,
    own_redis_server: RedisServer,
) -> None:
    bucket = make(own_redis_server, on_failure="fail", timeout=0.2)
    reserve(bucket)
    own_redis_server.stop()
    bucket.record_throttle(bucket.round)  # pays the timeout once, then the breaker is open
    bucket.record_success()
    assert not bucket.shared


# -- asyncio ----------------------------------------------------------------

AioMake = Callable[..., aio.RedisTokenBucket]


@pytest.fixture
async def amake(redis_server: RedisServer, bucket_key: str) -> AsyncIterator[AioMake]:
    made: list[aio.RedisTokenBucket] = []

    def factory(**kwargs: Any) -> aio.RedisTokenBucket:
        kwargs.setdefault("key", bucket_key)
        kwargs.setdefault("rate", 10)
        kwargs.setdefault("timeout", 1.0)
        bucket = aio.RedisTokenBucket.from_url(redis_server.url, **kwargs)
        made.append(bucket)
        return bucket

    yield factory
    for bucket in made:
        await bucket.aclose()


async def settle(*buckets: aio.RedisTokenBucket) -> None:
    """Wait for the updates the buckets scheduled."""
    for bucket in buckets:
        await asyncio.gather(*bucket._tasks)


async def test_aio_signals_are_plain_methods_and_shared_with_sync_buckets(amake: AioMake, make: Make) -> None:
    one, other = amake(rate=10), amake(rate=10)
    sync = make(rate=10)
    round_one = (await one.reserve()).round  # type: ignore[union-attr]
    round_other = (await other.reserve()).round  # type: ignore[union-attr]
    one.record_throttle(round_one)  # returns at once; the update is a task
    other.record_throttle(round_other)
    other.record_throttle(round_other)  # one in flight already: not even a task
    await settle(one, other)
    assert one.effective_rate == other.effective_rate == pytest.approx(7.0)
    reserve(sync)
    assert sync.effective_rate == pytest.approx(7.0) and sync.round == 1


async def test_aio_recovery_and_listeners(amake: AioMake) -> None:
    bucket = amake(rate=10, adaptive=FAST)
    events: list[Any] = []
    bucket.add_listener(events.append)
    bucket.record_throttle(bucket.round)
    await settle(bucket)
    assert bucket.effective_rate == pytest.approx(5.0)
    deadline = time.monotonic() + 10
    while bucket.effective_rate < 10:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
        bucket.record_success()
        await settle(bucket)
    assert events[0].reason == "throttle"
    assert (events[-1].new_rate, events[-1].reason) == (10.0, "recovery")


def test_aio_signals_outside_an_event_loop_are_dropped(redis_server: RedisServer, bucket_key: str) -> None:
    bucket = aio.RedisTokenBucket.from_url(redis_server.url, key=bucket_key, rate=10)
    bucket.record_throttle(0)
    bucket.record_throttle(0)
    assert not bucket._tasks and bucket.effective_rate == 10
