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

from .buckets import AdaptiveRate, Reservation, TokenBucket
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
    "RateChanged",
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
