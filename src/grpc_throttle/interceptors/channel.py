"""A throttled ``grpc.Channel`` that skips grpc's interceptor plumbing.

``grpc.intercept_channel`` works with :class:`ThrottlingInterceptor` as it is,
but its plumbing turns every blocking call into ``with_call`` plus a
continuation closure and outcome objects (see ``benchmarks/bench_overhead.py``).
:class:`ThrottledChannel` runs the first step of the same per-call plan
(``_plan``) inline: when the plan says "send now", the call goes straight to
the wrapped channel; anything else (a wait, a throttled answer, a refusal,
``.future()``) continues on the sync driver, :class:`~._call.ThrottledCall`,
with that same plan. There is one algorithm, entered at two points.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

from ._attempts import CallDetails, Settings
from ._call import ThrottledCall
from ._finished import FailedStream, LocalRpcError, Outcome
from ._plan import CallPlan, Send
from .sync import ThrottlingInterceptor

__all__ = ["ThrottledChannel"]


def _closed_error() -> LocalRpcError:
    return LocalRpcError(grpc.StatusCode.CANCELLED, "grpc-throttle: the channel was closed; the call was not sent")


class ThrottledChannel(grpc.Channel):
    """Wraps a channel so that every call on it is throttled by ``interceptor``.

    Behaves like ``grpc.intercept_channel(channel, interceptor)``, with less
    overhead. Its multicallables are grpc's own kinds
    (``isinstance(x, grpc.UnaryUnaryMultiCallable)`` holds), so code that checks,
    such as the Clarifai SDK, recognises them.

    :meth:`close` ends every call still waiting for a token or backing off at
    once, as an ``RpcError`` with code CANCELLED, and gives its tokens back;
    a call made on a closed channel fails the same way and takes no token.

    Args:
        channel: The channel to wrap (secure or insecure, any options).
        interceptor: The :class:`~grpc_throttle.ThrottlingInterceptor` whose
            bucket, policies, metadata and counters the calls use.

    Raises:
        ValueError: ``channel`` is not a ``grpc.Channel``, or ``interceptor``
            not a sync ``ThrottlingInterceptor``.

    Example:
        >>> import grpc, grpc_throttle
        >>> interceptor = grpc_throttle.ThrottlingInterceptor(grpc_throttle.TokenBucket(rate=15))
        >>> channel = grpc_throttle.ThrottledChannel(grpc.insecure_channel("localhost:1"), interceptor)
    """

    def __init__(self, channel: grpc.Channel, interceptor: ThrottlingInterceptor) -> None:
        if not isinstance(channel, grpc.Channel):
            raise ValueError(f"channel must be a grpc.Channel (use grpc_throttle.aio for grpc.aio), got {channel!r}")
        if not isinstance(interceptor, ThrottlingInterceptor):
            raise ValueError(f"interceptor must be a grpc_throttle.ThrottlingInterceptor, got {interceptor!r}")
        #: The wrapped channel (Any: grpc-stubs lacks the _registered_method argument).
        self._channel: Any = channel
        self._interceptor = interceptor
        #: Set by close(): waits end at once and no new call starts.
        self._closed = threading.Event()
        #: Calls on the slow path that have not ended, ended by close().
        self._pending: set[ThrottledCall] = set()
        self._pending_lock = threading.Lock()

    @property
    def interceptor(self) -> ThrottlingInterceptor:
        """The interceptor whose bucket, policies and counters the calls use."""
        return self._interceptor

    # grpc passes its private _registered_method (positionally, from 1.62 on);
    # whatever grpc passed is handed on as it came, and nothing more, so older
    # grpcio keeps working.

    def unary_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None, *rest: Any, **kw: Any
    ) -> Any:
        return _UnaryUnary(
            self, self._channel.unary_unary(method, request_serializer, response_deserializer, *rest, **kw), method
        )

    def unary_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None, *rest: Any, **kw: Any
    ) -> Any:
        inner = self._channel.unary_stream(method, request_serializer, response_deserializer, *rest, **kw)
        return _UnaryStream(self, inner, method)

    def stream_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None, *rest: Any, **kw: Any
    ) -> Any:
        inner = self._channel.stream_unary(method, request_serializer, response_deserializer, *rest, **kw)
        return _StreamUnary(self, inner, method)

    def stream_stream(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None, *rest: Any, **kw: Any
    ) -> Any:
        inner = self._channel.stream_stream(method, request_serializer, response_deserializer, *rest, **kw)
        return _StreamStream(self, inner, method)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        """End every waiting call as CANCELLED (tokens given back), then close the wrapped channel."""
        self._closed.set()
        with self._pending_lock:
            pending, self._pending = self._pending, set()
        for call in pending:
            call.close(_closed_error())
        self._channel.close()

    def __enter__(self) -> ThrottledChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ThrottledChannel {self._interceptor!r}>"

    # -- used by the multicallables ---------------------------------------

    def _track(self, call: ThrottledCall) -> ThrottledCall:
        with self._pending_lock:
            if not self._closed.is_set():
                self._pending.add(call)
                call._on_end = self._untrack
                return call
        call.close(_closed_error())
        return call

    def _untrack(self, call: ThrottledCall) -> None:
        with self._pending_lock:
            self._pending.discard(call)

    def _sleep(self, delay: float) -> None:
        """A stream's token wait: ends early, and fails, when the channel closes."""
        if self._closed.wait(delay):
            raise _closed_error()


