"""The bucket behaviour every backend shares, run on each (limits' ALL_STORAGES).

Real time, generous bounds: these check behaviour, not speed. The virtual-clock
tests of each backend (test_token_bucket.py, test_redis_bucket.py) pin the
arithmetic exactly. The Redis rows need ``redis-server``: without it they are
skipped, or fail under ``CI=true`` (tests.redis_server.require_redis).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster

from grpc_throttle import AdaptiveRate, Limit, ThrottledChannel, ThrottlingInterceptor, TokenBucket
from grpc_throttle.buckets.redis import RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from grpc_throttle.testing import echo_pb2, echo_pb2_grpc
from tests import redis_server as redis_server_module
from tests.arrivals import most_in_any_window
from tests.loop_bucket import LoopBucket
from tests.scripted import ECHO_POLICY

#: Every bucket backend; each test below runs once per entry. The asyncio
#: bucket runs behind the sync interface (tests.loop_bucket).
BACKENDS = [
    "local",
    "redis",
    "redis-aio",
    "redis-cluster",
    "redis-cluster-aio",
    "sentinel",
    "sentinel-aio",
    "tls",
    "tls-aio",
    "valkey",
    "valkey-aio",
]
#: The backends with a sync interface of their own.
SYNC_BACKENDS = [b for b in BACKENDS if not b.endswith("-aio")]
#: Recovers in well under a second.
FAST = AdaptiveRate(beta=0.5, scale=50.0, probe_time=1.0)

Bucket = TokenBucket | RedisTokenBucket | LoopBucket
Make = Callable[..., Bucket]


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, bucket_key: str) -> Iterator[Make]:
    """A factory of buckets of one backend: ``make(rate=..., capacity=..., adaptive=...)``."""
    made: list[RedisTokenBucket | LoopBucket] = []
    backend = request.param
    if backend in ("redis", "redis-aio"):
        url = request.getfixturevalue("redis_server").url
    elif backend.startswith("redis-cluster"):
        url = request.getfixturevalue("redis_cluster").url
    elif backend.startswith("sentinel"):
        url = request.getfixturevalue("redis_sentinel").url  # redis+sentinel://...
    elif backend.startswith("tls"):
        url = request.getfixturevalue("redis_tls").url()  # rediss://, as the ACL user
    elif backend.startswith("valkey"):
        url = request.getfixturevalue("valkey_server").url.replace("redis://", "valkey://")  # valkey-py's client
    clients: list[Any] = []

    def factory(**kwargs: Any) -> Bucket:
        kwargs.setdefault("rate", 10)
        kwargs.update(key=bucket_key, timeout=1.0, on_failure="fail")
        bucket: RedisTokenBucket | LoopBucket
        if backend == "local":
            # The contract shared with Redis is its even schedule (burst 1 unless
            # a capacity is given); the local bucket's window-shaped schedule and
            # learned bursts are pinned in test_windows.py and test_token_bucket.py.
            local = {k: v for k, v in kwargs.items() if k in ("rate", "capacity", "adaptive", "limits")}
            local.setdefault("capacity", 1)
            return TokenBucket(**local)
        if backend in ("redis", "sentinel", "tls", "valkey"):
            bucket = RedisTokenBucket.from_url(url, **kwargs)
        elif backend in ("redis-aio", "tls-aio"):
            bucket = LoopBucket(
                lambda: redis.asyncio.Redis.from_url(url),
                lambda client: AsyncRedisTokenBucket(client, **kwargs),
            )
        elif backend == "valkey-aio":
            import valkey.asyncio

            bucket = LoopBucket(
                lambda: valkey.asyncio.Valkey.from_url(url),
                lambda client: AsyncRedisTokenBucket(client, **kwargs),
            )
        elif backend == "sentinel-aio":
            bucket = LoopBucket(
                lambda: redis.asyncio.sentinel.Sentinel(redis_sentinel_addresses(url)),
                lambda client: AsyncRedisTokenBucket(client, service_name="mymaster", **kwargs),
            )
        elif backend == "redis-cluster":
            client = redis.cluster.RedisCluster.from_url(url)
            clients.append(client)
            bucket = RedisTokenBucket(client, **kwargs)
        else:
            bucket = LoopBucket(
                lambda: redis.asyncio.cluster.RedisCluster.from_url(url),
                lambda client: AsyncRedisTokenBucket(client, **kwargs),
            )
        made.append(bucket)
        return bucket

    yield factory
    for bucket in made:
        bucket.close()
    for client in clients:
        client.close()


def redis_sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The sentinels a ``redis+sentinel://`` URL names (to build a Sentinel object, not a URL)."""
    hosts = url.split("://", 1)[1].split("/", 1)[0]
    return [(host, int(port)) for host, port in (item.rsplit(":", 1) for item in hosts.split(","))]


