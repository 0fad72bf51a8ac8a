"""What grpc-throttle reports to an event hook: retries and rate changes.

Pass a callable as ``on_event=`` to an interceptor (every retry and give-up of
its calls, and every rate change of its bucket) or to a bucket's
``add_listener`` (its rate changes only). Hooks run on the thread or event
loop where the event happened: keep them short and non-blocking. A hook that
raises is logged and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Literal

__all__ = ["Event", "EventHook", "GaveUp", "RateChanged", "RetryScheduled"]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RateChanged:
    """A bucket's effective rate changed."""

    #: The rate before, tokens/s.
    old_rate: float
    #: The rate now, tokens/s.
    new_rate: float
    #: ``"throttle"`` (a throttle signal lowered it), ``"recovery"`` (successes
    #: raised it) or ``"configured"`` (someone set ``bucket.rate``).
    reason: Literal["throttle", "recovery", "configured"]


@dataclasses.dataclass(frozen=True)
class RetryScheduled:
    """A throttled attempt will be retried."""

    #: The full gRPC method name, e.g. ``/clarifai.api.V2/ListModelTypes``.
    method: str
    #: The attempt that was throttled (1-based).
    attempt: int
    #: Seconds until the retry takes its token.
    delay: float
    #: True when the server said how long to wait (pushback or RetryInfo).
    server_pushback: bool


@dataclasses.dataclass(frozen=True)
class GaveUp:
    """A throttled call ends without a retry; its last answer goes back as is."""

    #: The full gRPC method name.
    method: str
    #: Attempts made.
    attempts: int
    #: ``"attempts"``, ``"deadline"``, ``"budget"``, ``"server"`` (pushback said do
    #: not retry) or ``"window"`` (a long quota window is full; see ThrottlePolicy.on_window).
    reason: Literal["attempts", "deadline", "budget", "server", "window"]


Event = RateChanged | RetryScheduled | GaveUp
EventHook = Callable[[Event], None]


def emit(hooks: tuple[EventHook, ...] | list[EventHook], event: Event) -> None:
    """Call every hook with ``event``; a hook that raises is logged, not propagated."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            _log.exception("grpc-throttle: an event hook raised on %s", type(event).__name__)