def _kwargs(details: grpc.ClientCallDetails) -> dict[str, Any]:
    return {
        "metadata": details.metadata,
        "credentials": details.credentials,
        "wait_for_ready": getattr(details, "wait_for_ready", None),
        "compression": getattr(details, "compression", None),
    }


class _UnaryUnary(grpc.UnaryUnaryMultiCallable):  # type: ignore[type-arg]
    __slots__ = ("_channel", "_inner", "_method", "_settings")

    def __init__(self, channel: ThrottledChannel, inner: Any, method: str) -> None:
        self._channel = channel
        self._inner = inner
        self._method = method
        self._settings: Settings = channel._interceptor._settings

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        channel = self._channel
        if channel._closed.is_set():
            raise _closed_error()
        settings = self._settings
        details = CallDetails(self._method, timeout, metadata, credentials, wait_for_ready, compression)
        plan = CallPlan(settings, self._method, timeout, settings.tokens_for(self._method, request))
        max_wait = plan.reserve_wait()
        reservation = None
        if max_wait is None:
            action: Any = plan.expired()
        else:
            reservation = channel._interceptor.bucket.reserve(plan.tokens, max_wait=max_wait)
            action = plan.reserved(reservation)
        if not isinstance(action, Send):
            return self._blocking(details, request, plan).take_over(action, reservation).result()
        # The common case: send now, on this thread, straight to the channel.
        try:
            response, call = self._inner.with_call(
                request,
                timeout=action.timeout,
                metadata=settings.with_metadata(metadata),
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except grpc.RpcError as error:
            if not settings.throttle.error_throttled(error):
                raise  # a plain failure: no signal either way
            outcome: Any = error
            trailers = error.trailing_metadata()
        else:
            answer = settings.throttle.quota_answer(response)
            if answer is None:
                plan.answered(None)
                return response
            return (
                self._blocking(details, request, plan)
                .take_over_throttled(Outcome(response, call), call.trailing_metadata(), answer, response)
                .result()
            )
        return self._blocking(details, request, plan).take_over_throttled(outcome, trailers).result()

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, Any]:
        details = CallDetails(self._method, timeout, metadata, credentials, wait_for_ready, compression)
        call = self._start(details, request, self._blocking)
        return call.result(), call

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        details = CallDetails(self._method, timeout, metadata, credentials, wait_for_ready, compression)
        return self._start(details, request, self._future)

    def _start(
        self, details: CallDetails, request: Any, kind: Callable[[CallDetails, Any, CallPlan], ThrottledCall]
    ) -> ThrottledCall | LocalRpcError:
        if self._channel._closed.is_set():
            return _closed_error()
        timeout = details.timeout
        settings = self._settings
        plan = CallPlan(settings, self._method, timeout, settings.tokens_for(self._method, request))
        return kind(details, request, plan).start()

    def _blocking(self, details: CallDetails, request: Any, plan: CallPlan) -> ThrottledCall:
        """The sync driver, sending each attempt with a blocking ``with_call``."""
        inner = self._inner

        def continuation(details: grpc.ClientCallDetails, request: Any) -> Any:
            try:
                response, call = inner.with_call(request, timeout=details.timeout, **_kwargs(details))
            except grpc.RpcError as error:
                return error  # grpc's errors are finished Calls and Futures
            return Outcome(response, call)

        call = ThrottledCall(self._settings, self._channel._interceptor.bucket, continuation, details, request, plan)
        return self._channel._track(call)

    def _future(self, details: CallDetails, request: Any, plan: CallPlan) -> ThrottledCall:
        """The sync driver, sending each attempt with ``.future()``."""
        inner = self._inner

        def continuation(details: grpc.ClientCallDetails, request: Any) -> Any:
            return inner.future(request, timeout=details.timeout, **_kwargs(details))

        call = ThrottledCall(self._settings, self._channel._interceptor.bucket, continuation, details, request, plan)
        return self._channel._track(call)


