"""The in-process token bucket: one object shared by threads and event loops."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from .. import _checks, _fork
from ..events import EventHook, RateChanged, emit
from . import _cubic, _gcra
from ._base import Bucket, BucketReservation, Listeners
from ._cubic import AdaptiveRate

__all__ = ["Reservation", "TokenBucket"]

_EPSILON = _gcra.EPSILON
_new = object.__new__
#: Rate changes remembered for cancellations (adaptation changes the rate in
#: steps of >= 1 %, so this covers minutes of recovery).
_RESCALES = 256


class Reservation(BucketReservation):
    """Tokens taken from a :class:`TokenBucket`, usable after :attr:`delay`.

    The caller waits ``delay`` seconds (sleeping in its own thread, or awaiting
    in its event loop), then goes ahead. A caller that gives up before then
    calls :meth:`cancel` so that the tokens go back to the bucket.
    """

    __slots__ = ("_bucket", "_epoch", "_start", "_tat", "delay", "ready_at", "round", "tokens")

    def __init__(
        self,
        bucket: TokenBucket,
        tokens: float,
        delay: float,
        ready_at: float,
        start: float,
        tat: float,
        epoch: int,
        round: int,
    ) -> None:
        #: Tokens this reservation holds.
        self.tokens = tokens
        #: Seconds to wait, counted from the moment the reservation was made.
        self.delay = delay
        #: When the caller may go ahead, on the bucket's clock.
        self.ready_at = ready_at
        #: The bucket's adaptation round when this was made (see record_throttle).
        self.round = round
        self._bucket = bucket
        self._start = start
        self._tat = tat
        self._epoch = epoch

    def due_in(self) -> float:
        """Seconds until the caller may go ahead, as of now (0 once due).

        Normally ``ready_at - now``. When the bucket's rate was cut after the
        reservation was made, the queue ahead is re-spaced at the new rate and
        this slot moves later: a waiter that wakes at :attr:`ready_at` asks
        again and sleeps the difference, so a cut slows the calls already
        waiting too, not only those that come after it.
        """
        return self._bucket._due_in(self)

    def cancel(self) -> None:
        """Give the tokens back if the reservation is not due yet.

        Safe to call more than once, and after the reservation became due (it
        then does nothing: the caller may already have acted on it).
        """
        self._bucket._cancel(self)

    def __repr__(self) -> str:
        return f"<Reservation tokens={self.tokens:g} delay={self.delay:.6f}s>"


class TokenBucket(Bucket):
    """A thread-safe token bucket that many interceptors, threads and loops share.

    Tokens refill at ``rate`` per second up to ``capacity``. Taking tokens is a
    reservation: a short update under a lock that says how long the caller must
    wait, so waiters are served in the order they asked (FIFO) with no polling
    and no thread per waiter.

    Args:
        rate: Tokens added per second: the request rate the API allows.
        capacity: The most tokens the bucket holds, i.e. the largest burst it
            lets through at once. Defaults to 1: calls are spread evenly at
            ``rate``. A server's own burst allowance is rarely documented, and a
            client burst larger than it is answered "throttled"; bursting saves
            at most ``capacity / rate`` seconds once, so smooth pacing is the
            setting that gets every call through with the fewest throttled
            answers. Raise it when the server is known to accept bursts.
        adaptive: How the rate adapts to throttle signals reported with
            :meth:`record_throttle` (CUBIC, see :class:`AdaptiveRate`); None
            keeps the rate fixed. The interceptors report every throttled
            answer, so every caller sharing the bucket slows down together.
        clock: Monotonic clock in seconds; injectable for tests.

    Example:
        >>> bucket = TokenBucket(rate=15)
        >>> bucket.try_acquire()
        True
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        adaptive: AdaptiveRate | None = AdaptiveRate(),  # noqa: B008 - frozen, shared safely
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        rate = _checks.positive("rate", rate)
        capacity = 1.0 if capacity is None else _checks.at_least("capacity", capacity, 1)
        if adaptive is not None and not isinstance(adaptive, AdaptiveRate):
            raise ValueError(f"adaptive must be an AdaptiveRate or None, got {adaptive!r}")
        #: Lock guarding the state below; held only for arithmetic.
        self._lock = _fork.register(self)
        #: Monotonic clock in seconds.
        self._clock = clock
        #: The configured rate, tokens per second.
        self._rate = rate
        #: The rate in force (lower than _rate while adapting to throttling).
        self._effective_rate = rate
        #: Seconds per token at the rate in force.
        self._interval = 1.0 / rate
        #: Most tokens held at once.
        self._capacity = capacity
        #: Theoretical arrival time (see _gcra): when the bucket is full again.
        self._tat = -math.inf
        #: Rate changes so far, and the last _RESCALES of them as (when, old
        #: interval, new interval): a reservation made before a rate change is
        #: carried into the new scale when it is cancelled.
        self._epoch = 0
        self._rescales: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=_RESCALES)
        #: Cancelled reservations not at the tail yet: their end tat -> their start.
        self._holes: dict[float, float] = {}
        #: Rate adaptation: its settings, the curve's state, and the round
        #: (bumped on every decrease, so one burst of signals counts once).
        self._adaptive = adaptive
        self._cubic = _cubic.CubicState(rate=rate, w_max=rate)
        self._round = 0
        #: Called with a RateChanged on every change of the effective rate.
        self._listeners = Listeners()

    # -- configuration ---------------------------------------------------

    @property
    def rate(self) -> float:
        """The configured rate in tokens per second; assign to change it live."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = _checks.positive("rate", value)
        with self._lock:
            old = self._effective_rate
            self._rate = value
            self._cubic = _cubic.CubicState(rate=value, w_max=value)
            self._set_effective_locked(value)
        self._notify(old, value, "configured")

    @property
    def effective_rate(self) -> float:
        """The rate in force now: the configured rate, or lower while adapting."""
        return self._effective_rate

    def set_effective_rate(self, value: float) -> None:
        """Run at ``value`` tokens/s (at most the configured rate) until changed.

        Used by rate adaptation; the configured :attr:`rate` is unchanged.
        """
        value = _checks.positive("effective rate", value)
        with self._lock:
            old = self._effective_rate
            value = min(value, self._rate)
            self._cubic = _cubic.CubicState(rate=value, w_max=value, last_decrease=self._clock())
            self._set_effective_locked(value)
        self._notify(old, value, "throttle" if value < old else "recovery")

    # -- adaptation --------------------------------------------------------

    @property
    def adaptive(self) -> AdaptiveRate | None:
        """How the rate adapts to throttle signals, or None when it is fixed."""
        return self._adaptive

    @property
    def round(self) -> int:
        """Rate decreases so far; reservations carry the round they were made in."""
        return self._round

    def record_throttle(self, round: int) -> None:
        """Report a throttled answer to an attempt whose reservation had ``round``.

        Lowers the effective rate (``beta``) unless an answer to an attempt of
        the same round already did: calls sent together are throttled together,
        and that is one signal.
        """
        if self._adaptive is None:
            return
        with self._lock:
            if round < self._round:
                return
            old = self._effective_rate
            self._cubic = _cubic.on_throttle(self._adaptive, self._cubic, self._rate, self._clock())
            self._round += 1
            self._set_effective_locked(self._cubic.rate)
        self._notify(old, self._cubic.rate, "throttle")

    def record_success(self) -> None:
        """Report an answer that was not throttled: the rate recovers toward ``rate``."""
        if self._adaptive is None or self._cubic.last_decrease is None:
            return  # the common case: nothing to recover, no lock taken
        with self._lock:
            old = self._effective_rate
            self._cubic = _cubic.on_success(self._adaptive, self._cubic, self._rate, self._clock())
            if self._cubic.rate == old:
                return
            self._set_effective_locked(self._cubic.rate)
        self._notify(old, self._cubic.rate, "recovery")

    def add_listener(self, hook: EventHook) -> None:
        """Call ``hook(RateChanged(...))`` on every change of the effective rate."""
        self._listeners.add(hook)

    def remove_listener(self, hook: EventHook) -> None:
        """Stop calling ``hook``; does nothing if it was not added."""
        self._listeners.remove(hook)

    def _notify(self, old: float, new: float, reason: str) -> None:
        if old != new and self._listeners:
            emit(self._listeners.hooks(), RateChanged(old, new, reason))  # type: ignore[arg-type]

    def _set_effective_locked(self, value: float) -> None:
        new_interval = 1.0 / value
        old_interval = self._interval
        if new_interval != old_interval:
            now = self._clock()
            rescale = _gcra.rescale
            capacity = self._capacity
            self._tat = rescale(self._tat, now, old_interval, new_interval, capacity)
            self._holes = {
                rescale(end, now, old_interval, new_interval, capacity): rescale(
                    start, now, old_interval, new_interval, capacity
                )
                for end, start in self._holes.items()
            }
            self._rescales.append((now, old_interval, new_interval))
            self._interval = new_interval
            self._epoch += 1
        self._effective_rate = value

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock that reservations' ``ready_at`` times are on."""
        return self._clock

    def due_in(self, reservation: Reservation) -> float:
        """Seconds until ``reservation`` may go ahead, as of now (see :meth:`Reservation.due_in`)."""
        return self._due_in(reservation)

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds (the largest burst)."""
        return self._capacity

    # -- taking tokens ---------------------------------------------------

    def reserve(self, tokens: float = 1, *, max_wait: float = math.inf) -> Reservation | None:
        """Reserve ``tokens`` without blocking.

        Args:
            tokens: How many tokens to take (the call's cost), at most
                :attr:`capacity`.
            max_wait: The longest wait the caller accepts, in seconds. When the
                wait would be longer, nothing is taken and ``None`` returned.

        Returns:
            A :class:`Reservation` whose ``delay`` says how long to wait, or
            ``None`` when that would exceed ``max_wait``.

        Raises:
            ValueError: ``tokens`` is not a number in (0, capacity].
        """
        if tokens != 1:
            self._check_tokens(tokens)
        # The hot path of every call. It is _gcra.reserve written out (a call
        # and a tuple cost more than the arithmetic; test_token_bucket checks
        # the two agree), under an explicit acquire/release (half the cost of
        # ``with lock`` on 3.11), and the Reservation is filled in directly
        # rather than through __init__.
        lock = self._lock
        lock.acquire()
        try:
            now = self._clock()
            start = self._tat
            if start <= now:
                if self._holes:
                    self._holes.clear()
                start = now
            tat = start + tokens * self._interval
            wait = tat - self._capacity * self._interval - now
            if wait <= _EPSILON:
                wait = 0.0
            elif wait > max_wait:
                return None
            self._tat = tat
            epoch = self._epoch
            round_ = self._round
        finally:
            lock.release()
        reservation = _new(Reservation)
        reservation.tokens = tokens
        reservation.delay = wait
        reservation.ready_at = now + wait
        reservation.round = round_
        reservation._bucket = self
        reservation._start = start
        reservation._tat = tat
        reservation._epoch = epoch
        return reservation

    def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if they are available right now; never waits."""
        if tokens != 1:
            self._check_tokens(tokens)
        lock = self._lock
        lock.acquire()
        try:
            now = self._clock()
            tat = self._tat if self._tat > now else now
            new_tat = tat + tokens * self._interval
            if new_tat - self._capacity * self._interval - now > _EPSILON:
                return False
            self._tat = new_tat
            return True
        finally:
            lock.release()

    def acquire(self, tokens: float = 1, *, timeout: float | None = None) -> bool:
        """Block the calling thread until ``tokens`` are taken.

        For plain scripts; interceptors use :meth:`reserve`. Do not call this
        from an event loop.

        Returns:
            True once the tokens are taken; False (nothing taken) when the wait
            would be longer than ``timeout`` seconds.
        """
        max_wait = math.inf if timeout is None else _checks.non_negative("timeout", timeout)
        reservation = self.reserve(tokens, max_wait=max_wait)
        if reservation is None:
            return False
        delay = reservation.delay
        while delay > 0:
            time.sleep(delay)
            delay = reservation.due_in()
        return True

    def hold_until(self, when: float) -> None:
        """Hand out no slot due earlier than one interval after ``when`` (bucket clock).

        For a bucket that takes over from another schedule whose slots, up to
        ``when``, are still firing (the Redis bucket's fallback).
        """
        with self._lock:
            tat = when + self._capacity * self._interval
            if tat > self._tat:
                self._tat = tat

    def available(self) -> float:
        """Tokens that could be taken now without waiting (negative when queued)."""
        with self._lock:
            return _gcra.level(self._tat, self._clock(), self._interval, self._capacity)

    def _check_tokens(self, tokens: float) -> None:
        _checks.positive("tokens", tokens)
        if tokens > self._capacity:
            raise ValueError(
                f"tokens must be <= capacity ({self._capacity:g}) or it could never be granted, got {tokens!r}"
            )

    def _due_in(self, reservation: Reservation) -> float:
        if reservation._epoch != self._epoch and reservation._epoch >= 0:
            # The rate changed since: carry the slot over (read without the
            # lock, the epoch can only be stale by a change that happens after
            # this caller was let go, which is the same as it going first).
            with self._lock:
                self._carry_locked(reservation)
        wait = reservation.ready_at - self._clock()
        return wait if wait > _EPSILON else 0.0

    def _carry_locked(self, reservation: Reservation) -> bool:
        """Move a reservation's slot through the rate changes since it was made.

        Exactly as the bucket's own state was carried (same arithmetic, so the
        tail comparison in _cancel stays exact). False when it is older than
        the changes remembered, or cancelled: it is then left as it is.
        """
        behind = self._epoch - reservation._epoch
        if reservation._epoch < 0 or behind > len(self._rescales):
            return False
        if behind:
            end, start, ready = reservation._tat, reservation._start, reservation.ready_at
            rescale, capacity = _gcra.rescale, self._capacity
            for when, old, new in list(self._rescales)[len(self._rescales) - behind :]:
                end = rescale(end, when, old, new, capacity)
                start = rescale(start, when, old, new, capacity)
                ready = rescale(ready, when, old, new, 0.0)
            # Its round stays the one it was made in: it goes out right after
            # the cut, while the server may still count the sends before it
            # (a 1 s window), so a throttled answer to it is no new signal.
            reservation._tat, reservation._start, reservation.ready_at = end, start, ready
            reservation._epoch = self._epoch
        return True

    def _cancel(self, reservation: Reservation) -> None:
        # Only a reservation at the tail of the schedule can give its slot back
        # without letting a later caller overtake one that is already queued;
        # earlier ones are remembered and given back once the tail reaches them.
        with self._lock:
            if not self._carry_locked(reservation):
                return  # cancelled already, or older than the rate changes kept
            reservation._epoch = -1  # a second cancel does nothing
            if reservation.ready_at <= self._clock():
                return
            end, start = reservation._tat, reservation._start
            if end != self._tat:
                self._holes[end] = start
                return
            self._tat = start
            while self._tat in self._holes:
                self._tat = self._holes.pop(self._tat)

    def __repr__(self) -> str:
        return (
            f"<TokenBucket rate={self._effective_rate:g}/{self._rate:g}/s "
            f"capacity={self._capacity:g} available={self.available():.2f}>"
        )
