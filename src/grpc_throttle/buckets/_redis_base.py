"""What the sync and asyncio Redis buckets share: their state and the pure work on it.

The arguments sent to the scripts and the replies parsed, the lease pool, the
reservations and this process's copy of the key's shared rate adaptation
(``_redis_adapt``). The operations that use them are steps (``_redis_steps``);
``redis.py`` and ``redis_aio.py`` only run the steps' commands, each in its
own world.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .. import _checks, _fork
from ._base import BucketReservation
from ._breaker import Breaker
from ._cubic import AdaptiveRate
from ._lease import LeasePool, Slot
from ._redis_adapt import SharedAdaptation, SharedCurve
from ._redis_config import Settings
from ._redis_handoff import Handoff

#: Extra tokens value meaning "the caller's deadline cannot be met".
TOO_LATE = -1


class RedisReservation(BucketReservation):
    """Tokens taken from a Redis bucket, usable after :attr:`delay` seconds.

    :meth:`cancel` gives back the tokens no later reservation has overtaken.
    """

    __slots__ = ("_bucket", "_done", "_place", "_seen", "_slot", "delay", "ready_at", "round", "tokens")

    def __init__(
        self,
        bucket: RedisBucketBase,
        tokens: float,
        delay: float,
        ready_at: float,
        place: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0),
        slot: Slot | None = None,
        round: int = 0,
    ) -> None:
        #: Tokens this reservation holds.
        self.tokens = tokens
        #: Seconds to wait, counted from the moment the reservation was made.
        self.delay = delay
        #: When the caller may go ahead, on the bucket's (local) clock.
        self.ready_at = ready_at
        #: The key's adaptation round when this was made (see record_throttle).
        self.round = round
        self._bucket = bucket
        self._done = False
        #: A slot from the lease pool, or None for one reserved in Redis.
        self._slot = slot
        #: Its place in Redis's schedule: start, end, when due (microseconds), epoch.
        self._place = place
        #: The rate cuts this process had seen when it was made (see due_in).
        self._seen = bucket._cuts_seen

    def due_in(self) -> float | Awaitable[float]:
        """Seconds until the caller may go ahead, as of now (0 once due).

        As :meth:`Reservation.due_in <grpc_throttle.Reservation.due_in>`: when
        this process has seen the shared rate cut since the reservation was
        made, one round trip learns where the cut moved it (Redis stretches
        the queue as the local bucket does). A coroutine on the asyncio bucket.
        Leased slots and reservations made while Redis was down keep their time.
        """
        return self._bucket._due_in(self)

    def cancel(self) -> None:
        """Give the tokens back if the reservation is not due yet (best effort, idempotent)."""
        self._bucket._cancel(self)

    def _cancel_args(self) -> list[str]:
        """The cancel script's arguments (with limits: the tokens to take off the windows, and the limits)."""
        start, end, due, epoch = self._place
        args = [repr(start), repr(end), str(epoch), repr(due)]
        limits = self._bucket._limits_arg
        return [*args, repr(self.tokens), limits] if limits else args

    def __repr__(self) -> str:
        return f"<RedisReservation tokens={self.tokens:g} delay={self.delay:.6f}s>"