class _PacedAtStart:
    """A streaming multicallable: one token when the stream starts, never retried."""

    __slots__ = ("_channel", "_inner", "_method")

    def __init__(self, channel: ThrottledChannel, inner: Any, method: str) -> None:
        self._channel = channel
        self._inner = inner
        self._method = method

    def _start(self, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> dict[str, Any] | LocalRpcError:
        """The keyword arguments to send the stream with, or why it is not sent."""
        channel = self._channel
        if channel._closed.is_set():
            return _closed_error()
        details = CallDetails(
            self._method,
            timeout,
            kwargs.get("metadata"),
            kwargs.get("credentials"),
            kwargs.get("wait_for_ready"),
            kwargs.get("compression"),
        )
        try:
            started = channel._interceptor._wait_to_start(details, request, sleep=channel._sleep)
        except LocalRpcError as error:
            return error
        return {"timeout": started.timeout, **_kwargs(started)}


class _ResponseStreaming(_PacedAtStart):
    def _request_for_cost(self, request: Any) -> Any:
        return request

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        started = self._start(self._request_for_cost(request), timeout, kwargs)
        if isinstance(started, LocalRpcError):
            return FailedStream(started.code(), started.details())
        return self._inner(request, **started)


class _ResponseUnary(_PacedAtStart):
    def __call__(self, request_iterator: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        started = self._start(None, timeout, kwargs)
        if isinstance(started, LocalRpcError):
            raise started
        return self._inner(request_iterator, **started)

    def with_call(self, request_iterator: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        started = self._start(None, timeout, kwargs)
        if isinstance(started, LocalRpcError):
            raise started
        return self._inner.with_call(request_iterator, **started)

    def future(self, request_iterator: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        started = self._start(None, timeout, kwargs)
        if isinstance(started, LocalRpcError):
            return started  # a finished future holding the error
        return self._inner.future(request_iterator, **started)


class _UnaryStream(_ResponseStreaming, grpc.UnaryStreamMultiCallable):  # type: ignore[type-arg,misc]
    __slots__ = ()


class _StreamUnary(_ResponseUnary, grpc.StreamUnaryMultiCallable):  # type: ignore[type-arg,misc]
    __slots__ = ()


class _StreamStream(_ResponseStreaming, grpc.StreamStreamMultiCallable):  # type: ignore[type-arg,misc]
    __slots__ = ()

    def _request_for_cost(self, request: Any) -> Any:
        return None  # a request iterator: the cost function sees None, as documented
