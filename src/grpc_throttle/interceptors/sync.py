"""The throttling client interceptor for sync ``grpc`` channels."""

from __future__ import annotations

import itertools
import random as _random
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from .. import _checks
from ..buckets import AsyncBucket, Bucket
from ..events import EventHook
from ..policy import ThrottlePolicy
from ..retry import RetryBudget, RetryPolicy, budget_for
from . import _bases, _otel
from ._attempts import CallDetails, Settings, copy_details
from ._call import ThrottledCall
from ._plan import CallPlan, Refuse, Send, Wait
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
            (``request`` is None for client-streaming calls); at most the
            bucket's capacity.
        metadata: ``(key, value)`` pairs added to every attempt, e.g. an API
            key; a key the call sets itself wins. Values are never logged.
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
        metadata: Iterable[tuple[str, str | bytes]] = (),
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if isinstance(bucket, AsyncBucket):
            raise ValueError(f"bucket {bucket!r} is asynchronous: use it with grpc_throttle.aio.ThrottlingInterceptor")
        if not isinstance(bucket, Bucket):
            raise ValueError(f"bucket must be a grpc_throttle bucket (a buckets.Bucket), got {bucket!r}")
        self._bucket = bucket
        self._settings = make_settings(bucket, retry, throttle, budget, on_event, cost, metadata, clock, random)
        _keep_hook_while_alive(self, bucket, on_event)
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
        settings = self._settings
        plan = CallPlan(settings, _name(details.method), details.timeout, settings.tokens_for(details.method, request))
        return ThrottledCall(settings, self._bucket, continuation, details, request, plan).start()

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

    def _wait_to_start(
        self, client_call_details: grpc.ClientCallDetails, request: Any, *, sleep: Callable[[float], None] = time.sleep
    ) -> CallDetails:
        """Block the calling thread for a stream's token: the same plan, one attempt.

        A stream's start cannot be handed back as a pending future, so the
        wait is a sleep here. Raises the refusal (an ``RpcError``) when the
        deadline leaves no time.
        """
        details = copy_details(client_call_details)
        settings = self._settings
        plan = CallPlan(
            settings,
            _name(details.method),
            details.timeout,
            settings.tokens_for(details.method, request),
            retries=False,
        )
        bucket = self._bucket
        max_wait = plan.reserve_wait()
        if max_wait is None:
            action: Any = plan.expired()
        else:
            reservation = bucket.reserve(plan.tokens, max_wait=max_wait)
            action = plan.reserved(reservation)
            try:
                while isinstance(action, Wait):
                    sleep(action.delay)
                    action = plan.woken(bucket.due_in(reservation))
            except BaseException:
                if reservation is not None:
                    reservation.cancel()
                raise
            if isinstance(action, Refuse) and reservation is not None:
                reservation.cancel()
        if isinstance(action, Send):
            return details._replace(timeout=action.timeout, metadata=settings.with_metadata(details.metadata))
        assert isinstance(action, Refuse)  # a stream is never answered throttled here
        raise action.error

    def __repr__(self) -> str:
        return f"<ThrottlingInterceptor bucket={self._bucket!r} retry={self.retry!r} throttle={self.throttle!r}>"


def make_settings(
    bucket: Any,
    retry: RetryPolicy | None,
    throttle: ThrottlePolicy | None,
    budget: RetryBudget | bool,
    on_event: EventHook | None,
    cost: Cost,
    metadata: Iterable[tuple[str, str | bytes]],
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
    if not callable(clock):
        raise ValueError(f"clock must be callable, got {clock!r}")
    if not callable(random):
        raise ValueError(f"random must be callable, got {random!r}")
    return Settings(
        bucket,
        retry=_check_type("retry", retry, RetryPolicy),
        throttle=_check_type("throttle", throttle, ThrottlePolicy),
        budget=shared,
        cost=check_cost(cost, bucket.capacity),
        clock=clock,
        random=random,
        hooks=hooks,
        metadata=_checks.metadata_pairs(metadata),
    )


def check_cost(cost: Cost, capacity: float) -> Cost:
    """Validate an interceptor's ``cost`` argument against its bucket's capacity."""
    if callable(cost):
        return cost
    tokens = _checks.positive("cost", cost)
    if tokens > capacity:
        raise ValueError(f"cost must be <= the bucket's capacity ({capacity:g}) or no call could run, got {cost!r}")
    return tokens


def _keep_hook_while_alive(interceptor: object, bucket: Any, hook: EventHook | None) -> None:
    """Hear the bucket's rate changes while ``interceptor`` lives, and not after."""
    if hook is not None:
        bucket.add_listener(hook)
        weakref.finalize(interceptor, bucket.remove_listener, hook)


def _name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _check_type(name: str, value: Any, kind: type[Any]) -> Any:
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value
