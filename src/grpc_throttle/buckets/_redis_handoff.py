"""The Redis bucket's handoff between the shared schedule and its local fallback.

While Redis is down, ``on_failure`` says what a call gets: a local bucket at
``local_share`` of the rate (``"local"``), a free pass (``"allow"``) or an
error (``"fail"``, raised by the caller, who knows why Redis is down). Two
schedules must not overlap at the seams:

* Going down: the slots this process already holds from Redis still fire, so
  the fallback starts one of its intervals after the last of them.
* Coming back: the fallback's slots still fire too, so no slot is taken from
  Redis before the last of them ("not before", sent with the reserve script).
  With ``limits``, the sends the fallback handed out (or let through, under
  ``"allow"``) are counted in Redis's windows too (``lua/count.lua``): the
  windows then hold them as they hold every other send.

This class keeps both marks, those sends and the fallback bucket; it does no
I/O and reads time only from the clock it is given.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from ._base import BucketReservation
from ._cubic import AdaptiveRate
from ._redis_adapt import FallbackRound
from ._redis_config import Settings
from ._window import Limit
from .local import Reservation, TokenBucket

__all__ = ["MAX_UNREPORTED", "FreeReservation", "Handoff"]

#: The most fallback sends kept for Redis's windows: past it, the oldest is merged into the
#: next one, counted as if sent later (the windows over-count, never under).
MAX_UNREPORTED = 1024


class FreeReservation(BucketReservation):
    """What ``on_failure="allow"`` hands out while Redis is down: go ahead now."""

    __slots__ = ("delay", "tokens")

    def __init__(self, tokens: float) -> None:
        self.tokens = tokens
        self.delay = 0.0

    def due_in(self) -> float:
        """Always 0: go ahead now."""
        return 0.0

    def cancel(self) -> None:
        """Nothing to give back."""


class Handoff:
    """The fallback bucket and the marks where one schedule hands over to the other.

    Args:
        settings: The Redis bucket's settings (``local_share``, ``capacity``, ``on_failure``).
        rate: The configured rate, for every process together.
        adaptive: How the fallback adapts to throttle signals (on its own).
        clock: The Redis bucket's monotonic clock.
    """

    def __init__(
        self, settings: Settings, rate: float, adaptive: AdaptiveRate | None, clock: Callable[[], float]
    ) -> None:
        share = settings.local_share
        #: The fallback for on_failure="local": local_share of the rate, of the burst and of
        #: each limit's count, at least 1 (processes falling back together must not burst
        #: capacity each); it adapts on its own.
        self.local = TokenBucket(
            rate * share,
            max(1.0, settings.capacity * share),
            limits=[Limit(max(1, math.floor(limit.count * share)), limit.seconds) for limit in settings.limits],
            adaptive=adaptive,
            clock=clock,
        )
        #: What a call gets while Redis is down.
        self._policy = settings.on_failure
        #: The monotonic clock of every mark.
        self._clock = clock
        #: The latest slot this process got from Redis (ready time): the fallback starts after it.
        self._redis_until = -math.inf
        #: The latest slot the fallback handed out; 0.0 once passed. Back on Redis, no slot is
        #: taken before it.
        self._local_until = 0.0
        #: The longest limit's window, seconds (0: no limits, no sends kept).
        self._longest = max((limit.seconds for limit in settings.limits), default=0.0)
        #: The fallback's sends not yet counted in Redis's windows: [when (bucket clock), tokens].
        self.unreported: list[list[float]] = []
        #: Guards unreported (renewed in a forked child with the bucket's locks).
        self.lock = threading.Lock()

    def shared_slot(self, ready_at: float) -> None:
        """Note a slot from Redis due at ``ready_at``: it fires even if Redis goes down now."""
        if ready_at > self._redis_until:
            self._redis_until = ready_at

    def not_before(self) -> float:
        """Seconds until the fallback's last slot, while it is still to come, else 0."""
        until = self._local_until
        if not until:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            self._local_until = 0.0
            return 0.0
        return left

    def reserve(self, tokens: float, max_wait: float) -> Reservation | FreeReservation | None:
        """What a call gets while Redis is down, under ``"local"`` or ``"allow"``."""
        if self._policy == "allow":
            self._remember(self._clock(), tokens)
            return FreeReservation(tokens)
        if self._redis_until > self._clock():
            self.local.hold_until(self._redis_until)
        reservation = self.local.reserve(min(tokens, self.local.capacity), max_wait=max_wait)
        if reservation is not None:
            reservation.round = FallbackRound(reservation.round)
            if reservation.ready_at > self._local_until:
                self._local_until = reservation.ready_at
            self._remember(reservation.ready_at, reservation.tokens)
        return reservation

    def take_unreported(self, now: float) -> list[list[float]]:
        """The fallback's sends still inside the longest window at ``now``, as ``[when, tokens]``.

        Taken: :meth:`restore` them if Redis did not count them.
        """
        with self.lock:
            sends, self.unreported = self.unreported, []
        return [send for send in sends if send[0] > now - self._longest]

    def restore(self, sends: list[list[float]]) -> None:
        """Keep ``sends`` (from :meth:`take_unreported`) for the next try, before any newer ones."""
        with self.lock:
            self.unreported = sends + self.unreported
            self._trim()

    def _remember(self, when: float, tokens: float) -> None:
        """Keep a send for Redis's windows (with limits only); a cancelled one is kept too (over-counted)."""
        if not self._longest:
            return
        with self.lock:
            self.unreported.append([when, tokens])
            self._trim()

    def _trim(self) -> None:
        """Past MAX_UNREPORTED, merge the oldest send into the next, counted as if sent later (lock held)."""
        sends = self.unreported
        while len(sends) > MAX_UNREPORTED:
            sends[1] = [max(sends[0][0], sends[1][0]), sends[0][1] + sends[1][1]]
            del sends[0]

    def available(self, capacity: float) -> float:
        """Tokens available while Redis is down: the fallback's, or ``capacity`` under ``"allow"``."""
        return self.local.available() if self._policy == "local" else capacity
