"""Leased tokens: slots of the shared schedule that one process holds locally.

A process calling faster than half the shared rate would otherwise pay a Redis
round trip per call. With a lease, one round trip takes a batch of consecutive
slots of the shared schedule; later calls are served from this pool without
I/O. Every slot is a real slot of the schedule, so the shared rate holds; a
slot handed out late is still bounded: it expires ``lease`` intervals after it
became due, so the key admits at most ``capacity + lease + rate*w`` tokens in
any window of ``w`` seconds. The batch starts at 1 token and doubles (up to
``lease``) while calls keep coming within two intervals of each other; a slow
caller or an expired slot resets it to 1, so idle processes hoard nothing.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

__all__ = ["LeasePool", "Slot"]


class Slot(NamedTuple):
    """One leased token, on the bucket's local clock."""

    #: When the token may be used.
    ready: float
    #: When the token is dropped unused.
    expires: float


class LeasePool:
    """Leased slots in schedule order. Not thread-safe: the bucket locks around it.

    Args:
        limit: The most tokens one round trip takes (the ``lease`` setting).

    Example:
        >>> pool = LeasePool(4)
        >>> pool.take(now=0.0, max_wait=1.0) is None
        True
        >>> pool.extra()
        0
    """

    def __init__(self, limit: int) -> None:
        #: The most tokens taken per round trip.
        self.limit = limit
        #: Slots held, earliest first.
        self._slots: list[Slot] = []
        #: Size of the next batch, from 1 up to limit.
        self._batch = 1
        #: Seconds per token at the rate of the last batch (0 before the first).
        self._interval = 0.0
        #: Local time of the previous call, or None before the first.
        self._last: float | None = None
        #: Seconds between the last two calls (inf before the second).
        self._gap = float("inf")
        #: True once a slot expired unused since the last batch.
        self._wasted = False

    def __len__(self) -> int:
        return len(self._slots)

    def take(self, now: float, max_wait: float) -> Slot | None:
        """The earliest live slot if it is due within ``max_wait``, else None.

        Every call goes through here first, which is how the pool learns the
        process's own call rate.
        """
        if self._last is not None:
            self._gap = now - self._last
        self._last = now
        while self._slots and self._slots[0].expires < now:
            del self._slots[0]
            self._wasted = True
        if self._slots and self._slots[0].ready - now <= max_wait:
            return self._slots.pop(0)
        return None

    def too_late(self, now: float, max_wait: float) -> bool:
        """True when even the earliest held slot is further away than ``max_wait``.

        A new round trip could only hand out a later slot, so the caller's
        deadline cannot be met.
        """
        return bool(self._slots) and self._slots[0].ready - now > max_wait

    def extra(self) -> int:
        """How many tokens beyond the caller's own to take on this round trip."""
        fast = self._gap <= 2 * self._interval and not self._wasted
        self._batch = min(self._batch * 2, self.limit) if fast else 1
        self._wasted = False
        return self._batch - 1

    def fill(self, slots: list[Slot], interval: float) -> None:
        """Add slots taken from the store; ``interval`` is the rate in force."""
        self._interval = interval
        for slot in slots:
            bisect.insort(self._slots, slot)

    def put_back(self, slot: Slot, now: float) -> None:
        """Return a cancelled slot to the pool unless it expired."""
        if slot.expires >= now:
            bisect.insort(self._slots, slot)

    def clear(self) -> None:
        """Drop every slot (the rate changed: they were cut at the old one)."""
        self._slots.clear()
        self._batch = 1