class RedisBucketBase(SharedAdaptation):
    """State and logic shared by the sync and asyncio ``RedisTokenBucket``."""

    _logger = logging.getLogger(__name__)
    #: True when the bucket talks through a Redis Cluster client (see _redis_errors.classify).
    _cluster = False

    def __init__(
        self, settings: Settings, rate: float, clock: Callable[[], float], adaptive: AdaptiveRate | None
    ) -> None:
        if adaptive is not None and not isinstance(adaptive, AdaptiveRate):
            raise ValueError(f"adaptive must be an AdaptiveRate or None, got {adaptive!r}")
        #: The configured rate, tokens per second (this process's).
        self._rate = settings.check_rate("rate", rate)
        #: Fixed configuration.
        self._settings = settings
        #: The Redis key of the bucket's hash.
        self._key = settings.redis_key
        #: The cancelled reservations waiting for the tail to reach them (see lua/cancel.lua).
        self._holes_key = settings.holes_key
        #: The limits as the scripts take them ('' for none).
        self._limits_arg = settings.limits_arg
        #: The keys every script that reads the windows takes after the bucket's (their counts).
        self._windows_keys = (settings.windows_key,) if self._limits_arg else ()
        #: The rate and capacity as sent to the scripts.
        self._rate_arg, self._capacity_arg = repr(self._rate), repr(settings.capacity)
        #: The reserve script's arguments in the common case (one token, no limit,
        #: no lease, no pending rate), encoded once: each argument sent costs client time.
        self._plain_args = (self._rate_arg.encode(), self._capacity_arg.encode())
        #: Monotonic clock in seconds (the breaker's and the lease's; never the schedule's).
        self._clock = clock
        #: Guards the lease pool, the pending rate, the shared curve and reservation flags.
        self._lock = threading.Lock()
        #: The rate in force and the adaptation curve, as last seen in Redis.
        self._view = SharedCurve(adaptive, self._rate, self._lock)
        #: Guards _redis_round_cut_locally (the fallback's own state has its lock).
        self._view_lock = threading.Lock()
        _fork.register_renewal(self, RedisBucketBase._renew_locks)
        #: An effective rate still to be written to Redis (sent with the next call).
        self._pending_eff: float | None = None
        #: The fallback bucket and the seams between it and the shared schedule.
        self._handoff = Handoff(settings, self._rate, adaptive, clock)
        #: The fallback bucket (on_failure="local").
        self._local = self._handoff.local
        #: Skips Redis while it is down.
        self._breaker = Breaker(
            f"Redis bucket {settings.redis_key!r}",
            settings.cooldown,
            clock,
            self._logger,
            settings.on_failure,
        )
        #: Leased slots, with lease > 1. A round trip's slots are checked against the limits
        #: together (lua/reserve.lua), so there are never more than the smallest count.
        lease = min([settings.lease, *(limit.count for limit in settings.limits)])
        self._pool = LeasePool(lease) if lease > 1 else None
        #: Cuts of the shared rate seen in replies (or made here) so far.
        self._cuts_seen = 0
        #: The last reserve reply's Redis time (microseconds) and when it arrived (bucket clock).
        self._redis_clock = (0.0, 0.0)
        #: What to fix, for the last outage that a setup mistake causes too (READONLY).
        self._fix = ""
        #: Those fixes logged at ERROR already: once per bucket each.
        self._fixes_logged: set[str] = set()

    def _renew_locks(self) -> None:
        """In a forked child: fresh locks (the curve shares the bucket's)."""
        self._lock = threading.Lock()
        self._view._lock = self._lock
        self._view_lock = threading.Lock()
        self._handoff.lock = threading.Lock()

    @property
    def rate(self) -> float:
        """This process's configured rate; assigning it also resets the shared effective rate."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = self._settings.check_rate("rate", value)
        self._rate, self._rate_arg = value, repr(value)
        self._plain_args = (self._rate_arg.encode(), self._capacity_arg.encode())
        self._local.rate = value * self._settings.local_share
        self._set_pending(value, "configured")

    @property
    def effective_rate(self) -> float:
        """The rate in force for every process on the key, as of the last Redis reply."""
        return self._view.rate

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds (the largest burst)."""
        return self._settings.capacity

    @property
    def key(self) -> str:
        """The Redis key holding the bucket."""
        return self._key

    @property
    def shared(self) -> bool:
        """False while Redis is down and the failure policy is in force."""
        return self._breaker.closed

    def _take_report(self, reply: Any, sent: float | None = None) -> None:
        """Take in a ``now iv rd [since k wm]`` reply; ``sent`` is the pending rate it carried."""
        received = self._clock()
        now, iv, *tail = reply.split()
        self._observe(float(now), received, float(iv), tail, sent)

    def _observe(self, now: float, received: float, iv: float, tail: list[Any], sent: float | None) -> None:
        with self._lock:
            if sent is not None and self._pending_eff == sent:
                self._pending_eff = None
            if self._pending_eff is not None:  # a rate set here has not reached Redis yet
                return
            old = self._view.observe(now, received, iv, tail)
            if old is not None and self._view.rate < old:
                self._cuts_seen += 1  # waiters ask where the cut moved them (due_in)
                if self._pool is not None:
                    self._pool.clear()  # slots cut at the faster rate
        self._view.notify(old)

    def _set_pending(self, value: float, reason: str | None = None) -> float:
        value = min(self._settings.check_rate("effective rate", value), self._rate)
        with self._lock:
            self._pending_eff = value
            old = self._view.set(value)
            if value < old:
                self._cuts_seen += 1
            if self._pool is not None:
                self._pool.clear()
        self._local.set_effective_rate(value * self._settings.local_share)
        self._view.notify(old, reason)
        return value

    def _check(self, tokens: float, max_wait: float) -> tuple[float, float]:
        if tokens != 1:
            _checks.positive("tokens", tokens)
            if tokens > self._settings.capacity:
                raise ValueError(f"tokens must be <= capacity ({self._settings.capacity:g}), got {tokens!r}")
        if max_wait != math.inf:
            _checks.non_negative("max_wait", max_wait)
        return float(tokens), float(max_wait)

    def _take_leased(self, tokens: float, max_wait: float) -> tuple[RedisReservation | None, int]:
        """A reservation from the lease pool, else how many extra tokens to lease."""
        if self._pool is None or tokens != 1:
            return None, 0
        with self._lock:
            now = self._clock()
            slot = self._pool.take(now, max_wait)
            if slot is None:
                return None, TOO_LATE if self._pool.too_late(now, max_wait) else self._pool.extra()
        delay = max(slot.ready - now, 0.0)
        return RedisReservation(self, 1.0, delay, now + delay, slot=slot, round=self._view.round), 0

    def _reserve_args(self, tokens: float, max_wait: float, extra: int) -> Sequence[str | bytes]:
        eff = self._pending_eff
        not_before = self._handoff.not_before()
        limits = self._limits_arg
        if tokens == 1 and max_wait == math.inf and not extra and eff is None and not not_before and not limits:
            return self._plain_args
        args = [
            self._rate_arg,
            self._capacity_arg,
            "1" if tokens == 1 else repr(tokens),
            "-1" if max_wait == math.inf else repr(max_wait * 1e6),
            str(extra),
            "" if eff is None else repr(eff),
        ]
        if not_before or limits:
            args.append(repr(not_before * 1e6) if not_before else "")
        if limits:
            args.append(limits)
        return args

    def _accept(self, reply: Any, args: Sequence[str | bytes], extra: int) -> RedisReservation | None:
        """The reserve script's reply (``granted wait start iv epoch start-now [rd ...]``) as a reservation."""
        received = self._clock()
        granted, wait_us, start_us, iv_us, epoch, ahead_us, *tail = reply.split()  # bytes or str
        interval, start = float(iv_us), float(start_us)
        now = start - float(ahead_us)
        self._redis_clock = (now, received)
        self._observe(now, received, interval, tail, float(args[5]) if len(args) > 5 and args[5] else None)
        if int(granted) != 1:
            return None
        wait = float(wait_us)
        if self._pool is not None:  # also when extra == 0: the pool learns the rate
            self._lease(self._pool, received, start, now, interval, extra)
        tokens = float(args[2]) if len(args) > 2 else 1.0
        place = (start, start + tokens * interval, now + wait, int(epoch))
        round = int(tail[0]) if tail else 0
        self._handoff.shared_slot(received + wait / 1e6)
        return RedisReservation(self, tokens, wait / 1e6, received + wait / 1e6, place, round=round)

    def _lease(self, pool: LeasePool, received: float, start: float, now: float, interval: float, extra: int) -> None:
        """Pool the ``extra`` slots taken after the caller's own (Redis times in microseconds)."""
        span, cap = pool.limit * interval / 1e6, self._settings.capacity
        ready = [received + max(start + (2 + k - cap) * interval - now, 0.0) / 1e6 for k in range(extra)]
        with self._lock:
            pool.fill([Slot(r, r + span) for r in ready], interval / 1e6)
            if ready:
                self._handoff.shared_slot(ready[-1])

    def _mark_done(self, reservation: RedisReservation) -> bool:
        """Flag a reservation cancelled; True when Redis must still be told.

        Not when it was cancelled already, came from the lease pool (the slot
        goes back to the pool) or is due (the caller may have acted on it).
        """
        with self._lock:
            if reservation._done:
                return False
            reservation._done = True
            if reservation._slot is not None and self._pool is not None:
                self._pool.put_back(reservation._slot, self._clock())
                return False
        return reservation.ready_at > self._clock()

    def _cancel(self, reservation: RedisReservation) -> None:
        raise NotImplementedError

    def _due_in(self, reservation: RedisReservation) -> float | Awaitable[float]:
        raise NotImplementedError

    def _due_args(self, reservation: RedisReservation) -> list[str] | None:
        """The due script's arguments, or None when the reservation's time stands.

        It stands unless this process saw a cut since it was made, and only
        for a reservation placed in Redis and not cancelled. A slot that was
        due before the cut stays where it was (the script says so).
        """
        if reservation._seen == self._cuts_seen or reservation._slot is not None or reservation._done:
            return None
        reservation._seen = self._cuts_seen
        start, end, due, epoch = reservation._place
        args = [self._rate_arg, self._capacity_arg, repr(start), repr(end), repr(due), str(epoch)]
        if self._limits_arg:  # a slot moved later is counted where it lands too
            args += [repr(reservation.tokens), self._limits_arg]
        return args

    def _moved(self, reservation: RedisReservation, reply: Any) -> float:
        """Take the due script's ``ep start end due now`` reply; the seconds left."""
        received = self._clock()
        epoch, start, end, due, now = reply.split()
        due_us = float(due)
        reservation._place = (float(start), float(end), due_us, int(epoch))
        ready_at = received + (due_us - float(now)) / 1e6
        if ready_at > reservation.ready_at:
            reservation.ready_at = ready_at
            self._handoff.shared_slot(ready_at)
        return self._left(reservation)

    def _left(self, reservation: RedisReservation) -> float:
        wait = reservation.ready_at - self._clock()
        return wait if wait > 1e-9 else 0.0

    def __repr__(self) -> str:
        name = type(self).__name__
        state = "shared" if self.shared else f"down, on_failure={self._settings.on_failure!r}"
        lease = f" lease={self._settings.lease}" if self._pool is not None else ""
        limits = "".join(f" limit={limit.count}/{limit.seconds:g}s" for limit in self._settings.limits)
        return (
            f"<{name} key={self.key!r} rate={self._view.rate:g}/{self._rate:g}/s "
            f"capacity={self.capacity:g}{lease}{limits} {state}>"
        )
