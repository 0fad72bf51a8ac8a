"""The retry schedule: how many attempts, and how long to back off between them.

Pure arithmetic with no clock and no sleep of its own; the sync and the aio
interceptors both draw their waits from :meth:`RetryPolicy.backoff`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from . import _checks

__all__ = ["RetryPolicy"]


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

    def __post_init__(self) -> None:
        _checks.whole("max_attempts", self.max_attempts, 1)
        _checks.non_negative("initial_backoff", self.initial_backoff)
        _checks.non_negative("max_backoff", self.max_backoff)
        _checks.at_least("multiplier", self.multiplier, 1)
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
        exponent = min(retry - 1, 1000)  # keeps the power finite
        bound = min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)
        return bound * random() if self.jitter else bound

    def with_max_attempts(self, max_attempts: int) -> RetryPolicy:
        """A copy with another ``max_attempts``."""
        return dataclasses.replace(self, max_attempts=max_attempts)
