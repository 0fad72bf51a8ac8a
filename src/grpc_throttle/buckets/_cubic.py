"""Pure rate adaptation: CUBIC, as in the AWS SDKs' adaptive retry mode.

A throttled answer means the server's real limit is below the rate we send
at. The rate then drops multiplicatively (``rate * beta``) and remembers where
it was (``w_max``); on every success it climbs back along the cubic

    rate(t) = scale * (t - k)**3 + w_max,   k = cbrt(w_max * (1 - beta) / scale)

(``t`` = seconds since the last decrease): fast at first, flat near the rate
that was throttled (where the real limit probably is), then probing beyond it.
It never exceeds the configured rate and never falls below a floor.

A burst of throttled answers to calls that were all sent before the last
decrease counts as one signal (one decrease per round, as TCP does per
window): otherwise 16 calls throttled together would divide the rate by
0.7**16. Buckets track the rounds; this module only does the arithmetic.

No clock and no I/O here: the local bucket calls it under its lock, and the
Redis bucket mirrors it in Lua.
"""

from __future__ import annotations

import dataclasses

from .. import _checks

__all__ = ["MIN_CHANGE", "AdaptiveRate", "CubicState", "on_success", "on_throttle"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptiveRate:
    """How a bucket adapts its rate to throttle signals (CUBIC).

    Attributes:
        beta: Multiplicative decrease on a throttle signal (AWS SDKs: 0.7).
        scale: CUBIC's scaling constant C, in tokens/s per s³ (AWS SDKs: 0.4);
            larger recovers faster.
        min_fraction: Floor of the effective rate, as a fraction of the
            configured rate.
        min_rate: Absolute floor in tokens/s (the higher floor wins).

    Example:
        >>> AdaptiveRate().beta
        0.7
    """

    beta: float = 0.7
    scale: float = 0.4
    min_fraction: float = 0.05
    min_rate: float = 0.1

    def __post_init__(self) -> None:
        beta = _checks.positive("beta", self.beta)
        if beta >= 1:
            raise ValueError(f"beta must be in (0, 1), got {self.beta!r}")
        _checks.positive("scale", self.scale)
        fraction = _checks.positive("min_fraction", self.min_fraction)
        if fraction > 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {self.min_fraction!r}")
        _checks.positive("min_rate", self.min_rate)

    def floor(self, configured: float) -> float:
        """The lowest effective rate for a bucket configured at ``configured``."""
        return min(configured, max(self.min_rate, configured * self.min_fraction))


@dataclasses.dataclass(frozen=True)
class CubicState:
    """Where the curve stands: the rate, its last peak, when it last fell."""

    #: The effective rate now, tokens/s.
    rate: float
    #: The rate at the last decrease (CUBIC's W_max).
    w_max: float
    #: When the last decrease happened (bucket clock), or None before any.
    last_decrease: float | None = None


#: Rate changes smaller than this fraction are not applied (nor reported):
#: recovery would otherwise rescale the bucket on every single success.
MIN_CHANGE = 0.01


def on_throttle(config: AdaptiveRate, state: CubicState, configured: float, now: float) -> CubicState:
    """The state after a throttle signal at ``now`` (one per round)."""
    rate = max(config.floor(configured), state.rate * config.beta)
    return CubicState(rate=rate, w_max=state.rate, last_decrease=now)


def on_success(config: AdaptiveRate, state: CubicState, configured: float, now: float) -> CubicState:
    """The state after a successful answer at ``now``.

    Once the curve reaches the configured rate the state forgets the last
    decrease, so that successes cost nothing until the next throttle.
    """
    if state.last_decrease is None:
        return state
    k = (state.w_max * (1 - config.beta) / config.scale) ** (1 / 3)
    rate = config.scale * (now - state.last_decrease - k) ** 3 + state.w_max
    if rate >= configured:
        return CubicState(rate=configured, w_max=configured, last_decrease=None)
    rate = max(config.floor(configured), rate)
    if rate - state.rate < MIN_CHANGE * state.rate:
        return state
    return CubicState(rate=rate, w_max=state.w_max, last_decrease=state.last_decrease)
