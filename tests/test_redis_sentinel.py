"""The Redis bucket through Sentinel: lookup, failover, and a hung sentinel, on real servers.

The session's deployment (``redis_sentinel``: one master, one replica, three
sentinels) is shared; the failover test starts one of its own.
The behaviour suite runs through Sentinel too (test_bucket_backends.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel

from grpc_throttle.buckets._redis_wire import SENTINEL_RECHECK
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from tests.redis_deployments import RedisSentinel, aclose_client, close_sentinel
from tests.redis_server import require_redis


def test_a_sentinel_object_and_a_service_name(redis_sentinel: RedisSentinel, bucket_key: str) -> None:
    sentinel = redis.sentinel.Sentinel(redis_sentinel.addresses)
    bucket = RedisTokenBucket(sentinel, service_name="mymaster", key=bucket_key, rate=2, on_failure="fail", timeout=1)
    try:
        delays = [bucket.reserve().delay for _ in range(3)]  # type: ignore[union-attr]
        assert delays[0] == 0 and 0.3 < delays[1] < 0.51 and 0.8 < delays[2] < 1.01
        # The key lives on the master the sentinels name.
        assert redis_sentinel.master.command(f"EXISTS grpc-throttle:{bucket_key}".encode()) == b":1\r\n"
    finally:
        bucket.close()
        close_sentinel(sentinel)


async def test_the_asyncio_bucket_through_sentinel_from_two_loops(
    redis_sentinel: RedisSentinel, bucket_key: str
) -> None:
    bucket = AsyncRedisTokenBucket.from_url(redis_sentinel.url, key=bucket_key, rate=2, on_failure="fail", timeout=1)

    async def reserve() -> float:
        reservation = await bucket.reserve()
        assert reservation is not None and type(reservation).__name__ == "RedisReservation"
        return reservation.delay

    first = await reserve()
    second = await asyncio.to_thread(asyncio.run, reserve())  # another thread, another loop
    assert first == 0 and 0.3 < second < 0.51
    await bucket.aclose()


def test_the_url_and_service_name_are_checked(redis_sentinel: RedisSentinel) -> None:
    good = dict(key="k", rate=1)
    for url, message in [
        ("redis+sentinel://127.0.0.1:1", "the path must be /service_name"),
        ("redis+sentinel://127.0.0.1:1/a/b/c", "the path must be /service_name"),
        ("redis+sentinel://127.0.0.1/mymaster", "each sentinel must be host:port, got '127.0.0.1'"),
        ("redis+sentinel://:secret@127.0.0.1:99999/mymaster", "got '127.0.0.1:99999'"),
    ]:
        with pytest.raises(ValueError, match=message) as caught:
            RedisTokenBucket.from_url(url, **good)  # type: ignore[arg-type]
        assert "secret" not in str(caught.value)
    sentinel = redis.sentinel.Sentinel(redis_sentinel.addresses)
    with pytest.raises(ValueError, match="service_name must name the Sentinel service"):
        RedisTokenBucket(sentinel, **good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service_name is for a Sentinel client only, got it with a Redis"):
        RedisTokenBucket(redis.Redis(), service_name="mymaster", **good)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass the Sentinel itself and service_name="):
        RedisTokenBucket(sentinel.master_for("mymaster"), **good)  # type: ignore[arg-type]
    aio_sentinel = redis.asyncio.sentinel.Sentinel(redis_sentinel.addresses)
    with pytest.raises(
        ValueError, match=r"use grpc_throttle\.buckets\.redis_aio\.RedisTokenBucket for an asyncio client"
    ):
        RedisTokenBucket(aio_sentinel, service_name="m", **good)  # type: ignore[arg-type]
    close_sentinel(sentinel)


def test_credentials_and_db_in_the_url_reach_sentinels_and_master() -> None:
    from grpc_throttle.buckets._redis_urls import parse_sentinel_url

    addresses, service, kwargs = parse_sentinel_url("rediss+sentinel://u:p%40ss@h1:26379,[::1]:26380/svc/3")
    assert addresses == [("h1", 26379), ("::1", 26380)] and service == "svc"
    assert kwargs == {"username": "u", "password": "p@ss", "ssl": True, "db": 3}


def _replicated(deployment: RedisSentinel, key: str, deadline: float = 5.0) -> None:
    """Wait until the replica holds what the master holds at ``key``."""
    end = time.monotonic() + deadline
    line = f"HGETALL {key}".encode()
    while deployment.master.command(line) != deployment.replica.command(line):
        assert time.monotonic() < end, "the replica did not catch up"
        time.sleep(0.01)


def test_sentinel_failover_keeps_the_shared_schedule(bucket_key: str) -> None:
    """The promoted replica holds the schedule; a process connected to the old master moves within
    about SENTINEL_RECHECK, instead of writing there until Sentinel demotes it (up to 10 s).

    A deployment of its own: the old master is left to be demoted after the test.
    """
    require_redis()
    rate = 4.0
    with RedisSentinel() as deployment:
        sentinel = redis.sentinel.Sentinel(deployment.addresses, client_name="old-process")
        kwargs: dict[str, Any] = dict(key=bucket_key, rate=rate, timeout=0.2, cooldown=0.1, on_failure="local")
        bucket = RedisTokenBucket(sentinel, service_name=deployment.service, **kwargs)
        queued = [bucket.reserve() for _ in range(12)]  # three seconds of the schedule
        assert all(isinstance(r, RedisReservation) for r in queued)
        last_before = queued[-1].ready_at  # type: ignore[union-attr]
        _replicated(deployment, f"grpc-throttle:{bucket_key}")
        old_master = deployment.master
        started = time.monotonic()
        deployment.failover()
        agreed = time.monotonic()
        # A process that starts after the failover continues the schedule: not a fresh bucket.
        fresh = RedisTokenBucket.from_url(deployment.url, **kwargs)
        first = fresh.reserve(max_wait=60)
        assert isinstance(first, RedisReservation), "the promoted master did not answer"
        # ... held by 1.1 s (lua/_common.lua, moved): the old master may still hand out slots.
        assert first.ready_at >= last_before + 1.0, first.ready_at - last_before
        # The connected process moves to the promoted master by itself (CLIENT LIST shows where it is).
        fallback = 0
        while b"name=old-process" not in deployment.master.command(b"CLIENT LIST"):
            assert time.monotonic() - agreed < SENTINEL_RECHECK + 2, "the old process stayed on the old master"
            if not isinstance(bucket.reserve(max_wait=60), RedisReservation):
                fallback += 1
            time.sleep(0.05)
        moved = time.monotonic()
        assert b"name=old-process" not in old_master.command(b"CLIENT LIST")
        reservation = bucket.reserve(max_wait=60)
        assert isinstance(reservation, RedisReservation)
        assert reservation.ready_at > first.ready_at  # after the fresh process's slot: one schedule
        print(
            f"failover: {agreed - started:.2f} s until the sentinels agree; the connected process "
            f"moved {moved - agreed:.2f} s later; fallback reservations: {fallback}"
        )
        bucket.close()
        fresh.close()
        close_sentinel(sentinel)


def test_a_killed_master_comes_back_as_the_promoted_replica_with_the_schedule(bucket_key: str) -> None:
    """SIGKILL the master: calls fall back (each outage call bounded by the timeout), and once the
    sentinels promote the replica the bucket is shared again, on the schedule the dead master had."""
    require_redis()
    rate, timeout = 4.0, 0.2
    with RedisSentinel(down_after_ms=1000) as deployment:
        kwargs: dict[str, Any] = dict(key=bucket_key, rate=rate, timeout=timeout, cooldown=0.1, on_failure="local")
        bucket = RedisTokenBucket.from_url(deployment.url, **kwargs)
        queued = [bucket.reserve() for _ in range(12)]  # three seconds of the schedule
        assert all(isinstance(r, RedisReservation) for r in queued)
        last_before = queued[-1].ready_at  # type: ignore[union-attr]
        _replicated(deployment, f"grpc-throttle:{bucket_key}")
        killed = time.monotonic()
        deployment.master.kill()
        slowest, fallback = 0.0, 0
        while True:
            began = time.monotonic()
            reservation = bucket.reserve(max_wait=60)
            slowest = max(slowest, time.monotonic() - began)
            if isinstance(reservation, RedisReservation):
                break
            assert reservation is not None  # the local fallback's slot
            reservation.cancel()  # not sent: so that the fallback's queue does not grow past max_wait
            fallback += 1
            assert time.monotonic() - killed < 20, "the bucket never came back to Redis"
            time.sleep(0.05)
        back = time.monotonic() - killed
        # Every call during the outage met the timeout (plus a connect), never redis-py's retries.
        assert slowest < timeout * 5, slowest
        assert fallback > 0  # the master was really gone for a while
        # The promoted replica holds the dead master's schedule: a process that starts now follows it.
        fresh = RedisTokenBucket.from_url(deployment.url, **kwargs)
        first = fresh.reserve(max_wait=60)
        assert isinstance(first, RedisReservation), "the promoted master did not answer"
        # ... held by 1.1 s (lua/_common.lua, moved): the old master may still hand out slots.
        assert first.ready_at >= last_before + 1.0, first.ready_at - last_before
        print(f"killed master: shared again after {back:.2f} s; {fallback} fallback calls, slowest {slowest:.3f} s")
        bucket.close()
        fresh.close()


def test_the_asyncio_bucket_follows_a_failover_too(bucket_key: str) -> None:
    require_redis()
    rate = 4.0
    with RedisSentinel() as deployment:

        async def run() -> None:
            sentinel = redis.asyncio.sentinel.Sentinel(deployment.addresses, client_name="aio-process")
            bucket = AsyncRedisTokenBucket(sentinel, service_name=deployment.service, key=bucket_key, rate=rate)
            try:
                queued = [await bucket.reserve() for _ in range(12)]  # three seconds of the schedule
                assert all(type(r).__name__ == "RedisReservation" for r in queued)
                _replicated(deployment, f"grpc-throttle:{bucket_key}")
                await asyncio.to_thread(deployment.failover)
                agreed = time.monotonic()
                fresh = RedisTokenBucket.from_url(deployment.url, key=bucket_key, rate=rate)
                first = fresh.reserve(max_wait=60)  # on the promoted master, after the queued slots
                fresh.close()
                assert isinstance(first, RedisReservation)
                assert first.ready_at >= queued[-1].ready_at + 0.9 / rate  # type: ignore[union-attr]
                while b"name=aio-process" not in deployment.master.command(b"CLIENT LIST"):
                    assert time.monotonic() - agreed < SENTINEL_RECHECK + 2, "it stayed on the old master"
                    await bucket.reserve(max_wait=60)
                    await asyncio.sleep(0.05)
                reservation = await bucket.reserve(max_wait=60)
                assert type(reservation).__name__ == "RedisReservation"
                assert reservation.ready_at > first.ready_at  # type: ignore[union-attr]  # one schedule
            finally:
                await bucket.aclose()
                await aclose_client(sentinel)

        asyncio.run(run())


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_a_hung_sentinel_costs_one_timeout_not_seconds(
    redis_sentinel: RedisSentinel, bucket_key: str, flavour: str
) -> None:
    timeout = 0.1
    hung = redis_sentinel.sentinels[0]  # the first one asked: the URL names it first
    hung.pause()
    try:
        # A new bucket: its first call looks the master up (connect and ask each sentinel in turn).
        started = time.monotonic()
        if flavour == "sync":
            bucket = RedisTokenBucket.from_url(redis_sentinel.url, key=bucket_key, rate=10, timeout=timeout)
            reservation = bucket.reserve()
            took = time.monotonic() - started
            bucket.close()
        else:
            aio = AsyncRedisTokenBucket.from_url(redis_sentinel.url, key=bucket_key, rate=10, timeout=timeout)

            async def one() -> Any:
                try:
                    return await aio.reserve()
                finally:
                    took_box.append(time.monotonic() - started)
                    await aio.aclose()

            took_box: list[float] = []
            reservation = asyncio.run(one())
            took = took_box[0]
    finally:
        hung.resume()
    assert type(reservation).__name__ == "RedisReservation"  # the next sentinel named the master
    # The hung sentinel's reply times out after `timeout` (no retry); the rest is
    # connects and round trips on loopback. redis-py's defaults take 4-10 s here.
    print(f"hung sentinel, {flavour}: first call took {took * 1000:.0f} ms with timeout={timeout * 1000:.0f} ms")
    assert timeout <= took < timeout + 0.4, took


def test_every_sentinel_hung_is_an_outage_after_one_timeout_each(
    redis_sentinel: RedisSentinel, bucket_key: str
) -> None:
    timeout = 0.1
    for sentinel in redis_sentinel.sentinels:
        sentinel.pause()
    try:
        bucket = RedisTokenBucket.from_url(
            redis_sentinel.url, key=bucket_key, rate=10, timeout=timeout, on_failure="local"
        )
        started = time.monotonic()
        reservation = bucket.reserve()  # no master found: the local fallback
        took = time.monotonic() - started
        bucket.close()
    finally:
        for sentinel in redis_sentinel.sentinels:
            sentinel.resume()
    assert reservation is not None and not isinstance(reservation, RedisReservation)
    print(f"three hung sentinels: {took * 1000:.0f} ms to fall back with timeout={timeout * 1000:.0f} ms")
    assert 3 * timeout <= took < 3 * timeout + 0.4, took


def test_with_every_sentinel_hung_a_connected_bucket_keeps_its_master(
    redis_sentinel: RedisSentinel, bucket_key: str
) -> None:
    timeout = 0.1
    bucket = RedisTokenBucket.from_url(
        redis_sentinel.url, key=bucket_key, rate=1000, timeout=timeout, on_failure="fail"
    )
    assert isinstance(bucket.reserve(), RedisReservation)  # connected
    took = []
    for sentinel in redis_sentinel.sentinels:
        sentinel.pause()
    try:
        end = time.monotonic() + SENTINEL_RECHECK + 1.5  # one recheck falls in here
        while time.monotonic() < end:
            started = time.monotonic()
            assert isinstance(bucket.reserve(), RedisReservation)  # the master still answers
            took.append(time.monotonic() - started)
            time.sleep(0.02)
    finally:
        for sentinel in redis_sentinel.sentinels:
            sentinel.resume()
        bucket.close()
    slow = [t for t in took if t > timeout]
    # The one recheck asked each hung sentinel once (3 x timeout); after that failure the next
    # is 30 s away, so no other call pays for the sentinels.
    assert len(slow) == 1 and 3 * timeout <= slow[0] < 3 * timeout + 0.4, slow
