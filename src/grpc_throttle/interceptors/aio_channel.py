"""A throttled ``grpc.aio`` channel that skips grpc.aio's interceptor machinery.

``grpc.aio`` runs every intercepted call in a task of its own, wraps it in an
``InterceptedCall`` and files an interceptor object under one call kind only
(grpc/grpc#40946). :class:`ThrottledChannel` wraps the channel instead and
takes the plan's first step (``_plan``, through the aio interceptor's
``_first_step``) when the call is made:

- a token is there: the call goes straight to the wrapped channel. A
  streaming call is then grpc's own call object, untouched; a unary call is a
  thin :class:`UnaryUnaryCall` that inspects the answer when awaited and,
  if it was throttled, goes on with the same plan (back-off, retry);
- the call must wait: a small task of ours waits for the slot, then sends;
- the plan refuses (an expired deadline, a closed channel): a finished,
  failed call is returned, and nothing reaches grpc.

Every decision is the aio interceptor's (``ThrottlingInterceptor._unary``,
``_wait_for_slot``): this module holds the channel and its multicallables,
``_aio_calls`` the call objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from ._aio_calls import FailedCall, Paced, PacedStream, UnaryUnaryCall, closed_error
from ._plan import CallPlan, Refuse, Send
from .aio import ThrottlingInterceptor, _aio_error
from .sync import _name

__all__ = ["ThrottledChannel"]


class ThrottledChannel(grpc.aio.Channel):
    """Wraps a ``grpc.aio`` channel so that every call on it is throttled by ``interceptor``.

    Behaves like a channel built with ``interceptors=interceptor.for_channel()``,
    for every call kind, with less overhead: no task per call when a token is
    there, and streaming calls are grpc's own call objects. Its multicallables
    are grpc.aio's own kinds (``isinstance(x, grpc.aio.UnaryUnaryMultiCallable)``).

    :meth:`close` ends every call still waiting for a token or backing off at
    once, as CANCELLED, and gives its tokens back; a call made on a closed
    channel fails the same way and takes no token.

    Args:
        channel: The ``grpc.aio`` channel to wrap (secure or insecure, any options).
        interceptor: The :class:`grpc_throttle.aio.ThrottlingInterceptor` whose
            bucket, policies, metadata and counters the calls use.

    Raises:
        ValueError: ``channel`` is not a ``grpc.aio.Channel``, or
            ``interceptor`` not a ``grpc_throttle.aio.ThrottlingInterceptor``.

    Example:
        >>> import grpc.aio, grpc_throttle, grpc_throttle.aio
        >>> interceptor = grpc_throttle.aio.ThrottlingInterceptor(grpc_throttle.TokenBucket(rate=15))
        >>> # inside a coroutine:
        >>> # channel = grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel("localhost:1"), interceptor)
    """

    def __init__(self, channel: grpc.aio.Channel, interceptor: ThrottlingInterceptor) -> None:
        if not isinstance(channel, grpc.aio.Channel):
            raise ValueError(
                f"channel must be a grpc.aio.Channel (use grpc_throttle.ThrottledChannel for grpc), got {channel!r}"
            )
        if not isinstance(interceptor, ThrottlingInterceptor):
            raise ValueError(f"interceptor must be a grpc_throttle.aio.ThrottlingInterceptor, got {interceptor!r}")
        #: The wrapped channel (Any: grpc-stubs lacks the _registered_method argument).
        self._channel: Any = channel
        self._interceptor = interceptor
        self._closed = False
        #: Calls of ours that have not ended, ended by close().
        self._pending: set[Paced] = set()

    @property
    def interceptor(self) -> ThrottlingInterceptor:
        """The interceptor whose bucket, policies and counters the calls use."""
        return self._interceptor

    # grpc passes its private _registered_method; whatever it passed is handed
    # on as it came, and nothing more, so older grpcio keeps working.

    def unary_unary(
        self, method: str, request_serializer: Any = None, response_deserializer: Any = None, *rest: Any, **kw: Any
    ) -> Any:
        inner = self._channel.unary_unary(method, request_serializer, response_deserializer, *rest, **kw)
        return _UnaryUnary(self, inner, method)

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

    async def close(self, grace: float | None = None) -> None:
        """End every waiting call as CANCELLED (tokens given back), then close the wrapped channel."""
        self._closed = True
        pending, self._pending = self._pending, set()
        for call in pending:
            call._close()
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)  # type: ignore[no-any-return]

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def __aenter__(self) -> ThrottledChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<aio.ThrottledChannel {self._interceptor!r}>"


# -- multicallables ------------------------------------------------------------


class _MultiCallable:
    """What the four kinds share: the plan's first step, taken when the call is made."""

    def __init__(self, channel: ThrottledChannel, inner: Any, method: str | bytes) -> None:
        self._channel = channel
        self._inner = inner
        self._method = _name(method)

    def _starter(
        self,
        request: Any,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Callable[[float | None], Any]:
        """``start(timeout)``: one attempt on the wrapped channel, with the interceptor's metadata added."""
        inner = self._inner
        merged = self._channel._interceptor._merged(metadata)

        def start(timeout: float | None) -> Any:
            return inner(
                request,
                timeout=timeout,
                metadata=merged,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        return start

    def _plan(self, timeout: float | None, request: Any) -> CallPlan:
        settings = self._channel._interceptor._settings
        return CallPlan(settings, self._method, timeout, settings.tokens_for(self._method, request))

    def _stream(self, plan: CallPlan, start: Callable[[float | None], Any], timeout: float | None) -> Any:
        """A streaming call: grpc's own when a token is there, else one of ours that waits."""
        channel = self._channel
        if channel._closed:
            return FailedCall(closed_error())
        first = channel._interceptor._first_step(plan)
        if first is not None:
            action = first[0]
            if isinstance(action, Send):
                return start(action.timeout)
            if isinstance(action, Refuse):
                return FailedCall(_aio_error(action.error))
        return PacedStream(channel, plan, start, first, timeout)


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[type-arg]
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        channel = self._channel
        if channel._closed:
            return FailedCall(closed_error())
        interceptor = channel._interceptor
        start = self._starter(request, metadata, credentials, wait_for_ready, compression)
        plan = self._plan(timeout, request)
        first = interceptor._first_step(plan)
        if first is not None:
            action = first[0]
            if isinstance(action, Send):
                return UnaryUnaryCall(channel, plan, start, None, start(action.timeout), timeout)
            if isinstance(action, Refuse):
                return FailedCall(_aio_error(action.error))
        return UnaryUnaryCall(channel, plan, start, first, None, timeout)


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[type-arg]
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        start = self._starter(request, metadata, credentials, wait_for_ready, compression)
        return self._stream(self._plan(timeout, request), start, timeout)


class _RequestStreaming(_MultiCallable):
    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        start = self._starter(request_iterator, metadata, credentials, wait_for_ready, compression)
        return self._stream(self._plan(timeout, None), start, timeout)


class _StreamUnary(_RequestStreaming, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[type-arg]
    pass


class _StreamStream(_RequestStreaming, grpc.aio.StreamStreamMultiCallable):  # type: ignore[type-arg]
    pass
