"""Window-shaped schedules: at most ``count`` sends in any window of ``seconds``.

A quota such as "15 requests per second" is counted by the server over a
window: at most 15 arrivals in any second (a sliding window), or in each
second of the clock (a fixed window), or through a token bucket whose burst
is 15. Keeping every sliding window within its count satisfies all three, and
is the only rule that never delays a call the server would have accepted.

The schedule is a log of sends, past and planned, oldest first. A new
reservation goes at the earliest instant, no earlier than the last one
(first come, first served), at which every window ending there holds at most
its count: for each window the send ``p`` whose departure makes room is found
by bisection on the cumulative weights, and the reservation may go at
``time[p] + seconds``. Because sends are only ever appended at the end, a
window ending at the new send is the only one it can overfill.

Memory is the sends within the longest window (the bucket prunes every
:data:`PRUNE_EVERY` sends, so at most that many more are kept):
one float, one cumulative float and one reference each. Past ``max_entries`` (16,384) live sends, the
sends already past are merged pairwise into the later of each pair
(``merge``): a merged send counts as if all of it went at its latest moment,
so windows can only be over-counted, never under. A window is then over-counted
by less than the weight of one merged entry (the one straddling its start),
which is at most ``2 ** rounds`` sends after ``rounds`` merges.

No clock and no lock: the bucket calls this under its own.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from .. import _checks

__all__ = ["MAX_ENTRIES", "PRUNE_EVERY", "Limit", "Window", "WindowLog", "check_limits", "rate_window"]

#: Live sends kept exactly before older ones are merged (see the module doc).
MAX_ENTRIES = 16_384
#: Sends between two prunes: pruning is amortized off the hot path.
PRUNE_EVERY = 256
#: Rounding noise in weights and times.
_EPSILON = 1e-9
#: The largest count and window accepted for a Limit.
_MAX_COUNT = 1_000_000_000
_MAX_SECONDS = 1e9


@dataclasses.dataclass(frozen=True)
class Limit:
    """A quota window: at most ``count`` calls in any ``seconds``.

    Give these to :class:`~grpc_throttle.TokenBucket` as ``limits=`` for the
    windows beyond the per-second rate (Clarifai, for example, also limits
    calls per hour and per month). Every limit holds at the same time.

    Attributes:
        count: Calls allowed in one window, a whole number in [1, 1e9].
        seconds: The window's length, in (0, 1e9].

    Example:
        >>> Limit(10_000, 3600)
        Limit(count=10000, seconds=3600.0)
    """

    count: int
    seconds: float

    def __post_init__(self) -> None:
        count = _checks.whole("count", self.count, 1)
        if count > _MAX_COUNT:
            raise ValueError(f"count must be a whole number in [1, {_MAX_COUNT:g}], got {self.count!r}")
        seconds = _checks.positive("seconds", self.seconds)
        if seconds > _MAX_SECONDS:
            raise ValueError(f"seconds must be a number in (0, {_MAX_SECONDS:g}], got {self.seconds!r}")
        object.__setattr__(self, "seconds", seconds)

    @property
    def rate(self) -> float:
        """The window's average rate, calls per second."""
        return self.count / self.seconds


def check_limits(limits: object) -> tuple[Limit, ...]:
    """``limits`` as a tuple, or ValueError naming the field (every bucket's ``limits=`` check)."""
    if isinstance(limits, Limit) or not isinstance(limits, Iterable):
        raise ValueError(f"limits must be a list of Limit, got {limits!r}")
    checked = tuple(limits)
    for limit in checked:
        if not isinstance(limit, Limit):
            raise ValueError(f"limits must hold Limit objects, got {limit!r}")
    return checked


def scaled_count(count: float, scale: float) -> float:
    """A window's count while the rate runs at ``scale`` of the configured one: scaled down, at least 1."""
    return count if scale >= 1 else max(1.0, math.floor(count * scale + 1e-9))


def window_limits(limits: Iterable[Limit], seconds: float) -> list[Limit]:
    """The limits of the window ``seconds`` long that a server's full-window answer names (hold_window)."""
    return [limit for limit in limits if math.isclose(limit.seconds, seconds, rel_tol=1e-9)]


class Window(NamedTuple):
    """One window in force: at most ``calls`` tokens sent in any ``span`` seconds."""

    calls: float
    span: float


def rate_window(rate: float) -> tuple[float, float]:
    """The window that ``rate`` calls per second means: ``(count, seconds)``.

    A whole rate is that many calls in any second. Otherwise the count is
    rounded up and the window stretched to keep the average: 2.5/s is 3 calls
    in any 1.2 s, 0.5/s one call in any 2 s.
    """
    count = max(1.0, math.ceil(rate - _EPSILON))
    return count, count / rate


