"""``limits=`` on the Redis buckets against a real redis-server: quota windows shared in Lua.

Times here are read on Redis's clock (the scripts' replies, a reservation's
place), not the test's: the property is that no window of ``seconds`` holds
more than ``count`` sends on the clock the schedule runs on.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_throttle import Limit
from grpc_throttle.buckets import _redis_windows
from grpc_throttle.buckets._redis_config import SCRIPTS, Settings
from grpc_throttle.buckets._redis_handoff import MAX_UNREPORTED
from grpc_throttle.buckets._redis_windows import MAX_ENTRIES, Ring, earliest, encode
from grpc_throttle.buckets.redis import RedisReservation, RedisTokenBucket
from grpc_throttle.buckets.redis_aio import RedisTokenBucket as AsyncRedisTokenBucket
from tests.arrivals import most_in_any_window
from tests.redis_server import RedisServer

Make = Callable[..., RedisTokenBucket]
#: Redis times come back through float arithmetic: windows are checked 1 us short.
SLACK_US = 1.0


@pytest.fixture
def make(redis_server: RedisServer, bucket_key: str) -> Iterator[Make]:
    made: list[RedisTokenBucket] = []

    def factory(**kwargs: Any) -> RedisTokenBucket:
        kwargs.setdefault("key", bucket_key)
        kwargs.setdefault("timeout", 1.0)
        bucket = RedisTokenBucket.from_url(redis_server.url, **kwargs)
        made.append(bucket)
        return bucket

    yield factory
    for bucket in made:
        bucket.close()


def most_tokens_in_any_window(sends: list[tuple[float, float]], span: float) -> float:
    """The most tokens sent in any window ``(t - span, t]`` of ``(time, tokens)`` pairs."""
    ordered = sorted(sends)
    best, first, total = 0.0, 0, 0.0
    for t, tokens in ordered:
        total += tokens
        while ordered[first][0] <= t - span:
            total -= ordered[first][1]
            first += 1
        best = max(best, total)
    return best


def due_us(reservation: Any) -> float:
    """When a reservation is due, on Redis's clock (microseconds)."""
    assert isinstance(reservation, RedisReservation)
    return reservation._place[2]


def counts(client: Any, key: str) -> dict[str, list[tuple[float, float]]]:
    """The windows hash: per limit, its ``(sub-window, tokens)`` pairs."""
    pairs = {
        field.decode(): value.decode().split(";") for field, value in client.hgetall(key).items() if field != b"hold"
    }
    return {field: [(float(i), float(c)) for i, c in (p.split(":") for p in v if p)] for field, v in pairs.items()}


# -- configuration -------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limit(5, 1.0), "limits must be a list of Limit, got Limit"),
        (5, "limits must be a list of Limit, got 5"),
        ([Limit(5, 1.0), (5, 1.0)], "limits must hold Limit objects, got (5, 1.0)"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(redis_server: RedisServer, limits: Any, message: str) -> None:
    for cls in (RedisTokenBucket, AsyncRedisTokenBucket):
        with pytest.raises(ValueError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)")):
            cls.from_url(redis_server.url, key="k", rate=10, limits=limits)
    with pytest.raises(ValueError, match="count must be a whole number"):
        Limit(0, 1.0)


def test_a_window_shorter_than_64_microseconds_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match=r"^limits: seconds must be at least 6.4e-05 on a Redis bucket"):
        RedisTokenBucket.from_url(redis_server.url, key="k", rate=10, limits=[Limit(5, 1.0), Limit(1, 1e-5)])


def test_the_python_twin_uses_the_scripts_constants() -> None:
    common = SCRIPTS["reserve"]
    for name in ("SUBWINDOWS", "PAST_EDGE"):
        match = re.search(rf"^local {name} = (\S+)", common, re.MULTILINE)
        assert match is not None and float(match.group(1)) == getattr(_redis_windows, name)
    assert re.search(r"^local MAX_ENTRIES = SUBWINDOWS \+ 1$", common, re.MULTILINE)
    assert _redis_windows.MAX_ENTRIES == _redis_windows.SUBWINDOWS + 1


