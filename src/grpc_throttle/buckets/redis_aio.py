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
from collections.abc import Callable, Iterable
from typing import Any

from ._base import AsyncBucket
from ._cubic import AdaptiveRate
from ._redis_base import RedisReservation
from ._redis_clients import AsyncMade, aclose_made, async_recipe
from ._redis_config import FailurePolicy, Settings, hashed_key
from ._redis_handoff import FreeReservation
from ._redis_loops import PerLoop
from ._redis_steps import Command, Eval, Load, RedisSteps, Step, adrive
from ._redis_urls import client_from_url
from ._redis_windows import SUBWINDOWS
from ._window import Limit, window_limits
from .local import Reservation

__all__ = ["RedisReservation", "RedisTokenBucket", "hashed_key"]

_logger = logging.getLogger(__name__)


class RedisTokenBucket(RedisSteps, AsyncBucket):
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
        limits: More windows that hold for every process on the key together,
            e.g. ``[Limit(10_000, 3600)]``, kept in Redis as the sync bucket's
            are (both share them on one key). A server's full-window answer
            (Clarifai's 11003) holds every process until it frees (:meth:`hold_window`).
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
        limits: Iterable[Limit] = (),
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
            limits=limits,  # type: ignore[arg-type] # Settings checks it into a tuple
        )
        super().__init__(settings, rate, clock, adaptive)
        make, self._cluster = async_recipe(client, service_name, self._key, settings.timeout)
        #: The bucket's own client and wire, one pair per event loop (see _redis_loops): the
        #: caller's settings, the bucket's timeout, no retries.
        self._clients: PerLoop[AsyncMade] = PerLoop(make, aclose_made)
        #: Cancellations and adaptation updates in flight; held so they are not garbage-collected.
        self._tasks: set[asyncio.Task[Any]] = set()

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
        return await adrive(self._reserve(tokens, max_wait), self._command)

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
        """Tokens that could be taken now without waiting (negative when queued), under the rate and every limit."""
        return await adrive(self._available(), self._command)

    def hold_window(self, seconds: float) -> float | None:
        """The server says a window of ``seconds`` is full: hold every process's new calls until it frees.

        As the sync bucket's (:meth:`grpc_throttle.RedisTokenBucket.hold_window`),
        but it returns at once: the hold is written by a task on the running
        loop (outside one, only the fallback holds). Without Redis's answer it
        returns the longest the hold can last, a window and one of its 64
        sub-windows: a call with a shorter deadline hands the server's answer
        back rather than waiting. None, changing nothing, when no limit matches.
        """
        if not window_limits(self._settings.limits, seconds):
            return None
        if not self._in_task(self._hold_window(seconds)):
            self._local.hold_window(seconds)
        return seconds * (SUBWINDOWS + 1) / SUBWINDOWS

    async def set_effective_rate(self, value: float) -> None:
        """Make every process on the key run at ``value`` tokens/s (at most :attr:`rate`).

        :attr:`rate` is unchanged. The value holds until changed: successes
        do not recover from it (``TokenBucket``'s do), a throttle signal lowers
        it further. While Redis is down the value applies to the fallback and
        is written on the next successful call.
        """
        await adrive(self._set_rate(value), self._command)

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

    def _spawn(self, name: str, args: list[str], round: int | None) -> None:
        if not self._in_task(self._adapt(name, args, round)):  # no loop to run the update: drop the signal
            if round is None:
                self._view.end_recovery()
            else:
                self._view.end_throttle(round)
            _logger.debug("%s on %r outside an event loop: dropped", name, self.key)

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

    async def _command(self, command: Command) -> Any:
        """Run one of a step's commands (see _redis_steps) on this loop's own client."""
        made = await self._clients.get()
        if isinstance(command, Eval):
            return await made.wire.evalsha(command.sha, command.args, command.more_keys)
        if isinstance(command, Load):
            return await made.wire.load(command.source)
        return await made.client.type(self.key)

    def _in_task(self, step: Step[Any]) -> bool:
        """Drive ``step`` in a task of the running loop, kept until done; False (not run) outside a loop."""
        try:
            task = asyncio.get_running_loop().create_task(adrive(step, self._command))
        except RuntimeError:
            step.close()
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _due_in(self, reservation: RedisReservation) -> float:
        return await adrive(self._due(reservation), self._command)

    def _cancel(self, reservation: RedisReservation) -> None:
        if self._mark_done(reservation) and not self._in_task(self._give_back(reservation)):
            _logger.debug("cancel on %r outside an event loop: dropped", self.key)  # the tokens expire anyway
