"""An asyncio bucket behind the sync bucket interface, for the backend table (tests only).

The behaviour tests in test_bucket_backends.py are sync; this runs an asyncio
bucket on an event loop of its own in a thread, and waits for the updates the
bucket schedules as tasks (``cancel``, ``record_throttle``, ``record_success``)
before returning, as the sync bucket's own calls do.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from tests.redis_deployments import aclose_client

__all__ = ["LoopBucket"]


class LoopBucket:
    """``client()`` and ``make(client)`` (called on the loop) build the asyncio bucket.

    The bucket's methods are then called synchronously; :meth:`close` closes
    the bucket, then the client.

    Example:
        >>> make = lambda client: RedisTokenBucket(client, key="k", rate=10)
        >>> bucket = LoopBucket(lambda: RedisCluster.from_url(url), make)  # doctest: +SKIP
        >>> bucket.reserve().delay  # doctest: +SKIP
    """

    def __init__(self, client: Callable[[], Any], make: Callable[[Any], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def build() -> tuple[Any, Any]:
            made = client()
            return made, make(made)

        #: The caller's asyncio client and the bucket on it.
        self.client, self.bucket = self._run(build())

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def _in_loop(self, call: Callable[[], Any]) -> Any:
        """Run a plain method on the loop, then wait for the tasks it scheduled."""

        async def go() -> Any:
            result = call()
            while self.bucket._tasks:
                await asyncio.gather(*list(self.bucket._tasks), return_exceptions=True)
            return result

        return self._run(go())

    def reserve(self, tokens: float = 1, **kwargs: Any) -> LoopReservation | None:
        reservation = self._run(self.bucket.reserve(tokens, **kwargs))
        return None if reservation is None else LoopReservation(self, reservation)

    def try_acquire(self, tokens: float = 1) -> bool:
        return bool(self._run(self.bucket.try_acquire(tokens)))

    def available(self) -> float:
        return float(self._run(self.bucket.available()))

    def set_effective_rate(self, value: float) -> None:
        self._run(self.bucket.set_effective_rate(value))

    def record_throttle(self, round: Any) -> None:
        self._in_loop(lambda: self.bucket.record_throttle(round))

    def record_success(self) -> None:
        self._in_loop(self.bucket.record_success)

    def hold_window(self, seconds: float) -> float | None:
        return self._in_loop(lambda: self.bucket.hold_window(seconds))  # type: ignore[no-any-return]

    @property
    def rate(self) -> float:
        return float(self.bucket.rate)

    @rate.setter
    def rate(self, value: float) -> None:
        self._in_loop(lambda: setattr(self.bucket, "rate", value))

    def __getattr__(self, name: str) -> Any:  # effective_rate, capacity, round, key, ...
        return getattr(self.bucket, name)

    def close(self) -> None:
        self._run(self.bucket.aclose())
        self._run(aclose_client(self.client))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class LoopReservation:
    """An asyncio bucket's reservation, with ``cancel`` run on the bucket's loop."""

    def __init__(self, owner: LoopBucket, reservation: Any) -> None:
        self._owner = owner
        self._reservation = reservation
        self.delay = reservation.delay
        self.tokens = reservation.tokens

    def cancel(self) -> None:
        self._owner._in_loop(self._reservation.cancel)

    def __getattr__(self, name: str) -> Any:  # round, ready_at, ...
        return getattr(self._reservation, name)