def test_the_limits_are_encoded_once_and_their_counts_share_the_buckets_slot() -> None:
    config = Settings(
        key="team-a",
        capacity=1,
        on_failure="local",
        local_share=0.25,
        timeout=1,
        cooldown=1,
        lease=1,
        limits=[Limit(10_000, 3600), Limit(6, 1.5)],  # type: ignore[arg-type] # a list is accepted
    )
    assert config.limits == (Limit(10_000, 3600), Limit(6, 1.5))
    assert config.limits_arg == "10000:3600000000.0;6:1500000.0"
    assert config.windows_key == "{grpc-throttle:team-a}:windows"
    tagged = Settings(key="t-{a}", capacity=1, on_failure="local", local_share=1, timeout=1, cooldown=1, lease=1)
    assert tagged.windows_key == "grpc-throttle:t-{a}:windows" and tagged.limits_arg == ""


def test_a_bucket_without_limits_keeps_the_plain_arguments(make: Make) -> None:
    plain, limited = make(rate=10), make(rate=10, limits=[Limit(5, 2.0)], key="other")
    assert plain._reserve_args(1.0, math.inf, 0) is plain._plain_args
    assert list(limited._reserve_args(1.0, math.inf, 0))[-2:] == ["", "5:2000000.0"]
    assert "limit=5/2s" in repr(limited)


# -- the script against its Python twin ------------------------------------

