"""RedisTokenBucket (sync) against a real redis-server: schedule, sharing, failures."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grpc_throttle
from grpc_throttle.buckets import Bucket, _gcra
from grpc_throttle.buckets._breaker import Breaker
from grpc_throttle.buckets._lease import LeasePool, Slot
from grpc_throttle.buckets._redis_config import SCRIPTS, acl_rules
from grpc_throttle.buckets.local import Reservation
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket, hashed_key
from grpc_throttle.errors import BucketUnavailableError
from tests.clock import VirtualClock
from tests.redis_server import RedisServer

Make = Callable[..., RedisTokenBucket]


@pytest.fixture
def make(redis_server: RedisServer, bucket_key: str) -> Iterator[Make]:
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
        bucket.close()


def reserve(bucket: RedisTokenBucket, tokens: float = 1, **kwargs: Any) -> RedisReservation:
    reservation = bucket.reserve(tokens, **kwargs)
    assert isinstance(reservation, RedisReservation)
    return reservation


# -- the schedule --------------------------------------------------------


def test_rate_is_held_across_threads(make: Make) -> None:
    bucket = make(rate=20)
    end = time.monotonic() + 1.5
    admitted: list[float] = []

    def worker() -> None:
        while (r := bucket.reserve(max_wait=max(end - time.monotonic(), 0))) is not None:
            time.sleep(r.delay)
            admitted.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert 0.6 * 30 <= len(admitted) <= 30 + 1 + 2


def test_reservations_are_fifo_one_interval_apart(make: Make) -> None:
    bucket = make(rate=1)  # nobody waits here: slow rates keep noise small next to an interval
    delays = [reserve(bucket).delay for _ in range(5)]
    assert delays[0] == 0
    gaps = [b - a for a, b in itertools.pairwise(delays)]
    assert all(0.7 < gap < 1.01 for gap in gaps), gaps


def test_a_wait_longer_than_max_wait_takes_nothing(make: Make) -> None:
    bucket = make(rate=1)
    reserve(bucket)
    assert bucket.reserve(max_wait=0.5) is None
    assert not bucket.try_acquire()
    assert reserve(bucket).delay == pytest.approx(1, abs=0.3)  # the refusals took nothing


def test_capacity_allows_a_burst(make: Make) -> None:
    bucket = make(rate=1, capacity=3)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bucket.available() == pytest.approx(0, abs=0.3)


def test_cancel_at_the_tail_gives_the_tokens_back(make: Make) -> None:
    bucket = make(rate=1)
    reserve(bucket)
    second = reserve(bucket)
    second.cancel()
    second.cancel()  # idempotent
    assert reserve(bucket).delay == pytest.approx(second.delay, abs=0.3)


def test_cancel_behind_a_later_reservation_gives_back_nothing_until_the_tail_is_cancelled(
    make: Make,
) -> None:
    bucket = make(rate=1, capacity=3)
    reserve(bucket, 3)
    big = reserve(bucket, 3)  # due in 3 s
    small = reserve(bucket, 1)  # due in 4 s
    big.cancel()  # a hole: a newcomer must not overtake small
    assert bucket.available() == pytest.approx(-4, abs=0.3)
    small.cancel()  # the tail, then the hole behind it
    assert bucket.available() == pytest.approx(0, abs=0.3)
    assert reserve(bucket).delay == pytest.approx(1, abs=0.3)


def test_cancelling_a_queue_in_creation_order_gives_it_all_back(make: Make) -> None:
    bucket = make(rate=10)
    queued = [reserve(bucket) for _ in range(100)]
    for reservation in queued:  # the natural order of a mass cancel: the tail comes last
        reservation.cancel()
    assert bucket.available() >= 0  # only the first, due at once, is kept
    assert reserve(bucket).delay <= 0.2


def test_a_cut_re_spaces_the_waiters_holding_redis_slots(make: Make) -> None:
    bucket = make(rate=20)
    queued = [reserve(bucket) for _ in range(5)]  # due in 0, 0.05, ... 0.2 s
    bucket.set_effective_rate(5)  # four times slower: the queue is stretched in Redis
    left = [r.due_in() for r in queued]
    assert left[0] == 0
    assert left == sorted(left)  # still first come, first served
    assert left[4] == pytest.approx(0.8, abs=0.15)
    assert left[1] == pytest.approx(0.2, abs=0.1)
    # The next caller comes one new interval (0.2 s) after the last of them.
    assert reserve(bucket).delay == pytest.approx(1.0, abs=0.15)


def test_a_cut_by_another_process_reaches_waiters_with_the_next_reply(make: Make) -> None:
    bucket, other = make(rate=20), make(rate=20)
    queued = [reserve(bucket) for _ in range(4)]  # due in up to 0.15 s
    other.set_effective_rate(5)
    assert queued[3].due_in() == pytest.approx(0.15, abs=0.1)  # not seen here yet: unchanged
    reserve(bucket)  # its reply carries the new rate
    assert queued[3].due_in() == pytest.approx(0.6, abs=0.15)


def test_a_waiter_re_spaced_at_the_tail_can_still_give_its_slot_back(make: Make) -> None:
    bucket = make(rate=20)
    queued = [reserve(bucket) for _ in range(3)]
    bucket.set_effective_rate(5)
    assert queued[2].due_in() > 0.2  # carried into the new epoch
    queued[2].cancel()
    assert reserve(bucket).delay == pytest.approx(queued[2].ready_at - time.monotonic(), abs=0.1)


def test_acquire_sleeps_until_the_re_spaced_slot(make: Make) -> None:
    bucket = make(rate=20)
    for _ in range(3):
        reserve(bucket)
    done: list[float] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: done.append(bucket.acquire() and time.monotonic() - started))
    worker.start()
    time.sleep(0.03)
    bucket.set_effective_rate(2)  # ten times slower: the fourth slot moves to about 1.3 s
    worker.join(timeout=10)
    assert done and done[0] > 0.8


def test_holes_of_an_older_rate_are_never_given_back(make: Make, redis_client: Any) -> None:
    bucket = make(rate=10)
    first = [reserve(bucket) for _ in range(5)]
    for reservation in first[1:4]:
        reservation.cancel()  # holes, at the 10/s schedule
    bucket.set_effective_rate(5)  # every slot moves
    later = [reserve(bucket) for _ in range(3)]
    for reservation in reversed(later):
        reservation.cancel()  # back to the rescaled tail of first, no further
    assert redis_client.exists(bucket.key + ":holes") == 0
    # The cut stretched the five queued slots to the new rate (tail 1.0 s
    # away instead of 0.5 s): 1.0 s of debt at 5/s is 5 tokens, 4 queued.
    assert bucket.available() == pytest.approx(-4, abs=0.5)


def test_more_concurrent_calls_than_a_default_pool_stay_shared(
    make: Make,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="grpc_throttle.buckets.redis")
    bucket = make(rate=1000, capacity=1000)
    barrier = threading.Barrier(120)
    kinds: list[type] = []

    def call() -> None:
        barrier.wait()
        reservation = bucket.reserve()
        for _ in range(5):
            reservation = bucket.reserve()
        kinds.append(type(reservation))

    threads = [threading.Thread(target=call) for _ in range(120)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bucket.shared and set(kinds) == {RedisReservation}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_due_reservation_cannot_be_cancelled(make: Make) -> None:
    bucket = make(rate=1)
    reserve(bucket).cancel()  # due at once
    assert reserve(bucket).delay == pytest.approx(1, abs=0.3)


def test_rate_can_change_live(make: Make) -> None:
    bucket = make(rate=1)
    reserve(bucket)
    reserve(bucket)
    bucket.rate = 4
    a, b = reserve(bucket), reserve(bucket)
    assert b.delay - a.delay == pytest.approx(0.25, abs=0.1)
    # The queued caller keeps its slot (1 s away); the next follows it at the new rate.
    assert a.delay == pytest.approx(1.25, abs=0.2)
    assert bucket.rate == bucket.effective_rate == 4


def test_effective_rate_is_shared_between_buckets_on_one_key(make: Make) -> None:
    one, other = make(rate=2), make(rate=2)
    one.set_effective_rate(0.5)
    assert one.effective_rate == 0.5
    a, b = reserve(other), reserve(other)
    assert b.delay - a.delay == pytest.approx(2, abs=0.3)
    assert other.effective_rate == 0.5 and other.rate == 2
    one.set_effective_rate(1000)  # never above the configured rate
    assert one.effective_rate == 2
    other.available()
    assert other.effective_rate == 2


@pytest.mark.parametrize("lease", [1, 4])
def test_skewed_local_clocks_still_share_one_schedule(make: Make, lease: int) -> None:
    ahead = make(rate=2, lease=lease, clock=lambda: time.monotonic() + 30)
    behind = make(rate=2, lease=lease, clock=lambda: time.monotonic() - 30)
    ready = []
    for i in range(8):
        reservation = (ahead if i % 2 else behind).reserve()
        assert reservation is not None
        ready.append(time.monotonic() + reservation.delay)
    ready.sort()
    gaps = [(b - a) / 0.5 for a, b in itertools.pairwise(ready)]  # in intervals
    # Whole intervals apart: one schedule. Leased slots still in a pool leave gaps.
    assert all(round(gap) >= 1 and abs(gap - round(gap)) < 0.4 for gap in gaps), gaps
    if lease == 1:
        assert all(round(gap) == 1 for gap in gaps), gaps


WORKER = r"""
import sys, threading, time
from grpc_throttle.buckets.redis import RedisTokenBucket

