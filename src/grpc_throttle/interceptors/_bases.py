"""grpc's interceptor and future base classes, typed for mypy.

grpc-stubs declares these classes generic, while at run time they are plain
ABCs that cannot be subscripted; these aliases give mypy the parameters and
the interpreter the real classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

if TYPE_CHECKING:
    UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    StreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    StreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
    Future = grpc.Future[Any]
    AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    AioStreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    UnaryUnary = grpc.UnaryUnaryClientInterceptor
    UnaryStream = grpc.UnaryStreamClientInterceptor
    StreamUnary = grpc.StreamUnaryClientInterceptor
    StreamStream = grpc.StreamStreamClientInterceptor
    Future = grpc.Future
    AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor
    AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor
    AioStreamStream = grpc.aio.StreamStreamClientInterceptor
