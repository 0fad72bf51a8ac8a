"""The Redis buckets keep the lifecycle promises of the local one: hooks, fork."""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from grpc_throttle import AdaptiveRate, RateChanged, ThrottlingInterceptor
from grpc_throttle.buckets.redis import RedisTokenBucket
from tests.redis_server import RedisServer


@pytest.fixture
def bucket(redis_server: RedisServer, bucket_key: str) -> Iterator[RedisTokenBucket]:
    made = RedisTokenBucket.from_url(
        redis_server.url, key=bucket_key, rate=1000, timeout=2.0, on_failure="fail", adaptive=AdaptiveRate()
    )
    yield made
    made.close()


def test_one_hook_on_two_interceptors_hears_each_change_once(bucket: RedisTokenBucket) -> None:
    seen: list[Any] = []

    def hook(event: Any) -> None:
        if isinstance(event, RateChanged):
            seen.append(event)

    first = ThrottlingInterceptor(bucket, on_event=hook)
    second = ThrottlingInterceptor(bucket, on_event=hook)
    reservation = bucket.reserve()
    assert reservation is not None
    bucket.record_throttle(reservation.round)
    assert len(seen) == 1  # before: twice, once per interceptor
    del first, second


def test_hooks_of_dropped_interceptors_are_removed(bucket: RedisTokenBucket) -> None:
    calls: list[Any] = []
    for _ in range(30):
        ThrottlingInterceptor(bucket, on_event=lambda event: calls.append(event))
    gc.collect()
    reservation = bucket.reserve()
    assert reservation is not None
    bucket.record_throttle(reservation.round)
    assert calls == []  # before: each of the 30 dropped interceptors' hooks was called


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_child_forked_while_the_locks_are_held_can_use_the_redis_bucket(bucket: RedisTokenBucket) -> None:
    """As if other threads held every lock of the bucket at the fork: the child must get fresh ones."""
    assert bucket.reserve() is not None  # connected, scripts loaded
    locks = [bucket._lock, bucket._view_lock, bucket._breaker._lock, bucket._local._lock]
    for lock in locks:
        lock.acquire()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads
            pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                reservation = bucket.reserve()
                bucket.record_success()
                code = 0 if reservation is not None else 2
            finally:
                os._exit(code)
    finally:
        for lock in locks:
            lock.release()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, 9)  # deadlocked: kill so the suite goes on, then fail
    os.waitpid(pid, 0)
    pytest.fail("the forked child deadlocked on a lock held at the fork")
