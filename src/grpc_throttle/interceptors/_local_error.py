"""The RpcError the sync interceptor raises when it fails a call itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from . import _bases

__all__ = ["LocalRpcError"]


class LocalRpcError(grpc.RpcError, grpc.Call, _bases.Future):
    """A finished call that never reached the server (like grpc's own errors).

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

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:  # type: ignore[override]  # grpc's own errors return None too
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

    def result(self, timeout: float | None = None) -> NoReturn:
        raise self

    def exception(self, timeout: float | None = None) -> LocalRpcError:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __str__(self) -> str:
        return f"<LocalRpcError {self._code.name}: {self._details}>"
