"""OpenTelemetry metrics, when ``opentelemetry-api`` is installed.

Nothing is added to the call path: the instruments are *observable*, so the
OpenTelemetry SDK reads every live interceptor's :class:`Stats` when it
collects, and an application without an SDK (or without the API) pays
nothing. Each observation carries the attribute ``grpc_throttle.name`` (the
interceptor's ``name``) so several interceptors stay apart.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["register"]

#: Instrument name -> (Stats field, unit, description, monotonic counter?).
_INSTRUMENTS = {
    "grpc_throttle.calls": ("calls", "{call}", "Logical calls started", True),
    "grpc_throttle.attempts": ("attempts", "{attempt}", "Attempts sent, retries included", True),
    "grpc_throttle.throttled": ("throttled", "{answer}", "Answers classified as throttled", True),
    "grpc_throttle.retries": ("retries", "{attempt}", "Retries of throttled answers", True),
    "grpc_throttle.give_ups": ("give_ups", "{call}", "Calls that ended throttled", True),
    "grpc_throttle.token_wait": ("token_wait_seconds", "s", "Time spent waiting for tokens", True),
    "grpc_throttle.effective_rate": ("effective_rate", "{token}/s", "The bucket's rate in force", False),
}

_lock = threading.Lock()
_sources: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_names: dict[int, str] = {}
_installed = False


def register(interceptor: Any, name: str) -> bool:
    """Report ``interceptor.stats()`` through OpenTelemetry; False if it is not installed."""
    try:
        from opentelemetry import metrics
    except ImportError:
        return False
    global _installed
    with _lock:
        _sources[id(interceptor)] = interceptor
        _names[id(interceptor)] = name
        weakref.finalize(interceptor, _names.pop, id(interceptor), None)
        if not _installed:
            meter = metrics.get_meter("grpc_throttle")
            for instrument, (field, unit, description, counter) in _INSTRUMENTS.items():
                make = meter.create_observable_counter if counter else meter.create_observable_gauge
                make(instrument, callbacks=[_observer(metrics.Observation, field)], unit=unit, description=description)
            _installed = True
    return True


def _observer(observation: Any, field: str) -> Callable[[Any], Iterable[Any]]:
    def observe(options: Any) -> Iterable[Any]:
        with _lock:
            live = [(key, source) for key, source in _sources.items()]
        for key, source in live:
            yield observation(getattr(source.stats(), field), {"grpc_throttle.name": _names.get(key, "?")})

    return observe
