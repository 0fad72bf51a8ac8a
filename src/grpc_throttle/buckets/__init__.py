"""Token buckets: the token arithmetic, the local bucket and the Redis bucket.

Every bucket hands out reservations: taking tokens never blocks, it says how
long to wait. The interceptors do the waiting (a sleep in the caller's thread,
or an ``await`` in its event loop), so one bucket serves both worlds.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from ._cubic import AdaptiveRate
from .local import Reservation, TokenBucket

__all__ = ["AdaptiveRate", "AsyncBucket", "Bucket", "BucketReservation", "Reservation", "TokenBucket"]


class BucketReservation(Protocol):
    """What a bucket's ``reserve`` hands back."""

    #: Tokens held.
    tokens: float
    #: Seconds to wait before going ahead, from when the reservation was made.
    delay: float
    # Optional: ``round`` (int), the bucket's adaptation round when it was
    # made, passed back to ``record_throttle`` by buckets that adapt; and
    # ``due_in()`` (seconds still to wait, asked again once ``delay`` has
    # passed) by buckets whose cuts re-space callers already waiting.

    def cancel(self) -> None:
        """Give the tokens back if the reservation is not due yet."""


@runtime_checkable
class Bucket(Protocol):
    """A bucket whose ``reserve`` never blocks on I/O (usable from threads)."""

    @property
    def rate(self) -> float: ...

    def reserve(self, tokens: float = 1, *, max_wait: float = math.inf) -> BucketReservation | None: ...


@runtime_checkable
class AsyncBucket(Protocol):
    """A bucket whose ``reserve`` is a coroutine (e.g. one backed by Redis)."""

    @property
    def rate(self) -> float: ...

    async def reserve(self, tokens: float = 1, *, max_wait: float = math.inf) -> BucketReservation | None: ...