url, key, rate, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
bucket = RedisTokenBucket.from_url(url, key=key, rate=rate, on_failure="fail", timeout=5.0)
bucket.available()  # connected and the scripts loaded
print("ready", flush=True)
start = float(sys.stdin.readline())  # every worker starts at the same moment
counts = [0] * 4

def run(i):
    while time.time() < start:
        time.sleep(0.001)
    end = start + duration
    while (r := bucket.reserve(max_wait=max(end - time.time(), 0))) is not None:
        time.sleep(r.delay)
        counts[i] += 1

threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(counts))
"""


def test_four_processes_of_four_threads_hold_the_combined_rate(
    redis_server: RedisServer,
    bucket_key: str,
) -> None:
    rate, duration = 30.0, 2.0
    src = str(Path(grpc_throttle.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = [redis_server.url, bucket_key, str(rate), str(duration)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        start = f"{time.time() + 0.5}\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(start)
            worker.stdin.flush()
        counts = [int(worker.communicate(timeout=60)[0]) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert all(w.returncode == 0 for w in workers)
    expected = rate * duration
    assert 0.6 * expected <= sum(counts) <= expected + 1 + 0.1 * expected, counts
    assert min(counts) > 0, counts  # every process got its turns


def test_lease_takes_several_slots_per_round_trip_and_holds_the_rate(
    make: Make,
    redis_client: Any,
) -> None:
    bucket = make(rate=100, lease=8)
    before = redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    end, count = time.monotonic() + 1.0, 0
    while (r := bucket.reserve(max_wait=max(end - time.monotonic(), 0))) is not None:
        time.sleep(r.delay)
        count += 1
    trips = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"] - before
    assert 50 <= count <= 100 + 1 + 8
    assert trips < 0.6 * count, (trips, count)


# -- Redis itself ---------------------------------------------------------


def test_keys_carry_a_ttl_and_a_namespace(make: Make, redis_client: Any) -> None:
    bucket = make(rate=10, key="ttl-check")
    reserve(bucket)
    assert bucket.key == "grpc-throttle:ttl-check"
    assert 0 < redis_client.pttl(bucket.key) <= 2 * 100 + 120_000 + 1000
    bucket.set_effective_rate(5)
    assert redis_client.pttl(bucket.key) > 0
    assert set(redis_client.hgetall(bucket.key)) == {b"tat", b"iv", b"ep", b"eff", b"exp", b"rs", b"mr", b"mc"}


def _replication_id(client: Any, field: str = "master_replid") -> bytes:
    """A field of INFO replication as Redis writes it (redis-py's info() reads 000... as 0)."""
    return bytes(client.eval(f"return string.match(redis.call('INFO', 'replication'), '{field}:(%w+)')", 0))


def _written_by(client: Any, key: str, replication_id: bytes | str) -> None:
    """Make ``key`` look last written by the master ``replication_id``, its ID last read long ago."""
    client.hset(key, "mr", replication_id)
    client.hdel(key, "mc")


def test_a_key_last_written_by_another_master_holds_its_schedule_once(make: Make, redis_client: Any) -> None:
    # What a failover looks like to the scripts: the key's hash names the ID
    # the master had before it was promoted (its master_replid2).
    bucket = make(rate=1000)
    reserve(bucket)
    assert redis_client.hget(bucket.key, "mr") == _replication_id(redis_client)
    _written_by(redis_client, bucket.key, _replication_id(redis_client, "master_replid2"))
    held = reserve(bucket)
    assert 1.0 <= held.delay <= 1.2  # MOVE_HOLD (1.1 s) past the schedule
    after = reserve(bucket)
    assert after.ready_at - held.ready_at == pytest.approx(0.001, abs=0.01)  # once: then the rate again
    assert redis_client.hget(bucket.key, "mr") == _replication_id(redis_client)


def test_after_a_failovers_hold_the_burst_starts_empty(make: Make, redis_client: Any) -> None:
    # Held but full, capacity sends would go at once when the hold ends, beside
    # the old master's last ones: the bucket is taken as empty, then held.
    bucket = make(rate=10, capacity=5)
    reserve(bucket)
    _written_by(redis_client, bucket.key, _replication_id(redis_client, "master_replid2"))
    delays = [reserve(bucket).delay for _ in range(3)]
    assert delays[0] >= 1.1
    assert all(b - a == pytest.approx(0.1, abs=0.02) for a, b in itertools.pairwise(delays)), delays


def test_a_key_from_before_replication_ids_were_kept_or_moved_by_migrate_is_not_held(
    make: Make, redis_client: Any
) -> None:
    bucket = make(rate=1000)
    reserve(bucket)
    redis_client.hdel(bucket.key, "mr", "mc")  # a rolling upgrade: written by 0.2's scripts
    assert reserve(bucket).delay < 0.5
    assert redis_client.hexists(bucket.key, "mr")
    _written_by(redis_client, bucket.key, "another-masters-id")  # resharded from another master
    assert reserve(bucket).delay < 0.5
    assert redis_client.hget(bucket.key, "mr") == _replication_id(redis_client)


def test_a_refused_reservation_still_records_the_hold_so_it_does_not_slide(make: Make, redis_client: Any) -> None:
    bucket = make(rate=1000)
    reserve(bucket)
    _written_by(redis_client, bucket.key, _replication_id(redis_client, "master_replid2"))
    assert bucket.reserve(max_wait=0) is None  # held: refused, but the hold is written
    time.sleep(0.3)
    assert 0.6 <= reserve(bucket).delay <= 0.9  # counted from the first call, not this one


def test_the_master_is_checked_once_per_50_ms_per_key(make: Make, redis_client: Any) -> None:
    # INFO costs the server a third of a reserve: read when the last read is 50 ms old.
    bucket = make(rate=1000)
    reserve(bucket)
    redis_client.hset(bucket.key, "mr", _replication_id(redis_client, "master_replid2"))  # "mc" just written
    assert reserve(bucket).delay < 0.5  # not read again yet
    time.sleep(0.06)
    assert reserve(bucket).delay >= 1.0  # read: held


def test_an_acl_user_without_info_still_paces_but_is_not_held(
    make: Make, redis_client: Any, redis_server: RedisServer
) -> None:
    # Users set up with 0.2's recipe (before +info): the scripts must still run.
    rules = acl_rules().replace(" +info", "")
    assert "+info" not in rules
    redis_client.execute_command("ACL", "SETUSER", "no-info", "on", ">secret", *rules.split())
    try:
        url = redis_server.url.replace("redis://", "redis://no-info:secret@")
        bucket = RedisTokenBucket.from_url(url, key=make().key.removeprefix("grpc-throttle:"), rate=1000, timeout=1.0)
        try:
            assert isinstance(bucket.reserve(), RedisReservation)
            assert isinstance(bucket.reserve(), RedisReservation)
            assert not redis_client.hexists(bucket.key, "mr")
        finally:
            bucket.close()
    finally:
        redis_client.execute_command("ACL", "DELUSER", "no-info")


def test_script_cache_flush_reloads_by_itself(make: Make, redis_client: Any) -> None:
    bucket = make(rate=1000)
    reserve(bucket)
    redis_client.script_flush()
    reserve(bucket)
    bucket.set_effective_rate(500)
    assert bucket.available() > 0
    assert bucket.shared


@pytest.mark.parametrize("on_failure", ["local", "fail"])
def test_a_key_of_the_wrong_type_is_a_clear_error(
    make: Make,
    redis_client: Any,
    on_failure: str,
) -> None:
    bucket = make(on_failure=on_failure)
    redis_client.rpush(bucket.key, "x")
    with pytest.raises(BucketUnavailableError, match=r"holds a list, not a grpc-throttle bucket"):
        bucket.reserve()
    redis_client.delete(bucket.key)
    redis_client.set(bucket.key, "x")
    with pytest.raises(BucketUnavailableError, match="holds a string"):
        bucket.available()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 0}, "rate must be a number in"),
        ({"rate": float("nan")}, "rate"),
        ({"rate": float("inf")}, "rate"),
        ({"rate": "10"}, "rate must be a number"),
        ({"capacity": 0.5}, "capacity must be a number in \\[1,"),
        ({"on_failure": "retry"}, "on_failure must be one of"),
        ({"key": ""}, "key must be a non-empty str"),
        ({"key": 42}, "key must be a non-empty str"),
        ({"local_share": 2}, "local_share"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": 1e10}, r"timeout must be a number in \(0, 86400\], got 10000000000\.0"),  # no socket takes it
        ({"lease": 0}, "lease"),
        ({"lease": 10**6}, r"lease must be a whole number in \[1, 10000\]"),
        ({"rate": 1e-9}, r"rate must be a number in \[4e-09, 1e\+12\]"),  # its fallback's 1/4 would be too slow
        ({"rate": 1e-9, "local_share": 1.0}, None),
        ({"capacity": 1e12 + 1}, r"capacity must be a number in \[1, 1e\+12\]"),
    ],
)
def test_bad_arguments_name_what_is_wrong(kwargs: dict[str, Any], match: str | None) -> None:
    if match is None:  # the edge of the range is accepted
        RedisTokenBucket(redis.Redis(), **{"key": "k", "rate": 10, **kwargs}).close()
        return
    with pytest.raises(ValueError, match=match):
        RedisTokenBucket(redis.Redis(), **{"key": "k", "rate": 10, **kwargs})


