"""The Redis buckets on a real three-master Redis Cluster (sync and asyncio).

The shared bucket behaviour runs on the cluster as rows of the backend table
(test_bucket_backends.py); this file has what is particular to a cluster.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot

from grpc_throttle.buckets._redis_config import Settings
from grpc_throttle.buckets.local import Reservation
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from grpc_throttle.errors import BucketUnavailableError
from tests.redis_server import RedisCluster, require_redis


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[Any]:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    yield client
    client.close()


@pytest.fixture
def made() -> Iterator[list[RedisTokenBucket]]:
    buckets: list[RedisTokenBucket] = []
    yield buckets
    for bucket in buckets:
        bucket.close()


def _settings(key: str) -> Settings:
    return Settings(key=key, capacity=1, on_failure="fail", local_share=0.25, timeout=1, cooldown=1, lease=1)


@pytest.mark.parametrize("key", ["team-a", "h:0123abcd", "team-{a}", "a{b", "}{x}y"])
def test_the_holes_share_the_hash_slot_and_the_hash_keeps_its_name(key: str) -> None:
    settings = _settings(key)
    assert settings.redis_key == "grpc-throttle:" + key  # as in v0.1: a rolling upgrade keeps one schedule
    assert key_slot(settings.holes_key.encode()) == key_slot(settings.redis_key.encode())


@pytest.mark.parametrize("key", ["a}b", "a{}b", "{}", "{}{"])
def test_a_key_whose_braces_cannot_share_a_slot_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        _settings(key)


def test_every_key_a_bucket_writes_is_in_one_slot(
    cluster_client: Any, made: list[RedisTokenBucket], bucket_key: str
) -> None:
    bucket = RedisTokenBucket(cluster_client, key=bucket_key, rate=2, on_failure="fail")
    made.append(bucket)
    first, second, _ = (bucket.reserve() for _ in range(3))
    assert isinstance(second, RedisReservation)
    second.cancel()  # behind the tail: a hole, the script's second key
    holes = "{" + bucket.key + "}:holes"
    assert cluster_client.exists(bucket.key) and cluster_client.exists(holes)
    assert cluster_client.keyslot(holes) == cluster_client.keyslot(bucket.key)
    assert cluster_client.pttl(holes) > 0
    assert bucket.shared and first is not None


def test_cancel_gives_tokens_back_on_the_cluster(
    cluster_client: Any, made: list[RedisTokenBucket], bucket_key: str
) -> None:
    bucket = RedisTokenBucket(cluster_client, key=bucket_key, rate=2, on_failure="fail")
    made.append(bucket)
    queue = [bucket.reserve() for _ in range(4)]
    assert all(isinstance(r, RedisReservation) for r in queue)
    queue[1].cancel()  # a hole first
    queue[3].cancel()
    queue[2].cancel()  # the tail rolls back through the hole
    again = bucket.reserve()
    assert again is not None and again.delay == pytest.approx(queue[1].delay, abs=0.2)


async def test_cancel_gives_tokens_back_on_the_cluster_asyncio(redis_cluster: RedisCluster, bucket_key: str) -> None:
    client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url)
    bucket = AsyncRedisTokenBucket(client, key=bucket_key, rate=2, on_failure="fail")
    try:
        queue = [await bucket.reserve() for _ in range(3)]
        for reservation in reversed(queue[1:]):
            assert reservation is not None
            reservation.cancel()
        while bucket._tasks:  # the cancels run as tasks
            await next(iter(bucket._tasks))
        again = await bucket.reserve()
        assert again is not None and queue[1] is not None
        assert again.delay == pytest.approx(queue[1].delay, abs=0.2)
    finally:
        await bucket.aclose()
        await client.aclose()


async def test_two_clients_share_one_schedule(
    redis_cluster: RedisCluster, cluster_client: Any, made: list[RedisTokenBucket], bucket_key: str
) -> None:
    sync_bucket = RedisTokenBucket(cluster_client, key=bucket_key, rate=5, on_failure="fail")
    other = RedisTokenBucket(redis.cluster.RedisCluster.from_url(redis_cluster.url), key=bucket_key, rate=5)
    made += [sync_bucket, other]
    aio_client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url)
    aio_bucket = AsyncRedisTokenBucket(aio_client, key=bucket_key, rate=5, on_failure="fail")
    try:
        sync_bucket.available(), other.available(), await aio_bucket.available()  # connected, slots known
        ready = []
        for _ in range(2):
            for reservation in (sync_bucket.reserve(), other.reserve(), await aio_bucket.reserve()):
                assert isinstance(reservation, RedisReservation)
                ready.append(reservation.ready_at)  # one local clock for all three
        # One FIFO schedule at 5/s across the three: each next slot 0.2 s after the last.
        gaps = [b - a for a, b in itertools.pairwise(ready)]
        assert all(0.15 < gap < 0.25 for gap in gaps), gaps
    finally:
        await aio_bucket.aclose()
        await aio_client.aclose()


def test_a_plain_client_on_a_node_without_the_slot_names_the_fix(
    redis_cluster: RedisCluster, cluster_client: Any, bucket_key: str
) -> None:
    owner = cluster_client.get_node_from_key("grpc-throttle:" + bucket_key)
    others = [node for node in redis_cluster.nodes if node.port != owner.port]
    for on_failure in ("local", "fail"):
        bucket = RedisTokenBucket.from_url(others[0].url, key=bucket_key, rate=10, on_failure=on_failure)
        try:
            with pytest.raises(BucketUnavailableError, match=r"redis\.cluster\.RedisCluster") as info:
                bucket.reserve()
            assert "refused the bucket script" not in str(info.value)
        finally:
            bucket.close()


def test_clients_of_the_other_world_are_refused(redis_cluster: RedisCluster) -> None:
    with pytest.raises(ValueError, match="redis_aio"):
        RedisTokenBucket(redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url), key="k", rate=1)
    with pytest.raises(ValueError, match=r"buckets\.redis\.RedisTokenBucket for a sync client"):
        AsyncRedisTokenBucket(redis.cluster.RedisCluster.from_url(redis_cluster.url), key="k", rate=1)


def test_a_node_down_is_an_outage_for_the_failure_policy(bucket_key: str) -> None:
    require_redis(cluster=True)
    with RedisCluster() as cluster:
        client = redis.cluster.RedisCluster.from_url(cluster.url)
        bucket = RedisTokenBucket(client, key=bucket_key, rate=10, timeout=0.5, on_failure="local")
        try:
            assert isinstance(bucket.reserve(), RedisReservation)
            owner = client.get_node_from_key(bucket.key)
            next(node for node in cluster.nodes if node.port == owner.port).stop()
            assert isinstance(bucket.reserve(), Reservation)  # the local fallback
            assert not bucket.shared
        finally:
            bucket.close()
            client.close()
