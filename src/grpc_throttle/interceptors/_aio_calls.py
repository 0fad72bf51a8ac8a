"""The call objects of :class:`~.aio_channel.ThrottledChannel` (grpc.aio's call ABCs).

``UnaryUnaryCall`` runs the aio interceptor's plan (``ThrottlingInterceptor._unary``)
in whichever coroutine first awaits it, or in a task of ours when the call
must wait; ``PacedStream`` waits for a stream's token in a task of ours and
is then grpc's call; ``FailedCall`` is a call the plan refused to send.
No decision is made here: they only sleep, send and record how the call ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from ._plan import CallPlan, Refuse, Send
from .aio import _aio_error

if TYPE_CHECKING:
    from .aio_channel import ThrottledChannel

_CLOSED = "grpc-throttle: the channel was closed; the call was not sent"


def closed_error() -> grpc.aio.AioRpcError:
    """What a call ended by ``close()``, or made on a closed channel, fails with."""
    return grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), _CLOSED, "")


class Paced:
    """A call of ours: the grpc call it stands for, once there is one, and how it ended.

    ``_final`` is the grpc call whose answer the caller gets; ``_error`` the
    failure when the plan refused to send; ``_cancelled`` set by a cancel.
    """

    # Class-level defaults: a call on the fast path sets only what differs.
    _plan: CallPlan
    _first: tuple[Any, Any] | None = None
    _final: Any = None
    _error: grpc.aio.AioRpcError | None = None
    _cancelled = False
    #: True once the call has ended; _ended wakes who waits for that.
    _done = False
    _ended: asyncio.Future[None] | None = None
    _callbacks: tuple[Callable[[Any], None], ...] = ()

    def __init__(self, channel: ThrottledChannel, timeout: float | None) -> None:
        self._channel = channel
        self._deadline = None if timeout is None else time.monotonic() + timeout

    # what every call answers once it has ended

    async def _end(self) -> None:
        """Wait until the call has ended (overridden by the kinds that drive themselves)."""
        await self._wait_ended()

    async def _wait_ended(self) -> None:
        if self._done:
            return
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
        # Shielded: a waiter that is cancelled must not cancel the others' wait.
        await asyncio.shield(self._ended)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        self._channel._pending.discard(self)
        final = self._final
        if final is not None and not self._cancelled and self._error is None:
            for callback in self._callbacks:
                final.add_done_callback(lambda _call, cb=callback: cb(self))
        else:
            for callback in self._callbacks:
                callback(self)
        self._callbacks = ()

    def _close(self) -> None:
        """The channel closed: end as CANCELLED, sending nothing more."""
        self.cancel()

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, _task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs its coroutine:
        # give the slot back and end the call here.
        if self._done:
            return
        first, self._first = self._first, None
        if first is not None and first[1] is not None:
            first[1].cancel()
        self._plan.cancelled()
        self._cancelled = True
        self._finish()

    def cancel(self) -> bool:
        raise NotImplementedError

    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        return self._final is not None and bool(self._final.cancelled())

    def done(self) -> bool:
        if not self._done:
            return False
        return self._final is None or bool(self._final.done())

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if not self._done:
            self._callbacks += (callback,)
        elif self._final is not None and not self._cancelled and self._error is None:
            self._final.add_done_callback(lambda _call: callback(self))
        else:
            callback(self)

    async def code(self) -> grpc.StatusCode:
        await self._end()
        if self._error is not None:
            return self._error.code()
        if self._cancelled or self._final is None:
            return grpc.StatusCode.CANCELLED
        return await self._final.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        await self._end()
        if self._error is not None:
            return self._error.details() or ""
        if self._cancelled or self._final is None:
            return "Locally cancelled by application!"
        return await self._final.details()  # type: ignore[no-any-return]

    async def initial_metadata(self) -> Any:
        await self._end()
        if self._final is None or self._cancelled:
            return grpc.aio.Metadata()
        return await self._final.initial_metadata()

    async def trailing_metadata(self) -> Any:
        await self._end()
        if self._error is not None:
            return self._error.trailing_metadata()
        if self._final is None or self._cancelled:
            return grpc.aio.Metadata()
        return await self._final.trailing_metadata()

    async def wait_for_connection(self) -> None:
        await self._end()
        if self._error is not None:
            raise self._error
        if self._final is not None and not self._cancelled:
            await self._final.wait_for_connection()

    def _raise_if_not_sent(self) -> None:
        if self._error is not None:
            raise self._error
        if self._cancelled or self._final is None:
            raise asyncio.CancelledError()


class UnaryUnaryCall(Paced, grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A unary call: inspected when awaited, retried after a throttled answer by the same plan.

    When a token was there, the first attempt is already sent and the plan
    runs in whichever coroutine first awaits the call (or asks its code()),
    with no task of ours; otherwise a task of ours waits for the slot, so that
    the call is sent even if nobody awaits it.
    """

    def __init__(
        self,
        channel: ThrottledChannel,
        plan: CallPlan,
        start: Callable[[float | None], Any],
        first: tuple[Any, Any] | None,
        sent: Any,
        timeout: float | None,
    ) -> None:
        self._channel = channel
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._plan = plan
        self._start = start
        self._current = sent
        if sent is None:
            self._first = first
            self._drive_in_a_task()
        else:
            sent.add_done_callback(self._first_done)

    _current: Any = None
    _driving = False
    _cancel_asked = False
    _sleeper: asyncio.Future[None] | None = None
    _task: asyncio.Task[None] | None = None

    def _drive_in_a_task(self) -> None:
        # Taken now, not when the task first runs: a caller awaiting in
        # between must wait for this driver, not start a second one.
        self._driving = True
        self._channel._pending.add(self)
        self._task = self._spawn(self._run_plan())

    def _first_done(self, _call: Any) -> None:
        # Nobody awaited the first attempt before it ended: run the plan
        # anyway, so that a throttled answer is retried and done() comes true.
        if not self._driving and not self._done:
            self._drive_in_a_task()

    async def _attempt(self, timeout: float | None) -> Any:
        if self._channel._closed:
            raise closed_error()  # a retry due after close(): nothing more reaches grpc
        return self._start(timeout)

    def _on_attempt(self, call: Any) -> None:
        self._current = call

    async def _sleep(self, delay: float) -> None:
        """A wait or back-off that cancel() cuts short (as a CancelledError)."""
        self._channel._pending.add(self)  # from now on, close() must end this call
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(max(delay, 0.0), _wake, sleeper)
        self._sleeper = sleeper
        try:
            await sleeper
        finally:
            handle.cancel()
            self._sleeper = None

    async def _run_plan(self) -> None:
        """Run the plan to its end (by the one driver there is); records how the call ended."""
        sent, self._current = self._current, None
        first, self._first = self._first, None
        try:
            self._final = await self._channel._interceptor._unary(
                self._plan,
                self._attempt,
                first=first,
                sent=sent,
                on_attempt=self._on_attempt,
                sleep=self._sleep,
            )
        except grpc.aio.AioRpcError as error:
            self._error = error
        except asyncio.CancelledError:
            self._cancelled = True
            if not self._cancel_asked:
                raise  # the awaiting task itself was cancelled: it must see it
        finally:
            self._current = None
            self._finish()

    async def _end(self) -> None:
        if self._done:
            return
        if self._driving:
            await self._wait_ended()
            return
        self._driving = True  # inline, in the caller's task
        await self._run_plan()

    def cancel(self) -> bool:
        if self._done:
            return self._final is not None and bool(self._final.cancel())
        self._cancel_asked = True
        self._cancelled = True
        if not self._driving:
            if self._task is not None:
                self._task.cancel()
                return True
            # The first attempt is in flight and nobody drives yet: cancel it;
            # whoever awaits next sees CANCELLED through the plan.
            if self._current is not None:
                self._current.cancel()
            return True
        if self._sleeper is not None:
            self._sleeper.cancel()
        elif self._current is not None:
            self._current.cancel()
        elif self._task is not None:
            self._task.cancel()
        return True

    def _close(self) -> None:
        self.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._result().__await__()

    async def _result(self) -> Any:
        try:
            await self._end()
        except asyncio.CancelledError:
            # As with grpc.aio's own calls: cancelling the task that awaits
            # the call cancels the call (and gives a waiting call's token back).
            self.cancel()
            raise
        self._raise_if_not_sent()
        return await self._final