#: One step: tokens, and the longest wait in microseconds (-1: none).
WAITS_US = st.sampled_from([-1, 0, 3_000, 20_000, 200_000])
STEPS = st.lists(st.tuples(st.integers(1, 3), WAITS_US), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rate=st.sampled_from([500.0, 2000.0, 1e5]),
    capacity=st.integers(1, 3),
    limits=st.lists(
        st.builds(Limit, st.integers(3, 8), st.sampled_from([0.004, 0.01, 0.03, 0.2])), min_size=1, max_size=2
    ),
    steps=STEPS,
    cut=st.sampled_from([1.0, 0.5, 0.3]),
)
def test_the_reserve_script_places_sends_as_the_python_windows_do_and_no_window_overfills(
    redis_client: Any, rate: float, capacity: int, limits: list[Limit], steps: list[tuple[int, int]], cut: float
) -> None:
    # With cut < 1 the shared rate is set to cut * rate, which scales the counts too.
    script = redis_client.register_script(SCRIPTS["reserve"])
    name = f"limits-{time.monotonic_ns()}"
    keys = [f"grpc-throttle:{name}", f"{{grpc-throttle:{name}}}:windows"]
    rings = [Ring.of(limit, cut) for limit in limits]
    eff = repr(rate * cut) if cut < 1 else ""
    iv, tat = 1e6 / (rate * cut), -math.inf
    sends: list[tuple[float, float]] = []
    written: list[list[tuple[float, float]]] = []
    for tokens, max_wait in steps:
        tokens = min(tokens, capacity)
        args = [repr(rate), str(capacity), str(tokens), str(max_wait), "0", eff, "", encode(limits)]
        granted, wait, start, _, _, ahead = script(keys=keys, args=args).split()
        now = round(float(start) - float(ahead))  # TIME: whole microseconds
        # The Python twin of reserve.lua with limits.
        expected_start = max(tat, now)
        expected_wait = expected_start + tokens * iv - capacity * iv - now  # in reserve.lua's order
        for ring in rings:
            ring.prune(now)
        t = now + max(expected_wait, 0)
        at = earliest(rings, t, tokens)
        if at > t:
            expected_start = max(expected_start, at)
            expected_wait = at - now
        ok = expected_wait <= 1e-3 or max_wait < 0 or expected_wait <= max_wait
        assert (granted == b"1") == ok, (steps, limits)
        if ok:
            tat = expected_start + tokens * iv
            for ring in rings:
                ring.add(at, tokens)
            written = [list(zip(ring.index, ring.tokens, strict=True)) for ring in rings]  # a denial writes nothing
            assert float(start) == pytest.approx(expected_start, abs=1e-6)
            assert float(wait) == pytest.approx(max(expected_wait, 0) if expected_wait > 1e-3 else 0, abs=1e-3)
            sends.append((now + float(wait), tokens))
    stored = counts(redis_client, keys[1])
    for k, limit in enumerate(limits):
        if sends:
            assert stored[f"{limit.count}:{limit.seconds * 1e6!r}"] == written[k]
        most = max(rings[k].count, max(tokens for _, tokens in sends) if sends else 0)  # a send of more waits alone
        assert most_tokens_in_any_window(sends, limit.seconds * 1e6 - SLACK_US) <= most
    redis_client.delete(*keys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limits=st.lists(st.builds(Limit, st.integers(2, 6), st.sampled_from([0.01, 0.03, 0.2])), min_size=1, max_size=2),
    sends=st.lists(st.tuples(st.integers(1, 2), st.sampled_from([0.0, 0.002, 0.015])), max_size=12),
)
def test_the_hold_and_state_scripts_read_the_counts_as_the_python_windows_do(
    redis_client: Any, limits: list[Limit], sends: list[tuple[int, float]]
) -> None:
    reserve, state, hold = (redis_client.register_script(SCRIPTS[name]) for name in ("reserve", "state", "hold"))
    name = f"hold-{time.monotonic_ns()}"
    keys = [f"grpc-throttle:{name}", f"{{grpc-throttle:{name}}}:windows"]
    spec = encode(limits)
    for tokens, pause in sends:
        reserve(keys=keys, args=["1e5", "1000", str(tokens), "-1", "0", "", "", spec])
        time.sleep(pause)
    stored = counts(redis_client, keys[1])
    rings = [Ring.of(limit) for limit in limits]
    for ring, limit in zip(rings, limits, strict=True):
        pairs = stored.get(f"{limit.count}:{limit.seconds * 1e6!r}", [])
        ring.index, ring.tokens = [i for i, _ in pairs], [c for _, c in pairs]
    # state: the least room of the rate's bucket (_gcra.level: sends the windows held
    # moved its tat ahead) and of every limit.
    level, report = state(keys=keys, args=["1e5", "1000", spec])
    now = float(report.split()[0])
    tat, iv = (float(x) for x in redis_client.hmget(keys[0], "tat", "iv")) if sends else (now, 10.0)
    bucket = 1000 - max(tat - now, 0) / iv
    assert float(level) == pytest.approx(min(bucket, *(ring.room(now) for ring in rings)), abs=1e-6)
    # hold: the first limit's window said full; held until the Python twin says it frees.
    left = float(hold(keys=keys, args=[encode(limits[:1])]))
    until = float(redis_client.hget(keys[1], "hold"))
    now = until - left
    assert until == pytest.approx(rings[0].frees(now, limits[0].seconds), abs=1.0)
    # Every send planned from now on waits for it, and no earlier hold is shortened.
    granted, _, start, *_ = reserve(keys=keys, args=["1e5", "1000", "1", "-1", "0", "", "", spec]).split()
    assert granted == b"1" and float(start) >= until - 1.0
    hold(keys=keys, args=[encode(limits[-1:])])
    assert float(redis_client.hget(keys[1], "hold")) >= until
    redis_client.delete(*keys)


def test_a_hold_holds_every_process_on_the_key_and_keeps_the_slots_handed_out(
    make: Make, redis_server: RedisServer, bucket_key: str
) -> None:
    limits = [Limit(100, 1.0), Limit(100, 0.3)]
    first, second = make(rate=10, limits=limits), make(rate=10, limits=limits)
    queued = [first.reserve() for _ in range(3)]  # at 0, 0.1 and 0.2 s
    places = [due_us(r) for r in queued]
    held = second.hold_window(1.0)
    assert held is not None and 0.7 < held <= 1.0 + 1 / 64 + 0.05  # the first send leaves 1 s after it went
    assert [due_us(r) for r in queued] == places  # slots handed out keep their times
    for r in queued:
        assert r.due_in() < 0.3
    assert first.reserve().delay == pytest.approx(held, abs=0.05)  # type: ignore[union-attr]
    assert second.hold_window(0.3) == pytest.approx(held, abs=0.05)  # a shorter window's hold ends no sooner

    async def from_asyncio() -> float:
        bucket = AsyncRedisTokenBucket.from_url(redis_server.url, key=bucket_key, rate=10, limits=limits, timeout=1.0)
        try:
            reservation = await bucket.reserve()
            assert reservation is not None
            return reservation.delay
        finally:
            await bucket.aclose()

    assert asyncio.run(from_asyncio()) == pytest.approx(held, abs=0.15)  # one interval after the last


