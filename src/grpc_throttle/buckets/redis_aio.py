"""The Redis token bucket for asyncio: ``redis.py``'s class over ``redis.asyncio``.

Same name, same arguments, same behaviour; the methods that talk to Redis are
coroutines. A reservation's ``cancel()``, ``record_throttle()`` and
``record_success()`` stay plain methods (the interceptors call them from sync
code): they schedule the Redis update as a task (:meth:`RedisTokenBucket.aclose`
waits for those).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import BucketUnavailableError
from ._base import AsyncBucket
from ._cubic import AdaptiveRate
from ._redis_adapt import SCRIPTS, SHAS
from ._redis_base import TOO_LATE, FreeReservation, RedisBucketBase, RedisReservation
from ._redis_clients import AsyncMade, aclose_made, async_recipe
from ._redis_config import FailurePolicy, Settings, hashed_key
from ._redis_errors import classify, is_client_error, is_noscript
from ._redis_loops import PerLoop
from ._redis_urls import client_from_url
from .local import Reservation

__all__ = ["RedisReservation", "RedisTokenBucket", "hashed_key"]

_logger = logging.getLogger(__name__)
#: Returned by _run when Redis could not be used.
_DOWN: Any = object()
#: Script loads tried before the call is left to fail (see _eval).
_LOAD_TRIES = 3


class RedisTokenBucket(RedisBucketBase, AsyncBucket):
    """A token bucket shared through Redis by every process and host using ``key``.

    The asyncio twin of :class:`grpc_throttle.buckets.redis.RedisTokenBucket`
    (both can share one key): the same arguments and behaviour, including the
    failure policies and the shared rate adaptation described there. The
    methods that talk to Redis are coroutines, except :meth:`record_throttle`
    and :meth:`record_success`, which schedule their update as a task; and
    :meth:`aclose` replaces ``close``.

    Args:
        client: A ``redis.asyncio.Redis``; a
            ``redis.asyncio.cluster.RedisCluster`` for Redis Cluster; or a
            ``redis.asyncio.sentinel.Sentinel`` with ``service_name``; or
            ``valkey.asyncio``'s twin of any of these. The
            bucket uses its connection settings with its own connections,
            ``timeout`` and no retries, one set per event loop (the bucket
            serves any number of loops, one after another or at once); the
            client is unchanged.
        key: The bucket's name (e.g. the API user). Use :func:`hashed_key` to
            derive it from a token: key names are visible to anyone who can
            list keys.
        rate: Tokens added per second, for all processes together.
        capacity: The most tokens held (the largest burst). Defaults to 1.
        on_failure: ``"local"``, ``"allow"`` or ``"fail"``.
        local_share: The share of ``rate`` and of ``capacity`` (at least 1 token)
            the local fallback bucket gets.
        timeout: Seconds a Redis call may take before it counts as down.
        cooldown: Seconds to stay away from Redis after a failure.
        lease: With ``lease > 1``, a process calling faster than half the
            shared rate takes up to ``lease`` slots of the schedule per round
            trip and hands them out locally. The rate still holds; a leased
            token expires ``lease`` intervals after it became due.
        adaptive: How the shared rate adapts to throttle signals (see
            :class:`~grpc_throttle.AdaptiveRate`); None: this process reports
            none (it still follows the rate others set).
        clock: Monotonic clock for the breaker, the lease and the local copy
            of the adaptation curve; the schedule itself runs on Redis's clock.
        service_name: With a ``Sentinel`` client: the master's service name.

    Example:
        >>> bucket = RedisTokenBucket(redis.asyncio.Redis(), key="team-a", rate=15)
        >>> reservation = await bucket.reserve()
        >>> await asyncio.sleep(reservation.delay)
    """

    _logger = _logger

    def __init__(
        self,
        client: Any,
        *,
        key: str,
        rate: float,
        capacity: float | None = None,
        on_failure: FailurePolicy = "local",
        local_share: float = 0.25,
        timeout: float = 0.05,
        cooldown: float = 2.0,
        lease: int = 1,
        adaptive: AdaptiveRate | None = AdaptiveRate(),  # noqa: B008 - frozen, shared safely
        clock: Callable[[], float] = time.monotonic,
        service_name: str | None = None,
    ) -> None:
        capacity = 1.0 if capacity is None else capacity
        settings = Settings(
            key=key,
            capacity=capacity,
            on_failure=on_failure,
            local_share=local_share,
            timeout=timeout,
            cooldown=cooldown,
            lease=lease,
        )
        super().__init__(settings, rate, clock, adaptive)
        make, self._cluster = async_recipe(client, service_name, self._key, settings.timeout)
        #: The bucket's own client and wire, one pair per event loop (see _redis_loops): the
        #: caller's settings, the bucket's timeout, no retries.
        self._clients: PerLoop[AsyncMade] = PerLoop(make, aclose_made)
        #: Cancellations and adaptation updates in flight; held so they are not garbage-collected.
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisTokenBucket:
        """A bucket on the Redis at ``url``, as the sync bucket's ``from_url`` reads it.

        Args:
            url: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
                ``rediss+sentinel://``, ``valkey://`` or ``valkeys://`` (see the
                sync ``from_url``).
            **kwargs: The constructor's keyword arguments.

        Raises:
            ValueError: ``url`` is not a valid Redis URL (the message hides
                any password), or another argument is wrong.
        """
        client, service_name = client_from_url(url, asyncio=True)
        if service_name is not None:
            kwargs["service_name"] = service_name
        return cls(client, **kwargs)

    # -- taking tokens ---------------------------------------------------

    async def reserve(
        self, tokens: float = 1, *, max_wait: float = math.inf
    ) -> RedisReservation | Reservation | FreeReservation | None:
        """Take ``tokens`` in one round trip, without waiting for them.

        Args:
            tokens: How many tokens to take, at most :attr:`capacity`.
            max_wait: The longest wait the caller accepts, in seconds. When the
                wait would be longer, nothing is taken and ``None`` returned.

        Returns:
            A reservation whose ``delay`` says how long to wait, or ``None``.
            While Redis is down, what ``on_failure`` gives.

        Raises:
            ValueError: ``tokens`` or ``max_wait`` is out of range.
            BucketUnavailableError: Redis is down and ``on_failure="fail"``,
                or the key is unusable (e.g. it holds a list).
        """
        tokens, max_wait = self._check(tokens, max_wait)
        extra = 0
        if self._pool is not None:
            leased, extra = self._take_leased(tokens, max_wait)
            if leased is not None or extra == TOO_LATE:
                return leased
        args = self._reserve_args(tokens, max_wait, extra)
        reply = await self._run("reserve", args)
        if reply is _DOWN:
            return self._fallback(tokens, max_wait)
        return self._accept(reply, args, extra)

    async def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if they are available right now; never waits."""
        return await self.reserve(tokens, max_wait=0.0) is not None

    async def acquire(self, tokens: float = 1, *, timeout: float | None = None) -> bool:
        """Wait (asynchronously) until ``tokens`` are taken.

        Returns:
            True once taken; False (nothing taken) when the wait would be
            longer than ``timeout`` seconds.
        """
        reservation = await self.reserve(tokens, max_wait=math.inf if timeout is None else timeout)
        if reservation is None:
            return False
        delay = reservation.delay
        while delay > 0:
            await asyncio.sleep(delay)
            left = reservation.due_in()
            delay = await left if inspect.isawaitable(left) else left
        return True

    async def available(self) -> float:
        """Tokens that could be taken now without waiting (negative when queued)."""
        reply = await self._run("state", [self._rate_arg, self._capacity_arg])
        if reply is _DOWN:
            return self._fallback_level()
        self._take_report(reply[1])
        return float(reply[0])

    async def set_effective_rate(self, value: float) -> None:
        """Make every process on the key run at ``value`` tokens/s (at most :attr:`rate`).

        :attr:`rate` is unchanged. The value holds until changed: successes
        do not recover from it (``TokenBucket``'s do), a throttle signal lowers
        it further. While Redis is down the value applies to the fallback and
        is written on the next successful call.
        """
        value = self._set_pending(value)
        args = [self._rate_arg, repr(value), self._capacity_arg]
        reply = await self._run("set_rate", args)
        if reply is _DOWN:
            if self._settings.on_failure == "fail":
                raise self._unavailable()
            return
        self._take_report(reply, value)

    # -- adaptation: plain methods, the update runs as a task ---------------

    def record_throttle(self, round: Any) -> None:
        """Report a throttled answer to an attempt whose reservation had ``round``.

        Lowers the rate of every process on the key (``beta``), unless a
        signal of the same round was counted already, by any process. Returns
        at once: the update runs as a task on the running loop (dropped
        outside one). While Redis is down the fallback bucket adapts instead.
        """
        args = self._throttle_args(round)
        if args is not None:
            self._spawn("throttle", args, round)

    def record_success(self) -> None:
        """Report an answer that was not throttled: the shared rate recovers toward ``rate``.

        Free (no lock, no task) while the rate is at the configured rate, and
        while the next step of the curve would be under 1%.
        """
        args = self._recovery_args()
        if args is not None:
            self._spawn("recover", args, None)

    async def _adapt_remote(self, name: str, args: list[str], round: int | None) -> None:
        reply = None
        try:
            reply = await self._run(name, args)
        except BucketUnavailableError as error:
            _logger.debug("%s on %r failed: %s", name, self.key, error)
        finally:
            self._adapted(None if reply is _DOWN else reply, round)

    def _spawn(self, name: str, args: list[str], round: int | None) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._adapt_remote(name, args, round))
        except RuntimeError:  # no loop to run the update: drop the signal
            if round is None:
                self._view.end_recovery()
            else:
                self._view.end_throttle(round)
            _logger.debug("%s on %r outside an event loop: dropped", name, self.key)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Wait for this loop's pending cancellations, then close its connections.

        The client passed in is not touched. Other loops' connections close
        when those loops shut down (``asyncio.run`` does it) or call ``aclose``.
        """
        loop = asyncio.get_running_loop()
        mine = [task for task in self._tasks if task.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        await self._clients.aclose()

    # -- Redis -----------------------------------------------------------

    async def _run(self, name: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        """Run one script; ``_DOWN`` when Redis is (or was just found) unavailable."""
        if not self._breaker.allow():
            return _DOWN
        try:
            reply = await self._eval(name, args, more_keys)
        except Exception as error:
            verdict = classify(error, cluster=self._cluster)
            if verdict.kind == "refused":
                self._breaker.succeeded()
                raise self._store_error(error, await self._key_type()) from None
            self._judge(error, verdict)  # raises, unless Redis is down or the pool full
            return _DOWN
        except BaseException:  # cancelled or interrupted: no verdict on Redis
            self._breaker.abandoned()
            raise
        self._breaker.succeeded()
        return reply

    async def _eval(self, name: str, args: Sequence[str | bytes], more_keys: Sequence[str] = ()) -> Any:
        # EVALSHA straight away on the wire (redis-py's per-command layer costs
        # about as much as the round trip), loading the script when Redis does
        # not know it (first use, SCRIPT FLUSH; another flush may come between
        # the load and the call, hence a few tries).
        wire = (await self._clients.get()).wire
        for _ in range(_LOAD_TRIES):
            try:
                return await wire.evalsha(SHAS[name], args, more_keys)
            except Exception as error:
                if not is_noscript(error):
                    raise
                await wire.load(SCRIPTS[name])
        return await wire.evalsha(SHAS[name], args, more_keys)

    async def _key_type(self) -> str | None:
        try:
            own = (await self._clients.get()).client
            kind = await own.type(self.key)
        except Exception as error:  # only to explain a refusal: any client error leaves it unexplained
            if not is_client_error(error):
                raise
            return None
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    async def _due_in(self, reservation: RedisReservation) -> float:
        args = self._due_args(reservation)
        if args is None:
            return self._left(reservation)
        try:
            reply = await self._run("due", args)
        except BucketUnavailableError as error:
            _logger.debug("due on %r failed: %s", self.key, error)
            return self._left(reservation)
        return self._left(reservation) if reply is _DOWN else self._moved(reservation, reply)

    def _cancel(self, reservation: RedisReservation) -> None:
        if not self._mark_done(reservation):
            return
        try:
            task = asyncio.get_running_loop().create_task(self._cancel_remote(reservation))
        except RuntimeError:  # no loop: nothing to run the update; the tokens expire anyway
            _logger.debug("cancel on %r outside an event loop: dropped", self.key)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_remote(self, reservation: RedisReservation) -> None:
        try:
            await self._run("cancel", reservation._cancel_args(), (self._holes_key,))
        except BucketUnavailableError as error:  # best effort: the tokens expire anyway
            _logger.debug("cancel on %r failed: %s", self.key, error)