class PacedStream(
    Paced,
    grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryCall,  # type: ignore[type-arg]
    grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
):
    """A streaming call that waits for its token in a task of ours, then is grpc's call.

    Every method waits for the start; after it, each one is the grpc call's.
    """

    def __init__(
        self,
        channel: ThrottledChannel,
        plan: CallPlan,
        start: Callable[[float | None], Any],
        first: tuple[Any, Any] | None,
        timeout: float | None,
    ) -> None:
        super().__init__(channel, timeout)
        self._plan = plan
        self._start = start
        self._first = first
        channel._pending.add(self)
        self._task = self._spawn(self._begin())

    async def _begin(self) -> None:
        interceptor = self._channel._interceptor
        try:
            first, self._first = self._first, None
            action = await interceptor._take_token(self._plan, first=first)
            if isinstance(action, Send):
                self._final = self._start(action.timeout)
            else:
                assert isinstance(action, Refuse)  # a stream is never answered throttled here
                self._error = _aio_error(action.error)
        except asyncio.CancelledError:
            self._cancelled = True
        finally:
            self._finish()

    async def _started(self) -> Any:
        try:
            await self._wait_ended()
        except asyncio.CancelledError:
            self.cancel()  # as grpc.aio's read() does: the awaiting task's cancel cancels the call
            raise
        self._raise_if_not_sent()
        return self._final

    def cancel(self) -> bool:
        if self._done:
            return self._final is not None and bool(self._final.cancel())
        self._cancelled = True
        self._task.cancel()
        return True

    async def read(self) -> Any:
        return await (await self._started()).read()

    async def write(self, request: Any) -> None:
        await (await self._started()).write(request)

    async def done_writing(self) -> None:
        await (await self._started()).done_writing()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        call = await self._started()
        async for response in call:
            yield response

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._started())


class FailedCall(
    Paced,
    grpc.aio.UnaryUnaryCall,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryCall,  # type: ignore[type-arg]
    grpc.aio.StreamStreamCall,  # type: ignore[type-arg]
):
    """A call the plan refused to send (expired deadline, closed channel): it fails on use."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self._deadline = None
        self._final = None
        self._error = error
        self._cancelled = False
        self._done = True
        self._ended = None
        self._callbacks = ()

    def cancel(self) -> bool:
        return False

    async def read(self) -> Any:
        raise self._error  # type: ignore[misc]

    async def write(self, request: Any) -> None:
        raise self._error  # type: ignore[misc]

    async def done_writing(self) -> None:
        raise self._error  # type: ignore[misc]

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[Any]:
        raise self._error  # type: ignore[misc]
        yield  # pragma: no cover  (makes this an async generator)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._fail().__await__()

    async def _fail(self) -> Any:
        raise self._error  # type: ignore[misc]


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)
