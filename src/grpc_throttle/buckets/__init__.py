"""Token buckets: the token arithmetic, the local bucket and the Redis bucket.

Every bucket hands out reservations: taking tokens never blocks, it says how
long to wait. The interceptors do the waiting (a sleep in the caller's thread,
or an ``await`` in its event loop), so one bucket serves both worlds.
"""

from __future__ import annotations

from ._base import AsyncBucket, Bucket, BucketReservation
from ._cubic import AdaptiveRate
from ._window import Limit
from .local import Reservation, TokenBucket

__all__ = ["AdaptiveRate", "AsyncBucket", "Bucket", "BucketReservation", "Limit", "Reservation", "TokenBucket"]
