"""The in-process bucket: one object shared by threads and event loops.

Its schedule is window-shaped (see ``_window``): a call waits only when
sending it now could put more calls in some window than the quota allows.
How large a burst the server takes is learned (see ``_burst``), and the rate
adapts to throttled answers (CUBIC, see ``_cubic``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import _checks, _fork
from ..events import EventHook, RateChanged, emit
from . import _burst, _cubic
from ._base import Bucket, BucketReservation, Listeners
from ._cubic import AdaptiveRate
from ._window import Limit, Window, WindowLog, check_limits, rate_window, scaled_count, window_limits

__all__ = ["DEFAULT_GUARD", "Reservation", "TokenBucket"]

_EPSILON = 1e-9
_new = object.__new__
#: Seconds added to every window of a second or longer (see ``guard``).
DEFAULT_GUARD = 0.01
#: The longest guard accepted, seconds.
_MAX_GUARD = 60.0
#: What a reservation's round says of its send: evenly spaced, in the learned
#: burst, or in a burst still being explored (see ``record_throttle``).
_EVEN, _BURST, _PROBE = 0, 1, 2


class Reservation(BucketReservation):
    """Tokens taken from a :class:`TokenBucket`, usable after :attr:`delay`.

    The caller waits ``delay`` seconds (sleeping in its own thread, or awaiting
    in its event loop), then asks :meth:`due_in` whether a rate cut meanwhile
    moved its slot later. A caller that gives up first calls :meth:`cancel`.
    """

    __slots__ = ("_bucket", "_done", "delay", "ready_at", "round", "tokens")

    #: Tokens this reservation holds.
    tokens: float
    #: Seconds to wait, counted from the moment the reservation was made.
    delay: float
    #: When the caller may go ahead, on the bucket's clock (moved later by a cut).
    ready_at: float
    #: Opaque: handed back to :meth:`TokenBucket.record_throttle` as it is.
    round: Any
    _bucket: TokenBucket
    #: True once cancelled (or found due when a cancel came).
    _done: bool

    def due_in(self) -> float:
        """Seconds until the caller may go ahead, as of now (0 once due).

        Normally ``ready_at - now``. A rate cut (or a tighter burst) re-plans
        the calls still waiting, in order, and moves their slots later: a
        waiter that wakes at its old time asks again and sleeps the rest.
        """
        wait = self.ready_at - self._bucket._clock()
        return wait if wait > _EPSILON else 0.0

    def cancel(self) -> None:
        """Give the slot back if it is not due yet; safe to call more than once.

        The slot is given back exactly: the send leaves the schedule, so no
        window counts it. Calls queued behind it keep their slots (they are
        asleep toward them); the next reservation can take its place.
        """
        self._bucket._cancel(self)

    def __repr__(self) -> str:
        return f"<Reservation tokens={self.tokens:g} delay={self.delay:.6f}s>"


class TokenBucket(Bucket):
    """A thread-safe, window-shaped rate limiter that many interceptors, threads and loops share.

    ``rate=15`` reads the quota as APIs document it: at most 15 calls in any
    window of one second. A call waits only when sending it now could break
    that (or one of ``limits``): a burst of up to 15 goes out at once, and a
    saturated stream sends one window's worth per window. Sliding-window,
    fixed-window and token-bucket servers whose burst is the quota then never
    have a reason to throttle.

    Servers that allow smaller bursts are learned: a throttled answer to a
    call sent in a burst halves the burst (down to even spacing, one call
    every ``1/rate``); bursts then widen slowly again, one probe at a time,
    and only at the configured rate. Until the first answers come back the
    burst starts at 2 and grows with each success, as TCP's window does
    (slow start), so the first lesson is cheap. A throttle of a burst still
    being explored shrinks the burst alone; every other throttled answer
    lowers the rate (``adaptive``). Waiters already queued are re-planned,
    in order, on every change.

    Taking tokens is a reservation: a short update under a lock that says how
    long to wait, so waiters are served in the order they asked, with no
    polling and no thread per waiter.

    Args:
        rate: The calls per second the API allows, in [1e-9, 1e12]. A whole
            number is that many calls in any second; otherwise the count is
            rounded up and the window stretched (2.5/s: 3 in any 1.2 s).
        capacity: The former name of ``burst``, still accepted.
        burst: The largest burst the server is known to accept, in [1, 1e12]:
            1 spaces calls evenly at ``1/rate``. None (the default) learns it,
            up to the rate's window. A burst above ``rate`` widens the window
            to match (``burst=30`` at 15/s: 30 in any 2 s).
        limits: More windows that hold at the same time, e.g.
            ``[Limit(10_000, 3600)]`` for an hourly quota. A cut of the rate
            scales their counts too.
        guard: Seconds added to every window of one second or longer, in
            [0, 60]: the server counts arrivals, not sends, and a call that
            left just after a window ended may arrive with the one before it.
            The default of 10 ms costs 1 % of a saturated stream's rate.
        adaptive: How the rate adapts to throttle signals reported with
            :meth:`record_throttle` (CUBIC, see :class:`AdaptiveRate`); None
            keeps the rate fixed and the burst at ``burst`` (or the window).
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
        burst: float | None = None,
        limits: Iterable[Limit] = (),
        guard: float = DEFAULT_GUARD,
        adaptive: AdaptiveRate | None = AdaptiveRate(),  # noqa: B008 - frozen, shared safely
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        rate = _checks.positive("rate", rate)
        if capacity is not None:
            if burst is not None:
                raise ValueError("capacity is the former name of burst: pass one of them, not both")
            burst = _checks.at_least("capacity", capacity, 1)
        elif burst is not None:
            burst = _checks.at_least("burst", burst, 1)
        if adaptive is not None and not isinstance(adaptive, AdaptiveRate):
            raise ValueError(f"adaptive must be an AdaptiveRate or None, got {adaptive!r}")
        guard = _checks.non_negative("guard", guard)
        if guard > _MAX_GUARD:
            raise ValueError(f"guard must be a number in [0, {_MAX_GUARD:g}] seconds, got {guard!r}")
        limits = check_limits(limits)
        #: Lock guarding the state below; held only for arithmetic.
        self._lock = _fork.register(self)
        #: Monotonic clock in seconds.
        self._clock = clock
        #: The configured rate, and the rate in force (lower while adapting).
        self._rate = rate
        self._effective_rate = rate
        #: The declared burst, or None when it is learned.
        self._declared_burst = burst
        #: The declared windows beyond the rate's.
        self._limits = limits
        self._guard = guard
        #: The sends, past and planned (see _window).
        self._log = WindowLog()
        #: No slot earlier than this (a Redis bucket's fallback, a full window).
        self._not_before = -math.inf
        #: Rate adaptation: its settings, the curve's state, and the round
        #: (bumped on every decrease, so one burst of signals counts once).
        self._adaptive = adaptive
        self._cubic = _cubic.CubicState(rate=rate, w_max=rate)
        self._round = 0
        #: The burst in force and how it is learned.
        self._burst = _burst.start(self._most_burst(rate), learn=self._learns_burst, declared=burst is not None)
        #: The windows in force, derived from the above by _reshape_locked.
        self._windows: tuple[Window, ...] = ()
        self._interval = 1.0 / rate
        self._reshape_locked()
        #: Called with a RateChanged on every change of the effective rate.
        self._listeners = Listeners()

    # -- configuration ---------------------------------------------------

    @property
    def rate(self) -> float:
        """The configured rate in calls per second; assign to change it live."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = _checks.positive("rate", value)
        with self._lock:
            old = self._effective_rate
            self._rate = value
            self._cubic = _cubic.CubicState(rate=value, w_max=value)
            self._burst = _burst.start(
                self._most_burst(value), learn=self._learns_burst, declared=self._declared_burst is not None
            )
            self._set_effective_locked(value, replan=True)
        self._notify(old, value, "configured")

    @property
    def effective_rate(self) -> float:
        """The rate in force now: the configured rate, or lower while adapting."""
        return self._effective_rate

    def set_effective_rate(self, value: float) -> None:
        """Run at ``value`` calls/s (at most the configured rate) until changed.

        Used by rate adaptation; the configured :attr:`rate` is unchanged.
        """
        value = _checks.positive("effective rate", value)
        with self._lock:
            old = self._effective_rate
            value = min(value, self._rate)
            self._cubic = _cubic.CubicState(rate=value, w_max=value, last_decrease=self._clock())
            self._set_effective_locked(value, replan=value < old)
        self._notify(old, value, "throttle" if value < old else "recovery")

    @property
    def burst(self) -> float:
        """The largest burst sent now (learned, or as declared)."""
        return self._burst.size

    @property
    def declared_burst(self) -> float | None:
        """The burst given as ``burst=`` (or ``capacity=``), or None when it is learned."""
        return self._declared_burst

    @property
    def limits(self) -> tuple[Limit, ...]:
        """The declared windows beyond the rate's."""
        return self._limits

    @property
    def guard(self) -> float:
        """Seconds added to every window of one second or longer."""
        return self._guard

    @property
    def capacity(self) -> float:
        """The most tokens one reservation may take: the smallest declared window's count."""
        counts = [self._most_burst(self._rate)] + [limit.count for limit in self._limits]
        return float(min(counts))

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock that reservations' ``ready_at`` times are on."""
        return self._clock

    @property
    def _learns_burst(self) -> bool:
        return self._adaptive is not None

    def _most_burst(self, rate: float) -> float:
        """The largest burst at ``rate``: its window's count, or the declared burst scaled to it."""
        if self._declared_burst is None:
            return rate_window(rate)[0]
        return max(1.0, math.floor(self._declared_burst * rate / self._rate + _EPSILON))

    # -- adaptation --------------------------------------------------------

    @property
    def adaptive(self) -> AdaptiveRate | None:
        """How the rate adapts to throttle signals, or None when it is fixed."""
        return self._adaptive

    @property
    def round(self) -> int:
        """Opaque: the adaptation round, as reservations of an evenly spaced call carry it."""
        return self._round * 4 + _EVEN

    def record_throttle(self, round: int) -> None:
        """Report a throttled answer to an attempt whose reservation had ``round``.

        One signal per round: calls sent together are throttled together.
        A call sent in a burst that was still exploring (slow start, or a
        probe of a wider burst) says the burst was too large, and only the
        burst shrinks (see ``_burst``). Any other signal lowers the rate
        (``beta``), and one for a call sent in the learned burst halves the
        burst as well: a throttle cannot say which was too much (a strict
        server refuses the burst, a quota shared with other clients refuses
        the rate), and a burst halved alone leaves a client sharing its
        quota throttled for many rounds. The queue is re-planned.
        """
        if self._adaptive is None:
            return
        number, kind = divmod(round, 4)
        with self._lock:
            if number < self._round:
                return
            self._round += 1
            if kind == _PROBE and self._burst.exploring:
                self._burst = _burst.on_probe_throttle(self._burst)
                self._reshape_locked()
                self._replan_locked()
                return
            if (kind != _EVEN or self._burst.slow_start) and self._burst.size > 1:
                # Any throttle ends slow start, as a loss ends TCP's.
                self._burst = _burst.on_throttle(self._burst)
            old = self._effective_rate
            self._cubic = _cubic.on_throttle(self._adaptive, self._cubic, self._rate, self._clock())
            self._set_effective_locked(self._cubic.rate, replan=True)
        self._notify(old, self._cubic.rate, "throttle")

    def record_success(self) -> None:
        """Report an answer that was not throttled: the burst widens and the rate recovers."""
        if self._adaptive is None or (self._cubic.last_decrease is None and self._burst.settled):
            return  # the common case: nothing to learn, no lock taken
        with self._lock:
            # Past slow start the burst widens only at the configured rate: a
            # burst that passes while the rate is cut is spaced wider than it
            # will be, and would be learned too large.
            if not self._burst.settled and (self._burst.slow_start or self._cubic.last_decrease is None):
                self._burst = _burst.on_success(self._burst, self._windows[0].calls)
                self._reshape_locked()
            if self._cubic.last_decrease is None:
                return
            old = self._effective_rate
            self._cubic = _cubic.on_success(self._adaptive, self._cubic, self._rate, self._clock())
            if self._cubic.rate == old:
                return
            self._set_effective_locked(self._cubic.rate, replan=False)
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

    def _set_effective_locked(self, value: float, *, replan: bool) -> None:
        self._effective_rate = value
        self._burst = _burst.clamp(self._burst, self._most_burst(value))
        self._reshape_locked()
        if replan:
            self._replan_locked()

    def _reshape_locked(self) -> None:
        """Derive the windows in force from the rate, the burst and the limits."""
        rate, scale = self._effective_rate, self._effective_rate / self._rate
        count, span = rate_window(rate)
        most = max(count, self._most_burst(rate))
        guard = self._guard
        windows = [self._rate_window(rate)]
        if rate < self._rate:
            # A cut's window is shorter as well as emptier: (3 in 4.3 s) lets
            # 6 through in 5 s. The configured one still holds beside it.
            windows.append(self._rate_window(self._rate))
        size = self._burst.size
        if size < most:
            # In slow start, ``size`` calls per even interval: the pace grows
            # with every success, as fast as answers come back, and the first
            # send a strict server refuses is the second of a pair. Past it, a
            # token bucket of that burst: ``size`` calls in any ``size`` intervals.
            windows.append(Window(size, (1.0 if self._burst.slow_start else size) / rate))
        for limit in self._limits:
            windows.append(Window(scaled_count(limit.count, scale), limit.seconds + guard))
        self._windows = tuple(windows)
        self._interval = 1.0 / rate
        # Sends are kept for the longest window the rate could reach (a cut
        # stretches the rate's window up to the adaptation floor's).
        low = self._adaptive.floor(self._rate) if self._adaptive is not None else rate
        longest = max(span, rate_window(low)[1], max(self._most_burst(low), 1.0) / low)
        self._log.horizon = max([longest, *(limit.seconds for limit in self._limits)]) + guard

    def _rate_window(self, rate: float) -> Window:
        """The rate's own window at ``rate``: its count (or the burst), plus the guard from a second up."""
        most = max(rate_window(rate)[0], self._most_burst(rate))
        span = most / rate
        return Window(most, span + (self._guard if span >= 1 else 0.0))

    def _replan_locked(self) -> None:
        """Plan the waiting calls again, in order, under the windows now in force.

        A re-planned call joins the round in force: it is sent under the new
        schedule, so a throttle of it is news, not an echo of the old one.
        A round its owner wrapped (the Redis bucket's fallback marks its
        rounds as the fallback's) is left as it is: it stays the old round.
        """
        now = self._clock()
        log = self._log
        for when, weight, owner in log.take_later_than(now):
            previous = log.last
            start = max(when, previous, now, self._not_before)
            start = log.earliest(start, weight, self._windows)
            if owner is not None:
                owner.ready_at = start
                if isinstance(owner.round, int):
                    owner.round = self._round_of(start, previous, weight)
            log.append(start, weight, owner)

    def _round_of(self, start: float, previous: float, weight: float) -> int:
        """The round a send at ``start`` carries (``previous``: the send before it)."""
        kind = _EVEN
        if start < previous + weight * self._interval - _EPSILON:
            kind = _PROBE if self._burst.exploring else _BURST
        return self._round * 4 + kind

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
        # Filled in before the lock is taken; kept only if it fits max_wait.
        reservation = _new(Reservation)
        reservation.tokens = tokens
        reservation._bucket = self
        reservation._done = False
        with self._lock:
            now = self._clock()
            log, held = self._log, self._not_before
            start = log.place(
                now if now > held else held, now, tokens, self._windows, now + max_wait + _EPSILON, reservation
            )
            if start is None:
                return None
            # Under the lock: a re-plan may move ready_at at once.
            reservation.ready_at = start
            wait = start - now
            reservation.delay = wait if wait > _EPSILON else 0.0
            # Sent less than one even interval after the call before: a burst,
            # and a probe while the burst's size is not yet known good.
            reservation.round = self._round_of(start, log.previous, tokens)
        return reservation

    def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if they are available right now; never waits."""
        if tokens != 1:
            self._check_tokens(tokens)
        with self._lock:
            now = self._clock()
            held = self._not_before
            return (
                self._log.place(now if now > held else held, now, tokens, self._windows, now + _EPSILON, None)
                is not None
            )

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
            self._not_before = max(self._not_before, when + self._interval)

    def hold_window(self, seconds: float) -> float | None:
        """The server says a window of ``seconds`` is full: hold new calls until it frees.

        Answers such as Clarifai's 11003 (hourly limit) mean the server counted
        the window full, perhaps with other clients' calls. When a declared
        limit has that window, no slot is handed out before the oldest send
        this bucket sees in it leaves (or a whole window from now, when it
        sees none), and the seconds until then are returned. Returns None,
        changing nothing, when no limit matches.
        """
        matching = window_limits(self._limits, seconds)
        if not matching:
            return None
        with self._lock:
            now = self._clock()
            span = matching[0].seconds + self._guard
            first = self._log.first_later_than(now - span)
            free = now + span if first is None or first > now else first + span
            self._not_before = max(self._not_before, free)
            return max(self._not_before - now, 0.0)

    def available(self) -> float:
        """Tokens that could be taken now without waiting (negative when calls are queued)."""
        with self._lock:
            now = self._clock()
            return min(count - self._log.weight_since(now - span) for count, span in self._windows)

    def due_in(self, reservation: Reservation) -> float:
        """Seconds until ``reservation`` may go ahead, as of now (see :meth:`Reservation.due_in`)."""
        return reservation.due_in()

    def _check_tokens(self, tokens: float) -> None:
        _checks.positive("tokens", tokens)
        if tokens > self.capacity:
            raise ValueError(
                f"tokens must be <= capacity ({self.capacity:g}) or it could never be granted, got {tokens!r}"
            )

    def _cancel(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation._done:
                return
            reservation._done = True
            if reservation.ready_at <= self._clock():
                return  # due already: the caller may have sent it
            self._log.remove(reservation)

    def __repr__(self) -> str:
        return (
            f"<TokenBucket rate={self._effective_rate:g}/{self._rate:g}/s "
            f"burst={self.burst:g} available={self.available():.2f}>"
        )
