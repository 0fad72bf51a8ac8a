"""The Redis bucket's steps (``_redis_steps``) on scripted replies: the decisions, without a server.

Each step yields commands and is sent replies or thrown errors; these tests
play Redis's part from a script and check which commands a step asks for and
what it returns. Every test runs through both drivers (``drive`` and
``adrive``), so the sync and asyncio buckets cannot decide differently. The
real-server behaviour is in test_redis_bucket.py and test_bucket_backends.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.exceptions

from grpc_throttle import Limit
from grpc_throttle.buckets._redis_adapt import SCRIPTS, SHAS
from grpc_throttle.buckets._redis_base import RedisReservation
from grpc_throttle.buckets._redis_steps import KEY_TYPE, LOAD_TRIES, Command, Eval, Load, Step, adrive, drive
from grpc_throttle.buckets.local import DEFAULT_GUARD, Reservation
from grpc_throttle.buckets.redis import RedisTokenBucket
from grpc_throttle.errors import BucketUnavailableError
from tests.clock import VirtualClock

#: A granted reserve reply: no wait, start at 1 s, interval 0.1 s, epoch 1, start - now = 0.
GRANTED = b"1 0 1000000 100000 1 0"


class Redis:
    """Plays Redis: answers each command with the next scripted reply (raised if an exception)."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.commands: list[Command] = []

    def __call__(self, command: Command) -> Any:
        self.commands.append(command)
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def _sync(step: Step[Any], server: Redis) -> Any:
    return drive(step, server)


def _async(step: Step[Any], server: Redis) -> Any:
    async def run(command: Command) -> Any:
        await asyncio.sleep(0)
        return server(command)

    return asyncio.run(adrive(step, run))


Driver = Callable[[Step[Any], Redis], Any]


@pytest.fixture(params=[_sync, _async], ids=["drive", "adrive"])
def driver(request: pytest.FixtureRequest) -> Driver:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def bucket() -> RedisTokenBucket:
    # A plain client connects on first use only, and no command reaches it here.
    return RedisTokenBucket(redis.Redis(port=1), key="steps", rate=10, clock=VirtualClock())


def test_a_granted_reply_is_a_reservation_after_one_command(driver: Driver, bucket: RedisTokenBucket) -> None:
    server = Redis(GRANTED)
    reservation = driver(bucket._reserve(1, math.inf), server)
    assert isinstance(reservation, RedisReservation) and reservation.delay == 0
    assert server.commands == [Eval(SHAS["reserve"], bucket._plain_args, ())]


def test_noscript_loads_the_script_and_runs_it_again(driver: Driver, bucket: RedisTokenBucket) -> None:
    server = Redis(redis.exceptions.NoScriptError("No matching script"), "sha", GRANTED)
    assert isinstance(driver(bucket._reserve(1, math.inf), server), RedisReservation)
    assert [type(c) for c in server.commands] == [Eval, Load, Eval]
    assert server.commands[1] == Load(SCRIPTS["reserve"])


def test_a_script_flushed_again_after_each_load_is_a_refusal_after_the_last_try(
    driver: Driver, bucket: RedisTokenBucket
) -> None:
    noscript = redis.exceptions.NoScriptError("No matching script")
    server = Redis(*[noscript, "sha"] * LOAD_TRIES, noscript, b"hash")
    with pytest.raises(BucketUnavailableError, match="refused the bucket script"):
        driver(bucket._reserve(1, math.inf), server)
    assert server.commands[-1] is KEY_TYPE
    assert sum(isinstance(c, Load) for c in server.commands) == LOAD_TRIES


def test_an_outage_opens_the_breaker_and_the_fallback_answers_without_a_command(
    driver: Driver, bucket: RedisTokenBucket
) -> None:
    server = Redis(redis.exceptions.ConnectionError("refused"))
    assert isinstance(driver(bucket._reserve(1, math.inf), server), Reservation)
    assert not bucket.shared
    assert isinstance(driver(bucket._reserve(1, math.inf), server), Reservation)
    assert len(server.commands) == 1  # the breaker kept the second call away


def test_an_outage_under_fail_raises_naming_the_policy(driver: Driver) -> None:
    bucket = RedisTokenBucket(redis.Redis(port=1), key="steps", rate=10, on_failure="fail", clock=VirtualClock())
    with pytest.raises(BucketUnavailableError, match="on_failure='fail'"):
        driver(bucket._reserve(1, math.inf), Redis(redis.exceptions.TimeoutError("slow")))


def test_a_cancelled_command_gives_no_verdict_on_redis(driver: Driver, bucket: RedisTokenBucket) -> None:
    server = Redis(asyncio.CancelledError(), GRANTED)
    with pytest.raises(asyncio.CancelledError):
        driver(bucket._reserve(1, math.inf), server)
    assert bucket.shared
    assert isinstance(driver(bucket._reserve(1, math.inf), server), RedisReservation)


