"""Keep gRPC clients inside the request rate their API allows.

A client interceptor for any ``grpc`` channel (``grpc_throttle.aio`` for
``grpc.aio``) that paces calls with a shared token bucket, spots throttled
answers, retries them after a back-off, and learns when the server's real
limit is lower than configured.

Example:
    >>> import grpc, grpc_throttle
    >>> bucket = grpc_throttle.TokenBucket(rate=15)
    >>> interceptor = grpc_throttle.ThrottlingInterceptor(bucket)
    >>> channel = grpc.intercept_channel(grpc.insecure_channel("localhost:50051"), interceptor)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .buckets import AdaptiveRate, Limit, Reservation, TokenBucket
from .errors import BucketUnavailableError, ThrottleError
from .events import GaveUp, RateChanged, RetryScheduled
from .interceptors import Stats, ThrottledChannel, ThrottlingInterceptor
from .policy import CONN_THROTTLED, ThrottlePolicy
from .retry import RetryBudget, RetryPolicy

__all__ = [
    "CONN_THROTTLED",
    "AdaptiveRate",
    "BucketUnavailableError",
    "GaveUp",
    "Limit",
    "RateChanged",
    "RedisTokenBucket",
    "Reservation",
    "RetryBudget",
    "RetryPolicy",
    "RetryScheduled",
    "Stats",
    "ThrottleError",
    "ThrottlePolicy",
    "ThrottledChannel",
    "ThrottlingInterceptor",
    "TokenBucket",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .buckets.redis import RedisTokenBucket


def __getattr__(name: str) -> Any:
    # redis is an optional dependency (grpc-throttle[redis]): import on first use.
    if name == "RedisTokenBucket":
        from .buckets.redis import RedisTokenBucket

        return RedisTokenBucket
    raise AttributeError(f"module 'grpc_throttle' has no attribute {name!r}")
