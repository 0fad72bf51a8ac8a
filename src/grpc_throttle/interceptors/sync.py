"""The throttling client interceptor for sync ``grpc`` channels."""

from __future__ import annotations

import inspect
import itertools
import math
import random as _random
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .. import _checks
from ..buckets import Bucket
from ..events import EventHook
from ..policy import ThrottlePolicy
from ..retry import RetryBudget, RetryPolicy, budget_for
from . import _bases, _otel
from ._attempts import Settings, copy_details
from ._call import ThrottledCall, deadline_error
from ._stats import Stats

__all__ = ["ThrottlingInterceptor"]

Cost = float | Callable[[str, Any], float]

#: Numbers unnamed interceptors (sync and aio alike).
_NUMBERS = itertools.count(1)


class ThrottlingInterceptor(_bases.UnaryUnary, _bases.UnaryStream, _bases.StreamUnary, _bases.StreamStream):
    """Paces calls with a shared bucket and retries throttled answers.

    Every attempt (retries included) takes tokens from ``bucket`` first. Unary
    calls are inspected: an answer the ``throttle`` policy calls throttled is
    retried after a back-off from ``retry``, within the caller's timeout; when
    attempts run out the last throttled answer is handed back unchanged.
    Streaming calls take tokens when they start and are never retried.

    Args:
        bucket: The token bucket; share one object between every interceptor,
            channel and thread that draws on the same quota.
        retry: How many attempts and how long to back off. Default
            ``RetryPolicy()`` (5 attempts, 1 s initial, 15 s cap).
        throttle: What counts as throttled. Default: body ``status.code`` 11005.
        budget: The retry budget that stops retry storms: True (default) for
            the one shared by every interceptor on this bucket, False for
            none, or a :class:`~grpc_throttle.RetryBudget` of your own.
        on_event: Called with a :mod:`~grpc_throttle.events` object on every
            retry, give-up and change of the bucket's rate.
        name: Names the interceptor in OpenTelemetry metrics, which it
            reports (``grpc_throttle.*`` observable instruments read from
            :meth:`stats`) whenever ``opentelemetry-api`` is installed.
        cost: Tokens per call, or a function ``(method, request) -> tokens``
            (``request`` is None for client-streaming calls).
        clock: Monotonic clock used for deadlines.
        random: Uniform [0, 1) source for back-off jitter.

    Example:
        >>> import grpc, grpc_throttle
        >>> bucket = grpc_throttle.TokenBucket(rate=15)
        >>> interceptor = grpc_throttle.ThrottlingInterceptor(bucket)
        >>> channel = grpc.intercept_channel(grpc.insecure_channel("localhost:1"), interceptor)
    """

    def __init__(
        self,
        bucket: Bucket,
        *,
        retry: RetryPolicy | None = None,
        throttle: ThrottlePolicy | None = None,
        budget: RetryBudget | bool = True,
        on_event: EventHook | None = None,
        name: str | None = None,
        cost: Cost = 1,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        reserve = getattr(bucket, "reserve", None)
        if not callable(reserve):
            raise ValueError(f"bucket must be a token bucket with a reserve() method, got {bucket!r}")
        if inspect.iscoroutinefunction(reserve):
            raise ValueError(f"bucket {bucket!r} is asynchronous: use it with grpc_throttle.aio.ThrottlingInterceptor")
        self._bucket = bucket
        self._settings = make_settings(bucket, retry, throttle, budget, on_event, cost, clock, random)
        #: Names this interceptor in OpenTelemetry metrics and logs.
        self.name = name or f"interceptor-{next(_NUMBERS)}"
        _otel.register(self, self.name)

    @property
    def bucket(self) -> Bucket:
        """The bucket this interceptor draws tokens from."""
        return self._bucket

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy in force."""
        return self._settings.retry

    @property
    def throttle(self) -> ThrottlePolicy:
        """The throttle classification in force."""
        return self._settings.throttle

    def stats(self) -> Stats:
        """A snapshot of what this interceptor has done so far, and the bucket's rate now."""
        return self._settings.stats.snapshot(self._bucket, self._settings.budget)

    # -- unary-unary: paced, inspected, retried -----------------------------

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:  # a ThrottledCall: a grpc.Call and grpc.Future
        details = copy_details(client_call_details)
        tokens = self._settings.tokens_for(details.method, request)
        return ThrottledCall(self._settings, self._bucket, continuation, details, request, tokens).start()

    # -- streaming: paced when they start, never retried ---------------------

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._wait_to_start(client_call_details, request), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Any]], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._wait_to_start(client_call_details, None), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[Any]], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._wait_to_start(client_call_details, None), request_iterator)

    def _wait_to_start(self, client_call_details: grpc.ClientCallDetails, request: Any) -> grpc.ClientCallDetails:
        # Streams block the calling thread for their token, as a stream's
        # start cannot be handed back as a pending future.
        details = copy_details(client_call_details)
        settings = self._settings
        settings.stats.add("calls")
        deadline = None if details.timeout is None else settings.clock() + details.timeout
        remaining = math.inf if deadline is None else deadline - settings.clock()
        reservation = self._bucket.reserve(settings.tokens_for(details.method, request), max_wait=max(remaining, 0.0))
        if reservation is None:
            settings.stats.add("deadline_rejections")
            raise deadline_error(None, remaining)
        if reservation.delay > 0:
            settings.stats.add("token_wait_seconds", reservation.delay)
            due_in = getattr(reservation, "due_in", None)
            try:
                time.sleep(reservation.delay)
                # A rate cut while we slept re-spaces the queue: wait the difference.
                while due_in is not None and (delay := due_in()) > 0:
                    remaining = math.inf if deadline is None else deadline - settings.clock()
                    if delay > remaining:
                        reservation.cancel()
                        settings.stats.add("deadline_rejections")
                        raise deadline_error(delay, remaining)
                    settings.stats.add("token_wait_seconds", delay)
                    time.sleep(delay)
            except BaseException:
                reservation.cancel()
                raise
        settings.stats.add("attempts")
        if deadline is None:
            return details
        return details._replace(timeout=max(0.0, deadline - settings.clock()))

    def __repr__(self) -> str:
        return f"<ThrottlingInterceptor bucket={self._bucket!r} retry={self.retry!r} throttle={self.throttle!r}>"


