"""The ``grpc.aio`` side of grpc-throttle: the interceptor, the channel wrapper and the asyncio Redis bucket.

Example:
    >>> import grpc.aio, grpc_throttle, grpc_throttle.aio
    >>> bucket = grpc_throttle.TokenBucket(rate=15)
    >>> interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket)
    >>> # every call kind, least overhead (inside a coroutine):
    >>> # channel = grpc_throttle.aio.ThrottledChannel(grpc.aio.insecure_channel(target), interceptor)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..interceptors.aio import ThrottlingInterceptor
from ..interceptors.aio_channel import ThrottledChannel

__all__ = ["RedisTokenBucket", "ThrottledChannel", "ThrottlingInterceptor"]

if TYPE_CHECKING:
    from ..buckets.redis_aio import RedisTokenBucket


def __getattr__(name: str) -> Any:
    # redis is an optional dependency (grpc-throttle[redis]): import on first use.
    if name == "RedisTokenBucket":
        from ..buckets.redis_aio import RedisTokenBucket

        return RedisTokenBucket
    raise AttributeError(f"module 'grpc_throttle.aio' has no attribute {name!r}")
