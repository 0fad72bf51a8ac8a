"""The bucket contract: what every interceptor may ask of any bucket.

Two abstract bases, one per world, with the same member names (as
``grpc.Channel`` and ``grpc.aio.Channel``): :class:`Bucket`, whose methods
never block on I/O and so serve threads and event loops alike, and
:class:`AsyncBucket`, whose ``reserve`` and ``due_in`` are coroutines (a bucket
that talks to Redis over asyncio). The interceptors check which one they hold
with ``isinstance``, never by sniffing attributes.
"""

from __future__ import annotations

import abc
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

from ..events import EventHook

__all__ = ["AsyncBucket", "Bucket", "BucketReservation"]


class BucketReservation(abc.ABC):
    """Tokens taken from a bucket, usable after :attr:`delay` seconds.

    Attributes every reservation has:
        tokens: Tokens held.
        delay: Seconds to wait, from when the reservation was made.
        round: The bucket's adaptation round when it was made: opaque, and
            handed back to :meth:`Bucket.record_throttle` as it is.
    """

    tokens: float
    delay: float
    round: Any

    @abc.abstractmethod
    def cancel(self) -> None:
        """Give the tokens back if the reservation is not due yet (idempotent)."""


class _Common(abc.ABC):
    """The members both worlds share, with the same signatures."""

    @property
    @abc.abstractmethod
    def rate(self) -> float:
        """The configured rate, tokens per second."""

    @property
    @abc.abstractmethod
    def effective_rate(self) -> float:
        """The rate in force now (lower than :attr:`rate` while adapting)."""

    @property
    @abc.abstractmethod
    def capacity(self) -> float:
        """The most tokens one reservation may take."""

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock that reservations' ``ready_at`` times are on."""
        return time.monotonic

    @abc.abstractmethod
    def record_throttle(self, round: Any) -> None:
        """Report a throttled answer to an attempt whose reservation had ``round``; never blocks."""

    @abc.abstractmethod
    def record_success(self) -> None:
        """Report an answer that was not throttled; never blocks."""

    def hold_window(self, seconds: float) -> float | None:
        """The server said a quota window of ``seconds`` is full: hold new calls until it frees.

        Returns the seconds until it frees as this bucket sees it, or None
        (nothing held) when the bucket declares no limit of that window; the
        throttle policy's ``on_window`` then decides. Never blocks.
        """
        return None

    @abc.abstractmethod
    def add_listener(self, hook: EventHook) -> None:
        """Call ``hook(RateChanged(...))`` on every change of the effective rate.

        Adding the same hook twice delivers each event once; it takes as many
        :meth:`remove_listener` calls to stop it.
        """

    @abc.abstractmethod
    def remove_listener(self, hook: EventHook) -> None:
        """Undo one :meth:`add_listener` of ``hook``; does nothing if it was not added."""


class Bucket(_Common):
    """A bucket whose methods never block on I/O: usable from threads and event loops."""

    @abc.abstractmethod
    def reserve(self, tokens: float = 1, *, max_wait: float = math.inf) -> BucketReservation | None:
        """Take ``tokens`` without blocking; None when the wait would exceed ``max_wait``."""

    def due_in(self, reservation: Any) -> float:
        """Seconds until ``reservation`` may go ahead, as of now (0 once due).

        Asked again once its ``delay`` has passed: a rate cut meanwhile may
        have moved it later.
        """
        return float(reservation.due_in())


class AsyncBucket(_Common):
    """A bucket whose ``reserve`` and ``due_in`` are coroutines (e.g. Redis over asyncio)."""

    @abc.abstractmethod
    async def reserve(self, tokens: float = 1, *, max_wait: float = math.inf) -> BucketReservation | None:
        """Take ``tokens``; None when the wait would exceed ``max_wait``."""

    async def due_in(self, reservation: Any) -> float:
        """As :meth:`Bucket.due_in`."""
        value = reservation.due_in()
        # A Redis reservation answers with a coroutine; one from the local
        # fallback (Redis down) with a number.
        return float(await value) if inspect.isawaitable(value) else float(value)


class Listeners:
    """A bucket's rate-change hooks: each delivered once, however often it was added."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[EventHook, int] = {}

    def add(self, hook: EventHook) -> None:
        if not callable(hook):
            raise ValueError(f"hook must be callable, got {hook!r}")
        self._counts[hook] = self._counts.get(hook, 0) + 1

    def remove(self, hook: EventHook) -> None:
        count = self._counts.get(hook, 0)
        if count > 1:
            self._counts[hook] = count - 1
        elif count:
            del self._counts[hook]

    def hooks(self) -> list[EventHook]:
        return list(self._counts)

    def __bool__(self) -> bool:
        return bool(self._counts)

    def __len__(self) -> int:
        return len(self._counts)