def test_a_hold_drops_the_leased_slots(make: Make) -> None:
    bucket = make(rate=1000, capacity=1, lease=8, limits=[Limit(1000, 1.0)])
    for _ in range(4):  # fast enough to lease
        bucket.reserve()
    held = bucket.hold_window(1.0)
    assert held is not None and held > 0.8
    reservation = bucket.reserve()
    assert reservation is not None and reservation.delay == pytest.approx(held, abs=0.05)


def test_while_redis_is_down_the_fallback_holds() -> None:
    bucket = RedisTokenBucket.from_url(
        "redis://127.0.0.1:1", key="k", rate=1000, capacity=10, limits=[Limit(40, 60)], timeout=0.2
    )
    try:
        assert bucket.hold_window(5) is None
        held = bucket.hold_window(60)
        assert held is not None and 60 <= held <= 60.1  # the fallback saw no send: a whole window
        assert not bucket.try_acquire() and not bucket.shared
    finally:
        bucket.close()


def test_the_burst_goes_out_again_once_the_window_frees(make: Make) -> None:
    # capacity 5 at 100/s refills in 50 ms, and Limit(5, 0.2) then holds the
    # sixth send until the first five leave the window: the next five go
    # together there, not one interval apart (the rate's bucket refilled meanwhile).
    bucket = make(rate=100, capacity=5, limits=[Limit(5, 0.2)])
    first = [due_us(bucket.reserve()) for _ in range(5)]
    second = [due_us(bucket.reserve()) for _ in range(5)]
    assert max(first) - min(first) < 10_000  # due at once: each one round trip after the last
    assert second[0] - first[0] >= 200_000  # the window
    assert second[-1] - second[0] < 10_000  # a burst again (one interval apart would be 40 ms)


def test_a_limit_costs_at_most_one_sub_window_beyond_an_exact_count() -> None:
    limit = Limit(2, 0.064)  # sub-windows of 1 ms
    ring = Ring.of(limit)
    ring.add(10_500.0, 1)  # in sub-window 10
    ring.add(10_900.0, 1)
    exact = 10_500.0 + 64_000  # when the first send leaves the window
    placed = earliest([ring], 11_000.0, 1)
    assert exact < placed <= exact + limit.seconds * 1e6 / _redis_windows.SUBWINDOWS + _redis_windows.PAST_EDGE


# -- buckets ---------------------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(1, 3), st.sampled_from([math.inf, 0.0, 0.5, 3.0])), max_size=20))
def test_a_buckets_granted_sends_never_overfill_a_window(
    redis_server: RedisServer, steps: list[tuple[int, float]]
) -> None:
    limit = Limit(5, 2.0)
    bucket = RedisTokenBucket.from_url(
        redis_server.url, key=f"prop-{time.monotonic_ns()}", rate=1000, capacity=3, limits=[limit], timeout=1.0
    )
    try:
        sends = []
        for tokens, max_wait in steps:
            reservation = bucket.reserve(tokens, max_wait=max_wait)
            if reservation is not None:
                sends.append((due_us(reservation), float(tokens)))
                assert reservation.delay <= max_wait + 0.05
        assert most_tokens_in_any_window(sends, limit.seconds * 1e6 - SLACK_US) <= limit.count
    finally:
        bucket.close()


