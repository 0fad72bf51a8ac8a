"""A round says whose it is: Redis's or the local fallback's (one cut per round either way)."""

from __future__ import annotations

import time

from grpc_throttle import AdaptiveRate
from grpc_throttle.buckets.redis import RedisTokenBucket
from tests.redis_server import RedisServer

ADAPT = AdaptiveRate(beta=0.7)


def test_throttles_of_one_fallback_round_cut_the_fallback_once(
    own_redis_server: RedisServer,
    bucket_key: str,
) -> None:
    bucket = RedisTokenBucket.from_url(
        own_redis_server.url, key=bucket_key, rate=10, on_failure="local", adaptive=ADAPT, timeout=0.2, cooldown=60
    )
    try:
        own_redis_server.stop()
        reservations = [bucket.reserve(max_wait=60) for _ in range(3)]
        assert all(r is not None for r in reservations)
        time.sleep(max(r.delay for r in reservations if r is not None))  # all three have been sent
        before = bucket._local.effective_rate
        for reservation in reservations:  # three answers to calls sent together: one signal
            assert reservation is not None
            bucket.record_throttle(reservation.round)
        assert bucket._local.effective_rate == before * ADAPT.beta  # before: 10 -> 7 -> 4.9 -> 3.43
    finally:
        bucket.close()


def test_throttles_of_one_redis_round_heard_while_redis_is_down_cut_once(
    own_redis_server: RedisServer,
    bucket_key: str,
) -> None:
    bucket = RedisTokenBucket.from_url(
        own_redis_server.url, key=bucket_key, rate=10, on_failure="local", adaptive=ADAPT, timeout=0.2, cooldown=60
    )
    try:
        for _ in range(3):  # the key's round moves ahead of the fallback's (0)
            earlier = bucket.reserve(max_wait=60)
            assert earlier is not None
            bucket.record_throttle(earlier.round)
        reservations = [bucket.reserve(max_wait=60) for _ in range(3)]  # from Redis
        assert all(r is not None and r.round >= 3 for r in reservations)
        own_redis_server.stop()
        assert bucket.reserve(max_wait=60) is not None  # the breaker opens: the fallback serves
        before = bucket._local.effective_rate
        for reservation in reservations:
            assert reservation is not None
            bucket.record_throttle(reservation.round)
        assert bucket._local.effective_rate == before * ADAPT.beta
    finally:
        bucket.close()
