"""Server-side quota policies for the Clarifai emulator: pure, clock passed in.

Each policy answers one question, "may this call go ahead at ``now``?", for
one user. None has a clock of its own or does I/O: the emulator passes the
time (seconds on a monotonic clock), so tests drive them on a virtual clock.
One quota object is not thread-safe by itself; the emulator holds a lock.

The token bucket here is written independently of :mod:`grpc_throttle.buckets`
on purpose: the emulator plays the server, and a test in which client and
server share their arithmetic would prove nothing.
"""

from __future__ import annotations

import collections
import math
from typing import Protocol

from .. import _checks

__all__ = [
    "POLICIES",
    "CountWindow",
    "FixedWindowQuota",
    "Quota",
    "SlidingWindowQuota",
    "TokenBucketQuota",
    "make_quota",
]

#: Token levels this close below 1 count as a whole token: float rounding in
#: ``elapsed * rate`` must not reject a call that arrives exactly on time.
_EPSILON = 1e-9


class Quota(Protocol):
    """One user's quota: decides, call by call, whether to admit it."""

    @property
    def rate(self) -> float:
        """Requests per second this quota allows."""

    def admit(self, now: float) -> bool:
        """Return True and count the call if it may go ahead at ``now``."""


class TokenBucketQuota:
    """A token bucket: bursts of up to ``burst`` calls, then ``rate`` per second.

    The bucket starts full. Each admitted call takes one token; tokens refill
    continuously at ``rate`` per second up to ``burst``. A rejected call takes
    nothing.

    Args:
        rate: Tokens added per second (> 0, finite).
        burst: The bucket's size: the most calls admitted at once. Defaults to
            one second's worth (``rate``), and never less than 1.

    Example:
        >>> quota = TokenBucketQuota(rate=2)
        >>> [quota.admit(0.0) for _ in range(3)]
        [True, True, False]
        >>> quota.admit(0.5)
        True
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        #: Tokens added per second.
        self.rate = _checks.positive("rate", rate)
        #: Capacity of the bucket, in calls.
        self.burst = max(1.0, self.rate) if burst is None else _checks.at_least("burst", burst, 1)
        #: Tokens available as of :attr:`_last`.
        self._tokens = self.burst
        #: Clock time of the last refill; None until the first call.
        self._last: float | None = None

    def admit(self, now: float) -> bool:
        """Take a token at ``now`` if one is available."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens < 1 - _EPSILON:
            return False
        self._tokens -= 1
        return True

    def __repr__(self) -> str:
        state = f"rate={self.rate:g}, burst={self.burst:g}, tokens={self._tokens:.3f}"
        return f"TokenBucketQuota({state})"


class FixedWindowQuota:
    """At most ``floor(rate)`` calls per calendar second ``[k, k+1)`` of the clock.

    The count resets on each whole second, so up to twice the limit can pass
    in a short span straddling a boundary: the classic fixed-window burst.

    Args:
        rate: Calls allowed per second; a fractional rate is rounded down
            (7.5 allows 7), so it must be at least 1.

    Example:
        >>> quota = FixedWindowQuota(rate=2)
        >>> [quota.admit(t) for t in (0.1, 0.2, 0.9, 1.0)]
        [True, True, False, True]
    """

    def __init__(self, rate: float) -> None:
        #: Calls allowed per second, as configured.
        self.rate = _window_rate(rate)
        #: Whole calls allowed per window: ``floor(rate)``.
        self.limit = math.floor(self.rate)
        #: The current window's start ``k``; None until the first call.
        self._window: int | None = None
        #: Calls admitted in the current window.
        self._count = 0

    def admit(self, now: float) -> bool:
        """Count the call in the window holding ``now`` if it has room."""
        window = math.floor(now)
        if window != self._window:
            self._window, self._count = window, 0
        if self._count >= self.limit:
            return False
        self._count += 1
        return True

    def __repr__(self) -> str:
        return f"FixedWindowQuota(rate={self.rate:g}, window={self._window}, count={self._count})"


