"""RedisTokenBucket for asyncio against a real redis-server: the sync suite's twin."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from grpc_throttle.buckets import AsyncBucket
from grpc_throttle.buckets import redis as sync_redis
from grpc_throttle.buckets.local import Reservation
from grpc_throttle.buckets.redis_aio import RedisReservation, RedisTokenBucket
from grpc_throttle.errors import BucketUnavailableError
from tests.redis_server import RedisServer

Make = Callable[..., RedisTokenBucket]


@pytest.fixture
async def make(redis_server: RedisServer, bucket_key: str) -> AsyncIterator[Make]:
    made: list[RedisTokenBucket] = []

    def factory(server: RedisServer | None = None, **kwargs: Any) -> RedisTokenBucket:
        kwargs.setdefault("key", bucket_key)
        kwargs.setdefault("rate", 10)
        kwargs.setdefault("timeout", 1.0)  # shared, noisy machines: only failure tests go tighter
        bucket = RedisTokenBucket.from_url((server or redis_server).url, **kwargs)
        made.append(bucket)
        return bucket

    yield factory
    for bucket in made:
        await bucket.aclose()


async def reserve(bucket: RedisTokenBucket, tokens: float = 1, **kwargs: Any) -> RedisReservation:
    reservation = await bucket.reserve(tokens, **kwargs)
    assert isinstance(reservation, RedisReservation)
    return reservation


# -- the schedule --------------------------------------------------------


async def test_rate_is_held_across_tasks(make: Make) -> None:
    bucket = make(rate=20)
    end = time.monotonic() + 1.5
    admitted = 0

    async def worker() -> None:
        nonlocal admitted
        while (r := await bucket.reserve(max_wait=max(end - time.monotonic(), 0))) is not None:
            await asyncio.sleep(r.delay)
            admitted += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(4))), 10)
    assert 0.6 * 30 <= admitted <= 30 + 1 + 2


async def test_reservations_are_fifo_one_interval_apart(make: Make) -> None:
    bucket = make(rate=1)  # nobody waits here: slow rates keep noise small next to an interval
    delays = [(await reserve(bucket)).delay for _ in range(5)]
    assert delays[0] == 0
    gaps = [b - a for a, b in itertools.pairwise(delays)]
    assert all(0.7 < gap < 1.01 for gap in gaps), gaps


async def test_a_wait_longer_than_max_wait_takes_nothing(make: Make) -> None:
    bucket = make(rate=1)
    await reserve(bucket)
    assert await bucket.reserve(max_wait=0.5) is None
    assert not await bucket.try_acquire()
    assert (await reserve(bucket)).delay == pytest.approx(1, abs=0.3)


async def test_acquire_waits_for_its_turn(make: Make) -> None:
    bucket = make(rate=4)
    started = time.monotonic()
    assert await bucket.acquire()
    assert await bucket.acquire()
    assert not await bucket.acquire(timeout=0)
    assert time.monotonic() - started >= 0.2


async def test_a_cut_re_spaces_the_waiters_holding_redis_slots(make: Make) -> None:
    bucket = make(rate=20)
    queued = [await reserve(bucket) for _ in range(5)]
    await bucket.set_effective_rate(5)
    left = [await r.due_in() for r in queued]  # type: ignore[misc]
    assert left[0] == 0 and left == sorted(left)
    assert left[4] == pytest.approx(0.8, abs=0.15)


async def test_acquire_sleeps_until_the_re_spaced_slot(make: Make) -> None:
    bucket = make(rate=20)
    for _ in range(3):
        await reserve(bucket)
    started = time.monotonic()
    task = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0.03)
    await bucket.set_effective_rate(2)
    assert await task
    assert time.monotonic() - started > 0.8


async def test_cancel_at_the_tail_gives_the_tokens_back(make: Make) -> None:
    bucket, other = make(rate=1), make(rate=1)
    await reserve(bucket)
    second = await reserve(bucket)
    second.cancel()  # a plain method: the Redis update runs as a task...
    second.cancel()
    await bucket.aclose()  # ...which aclose() waits for
    assert (await reserve(other)).delay == pytest.approx(second.delay, abs=0.3)


async def test_cancel_behind_a_later_reservation_gives_nothing_back(make: Make) -> None:
    bucket, other = make(rate=1), make(rate=1)
    await reserve(bucket)
    middle = await reserve(bucket)
    await reserve(bucket)
    middle.cancel()
    await bucket.aclose()
    assert (await reserve(other)).delay == pytest.approx(3, abs=0.3)


async def test_cancelling_a_queue_in_creation_order_gives_it_all_back(make: Make) -> None:
    bucket = make(rate=10)
    queued = [await reserve(bucket) for _ in range(100)]
    for reservation in queued:  # the natural order of a mass cancel: the tail comes last
        reservation.cancel()
    await asyncio.gather(*bucket._tasks)
    assert await bucket.available() >= 0  # only the first, due at once, is kept
    assert (await reserve(bucket)).delay <= 0.2


async def test_more_concurrent_calls_than_a_default_pool_stay_shared(
    make: Make,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="grpc_throttle.buckets.redis_aio")
    bucket = make(rate=1000, capacity=1000)
    replies = await asyncio.gather(*(bucket.reserve() for _ in range(150)))
    assert bucket.shared and all(isinstance(r, RedisReservation) for r in replies)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_rate_can_change_live(make: Make) -> None:
    bucket = make(rate=1)
    await reserve(bucket)
    await reserve(bucket)
    bucket.rate = 4
    a, b = await reserve(bucket), await reserve(bucket)
    assert b.delay - a.delay == pytest.approx(0.25, abs=0.1)
    assert bucket.effective_rate == 4


async def test_effective_rate_is_shared_with_a_sync_bucket_on_the_same_key(
    make: Make,
    redis_server: RedisServer,
) -> None:
    bucket = make(rate=2)
    other = sync_redis.RedisTokenBucket.from_url(redis_server.url, key=bucket.key[len("grpc-throttle:") :], rate=2)
    try:
        await bucket.set_effective_rate(0.5)
        assert bucket.effective_rate == 0.5
        a, b = other.reserve(), other.reserve()
        assert a is not None and b is not None
        assert b.delay - a.delay == pytest.approx(2, abs=0.3)
        assert other.effective_rate == 0.5
        c = await reserve(bucket)  # the async bucket queues behind the sync one
        assert c.delay - b.delay == pytest.approx(2, abs=0.3)
    finally:
        other.close()


@pytest.mark.parametrize("lease", [1, 4])
async def test_skewed_local_clocks_still_share_one_schedule(make: Make, lease: int) -> None:
    ahead = make(rate=2, lease=lease, clock=lambda: time.monotonic() + 30)
    behind = make(rate=2, lease=lease, clock=lambda: time.monotonic() - 30)
    ready = []
    for i in range(8):
        reservation = await (ahead if i % 2 else behind).reserve()
        assert reservation is not None
        ready.append(time.monotonic() + reservation.delay)
    ready.sort()
    gaps = [(b - a) / 0.5 for a, b in itertools.pairwise(ready)]  # in intervals
    assert all(round(gap) >= 1 and abs(gap - round(gap)) < 0.4 for gap in gaps), gaps
    if lease == 1:
        assert all(round(gap) == 1 for gap in gaps), gaps


async def test_lease_takes_several_slots_per_round_trip_and_holds_the_rate(
    make: Make,
    redis_client: Any,
) -> None:
    bucket = make(rate=100, lease=8)
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    end, count = time.monotonic() + 1.0, 0
    while (r := await bucket.reserve(max_wait=max(end - time.monotonic(), 0))) is not None:
        await asyncio.sleep(r.delay)
        count += 1
    trips = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] - before
    assert 50 <= count <= 100 + 1 + 8
    assert trips < 0.6 * count, (trips, count)


# -- Redis itself ---------------------------------------------------------


async def test_keys_carry_a_ttl(make: Make, redis_client: Any) -> None:
    bucket = make(rate=10)
    await reserve(bucket)
    assert 0 < redis_client.pttl(bucket.key) <= 2 * 100 + 120_000 + 1000


async def test_script_cache_flush_reloads_by_itself(make: Make, redis_client: Any) -> None:
    bucket = make(rate=1000)
    await reserve(bucket)
    redis_client.script_flush()
    await reserve(bucket)
    await bucket.set_effective_rate(500)
    assert await bucket.available() > 0
    assert bucket.shared


async def test_a_key_of_the_wrong_type_is_a_clear_error(make: Make, redis_client: Any) -> None:
    bucket = make()
    redis_client.sadd(bucket.key, "x")
    with pytest.raises(BucketUnavailableError, match="holds a set, not a grpc-throttle bucket"):
        await bucket.reserve()


async def test_the_bucket_satisfies_the_async_bucket_protocol(make: Make) -> None:
    bucket: AsyncBucket = make()
    assert isinstance(bucket, AsyncBucket)
    assert (await bucket.reserve()) is not None


async def test_bad_inputs_are_clear_errors() -> None:
    expected = r"client must be a redis\.asyncio\.Redis, .*valkey\.asyncio.s twin\), got Redis; use"
    with pytest.raises(ValueError, match=expected):
        RedisTokenBucket(redis.Redis(), key="k", rate=1)
    with pytest.raises(ValueError, match="rate must be a number in"):
        RedisTokenBucket(aioredis.Redis(), key="k", rate=-1)
    with pytest.raises(ValueError, match="key must be a non-empty str"):
        RedisTokenBucket(aioredis.Redis(), key="", rate=1)
    with pytest.raises(ValueError, match=r"invalid Redis URL 'redis://\*\*\*@h:x'") as info:
        RedisTokenBucket.from_url("redis://user:hunter2@h:x", key="k", rate=1)
    assert "hunter2" not in str(info.value)


# -- failures -------------------------------------------------------------


@pytest.mark.parametrize("on_failure", ["local", "allow", "fail"])
async def test_redis_killed_then_restarted(
    make: Make,
    own_redis_server: RedisServer,
    on_failure: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="grpc_throttle.buckets.redis_aio")
    bucket = make(own_redis_server, rate=50, on_failure=on_failure, cooldown=0.2)
    await reserve(bucket)
    own_redis_server.stop()
    for _ in range(20):
        if on_failure == "fail":
            with pytest.raises(BucketUnavailableError, match=r"unavailable.*on_failure='fail'"):
                await bucket.reserve()
        else:
            reservation = await bucket.reserve()
            assert reservation is not None and not isinstance(reservation, RedisReservation)
            if on_failure == "local":
                assert isinstance(reservation, Reservation)
            else:
                assert reservation.delay == 0
        await asyncio.sleep(0.02)
    assert not bucket.shared
    own_redis_server.start()
    deadline = time.monotonic() + 10
    while not bucket.shared:
        assert time.monotonic() < deadline, "never went back to Redis"
        await asyncio.sleep(0.05)
        with contextlib.suppress(BucketUnavailableError):
            await bucket.reserve()
    await reserve(bucket)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO], messages


async def test_a_frozen_redis_costs_one_timeout_then_the_breaker_skips_it(
    make: Make,
    own_redis_server: RedisServer,
) -> None:
    bucket = make(own_redis_server, rate=1000, timeout=0.5, cooldown=0.3)
    await reserve(bucket)
    own_redis_server.pause()
    try:
        assert isinstance(await bucket.reserve(), Reservation)
        assert not bucket.shared
        assert isinstance(await bucket.reserve(), Reservation)
    finally:
        own_redis_server.resume()
    deadline = time.monotonic() + 10
    while not isinstance(await bucket.reserve(), RedisReservation):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert bucket.shared
