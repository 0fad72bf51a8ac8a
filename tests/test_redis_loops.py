"""The asyncio Redis bucket from many event loops: one after another, and at once in threads.

A ``redis.asyncio`` connection belongs to its loop; the bucket keeps one set
per loop (``buckets/_redis_loops``). Real servers; ``on_failure="fail"`` so
that a connection used from the wrong loop would raise instead of falling back.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.cluster

from grpc_throttle.buckets.redis_aio import RedisReservation, RedisTokenBucket
from tests.redis_server import RedisCluster, RedisServer


def _clients(server: Any, cluster: bool) -> Any:
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(server.url)
    return redis.asyncio.Redis.from_url(server.url)


@pytest.mark.parametrize("deployment", ["standalone", "cluster"])
def test_one_bucket_serves_asyncio_run_after_asyncio_run(
    deployment: str, request: pytest.FixtureRequest, bucket_key: str
) -> None:
    cluster = deployment == "cluster"
    server: RedisServer | RedisCluster = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
    bucket = RedisTokenBucket(_clients(server, cluster), key=bucket_key, rate=2, timeout=1.0, on_failure="fail")

    async def job() -> float:
        reservation = await bucket.reserve()
        assert isinstance(reservation, RedisReservation)  # from Redis, not a fallback
        return reservation.delay

    delays = [asyncio.run(job()) for _ in range(3)]  # each run ends by closing its loop
    # One schedule across the jobs: each takes the next slot, 0.5 s apart.
    assert delays[0] == 0 and 0.3 < delays[1] < 0.51 and 0.8 < delays[2] < 1.01, delays
    assert bucket.shared
    # Each finished loop closed its connections as it shut down: nothing is left behind.
    gc.collect()
    assert not bucket._clients._entries


def test_four_threads_with_their_own_loops_share_one_schedule(redis_server: RedisServer, bucket_key: str) -> None:
    rate, window = 20.0, 1.5
    bucket = RedisTokenBucket.from_url(redis_server.url, key=bucket_key, rate=rate, timeout=1.0, on_failure="fail")
    admitted: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = time.monotonic()
    end = start + window

    async def worker() -> None:
        async def one_task() -> None:
            while (r := await bucket.reserve(max_wait=max(end - time.monotonic(), 0))) is not None:
                assert isinstance(r, RedisReservation)
                await asyncio.sleep(r.delay)
                with lock:
                    admitted.append(time.monotonic())

        await asyncio.gather(*(one_task() for _ in range(3)))

    def thread() -> None:
        try:
            asyncio.run(worker())
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    # The shared schedule holds across the loops: no window of 0.5 s admits more
    # than rate * 0.5 plus the burst (capacity 1) plus one for timing slack.
    admitted.sort()
    for i, at in enumerate(admitted):
        in_window = sum(1 for other in admitted[i:] if other - at < 0.5)
        assert in_window <= rate * 0.5 + 1 + 1, (i, in_window)
    assert 0.6 * rate * window <= len(admitted) <= rate * window + 1 + 2, len(admitted)
    gc.collect()
    assert not bucket._clients._entries  # every thread's loop closed its connections


async def test_aclose_closes_this_loops_connections_and_a_later_call_reconnects(
    redis_server: RedisServer, bucket_key: str
) -> None:
    bucket = RedisTokenBucket.from_url(redis_server.url, key=bucket_key, rate=10, timeout=1.0, on_failure="fail")
    assert isinstance(await bucket.reserve(), RedisReservation)
    own = (await bucket._clients.get()).client
    await bucket.aclose()
    assert bucket._clients.current() is None
    assert isinstance(await bucket.reserve(), RedisReservation)  # a new client for this loop
    assert (await bucket._clients.get()).client is not own
    await bucket.aclose()