def make_settings(
    bucket: Any,
    retry: RetryPolicy | None,
    throttle: ThrottlePolicy | None,
    budget: RetryBudget | bool,
    on_event: EventHook | None,
    cost: Cost,
    clock: Callable[[], float],
    random: Callable[[], float],
) -> Settings:
    """Validate an interceptor's arguments (sync and aio take the same)."""
    shared: RetryBudget | None
    if budget is True:
        shared = budget_for(bucket)
    elif budget is False:
        shared = None
    elif isinstance(budget, RetryBudget):
        shared = budget
    else:
        raise ValueError(f"budget must be True, False or a RetryBudget, got {budget!r}")
    hooks: tuple[EventHook, ...] = ()
    if on_event is not None:
        if not callable(on_event):
            raise ValueError(f"on_event must be callable, got {on_event!r}")
        hooks = (on_event,)
        add_listener = getattr(bucket, "add_listener", None)
        if add_listener is not None:
            add_listener(on_event)
    return Settings(
        bucket,
        retry=_check_type("retry", retry, RetryPolicy),
        throttle=_check_type("throttle", throttle, ThrottlePolicy),
        budget=shared,
        cost=check_cost(cost),
        clock=clock,
        random=random,
        hooks=hooks,
    )


def check_cost(cost: Cost) -> Cost:
    """Validate an interceptor's ``cost`` argument."""
    if callable(cost):
        return cost
    return _checks.positive("cost", cost)


def _check_type(name: str, value: Any, kind: type[Any]) -> Any:
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value
