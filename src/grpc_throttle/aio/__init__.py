"""The ``grpc.aio`` side of grpc-throttle, mirroring the top-level names.

Example:
    >>> import grpc.aio, grpc_throttle, grpc_throttle.aio
    >>> bucket = grpc_throttle.TokenBucket(rate=15)
    >>> interceptor = grpc_throttle.aio.ThrottlingInterceptor(bucket)
"""

from __future__ import annotations

from ..interceptors.aio import ThrottlingInterceptor

__all__ = ["ThrottlingInterceptor"]