def test_a_rate_set_later_is_held_to_the_same_range() -> None:
    bucket = RedisTokenBucket(redis.Redis(), key="k", rate=10)
    with pytest.raises(ValueError, match=r"rate must be a number in \[4e-09, 1e\+12\].*got 1e-09"):
        bucket.rate = 1e-9
    with pytest.raises(ValueError, match=r"effective rate must be a number in \[4e-09"):
        bucket.set_effective_rate(1e-9)
    assert bucket.rate == 10
    bucket.close()


def test_the_extremes_of_every_range_work_against_redis(make: Make, redis_client: Any) -> None:
    # The largest burst at the slowest rate: the key's TTL would be ~1e24 ms, past what PEXPIRE takes.
    bucket = make(rate=4e-9, capacity=1e12, timeout=86_400, lease=10_000, cooldown=1e12)
    assert isinstance(bucket.reserve(), RedisReservation)
    assert isinstance(bucket.reserve(max_wait=0), RedisReservation)  # a burst of 1e12: still tokens
    assert 0 < redis_client.pttl(bucket.key) <= 10**15
    bucket.set_effective_rate(4e-9)
    assert bucket.available() > 0 and bucket.shared
    fast = make(rate=1e12, capacity=1, key=bucket.key + "-fast")
    assert all(isinstance(fast.reserve(), RedisReservation) for _ in range(3))
    assert redis_client.pttl(fast.key) > 0


