"""The Redis bucket's burst: how many calls it sends at once, declared or learned.

What every process on a key shares lives in Redis: the schedule (GCRA, whose
``capacity`` argument is the burst a call may use), with a learned burst the
rate's own window (at most the rate's count in its window,
``_window.rate_window``, counted as ``limits=`` are, so that bursts never put
more in a second than the quota), and the key's latest send, from which the reserve script tells a send in a
burst (sooner than one interval after it) from an evenly spaced one.

What each process learns is its own: the burst it asks for, learned from the
answers to its calls exactly as :class:`~grpc_throttle.TokenBucket` learns
its own (``_burst``): slow start from 2, a throttled call sent in a burst
that was exploring shrinks the burst alone, one sent in the learned burst
halves it and cuts the shared rate. Processes on a key see much the same
answers, so they learn much the same burst; the rate's window bounds them
all together whatever each one asks for.

No I/O and no clock: the bucket calls this and sends what it says.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import NamedTuple

from . import _burst
from ._window import rate_window

__all__ = ["BurstRound", "LearnedBurst"]


class BurstRound(NamedTuple):
    """The round of a reservation Redis handed out in a burst (see :meth:`LearnedBurst.round_of`)."""

    #: The key's round (its rate decreases so far), as an evenly spaced send's round is.
    round: int
    #: This process's burst changes so far: a throttle of an older burst was learned from already.
    epoch: int
    #: True when the burst was still being explored (slow start, or a probe of a wider one).
    probe: bool


class LearnedBurst:
    """This process's burst on a shared key, and the rate's window that bounds it.

    Args:
        declared: The declared burst (``capacity=``), or None to learn it up to
            the rate's window count.
        rate: The configured rate, tokens per second.
        learn: False when the bucket does not adapt: the burst stays at its largest.

    Example:
        >>> burst = LearnedBurst(None, 15.0, learn=True)
        >>> burst.size, burst.most, burst.window_spec(15.0)
        (2.0, 15.0, '15:1000000.0')
    """

    def __init__(self, declared: float | None, rate: float, *, learn: bool) -> None:
        #: The burst given as ``capacity=``, or None.
        self.declared = declared
        self._lock = threading.Lock()
        #: Where the burst stands (``_burst``).
        self.state = _burst.start(self.most_at(rate), learn=learn, declared=declared is not None)
        #: Bumped on every change a throttle makes (one lesson per burst).
        self.epoch = 0
        #: The key round from which a throttled evenly spaced send may still halve the burst.
        self._even_from = 0
        #: Until then (the bucket's clock) no burst: see :meth:`calm`.
        self.calm_until = -math.inf

    def renew_lock(self) -> None:
        """In a forked child: a fresh lock."""
        self._lock = threading.Lock()

    @property
    def size(self) -> float:
        """The burst asked for now (the scripts' ``capacity``)."""
        return self.state.size

    @property
    def most(self) -> float:
        """The largest burst: the most tokens one reservation may take."""
        return self.state.most

    def most_at(self, rate: float) -> float:
        """The largest burst at ``rate``: the declared one, or the rate's window count."""
        return self.declared if self.declared is not None else rate_window(rate)[0]

    def window_spec(self, rate: float) -> str:
        """The rate's window as the scripts take a limit (``count:microseconds``), for a learned burst.

        ``""`` for a declared one: the schedule is then the declared GCRA, with
        the windows of ``limits=`` only (as before bursts were learned), and
        when no burst is possible (a rate below 2/s). A cut of the shared rate
        scales the window as it scales every limit.
        """
        if self.declared is not None or self.most <= 1:
            return ""
        count = self.most
        return f"{count:.0f}:{count / rate * 1e6!r}"

    def window_seconds(self, rate: float) -> float:
        """The length of the rate's window at ``rate`` (a burst's worth of intervals)."""
        return max(rate_window(rate)[0], self.most) / rate

    def rescale(self, rate: float) -> None:
        """The configured rate changed: the largest burst follows it."""
        with self._lock:
            self.state = _burst.clamp(self.state, self.most_at(rate))

    def calm(self, until: float) -> None:
        """Back from an outage: send evenly spaced until ``until`` (the bucket's clock), then learn again.

        While Redis was down every process paced itself; the sends of the
        others are unknown here, so a burst now could land on top of theirs
        in one window. After it the burst grows again from 1 (slow start).
        """
        if not self.state.learn:
            return
        with self._lock:
            self.calm_until = until
            self.state = dataclasses.replace(self.state, size=1.0, successes=0)

    def round_of(self, key_round: int, in_burst: bool) -> int | BurstRound:
        """The round a reservation carries: the key's, marked when Redis handed it out in a burst."""
        if not in_burst or not self.state.learn:
            return key_round
        return BurstRound(key_round, self.epoch, self.state.exploring)

    def on_throttle(self, round: int | BurstRound) -> int | None:
        """Learn from a throttled answer; the key round to lower the shared rate for, or None.

        A send in a burst that was exploring says the burst was too large: it
        shrinks, and the rate stays. A send in the learned burst (or any send
        during slow start) halves the burst, and the rate is cut as for any
        throttle. Each burst is learned from once (its epoch), each key round
        counted once (by Redis).
        """
        if not isinstance(round, BurstRound):
            with self._lock:
                if self.state.slow_start and self.state.size > 1 and round >= self._even_from:
                    self.state = _burst.on_throttle(self.state)  # any throttle ends slow start
                    self.epoch += 1
                    self._even_from = round + 1
            return round
        with self._lock:
            if round.epoch != self.epoch:
                return None  # this burst was learned from already
            self.epoch += 1
            if round.probe and self.state.exploring:
                self.state = _burst.on_probe_throttle(self.state)
                return None
            if self.state.size > 1:
                self.state = _burst.on_throttle(self.state)
        return round.round

    def on_success(self, at_configured_rate: bool, now: float) -> bool:
        """Learn from an answer that was not throttled at ``now``; True when the burst changed.

        Past slow start the burst widens only at the configured rate (a
        burst that passes while the rate is cut is spaced wider than it will
        be); nor while calm (see :meth:`calm`).
        """
        state = self.state
        if state.settled or not (state.slow_start or at_configured_rate) or now < self.calm_until:
            return False  # the common case, without the lock
        with self._lock:
            new = _burst.on_success(self.state, self.most)
            changed = new.size != self.state.size
            self.state = new
        return changed
