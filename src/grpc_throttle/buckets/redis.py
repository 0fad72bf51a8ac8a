"""A token bucket kept in Redis: one schedule for every process and host on a key.

A quota is per user, not per process: four workers each pacing themselves at
15 calls/s send 60. A :class:`RedisTokenBucket` keeps the bucket's one number
(see ``_gcra``) in Redis and updates it with an atomic Lua script on Redis's
own clock, so every process and host on the key shares one FIFO schedule.
``grpc_throttle.buckets.redis_aio`` holds the same class for ``redis.asyncio``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._base import Bucket
from ._cubic import AdaptiveRate
from ._redis_base import RedisReservation
from ._redis_clients import close_made, sync_client
from ._redis_config import FailurePolicy, Settings, hashed_key
from ._redis_handoff import FreeReservation
from ._redis_steps import Command, Eval, Load, RedisSteps, drive
from ._redis_urls import client_from_url
from ._redis_wire import ClusterWire, Wire
from ._window import Limit
from .local import Reservation

__all__ = ["RedisReservation", "RedisTokenBucket", "hashed_key"]

_logger = logging.getLogger(__name__)


class RedisTokenBucket(RedisSteps, Bucket):
    """A token bucket shared through Redis by every process and host using ``key``.

    The same contract as :class:`~grpc_throttle.buckets.TokenBucket`: tokens
    refill at ``rate`` up to ``capacity``; :meth:`reserve` never blocks on the
    schedule, it takes its place in one round trip and says how long to wait.
    Reservations are served FIFO by the time they were made, on Redis's clock
    (``TIME``), so hosts whose clocks disagree still share one schedule.

    State is one hash per key (``grpc-throttle:<key>``) holding the schedule,
    the shared effective rate and an epoch, and with ``limits`` a second one
    (``{grpc-throttle:<key>}:windows``, at most 65 counts per limit); both
    expire on their own once idle. Every process on a key should use the
    same rate, capacity and limits. Needs Redis
    >= 6: the scripts read ``TIME`` and then write, which Redis < 5 replicates
    only after ``redis.replicate_commands()``.

    The rate adapts to throttled answers as ``TokenBucket``'s does (CUBIC,
    see :class:`~grpc_throttle.AdaptiveRate`), with the curve kept in the key's
    hash and moved on Redis's clock: a throttle signal reported through
    :meth:`record_throttle` by any process slows every process on the key, one
    decrease per round across all of them, and recovery is shared too.

    When Redis is unreachable, or slower than ``timeout``, ``on_failure`` says
    what happens; a circuit breaker then keeps calls away from Redis for
    ``cooldown`` seconds, lets one probe through, and goes back to the shared
    bucket by itself when Redis answers again:

    * ``"local"`` (default): pace with a local bucket at ``local_share`` of
      the rate and of the capacity. Processes cannot coordinate without
      Redis, so each takes a share: the default 1/4 keeps up to four
      processes inside the quota; set it to ``1/number_of_processes``. Slower
      beats being throttled by the server, and the interceptor still retries
      what gets throttled. The fallback adapts to throttle signals on its own.
    * ``"allow"``: let every call through unpaced (the server's own limits and
      the retry policy still apply).
    * ``"fail"``: raise :class:`~grpc_throttle.errors.BucketUnavailableError`.

    Errors are told apart by class (``_redis_errors``). A setup mistake is not
    an outage: a wrong password, a missing ACL permission, a certificate that
    does not verify, a plain client on the wrong node of a cluster, or a key
    holding another Redis type raises ``BucketUnavailableError`` saying what
    to fix, whatever the policy. ``READONLY`` (a replica) goes to the policy,
    as a failover causes it for a moment too, and is logged at ERROR once.

    Args:
        client: A ``redis.Redis``; a ``redis.cluster.RedisCluster`` for
            Redis Cluster (the bucket's keys share one slot); or a
            ``redis.sentinel.Sentinel`` with ``service_name``; or valkey-py's
            twin of any of these (``valkey.Valkey``, ...). The bucket uses
            its connection settings with its own connections, ``timeout`` and
            no retries; the client is unchanged. With Sentinel, looking the
            master up takes at most ``timeout`` per sentinel asked.
        key: The bucket's name (e.g. the API user). Use :func:`hashed_key` to
            derive it from a token: key names are visible to anyone who can
            list keys.
        rate: Tokens added per second, for all processes together; at least
            1e-9 / ``local_share``, so that the fallback's share is a rate too.
        capacity: The most tokens held (the largest burst), in [1, 1e12].
            Defaults to 1.
        on_failure: ``"local"``, ``"allow"`` or ``"fail"`` (see above).
        local_share: The share of ``rate`` and of ``capacity`` (at least 1 token)
            the local fallback bucket gets.
        timeout: Seconds a Redis call may take before it counts as down, at
            most 86400 (a socket takes no more than ~9.2e9).
        cooldown: Seconds to stay away from Redis after a failure.
        lease: With ``lease > 1``, a process calling faster than half the
            shared rate takes up to ``lease`` slots of the schedule per round
            trip and hands them out locally. The rate still holds; a leased
            token expires ``lease`` intervals after it became due. At most 10000.
        limits: More windows that hold at the same time for every process on
            the key together, e.g. ``[Limit(10_000, 3600)]`` for an hourly
            quota: at most ``count`` calls in any ``seconds``, on Redis's clock.
            The per-second rate stays as above; a call waits for the later
            of the two. Each limit is counted in 64 sub-windows of
            ``seconds / 64`` (one hash field, whatever the count): windows are
            over-counted, never under, so a call may wait up to one
            sub-window longer than an exact count would make it. A cut of the
            shared rate scales the counts too (at least 1); a slot it moves later counts
            where it lands too (and still where it was). A reservation not yet
            due that is cancelled leaves the windows (else it counts until they
            pass). The fallback gets ``local_share`` of each count, at least 1 (its sends
            are counted in Redis's windows once Redis is back), and a
            ``lease`` is at most the smallest count. Each window is at least
            64 microseconds long. A server's full-window answer (Clarifai's
            11003) holds every process until the window frees (:meth:`hold_window`).
        adaptive: How the shared rate adapts to throttle signals (see
            :class:`~grpc_throttle.AdaptiveRate`); None: this process reports
            none (it still follows the rate others set). Every process on a
            key should pass the same.
        clock: Monotonic clock for the breaker, the lease and the local copy
            of the adaptation curve; the schedule itself runs on Redis's clock.
        service_name: With a ``Sentinel`` client: the name of the master's
            service (``sentinel monitor <name> ...``).

    Example:
        >>> bucket = RedisTokenBucket(redis.Redis(), key="team-a", rate=15)
        >>> reservation = bucket.reserve()
        >>> time.sleep(reservation.delay)
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
        made, self._cluster = sync_client(client, service_name, self._key, settings.timeout)
        #: The bucket's own client (the caller's settings, the bucket's timeout, no retries) and more.
        self._made = made
        #: That client.
        self._redis: Any = made.client
        #: Runs the scripts on that client (see _redis_wire).
        self._wire: Wire | ClusterWire = made.wire

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisTokenBucket:
        """A bucket on the Redis at ``url``.

        Args:
            url: Where Redis is: ``redis://[[user]:password@]host:6379/0``,
                ``rediss://`` (TLS), ``unix://``, or a Sentinel deployment as
                ``redis+sentinel://[[user]:password@]host:port[,host:port]/service_name``
                (``rediss+sentinel://`` for TLS); ``valkey://`` or ``valkeys://``
                for valkey-py's client.
            **kwargs: The constructor's keyword arguments.

        Raises:
            ValueError: ``url`` is not a valid Redis URL (the message hides
                any password), or another argument is wrong.
        """
        client, service_name = client_from_url(url, asyncio=False)
        if service_name is not None:
            kwargs["service_name"] = service_name
        return cls(client, **kwargs)

    # -- taking tokens ---------------------------------------------------

    def reserve(
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
        return drive(self._reserve(tokens, max_wait), self._command)

    def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if they are available right now; never waits."""
        return self.reserve(tokens, max_wait=0.0) is not None

    def acquire(self, tokens: float = 1, *, timeout: float | None = None) -> bool:
        """Block the calling thread until ``tokens`` are taken.

        Returns:
            True once taken; False (nothing taken) when the wait would be
            longer than ``timeout`` seconds.
        """
        reservation = self.reserve(tokens, max_wait=math.inf if timeout is None else timeout)
        if reservation is None:
            return False
        delay = reservation.delay
        while delay > 0:
            time.sleep(delay)
            left = reservation.due_in()
            delay = left if isinstance(left, float) else 0.0  # a float on this bucket
        return True

    def available(self) -> float:
        """Tokens that could be taken now without waiting (negative when queued), under the rate and every limit."""
        return drive(self._available(), self._command)

    def hold_window(self, seconds: float) -> float | None:
        """The server says a window of ``seconds`` is full: hold every process's new calls until it frees.

        Answers such as Clarifai's 11003 (hourly limit) mean the server counted
        the window full, perhaps with other clients' calls. When a limit has
        that window, no process on the key gets a slot before the oldest send
        counted in it leaves (a whole window from now when none was), and the
        seconds until then are returned; slots handed out already keep their
        times. None, changing nothing, when no limit matches. One round trip;
        while Redis is down the fallback holds by its own count.
        """
        return drive(self._hold_window(seconds), self._command)

    def set_effective_rate(self, value: float) -> None:
        """Make every process on the key run at ``value`` tokens/s (at most :attr:`rate`).

        :attr:`rate` is unchanged. The value holds until changed: successes
        do not recover from it (``TokenBucket``'s do), a throttle signal lowers
        it further. While Redis is down the value applies to the fallback and
        is written on the next successful call.
        """
        drive(self._set_rate(value), self._command)

    # -- adaptation ------------------------------------------------------

    def record_throttle(self, round: Any) -> None:
        """Report a throttled answer to an attempt whose reservation had ``round``.

        Lowers the rate of every process on the key (``beta``), unless a
        signal of the same round was counted already, by any process: calls
        sent together are throttled together, and that is one signal. A round
        older than the last reply's costs no round trip. While Redis is down
        the fallback bucket adapts instead (``on_failure="local"``).
        """
        args = self._throttle_args(round)
        if args is not None:
            drive(self._adapt("throttle", args, round), self._command)

    def record_success(self) -> None:
        """Report an answer that was not throttled: the shared rate recovers toward ``rate``.

        Free (no lock, no round trip) while the rate is at the configured
        rate, and while the next step of the curve would be under 1%.
        """
        args = self._recovery_args()
        if args is not None:
            drive(self._adapt("recover", args, None), self._command)

    def close(self) -> None:
        """Close the bucket's connections (the client passed in is not touched)."""
        close_made(self._made)

    # -- Redis -----------------------------------------------------------

    def _command(self, command: Command) -> Any:
        """Run one of a step's commands (see _redis_steps) on the bucket's own client."""
        if isinstance(command, Eval):
            return self._wire.evalsha(command.sha, command.args, command.more_keys)
        if isinstance(command, Load):
            return self._wire.load(command.source)
        return self._redis.type(self.key)

    def _due_in(self, reservation: RedisReservation) -> float:
        return drive(self._due(reservation), self._command)

    def _cancel(self, reservation: RedisReservation) -> None:
        if self._mark_done(reservation):
            drive(self._give_back(reservation), self._command)
