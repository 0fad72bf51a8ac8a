"""The throttling client interceptor for ``grpc.aio`` channels.

Same behaviour as :mod:`.sync`, with ``await asyncio.sleep`` for every wait.
Cancelling the caller's task (or the call) cancels a pending token wait, which
gives its tokens back, or a pending back-off, or the attempt in flight.
"""

from __future__ import annotations

import asyncio
import inspect
import random as _random
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from ..buckets import AsyncBucket, BucketReservation, TokenBucket
from ..events import EventHook, GaveUp, emit
from ..policy import ThrottlePolicy
from ..retry import RetryBudget, RetryPolicy
from . import _bases, _otel
from ._attempts import CallState
from ._call import deadline_error
from ._stats import Stats
from .sync import _NUMBERS, Cost, make_settings

__all__ = ["ThrottlingInterceptor"]


async def _seconds(value: Any) -> float:
    """A reservation's ``due_in()``: a float, or a coroutine on asyncio's Redis bucket."""
    return float(await value) if inspect.isawaitable(value) else float(value)


class ThrottlingInterceptor(_bases.AioUnaryUnary):
    """Paces ``grpc.aio`` calls with a shared bucket and retries throttled answers.

    Takes the same arguments as :class:`grpc_throttle.ThrottlingInterceptor`.
    ``bucket`` is a :class:`~grpc_throttle.TokenBucket` (the same object may
    serve sync interceptors and several event loops at once) or an asynchronous
    bucket such as :class:`grpc_throttle.aio.RedisTokenBucket`.

    ``grpc.aio`` registers an interceptor object for one call kind only (the
    first it implements; grpc/grpc#40946), so this object intercepts
    unary-unary calls. To pace streaming calls too, give the channel
    :meth:`for_channel`, which adds one small interceptor per streaming kind
    sharing this one's bucket, settings and counters.

    Example:
        >>> import grpc.aio, grpc_throttle, grpc_throttle.aio
        >>> bucket = grpc_throttle.TokenBucket(rate=15)
        >>> interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket)
        >>> # unary calls only:  interceptors=[interceptor]
        >>> # every call kind:   interceptors=interceptor.for_channel()
    """

    def __init__(
        self,
        bucket: TokenBucket | AsyncBucket,
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
        self._async_bucket = inspect.iscoroutinefunction(reserve)
        if not self._async_bucket and not isinstance(bucket, TokenBucket):
            # A synchronous bucket that does I/O would block the event loop.
            raise ValueError(
                f"bucket {bucket!r} is synchronous and may block the event loop: use a "
                "grpc_throttle.TokenBucket or an asynchronous bucket (grpc_throttle.aio.RedisTokenBucket)"
            )
        self._bucket = bucket
        #: The local bucket's clock, when its reservations carry ready_at on it.
        self._ready_clock = bucket._clock if isinstance(bucket, TokenBucket) else None
        self._settings = make_settings(bucket, retry, throttle, budget, on_event, cost, clock, random)
        #: Names this interceptor in OpenTelemetry metrics and logs.
        self.name = name or f"interceptor-{next(_NUMBERS)}"
        _otel.register(self, self.name)

    @property
    def bucket(self) -> TokenBucket | AsyncBucket:
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

    def for_channel(self) -> list[Any]:
        """This interceptor plus one per streaming call kind, for ``interceptors=``."""
        return [self, _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]

    async def _take_token(self, state: CallState, tokens: float) -> BucketReservation | None:
        """Wait for ``tokens``; None (nothing taken) if that would pass the deadline."""
        max_wait = max(state.remaining(), 0.0)
        reservation: BucketReservation | None
        if self._async_bucket:
            reservation = await self._bucket.reserve(tokens, max_wait=max_wait)  # type: ignore[misc]
        else:
            reservation = self._bucket.reserve(tokens, max_wait=max_wait)  # type: ignore[assignment]
        if reservation is not None and reservation.delay > 0:
            self._settings.stats.add("token_wait_seconds", reservation.delay)
            delay = reservation.delay
            if self._ready_clock is not None:
                # Sleep to the slot's absolute time: a pause (e.g. garbage
                # collection) between reserve() and here would otherwise push
                # this waiter behind later ones and break FIFO order.
                delay = reservation.ready_at - self._ready_clock()  # type: ignore[attr-defined]
            due_in = getattr(reservation, "due_in", None)
            try:
                await asyncio.sleep(delay)
                # A rate cut while we slept re-spaces the queue: wait the difference.
                while due_in is not None and (delay := await _seconds(due_in())) > 0:
                    if delay > state.remaining():
                        reservation.cancel()
                        return None  # as if the wait had been known at first
                    self._settings.stats.add("token_wait_seconds", delay)
                    await asyncio.sleep(delay)
            except asyncio.CancelledError:
                reservation.cancel()
                raise
        return reservation

    # -- unary-unary: paced, inspected, retried -----------------------------

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        settings = self._settings
        stats = settings.stats
        stats.add("calls")
        tokens = settings.tokens_for(client_call_details.method, request)
        state = CallState(settings, client_call_details.timeout)
        throttled_call = None
        while True:
            remaining = state.remaining()
            reservation = await self._take_token(state, tokens)
            if reservation is None:
                if throttled_call is not None:
                    stats.add("give_ups")
                    if settings.hooks:
                        emit(settings.hooks, GaveUp(_name(client_call_details.method), state.attempt, "deadline"))
                    return throttled_call
                stats.add("deadline_rejections")
                raise _aio_error(deadline_error(None, remaining))
            round = getattr(reservation, "round", 0)
            state.attempt += 1
            stats.add("attempts")
            if state.attempt > 1:
                stats.add("retries")
            details = client_call_details
            if state.deadline is not None:
                details = _with_timeout(details, state.attempt_timeout())
            call = await continuation(details, request)
            try:
                response = await call
            except grpc.aio.AioRpcError as error:
                if not settings.throttle.error_throttled(error):
                    return call
                trailers = error.trailing_metadata()
            except asyncio.CancelledError:
                call.cancel()
                raise
            else:
                if not settings.throttle.response_throttled(response):
                    settings.on_answer(False, round)
                    return call
                trailers = await call.trailing_metadata()
            settings.on_answer(True, round)
            throttled_call = call
            delay = state.delay_before_retry(client_call_details.method, trailers)
            if delay is None:
                return call
            await asyncio.sleep(delay)

    # -- streaming: paced when they start, never retried ---------------------

    async def _wait_to_start(self, details: grpc.aio.ClientCallDetails, request: Any) -> grpc.aio.ClientCallDetails:
        settings = self._settings
        settings.stats.add("calls")
        state = CallState(settings, details.timeout)
        remaining = state.remaining()
        if await self._take_token(state, settings.tokens_for(details.method, request)) is None:
            settings.stats.add("deadline_rejections")
            raise _aio_error(deadline_error(None, remaining))
        settings.stats.add("attempts")
        return details if state.deadline is None else _with_timeout(details, state.attempt_timeout())

    def __repr__(self) -> str:
        return f"<aio.ThrottlingInterceptor bucket={self._bucket!r} retry={self.retry!r} throttle={self.throttle!r}>"


class _UnaryStream(_bases.AioUnaryStream):
    def __init__(self, parent: ThrottlingInterceptor) -> None:
        self._parent = parent

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = await self._parent._wait_to_start(client_call_details, request)
        return await continuation(details, request)


class _StreamUnary(_bases.AioStreamUnary):
    def __init__(self, parent: ThrottlingInterceptor) -> None:
        self._parent = parent

    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        details = await self._parent._wait_to_start(client_call_details, None)
        return await continuation(details, request_iterator)


class _StreamStream(_bases.AioStreamStream):
    def __init__(self, parent: ThrottlingInterceptor) -> None:
        self._parent = parent

    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        details = await self._parent._wait_to_start(client_call_details, None)
        return await continuation(details, request_iterator)


def _with_timeout(details: grpc.aio.ClientCallDetails, timeout: float | None) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
    )


def _name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _aio_error(error: Any) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        error.code(),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=error.details(),
        debug_error_string=error.debug_error_string(),
    )