def test_a_sync_and_an_asyncio_bucket_on_one_key_share_the_limit(redis_server: RedisServer, bucket_key: str) -> None:
    limit, run = Limit(6, 1.5), 3.3
    end = time.monotonic() + run
    dues: list[float] = []
    sent: list[float] = []
    lock = threading.Lock()

    def note(reservation: Any) -> None:
        with lock:
            dues.append(due_us(reservation))

    def sync_worker() -> None:
        bucket = RedisTokenBucket.from_url(redis_server.url, key=bucket_key, rate=100, limits=[limit], timeout=1.0)
        try:
            while (r := bucket.reserve(max_wait=max(end - time.monotonic(), 0.0))) is not None:
                note(r)
                time.sleep(r.delay)
                sent.append(time.monotonic())
        finally:
            bucket.close()

    async def async_worker() -> None:
        bucket = AsyncRedisTokenBucket.from_url(redis_server.url, key=bucket_key, rate=100, limits=[limit], timeout=1.0)
        try:
            while (r := await bucket.reserve(max_wait=max(end - time.monotonic(), 0.0))) is not None:
                note(r)
                await asyncio.sleep(r.delay)
                sent.append(time.monotonic())
        finally:
            await bucket.aclose()

    thread = threading.Thread(target=sync_worker)
    thread.start()
    asyncio.run(async_worker())
    thread.join(10)
    # Two windows pass in 3.3 s: the first 6 at once, 6 more after 1.5 s and after 3 s.
    assert 13 <= len(dues) <= 18
    assert most_tokens_in_any_window([(d, 1.0) for d in dues], limit.seconds * 1e6 - SLACK_US) <= limit.count
    # As the processes saw it, bar their sleeps' jitter.
    assert most_in_any_window(sent, limit.seconds - 0.05) <= limit.count


def test_a_huge_count_keeps_at_most_max_entries_per_limit(make: Make, redis_client: Any) -> None:
    limit = Limit(1_000_000, 0.2)  # sub-windows of ~3 ms, never full
    bucket = make(rate=200, capacity=1, limits=[limit, Limit(1_000_000, 30 * 86_400)])
    for _ in range(300):  # one send every 5 ms, 1.5 s ahead: 300 sub-windows of the first limit
        bucket.reserve()
    stored = counts(redis_client, bucket._windows_keys[0])
    assert len(stored) == 2
    assert all(len(pairs) <= MAX_ENTRIES for pairs in stored.values())
    assert sum(c for _, c in stored["1000000:200000.0"]) == 300  # merged, never dropped while ahead
    assert stored["1000000:2592000000000.0"] == [(pytest.approx(stored["1000000:2592000000000.0"][0][0]), 300.0)]
    ttl = redis_client.pttl(bucket._windows_keys[0])
    assert 30 * 86_400_000 < ttl <= 30 * 86_400_000 + 62_000  # the longest window past the last send, plus a minute
    redis_client.pexpire(bucket._windows_keys[0], 40 * 86_400_000)
    bucket.reserve()
    assert redis_client.pttl(bucket._windows_keys[0]) > 39 * 86_400_000  # never shortened


def test_a_cancelled_reservation_leaves_the_window(make: Make, redis_client: Any) -> None:
    limit = Limit(3, 2.0)
    bucket = make(rate=2, capacity=1, limits=[limit])
    first, second, third = bucket.reserve(), bucket.reserve(), bucket.reserve()  # at 0, 0.5 and 1.0 s
    assert isinstance(second, RedisReservation) and second.delay > 0.3
    second.cancel()  # behind the third: its tokens stay a hole in the rate, but leave the window
    fourth = bucket.reserve()
    assert fourth is not None and fourth.delay < 1.8  # at the rate's 1.5 s, not the window's 2 s
    assert sum(c for _, c in counts(redis_client, bucket._windows_keys[0])["3:2000000.0"]) == 3
    del first, third


