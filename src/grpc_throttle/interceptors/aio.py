"""The throttling client interceptor for ``grpc.aio`` channels.

Same behaviour as :mod:`.sync`, with ``await asyncio.sleep`` for every wait.
Cancelling the caller's task (or the call) cancels a pending token wait, which
gives its tokens back, or a pending back-off, or the attempt in flight.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from .. import _checks
from ..buckets import AsyncBucket, BucketReservation, TokenBucket
from ..events import EventHook
from ..policy import ThrottlePolicy
from ..retry import RetryBudget, RetryPolicy
from . import _bases, _otel
from ._plan import Backoff, CallPlan, Finish, GiveUp, Refuse, Send, Wait
from ._stats import Stats
from .sync import _NUMBERS, Cost, _keep_hook_while_alive, _name, make_settings

__all__ = ["ThrottlingInterceptor"]

#: How the driver sleeps: ``asyncio.sleep`` or one that a cancel can cut short.
Sleep = Callable[[float], Awaitable[None]]


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
        metadata: Iterable[tuple[str, str | bytes]] = (),
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not isinstance(bucket, (AsyncBucket, TokenBucket)):
            # A synchronous bucket that does I/O would block the event loop.
            raise ValueError(
                f"bucket must be a grpc_throttle.TokenBucket or an asynchronous bucket "
                f"(grpc_throttle.aio.RedisTokenBucket); any other may block the event loop; got {bucket!r}"
            )
        self._bucket = bucket
        self._async_bucket = isinstance(bucket, AsyncBucket)
        self._settings = make_settings(bucket, retry, throttle, budget, on_event, cost, metadata, clock, random)
        #: Metadata added to every attempt, as grpc.aio wants it.
        self._metadata = _checks.metadata_pairs(metadata)
        _keep_hook_while_alive(self, bucket, on_event)
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

    async def _due_in(self, reservation: Any) -> float:
        if self._async_bucket:
            return await self._bucket.due_in(reservation)  # type: ignore[no-any-return,misc]
        return self._bucket.due_in(reservation)  # type: ignore[return-value]

    async def _take_token(
        self, plan: CallPlan, sleep: Sleep = asyncio.sleep, first: tuple[Any, BucketReservation | None] | None = None
    ) -> Send | Refuse | GiveUp:
        """Wait for a token as the plan says; what to do next (never Wait).

        ``first`` is the plan's first step when the caller took it already
        (:meth:`_first_step`, as the aio ThrottledChannel does when a call is made).
        """
        if first is None:
            first = self._first_step(plan)
        if first is None:  # an asynchronous bucket: its reserve() is awaited
            max_wait = plan.reserve_wait()
            if max_wait is None:
                return plan.expired()
            reservation = await self._bucket.reserve(plan.tokens, max_wait=max_wait)  # type: ignore[misc]
            action = plan.reserved(reservation)
        else:
            action, reservation = first
        if reservation is None:
            return action  # type: ignore[return-value]  # without a reservation the plan never says Wait
        return await self._wait_for_slot(plan, reservation, action, sleep)

    async def _wait_for_slot(
        self, plan: CallPlan, reservation: BucketReservation, action: Any, sleep: Sleep = asyncio.sleep
    ) -> Send | Refuse | GiveUp:
        """Sleep through the plan's Waits for ``reservation``; what to do next (never Wait)."""
        try:
            while isinstance(action, Wait):
                delay = action.delay
                ready_at = getattr(reservation, "ready_at", None)
                if ready_at is not None and action.delay == reservation.delay:
                    # Sleep to the slot's absolute time: a pause between
                    # reserve() and here must not push this waiter behind later ones.
                    delay = ready_at - self._bucket.clock()
                await sleep(delay)
                action = plan.woken(await self._due_in(reservation))
        except asyncio.CancelledError:
            reservation.cancel()
            plan.cancelled()
            raise
        if not isinstance(action, Send):
            reservation.cancel()
        return action  # type: ignore[no-any-return]

    def _first_step(self, plan: CallPlan) -> tuple[Any, BucketReservation | None] | None:
        """The plan's first step without awaiting, on a local bucket: (action, reservation).

        None when the bucket is asynchronous (its reserve() must be awaited).
        """
        bucket = self._bucket
        if not isinstance(bucket, TokenBucket):
            return None
        max_wait = plan.reserve_wait()
        if max_wait is None:
            return plan.expired(), None
        reservation = bucket.reserve(plan.tokens, max_wait=max_wait)
        return plan.reserved(reservation), reservation

    def _merged(self, metadata: Any) -> Any:
        """The call's metadata plus this interceptor's ``metadata=`` (the call's own keys win)."""
        if not self._metadata:
            return metadata
        present = {key for key, _ in metadata or ()}
        return grpc.aio.Metadata(*(metadata or ()), *(p for p in self._metadata if p[0] not in present))

    def _details(self, details: grpc.aio.ClientCallDetails, timeout: float | None) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method, timeout, self._merged(details.metadata), details.credentials, details.wait_for_ready
        )

    # -- unary-unary: paced, inspected, retried -----------------------------

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        settings = self._settings
        method = _name(client_call_details.method)
        plan = CallPlan(settings, method, client_call_details.timeout, settings.tokens_for(method, request))

        async def attempt(timeout: float | None) -> Any:
            return await continuation(self._details(client_call_details, timeout), request)

        return await self._unary(plan, attempt)

    async def _unary(
        self,
        plan: CallPlan,
        attempt: Callable[[float | None], Any],
        first: tuple[Any, BucketReservation | None] | None = None,
        sent: Any = None,
        on_attempt: Callable[[Any], None] | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> Any:
        """Drive ``plan`` to its end; the call whose answer the caller gets.

        ``attempt(timeout)`` (a coroutine) starts one attempt and returns its
        ``grpc.aio`` call. ``first`` is the plan's first step when it was taken
        already (:meth:`_first_step`), and ``sent`` the call it started, if
        it was Send. ``on_attempt`` hears of every call started here, and
        ``sleep`` does every wait and back-off (the aio ThrottledChannel's can
        be cut short by ``cancel()``).
        Raises ``AioRpcError`` when the plan refuses to send.
        """
        settings = self._settings
        throttled_call = None
        call = sent
        while True:
            if call is None:
                action: Any = await self._take_token(plan, sleep, first)
                first = None
                if isinstance(action, Refuse):
                    raise _aio_error(action.error)
                if isinstance(action, GiveUp):
                    return throttled_call
                call = await attempt(action.timeout)
                if on_attempt is not None:
                    on_attempt(call)
            try:
                response = await call
            except grpc.aio.AioRpcError as error:
                if not settings.throttle.error_throttled(error):
                    return call  # a plain failure: no signal either way
                action = plan.answered(True, error.trailing_metadata())
            except asyncio.CancelledError:
                call.cancel()
                plan.cancelled()
                raise
            else:
                answer = settings.throttle.quota_answer(response)
                action = plan.answered(answer, await call.trailing_metadata() if answer else None)
            if isinstance(action, (Finish, GiveUp)):
                return call
            throttled_call, call = call, None
            assert isinstance(action, Backoff)
            try:
                await sleep(action.delay)
            except asyncio.CancelledError:
                plan.cancelled()
                raise

    # -- streaming: paced when they start, never retried ---------------------

    async def _wait_to_start(self, details: grpc.aio.ClientCallDetails, request: Any) -> grpc.aio.ClientCallDetails:
        settings = self._settings
        method = _name(details.method)
        plan = CallPlan(settings, method, details.timeout, settings.tokens_for(method, request), retries=False)
        action = await self._take_token(plan)
        if not isinstance(action, Send):
            assert isinstance(action, Refuse)  # a stream is never answered throttled here
            raise _aio_error(action.error)
        return self._details(details, action.timeout)

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


def _aio_error(error: Any) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        error.code(),
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=error.details(),
        debug_error_string=error.debug_error_string(),
    )
