"""Pure burst learning: how many calls a bucket sends at once.

A quota of Q per second is at most Q calls in any second, but a server may
count it more strictly, with a token bucket whose burst is smaller than Q
(down to 1: calls evenly spaced at ``1/Q``). That is learned as TCP learns
its window:

* **Slow start.** The burst starts at ``INITIAL`` (2) and grows by one with
  every successful answer, up to the threshold (at first the rate's window,
  or the declared burst), so a strict server is found with one throttled
  call rather than a window's worth. (Starting at 1 spreads the first
  window's queue evenly before any answer is back, which every later window
  echoes: 4 % of a saturated batch's wall time, against one throttled call
  on a strict server for starting at 2.) While it lasts, the bucket sends ``size``
  calls per even interval (``1/rate``), so the pace doubles as fast as
  answers come back and the first window is not spent evenly spaced: a
  sliding-window server never gives back a window spent that way.
* **Widening again** past the threshold is slow: one more call per
  ``WIDEN_AFTER`` windows' worth of successes. The new size is a probe
  until it has lasted as long again; the size before it becomes the
  threshold.
* **A throttled answer to a call sent in a burst that was exploring** (in
  slow start, or probing past the threshold) says only that the burst was
  too large: slow start halves it, a failed probe steps back to the
  threshold and waits twice as long before the next one. The rate stays.
* **A throttled answer to a call sent in the learned burst** halves the
  burst (not below 1), and the threshold with it; the bucket lowers its
  rate as for any throttle. Either way it re-plans its queue.

No clock and no I/O; the local bucket calls this under its lock.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "INITIAL",
    "MAX_PROBE_BACKOFF",
    "WIDEN_AFTER",
    "BurstState",
    "clamp",
    "on_probe_throttle",
    "on_success",
    "on_throttle",
    "start",
]

#: Successes, in windows' worth (the rate's window count), per widening step.
WIDEN_AFTER = 2
#: The burst a learning bucket starts with (TCP starts with 10 segments).
INITIAL = 2
#: Failed probes double the wait before the next one, up to this many times.
MAX_PROBE_BACKOFF = 6


@dataclasses.dataclass(frozen=True, slots=True)
class BurstState:
    """Where the burst stands."""

    #: The burst in force: calls that may go at once.
    size: float
    #: The largest it may become (the rate's window, or the declared burst).
    most: float
    #: Slow start ends here (halved with the burst on a throttle).
    threshold: float
    #: Successes since the last widening step past the threshold.
    successes: int = 0
    #: Probes refused in a row: each doubles the successes the next one waits for.
    failed_probes: int = 0
    #: False when the burst is fixed (no adaptation): always ``most``.
    learn: bool = True

    @property
    def slow_start(self) -> bool:
        """True until the burst first reaches its threshold (or a throttle sets one)."""
        return self.learn and self.size < self.threshold

    @property
    def exploring(self) -> bool:
        """True while the size in force is not yet known good (slow start, or a probe)."""
        return self.learn and self.size != self.threshold

    @property
    def settled(self) -> bool:
        """True when successes change nothing."""
        return not self.learn or self.threshold >= self.most <= self.size


def start(most: float, *, learn: bool, declared: bool) -> BurstState:
    """A new bucket's burst: ``most`` when declared or not learned, else ``INITIAL`` (slow start)."""
    size = most if declared or not learn else min(most, float(INITIAL))
    return BurstState(size=size, most=most, threshold=most, learn=learn)


def on_throttle(state: BurstState) -> BurstState:
    """A call sent in the learned burst was throttled: halve the burst (one signal per round)."""
    half = max(1.0, math.floor(state.size / 2))
    return dataclasses.replace(state, size=half, threshold=half, successes=0)


def on_probe_throttle(state: BurstState) -> BurstState:
    """A call sent while the burst was exploring was throttled: that size was too large.

    In slow start the burst halves, as :func:`on_throttle`. A probe past the
    threshold steps back to it, and the next probe waits twice as long.
    """
    if state.size <= state.threshold:
        return on_throttle(state)
    return dataclasses.replace(
        state,
        size=state.threshold,
        successes=0,
        failed_probes=min(state.failed_probes + 1, MAX_PROBE_BACKOFF),
    )


def on_success(state: BurstState, window: float) -> BurstState:
    """An answer was not throttled; ``window`` is the count of the rate's window now."""
    if state.settled:
        return state
    if state.size < state.threshold:
        return dataclasses.replace(state, size=min(state.size + 1, state.threshold))
    successes = state.successes + 1
    if successes < WIDEN_AFTER * window * 2**state.failed_probes:
        return dataclasses.replace(state, successes=successes)
    if state.size > state.threshold:  # the probe lasted: it is the new threshold
        return dataclasses.replace(state, threshold=state.size, successes=0, failed_probes=0)
    return dataclasses.replace(state, size=min(state.size + 1, state.most), successes=0)


def clamp(state: BurstState, most: float) -> BurstState:
    """The same state under a new largest burst (the rate changed)."""
    if not state.learn:
        return dataclasses.replace(state, size=most, most=most, threshold=most)
    return dataclasses.replace(
        state, size=min(state.size, most), most=most, threshold=min(max(state.threshold, 1.0), most)
    )
