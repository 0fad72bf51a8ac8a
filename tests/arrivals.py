"""Counting sends or arrivals per window: the property every window-shaped schedule must keep."""

from __future__ import annotations

from collections.abc import Iterable


def most_in_any_window(times: Iterable[float], span: float) -> int:
    """The most events in any half-open window ``(t - span, t]`` (to 1 ns: an event may sit on the edge)."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - span + 1e-9:
            first += 1
        best = max(best, last - first + 1)
    return best