def test_a_refused_script_asks_what_the_key_holds(driver: Driver, bucket: RedisTokenBucket) -> None:
    server = Redis(redis.exceptions.ResponseError("WRONGTYPE Operation against a key"), b"list")
    with pytest.raises(BucketUnavailableError, match="holds a list"):
        driver(bucket._reserve(1, math.inf), server)
    assert server.commands[-1] is KEY_TYPE
    assert bucket.shared  # Redis answered: not an outage


def test_a_mistake_raises_what_to_fix_whatever_the_policy(driver: Driver, bucket: RedisTokenBucket) -> None:
    server = Redis(redis.exceptions.AuthenticationError("invalid username-password pair"))
    with pytest.raises(BucketUnavailableError, match="password"):
        driver(bucket._reserve(1, math.inf), server)


def test_a_failed_throttle_report_lets_the_fallback_adapt_and_frees_the_round(
    driver: Driver, bucket: RedisTokenBucket
) -> None:
    args = bucket._throttle_args(0)
    assert args is not None
    before = bucket._local.effective_rate
    driver(bucket._adapt("throttle", args, 0), Redis(redis.exceptions.ConnectionError("refused")))
    assert bucket._local.effective_rate < before  # heard while down: the fallback slowed
    assert bucket._view.begin_throttle(0)  # the round is free for the next report


def test_a_give_back_that_fails_is_logged_not_raised(driver: Driver, bucket: RedisTokenBucket) -> None:
    reservation = driver(bucket._reserve(1, math.inf), Redis(GRANTED))
    server = Redis(redis.exceptions.ResponseError("ERR something odd"), b"hash")
    driver(bucket._give_back(reservation), server)
    assert isinstance(server.commands[0], Eval) and server.commands[0].more_keys == (bucket._holes_key,)


def test_a_hold_sends_the_full_windows_limits_and_falls_back_to_the_local_hold(driver: Driver) -> None:
    limits = [Limit(5, 60), Limit(100, 3600)]
    bucket = RedisTokenBucket(redis.Redis(port=1), key="steps", rate=10, limits=limits, clock=VirtualClock())
    server = Redis(b"1500000")
    assert driver(bucket._hold_window(3600), server) == 1.5
    assert server.commands == [Eval(SHAS["hold"], ["100:3600000000.0"], bucket._windows_keys)]
    assert driver(bucket._hold_window(7), Redis()) is None  # no limit of that window: no command
    down = Redis(redis.exceptions.ConnectionError("refused"))
    assert driver(bucket._hold_window(60), down) == pytest.approx(60 + DEFAULT_GUARD)  # the fallback's whole window
    assert not bucket.shared


def test_back_from_an_outage_the_fallbacks_sends_are_counted_on_redis_clock(driver: Driver) -> None:
    clock = VirtualClock()
    limits = [Limit(5, 60)]
    bucket = RedisTokenBucket(redis.Redis(port=1), key="steps", rate=10, limits=limits, cooldown=1, clock=clock)
    down = Redis(redis.exceptions.ConnectionError("down"))
    assert isinstance(driver(bucket._reserve(1, math.inf), down), Reservation)
    clock.advance(2)  # past the cooldown: the next call probes Redis
    server = Redis(GRANTED, 1)
    assert isinstance(driver(bucket._reserve(1, math.inf), server), RedisReservation)
    count = server.commands[1]
    assert isinstance(count, Eval) and count.sha == SHAS["count"] and count.more_keys == bucket._windows_keys
    # The fallback's send went at once, 2 s before the reply (Redis time 1 s): 2 s earlier on Redis's clock.
    assert count.args == [bucket._limits_arg, f"{1e6 - 2e6!r}:1.0"]
    assert driver(bucket._reserve(1, math.inf), Redis(GRANTED)) is not None  # reported once


def test_fallback_sends_redis_did_not_count_are_kept_for_the_next_reservation_back(driver: Driver) -> None:
    clock = VirtualClock()
    bucket = RedisTokenBucket(
        redis.Redis(port=1), key="steps", rate=10, limits=[Limit(40, 60)], cooldown=1, clock=clock
    )
    sent = clock()
    driver(bucket._reserve(1, math.inf), Redis(redis.exceptions.ConnectionError("down")))
    clock.advance(2)
    lost = Redis(GRANTED, redis.exceptions.ConnectionError("down again"))  # reserve answered, count did not
    assert isinstance(driver(bucket._reserve(1, math.inf), lost), RedisReservation)
    assert bucket._handoff.unreported == [[sent, 1.0]]  # kept
    clock.advance(2)  # past the cooldown the count opened
    server = Redis(GRANTED, 1)
    driver(bucket._reserve(1, math.inf), server)
    count = server.commands[1]
    assert isinstance(count, Eval) and count.args == [bucket._limits_arg, f"{1e6 - 4e6!r}:1.0"]
    assert bucket._handoff.unreported == []