def test_a_client_that_is_not_a_sync_redis_client_is_refused() -> None:
    with pytest.raises(ValueError, match=r"client must be a redis\.Redis, .* got str"):
        RedisTokenBucket("redis://localhost", key="k", rate=1)
    with pytest.raises(ValueError, match="redis_aio"):
        RedisTokenBucket(redis.asyncio.Redis(), key="k", rate=1)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://localhost:6379", "invalid Redis URL 'http://localhost:6379'"),
        ("redis://localhost:notaport", "Port could not be cast"),
        ("redis://:hunter2@localhost:99999", r"invalid Redis URL 'redis://\*\*\*@localhost"),
        ("", "invalid Redis URL"),
    ],
)
def test_bad_urls_are_clear_errors_without_secrets(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        RedisTokenBucket.from_url(url, key="k", rate=1)
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None


def test_bad_token_counts(make: Make) -> None:
    bucket = make(capacity=2)
    for tokens in (0, -1, 3, float("nan")):
        with pytest.raises(ValueError, match="tokens"):
            bucket.reserve(tokens)
    with pytest.raises(ValueError, match="max_wait"):
        bucket.reserve(max_wait=-1)


def test_hashed_key_hides_the_secret() -> None:
    key = hashed_key("sk-secret-token")
    assert key == hashed_key(b"sk-secret-token") != hashed_key("other")
    assert "secret" not in key and key.startswith("h:")
    with pytest.raises(ValueError):
        hashed_key("")


def test_repr_shows_live_state(make: Make) -> None:
    bucket = make(rate=10, lease=4)
    bucket.set_effective_rate(5)
    assert repr(bucket) == (f"<RedisTokenBucket key={bucket.key!r} rate=5/10/s capacity=1 lease=4 shared>")


# -- failures -------------------------------------------------------------


@pytest.mark.parametrize("on_failure", ["local", "allow", "fail"])
def test_redis_killed_then_restarted(
    make: Make,
    own_redis_server: RedisServer,
    on_failure: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="grpc_throttle.buckets.redis")
    bucket = make(own_redis_server, rate=50, on_failure=on_failure, cooldown=0.2)
    reserve(bucket)
    own_redis_server.stop()
    for _ in range(20):
        if on_failure == "fail":
            with pytest.raises(BucketUnavailableError, match=r"unavailable.*on_failure='fail'"):
                bucket.reserve()
        else:
            reservation = bucket.reserve()
            assert reservation is not None
            assert not isinstance(reservation, RedisReservation)
            if on_failure == "local":
                assert isinstance(reservation, Reservation)
            else:
                assert reservation.delay == 0
        time.sleep(0.02)
    assert not bucket.shared
    own_redis_server.start()
    deadline = time.monotonic() + 10
    while not bucket.shared:
        assert time.monotonic() < deadline, "never went back to Redis"
        time.sleep(0.05)
        with contextlib.suppress(BucketUnavailableError):
            bucket.reserve()
    reserve(bucket)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in messages] == [logging.WARNING, logging.INFO], messages
    assert "unavailable" in messages[0][1] and "reachable again" in messages[1][1]