def test_a_reservation_moved_by_a_cut_counts_where_it_lands(make: Make, redis_client: Any) -> None:
    limit = Limit(100, 10.0)  # sub-windows of 156 ms
    bucket = make(rate=10, capacity=1, limits=[limit, Limit(1000, 3600)])
    reservations = [bucket.reserve() for _ in range(5)]  # 0 to 0.4 s
    bucket.set_effective_rate(2)  # the queue stretches five-fold
    last = reservations[-1]
    assert isinstance(last, RedisReservation)
    assert last.due_in() > 1.0
    pairs = counts(redis_client, bucket._windows_keys[0])["100:10000000.0"]
    assert sum(c for _, c in pairs) == 6  # five where they were, and the last once more where it went
    assert max(i for i, _ in pairs) == math.floor(due_us(last) / (limit.seconds * 1e6 / 64))
    assert redis_client.pttl(bucket._windows_keys[0]) > 3_600_000  # the hourly limit's counts kept their time


def test_leased_slots_fit_the_smallest_count_and_every_window(make: Make) -> None:
    limit = Limit(4, 0.5)
    bucket = make(rate=1000, capacity=1, lease=64, limits=[limit, Limit(1000, 60)])
    assert bucket._pool is not None and bucket._pool.limit == 4
    ready, leased = [], 0
    end = time.monotonic() + 1.2
    while (r := bucket.reserve(max_wait=max(end - time.monotonic(), 0.0))) is not None:
        ready.append(r.ready_at)
        leased += isinstance(r, RedisReservation) and r._slot is not None
    assert leased and 8 <= len(ready) <= 12  # 4 per half second, leased or not
    assert most_in_any_window(ready, limit.seconds - 0.05) <= limit.count  # the local clock: bar the round trips


def test_the_fallback_gets_its_share_of_each_count(redis_server: RedisServer) -> None:
    limits = [Limit(8, 60), Limit(2, 1)]
    bucket = RedisTokenBucket.from_url(
        "redis://127.0.0.1:1", key="k", rate=1000, capacity=1000, limits=limits, local_share=0.25, timeout=0.2
    )
    try:
        assert bucket._local.limits == (Limit(2, 60), Limit(1, 1))
        assert [bucket.try_acquire() for _ in range(3)] == [True, False, False]  # Redis is down: the fallback
        assert not bucket.shared
    finally:
        bucket.close()


@pytest.mark.parametrize("policy", ["local", "allow"])
def test_the_fallbacks_sends_count_in_the_windows_once_redis_is_back(
    own_redis_server: RedisServer, bucket_key: str, policy: str
) -> None:
    bucket = RedisTokenBucket.from_url(
        own_redis_server.url,
        key=bucket_key,
        rate=100,
        capacity=4,
        limits=[Limit(4, 30.0)],
        local_share=0.5,
        timeout=0.2,
        cooldown=0.2,
        on_failure=policy,  # type: ignore[arg-type]
    )
    try:
        assert bucket.try_acquire() and bucket.shared
        own_redis_server.stop()
        # Down: the fallback sends 2 (local: half of each count; allow: 2 let through).
        assert [bucket.try_acquire() for _ in range(2)] == [True, True] and not bucket.shared
        own_redis_server.start()  # empty: the shared send before is gone with it
        time.sleep(0.4)  # past the cooldown and the fallback's last slot
        # Back: this send, then the fallback's two are counted; the window takes one more.
        assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
        assert bucket.shared
        assert bucket._handoff.unreported == []
    finally:
        bucket.close()


def test_the_fallback_keeps_at_most_max_unreported_sends_merging_the_oldest_later() -> None:
    bucket = RedisTokenBucket.from_url(
        "redis://127.0.0.1:1", key="k", rate=1e6, capacity=1, limits=[Limit(10**9, 60)], on_failure="allow"
    )
    try:
        for _ in range(MAX_UNREPORTED + 10):
            bucket.reserve()
        sends = bucket._handoff.unreported
        assert len(sends) == MAX_UNREPORTED
        assert sum(tokens for _, tokens in sends) == MAX_UNREPORTED + 10  # merged, none dropped
        assert all(a[0] <= b[0] for a, b in itertools.pairwise(sends))
        assert bucket._handoff.take_unreported(time.monotonic() + 61) == []  # past the longest window
        assert bucket._handoff.unreported == []
    finally:
        bucket.close()