class WindowLog:
    """The sends of one bucket, past and planned, oldest first (see the module doc)."""

    __slots__ = ("_cum", "_head", "_max_entries", "_owners", "_times", "horizon", "previous")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        #: Each send's time on the bucket's clock, in order.
        self._times: list[float] = []
        #: Cumulative weight up to and including each send.
        self._cum: list[float] = []
        #: The reservation behind each send (None once merged).
        self._owners: list[Any] = []
        #: Index of the oldest send still kept.
        self._head = 0
        self._max_entries = max_entries
        #: Seconds of past sends to keep: the longest window (the owner sets it).
        self.horizon = math.inf
        #: The time of the send before the one :meth:`place` put last (-inf if none).
        self.previous = -math.inf

    def __len__(self) -> int:
        return len(self._times) - self._head

    @property
    def last(self) -> float:
        """The latest send's time, or -inf when none is kept."""
        return self._times[-1] if len(self._times) > self._head else -math.inf

    def earliest(self, start: float, weight: float, windows: tuple[Window, ...]) -> float:
        """The earliest time >= ``start`` at which ``weight`` fits every window.

        A weight above a window's count waits until that window is empty.
        """
        times, cum, head = self._times, self._cum, self._head
        if len(times) == head:
            return start
        total = cum[-1]
        floor = cum[head - 1] if head else 0.0
        for count, span in windows:
            need = total - count + weight - _EPSILON
            if need <= floor:
                continue
            p = bisect.bisect_left(cum, need, head)
            if p == len(cum):
                p -= 1
            t = times[p] + span
            if t > start:
                start = t
        return start

    def place(
        self, start: float, now: float, weight: float, windows: tuple[Window, ...], latest: float, owner: Any
    ) -> float | None:
        """Append a send at the earliest time >= ``start`` and >= :attr:`last` that fits every window.

        The hot path of a reservation: :meth:`earliest` and :meth:`append` in
        one call, and a prune every :data:`PRUNE_EVERY` sends (``now`` is the
        present). Returns the send's time, or None (nothing added) when that
        is later than ``latest``. :attr:`previous` is then the send before it.
        """
        times, cum = self._times, self._cum
        if not len(times) % PRUNE_EVERY:  # every PRUNE_EVERY sends: whatever prune removes, more are added
            self.prune(now - self.horizon, now)
        if not times:
            if start > latest:
                return None
            cum.append(weight)
            times.append(start)
            self._owners.append(owner)
            self.previous = -math.inf
            return start
        last = times[-1]
        if last > start:
            start = last
        total = cum[-1]
        head = self._head
        floor = cum[head - 1] if head else 0.0
        for count, span in windows:
            need = total - count + weight - _EPSILON
            if need > floor:
                p = bisect.bisect_left(cum, need, head)
                t = times[p if p < len(cum) else p - 1] + span
                if t > start:
                    start = t
        if start > latest:
            return None
        cum.append(total + weight)
        times.append(start)
        self._owners.append(owner)
        self.previous = last
        return start

    def append(self, when: float, weight: float, owner: Any) -> None:
        """Add a send at ``when`` (no earlier than :attr:`last`)."""
        cum = self._cum
        cum.append((cum[-1] if cum else 0.0) + weight)
        self._times.append(when)
        self._owners.append(owner)

    def weight_since(self, when: float) -> float:
        """Weight of the sends later than ``when`` (planned ones included)."""
        times, cum, head = self._times, self._cum, self._head
        p = bisect.bisect_right(times, when, head)
        if p == len(times):
            return 0.0
        return cum[-1] - (cum[p - 1] if p else 0.0)

    def first_later_than(self, when: float) -> float | None:
        """The time of the first send later than ``when``, or None."""
        p = bisect.bisect_right(self._times, when, self._head)
        return self._times[p] if p < len(self._times) else None

    def prune(self, before: float, now: float) -> None:
        """Forget sends at or before ``before``; merge when too many are kept."""
        times = self._times
        if len(times) > self._head and times[self._head] <= before:
            self._head = bisect.bisect_right(times, before, self._head)
            if self._head > 1024 and self._head * 2 > len(times):
                self._compact()
        if len(times) - self._head > self._max_entries:
            self._merge(now)

    def remove(self, owner: Any) -> bool:
        """Take ``owner``'s send out of the log (it will not happen); False if not found."""
        owners = self._owners
        for i in range(len(owners) - 1, self._head - 1, -1):
            if owners[i] is owner:
                cum = self._cum
                weight = cum[i] - (cum[i - 1] if i else 0.0)
                del cum[i], self._times[i], owners[i]
                for j in range(i, len(cum)):
                    cum[j] -= weight
                return True
        return False

    def take_later_than(self, when: float) -> list[tuple[float, float, Any]]:
        """Remove and return the sends later than ``when`` as ``(time, weight, owner)``, in order."""
        times, cum, owners = self._times, self._cum, self._owners
        p = bisect.bisect_right(times, when, self._head)
        out = [(times[i], cum[i] - (cum[i - 1] if i else 0.0), owners[i]) for i in range(p, len(times))]
        del times[p:], cum[p:], owners[p:]
        return out

    def _compact(self) -> None:
        # In place: place() holds these lists while it prunes (a new list here
        # left it reading the old sums against the shortened times).
        head, cum = self._head, self._cum
        base = cum[head - 1]
        cum[:] = [c - base for c in cum[head:]]
        del self._times[:head], self._owners[:head]
        self._head = 0

    def _merge(self, now: float) -> None:
        # Merge the older half of the past sends pairwise into the later of
        # each pair: its cumulative weight already covers both.
        times, cum, owners, head = self._times, self._cum, self._owners, self._head
        past = bisect.bisect_right(times, now, head)
        stop = head + (past - head) // 2 * 2
        if stop - head < 2:
            return  # everything kept is still planned: nothing may be merged
        keep = range(head + 1, stop, 2)
        times[head:stop] = [times[i] for i in keep]
        cum[head:stop] = [cum[i] for i in keep]
        owners[head:stop] = [None] * len(keep)

    def entry_weights(self) -> list[float]:
        """Each kept send's weight, oldest first (a merged send's is the sum merged into it)."""
        cum, head = self._cum, self._head
        return [cum[i] - (cum[i - 1] if i else 0.0) for i in range(head, len(cum))]

    def times(self) -> list[float]:
        """Each kept send's time, oldest first."""
        return self._times[self._head :]
