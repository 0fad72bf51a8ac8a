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

from ..events import EventHook, GaveUp, RetryScheduled, emit
from ..policy import ThrottlePolicy, server_pushback
from ..retry import RetryBudget, RetryPolicy
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

    __slots__ = (
        "budget",
        "clock",
        "cost",
        "hooks",
        "random",
        "record_success",
        "record_throttle",
        "retry",
        "stats",
        "throttle",
    )

    def __init__(
        self,
        bucket: Any,
        retry: RetryPolicy,
        throttle: ThrottlePolicy,
        budget: RetryBudget | None,
        cost: float | Callable[[str, Any], float],
        clock: Callable[[], float],
        random: Callable[[], float],
        hooks: tuple[EventHook, ...],
    ) -> None:
        self.retry = retry
        self.throttle = throttle
        self.budget = budget
        self.cost = cost
        self.clock = clock
        self.random = random
        self.hooks = hooks
        self.stats = StatsRecorder()
        # Buckets that adapt their rate hear about every answer.
        self.record_throttle: Callable[[int], None] = getattr(bucket, "record_throttle", _ignore)
        self.record_success: Callable[[], None] = getattr(bucket, "record_success", _nothing)

    def on_answer(self, throttled: bool, round: int) -> None:
        """Tell the bucket and the retry budget how an attempt was answered."""
        if throttled:
            self.stats.add("throttled")
            self.record_throttle(round)
            if self.budget is not None:
                self.budget.on_throttled()
        else:
            self.record_success()
            if self.budget is not None:
                self.budget.on_success()

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

    def delay_before_retry(self, method: str | bytes, trailing_metadata: Any) -> float | None:
        """How long to wait before retrying a throttled attempt, or None to give up.

        The server's own wait, when it gave one, replaces the back-off. Gives
        up when attempts are used up, when the server said not to retry, when
        the retry budget is spent, or when the wait would end at or after the
        deadline (no sleep runs past the caller's timeout). Reports the
        decision to the counters and the event hooks.
        """
        settings = self.settings
        retry = settings.retry
        name = method.decode() if isinstance(method, bytes) else method
        pushback = server_pushback(trailing_metadata) if settings.throttle.honour_pushback else None
        reason: Any = None
        if self.attempt >= retry.max_attempts:
            reason = "attempts"
        elif pushback == math.inf:
            reason = "server"
        elif settings.budget is not None and not settings.budget.allows_retry():
            reason = "budget"
        else:
            if pushback is None:
                delay = retry.backoff(self.attempt, settings.random)
            else:
                delay = min(pushback, retry.max_pushback)
            if delay < self.remaining():
                settings.stats.add("backoff_seconds", delay)
                if settings.hooks:
                    emit(settings.hooks, RetryScheduled(name, self.attempt, delay, pushback is not None))
                return delay
            reason = "deadline"
        settings.stats.add("give_ups")
        if settings.hooks:
            emit(settings.hooks, GaveUp(name, self.attempt, reason))
        return None


def _ignore(round: int) -> None:
    return None


def _nothing() -> None:
    return None
