"""The Redis bucket's ``limits=``: quota windows counted in sub-windows, bounded in memory.

:class:`~grpc_throttle.TokenBucket` keeps a log of its sends (``_window``); a
shared bucket cannot keep a million entries in Redis for a monthly quota. A
:class:`~grpc_throttle.Limit` of ``count`` calls in any ``seconds`` is kept
instead as counts of sends per sub-window of ``seconds / SUBWINDOWS``, on
Redis's clock (microseconds): sub-window ``i`` covers ``[i*g, (i+1)*g)``.

The rule, for a send planned at ``t`` in sub-window ``i``: every window of
``seconds`` that holds ``t`` lies within sub-windows ``i - SUBWINDOWS`` to
``i``, so the send may go when the sends counted there (and in any later
sub-window), plus its own tokens, are at most ``count``. Otherwise it waits
until enough of the oldest sub-windows have left: to just past the start of
sub-window ``j + SUBWINDOWS + 1``, ``j`` the newest of them. Windows are thus
over-counted, never under-counted: a send waits at most one sub-window
(``seconds / SUBWINDOWS``) longer than an exact log would make it wait. A
tokens value above ``count`` waits until the window is empty (as
``TokenBucket`` does).

A window the server says is full (Clarifai's 11003) is held: a ``hold``
field of the same hash delays every new send until the window frees as its
counts see it (:meth:`Ring.frees`), as ``TokenBucket.hold_window`` does.

Memory is one hash field per limit (``lua/_windows.lua``), holding
at most :data:`MAX_ENTRIES` ``index:count`` pairs whatever the count: pairs
older than the window are dropped, and when more are kept (a queue planned
further ahead than a window), the oldest is merged into the next one, counted
as if it were sent later (over-counted again).

This module is the pure Python reference of that Lua, used by the bucket to
encode its limits once and by the tests to predict the script's answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._window import Limit, scaled_count

__all__ = ["MAX_ENTRIES", "MIN_SECONDS", "SUBWINDOWS", "Ring", "earliest", "encode"]

#: Sub-windows per limit: the finer, the closer to an exact log (and the more work per call).
SUBWINDOWS = 64
#: The most ``index:count`` pairs kept per limit: every sub-window a window can touch.
MAX_ENTRIES = SUBWINDOWS + 1
#: The shortest window accepted, seconds: a sub-window of a microsecond, Redis's ``TIME`` resolution.
MIN_SECONDS = SUBWINDOWS * 1e-6
#: Microseconds past a sub-window's start at which a send waiting for it is placed: Redis
#: times near 1.8e15 us are exact to 0.25 us, and this keeps the send inside that sub-window.
PAST_EDGE = 2.0


def encode(limits: Sequence[Limit]) -> str:
    """The scripts' limits argument, ``count:microseconds;...`` (each item also names the limit's hash field)."""
    return ";".join(f"{limit.count}:{limit.seconds * 1e6!r}" for limit in limits)


@dataclass
class Ring:
    """One limit's counts, as the scripts keep them: sub-window indices ascending, and counts."""

    #: Calls allowed in one window.
    count: float
    #: The sub-window's length, microseconds.
    span: float
    #: The sub-windows holding sends, ascending.
    index: list[float] = field(default_factory=list)
    #: The tokens counted in each.
    tokens: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, limit: Limit, scale: float = 1.0) -> Ring:
        """An empty ring for ``limit``, while the rate runs at ``scale`` of the configured one."""
        return cls(scaled_count(limit.count, scale), limit.seconds * 1e6 / SUBWINDOWS)

    def at(self, t: float) -> float:
        """The sub-window holding time ``t`` (microseconds)."""
        return math.floor(t / self.span)

    def prune(self, now: float) -> None:
        """Forget the sub-windows no window ending at ``now`` or later can touch."""
        low = self.at(now) - SUBWINDOWS
        keep = [k for k, i in enumerate(self.index) if i >= low]
        self.index = [self.index[k] for k in keep]
        self.tokens = [self.tokens[k] for k in keep]

    def ready(self, t: float, tokens: float) -> float:
        """The earliest time >= ``t`` at which ``tokens`` more fit this limit."""
        low = self.at(t) - SUBWINDOWS
        total = sum(c for i, c in zip(self.index, self.tokens, strict=True) if i >= low)
        if total + tokens <= self.count or total <= 0:
            return t
        last = low
        for i, c in zip(self.index, self.tokens, strict=True):
            if i >= low:
                total -= c
                last = i
                if total + tokens <= self.count:
                    break
        return max(t, math.ceil((last + SUBWINDOWS + 1) * self.span) + PAST_EDGE)

    def room(self, now: float) -> float:
        """Tokens this limit still takes at ``now``: its count less those counted in a window from ``now`` on."""
        low = self.at(now) - SUBWINDOWS
        return self.count - sum(c for i, c in zip(self.index, self.tokens, strict=True) if i >= low)

    def frees(self, now: float, seconds: float) -> float:
        """When this limit's window, said to be full at ``now``, frees: once the oldest send counted
        in it up to ``now`` has left, or a whole window (``seconds``) from ``now`` when it holds none."""
        low, high = self.at(now) - SUBWINDOWS, self.at(now)
        for i, c in zip(self.index, self.tokens, strict=True):
            if low <= i <= high and c > 0:
                return math.ceil((i + SUBWINDOWS + 1) * self.span) + PAST_EDGE
        return now + seconds * 1e6

    def add(self, t: float, tokens: float) -> None:
        """Count ``tokens`` sent at ``t``; past :data:`MAX_ENTRIES`, the oldest merges into the next."""
        i = self.at(t)
        k = len(self.index)
        while k > 0 and self.index[k - 1] > i:
            k -= 1
        if k > 0 and self.index[k - 1] == i:
            self.tokens[k - 1] += tokens
        else:
            self.index.insert(k, i)
            self.tokens.insert(k, tokens)
        while len(self.index) > MAX_ENTRIES:
            self.tokens[1] += self.tokens[0]
            del self.index[0], self.tokens[0]


def earliest(rings: Sequence[Ring], t: float, tokens: float) -> float:
    """The earliest time >= ``t`` (microseconds) at which ``tokens`` fit every ring."""
    while True:
        moved = t
        for ring in rings:
            moved = ring.ready(moved, tokens)
        if moved == t:
            return t
        t = moved
