"""Finished calls that the sync path makes itself, shaped like grpc's own.

grpc's blocking continuations hand back finished outcomes that are both a
``Call`` and a ``Future``; the interceptor's state machine expects the same
from every attempt. :class:`Outcome` wraps a successful answer obtained some
other way (``ThrottledChannel``'s fast path), and :class:`LocalRpcError` is a
call the interceptor failed itself, before anything reached the server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from . import _bases

__all__ = ["FailedStream", "FinishedCall", "LocalRpcError", "Outcome"]


class FinishedCall(grpc.Call, _bases.Future):
    """The parts every finished call shares: done, inactive, not cancellable."""

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:  # type: ignore[override]  # grpc's finished calls return None too
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class Outcome(FinishedCall):
    """A successful answer, with the call it came on when there is one."""

    def __init__(self, response: Any, call: Any) -> None:
        self._response = response
        self._call = call

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> None:
        return None

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata() if self._call is not None else ()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata() if self._call is not None else ()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def details(self) -> str:
        return self._call.details() if self._call is not None else ""


class LocalRpcError(grpc.RpcError, FinishedCall):
    """A call that never reached the server (like grpc's own errors).

    It is an ``RpcError`` and, like the errors grpc raises for blocking calls,
    also a finished ``Call`` and ``Future``, so ``e.code()`` and ``e.details()``
    work as they do for any gRPC failure.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return f"grpc-throttle: {self._code.name}: {self._details}"

    def result(self, timeout: float | None = None) -> NoReturn:
        raise self

    def exception(self, timeout: float | None = None) -> LocalRpcError:
        return self

    def __str__(self) -> str:
        return f"<LocalRpcError {self._code.name}: {self._details}>"


class FailedStream(LocalRpcError):
    """A streaming call that failed before it was sent: it raises itself on use.

    What ``grpc.intercept_channel`` hands back when an interceptor refuses a
    streaming call: the stub call returns, and reading the stream raises.
    """

    def __iter__(self) -> FailedStream:
        return self

    def __next__(self) -> NoReturn:
        raise self

    def next(self) -> NoReturn:
        raise self