def test_the_fallback_and_redis_hand_over_without_overlapping_slots(
    make: Make,
    own_redis_server: RedisServer,
) -> None:
    bucket = make(own_redis_server, rate=10, local_share=0.5, cooldown=0.2, timeout=0.2)
    last_shared = [reserve(bucket) for _ in range(5)][-1]
    own_redis_server.stop()
    local = bucket.reserve()
    assert isinstance(local, Reservation)
    assert local.ready_at >= last_shared.ready_at + 0.19  # after the Redis slots still queued
    queued = [bucket.reserve() for _ in range(3)]
    last_local = queued[-1]
    assert isinstance(last_local, Reservation)
    own_redis_server.start()  # empty: a new schedule
    time.sleep(0.25)
    shared = bucket.reserve()
    while not isinstance(shared, RedisReservation):
        time.sleep(0.05)
        shared = bucket.reserve()
    assert shared.ready_at >= last_local.ready_at + 0.09  # after the fallback's slots


def test_a_frozen_redis_costs_one_timeout_then_the_breaker_skips_it(
    make: Make,
    own_redis_server: RedisServer,
) -> None:
    bucket = make(own_redis_server, rate=1000, timeout=0.5, cooldown=0.3)
    reserve(bucket)
    own_redis_server.pause()
    try:
        assert isinstance(bucket.reserve(), Reservation)  # after ~timeout
        assert not bucket.shared
        assert isinstance(bucket.reserve(), Reservation)  # breaker open: no wait
    finally:
        own_redis_server.resume()
    deadline = time.monotonic() + 10
    while not isinstance(bucket.reserve(), RedisReservation):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert bucket.shared


