"""Pure rate adaptation: CUBIC, as in the AWS SDKs' adaptive retry mode.

A throttled answer means the server's real limit is below the rate we send
at. The rate then drops multiplicatively (``rate * beta``) and, on every
success, climbs back along CUBIC's concave curve toward a target just under
the rate that was throttled::

    w_max   = throttled_rate * (1 - headroom)
    rate(t) = scale * (t - k)**3 + w_max,   k = cbrt((w_max - beta * throttled_rate) / scale)

(``t`` = seconds since the decrease): fast at first, flat near ``w_max``,
where the real limit probably is. Past ``k`` it follows CUBIC's convex
branch, but scaled to the gap left rather than by ``scale``::

    rate(t) = w_max + (configured - w_max) * ((t - k) / probe_time)**3

so that it is back at the configured rate ``probe_time`` seconds after
reaching ``w_max`` whatever that gap is. Rate limits are fixed numbers, not
the shifting capacity of a network path: a server that counts in 1 s windows
throttles a client paced at exactly its limit whenever jitter bunches two
requests, so near the limit the probe must creep (the last 2 % take seconds);
but a client that was cut far below its configured rate (another client
shared the quota, then left) must get back within seconds, not minutes.

With fast convergence (RFC 9438, section 4.7), a throttle at a lower rate
than the previous one aims the recovery lower still, halfway between the two
rates after the cut: the limit has fallen, or another client now shares it.
Clients that share a quota without sharing a bucket then settle on their
shares instead of taking turns throttling each other.

The rate never exceeds the configured rate and never falls below a floor.
A burst of throttled answers to calls that were all sent before the last
decrease counts as one signal (one decrease per round, as TCP does per
window): otherwise 16 calls throttled together would divide the rate by
0.7**16. Buckets track the rounds; this module only does the arithmetic,
with no clock and no I/O (the local bucket calls it under its lock).
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
        headroom: The recovery target sits this fraction below the rate
            that was throttled.
        probe_time: Seconds from reaching the target back to the configured
            rate, along the convex branch (slow at first, faster later).
        min_fraction: Floor of the effective rate, as a fraction of the
            configured rate.
        min_rate: Absolute floor in tokens/s (the higher floor wins).
        fast_convergence: CUBIC's fast convergence (RFC 9438, 4.7): a throttle
            at a lower rate than the one before means the limit fell, or
            another client now shares it, so the recovery target drops to
            halfway between the two rates after the decrease
            (``rate * (1 + beta) / 2``) rather than back to the rate that
            was just throttled.

    Example:
        >>> AdaptiveRate().beta
        0.7
    """

    beta: float = 0.7
    scale: float = 0.4
    headroom: float = 0.02
    probe_time: float = 10.0
    min_fraction: float = 0.05
    min_rate: float = 0.1
    fast_convergence: bool = True

    def __post_init__(self) -> None:
        beta = _checks.positive("beta", self.beta)
        if beta >= 1:
            raise ValueError(f"beta must be in (0, 1), got {self.beta!r}")
        _checks.positive("scale", self.scale)
        headroom = _checks.non_negative("headroom", self.headroom)
        if headroom >= 1 - beta:
            raise ValueError(f"headroom must be below 1 - beta ({1 - beta:g}), got {self.headroom!r}")
        _checks.positive("probe_time", self.probe_time)
        fraction = _checks.positive("min_fraction", self.min_fraction)
        if fraction > 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {self.min_fraction!r}")
        _checks.positive("min_rate", self.min_rate)
        if not isinstance(self.fast_convergence, bool):
            raise ValueError(f"fast_convergence must be True or False, got {self.fast_convergence!r}")

    def floor(self, configured: float) -> float:
        """The lowest effective rate for a bucket configured at ``configured``."""
        return min(configured, max(self.min_rate, configured * self.min_fraction))


@dataclasses.dataclass(frozen=True)
class CubicState:
    """Where the curve stands: the rate, its target, when it last fell."""

    #: The effective rate now, tokens/s.
    rate: float
    #: The recovery target (CUBIC's W_max, less the headroom).
    w_max: float
    #: When the last decrease happened (bucket clock), or None when the rate
    #: is back at the configured rate.
    last_decrease: float | None = None
    #: Seconds from the decrease until the curve reaches w_max.
    k: float = 0.0
    #: The rate at the last throttle signal (CUBIC's W_last_max), or None.
    last_max: float | None = None


#: Rate changes smaller than this fraction are not applied (nor reported):
#: recovery would otherwise rescale the bucket on every single success.
MIN_CHANGE = 0.01


def on_throttle(config: AdaptiveRate, state: CubicState, configured: float, now: float) -> CubicState:
    """The state after a throttle signal at ``now`` (one per round)."""
    floor = config.floor(configured)
    rate = max(floor, state.rate * config.beta)
    peak = state.rate
    if config.fast_convergence and state.last_max is not None and peak < state.last_max:
        peak *= (1 + config.beta) / 2
    w_max = max(rate, peak * (1 - config.headroom))
    k = ((w_max - rate) / config.scale) ** (1 / 3)
    return CubicState(rate=rate, w_max=w_max, last_decrease=now, k=k, last_max=state.rate)


def on_success(config: AdaptiveRate, state: CubicState, configured: float, now: float) -> CubicState:
    """The state after a successful answer at ``now``.

    Once the rate is back at the configured rate the state forgets the last
    decrease, so that successes cost nothing until the next throttle.
    """
    if state.last_decrease is None:
        return state
    t = now - state.last_decrease
    if t < state.k:
        rate = config.scale * (t - state.k) ** 3 + state.w_max
    else:
        x = (t - state.k) / config.probe_time
        rate = configured if x >= 1 else state.w_max + (configured - state.w_max) * x**3
    if rate >= configured:
        return CubicState(rate=configured, w_max=configured)
    rate = max(config.floor(configured), rate)
    if rate - state.rate < MIN_CHANGE * state.rate:
        return state
    return dataclasses.replace(state, rate=rate)
