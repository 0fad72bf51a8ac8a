"""What every driver shares: the interceptor's settings and the call details.

:class:`Settings` is the interceptor's configuration, read-only and shared by
all its calls; the per-call decisions live in ``_plan``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ..events import EventHook
from ..policy import ThrottlePolicy
from ..retry import RetryBudget, RetryPolicy
from ._stats import StatsRecorder

__all__ = ["CallDetails", "Settings", "copy_details"]


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
        "capacity",
        "clock",
        "cost",
        "hold_window",
        "hooks",
        "metadata",
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
        metadata: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.retry = retry
        #: Metadata added to every attempt (keys the call sets itself win).
        self.metadata = tuple(metadata)
        self.throttle = throttle
        self.budget = budget
        self.cost = cost
        self.clock = clock
        self.random = random
        self.hooks = hooks
        self.stats = StatsRecorder()
        #: The bucket's capacity: no call may cost more.
        self.capacity = float(getattr(bucket, "capacity", math.inf))
        # Every bucket hears about every answer (the contract in buckets._base).
        self.record_throttle: Callable[[Any], None] = bucket.record_throttle
        self.record_success: Callable[[], None] = bucket.record_success
        #: The bucket's answer to a full long window (see Bucket.hold_window).
        self.hold_window: Callable[[float], float | None] = bucket.hold_window

    def on_answer(self, throttled: bool, round: Any) -> None:
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
        """What a call costs; a cost function's answer is checked like ``cost=`` itself.

        Raises:
            ValueError: The cost function returned something that is not a
                number in (0, the bucket's capacity].
        """
        if not callable(self.cost):
            return self.cost
        name = method.decode() if isinstance(method, bytes) else method
        tokens = self.cost(name, request)
        if (
            isinstance(tokens, bool)
            or not isinstance(tokens, (int, float))
            or not 0 < tokens <= self.capacity
            or not math.isfinite(tokens)
        ):
            raise ValueError(
                f"cost({name!r}, request) must return a number in (0, {self.capacity:g}] "
                f"(the bucket's capacity), got {tokens!r}"
            )
        return float(tokens)

    def with_metadata(self, metadata: Any) -> Any:
        """The call's own metadata plus the interceptor's, for one attempt."""
        if not self.metadata:
            return metadata
        pairs = list(metadata or ())
        present = {key for key, _ in pairs}
        pairs.extend(pair for pair in self.metadata if pair[0] not in present)
        return pairs
