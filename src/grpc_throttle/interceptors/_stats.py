"""Counters of what an interceptor did, and their immutable snapshot."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import _fork

__all__ = ["Stats", "StatsRecorder"]


@dataclasses.dataclass(frozen=True)
class Stats:
    """A snapshot of an interceptor's counters since it was created."""

    #: Logical calls started (each may make several attempts).
    calls: int = 0
    #: Attempts sent to the server, retries included.
    attempts: int = 0
    #: Answers classified as throttled.
    throttled: int = 0
    #: Attempts that were retries of a throttled answer.
    retries: int = 0
    #: Calls that ended throttled because attempts, budget or deadline ran out.
    give_ups: int = 0
    #: Calls failed before sending because the token wait exceeded the deadline.
    deadline_rejections: int = 0
    #: Calls cancelled by the caller before they finished.
    cancelled: int = 0
    #: Answers saying a long quota window (e.g. hourly) is full.
    window_full: int = 0
    #: Answers saying the quota is used up (e.g. monthly): handed back, never retried.
    quota_exhausted: int = 0
    #: Seconds spent waiting for tokens, summed over attempts.
    token_wait_seconds: float = 0.0
    #: Seconds spent backing off between attempts, summed over calls.
    backoff_seconds: float = 0.0
    #: The bucket's effective rate when the snapshot was taken, tokens/s.
    effective_rate: float = 0.0
    #: Tokens left in the retry budget (None without a budget).
    retry_budget: float | None = None


class StatsRecorder:
    """Thread-safe counters behind :class:`Stats`."""

    __slots__ = ("__weakref__", "_counts", "_lock")

    def __init__(self) -> None:
        self._lock = _fork.register(self)
        self._counts: dict[str, float] = {f.name: 0 for f in dataclasses.fields(Stats)}
        del self._counts["effective_rate"], self._counts["retry_budget"]

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def count(self, first: str, second: str) -> None:
        """Add one to two counters under one lock (the fast path's call + attempt)."""
        with self._lock:
            counts = self._counts
            counts[first] += 1
            counts[second] += 1

    def snapshot(self, bucket: Any, budget: Any) -> Stats:
        rate: Any = getattr(bucket, "effective_rate", None)
        if rate is None:
            rate = getattr(bucket, "rate", 0.0)
        with self._lock:
            counts = dict(self._counts)
        return Stats(
            **counts,  # type: ignore[arg-type]
            effective_rate=float(rate),
            retry_budget=None if budget is None else budget.tokens,
        )