def test_a_down_redis_with_fail_policy_raises_from_every_operation(
    make: Make,
    own_redis_server: RedisServer,
) -> None:
    bucket = make(own_redis_server, on_failure="fail")
    own_redis_server.stop()
    for operation in (bucket.reserve, bucket.try_acquire, bucket.available):
        with pytest.raises(BucketUnavailableError):
            operation()
    with pytest.raises(BucketUnavailableError):
        bucket.set_effective_rate(5)


# -- the Lua arithmetic is _gcra's -----------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rate=st.sampled_from([1.0, 8.0, 50.0, 1000.0]),
    capacity=st.integers(1, 4),
    steps=st.lists(st.tuples(st.integers(1, 4), st.sampled_from([-1, 0, 100_000, 2_000_000]))),
)
def test_the_reserve_script_does_the_gcra_arithmetic(
    redis_client: Any,
    rate: float,
    capacity: int,
    steps: list[tuple[int, int]],
) -> None:
    script = redis_client.register_script(SCRIPTS["reserve"])
    key = f"grpc-throttle:gcra-{time.monotonic_ns()}"
    tat = -1e18
    for tokens, max_wait in steps:
        tokens = min(tokens, capacity)
        args = [repr(rate), str(capacity), str(tokens), str(max_wait), "0", ""]
        granted, wait, start, iv, _, ahead = script(keys=[key], args=args).split()
        interval, now = float(iv), float(start) - float(ahead)
        expected = _gcra.reserve(tat, now, interval, capacity, tokens, float("inf") if max_wait < 0 else max_wait)
        assert (granted == b"1") == (expected is not None)
        if expected is not None:
            tat, expected_start, expected_wait = expected
            assert float(start) == pytest.approx(expected_start)
            assert float(wait) == pytest.approx(expected_wait, abs=1e-3)
    redis_client.delete(key)


