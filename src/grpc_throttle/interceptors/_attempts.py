"""Per-call retry state shared by the sync and the aio interceptors.

One :class:`CallState` lives for one logical call: its deadline, how many
attempts it made, and the decisions "may I wait this long?" and "retry after
how long?". The interceptors only add the waiting (threads or asyncio).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import grpc

from ..policy import ThrottlePolicy
from ..retry import RetryPolicy
from ._stats import StatsRecorder

__all__ = ["CallDetails", "CallState", "Settings"]


class CallDetails(
    collections.namedtuple(
        "CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """Call details we can ``_replace`` (grpc hands us an opaque object)."""


def copy_details(details: grpc.ClientCallDetails) -> CallDetails:
    return CallDetails(
        details.method,
        details.timeout,
        details.metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class Settings:
    """The interceptor's configuration, shared read-only by all its calls."""

    __slots__ = ("clock", "cost", "random", "retry", "stats", "throttle")

    def __init__(
        self,
        retry: RetryPolicy,
        throttle: ThrottlePolicy,
        cost: float | Callable[[str, Any], float],
        clock: Callable[[], float],
        random: Callable[[], float],
    ) -> None:
        self.retry = retry
        self.throttle = throttle
        self.cost = cost
        self.clock = clock
        self.random = random
        self.stats = StatsRecorder()

    def tokens_for(self, method: str | bytes, request: Any) -> float:
        if callable(self.cost):
            name = method.decode() if isinstance(method, bytes) else method
            return float(self.cost(name, request))
        return self.cost


class CallState:
    """Attempt bookkeeping for one logical call."""

    __slots__ = ("attempt", "deadline", "settings")

    def __init__(self, settings: Settings, timeout: float | None) -> None:
        self.settings = settings
        #: Attempts sent so far.
        self.attempt = 0
        #: Absolute deadline on the settings' clock, or None for no deadline.
        self.deadline = None if timeout is None else settings.clock() + timeout

    def remaining(self) -> float:
        """Seconds left before the caller's deadline (inf without one)."""
        if self.deadline is None:
            return math.inf
        return self.deadline - self.settings.clock()

    def attempt_timeout(self) -> float | None:
        """The timeout to give the next attempt: whatever is left of the caller's."""
        return None if self.deadline is None else max(0.0, self.deadline - self.settings.clock())

    def backoff_before_retry(self) -> float | None:
        """How long to back off before the next attempt, or None to give up.

        Gives up when attempts are used up or when the back-off would end at or
        after the deadline (no sleep runs past the caller's timeout).
        """
        retry = self.settings.retry
        if self.attempt >= retry.max_attempts:
            return None
        delay = retry.backoff(self.attempt, self.settings.random)
        if delay >= self.remaining():
            return None
        return delay
