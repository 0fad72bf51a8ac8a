"""Pure burst learning: how many calls a bucket sends at once.

A quota of Q per second is at most Q calls in any second, but a server may
count it more strictly, with a token bucket whose burst is smaller than Q
(down to 1: calls evenly spaced at ``1/Q``). That is learned as TCP learns
its window:

* **Slow start.** The burst starts at 1 and grows by one with every
  successful answer, up to the threshold (at first the rate's window, or the
  declared burst), so a strict server is found with one throttled call
  rather than a window's worth. While it lasts, the bucket sends ``size``
  calls per even interval (``1/rate``), so the pace doubles as fast as
  answers come back and the first window is not spent evenly spaced: a
  sliding-window server never gives back a window spent that way.
* **A throttled answer to a call sent in a burst** halves the burst (not
  below 1), and the threshold with it; the bucket lowers its rate as for
  any throttle and re-plans its queue.
* **Widening again** past the threshold is slow: one more call per
  ``WIDEN_AFTER`` windows' worth of successes.

No clock and no I/O; the local bucket calls this under its lock.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["WIDEN_AFTER", "BurstState", "clamp", "on_success", "on_throttle", "start"]

#: Successes, in windows' worth (the rate's window count), per widening step.
WIDEN_AFTER = 2


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
    #: False when the burst is fixed (no adaptation): always ``most``.
    learn: bool = True

    @property
    def slow_start(self) -> bool:
        """True until the burst first reaches its threshold (or a throttle sets one)."""
        return self.learn and self.size < self.threshold

    @property
    def settled(self) -> bool:
        """True when successes change nothing."""
        return not self.learn or self.size >= self.most


def start(most: float, *, learn: bool, declared: bool) -> BurstState:
    """A new bucket's burst: ``most`` when declared or not learned, else 1 (slow start)."""
    return BurstState(size=most if declared or not learn else 1.0, most=most, threshold=most, learn=learn)


def on_throttle(state: BurstState) -> BurstState:
    """A call sent in a burst was throttled: halve the burst (one signal per round)."""
    half = max(1.0, math.floor(state.size / 2))
    return dataclasses.replace(state, size=half, threshold=half, successes=0)


def on_success(state: BurstState, window: float) -> BurstState:
    """An answer was not throttled; ``window`` is the count of the rate's window now."""
    if state.settled:
        return state
    if state.size < state.threshold:
        return dataclasses.replace(state, size=min(state.size + 1, state.threshold))
    successes = state.successes + 1
    if successes >= WIDEN_AFTER * window:
        return dataclasses.replace(state, size=min(state.size + 1, state.most), successes=0)
    return dataclasses.replace(state, successes=successes)


def clamp(state: BurstState, most: float) -> BurstState:
    """The same state under a new largest burst (the rate changed)."""
    if not state.learn:
        return dataclasses.replace(state, size=most, most=most, threshold=most)
    return dataclasses.replace(
        state, size=min(state.size, most), most=most, threshold=min(max(state.threshold, 1.0), most)
    )