# -- the pure parts: breaker and lease pool, on a virtual clock -------------


def test_breaker_opens_on_failure_probes_once_after_cooldown_and_logs_each_change_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    logger = logging.getLogger("test.breaker")
    caplog.set_level(logging.INFO, logger="test.breaker")
    breaker = Breaker("redis key 'k'", 2.0, clock, logger, "local")
    assert breaker.allow() and breaker.closed
    breaker.failed(ConnectionError("refused"))
    assert not breaker.closed and not breaker.allow()
    clock.advance(2.0)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failed(ConnectionError("refused"))  # still down: open again, not logged again
    clock.advance(1.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.abandoned()  # a cancelled probe lets the next call probe
    assert breaker.allow()
    breaker.succeeded()
    breaker.succeeded()
    assert breaker.closed and breaker.allow()
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "ConnectionError: refused" in caplog.records[0].getMessage()


def test_lease_pool_grows_while_calls_are_fast_and_resets_when_they_are_not() -> None:
    pool = LeasePool(8)
    assert pool.take(0.0, math.inf) is None and pool.extra() == 0
    pool.fill([], 0.01)
    sizes = []
    for step in range(5):
        assert pool.take(step * 0.01, math.inf) is None
        sizes.append(pool.extra() + 1)
    assert sizes == [2, 4, 8, 8, 8]
    assert pool.take(1.0, math.inf) is None  # a slow call
    assert pool.extra() == 0


def test_lease_pool_hands_out_slots_in_order_and_drops_expired_ones() -> None:
    pool = LeasePool(4)
    pool.fill([Slot(1.0, 1.5), Slot(2.0, 2.5), Slot(3.0, 3.5)], 1.0)
    assert pool.take(0.0, 0.5) is None and pool.too_late(0.0, 0.5)
    first = pool.take(0.0, 1.0)
    assert first == Slot(1.0, 1.5)
    pool.put_back(first, 0.5)
    assert pool.take(2.2, 0.0) == Slot(2.0, 2.5)  # the first one expired at 1.5
    assert len(pool) == 1
    pool.put_back(Slot(0.0, 0.1), 1.0)  # expired: not kept
    assert len(pool) == 1


def test_both_buckets_satisfy_the_bucket_protocols(make: Make) -> None:
    bucket: Bucket = make()
    assert isinstance(bucket, Bucket)