class SlidingWindowQuota:
    """At most ``floor(rate)`` calls in any one-second window ``(t-1, t]``.

    Keeps the times of the admitted calls of the last second (a deque), so the
    limit holds for every window, not only for whole seconds.

    Args:
        rate: Calls allowed per second; a fractional rate is rounded down
            (7.5 allows 7), so it must be at least 1.

    Example:
        >>> quota = SlidingWindowQuota(rate=2)
        >>> [quota.admit(t) for t in (0.5, 0.9, 1.4, 1.5)]
        [True, True, False, True]
    """

    def __init__(self, rate: float) -> None:
        #: Calls allowed per second, as configured.
        self.rate = _window_rate(rate)
        #: Whole calls allowed per window: ``floor(rate)``.
        self.limit = math.floor(self.rate)
        #: Admission times still inside the window, oldest first.
        self._admitted: collections.deque[float] = collections.deque()

    def admit(self, now: float) -> bool:
        """Admit the call if fewer than ``limit`` were admitted in ``(now-1, now]``."""
        while self._admitted and self._admitted[0] <= now - 1:
            self._admitted.popleft()
        if len(self._admitted) >= self.limit:
            return False
        self._admitted.append(now)
        return True

    def __repr__(self) -> str:
        return f"SlidingWindowQuota(rate={self.rate:g}, in_window={len(self._admitted)})"


class CountWindow:
    """At most ``count`` calls in any window ``(t - seconds, t]``: a long quota such as an hourly one.

    Unlike the per-second policies it is asked first (:meth:`full`) and told
    later (:meth:`add`), so a server can check every window before charging any.

    Args:
        count: Calls allowed in one window, a whole number >= 1.
        seconds: The window's length (> 0, finite).

    Example:
        >>> window = CountWindow(2, 10.0)
        >>> window.add(0.0); window.add(1.0); window.full(9.0), window.full(10.0)
        (True, False)
    """

    def __init__(self, count: int, seconds: float) -> None:
        #: Calls allowed in one window.
        self.count = _checks.whole("count", count, 1)
        #: The window's length in seconds.
        self.seconds = _checks.positive("seconds", seconds)
        #: Admission times still inside the window, oldest first.
        self._admitted: collections.deque[float] = collections.deque()

    def full(self, now: float) -> bool:
        """True when a call at ``now`` would make more than ``count`` in its window."""
        while self._admitted and self._admitted[0] <= now - self.seconds:
            self._admitted.popleft()
        return len(self._admitted) >= self.count

    def add(self, now: float) -> None:
        """Count a call admitted at ``now``."""
        self._admitted.append(now)

    def __repr__(self) -> str:
        return f"CountWindow(count={self.count}, seconds={self.seconds:g}, in_window={len(self._admitted)})"


#: Policy names accepted by :func:`make_quota`.
POLICIES = ("fixed-window", "sliding-window", "token-bucket")


def make_quota(policy: str, rate: float, burst: float | None = None) -> Quota:
    """Build a fresh quota for one user.

    Args:
        policy: ``"token-bucket"``, ``"fixed-window"`` or ``"sliding-window"``.
        rate: Requests per second (> 0, finite; >= 1 for the window policies).
        burst: Bucket size for ``"token-bucket"`` (default: ``rate``, min 1).
            The window policies have no burst setting.

    Returns:
        A new quota object, in its initial (full) state.

    Raises:
        ValueError: Unknown policy, or a bad rate or burst; the message names
            the field and the value it got.

    Example:
        >>> make_quota("sliding-window", 15)
        SlidingWindowQuota(rate=15, in_window=0)
    """
    _checks.positive("rate", rate)
    if policy == "token-bucket":
        return TokenBucketQuota(rate, burst)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
    if burst is not None:
        raise ValueError(f"burst only applies to policy 'token-bucket', got burst={burst!r}")
    return FixedWindowQuota(rate) if policy == "fixed-window" else SlidingWindowQuota(rate)


def _window_rate(rate: float) -> float:
    return _checks.at_least("rate", _checks.positive("rate", rate), 1)
