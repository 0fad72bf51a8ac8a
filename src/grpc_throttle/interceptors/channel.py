"""A throttled ``grpc.Channel`` that skips grpc's interceptor plumbing.

``grpc.intercept_channel`` works with :class:`ThrottlingInterceptor` as it is.
Its plumbing, though, turns every blocking call into ``with_call`` plus a
continuation closure and outcome objects, which measurably slows a fast
server (see ``benchmarks/bench_overhead.py``). :class:`ThrottledChannel` does
the common case directly: when a token is free and the answer is not
throttled, a call costs one reservation and one classification on top of the
plain channel's own ``__call__``. Anything else (a wait, a throttled answer,
``.future()``) goes through the same :class:`~._call.ThrottledCall` state
machine as the interceptor, so behaviour is identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc

from ._attempts import CallDetails
from ._call import ThrottledCall, deadline_error
from ._finished import Outcome
from .sync import ThrottlingInterceptor

__all__ = ["ThrottledChannel"]


class ThrottledChannel(grpc.Channel):
    """Wraps a channel so that every call on it is throttled by ``interceptor``.

    Behaves like ``grpc.intercept_channel(channel, interceptor)``, faster.

    Args:
        channel: The channel to wrap (secure or insecure, any options).
        interceptor: The :class:`~grpc_throttle.ThrottlingInterceptor` whose
            bucket, policies and counters the calls use.

    Example:
        >>> import grpc, grpc_throttle
        >>> interceptor = grpc_throttle.ThrottlingInterceptor(grpc_throttle.TokenBucket(rate=15))
        >>> channel = grpc_throttle.ThrottledChannel(grpc.insecure_channel("localhost:1"), interceptor)
    """

    def __init__(self, channel: grpc.Channel, interceptor: ThrottlingInterceptor) -> None:
        if not isinstance(interceptor, ThrottlingInterceptor):
            raise ValueError(f"interceptor must be a grpc_throttle.ThrottlingInterceptor, got {interceptor!r}")
        #: The wrapped channel (Any: grpc-stubs lacks the _registered_method argument).
        self._channel: Any = channel
        self._interceptor = interceptor

    @property
    def interceptor(self) -> ThrottlingInterceptor:
        """The interceptor whose bucket, policies and counters the calls use."""
        return self._interceptor

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        inner = self._channel.unary_unary(method, request_serializer, response_deserializer, _registered_method)
        return _UnaryUnary(inner, method, self._interceptor)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        inner = self._channel.unary_stream(method, request_serializer, response_deserializer, _registered_method)
        return _PacedAtStart(inner, method, self._interceptor, request_is_iterator=False)

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        inner = self._channel.stream_unary(method, request_serializer, response_deserializer, _registered_method)
        return _PacedAtStart(inner, method, self._interceptor, request_is_iterator=True)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        inner = self._channel.stream_stream(method, request_serializer, response_deserializer, _registered_method)
        return _PacedAtStart(inner, method, self._interceptor, request_is_iterator=True)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ThrottledChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._channel.close()

    def __repr__(self) -> str:
        return f"<ThrottledChannel {self._interceptor!r}>"


class _UnaryUnary:
    __slots__ = ("_inner", "_interceptor", "_method")

    def __init__(self, inner: Any, method: str, interceptor: ThrottlingInterceptor) -> None:
        self._inner = inner
        self._method = method
        self._interceptor = interceptor

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        interceptor = self._interceptor
        settings = interceptor._settings
        stats = settings.stats
        tokens = settings.tokens_for(self._method, request)
        started = settings.clock()
        max_wait = math.inf if timeout is None else max(timeout, 0.0)
        reservation = interceptor.bucket.reserve(tokens, max_wait=max_wait)
        if reservation is None:
            stats.add("calls")
            stats.add("deadline_rejections")
            raise deadline_error(None, max_wait)
        if reservation.delay > 0:
            return self._call(request, timeout, kwargs, tokens).resume(reservation).result()
        # The common case: a free token and a final answer, with no extra objects.
        stats.count("calls", "attempts")
        try:
            response = self._inner(request, timeout=timeout, **kwargs)
        except grpc.RpcError as error:
            if not settings.throttle.error_throttled(error):
                raise
            outcome: Any = error
        else:
            if not settings.throttle.response_throttled(response):
                settings.on_answer(False, getattr(reservation, "round", 0))
                return response
            # __call__ gives no trailers: a pushback on an OK answer is not seen here.
            outcome = Outcome(response, None)
        remaining = None if timeout is None else timeout - (settings.clock() - started)
        return (
            self._call(request, remaining, kwargs, tokens)
            .resume(None, outcome, getattr(reservation, "round", 0))
            .result()
        )

    def with_call(self, request: Any, timeout: float | None = None, **kwargs: Any) -> tuple[Any, Any]:
        tokens = self._interceptor._settings.tokens_for(self._method, request)
        call = self._call(request, timeout, kwargs, tokens).start()
        return call.result(), call

    def future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        inner = self._inner

        def continuation(details: grpc.ClientCallDetails, request: Any) -> Any:
            return inner.future(request, timeout=details.timeout, **_call_kwargs(details))

        settings = self._interceptor._settings
        details = CallDetails(self._method, timeout, *_details_tail(kwargs))
        tokens = settings.tokens_for(self._method, request)
        return ThrottledCall(settings, self._interceptor.bucket, continuation, details, request, tokens).start()

    def _call(self, request: Any, timeout: float | None, kwargs: dict[str, Any], tokens: float) -> ThrottledCall:
        """A blocking-style call on the shared state machine."""
        inner = self._inner

        def continuation(details: grpc.ClientCallDetails, request: Any) -> Any:
            try:
                response, call = inner.with_call(request, timeout=details.timeout, **_call_kwargs(details))
            except grpc.RpcError as error:
                return error  # grpc's errors are finished Calls and Futures
            return Outcome(response, call)

        details = CallDetails(self._method, timeout, *_details_tail(kwargs))
        return ThrottledCall(
            self._interceptor._settings, self._interceptor.bucket, continuation, details, request, tokens
        )


class _PacedAtStart:
    __slots__ = ("_inner", "_interceptor", "_method", "_request_is_iterator")

    def __init__(
        self, inner: Any, method: str, interceptor: ThrottlingInterceptor, *, request_is_iterator: bool
    ) -> None:
        self._inner = inner
        self._method = method
        self._interceptor = interceptor
        self._request_is_iterator = request_is_iterator

    def _start(self, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> float | None:
        details = CallDetails(self._method, timeout, *_details_tail(kwargs))
        started = self._interceptor._wait_to_start(details, None if self._request_is_iterator else request)
        return started.timeout

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._inner(request, timeout=self._start(request, timeout, kwargs), **kwargs)

    def with_call(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._inner.with_call(request, timeout=self._start(request, timeout, kwargs), **kwargs)

    def future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._inner.future(request, timeout=self._start(request, timeout, kwargs), **kwargs)


def _details_tail(kwargs: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    return (
        kwargs.get("metadata"),
        kwargs.get("credentials"),
        kwargs.get("wait_for_ready"),
        kwargs.get("compression"),
    )


def _call_kwargs(details: grpc.ClientCallDetails) -> dict[str, Any]:
    return {
        "metadata": details.metadata,
        "credentials": details.credentials,
        "wait_for_ready": getattr(details, "wait_for_ready", None),
        "compression": getattr(details, "compression", None),
    }