def reserve(bucket: Bucket, tokens: float = 1, **kwargs: Any) -> Any:
    reservation = bucket.reserve(tokens, **kwargs)
    assert reservation is not None
    return reservation


def _admitted(bucket: Bucket, *, threads: int, seconds: float) -> list[float]:
    """When each call went, from ``threads`` threads reserving and sleeping for ``seconds``."""
    end = time.monotonic() + seconds
    admitted: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        while (r := bucket.reserve(max_wait=max(end - time.monotonic(), 0))) is not None:
            time.sleep(r.delay)
            with lock:
                admitted.append(time.monotonic())

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(15)
    return admitted


def test_the_rate_holds_over_a_window_for_many_threads(make: Make) -> None:
    bucket, rate, window = make(rate=20), 20, 1.5
    admitted = _admitted(bucket, threads=8, seconds=window)
    # Every backend's contract: no second holds more than the rate (+1 for the
    # edge of an even schedule). The local bucket may send a window's worth at
    # once, Redis spaces them evenly; both keep up at least 60 % of the rate.
    assert len(admitted) >= 0.6 * rate * window
    assert most_in_any_window(admitted, 0.9) <= rate + 1


def test_a_limit_holds_over_its_window_for_many_threads(make: Make) -> None:
    limit = Limit(4, 0.6)
    bucket = make(rate=100, limits=[limit])
    admitted = _admitted(bucket, threads=4, seconds=1.0)
    # Four at once, four more once the first have left the window (and no third
    # window begins within the second); the sleeps' jitter is allowed for.
    assert len(admitted) == 2 * limit.count
    assert most_in_any_window(admitted, limit.seconds - 0.05) <= limit.count


def test_a_full_window_holds_new_calls_until_its_oldest_send_leaves(make: Make) -> None:
    # The server says the 2 s window is full (Clarifai's 11003): sends this
    # bucket counted in it leave first. No limit of that window: nothing held.
    bucket = make(rate=100, capacity=10, limits=[Limit(50, 2.0)])
    sent = time.monotonic()
    reserve(bucket)
    time.sleep(0.5)
    assert bucket.hold_window(60.0) is None
    assert reserve(bucket).delay == 0
    held = bucket.hold_window(2.0)
    assert held is not None
    # The asyncio bucket answers before Redis does: the longest the hold can last.
    assert 1.2 < held <= 2.0 * 65 / 64 + 0.05
    left = 2.0 - (time.monotonic() - sent)
    assert reserve(bucket).delay == pytest.approx(left, abs=0.1)  # held to the first send's leaving
    assert bucket.reserve(max_wait=0.5) is None


def test_available_counts_the_rate_and_every_limit(make: Make) -> None:
    bucket = make(rate=100, capacity=10, limits=[Limit(3, 30.0)])
    assert bucket.available() == pytest.approx(3, abs=0.2)
    reserve(bucket)
    reserve(bucket)
    assert bucket.available() == pytest.approx(1, abs=0.2)
    reserve(bucket)
    assert bucket.available() <= 0.01


def test_a_cut_scales_the_limits_counts(make: Make) -> None:
    bucket = make(rate=100, capacity=10, limits=[Limit(10, 30.0)])
    bucket.set_effective_rate(50)
    assert bucket.available() == pytest.approx(5, abs=0.2)
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]


def test_reservations_are_served_in_order_one_interval_apart(make: Make) -> None:
    bucket = make(rate=2)
    reservations = [reserve(bucket) for _ in range(5)]
    delays = [r.delay for r in reservations]
    assert delays[0] == 0
    gaps = [b - a for a, b in itertools.pairwise(delays)]
    assert all(0.3 < gap < 0.51 for gap in gaps), gaps


