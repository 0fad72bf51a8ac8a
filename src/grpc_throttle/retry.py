"""The retry schedule: how many attempts, and how long to back off between them.

Pure arithmetic with no clock and no sleep of its own; the sync and the aio
interceptors both draw their waits from :meth:`RetryPolicy.backoff`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _checks, _fork

__all__ = ["RetryBudget", "RetryPolicy", "budget_for"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how often a throttled call is tried again.

    Back-off is exponential with full jitter: before retry ``k`` (1-based) the
    call waits a uniformly random time in ``[0, min(max_backoff,
    initial_backoff * multiplier**(k-1))]``. Full jitter spreads the retries of
    many callers that were throttled together, so they do not return together.
    The caller's own timeout still bounds everything: no back-off runs past it.

    Attributes:
        max_attempts: Attempts in total, the first one included (1 = never retry).
        initial_backoff: Upper bound of the first back-off, in seconds.
        max_backoff: Cap on any back-off, in seconds. 15 s is the wait Clarifai
            documents for throttled requests.
        multiplier: Growth of the bound from one retry to the next.
        jitter: Draw each wait uniformly below the bound (full jitter). With
            False the wait is the bound itself, which is only useful in tests.
        max_pushback: When the server says how long to wait (the
            ``grpc-retry-pushback-ms`` trailer or ``google.rpc.RetryInfo``),
            that wait replaces the back-off, cut to at most this many seconds.

    Example:
        >>> policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=15.0)
        >>> policy.backoff(3, random=lambda: 1.0)
        4.0
    """

    max_attempts: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 15.0
    multiplier: float = 2.0
    jitter: bool = True
    #: The longest server pushback honoured, in seconds; longer ones are cut to it.
    max_pushback: float = 60.0

    def __post_init__(self) -> None:
        _checks.whole("max_attempts", self.max_attempts, 1)
        _checks.non_negative("initial_backoff", self.initial_backoff)
        _checks.non_negative("max_backoff", self.max_backoff)
        _checks.at_least("multiplier", self.multiplier, 1)
        _checks.non_negative("max_pushback", self.max_pushback)
        if not isinstance(self.jitter, bool):
            raise ValueError(f"jitter must be True or False, got {self.jitter!r}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff must be >= initial_backoff ({self.initial_backoff!r}), got {self.max_backoff!r}"
            )

    def backoff(self, retry: int, random: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        Args:
            retry: Which retry this is, counting from 1.
            random: A source of uniform numbers in [0, 1); injectable for tests.
        """
        exponent = min(retry - 1, 1000)
        try:
            grown = self.initial_backoff * self.multiplier**exponent
        except OverflowError:  # a large multiplier: the cap applies long before
            grown = math.inf
        bound = min(self.max_backoff, grown)
        return bound * random() if self.jitter else bound

    def with_max_attempts(self, max_attempts: int) -> RetryPolicy:
        """A copy with another ``max_attempts``."""
        return dataclasses.replace(self, max_attempts=max_attempts)


class RetryBudget:
    """Stops retries from multiplying load during an outage (gRPC's retryThrottling).

    A token count starts at ``max_tokens``. Every throttled answer takes one
    token, every other answer gives back ``token_ratio``; while the count is at
    or below half of ``max_tokens`` no call is retried (first attempts still
    go). With the defaults, 50 more throttled answers than ten times the
    successes switch retries off, and they come back as successes return.

    One budget is shared by every interceptor drawing on the same bucket
    (:func:`budget_for`), or pass your own to share it wider. Thread-safe.

    Args:
        max_tokens: Size of the budget (gRPC allows 1 to 1000).
        token_ratio: Tokens a success gives back (gRPC: (0, 1]).

    Example:
        >>> budget = RetryBudget(max_tokens=10, token_ratio=0.1)
        >>> budget.allows_retry()
        True
    """

    def __init__(self, max_tokens: float = 100, token_ratio: float = 0.1) -> None:
        self.max_tokens = _checks.positive("max_tokens", max_tokens)
        self.token_ratio = _checks.positive("token_ratio", token_ratio)
        if self.token_ratio > 1:
            raise ValueError(f"token_ratio must be in (0, 1], got {token_ratio!r}")
        self._lock = _fork.register(self)
        #: Tokens left; retries stop at or below max_tokens / 2.
        self._tokens = self.max_tokens

    @property
    def tokens(self) -> float:
        """Tokens left now."""
        return self._tokens

    def allows_retry(self) -> bool:
        """True while retries are allowed."""
        return self._tokens > self.max_tokens / 2

    def on_throttled(self) -> None:
        """Count a throttled answer."""
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1)

    def on_success(self) -> None:
        """Count an answer that was not throttled."""
        if self._tokens < self.max_tokens:  # full: the common case takes no lock
            with self._lock:
                self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def __repr__(self) -> str:
        return f"<RetryBudget tokens={self._tokens:g}/{self.max_tokens:g} ratio={self.token_ratio:g}>"


_budgets: weakref.WeakKeyDictionary[Any, RetryBudget] = weakref.WeakKeyDictionary()
_budgets_lock = threading.Lock()


def _renew_budgets_lock() -> None:
    global _budgets_lock
    _budgets_lock = threading.Lock()


_fork.at_fork(_renew_budgets_lock)


def budget_for(bucket: Any) -> RetryBudget:
    """The retry budget shared by every interceptor that uses ``bucket``."""
    with _budgets_lock:
        budget = _budgets.get(bucket)
        if budget is None:
            budget = _budgets[bucket] = RetryBudget()
        return budget