def test_a_wait_longer_than_max_wait_takes_nothing(make: Make) -> None:
    bucket = make(rate=1)
    reserve(bucket)
    assert bucket.reserve(max_wait=0.5) is None
    assert not bucket.try_acquire()
    assert reserve(bucket).delay == pytest.approx(1, abs=0.3)  # the refusals took nothing


def test_cancelling_the_tail_gives_its_tokens_back(make: Make) -> None:
    bucket = make(rate=1)
    reserve(bucket)
    second = reserve(bucket)
    second.cancel()
    second.cancel()  # idempotent
    assert reserve(bucket).delay == pytest.approx(second.delay, abs=0.3)


def test_the_rate_can_change_live(make: Make) -> None:
    bucket = make(rate=1)
    reserve(bucket)
    reserve(bucket)
    bucket.rate = 4
    a, b = reserve(bucket), reserve(bucket)
    assert b.delay - a.delay == pytest.approx(0.25, abs=0.1)
    # The queued caller keeps its slot (1 s away); the next follows it at the new rate.
    assert a.delay == pytest.approx(1.25, abs=0.2)
    assert bucket.rate == bucket.effective_rate == 4


@pytest.mark.parametrize("make", SYNC_BACKENDS, indirect=True)  # the sync interceptor takes a sync bucket
def test_a_cut_re_spaces_the_calls_an_interceptor_has_waiting(make: Make, echo_server: Any) -> None:
    # Six calls queued at 20/s (0.25 s in all); a cut to 5/s spreads them over about 1 s.
    bucket = make(rate=20)
    interceptor = ThrottlingInterceptor(bucket, throttle=ECHO_POLICY)
    channel = ThrottledChannel(grpc.insecure_channel(echo_server.target), interceptor)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = echo_pb2_grpc.EchoStub(channel)
    futures = [stub.Unary.future(echo_pb2.EchoRequest(text=f"{i}:ok")) for i in range(6)]
    bucket.set_effective_rate(5)
    for future in futures:
        future.result(timeout=10)
    channel.close()
    arrivals = echo_server.script.arrivals()
    assert len(arrivals) == 6 and arrivals[-1] - arrivals[0] > 0.7


def test_a_throttle_signal_lowers_the_effective_rate_once_per_round(make: Make) -> None:
    bucket = make(rate=10)
    first = reserve(bucket)
    for _ in range(5):  # sent together, throttled together: one signal
        bucket.record_throttle(first.round)
    assert bucket.effective_rate == pytest.approx(7.0) and bucket.rate == 10
    a, b = reserve(bucket), reserve(bucket)
    assert b.delay - a.delay == pytest.approx(1 / 7, abs=0.05)
    assert b.round == bucket.round > first.round
    bucket.record_throttle(b.round)
    assert bucket.effective_rate == pytest.approx(4.9)
    bucket.set_effective_rate(50)  # never above the configured rate
    assert bucket.effective_rate == 10


def test_successes_recover_the_configured_rate(make: Make) -> None:
    bucket = make(rate=10, adaptive=FAST)
    bucket.record_throttle(bucket.round)
    assert bucket.effective_rate == pytest.approx(5.0)
    seen = [bucket.effective_rate]
    deadline = time.monotonic() + 10
    while bucket.effective_rate < 10:
        assert time.monotonic() < deadline, seen
        time.sleep(0.01)
        bucket.record_success()
        seen.append(bucket.effective_rate)
    assert seen == sorted(seen) and seen[-1] == 10


def test_capacity_allows_a_burst(make: Make) -> None:
    bucket = make(rate=1, capacity=3)
    assert bucket.capacity == 3
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bucket.available() == pytest.approx(0, abs=0.3)


@pytest.mark.parametrize("tokens", [0, -1, 3, math.nan, math.inf, "1"])
def test_bad_token_counts_raise_value_error(make: Make, tokens: Any) -> None:
    bucket = make(rate=1, capacity=2)
    with pytest.raises(ValueError, match="tokens"):
        bucket.reserve(tokens)
    with pytest.raises(ValueError, match="tokens"):
        bucket.try_acquire(tokens)


def test_without_redis_server_the_redis_rows_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_server_module, "redis_server_binary", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        redis_server_module.require_redis()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="redis-server"):
        redis_server_module.require_redis()
